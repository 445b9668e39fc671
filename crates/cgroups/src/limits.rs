//! Resource limits as users give them (`--memory 256M`, `--cpus 0.5`, `berth set NAME pids=64`),
//! parsed and checked without touching the system. What each limit becomes in cgroup v1 or v2
//! files is [`crate::files`]' business; network shaping (`net-rate`) is applied with tc by the
//! caller, not through cgroups.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a limit was refused. Every variant names the key and the value at fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LimitError {
    /// The key is not one berth knows.
    #[error("unknown limit {0:?}: expected one of {KEYS}")]
    UnknownKey(String),
    /// `KEY=VALUE` without the `=`.
    #[error("limit {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// The value does not parse or is out of range.
    #[error("invalid {key} {value:?}: {why}")]
    Invalid {
        /// The limit's key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What was expected.
        why: String,
    },
}

/// Keys accepted by [`Limits::set`], as listed in errors and help.
pub const KEYS: &str =
    "memory, memory-swap, cpus, cpu-weight, cpuset, pids, io-weight, io-max, net-rate";

/// The CFS period berth uses for `--cpus` (the kernel's and Docker's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Bandwidth and IOPS caps on one block device (`--io-max DEV:rbps=..,wbps=..`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoMax {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Read bytes per second.
    pub rbps: Option<u64>,
    /// Write bytes per second.
    pub wbps: Option<u64>,
    /// Read operations per second.
    pub riops: Option<u64>,
    /// Write operations per second.
    pub wiops: Option<u64>,
}

/// A device as `--io-max` names it before it is resolved: a path (`/dev/vda`, or `disk` for the
/// container's own `--disk`) or `MAJ:MIN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoMaxSpec {
    /// `MAJ:MIN`, a device path, or `disk`.
    pub device: String,
    /// The caps, with major/minor still 0 when `device` is a path.
    pub caps: IoMax,
}

/// CPU time quota: `quota_us` of CPU time every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuQuota {
    /// Microseconds of CPU time per period.
    pub quota_us: u64,
    /// Period length in microseconds.
    pub period_us: u64,
}

/// Every limit a container can have. `None` means "not limited".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// Memory plus swap in bytes (Docker's `--memory-swap`); at least `memory`.
    pub memory_swap: Option<u64>,
    /// CPU time quota (`--cpus 0.5` = 50 ms per 100 ms).
    pub cpus: Option<CpuQuota>,
    /// Relative CPU weight, 1..=10000 (cgroup v2's scale; 100 is the default).
    pub cpu_weight: Option<u64>,
    /// CPUs the container may run on, as the kernel's list syntax (`0-1,3`).
    pub cpuset: Option<String>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// Relative I/O weight, 1..=10000 (cgroup v2's scale; 100 is the default).
    pub io_weight: Option<u64>,
    /// Per-device bandwidth/IOPS caps.
    #[serde(default)]
    pub io_max: Vec<IoMaxSpec>,
    /// Network rate in bits per second, both directions (tc, not cgroups).
    pub net_rate: Option<u64>,
}

fn invalid(key: &'static str, value: &str, why: impl Into<String>) -> LimitError {
    LimitError::Invalid {
        key,
        value: value.to_string(),
        why: why.into(),
    }
}

fn size(key: &'static str, value: &str) -> Result<u64, LimitError> {
    let n = berth_disk::units::parse_size(value).map_err(|e| invalid(key, value, e.to_string()))?;
    if n == 0 {
        return Err(invalid(key, value, "must be more than 0"));
    }
    Ok(n)
}

fn number(key: &'static str, value: &str, min: u64, max: u64) -> Result<u64, LimitError> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "expected a whole number"))?;
    if n < min || n > max {
        return Err(invalid(key, value, format!("must be {min} to {max}")));
    }
    Ok(n)
}

/// `--cpus 0.5` -> 50000 µs per 100000 µs. At least 1 ms per period (the kernel's minimum).
pub fn parse_cpus(value: &str) -> Result<CpuQuota, LimitError> {
    let v: f64 = value
        .trim()
        .parse()
        .map_err(|_| invalid("cpus", value, "expected a number of CPUs such as 0.5 or 2"))?;
    if !v.is_finite() || v <= 0.0 || v > 4096.0 {
        return Err(invalid(
            "cpus",
            value,
            "must be more than 0 and at most 4096",
        ));
    }
    let quota_us = (v * CPU_PERIOD_US as f64).round() as u64;
    if quota_us < 1000 {
        return Err(invalid("cpus", value, "must be at least 0.01"));
    }
    Ok(CpuQuota {
        quota_us,
        period_us: CPU_PERIOD_US,
    })
}

/// The kernel's CPU list syntax: `0`, `0-3`, `0,2-3`. Returns the text normalised (no spaces).
pub fn parse_cpuset(value: &str) -> Result<String, LimitError> {
    let text: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    if text.is_empty() {
        return Err(invalid(
            "cpuset",
            value,
            "expected CPU numbers such as 0-1,3",
        ));
    }
    for part in text.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a
            .parse()
            .map_err(|_| invalid("cpuset", value, format!("{part:?} is not N or N-M")))?;
        let b: u32 = b
            .parse()
            .map_err(|_| invalid("cpuset", value, format!("{part:?} is not N or N-M")))?;
        if a > b || b > 8191 {
            return Err(invalid("cpuset", value, format!("bad range {part:?}")));
        }
    }
    Ok(text)
}

/// A rate such as `10mbit`, `1gbit`, `500kbit` or `1000000` (bits per second), as tc reads them;
/// `Bps` suffixes (`1mbps`) mean bytes per second, as in tc.
pub fn parse_rate(value: &str) -> Result<u64, LimitError> {
    let v = value.trim().to_ascii_lowercase();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: f64 = match unit {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => {
            return Err(invalid(
                "net-rate",
                value,
                "expected a rate such as 10mbit, 500kbit or 1gbit",
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| invalid("net-rate", value, "expected a number before the unit"))?;
    let bits = (n * mult).round();
    if !(8.0..=1e12).contains(&bits) {
        return Err(invalid("net-rate", value, "must be 8bit to 1000gbit"));
    }
    Ok(bits as u64)
}

/// `DEV:rbps=10M,wbps=5M,riops=100,wiops=100` where DEV is `MAJ:MIN`, a path or `disk`.
pub fn parse_io_max(value: &str) -> Result<IoMaxSpec, LimitError> {
    let why =
        "expected DEV:rbps=..,wbps=..,riops=..,wiops=.. (DEV is MAJ:MIN, a device path or disk)";
    // The device may itself contain ':' (MAJ:MIN), so split at the first '=' and walk back.
    let eq = value
        .find('=')
        .ok_or_else(|| invalid("io-max", value, why))?;
    let colon = value[..eq]
        .rfind(':')
        .ok_or_else(|| invalid("io-max", value, why))?;
    let (device, settings) = (&value[..colon], &value[colon + 1..]);
    if device.is_empty() {
        return Err(invalid("io-max", value, why));
    }
    let (mut major, mut minor) = (0, 0);
    if let Some((a, b)) = device.split_once(':') {
        major = a
            .parse()
            .map_err(|_| invalid("io-max", value, "bad MAJ:MIN device number"))?;
        minor = b
            .parse()
            .map_err(|_| invalid("io-max", value, "bad MAJ:MIN device number"))?;
    }
    let mut caps = IoMax {
        major,
        minor,
        rbps: None,
        wbps: None,
        riops: None,
        wiops: None,
    };
    for kv in settings.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| invalid("io-max", value, why))?;
        let slot = match k.trim() {
            "rbps" => &mut caps.rbps,
            "wbps" => &mut caps.wbps,
            "riops" => &mut caps.riops,
            "wiops" => &mut caps.wiops,
            other => {
                return Err(invalid(
                    "io-max",
                    value,
                    format!("unknown setting {other:?}: expected rbps, wbps, riops or wiops"),
                ))
            }
        };
        *slot = Some(if k.ends_with("bps") {
            size("io-max", v)?
        } else {
            number("io-max", v, 1, u64::MAX)?
        });
    }
    Ok(IoMaxSpec {
        device: device.to_string(),
        caps,
    })
}

impl Limits {
    /// Apply one `KEY=VALUE` (as `berth set` takes them). `KEY=none` (or `max`) lifts a limit.
    /// On error the limits are left as they were.
    pub fn set(&mut self, assignment: &str) -> Result<(), LimitError> {
        let mut next = self.clone();
        next.set_unchecked(assignment)?;
        next.check()?;
        *self = next;
        Ok(())
    }

    fn set_unchecked(&mut self, assignment: &str) -> Result<(), LimitError> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| LimitError::NotKeyValue(assignment.to_string()))?;
        let lift = matches!(value.trim(), "none" | "max" | "");
        match key.trim() {
            "memory" => {
                self.memory = if lift {
                    None
                } else {
                    Some(size("memory", value)?)
                }
            }
            "memory-swap" => {
                self.memory_swap = if lift {
                    None
                } else {
                    Some(size("memory-swap", value)?)
                }
            }
            "cpus" => self.cpus = if lift { None } else { Some(parse_cpus(value)?) },
            "cpu-weight" => {
                self.cpu_weight = if lift {
                    None
                } else {
                    Some(number("cpu-weight", value, 1, 10_000)?)
                }
            }
            "cpuset" => {
                self.cpuset = if lift {
                    None
                } else {
                    Some(parse_cpuset(value)?)
                }
            }
            "pids" => {
                self.pids = if lift {
                    None
                } else {
                    Some(number("pids", value, 1, u32::MAX as u64)?)
                }
            }
            "io-weight" => {
                self.io_weight = if lift {
                    None
                } else {
                    Some(number("io-weight", value, 1, 10_000)?)
                }
            }
            "io-max" => {
                if lift {
                    self.io_max.clear();
                } else {
                    let spec = parse_io_max(value)?;
                    self.io_max.retain(|s| s.device != spec.device);
                    self.io_max.push(spec);
                }
            }
            "net-rate" => self.net_rate = if lift { None } else { Some(parse_rate(value)?) },
            other => return Err(LimitError::UnknownKey(other.to_string())),
        }
        Ok(())
    }

    /// Cross-field checks: swap total at least memory, and only with memory.
    pub fn check(&self) -> Result<(), LimitError> {
        if let Some(total) = self.memory_swap {
            let Some(mem) = self.memory else {
                return Err(invalid(
                    "memory-swap",
                    &total.to_string(),
                    "needs --memory as well (it is memory plus swap)",
                ));
            };
            if total < mem {
                return Err(invalid(
                    "memory-swap",
                    &total.to_string(),
                    format!("is memory plus swap, so it must be at least memory ({mem})"),
                ));
            }
        }
        Ok(())
    }

    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The limits as `KEY=VALUE` assignments that [`Limits::set`] reads back to the same
    /// limits, in [`KEYS`] order, one `io-max` per device; sizes in the largest binary unit that
    /// is exact (`256M`), rates in bits per second.
    pub fn assignments(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        put("memory", self.memory.map(exact_size));
        put("memory-swap", self.memory_swap.map(exact_size));
        put(
            "cpus",
            self.cpus
                .map(|q| format!("{}", q.quota_us as f64 / q.period_us as f64)),
        );
        put("cpu-weight", self.cpu_weight.map(|w| w.to_string()));
        put("cpuset", self.cpuset.clone());
        put("pids", self.pids.map(|p| p.to_string()));
        put("io-weight", self.io_weight.map(|w| w.to_string()));
        for m in &self.io_max {
            let c = &m.caps;
            let caps: Vec<String> = [
                ("rbps", c.rbps),
                ("wbps", c.wbps),
                ("riops", c.riops),
                ("wiops", c.wiops),
            ]
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
            put("io-max", Some(format!("{}:{}", m.device, caps.join(","))));
        }
        put("net-rate", self.net_rate.map(|r| r.to_string()));
        out
    }
}

/// `bytes` with the largest binary suffix that divides it exactly (`268435456` is `256M`).
fn exact_size(bytes: u64) -> String {
    for (shift, suffix) in [
        (60, "E"),
        (50, "P"),
        (40, "T"),
        (30, "G"),
        (20, "M"),
        (10, "K"),
    ] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_read_back_to_the_same_limits() {
        let mut l = Limits::default();
        for a in [
            "memory=256M",
            "memory-swap=1073741825",
            "cpus=0.25",
            "cpu-weight=50",
            "cpuset=0-1",
            "pids=64",
            "io-weight=10",
            "io-max=8:0:rbps=1M,wiops=100",
            "io-max=disk:wbps=5M",
            "net-rate=10mbit",
        ] {
            l.set(a).unwrap();
        }
        let got = l.assignments();
        assert_eq!(got[0], ("memory", "256M".to_string()));
        assert_eq!(got[1], ("memory-swap", "1073741825".to_string()));
        assert_eq!(got[2], ("cpus", "0.25".to_string()));
        assert!(got.contains(&("io-max", "8:0:rbps=1048576,wiops=100".to_string())));
        assert!(got.contains(&("net-rate", "10000000".to_string())));
        let mut back = Limits::default();
        for (k, v) in &got {
            back.set(&format!("{k}={v}")).unwrap();
        }
        assert_eq!(back, l);
        assert!(Limits::default().assignments().is_empty());
    }

    #[test]
    fn parses_each_key() {
        let mut l = Limits::default();
        for a in [
            "memory=256M",
            "memory-swap=512M",
            "cpus=0.5",
            "cpu-weight=200",
            "cpuset=0-1, 3",
            "pids=64",
            "io-weight=300",
            "io-max=8:0:rbps=10M,wiops=100",
            "net-rate=10mbit",
        ] {
            l.set(a).unwrap_or_else(|e| panic!("{a}: {e}"));
        }
        assert_eq!(l.memory, Some(256 << 20));
        assert_eq!(l.memory_swap, Some(512 << 20));
        assert_eq!(
            l.cpus,
            Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000
            })
        );
        assert_eq!(l.cpuset.as_deref(), Some("0-1,3"));
        assert_eq!(l.io_max[0].caps.major, 8);
        assert_eq!(l.io_max[0].caps.rbps, Some(10 << 20));
        assert_eq!(l.io_max[0].caps.wiops, Some(100));
        assert_eq!(l.net_rate, Some(10_000_000));
        l.set("memory-swap=none").unwrap();
        l.set("memory=max").unwrap();
        assert_eq!((l.memory, l.memory_swap), (None, None));
    }

    #[test]
    fn errors_name_key_and_value() {
        let mut l = Limits::default();
        let e = l.set("cpus=0").unwrap_err().to_string();
        assert!(e.contains("cpus") && e.contains("\"0\""), "{e}");
        assert!(matches!(l.set("bogus=1"), Err(LimitError::UnknownKey(_))));
        assert!(matches!(l.set("memory"), Err(LimitError::NotKeyValue(_))));
        assert!(l.set("cpuset=3-1").is_err());
        assert!(l.set("cpu-weight=0").is_err());
        assert!(l.set("net-rate=fast").is_err());
        assert!(l.set("io-max=disk:rbps=x").is_err());
        assert!(l.set("io-max=disk:speed=1").is_err());
        assert!(l.set("memory-swap=1G").is_err(), "swap without memory");
        let mut l = Limits::default();
        l.set("memory=1G").unwrap();
        assert!(l.set("memory-swap=512M").is_err(), "swap below memory");
        // A refused change leaves the limits as they were (found by fuzzing: memory raised
        // above swap used to stay set, and swap - memory underflowed).
        l.set("memory-swap=2G").unwrap();
        assert!(l.set("memory=3G").is_err());
        assert_eq!((l.memory, l.memory_swap), (Some(1 << 30), Some(2 << 30)));
    }

    #[test]
    fn io_max_devices() {
        let s = parse_io_max("/dev/loop3:wbps=1M").unwrap();
        assert_eq!(s.device, "/dev/loop3");
        assert_eq!(s.caps.wbps, Some(1 << 20));
        let s = parse_io_max("disk:riops=50,wiops=60").unwrap();
        assert_eq!(
            (s.device.as_str(), s.caps.riops, s.caps.wiops),
            ("disk", Some(50), Some(60))
        );
        assert!(parse_io_max(":wbps=1").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("1mbps").unwrap(), 8_000_000);
        assert_eq!(parse_rate("2.5mbit").unwrap(), 2_500_000);
    }
}
