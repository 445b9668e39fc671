//! The rules and command lines berth's networking runs, as pure functions: the nftables table,
//! the iptables chains of the fallback, forward elements, veth names, address choice, tc shaping
//! and the steps that attach a container.

use crate::{Bridge, NetError};
use std::net::Ipv4Addr;

/// The nftables table berth loads (`nft -f -`): NAT out of the subnet, forwards through a map.
pub fn nft_ruleset(b: &Bridge) -> String {
    let subnet = b.subnet();
    format!(
        "table ip berth {{
\tmap fwd_tcp {{
\t\ttype inet_service : ipv4_addr . inet_service
\t}}
\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local dnat ip to tcp dport map @fwd_tcp
\t}}
\tchain output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local ip daddr != 127.0.0.0/8 dnat ip to tcp dport map @fwd_tcp
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {subnet} ip daddr != {subnet} masquerade
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"{br}\" accept
\t\toifname \"{br}\" ct state established,related accept
\t\toifname \"{br}\" ct status dnat accept
\t}}
}}
",
        br = b.name
    )
}

/// iptables commands (argv after `iptables`) that set up the same NAT as [`nft_ruleset`]; the
/// teardown is the same list with `-A`/`-I` turned into `-D` and chains flushed and removed.
pub fn iptables_setup(b: &Bridge) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let subnet = b.subnet();
    vec![
        s(&["-t", "nat", "-N", "BERTH-POST"]),
        s(&[
            "-t",
            "nat",
            "-A",
            "BERTH-POST",
            "-s",
            &subnet,
            "!",
            "-d",
            &subnet,
            "-j",
            "MASQUERADE",
        ]),
        s(&["-t", "nat", "-I", "POSTROUTING", "-j", "BERTH-POST"]),
        s(&["-t", "nat", "-N", "BERTH-DNAT"]),
        s(&[
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "BERTH-DNAT",
        ]),
        s(&[
            "-t",
            "nat",
            "-I",
            "OUTPUT",
            "!",
            "-d",
            "127.0.0.0/8",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "BERTH-DNAT",
        ]),
        s(&["-N", "BERTH-FWD"]),
        s(&["-A", "BERTH-FWD", "-i", &b.name, "-j", "ACCEPT"]),
        s(&[
            "-A",
            "BERTH-FWD",
            "-o",
            &b.name,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED,DNAT",
            "-j",
            "ACCEPT",
        ]),
        s(&["-I", "FORWARD", "-j", "BERTH-FWD"]),
    ]
}

/// The iptables teardown for [`iptables_setup`].
pub fn iptables_teardown(b: &Bridge) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for cmd in iptables_setup(b).iter().rev() {
        let (table, rest) = if cmd[0] == "-t" {
            (vec![cmd[0].clone(), cmd[1].clone()], &cmd[2..])
        } else {
            (Vec::new(), &cmd[..])
        };
        let verb = rest[0].as_str();
        let chain = rest[1].clone();
        match verb {
            "-I" | "-A" if !chain.starts_with("BERTH-") => {
                let mut v = table.clone();
                v.push("-D".into());
                v.extend(rest[1..].iter().cloned());
                out.push(v);
            }
            "-N" => {
                let mut f = table.clone();
                f.extend(["-F".to_string(), chain.clone()]);
                out.push(f);
                let mut x = table.clone();
                x.extend(["-X".to_string(), chain]);
                out.push(x);
            }
            _ => {}
        }
    }
    out
}

/// The nft element for a forward: `HOST_PORT : ADDR . PORT`.
pub fn forward_element(host_port: u16, addr: Ipv4Addr, port: u16) -> String {
    format!("{host_port} : {addr} . {port}")
}

/// The iptables DNAT rule (argv after `iptables`, with `-A`) for a forward.
pub fn iptables_forward(host_port: u16, addr: Ipv4Addr, port: u16) -> Vec<String> {
    [
        "-t",
        "nat",
        "-A",
        "BERTH-DNAT",
        "-p",
        "tcp",
        "--dport",
        &host_port.to_string(),
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{addr}:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Interface names for a container: the host's end `vb-XXXXXXXX` and a temporary name for the
/// container's end before it becomes `eth0` (IFNAMSIZ allows 15 characters).
pub fn veth_names(container: &str) -> (String, String) {
    // FNV-1a: stable across runs and releases, which std's hasher is not.
    let mut h: u32 = 0x811c_9dc5;
    for b in container.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (format!("vb-{h:08x}"), format!("vp-{h:08x}"))
}

/// The lowest free address in the bridge's /24 (.2 to .254), given those in use.
pub fn allocate(b: &Bridge, used: &[Ipv4Addr]) -> Result<Ipv4Addr, NetError> {
    let o = b.gateway.octets();
    (2..=254u8)
        .map(|last| Ipv4Addr::new(o[0], o[1], o[2], last))
        .find(|a| *a != b.gateway && !used.contains(a))
        .ok_or_else(|| NetError::Exhausted(b.subnet()))
}

/// tc's token bucket filter for `rate` bits per second on `dev`: a burst of at least 10 ms
/// worth (and at least one jumbo frame), 50 ms of queue.
pub fn tbf(dev: &str, rate_bits: u64) -> Vec<String> {
    let burst = (rate_bits / 8 / 100).max(15_000);
    [
        "qdisc",
        "replace",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        &format!("{rate_bits}bit"),
        "burst",
        &burst.to_string(),
        "latency",
        "50ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One step of attaching a container: a program and its arguments.
pub type Step = (&'static str, Vec<String>);

/// The commands that give the container whose init is `pid` an `eth0` on the bridge with
/// `addr`, a default route through the host, and (with `rate`) shaping both ways: on the host's
/// end (traffic into the container) and on `eth0` inside (traffic out of it).
pub fn attach_commands(
    b: &Bridge,
    container: &str,
    pid: u32,
    addr: Ipv4Addr,
    rate: Option<u64>,
) -> Vec<Step> {
    let (host, peer) = veth_names(container);
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let pid = pid.to_string();
    let inside = |x: &[&str]| {
        let mut a = v(&["-t", &pid, "-n"]);
        a.extend(v(x));
        a
    };
    let mut steps: Vec<Step> = vec![
        (
            "ip",
            v(&["link", "add", &host, "type", "veth", "peer", "name", &peer]),
        ),
        ("ip", v(&["link", "set", &host, "master", &b.name, "up"])),
        ("ip", v(&["link", "set", &peer, "netns", &pid])),
        (
            "nsenter",
            inside(&["ip", "link", "set", &peer, "name", "eth0"]),
        ),
        (
            "nsenter",
            inside(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]),
        ),
        ("nsenter", inside(&["ip", "link", "set", "eth0", "up"])),
        ("nsenter", inside(&["ip", "link", "set", "lo", "up"])),
        (
            "nsenter",
            inside(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &b.gateway.to_string(),
            ]),
        ),
    ];
    if let Some(r) = rate {
        steps.push(("tc", tbf(&host, r)));
        let mut t = v(&["tc"]);
        t.extend(tbf("eth0", r));
        steps.push((
            "nsenter",
            inside(&t.iter().map(String::as_str).collect::<Vec<_>>()),
        ));
    }
    steps
}

/// Owned arguments.
pub(crate) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_table_is_berths_own() {
        let r = nft_ruleset(&Bridge::default());
        assert!(r.starts_with("table ip berth {"));
        assert!(r.contains("ip saddr 10.87.0.0/24 ip daddr != 10.87.0.0/24 masquerade"));
        assert!(r.contains("dnat ip to tcp dport map @fwd_tcp"));
        assert!(r.contains("iifname \"berth0\" accept"));
        assert_eq!(
            forward_element(8080, Ipv4Addr::new(10, 87, 0, 5), 80),
            "8080 : 10.87.0.5 . 80"
        );
    }

    #[test]
    fn iptables_teardown_undoes_setup() {
        let b = Bridge::default();
        let up = iptables_setup(&b);
        let down = iptables_teardown(&b);
        // Every jump from a host chain is deleted, every berth chain flushed and removed.
        for c in &up {
            let joined = c.join(" ");
            if c.iter().any(|x| x == "-I") {
                let del = joined.replace("-I", "-D");
                assert!(down.iter().any(|d| d.join(" ") == del), "{del}");
            }
            if c.iter().any(|x| x == "-N") {
                let chain = c.last().unwrap();
                assert!(down
                    .iter()
                    .any(|d| d.contains(&"-X".to_string()) && d.last() == Some(chain)));
            }
        }
        // No host chain is flushed or removed.
        assert!(!down.iter().any(|d| (d.contains(&"-F".to_string())
            || d.contains(&"-X".to_string()))
            && !d.last().unwrap().starts_with("BERTH-")));
    }

    #[test]
    fn names_addresses_and_shaping() {
        let (h, p) = veth_names("a-rather-long-container-name");
        assert!(h.len() <= 15 && p.len() <= 15);
        assert_ne!(veth_names("a").0, veth_names("b").0);
        assert_eq!(veth_names("web"), veth_names("web"));
        let b = Bridge::default();
        assert_eq!(allocate(&b, &[]).unwrap(), Ipv4Addr::new(10, 87, 0, 2));
        let used = [Ipv4Addr::new(10, 87, 0, 2), Ipv4Addr::new(10, 87, 0, 3)];
        assert_eq!(allocate(&b, &used).unwrap(), Ipv4Addr::new(10, 87, 0, 4));
        let all: Vec<_> = (2..=254).map(|i| Ipv4Addr::new(10, 87, 0, i)).collect();
        assert!(allocate(&b, &all).is_err());
        let t = tbf("vb-1", 10_000_000).join(" ");
        assert_eq!(
            t,
            "qdisc replace dev vb-1 root tbf rate 10000000bit burst 15000 latency 50ms"
        );
        let steps = attach_commands(&b, "web", 42, Ipv4Addr::new(10, 87, 0, 9), Some(1_000_000));
        let text: Vec<String> = steps
            .iter()
            .map(|(p, a)| format!("{p} {}", a.join(" ")))
            .collect();
        assert!(text.iter().any(|l| l.ends_with("netns 42")));
        assert!(text
            .iter()
            .any(|l| l.contains("ip addr add 10.87.0.9/24 dev eth0")));
        assert!(text
            .iter()
            .any(|l| l.contains("route add default via 10.87.0.1")));
        assert_eq!(text.iter().filter(|l| l.contains("tbf")).count(), 2);
    }
}
