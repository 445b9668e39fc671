//! Changing a qcow2 image's metadata in place: refcount updates, cluster allocation at the end
//! of the file, refcount table growth, header rewrites, and the COPIED-flag fix-up.
//!
//! Refcount changes are cached until [`Qcow2Mut::flush_refcounts`] and written in an order that a
//! `kill -9` at any point can only turn into leaked clusters: new refcount blocks before the
//! refcount table that points at them, the table before the header that points at it. Freed
//! clusters are never reused in the same session, so no reference ever points at recycled data.

use super::meta::{get_refcount, set_refcount, L2Entry, Qcow2File};
use super::{entries_to_be, FormatError, OFFSET_MASK, OFLAG_COPIED};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

/// A qcow2 image opened for metadata changes.
#[derive(Debug)]
pub struct Qcow2Mut {
    /// The image's metadata as loaded (kept current by the methods here).
    pub q: Qcow2File,
    /// Cached refcount blocks by file offset; `true` if changed since the last flush.
    blocks: BTreeMap<u64, (Vec<u8>, bool)>,
    /// Next free offset at the end of the file (cluster aligned).
    end: u64,
    reftable_dirty: bool,
    /// A refcount table moved in this session: old (offset, clusters) to free after the header
    /// points at the new one.
    old_reftable: Option<(u64, u32)>,
}

impl Qcow2Mut {
    /// Take an opened (writable) image for changes.
    pub fn new(q: Qcow2File) -> Result<Qcow2Mut, FormatError> {
        if q.header.is_dirty() {
            return Err(FormatError::Refused(
                "the image is marked dirty (lazy refcounts, not closed cleanly); run `berth disk check --repair all` first".into(),
            ));
        }
        if q.header.is_corrupt() {
            return Err(FormatError::Refused(
                "the image is marked corrupt; run `berth disk check --repair all` first".into(),
            ));
        }
        Ok(Qcow2Mut::new_for_repair(q))
    }

    /// Take an image for repair: unlike [`Qcow2Mut::new`], dirty or corrupt images are accepted.
    pub fn new_for_repair(q: Qcow2File) -> Qcow2Mut {
        let cs = q.cluster_size();
        let end = q.file_len.div_ceil(cs) * cs;
        Qcow2Mut {
            q,
            blocks: BTreeMap::new(),
            end,
            reftable_dirty: false,
            old_reftable: None,
        }
    }

    fn cs(&self) -> u64 {
        self.q.cluster_size()
    }

    fn max_refcount(&self) -> u64 {
        let bits = self.q.header.refcount_bits();
        if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        }
    }

    fn block(&mut self, off: u64) -> Result<&mut (Vec<u8>, bool), FormatError> {
        if !self.blocks.contains_key(&off) {
            let data = if off >= self.q.file_len {
                vec![0u8; self.cs() as usize]
            } else {
                self.q.read_refblock(off)?
            };
            self.blocks.insert(off, (data, false));
        }
        Ok(self.blocks.get_mut(&off).expect("inserted above"))
    }

    /// Current refcount of host cluster `cluster`, including unflushed changes.
    pub fn refcount(&mut self, cluster: u64) -> Result<u64, FormatError> {
        let per = self.q.refblock_entries();
        let order = self.q.header.refcount_order;
        let Some(&rb) = self.q.reftable.get((cluster / per) as usize) else {
            return Ok(0);
        };
        let rb = rb & !511;
        if rb == 0 {
            return Ok(0);
        }
        let (data, _) = self.block(rb)?;
        Ok(get_refcount(data, cluster % per, order))
    }

    /// Reserve `n` clusters at the end of the file without touching refcounts.
    fn bump(&mut self, n: u64) -> u64 {
        let off = self.end;
        self.end += n * self.cs();
        off
    }

    /// Set the refcount of host cluster `cluster` to `value`.
    pub fn set(&mut self, cluster: u64, value: u64) -> Result<(), FormatError> {
        if value > self.max_refcount() {
            return Err(FormatError::Refused(format!(
                "refcount of cluster {cluster} would exceed the image's {}-bit refcount width",
                self.q.header.refcount_bits()
            )));
        }
        let per = self.q.refblock_entries();
        let idx = (cluster / per) as usize;
        if idx >= self.q.reftable.len() {
            self.grow_reftable(idx + 1)?;
        }
        let order = self.q.header.refcount_order;
        let mut rb = self.q.reftable[idx] & !511;
        if rb == 0 {
            rb = self.bump(1);
            self.blocks
                .insert(rb, (vec![0u8; self.cs() as usize], true));
            self.q.reftable[idx] = rb;
            self.reftable_dirty = true;
            let cs = self.cs();
            self.set(rb / cs, 1)?;
        }
        let (data, dirty) = self.block(rb)?;
        set_refcount(data, cluster % per, order, value);
        *dirty = true;
        Ok(())
    }

    /// Add `delta` to the refcount of `cluster`.
    pub fn adjust(&mut self, cluster: u64, delta: i64) -> Result<(), FormatError> {
        let cur = self.refcount(cluster)?;
        let new = if delta >= 0 {
            cur.checked_add(delta as u64)
        } else {
            cur.checked_sub(delta.unsigned_abs())
        }
        .ok_or_else(|| FormatError::Corrupt {
            what: format!("refcount of host cluster {cluster}"),
            why: format!("refcount {cur} cannot change by {delta}"),
        })?;
        self.set(cluster, new)
    }

    /// Allocate `n` contiguous clusters at the end of the file with refcount 1.
    pub fn alloc(&mut self, n: u64) -> Result<u64, FormatError> {
        let off = self.bump(n);
        let cs = self.cs();
        for c in 0..n {
            self.set(off / cs + c, 1)?;
        }
        Ok(off)
    }

    /// Drop one reference from each cluster of `[off, off + len)`.
    pub fn free(&mut self, off: u64, len: u64) -> Result<(), FormatError> {
        let cs = self.cs();
        if len == 0 {
            return Ok(());
        }
        for c in off / cs..=(off + len - 1) / cs {
            self.adjust(c, -1)?;
        }
        Ok(())
    }

    fn grow_reftable(&mut self, min_entries: usize) -> Result<(), FormatError> {
        let cs = self.cs();
        let entries_per_cluster = (cs / 8) as usize;
        // Headroom so that the table's own refcount blocks fit in it too.
        let want = (min_entries + 2) * 3 / 2;
        let clusters = want.div_ceil(entries_per_cluster) as u64;
        if clusters * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(FormatError::Refused(
                "the refcount table would exceed QEMU's 8 MiB limit".into(),
            ));
        }
        let new_off = self.bump(clusters);
        if self.old_reftable.is_none() {
            self.old_reftable = Some((
                self.q.header.refcount_table_offset,
                self.q.header.refcount_table_clusters,
            ));
        }
        self.q.reftable.resize((clusters * cs / 8) as usize, 0);
        self.q.header.refcount_table_offset = new_off;
        self.q.header.refcount_table_clusters = clusters as u32;
        self.reftable_dirty = true;
        for c in 0..clusters {
            self.set(new_off / cs + c, 1)?;
        }
        Ok(())
    }

    /// Write raw bytes at `off`.
    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<(), FormatError> {
        self.q
            .file
            .write_all_at(data, off)
            .map_err(FormatError::io(format!(
                "writing {} bytes at {off:#x}",
                data.len()
            )))
    }

    /// Write all cached refcount changes: blocks, then the table, then (if it moved) the header,
    /// then release a replaced table.
    pub fn flush_refcounts(&mut self) -> Result<(), FormatError> {
        loop {
            let dirty: Vec<u64> = self
                .blocks
                .iter()
                .filter(|(_, (_, d))| *d)
                .map(|(o, _)| *o)
                .collect();
            for off in &dirty {
                let (data, d) = self.blocks.get_mut(off).expect("listed above");
                *d = false;
                let data = data.clone();
                self.write_at(*off, &data)?;
            }
            if self.reftable_dirty {
                self.reftable_dirty = false;
                let bytes = entries_to_be(&self.q.reftable);
                self.write_at(self.q.header.refcount_table_offset, &bytes)?;
            }
            if let Some((old_off, old_clusters)) = self.old_reftable.take() {
                self.write_header()?;
                self.free(old_off, u64::from(old_clusters) * self.cs())?;
                continue;
            }
            break;
        }
        let end = self.end;
        if self.q.file_len < end {
            self.q
                .file
                .set_len(end)
                .map_err(FormatError::io("extending the image"))?;
            self.q.file_len = end;
        }
        Ok(())
    }

    /// Rewrite the header (and its extensions and backing name) in the first cluster.
    pub fn write_header(&mut self) -> Result<(), FormatError> {
        let bytes = self.q.header.serialize()?;
        self.write_at(0, &bytes)?;
        // Keep `backing_file_offset` consistent with what was written.
        if let Some(name) = &self.q.header.backing_file {
            self.q.header.backing_file_offset = (bytes.len() - name.len()) as u64;
            self.q.header.backing_file_size = name.len() as u32;
        } else {
            self.q.header.backing_file_offset = 0;
            self.q.header.backing_file_size = 0;
        }
        Ok(())
    }

    /// Add `delta` to the refcount of every L2 table and data cluster reachable from `l1`.
    pub fn update_tree(&mut self, l1: &[u64], delta: i64) -> Result<(), FormatError> {
        let cs = self.cs();
        let bits = self.q.header.cluster_bits;
        for &l1e in l1 {
            let l2_off = l1e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            self.adjust(l2_off / cs, delta)?;
            let l2 = self.q.read_l2(l2_off)?;
            for &raw in &l2 {
                let entry = L2Entry::decode(raw, bits);
                if let Some((start, end)) = entry.host_range(cs) {
                    for c in start / cs..end.div_ceil(cs) {
                        self.adjust(c, delta)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Unmap everything in the active L1 table (the image reads through to its backing file),
    /// releasing what only it referenced. The L1 table is rewritten before any refcount drops.
    pub fn empty_active(&mut self) -> Result<(), FormatError> {
        let len = self.q.l1.len();
        let old = std::mem::replace(&mut self.q.l1, vec![0; len]);
        if old.iter().all(|e| e & OFFSET_MASK == 0) {
            return Ok(());
        }
        self.write_at(self.q.header.l1_table_offset, &entries_to_be(&self.q.l1))?;
        self.update_tree(&old, -1)?;
        self.flush_refcounts()
    }

    /// Make the COPIED flags of the active L1 and L2 tables say "refcount is exactly one".
    /// Call after refcounts are flushed.
    pub fn fix_copied_flags(&mut self) -> Result<(), FormatError> {
        let cs = self.cs();
        let bits = self.q.header.cluster_bits;
        let mut l1_changed = false;
        for i in 0..self.q.l1.len() {
            let l1e = self.q.l1[i];
            let l2_off = l1e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            let want = self.refcount(l2_off / cs)? == 1;
            let new_l1e = if want {
                l1e | OFLAG_COPIED
            } else {
                l1e & !OFLAG_COPIED
            };
            if new_l1e != l1e {
                self.q.l1[i] = new_l1e;
                l1_changed = true;
            }
            let mut l2 = self.q.read_l2(l2_off)?;
            let mut changed = false;
            for raw in l2.iter_mut() {
                let host = match L2Entry::decode(*raw, bits) {
                    L2Entry::Normal { host, .. }
                    | L2Entry::Zero {
                        host: Some(host), ..
                    } => host,
                    _ => continue,
                };
                let want = self.refcount(host / cs)? == 1;
                let new = if want {
                    *raw | OFLAG_COPIED
                } else {
                    *raw & !OFLAG_COPIED
                };
                if new != *raw {
                    *raw = new;
                    changed = true;
                }
            }
            if changed {
                self.write_at(l2_off, &entries_to_be(&l2))?;
            }
        }
        if l1_changed {
            self.write_at(self.q.header.l1_table_offset, &entries_to_be(&self.q.l1))?;
        }
        Ok(())
    }

    /// Flush the file to stable storage.
    pub fn sync(&self) -> Result<(), FormatError> {
        self.q
            .file
            .sync_all()
            .map_err(FormatError::io("syncing the image"))
    }
}
