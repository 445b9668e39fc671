//! The guest's network: passt (Debian's `passt`), a user-space network stack that QEMU reaches
//! over a unix socket (`-netdev stream`), as libvirt's `<backend type='passt'/>` does.
//!
//! Why not QEMU's own user-mode NAT (slirp): it maps its gateway, 10.0.2.2, to the host's
//! loopback, so a guest reached every host service bound to 127.0.0.1, other guests' SSH
//! forwards included, and slirp has no switch for that in QEMU 7.2. passt with `--no-map-gw`
//! maps nothing to the host: the guest's gateway is the host's own gateway, and what the guest
//! sends goes out as the host's own traffic would. Forwards still bind on 127.0.0.1 only. Why not
//! a tap on berth's bridge: that needs root and the host-wide bridge for every VM, and a
//! forward from the host's loopback would need `route_localnet`, which opens loopback up wider.
//!
//! passt runs as the VM's companion process: berth starts it, QEMU connects to its socket, and
//! `--one-off` ends it when QEMU goes (however QEMU ends).

use crate::vm::{Forward, Kind};
use std::path::Path;

/// The MTU passt offers over DHCP: its default (65520) for virtio-net; 1500 for the e1000 of the
/// `full` kind, whose driver refuses jumbo frames beyond 16110 bytes.
pub fn mtu(kind: Kind) -> u32 {
    match kind {
        Kind::Full => 1500,
        Kind::Hybrid | Kind::Paravirt => 65520,
    }
}

/// passt's arguments for one guest: in the foreground (berth detaches it and keeps its pid), for
/// one QEMU only, no gateway mapped to the host, the forwards on 127.0.0.1, its log in `log`.
/// Not `--quiet`: at passt's default level the log says when the guest takes its DHCP lease
/// ([`guest_has_address`]), a few lines per boot (passt caps its log file at 1 MiB).
pub fn argv(socket: &Path, log: &Path, forwards: &[Forward], kind: Kind) -> Vec<String> {
    let mut a: Vec<String> = ["--foreground", "--one-off", "--no-map-gw", "--socket"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(socket.display().to_string());
    a.push("--log-file".into());
    a.push(log.display().to_string());
    a.push("--mtu".into());
    a.push(mtu(kind).to_string());
    if forwards.is_empty() {
        a.extend(["--tcp-ports".into(), "none".into()]);
    }
    for f in forwards {
        a.push("--tcp-ports".into());
        a.push(format!("127.0.0.1/{}:{}", f.host, f.guest));
    }
    a.extend(["--udp-ports".into(), "none".into()]);
    a
}

/// Whether passt's log (as [`argv`] has it written) shows that the guest has taken its IPv4
/// address: passt answered its DHCP request. Until then a connection to a forwarded port cannot
/// reach the guest, and passt holds it until its SYN timeout (10 s) instead of failing it.
pub fn guest_has_address(log: &str) -> bool {
    log.lines().any(|l| l.contains("DHCP: ack to request"))
}

/// QEMU's `-netdev` for a guest on passt's socket.
pub fn netdev(socket: &Path) -> String {
    format!(
        "stream,id=net0,server=off,addr.type=unix,addr.path={}",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gateway_to_the_host_and_forwards_on_loopback_only() {
        let a = argv(
            Path::new("/v/passt.sock"),
            Path::new("/v/passt.log"),
            &[
                Forward {
                    host: 40022,
                    guest: 22,
                },
                Forward {
                    host: 8080,
                    guest: 80,
                },
            ],
            Kind::Paravirt,
        );
        assert_eq!(
            a.join(" "),
            "--foreground --one-off --no-map-gw --socket /v/passt.sock --log-file /v/passt.log \
             --mtu 65520 --tcp-ports 127.0.0.1/40022:22 --tcp-ports 127.0.0.1/8080:80 \
             --udp-ports none"
        );
        let none = argv(Path::new("s"), Path::new("p"), &[], Kind::Full);
        assert!(none.join(" ").contains("--mtu 1500 --tcp-ports none"));
        assert_eq!(
            netdev(Path::new("/v/passt.sock")),
            "stream,id=net0,server=off,addr.type=unix,addr.path=/v/passt.sock"
        );
    }

    #[test]
    fn the_guest_has_its_address_once_passt_acked_its_dhcp_request() {
        // As Debian 12's passt writes it (seen in a guest's passt.log here).
        let booting = "0.9316: info:    Template interface: eth0 (IPv4), eth0 (IPv6)\n\
                       0.9317: info:    DHCP:\n\
                       0.9317: info:        assign: 192.0.2.2\n\
                       0.9951: info:    accepted connection from PID 11194\n\
                       23.0617: info:    DHCP: offer to discover\n\
                       23.0617: info:        from 52:54:00:12:34:56\n";
        assert!(!guest_has_address(booting));
        assert!(!guest_has_address(""));
        let leased = format!(
            "{booting}23.0690: info:    DHCP: ack to request\n\
             23.0690: info:        from 52:54:00:12:34:56\n"
        );
        assert!(guest_has_address(&leased));
    }
}
