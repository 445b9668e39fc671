//! Container networking: the `berth0` bridge with its own subnet and NAT to the outside, a veth
//! pair per container (its end renamed `eth0` inside), TCP port forwards, and tc shaping.
//!
//! Everything berth adds to the firewall lives in its own nftables table (`ip berth`), so setting
//! up and tearing down never touches the host's own rules; without `nft`, the same rules go into
//! iptables chains of berth's own (`BERTH-*`) with one jump each. Forwards are elements of an
//! nftables map, added and removed per container; the rules themselves never change.
//!
//! The rules, command lines and address choices are pure functions ([`nft_ruleset`],
//! [`iptables_setup`], [`attach_commands`], [`tbf`], [`allocate`]), unit-tested; [`Host`] runs
//! them with `ip`, `nft`/`iptables`, `tc` and `nsenter` from iproute2 and util-linux. (berth
//! calls the tools rather than speaking netlink itself: each step is one documented command a
//! user can repeat by hand, and none is on a hot path.)

pub mod leases;
pub mod restore;

use std::net::Ipv4Addr;
use std::process::Command;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors from network setup; each names the command that failed and what it printed.
#[derive(Debug, Error)]
pub enum NetError {
    /// A tool failed.
    #[error("{command} failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A tool is missing.
    #[error("{0} was not found (install iproute2 and nftables)")]
    Missing(String),
    /// No address left in the subnet.
    #[error("no free address left in {0}")]
    Exhausted(String),
    /// Reading or writing a host setting failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What berth was doing.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The bridge and its subnet (a /24).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    /// Interface name.
    pub name: String,
    /// The host's address on the bridge (the containers' gateway); the subnet is its /24.
    pub gateway: Ipv4Addr,
}

impl Default for Bridge {
    fn default() -> Bridge {
        Bridge {
            name: "berth0".into(),
            gateway: Ipv4Addr::new(10, 87, 0, 1),
        }
    }
}

impl Bridge {
    /// The subnet as `a.b.c.0/24`.
    pub fn subnet(&self) -> String {
        let o = self.gateway.octets();
        format!("{}.{}.{}.0/24", o[0], o[1], o[2])
    }
}

/// Which firewall tool is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// nftables, berth's own table.
    Nft,
    /// iptables, berth's own chains.
    Iptables,
}

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

/// Runs the steps on this host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The bridge.
    pub bridge: Bridge,
    /// The firewall tool.
    pub firewall: Firewall,
}

/// Where berth notes, per network namespace, which tables existed before its iptables rules.
fn tables_note() -> Option<std::path::PathBuf> {
    Some(format!("/run/berth/iptables-before-{}", netns_id()?).into())
}

/// This process's network namespace, as the inode of /proc/self/ns/net: what berth's host-wide
/// files under /run/berth are kept per.
fn netns_id() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    Some(std::fs::metadata("/proc/self/ns/net").ok()?.ino())
}

/// The tables of [`restore::TABLES`] as nftables has them now; `None` without `nft` (legacy
/// iptables: its tables are the kernel's and cannot be removed).
fn tables_now() -> Option<restore::Snapshot> {
    if !has("nft") {
        return None;
    }
    Some(
        restore::TABLES
            .iter()
            .map(|t| {
                let listing = run("nft", &s(&["list", "table", "ip", t])).ok();
                (t.to_string(), listing.map(|l| restore::chains(&l)))
            })
            .collect(),
    )
}

/// Note what exists before berth's iptables rules are set up (kept if already noted).
fn note_tables_before() {
    let (Some(path), Some(now)) = (tables_note(), tables_now()) else {
        return;
    };
    if path.exists() {
        return;
    }
    let _ = std::fs::create_dir_all("/run/berth");
    let _ = std::fs::write(path, restore::encode(&now));
}

/// Whether a link of that name exists, asked of the kernel in this process's network namespace
/// (SIOCGIFINDEX on a socket made here). /sys/class/net is the wrong question: under `nsenter
/// --net` it still shows the namespace whose sysfs is mounted.
pub fn link_exists(name: &str) -> bool {
    use rustix::net::{socket, AddressFamily, SocketType};
    let Ok(sock) = socket(AddressFamily::INET, SocketType::DGRAM, None) else {
        return false;
    };
    rustix::net::netdevice::name_to_index(&sock, name).is_ok()
}

fn run(program: &str, args: &[String]) -> Result<String, NetError> {
    run_input(program, args, None)
}

fn run_input(program: &str, args: &[String], input: Option<&str>) -> Result<String, NetError> {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NetError::Missing(program.into())
        } else {
            NetError::Command {
                command: program.into(),
                stderr: e.to_string(),
            }
        }
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NetError::Command {
        command: program.into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

impl Host {
    /// The default bridge, with nftables when `nft` is installed and iptables otherwise;
    /// `BERTH_FIREWALL=iptables` (or `nft`) chooses.
    pub fn detect() -> Host {
        let firewall = match std::env::var("BERTH_FIREWALL").as_deref() {
            Ok("iptables") => Firewall::Iptables,
            Ok("nft") => Firewall::Nft,
            _ if has("nft") => Firewall::Nft,
            _ => Firewall::Iptables,
        };
        Host {
            bridge: Bridge::default(),
            firewall,
        }
    }

    /// Whether the bridge exists in this process's network namespace.
    pub fn bridge_up(&self) -> bool {
        link_exists(&self.bridge.name)
    }

    /// How many links the bridge has as ports (containers of every data dir on this host),
    /// asked of the kernel (`ip -o link show master`): the one count that no data dir can get
    /// wrong for another.
    pub fn bridge_ports(&self) -> usize {
        run(
            "ip",
            &s(&["-o", "link", "show", "master", &self.bridge.name]),
        )
        .map(|out| out.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
    }

    /// Create the bridge, its address and berth's NAT rules, unless they are there already.
    pub fn ensure_bridge(&self) -> Result<(), NetError> {
        if !self.bridge_up() {
            let b = &self.bridge;
            run("ip", &s(&["link", "add", &b.name, "type", "bridge"]))?;
            run(
                "ip",
                &s(&["addr", "add", &format!("{}/24", b.gateway), "dev", &b.name]),
            )?;
            run("ip", &s(&["link", "set", &b.name, "up"]))?;
        }
        enable_forwarding()?;
        match self.firewall {
            Firewall::Nft => {
                if run("nft", &s(&["list", "table", "ip", "berth"])).is_err() {
                    run_input("nft", &s(&["-f", "-"]), Some(&nft_ruleset(&self.bridge)))?;
                }
            }
            Firewall::Iptables => {
                if run("iptables", &s(&["-t", "nat", "-S", "BERTH-POST"])).is_err() {
                    note_tables_before();
                    let set_up = iptables_setup(&self.bridge)
                        .iter()
                        .try_for_each(|c| run("iptables", c).map(drop));
                    if let Err(e) = set_up {
                        // Half set up: put everything back before reporting it.
                        self.iptables_teardown();
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove the bridge and berth's rules (when no container uses them any more).
    pub fn teardown_bridge(&self) -> Result<(), NetError> {
        match self.firewall {
            Firewall::Nft => {
                if run("nft", &s(&["list", "table", "ip", "berth"])).is_ok() {
                    run("nft", &s(&["delete", "table", "ip", "berth"]))?;
                }
            }
            Firewall::Iptables => self.iptables_teardown(),
        }
        if self.bridge_up() {
            run("ip", &s(&["link", "del", &self.bridge.name]))?;
        }
        restore_forwarding()
    }

    /// Remove berth's iptables chains, then what creating them made (nf_tables' base chains and
    /// tables that were not there before). Idempotent.
    fn iptables_teardown(&self) {
        if run("iptables", &s(&["-t", "nat", "-S", "BERTH-POST"])).is_ok()
            || run("iptables", &s(&["-S", "BERTH-FWD"])).is_ok()
        {
            for c in iptables_teardown(&self.bridge) {
                let _ = run("iptables", &c);
            }
        }
        let Some(path) = tables_note() else { return };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        if let Some(now) = tables_now() {
            for c in restore::plan(&restore::decode(&text), &now) {
                let _ = run("nft", &c);
            }
        }
        let _ = std::fs::remove_file(path);
    }

    /// Give a container (its init is `pid`, in its own network namespace) its `eth0`.
    pub fn attach(
        &self,
        container: &str,
        pid: u32,
        addr: Ipv4Addr,
        rate: Option<u64>,
    ) -> Result<(), NetError> {
        // A host end left over from a container killed before it was detached.
        self.detach(container)?;
        for (program, args) in attach_commands(&self.bridge, container, pid, addr, rate) {
            run(program, &args)?;
        }
        Ok(())
    }

    /// Change the shaping of a running container (`None` lifts it).
    pub fn shape(&self, container: &str, pid: u32, rate: Option<u64>) -> Result<(), NetError> {
        let (host, _) = veth_names(container);
        let pid = pid.to_string();
        match rate {
            Some(r) => {
                run("tc", &tbf(&host, r))?;
                let mut a = s(&["-t", &pid, "-n", "tc"]);
                a.extend(tbf("eth0", r));
                run("nsenter", &a)?;
            }
            None => {
                let _ = run("tc", &s(&["qdisc", "del", "dev", &host, "root"]));
                let _ = run(
                    "nsenter",
                    &s(&[
                        "-t", &pid, "-n", "tc", "qdisc", "del", "dev", "eth0", "root",
                    ]),
                );
            }
        }
        Ok(())
    }

    /// Remove the container's host end (its pair goes with it). Idempotent: when the container's
    /// namespace has just died, the kernel may be removing the pair at the same moment.
    pub fn detach(&self, container: &str) -> Result<(), NetError> {
        let (host, _) = veth_names(container);
        if link_exists(&host) {
            if let Err(e) = run("ip", &s(&["link", "del", &host])) {
                if link_exists(&host) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Forward TCP `host_port` on the host's addresses to `addr:port`.
    pub fn add_forward(&self, host_port: u16, addr: Ipv4Addr, port: u16) -> Result<(), NetError> {
        match self.firewall {
            Firewall::Nft => run(
                "nft",
                &s(&[
                    "add",
                    "element",
                    "ip",
                    "berth",
                    "fwd_tcp",
                    &format!("{{ {} }}", forward_element(host_port, addr, port)),
                ]),
            )
            .map(drop),
            Firewall::Iptables => {
                run("iptables", &iptables_forward(host_port, addr, port)).map(drop)
            }
        }
    }

    /// Remove a forward (idempotent).
    pub fn remove_forward(
        &self,
        host_port: u16,
        addr: Ipv4Addr,
        port: u16,
    ) -> Result<(), NetError> {
        match self.firewall {
            Firewall::Nft => {
                let _ = run(
                    "nft",
                    &s(&[
                        "delete",
                        "element",
                        "ip",
                        "berth",
                        "fwd_tcp",
                        &format!("{{ {host_port} }}"),
                    ]),
                );
            }
            Firewall::Iptables => {
                let mut a = iptables_forward(host_port, addr, port);
                a[2] = "-D".into();
                let _ = run("iptables", &a);
            }
        }
        Ok(())
    }

    /// Whether a TCP port is already forwarded.
    pub fn forwarded(&self, host_port: u16) -> bool {
        match self.firewall {
            Firewall::Nft => run("nft", &s(&["list", "map", "ip", "berth", "fwd_tcp"]))
                .map(|t| {
                    t.split(|c: char| !c.is_ascii_digit())
                        .any(|w| w == host_port.to_string())
                })
                .unwrap_or(false),
            Firewall::Iptables => run("iptables", &s(&["-t", "nat", "-S", "BERTH-DNAT"]))
                .map(|t| t.contains(&format!("--dport {host_port} ")))
                .unwrap_or(false),
        }
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Where berth notes that it turned IPv4 forwarding on (cleared at boot, as the setting is).
const FORWARD_MARK: &str = "/run/berth-ip-forward";

/// NAT through the bridge needs IPv4 forwarding (as for Docker and LXD). If it is off, berth
/// turns it on and notes that it did, so that tearing the bridge down turns it off again.
fn enable_forwarding() -> Result<(), NetError> {
    let io = |what: &'static str, path: &str| {
        let path = path.to_string();
        move |e: std::io::Error| NetError::Io {
            what,
            path: path.into(),
            source: e,
        }
    };
    let now = std::fs::read_to_string(IP_FORWARD).map_err(io("reading", IP_FORWARD))?;
    if now.trim() == "1" {
        return Ok(());
    }
    std::fs::write(FORWARD_MARK, "berth turned net.ipv4.ip_forward on\n")
        .map_err(io("writing", FORWARD_MARK))?;
    std::fs::write(IP_FORWARD, "1").map_err(io("writing", IP_FORWARD))
}

/// Turn IPv4 forwarding off again if berth turned it on.
fn restore_forwarding() -> Result<(), NetError> {
    if std::fs::remove_file(FORWARD_MARK).is_ok() {
        std::fs::write(IP_FORWARD, "0").map_err(|e| NetError::Io {
            what: "writing",
            path: IP_FORWARD.into(),
            source: e,
        })?;
    }
    Ok(())
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
