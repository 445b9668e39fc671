//! Commands that change an existing image in place: check and repair, snapshots, resize,
//! rebase, commit and guest-data writes.

use super::Progress;
use crate::image::{probe_format, Chain, Format};
use crate::policy::BackingPolicy;
use crate::qcow2::check::{CheckReport, Repair};
use crate::qcow2::meta::Snapshot;
use crate::qcow2::refcount::Qcow2Mut;
use crate::qcow2::{snapshot, Qcow2File};
use crate::{Error, Result};
use imago::format::PreallocateMode;
use imago::ShallowMapping;
use std::path::Path;

/// Open a qcow2 image whose metadata may be damaged (for check and repair, which exist to look
/// at damage).
fn open_damaged(path: &Path, writable: bool, what: &str) -> Result<Qcow2File> {
    if probe_format(path)? != Format::Qcow2 {
        return Err(Error::Invalid(format!(
            "{} is a raw image; {what} needs qcow2",
            path.display()
        )));
    }
    Qcow2File::open(path, writable).map_err(Error::format(path))
}

/// Open a qcow2 image, refusing one whose metadata structures overlap.
fn open_qcow2(path: &Path, writable: bool, what: &str) -> Result<Qcow2File> {
    let q = open_damaged(path, writable, what)?;
    crate::qcow2::overlap::verify(&q).map_err(Error::format(path))?;
    Ok(q)
}

/// Check a qcow2 image, repairing as asked.
pub fn check(path: &Path, repair: Repair) -> Result<CheckReport> {
    let q = open_damaged(path, repair != Repair::None, "check")?;
    crate::qcow2::check::check(q, &path.display().to_string(), repair).map_err(Error::format(path))
}

/// List internal snapshots.
pub fn snapshot_list(path: &Path) -> Result<Vec<Snapshot>> {
    let q = open_qcow2(path, false, "a snapshot")?;
    q.snapshots().map_err(Error::format(path))
}

/// Create internal snapshot `name`.
pub fn snapshot_create(path: &Path, name: &str) -> Result<Snapshot> {
    let q = open_qcow2(path, true, "a snapshot")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    snapshot::create(q, name, (now.as_secs() as u32, now.subsec_nanos()))
        .map_err(Error::format(path))
}

/// Revert to snapshot `name`.
pub fn snapshot_apply(path: &Path, name: &str) -> Result<()> {
    let q = open_qcow2(path, true, "a snapshot")?;
    snapshot::apply(q, name).map_err(Error::format(path))
}

/// Delete snapshot `name`.
pub fn snapshot_delete(path: &Path, name: &str) -> Result<Snapshot> {
    let q = open_qcow2(path, true, "a snapshot")?;
    snapshot::delete(q, name).map_err(Error::format(path))
}

/// A resize request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewSize {
    /// Exactly this size.
    Absolute(u64),
    /// Grow by this much.
    Grow(u64),
    /// Shrink by this much.
    Shrink(u64),
}

/// Resize an image. Shrinking needs `shrink` and refuses to drop any non-zero data.
pub fn resize(
    path: &Path,
    format: Option<Format>,
    new: NewSize,
    shrink: bool,
    policy: &BackingPolicy,
) -> Result<u64> {
    let format = match format {
        Some(f) => f,
        None => probe_format(path)?,
    };
    let mut chain = Chain::open(path, Some(format), true, policy)?;
    let old = chain.size();
    let target = match new {
        NewSize::Absolute(s) => Some(s),
        NewSize::Grow(d) => old.checked_add(d),
        NewSize::Shrink(d) => old.checked_sub(d),
    }
    .ok_or_else(|| Error::Invalid("the new size is out of range".into()))?;
    if target < old {
        if !shrink {
            return Err(Error::Invalid(format!(
                "shrinking {} from {old} to {target} bytes needs --shrink",
                path.display()
            )));
        }
        if let Some(h) = &chain.layers[0].header {
            if h.nb_snapshots > 0 {
                return Err(Error::Invalid(
                    "cannot shrink an image that has internal snapshots".into(),
                ));
            }
        }
        // Nothing but zeroes may live past the new end.
        let mut buf = vec![0u8; 4 << 20];
        let mut off = target;
        while off < old {
            let n = (old - off).min(buf.len() as u64) as usize;
            chain.read(&mut buf[..n], off)?;
            if let Some(p) = buf[..n].iter().position(|&b| b != 0) {
                return Err(Error::Invalid(format!(
                    "shrinking to {target} bytes would lose data at offset {}; nothing was changed",
                    off + p as u64
                )));
            }
            off += n as u64;
        }
    }
    if format == Format::Qcow2 {
        if let Some(h) = &chain.layers[0].header {
            let max = crate::qcow2::header::MAX_L1_BYTES / 8 * h.l2_entries() * h.cluster_size();
            if target > max {
                return Err(Error::Invalid(format!(
                    "size {target} exceeds the qcow2 limit of {max} bytes"
                )));
            }
        }
    }
    if target > old {
        chain
            .access
            .resize_grow(target, PreallocateMode::Zero)
            .map_err(Error::io("resizing", path))?;
    } else if target < old {
        chain
            .access
            .resize_shrink(target)
            .map_err(Error::io("resizing", path))?;
    }
    chain.flush()?;
    Ok(target)
}

/// Options for [`rebase`].
#[derive(Debug, Clone)]
pub struct RebaseOptions {
    /// New backing file name (stored as given, relative to the image's folder), `None` to remove
    /// the backing file (the image becomes standalone).
    pub backing: Option<String>,
    /// Its format (required with `backing`).
    pub backing_format: Option<Format>,
    /// Only rewrite the header, without making content match (qemu-img rebase -u).
    pub unsafe_mode: bool,
}

/// Change an image's backing file. In safe mode the guest-visible content stays the same:
/// clusters where the old and new backing differ are copied into the image first.
pub fn rebase(
    path: &Path,
    o: &RebaseOptions,
    policy: &BackingPolicy,
    progress: Progress<'_>,
) -> Result<()> {
    let q = open_qcow2(path, false, "rebase")?;
    if o.backing.is_some() != o.backing_format.is_some() {
        return Err(Error::Invalid(
            "--backing and --backing-format go together (berth records the format, never probes it)".into(),
        ));
    }
    // Make sure the new header fits before touching any data.
    let mut header = q.header.clone();
    header.backing_file = o.backing.clone();
    header.backing_format = o.backing_format.map(|f| f.to_string());
    header.serialize().map_err(Error::format(path))?;
    drop(q);
    if !o.unsafe_mode {
        let top = Chain::open(path, Some(Format::Qcow2), false, policy)?;
        let mut sink = GuestWriter::open(path, Format::Qcow2, policy)?;
        let new_backing = match (&o.backing, o.backing_format) {
            (Some(name), Some(fmt)) => {
                let resolved = policy.resolve(path, path, name)?;
                Some(Chain::open(&resolved, Some(fmt), false, policy)?)
            }
            _ => None,
        };
        let size = top.size();
        let cs = top.layers[0]
            .header
            .as_ref()
            .map(|h| h.cluster_size())
            .unwrap_or(65536);
        let mut old_buf = vec![0u8; cs as usize];
        let mut new_buf = vec![0u8; cs as usize];
        let mut off = 0u64;
        while off < size {
            progress(off, size);
            let (m, len) = top
                .access
                .get_shallow_mapping(off, size - off)
                .map_err(Error::io("mapping", path))?;
            let len = len.max(1).min(size - off);
            let unallocated = matches!(
                m,
                ShallowMapping::Indirect { .. }
                    | ShallowMapping::Zero {
                        explicit: false,
                        ..
                    }
            );
            if !unallocated {
                off += len;
                continue;
            }
            let end = off + len;
            while off < end {
                let n = (cs - off % cs).min(end - off) as usize;
                top.read(&mut old_buf[..n], off)?;
                match &new_backing {
                    Some(nb) if off < nb.size() => {
                        let k = ((nb.size() - off) as usize).min(n);
                        nb.read(&mut new_buf[..k], off)?;
                        new_buf[k..n].fill(0);
                    }
                    _ => new_buf[..n].fill(0),
                }
                if old_buf[..n] != new_buf[..n] {
                    sink.write(&old_buf[..n], off)?;
                }
                off += n as u64;
            }
        }
        sink.finish()?;
        progress(size, size);
    }
    let q = Qcow2File::open(path, true).map_err(Error::format(path))?;
    let mut m = Qcow2Mut::new(q).map_err(Error::format(path))?;
    m.q.header.backing_file = o.backing.clone();
    m.q.header.backing_format = o.backing_format.map(|f| f.to_string());
    m.write_header().map_err(Error::format(path))?;
    m.sync().map_err(Error::format(path))?;
    Ok(())
}

/// Merge an overlay into its backing file, then empty the overlay (as `qemu-img commit`).
/// Both steps are crash safe: the backing file gets its data through the ordered writer, and
/// the overlay is emptied only afterwards.
pub fn commit(path: &Path, policy: &BackingPolicy, progress: Progress<'_>) -> Result<()> {
    let top = Chain::open(path, Some(Format::Qcow2), false, policy)?;
    if top.layers.len() < 2 {
        return Err(Error::Invalid(format!(
            "{} has no backing file to commit into",
            path.display()
        )));
    }
    let base_layer = top.layers[1].clone();
    let size = top.size();
    if size > base_layer.size {
        resize(
            &base_layer.path,
            Some(base_layer.format),
            NewSize::Absolute(size),
            false,
            policy,
        )?;
    }
    let mut base = GuestWriter::open(&base_layer.path, base_layer.format, policy)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < size {
        progress(off, size);
        let (m, len) = top
            .access
            .get_shallow_mapping(off, (size - off).min(buf.len() as u64))
            .map_err(Error::io("mapping", path))?;
        let len = len.max(1).min(size - off);
        let allocated = !matches!(
            m,
            ShallowMapping::Indirect { .. }
                | ShallowMapping::Zero {
                    explicit: false,
                    ..
                }
                | ShallowMapping::Eof { .. }
        );
        if allocated {
            let n = len as usize;
            top.read(&mut buf[..n], off)?;
            base.write(&buf[..n], off)?;
        }
        off += len;
    }
    base.finish()?;
    drop(top);
    let q = Qcow2File::open(path, true).map_err(Error::format(path))?;
    let mut m = Qcow2Mut::new(q).map_err(Error::format(path))?;
    m.empty_active().map_err(Error::format(path))?;
    m.sync().map_err(Error::format(path))?;
    progress(size, size);
    Ok(())
}

/// Write `data` at guest `offset`, through the image's format. qcow2 writes are crash safe
/// (see [`crate::qcow2::safe_write`]).
pub fn write(
    path: &Path,
    format: Option<Format>,
    offset: u64,
    data: &mut dyn std::io::Read,
    policy: &BackingPolicy,
) -> Result<u64> {
    let format = match format {
        Some(f) => f,
        None => probe_format(path)?,
    };
    let mut sink = GuestWriter::open(path, format, policy)?;
    let size = sink.size;
    let mut buf = vec![0u8; 4 << 20];
    let mut off = offset;
    loop {
        let n = read_full(data, &mut buf).map_err(Error::io("reading input for", path))?;
        if n == 0 {
            break;
        }
        if off.checked_add(n as u64).is_none_or(|e| e > size) {
            return Err(Error::Invalid(format!(
                "write of {n} bytes at offset {off} runs past the end of {} ({size} bytes)",
                path.display()
            )));
        }
        sink.write(&buf[..n], off)?;
        off += n as u64;
    }
    sink.finish()?;
    Ok(off - offset)
}

/// Guest writes into the top of an image: crash-safe qcow2 writer, or plain raw writes.
pub(crate) struct GuestWriter {
    path: std::path::PathBuf,
    size: u64,
    qcow2: Option<crate::qcow2::safe_write::SafeWriter<Chain>>,
    raw: Option<std::fs::File>,
}

impl GuestWriter {
    pub(crate) fn open(path: &Path, format: Format, policy: &BackingPolicy) -> Result<GuestWriter> {
        match format {
            Format::Qcow2 => {
                let w = crate::image::safe_writer(path, policy)?;
                let size = Qcow2File::open(path, false)
                    .map_err(Error::format(path))?
                    .header
                    .size;
                Ok(GuestWriter {
                    path: path.to_path_buf(),
                    size,
                    qcow2: Some(w),
                    raw: None,
                })
            }
            Format::Raw => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(Error::io("opening", path))?;
                let size = f.metadata().map_err(Error::io("reading", path))?.len();
                Ok(GuestWriter {
                    path: path.to_path_buf(),
                    size,
                    qcow2: None,
                    raw: Some(f),
                })
            }
        }
    }

    pub(crate) fn write(&mut self, data: &[u8], off: u64) -> Result<()> {
        if let Some(w) = self.qcow2.as_mut() {
            return w.write(data, off).map_err(Error::format(&self.path));
        }
        if let Some(f) = &self.raw {
            use std::os::unix::fs::FileExt;
            f.write_all_at(data, off)
                .map_err(Error::io("writing", &self.path))?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        if let Some(w) = self.qcow2.as_mut() {
            return w.sync().map_err(Error::format(&self.path));
        }
        if let Some(f) = &self.raw {
            f.sync_all().map_err(Error::io("syncing", &self.path))?;
        }
        Ok(())
    }
}

fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
