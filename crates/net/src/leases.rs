//! Host-wide address leases of berth's bridge, shared by every data dir: one file per network
//! namespace under /run/berth, a line `ADDR KEY` per container, where KEY names the container
//! across data dirs. A lease lives while the container's veth does. Callers hold berth's
//! host-wide network lock.

use std::net::Ipv4Addr;

fn file() -> Option<std::path::PathBuf> {
    Some(format!("/run/berth/leases-{}", crate::host::netns_id()?).into())
}

fn read() -> Vec<(Ipv4Addr, String)> {
    let Some(f) = file() else { return Vec::new() };
    std::fs::read_to_string(f)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, k) = l.split_once(' ')?;
            Some((a.parse().ok()?, k.to_string()))
        })
        .collect()
}

fn write(all: &[(Ipv4Addr, String)]) {
    let Some(f) = file() else { return };
    let _ = std::fs::create_dir_all("/run/berth");
    let text: String = all.iter().map(|(a, k)| format!("{a} {k}\n")).collect();
    let _ = std::fs::write(f, text);
}

/// Addresses leased to other containers whose veth still exists.
pub fn live(except: &str) -> Vec<Ipv4Addr> {
    read()
        .into_iter()
        .filter(|(_, k)| k != except && super::link_exists(&super::veth_names(k).0))
        .map(|(a, _)| a)
        .collect()
}

/// Lease `addr` to `key` (dropping leases whose veth is gone).
pub fn take(addr: Ipv4Addr, key: &str) {
    let mut all: Vec<_> = read()
        .into_iter()
        .filter(|(a, k)| k != key && *a != addr && super::link_exists(&super::veth_names(k).0))
        .collect();
    all.push((addr, key.to_string()));
    write(&all);
}
