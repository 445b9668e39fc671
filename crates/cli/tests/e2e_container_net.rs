//! End-to-end: containers' networks (none, the host's, berth's bridge with forwards and rate
//! limits), and the firewall put back exactly as it was, with two data dirs side by side.

mod common;

use common::ct::*;
use common::{e2e_dir, e2e_image};

#[test]
fn network_none_has_only_loopback_and_host_shares_the_hosts() {
    let (_, none, err) = sh(&[], "ls /sys/class/net");
    assert_eq!(none.split_whitespace().collect::<Vec<_>>(), ["lo"], "{err}");
    let (_, host, err) = sh(&["--network", "host"], "ls /sys/class/net");
    let mut ours: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ours.sort();
    let mut theirs: Vec<String> = host.split_whitespace().map(String::from).collect();
    theirs.sort();
    assert_eq!(theirs, ours, "{err}");
    // On the host's network the host's resolvers answer (the image's resolv.conf points at
    // systemd-resolved's stub, which no one runs in an application container).
    let (code, out, err) = sh(
        &["--network", "host"],
        "getent hosts deb.debian.org >/dev/null && echo resolves",
    );
    assert_eq!((code, out.trim()), (0, "resolves"), "{err}");
}

#[test]
fn bridge_networking_forwards_and_rate() {
    e2e_image();
    let before = ruleset();
    assert!(
        !before.contains("table ip berth"),
        "another test left berth's table"
    );
    let port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let a = Ct(format!("ct-net-a-{}", std::process::id()));
    let b = Ct(format!("ct-net-b-{}", std::process::id()));
    launch_ct(
        &a.0,
        &["--forward", &format!("{port}:8000"), "--net-rate", "10mbit"],
    );
    launch_ct(&b.0, &[]);
    let addr_a = info(&a.0)["address"].as_str().unwrap().to_string();
    let addr_b = info(&b.0)["address"].as_str().unwrap().to_string();
    assert_ne!(addr_a, addr_b);
    assert!(addr_a.starts_with("10.87.0."), "{addr_a}");
    assert_eq!(
        exec(&a.0, "ip -4 -o addr show eth0 | awk '{print $4}'"),
        format!("{addr_a}/24")
    );
    exec(
        &a.0,
        "head -c 5000000 /dev/urandom > /tmp/blob; cd /tmp && \
         (nohup python3 -m http.server 8000 >/dev/null 2>&1 &); sleep 1",
    );
    // Container to container through the bridge, and out through NAT (Debian's mirror).
    // The HTTP status of a GET, as a shell command (run inside a container or on the host).
    let fetch_within = |url: &str, secs: u32| {
        format!(
            "python3 -c \"import urllib.request as u; print(u.urlopen('{url}', timeout={secs}).status)\""
        )
    };
    let fetch = |url: &str| fetch_within(url, 20);
    assert_eq!(exec(&b.0, &fetch(&format!("http://{addr_a}:8000/"))), "200");
    assert_eq!(
        exec(
            &a.0,
            &fetch("http://deb.debian.org/debian/dists/bookworm/Release")
        ),
        "200"
    );
    // The forward answers from the host (on the bridge's address, one of the host's own).
    let forwarded = format!("http://10.87.0.1:{port}/");
    let host_get = |url: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", &fetch_within(url, 5)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut got = String::new();
    for _ in 0..20 {
        got = host_get(&forwarded);
        if got == "200" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(got, "200", "forwarded port {port}");
    // 5 MB out of A (shaped to 10 Mbit/s both ways) runs at about 10 Mbit/s.
    let rate: f64 = exec(
        &b.0,
        &format!(
            "python3 -c \"
import urllib.request as u, time
t = time.time(); n = len(u.urlopen('http://{addr_a}:8000/blob', timeout=60).read())
print(n * 8 / (time.time() - t) / 1e6)\""
        ),
    )
    .parse()
    .unwrap();
    assert!(
        (7.5..=11.0).contains(&rate),
        "{rate:.2} Mbit/s through --net-rate 10mbit"
    );
    // info counts what went through the interface: A sent the 5 MB blob.
    let sent = info(&a.0)["net"]["sent_bytes"].as_u64().unwrap();
    assert!(sent > 5_000_000, "A sent {sent} bytes");

    // Deleting the containers removes their interfaces and forwards; the last one takes the
    // bridge and berth's table with it, and the host's own rules are as they were.
    drop(a);
    drop(b);
    assert!(!std::path::Path::new("/sys/class/net/berth0").exists());
    assert_eq!(ruleset(), before);

    // The same through the iptables fallback (as on hosts without nft).
    let ipt = || {
        let out = std::process::Command::new("iptables-save")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    let ipt_before = ipt();
    let c = Ct(format!("ct-net-ipt-{}", std::process::id()));
    let berth_ipt = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_DIR", e2e_dir())
            .env("BERTH_FIREWALL", "iptables")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    berth_ipt(&[
        "launch",
        "debian-12",
        &c.0,
        "--container",
        "--forward",
        &format!("{port}:8000"),
        "--timeout",
        "120",
    ]);
    assert!(ipt()
        .iter()
        .any(|l| l.contains("BERTH-DNAT") && l.contains(&format!("--dport {port}"))));
    exec(
        &c.0,
        "cd /tmp && (nohup python3 -m http.server 8000 >/dev/null 2>&1 &); sleep 1",
    );
    assert_eq!(
        exec(
            &c.0,
            &fetch("http://deb.debian.org/debian/dists/bookworm/Release")
        ),
        "200"
    );
    assert_eq!(host_get(&forwarded), "200");
    berth_ipt(&["delete", "--force", &c.0]);
    assert!(!std::path::Path::new("/sys/class/net/berth0").exists());
    assert_eq!(ipt(), ipt_before);
    assert_eq!(ruleset(), before);
}

/// Regression for issue 13 item 8: the last container of one data dir tore down the bridge and
/// rules that another data dir's containers used; the iptables fallback left empty `filter` and
/// `nat` tables on a host that had none, and base chains in libvirt's `ip nat`; berth asked
/// /sys (another namespace's, under nsenter) whether its bridge existed. Two data dirs side by
/// side, in a namespace of their own, from no tables and from libvirt's: distinct addresses, the
/// bridge kept while either has a container, and the firewall exactly as before at the end.
#[test]
fn two_data_dirs_share_the_bridge_and_the_firewall_is_put_back_exactly() {
    e2e_image();
    let id = std::process::id();
    let ns = format!("berth-dd{id}");
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns])
        .status();
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    let _ns = Ns(ns.clone());
    let second = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(e2e_dir().join("images"), second.path().join("images")).unwrap();
    let dirs = [e2e_dir(), second.path().to_path_buf()];
    let berth_ns = |dir: &std::path::Path, args: &[&str]| {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_DIR", dir)
            .env("BERTH_FIREWALL", "iptables")
            .output()
            .unwrap()
    };
    let libvirt = "table ip nat {\n\tchain LIBVIRT_PRT {\n\t\tip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 masquerade\n\t}\n\n\tchain POSTROUTING {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump LIBVIRT_PRT\n\t}\n}\n";
    for start in ["", libvirt] {
        if !start.is_empty() {
            let mut c = std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            c.stdin.take().unwrap().write_all(start.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        }
        let before = ruleset_in(&ns);
        let names = [format!("ct-dd-a-{id}"), format!("ct-dd-b-{id}")];
        let mut runs = Vec::new();
        for (dir, name) in dirs.iter().zip(&names) {
            runs.push(
                std::process::Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{ns}"))
                    .arg(env!("CARGO_BIN_EXE_berth"))
                    .args(["run", "--name", name, "--network", "bridge"])
                    .args(["debian-12", "--", "sleep", "300"])
                    .env("BERTH_DIR", dir)
                    .env("BERTH_FIREWALL", "iptables")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        let mut addrs = Vec::new();
        for (dir, name) in dirs.iter().zip(&names) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let out = berth_ns(dir, &["info", "--json", name]);
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    if v["state"]["state"] == "running" && v["address"].is_string() {
                        addrs.push(v["address"].as_str().unwrap().to_string());
                        break;
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} did not come up"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        assert_ne!(addrs[0], addrs[1], "two data dirs gave out one address");
        // The first data dir's container goes: the second's keeps the bridge and its rules.
        let out = berth_ns(&dirs[0], &["delete", "--force", &names[0]]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ports = std::process::Command::new("ip")
            .args(["-n", &ns, "-o", "link", "show", "master", "berth0"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ports.stdout).lines().count(),
            1,
            "the other data dir's container lost its bridge"
        );
        assert!(ruleset_in(&ns).contains("BERTH-POST"));
        let out = berth_ns(&dirs[1], &["delete", "--force", &names[1]]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for mut r in runs {
            let _ = r.wait();
        }
        assert_eq!(ruleset_in(&ns), before, "the firewall is not as it was");
        let link = std::process::Command::new("ip")
            .args(["-n", &ns, "link", "show", "berth0"])
            .output()
            .unwrap();
        assert!(!link.status.success(), "berth0 is left");
        // A run that fails after its bridge, addresses and chains were set up (its command is
        // not there, so the failure comes at the start) rolls all of them back, with the
        // iptables fallback and with nftables.
        for firewall in ["iptables", "nft"] {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .arg(env!("CARGO_BIN_EXE_berth"))
                .args(["run", "--rm", "--network", "bridge", "debian-12", "--"])
                .arg("no-such-command")
                .env("BERTH_DIR", &dirs[0])
                .env("BERTH_FIREWALL", firewall)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(127),
                "{firewall}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                ruleset_in(&ns),
                before,
                "{firewall}: chains left after a failed run"
            );
            let link = std::process::Command::new("ip")
                .args(["-n", &ns, "link", "show", "berth0"])
                .output()
                .unwrap();
            assert!(!link.status.success(), "{firewall}: berth0 is left");
        }
    }
}
