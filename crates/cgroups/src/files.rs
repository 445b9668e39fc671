//! What each limit becomes in cgroup files, for v1 and for v2: pure, no I/O.
//!
//! Weights use cgroup v2's scale (1..=10000, default 100) everywhere in berth. On v1 they are
//! mapped linearly around the defaults as systemd maps them: `cpu.shares = weight * 1024 / 100`
//! (clamped to 2..=262144) and `blkio.weight = weight * 500 / 100` (clamped to 10..=1000).

use crate::limits::{IoMax, Limits};
use crate::Version;

/// One value to write: the controller (v1 hierarchy name, `""` on v2), the file, the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The v1 controller whose hierarchy holds the file; empty on v2.
    pub controller: &'static str,
    /// File name inside the group's directory.
    pub file: &'static str,
    /// What to write.
    pub value: String,
}

fn w(controller: &'static str, file: &'static str, value: impl Into<String>) -> Write {
    Write {
        controller,
        file,
        value: value.into(),
    }
}

/// cgroup v2 weight -> v1 `cpu.shares`.
pub fn cpu_shares(weight: u64) -> u64 {
    (weight * 1024 / 100).clamp(2, 262_144)
}

/// cgroup v2 weight -> v1 `blkio.weight`.
pub fn blkio_weight(weight: u64) -> u64 {
    (weight * 500 / 100).clamp(10, 1000)
}

fn v2_io_max(d: &IoMax, reset: bool) -> String {
    let f = |v: Option<u64>| match (reset, v) {
        (false, Some(n)) => n.to_string(),
        _ => "max".to_string(),
    };
    format!(
        "{}:{} rbps={} wbps={} riops={} wiops={}",
        d.major,
        d.minor,
        f(d.rbps),
        f(d.wbps),
        f(d.riops),
        f(d.wiops)
    )
}

/// The writes that set `limits` (only the limits that are set), with `io` the resolved io-max
/// devices. Memory comes first and swap second; see [`crate::Cgroup::apply`] for v1's ordering.
pub fn writes(version: Version, limits: &Limits, io: &[IoMax]) -> Vec<Write> {
    let mut out = Vec::new();
    match version {
        Version::V2 => {
            if let Some(m) = limits.memory {
                out.push(w("", "memory.max", m.to_string()));
            }
            if let (Some(total), Some(m)) = (limits.memory_swap, limits.memory) {
                out.push(w(
                    "",
                    "memory.swap.max",
                    total.saturating_sub(m).to_string(),
                ));
            }
            if let Some(q) = limits.cpus {
                out.push(w("", "cpu.max", format!("{} {}", q.quota_us, q.period_us)));
            }
            if let Some(wt) = limits.cpu_weight {
                out.push(w("", "cpu.weight", wt.to_string()));
            }
            if let Some(c) = &limits.cpuset {
                out.push(w("", "cpuset.cpus", c.clone()));
            }
            if let Some(p) = limits.pids {
                out.push(w("", "pids.max", p.to_string()));
            }
            if let Some(wt) = limits.io_weight {
                out.push(w("", "io.weight", format!("default {wt}")));
            }
            for d in io {
                out.push(w("", "io.max", v2_io_max(d, false)));
            }
        }
        Version::V1 => {
            if let Some(m) = limits.memory {
                out.push(w("memory", "memory.limit_in_bytes", m.to_string()));
            }
            if let Some(total) = limits.memory_swap {
                out.push(w(
                    "memory",
                    "memory.memsw.limit_in_bytes",
                    total.to_string(),
                ));
            }
            if let Some(q) = limits.cpus {
                out.push(w("cpu", "cpu.cfs_period_us", q.period_us.to_string()));
                out.push(w("cpu", "cpu.cfs_quota_us", q.quota_us.to_string()));
            }
            if let Some(wt) = limits.cpu_weight {
                out.push(w("cpu", "cpu.shares", cpu_shares(wt).to_string()));
            }
            if let Some(c) = &limits.cpuset {
                out.push(w("cpuset", "cpuset.cpus", c.clone()));
            }
            if let Some(p) = limits.pids {
                out.push(w("pids", "pids.max", p.to_string()));
            }
            if let Some(wt) = limits.io_weight {
                out.push(w("blkio", "blkio.weight", blkio_weight(wt).to_string()));
            }
            for d in io {
                let dev = |v: Option<u64>| v.map(|n| format!("{}:{} {n}", d.major, d.minor));
                for (file, v) in [
                    ("blkio.throttle.read_bps_device", dev(d.rbps)),
                    ("blkio.throttle.write_bps_device", dev(d.wbps)),
                    ("blkio.throttle.read_iops_device", dev(d.riops)),
                    ("blkio.throttle.write_iops_device", dev(d.wiops)),
                ] {
                    if let Some(v) = v {
                        out.push(w("blkio", file, v));
                    }
                }
            }
        }
    }
    out
}

/// The writes that lift what `old` limited and `new` no longer does (for `berth set KEY=none`).
/// `parent_cpus` is what an unlimited cpuset goes back to on v1 (the parent's `cpuset.cpus`).
pub fn resets(
    version: Version,
    old: &Limits,
    new: &Limits,
    old_io: &[IoMax],
    new_io: &[IoMax],
    parent_cpus: &str,
) -> Vec<Write> {
    let mut out = Vec::new();
    let gone = |a: bool, b: bool| a && !b;
    let v2 = version == Version::V2;
    // Swap first: on v1 memsw must stay >= memory while memory is lifted.
    if gone(old.memory_swap.is_some(), new.memory_swap.is_some()) {
        out.push(if v2 {
            w("", "memory.swap.max", "max")
        } else {
            w("memory", "memory.memsw.limit_in_bytes", "-1")
        });
    }
    if gone(old.memory.is_some(), new.memory.is_some()) {
        out.push(if v2 {
            w("", "memory.max", "max")
        } else {
            w("memory", "memory.limit_in_bytes", "-1")
        });
    }
    if gone(old.cpus.is_some(), new.cpus.is_some()) {
        out.push(if v2 {
            w("", "cpu.max", "max 100000")
        } else {
            w("cpu", "cpu.cfs_quota_us", "-1")
        });
    }
    if gone(old.cpu_weight.is_some(), new.cpu_weight.is_some()) {
        out.push(if v2 {
            w("", "cpu.weight", "100")
        } else {
            w("cpu", "cpu.shares", "1024")
        });
    }
    if gone(old.cpuset.is_some(), new.cpuset.is_some()) {
        out.push(if v2 {
            w("", "cpuset.cpus", "")
        } else {
            w("cpuset", "cpuset.cpus", parent_cpus)
        });
    }
    if gone(old.pids.is_some(), new.pids.is_some()) {
        out.push(w(if v2 { "" } else { "pids" }, "pids.max", "max"));
    }
    if gone(old.io_weight.is_some(), new.io_weight.is_some()) {
        out.push(if v2 {
            w("", "io.weight", "default 100")
        } else {
            w("blkio", "blkio.weight", "500")
        });
    }
    for d in old_io {
        if new_io
            .iter()
            .any(|n| (n.major, n.minor) == (d.major, d.minor))
        {
            continue;
        }
        if v2 {
            out.push(w("", "io.max", v2_io_max(d, true)));
        } else {
            for file in [
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_bps_device",
                "blkio.throttle.read_iops_device",
                "blkio.throttle.write_iops_device",
            ] {
                out.push(w("blkio", file, format!("{}:{} 0", d.major, d.minor)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(kv: &[&str]) -> Limits {
        let mut l = Limits::default();
        for a in kv {
            l.set(a).unwrap();
        }
        l
    }

    fn find<'a>(ws: &'a [Write], file: &str) -> &'a str {
        &ws.iter()
            .find(|x| x.file == file)
            .unwrap_or_else(|| panic!("no {file} in {ws:?}"))
            .value
    }

    #[test]
    fn v2_values() {
        let l = limits(&[
            "memory=256M",
            "memory-swap=384M",
            "cpus=1.5",
            "cpu-weight=50",
            "pids=10",
            "io-weight=200",
        ]);
        let io = [IoMax {
            major: 7,
            minor: 3,
            rbps: None,
            wbps: Some(1048576),
            riops: None,
            wiops: Some(20),
        }];
        let ws = writes(Version::V2, &l, &io);
        assert!(ws.iter().all(|x| x.controller.is_empty()));
        assert_eq!(find(&ws, "memory.max"), "268435456");
        assert_eq!(find(&ws, "memory.swap.max"), (128u64 << 20).to_string());
        assert_eq!(find(&ws, "cpu.max"), "150000 100000");
        assert_eq!(find(&ws, "cpu.weight"), "50");
        assert_eq!(find(&ws, "pids.max"), "10");
        assert_eq!(find(&ws, "io.weight"), "default 200");
        assert_eq!(
            find(&ws, "io.max"),
            "7:3 rbps=max wbps=1048576 riops=max wiops=20"
        );
    }

    #[test]
    fn v1_values() {
        let l = limits(&[
            "memory=256M",
            "memory-swap=384M",
            "cpus=0.5",
            "cpu-weight=100",
            "io-weight=100",
            "cpuset=0",
        ]);
        let io = [IoMax {
            major: 7,
            minor: 3,
            rbps: Some(5),
            wbps: None,
            riops: None,
            wiops: None,
        }];
        let ws = writes(Version::V1, &l, &io);
        assert_eq!(
            find(&ws, "memory.memsw.limit_in_bytes"),
            (384u64 << 20).to_string()
        );
        assert_eq!(find(&ws, "cpu.cfs_quota_us"), "50000");
        assert_eq!(find(&ws, "cpu.shares"), "1024");
        assert_eq!(find(&ws, "blkio.weight"), "500");
        assert_eq!(find(&ws, "cpuset.cpus"), "0");
        assert_eq!(find(&ws, "blkio.throttle.read_bps_device"), "7:3 5");
        assert!(!ws
            .iter()
            .any(|x| x.file == "blkio.throttle.write_bps_device"));
        assert_eq!(cpu_shares(1), 10);
        assert_eq!(cpu_shares(10_000), 102_400);
        assert_eq!(blkio_weight(1), 10);
        assert_eq!(blkio_weight(10_000), 1000);
    }

    #[test]
    fn lifting_resets_only_what_went() {
        let old = limits(&["memory=1G", "memory-swap=2G", "pids=5", "cpus=1"]);
        let new = limits(&["pids=5"]);
        let ws = resets(Version::V1, &old, &new, &[], &[], "0-1");
        let files: Vec<_> = ws.iter().map(|x| x.file).collect();
        assert_eq!(
            files,
            [
                "memory.memsw.limit_in_bytes",
                "memory.limit_in_bytes",
                "cpu.cfs_quota_us"
            ]
        );
        let ws = resets(Version::V2, &old, &new, &[], &[], "");
        assert_eq!(find(&ws, "memory.max"), "max");
        assert_eq!(find(&ws, "cpu.max"), "max 100000");
    }
}
