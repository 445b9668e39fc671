//! `disk info`: what `qemu-img info` reports, with the same JSON field names.

use crate::image::{probe_format, walk_chain, Format, Layer};
use crate::policy::{absolute_parent, BackingPolicy};
use crate::qcow2::meta::Snapshot;
use crate::qcow2::Qcow2File;
use crate::units::human_size;
use crate::{Error, Result};
use serde::Serialize;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One internal snapshot as `qemu-img info` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfo {
    /// Instruction count, if recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icount: Option<u64>,
    /// Saved VM state size.
    pub vm_state_size: u64,
    /// Creation time, seconds.
    pub date_sec: u64,
    /// Creation time, nanoseconds.
    pub date_nsec: u64,
    /// Guest clock, seconds.
    pub vm_clock_sec: u64,
    /// Guest clock, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
}

impl From<&Snapshot> for SnapshotInfo {
    fn from(s: &Snapshot) -> SnapshotInfo {
        SnapshotInfo {
            icount: s.icount,
            vm_state_size: s.vm_state_size,
            date_sec: u64::from(s.date_sec),
            date_nsec: u64::from(s.date_nsec),
            vm_clock_sec: s.vm_clock_nsec / 1_000_000_000,
            vm_clock_nsec: s.vm_clock_nsec % 1_000_000_000,
            id: s.id.clone(),
            name: s.name.clone(),
        }
    }
}

/// qcow2-specific data (`format-specific.data`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Qcow2Specific {
    /// "0.10" for v2, "1.1" for v3.
    pub compat: String,
    /// "zlib" or "zstd".
    pub compression_type: String,
    /// Lazy refcounts enabled.
    pub lazy_refcounts: bool,
    /// Refcount width.
    pub refcount_bits: u32,
    /// Marked corrupt.
    pub corrupt: bool,
    /// Extended L2 entries.
    pub extended_l2: bool,
}

/// `format-specific`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FormatSpecific {
    /// Always "qcow2" here.
    #[serde(rename = "type")]
    pub kind: String,
    /// The data.
    pub data: Qcow2Specific,
}

/// What `berth disk info` reports about one image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// Internal snapshots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotInfo>,
    /// Guest-visible size.
    pub virtual_size: u64,
    /// The file name as given.
    pub filename: String,
    /// Cluster size (qcow2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// "qcow2" or "raw".
    pub format: Format,
    /// Bytes allocated on the host file system.
    pub actual_size: u64,
    /// qcow2 details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<FormatSpecific>,
    /// Backing file name as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// Backing file path resolved against the image's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_backing_filename: Option<String>,
    /// Backing format as recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
    /// Dirty flag.
    pub dirty_flag: bool,
}

/// Info about `path`, and with `chain` about every backing file below it (policy-checked).
pub fn info(
    path: &Path,
    format: Option<Format>,
    chain: bool,
    policy: &BackingPolicy,
) -> Result<Vec<ImageInfo>> {
    let format = match format {
        Some(f) => f,
        None => probe_format(path)?,
    };
    if chain {
        let layers = walk_chain(path, format, policy)?;
        layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let name = if i == 0 {
                    path.to_path_buf()
                } else {
                    l.path.clone()
                };
                layer_info(&name, l)
            })
            .collect()
    } else {
        let layer = match format {
            Format::Raw => Layer {
                path: path.to_path_buf(),
                format,
                header: None,
                size: std::fs::metadata(path)
                    .map_err(Error::io("reading", path))?
                    .len(),
            },
            Format::Qcow2 => {
                let q = Qcow2File::open(path, false).map_err(Error::format(path))?;
                crate::qcow2::overlap::verify(&q).map_err(Error::format(path))?;
                Layer {
                    path: path.to_path_buf(),
                    format,
                    size: q.header.size,
                    header: Some(q.header),
                }
            }
        };
        Ok(vec![layer_info(path, &layer)?])
    }
}

fn layer_info(name: &Path, l: &Layer) -> Result<ImageInfo> {
    let meta = std::fs::metadata(&l.path).map_err(Error::io("reading", &l.path))?;
    let mut info = ImageInfo {
        snapshots: Vec::new(),
        virtual_size: l.size,
        filename: name.display().to_string(),
        cluster_size: None,
        format: l.format,
        actual_size: meta.blocks() * 512,
        format_specific: None,
        backing_filename: None,
        full_backing_filename: None,
        backing_filename_format: None,
        dirty_flag: false,
    };
    if let Some(h) = &l.header {
        let q = Qcow2File::open(&l.path, false).map_err(Error::format(&l.path))?;
        info.snapshots = q
            .snapshots()
            .map_err(Error::format(&l.path))?
            .iter()
            .map(SnapshotInfo::from)
            .collect();
        info.cluster_size = Some(h.cluster_size());
        info.dirty_flag = h.is_dirty();
        info.format_specific = Some(FormatSpecific {
            kind: "qcow2".into(),
            data: Qcow2Specific {
                compat: if h.version == 2 {
                    "0.10".into()
                } else {
                    "1.1".into()
                },
                compression_type: if h.compression_type == 1 {
                    "zstd".into()
                } else {
                    "zlib".into()
                },
                lazy_refcounts: h.lazy_refcounts(),
                refcount_bits: h.refcount_bits(),
                corrupt: h.is_corrupt(),
                extended_l2: h.incompatible_features & crate::qcow2::header::INCOMPAT_EXTL2 != 0,
            },
        });
        if let Some(b) = &h.backing_file {
            info.backing_filename = Some(b.clone());
            let full = if Path::new(b).is_absolute() {
                b.clone()
            } else {
                absolute_parent(&l.path)
                    .map(|p| p.join(b).display().to_string())
                    .unwrap_or_else(|| b.clone())
            };
            info.full_backing_filename = Some(full);
            info.backing_filename_format = h.backing_format.clone();
        }
    }
    Ok(info)
}

fn fmt_date(sec: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm), UTC.
    let days = (sec / 86400) as i64;
    let rem = sec % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl fmt::Display for ImageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image: {}", self.filename)?;
        writeln!(f, "file format: {}", self.format)?;
        writeln!(
            f,
            "virtual size: {} ({} bytes)",
            human_size(self.virtual_size),
            self.virtual_size
        )?;
        writeln!(f, "disk size: {}", human_size(self.actual_size))?;
        if let Some(cs) = self.cluster_size {
            writeln!(f, "cluster_size: {cs}")?;
        }
        if let Some(b) = &self.backing_filename {
            match &self.full_backing_filename {
                Some(full) if full != b => writeln!(f, "backing file: {b} (actual path: {full})")?,
                _ => writeln!(f, "backing file: {b}")?,
            }
            if let Some(fmt) = &self.backing_filename_format {
                writeln!(f, "backing file format: {fmt}")?;
            }
        }
        if !self.snapshots.is_empty() {
            writeln!(f, "Snapshot list:")?;
            writeln!(
                f,
                "{:<10}{:<20}{:>11}{:>20}{:>14}{:>11}",
                "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
            )?;
            for s in &self.snapshots {
                let clock = s.vm_clock_sec;
                writeln!(
                    f,
                    "{:<10}{:<20}{:>11}{:>20}{:>14}{:>11}",
                    s.id,
                    s.name,
                    human_size(s.vm_state_size),
                    fmt_date(s.date_sec),
                    format!(
                        "{:02}:{:02}:{:02}.{:03}",
                        clock / 3600,
                        clock % 3600 / 60,
                        clock % 60,
                        s.vm_clock_nsec / 1_000_000
                    ),
                    s.icount.map(|i| i.to_string()).unwrap_or_default()
                )?;
            }
        }
        if let Some(fs) = &self.format_specific {
            writeln!(f, "Format specific information:")?;
            writeln!(f, "    compat: {}", fs.data.compat)?;
            writeln!(f, "    compression type: {}", fs.data.compression_type)?;
            writeln!(f, "    lazy refcounts: {}", fs.data.lazy_refcounts)?;
            writeln!(f, "    refcount bits: {}", fs.data.refcount_bits)?;
            writeln!(f, "    corrupt: {}", fs.data.corrupt)?;
            writeln!(f, "    extended l2: {}", fs.data.extended_l2)?;
        }
        if self.dirty_flag {
            writeln!(f, "dirty flag: true")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_format_as_utc() {
        assert_eq!(super::fmt_date(0), "1970-01-01 00:00:00");
        assert_eq!(super::fmt_date(1_795_000_000), "2026-11-18 11:06:40");
    }
}
