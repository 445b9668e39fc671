//! [`Host`]: the rules run on this host with `ip`, `nft`/`iptables`, `tc` and `nsenter`, and
//! the host settings they need (IPv4 forwarding, turned back off if berth turned it on).

use crate::rules::*;
use crate::{restore, Bridge, Firewall, NetError};
use std::net::Ipv4Addr;
use std::process::Command;

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
pub(crate) fn netns_id() -> Option<u64> {
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

/// A command's result, with "File exists" (`EEXIST`: the link or address is there) taken as
/// done.
fn already(r: Result<String, NetError>) -> Result<(), NetError> {
    match r {
        Err(NetError::Command { stderr, .. }) if stderr.contains("File exists") => Ok(()),
        r => r.map(drop),
    }
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
            // Made meanwhile by a berth that does not share this one's lock (another mount
            // namespace's /run, an older berth): what exists is what is wanted.
            already(run("ip", &s(&["link", "add", &b.name, "type", "bridge"])))?;
            already(run(
                "ip",
                &s(&["addr", "add", &format!("{}/24", b.gateway), "dev", &b.name]),
            ))?;
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
