//! Layout check at open: no two metadata structures share a cluster, and no guest data cluster is
//! a metadata cluster.
//!
//! QEMU runs the same test (`qcow2_check_metadata_overlap`, in its "all" mode) before every
//! metadata or data write. berth runs it once, over the whole image, before anything reads guest
//! data or changes the image, so a crafted file whose L2 table is its L1 table (or whose data
//! cluster is its refcount table) is refused instead of being copied out as guest data. Shared
//! L2 tables and data clusters (internal snapshots share them with the active table) are fine;
//! `check` opens images without this test, since reporting such damage is its job.
//!
//! The work is bounded by the file: every structure read must first claim clusters no other
//! structure holds, so the bytes read never exceed the file's length.

use super::meta::{L2Entry, Qcow2File};
use super::{FormatError, OFFSET_MASK};
use std::collections::BTreeMap;
use std::fmt;

/// What a run of clusters holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The header cluster (with its extensions and the backing file name).
    Header,
    /// The active L1 table.
    ActiveL1,
    /// The active L2 table named by this L1 entry.
    ActiveL2(u64),
    /// The refcount table.
    RefcountTable,
    /// The refcount block named by this refcount table entry.
    RefcountBlock(u64),
    /// The snapshot table.
    SnapshotTable,
    /// The L1 table of this snapshot (index in the snapshot table).
    SnapshotL1(u64),
    /// An L2 table of this snapshot, named by this entry of its L1 table.
    SnapshotL2(u64, u64),
    /// The persistent bitmap directory.
    BitmapDirectory,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::Header => write!(f, "header"),
            Region::ActiveL1 => write!(f, "L1 table"),
            Region::ActiveL2(i) => write!(f, "L2 table of L1 entry {i}"),
            Region::RefcountTable => write!(f, "refcount table"),
            Region::RefcountBlock(i) => write!(f, "refcount block of refcount table entry {i}"),
            Region::SnapshotTable => write!(f, "snapshot table"),
            Region::SnapshotL1(s) => write!(f, "L1 table of snapshot {s}"),
            Region::SnapshotL2(s, i) => write!(f, "L2 table of snapshot {s}'s L1 entry {i}"),
            Region::BitmapDirectory => write!(f, "bitmap directory"),
        }
    }
}

impl Region {
    fn is_l2(self) -> bool {
        matches!(self, Region::ActiveL2(_) | Region::SnapshotL2(..))
    }
}

/// The image's metadata clusters: start cluster -> (end cluster, exclusive; what is there).
struct Claims {
    cs: u64,
    map: BTreeMap<u64, (u64, Region)>,
}

/// Whether a claim was new, or an L2 table already claimed at the same place.
#[derive(PartialEq, Eq)]
enum Claimed {
    New,
    SharedL2,
}

impl Claims {
    fn clusters(&self, off: u64, len: u64) -> (u64, u64) {
        let first = off / self.cs;
        // Offsets were checked against the file, so this cannot overflow.
        let end = (off.saturating_add(len.max(1)) - 1) / self.cs + 1;
        (first, end)
    }

    /// The claim holding any cluster of `[first, end)`, if one does.
    fn holder(&self, first: u64, end: u64) -> Option<(u64, u64, Region)> {
        self.map
            .range(..end)
            .next_back()
            .filter(|(_, (e, _))| *e > first)
            .map(|(s, (e, r))| (*s, *e, *r))
    }

    fn claim(&mut self, off: u64, len: u64, what: Region) -> Result<Claimed, FormatError> {
        let (first, end) = self.clusters(off, len);
        if let Some((s, e, other)) = self.holder(first, end) {
            if what.is_l2() && other.is_l2() && s == first && e == end {
                return Ok(Claimed::SharedL2);
            }
            return Err(FormatError::Corrupt {
                what: format!("{what} at {off:#x}"),
                why: format!(
                    "it overlaps the {other} at {:#x}: one cluster cannot hold both, so berth \
                     refuses the image (`berth disk check` reports the damage)",
                    s * self.cs
                ),
            });
        }
        self.map.insert(first, (end, what));
        Ok(Claimed::New)
    }

    fn data(&self, entry: L2Entry, table: Region, index: usize) -> Result<(), FormatError> {
        let Some((start, end)) = entry.host_range(self.cs) else {
            return Ok(());
        };
        let (first, last) = self.clusters(start, end - start);
        if let Some((s, _, other)) = self.holder(first, last) {
            return Err(FormatError::Corrupt {
                what: format!("entry {index} of the {table}"),
                why: format!(
                    "its guest data at {start:#x} is the {other} at {:#x}: metadata would be \
                     read as guest data, so berth refuses the image",
                    s * self.cs
                ),
            });
        }
        Ok(())
    }
}

/// Refuse `q` if any two metadata structures share a cluster, or if guest data lies in one.
pub fn verify(q: &Qcow2File) -> Result<(), FormatError> {
    let h = &q.header;
    let cs = q.cluster_size();
    let mut c = Claims {
        cs,
        map: BTreeMap::new(),
    };
    c.claim(0, cs, Region::Header)?;
    if h.l1_size > 0 {
        c.claim(
            h.l1_table_offset,
            u64::from(h.l1_size) * 8,
            Region::ActiveL1,
        )?;
    }
    c.claim(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) * cs,
        Region::RefcountTable,
    )?;
    let snaps = q.snapshots()?;
    if !snaps.is_empty() {
        let len = super::check::snapshot_table_len(&snaps);
        c.claim(h.snapshots_offset, len, Region::SnapshotTable)?;
    }
    for (i, sn) in snaps.iter().enumerate() {
        if sn.l1_size > 0 {
            let len = u64::from(sn.l1_size) * 8;
            c.claim(sn.l1_table_offset, len, Region::SnapshotL1(i as u64))?;
        }
    }
    if let Some(b) = h
        .bitmaps
        .filter(|b| b.nb_bitmaps > 0 && b.directory_size > 0)
    {
        if b.directory_offset
            .checked_add(b.directory_size)
            .is_none_or(|e| e > q.file_len)
        {
            return Err(FormatError::Corrupt {
                what: "bitmap directory".into(),
                why: format!(
                    "{} bytes at {:#x} run past the end of the file",
                    b.directory_size, b.directory_offset
                ),
            });
        }
        c.claim(
            b.directory_offset,
            b.directory_size,
            Region::BitmapDirectory,
        )?;
    }
    for (i, &e) in q.reftable.iter().enumerate() {
        let off = e & !511;
        if off != 0 {
            c.claim(off, cs, Region::RefcountBlock(i as u64))?;
        }
    }
    // Every L2 table is claimed before any is read, so that data is checked against all of them.
    let mut tables = Vec::new();
    for (i, &e) in q.l1.iter().enumerate() {
        let off = e & OFFSET_MASK;
        if off != 0 && c.claim(off, cs, Region::ActiveL2(i as u64))? == Claimed::New {
            tables.push((off, Region::ActiveL2(i as u64)));
        }
    }
    for (s, sn) in snaps.iter().enumerate() {
        for (i, &e) in q.read_snapshot_l1(sn)?.iter().enumerate() {
            let off = e & OFFSET_MASK;
            let r = Region::SnapshotL2(s as u64, i as u64);
            if off != 0 && c.claim(off, cs, r)? == Claimed::New {
                tables.push((off, r));
            }
        }
    }
    for (off, r) in tables {
        for (j, &raw) in q.read_l2(off)?.iter().enumerate() {
            c.data(L2Entry::decode(raw, h.cluster_bits), r, j)?;
        }
    }
    Ok(())
}
