//! Crash-safe guest writes into an existing qcow2 image, ordered as QEMU orders them: refcounts
//! of new clusters reach the file before the data, the data before the L2 entry that points at
//! it, a new L2 table before the L1 entry; references are dropped only after nothing points at
//! the old cluster. A `kill -9` at any point leaves at most leaked clusters.
//!
//! imago's own write path flushes its L1/L2 caches before its refcount cache, so an interrupted
//! write there can leave a table pointing at a cluster whose refcount is still zero (measured:
//! `qemu-img check` then reports corruption). Guest writes therefore go through here; imago still
//! reads backing files.

use super::meta::L2Entry;
use super::refcount::Qcow2Mut;
use super::{entries_to_be, FormatError, OFFSET_MASK, OFLAG_COPIED};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;

/// Reads guest data below the image being written (its backing chain).
pub trait BackingRead {
    /// Fill `buf` from guest offset `off` (zeroes past the end).
    fn read_at(&self, buf: &mut [u8], off: u64) -> Result<(), FormatError>;
}

/// Writes guest data into a qcow2 image.
#[derive(Debug)]
pub struct SafeWriter<B: BackingRead> {
    m: Qcow2Mut,
    backing: Option<B>,
    l2_cache: HashMap<u64, Vec<u64>>,
}

impl<B: BackingRead> SafeWriter<B> {
    /// Take a writable image and (if it has one) its backing chain's reader.
    pub fn new(m: Qcow2Mut, backing: Option<B>) -> SafeWriter<B> {
        SafeWriter {
            m,
            backing,
            l2_cache: HashMap::new(),
        }
    }

    fn cs(&self) -> u64 {
        self.m.q.cluster_size()
    }

    fn l2(&mut self, off: u64) -> Result<&mut Vec<u64>, FormatError> {
        if !self.l2_cache.contains_key(&off) {
            let t = self.m.q.read_l2(off)?;
            self.l2_cache.insert(off, t);
        }
        Ok(self.l2_cache.get_mut(&off).expect("inserted above"))
    }

    /// The current guest content of guest cluster `gc` in this image (or below it).
    fn read_cluster(&mut self, gc: u64, entry: L2Entry) -> Result<Vec<u8>, FormatError> {
        let cs = self.cs();
        let mut buf = vec![0u8; cs as usize];
        match entry {
            L2Entry::Zero { .. } => {}
            L2Entry::Normal { host, .. } => {
                self.m
                    .q
                    .file
                    .read_exact_at(&mut buf, host)
                    .map_err(FormatError::io(format!("reading cluster at {host:#x}")))?;
            }
            L2Entry::Compressed { host, sectors } => {
                let len = (host & !511) + sectors * 512 - host;
                let avail = self.m.q.file_len.saturating_sub(host).min(len);
                let mut packed = vec![0u8; avail as usize];
                self.m
                    .q
                    .file
                    .read_exact_at(&mut packed, host)
                    .map_err(FormatError::io(format!(
                        "reading compressed cluster at {host:#x}"
                    )))?;
                let mut d = flate2::Decompress::new_with_window_bits(false, 12);
                d.decompress(&packed, &mut buf, flate2::FlushDecompress::Finish)
                    .map_err(|e| FormatError::Corrupt {
                        what: format!("compressed cluster at {host:#x}"),
                        why: e.to_string(),
                    })?;
            }
            L2Entry::Unallocated => {
                if let Some(b) = &self.backing {
                    b.read_at(&mut buf, gc * cs)?;
                }
            }
        }
        Ok(buf)
    }

    /// Make sure the L2 table for L1 index `l1_idx` exists and is ours alone; return its offset.
    fn writable_l2(&mut self, l1_idx: usize) -> Result<u64, FormatError> {
        let cs = self.cs();
        let l1e = self.m.q.l1[l1_idx];
        let old = l1e & OFFSET_MASK;
        if old != 0 && l1e & OFLAG_COPIED != 0 {
            return Ok(old);
        }
        let table = if old == 0 {
            vec![0u64; (cs / 8) as usize]
        } else {
            // Shared with a snapshot: copy it. Data refcounts count the L1 tables that reach a
            // cluster (as QEMU counts them), and those stay the same.
            let t = self.l2(old)?.clone();
            t.iter().map(|e| e & !OFLAG_COPIED).collect()
        };
        let new = self.m.alloc(1)?;
        self.m.flush_refcounts()?;
        self.m.write_at(new, &entries_to_be(&table))?;
        self.l2_cache.insert(new, table);
        self.m.q.l1[l1_idx] = new | OFLAG_COPIED;
        let l1_off = self.m.q.header.l1_table_offset + l1_idx as u64 * 8;
        self.m
            .write_at(l1_off, &(new | OFLAG_COPIED).to_be_bytes())?;
        if old != 0 {
            self.m.adjust(old / cs, -1)?;
            self.m.flush_refcounts()?;
        }
        Ok(new)
    }

    /// Write `data` at guest offset `off` (the caller checked the bounds).
    pub fn write(&mut self, data: &[u8], off: u64) -> Result<(), FormatError> {
        let cs = self.cs();
        let per = cs / 8;
        let bits = self.m.q.header.cluster_bits;
        let mut pos = 0usize;
        while pos < data.len() {
            let goff = off + pos as u64;
            let gc = goff / cs;
            let l1_idx = (gc / per) as usize;
            // This run: up to the end of the L2 table's range or of the data.
            let table_end = (gc / per + 1) * per * cs;
            let run_end = table_end.min(off + data.len() as u64);
            let l2_off = self.writable_l2(l1_idx)?;
            let first = gc;
            let last = (run_end - 1) / cs;
            // Clusters that need a new host cluster.
            let entries: Vec<u64> = {
                let t = self.l2(l2_off)?;
                (first..=last).map(|c| t[(c % per) as usize]).collect()
            };
            let need: Vec<u64> = (first..=last)
                .zip(&entries)
                .filter(|(_, &raw)| {
                    !matches!(
                        L2Entry::decode(raw, bits),
                        L2Entry::Normal { copied: true, .. }
                    )
                })
                .map(|(c, _)| c)
                .collect();
            let new_base = if need.is_empty() {
                0
            } else {
                let b = self.m.alloc(need.len() as u64)?;
                self.m.flush_refcounts()?;
                b
            };
            // Data: write in place or into the new clusters, merging partial clusters.
            let mut new_buf: Vec<u8> = Vec::with_capacity(need.len() * cs as usize);
            for (i, c) in (first..=last).enumerate() {
                let cstart = c * cs;
                let lo = goff.max(cstart);
                let hi = run_end.min(cstart + cs);
                let src = &data[(lo - off) as usize..(hi - off) as usize];
                let entry = L2Entry::decode(entries[i], bits);
                match entry {
                    L2Entry::Normal { host, copied: true } => {
                        self.m.write_at(host + (lo - cstart), src)?;
                    }
                    _ => {
                        let mut cluster = if lo == cstart && hi == cstart + cs {
                            vec![0u8; cs as usize]
                        } else {
                            self.read_cluster(c, entry)?
                        };
                        cluster[(lo - cstart) as usize..(hi - cstart) as usize]
                            .copy_from_slice(src);
                        new_buf.extend_from_slice(&cluster);
                    }
                }
            }
            if !need.is_empty() {
                self.m.write_at(new_base, &new_buf)?;
                // Point the L2 entries at the new clusters, then release the old ones.
                let mut released = Vec::new();
                {
                    let t = self.l2_cache.get_mut(&l2_off).expect("loaded above");
                    for (k, c) in need.iter().enumerate() {
                        let slot = &mut t[(c % per) as usize];
                        if let Some(r) = L2Entry::decode(*slot, bits).host_range(cs) {
                            released.push(r);
                        }
                        *slot = (new_base + k as u64 * cs) | OFLAG_COPIED;
                    }
                }
                let t = self.l2_cache.get(&l2_off).expect("loaded above");
                let lo_i = (first % per) as usize;
                let hi_i = (last % per) as usize;
                let bytes = entries_to_be(&t[lo_i..=hi_i]);
                self.m.write_at(l2_off + lo_i as u64 * 8, &bytes)?;
                for (s, e) in released {
                    for hc in s / cs..e.div_ceil(cs) {
                        self.m.adjust(hc, -1)?;
                    }
                }
                self.m.flush_refcounts()?;
            }
            pos += (run_end - goff) as usize;
        }
        Ok(())
    }

    /// Flush everything to stable storage.
    pub fn sync(&mut self) -> Result<(), FormatError> {
        self.m.flush_refcounts()?;
        self.m.sync()
    }
}
