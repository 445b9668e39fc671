//! A streaming writer for fresh qcow2 images: guest clusters arrive in order, data and
//! compressed clusters are laid out contiguously after the header, and L2 tables, the L1 table
//! and the refcount structures are written once at the end, the header last.
//!
//! This is what makes `convert` fast and gives berth compressed-cluster writes (which imago
//! lacks). An interrupted writer leaves a file without a valid header; callers write to a
//! temporary name and rename on success, so a destination is never half-made.

use super::header::Header;
use super::meta::{set_refcount, L2Entry};
use super::{entries_to_be, FormatError, OFLAG_COPIED};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

const BATCH: usize = 8 << 20;
/// Refcount order of images berth creates (16-bit refcounts, as qemu-img's default).
pub const REFCOUNT_ORDER: u32 = 4;
const MAX_RC: u32 = (1 << 16) - 1;

/// Compress one guest cluster as qcow2 expects (raw deflate, 4 KiB window). Returns `None`
/// when the result would not be smaller than the cluster.
pub fn compress_cluster(data: &[u8]) -> Option<Vec<u8>> {
    let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
    let mut out = Vec::with_capacity(data.len().saturating_sub(1));
    match c.compress_vec(data, &mut out, flate2::FlushCompress::Finish) {
        Ok(flate2::Status::StreamEnd) if out.len() < data.len() => Some(out),
        _ => None,
    }
}

/// Writes a new qcow2 image front to back.
#[derive(Debug)]
pub struct StreamWriter {
    file: File,
    cluster_bits: u32,
    size: u64,
    /// Byte position up to which data has been placed.
    tail: u64,
    buf: Vec<u8>,
    buf_off: u64,
    l2: BTreeMap<u64, Vec<u64>>,
    refs: Vec<u32>,
}

impl StreamWriter {
    /// Start a new image of `size` bytes in `file` (which is truncated).
    pub fn new(file: File, size: u64, cluster_bits: u32) -> Result<StreamWriter, FormatError> {
        file.set_len(0)
            .map_err(FormatError::io("truncating the new image"))?;
        let cs = 1u64 << cluster_bits;
        Ok(StreamWriter {
            file,
            cluster_bits,
            size,
            tail: cs,
            buf: Vec::with_capacity(BATCH),
            buf_off: cs,
            l2: BTreeMap::new(),
            refs: vec![1],
        })
    }

    fn cs(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    fn entry_slot(&mut self, gc: u64) -> &mut u64 {
        let per = self.cs() / 8;
        let table = self
            .l2
            .entry(gc / per)
            .or_insert_with(|| vec![0u64; per as usize]);
        &mut table[(gc % per) as usize]
    }

    fn add_ref(&mut self, cluster: u64) -> u32 {
        let i = cluster as usize;
        if self.refs.len() <= i {
            self.refs.resize(i + 1, 0);
        }
        self.refs[i] += 1;
        self.refs[i]
    }

    fn append(&mut self, data: &[u8]) -> Result<(), FormatError> {
        if self.buf.len() + data.len() > BATCH {
            self.flush_buf()?;
        }
        self.buf.extend_from_slice(data);
        self.tail += data.len() as u64;
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<(), FormatError> {
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, self.buf_off)
                .map_err(FormatError::io("writing image data"))?;
        }
        self.buf_off += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn align_tail(&mut self) -> Result<(), FormatError> {
        let cs = self.cs();
        let pad = (cs - self.tail % cs) % cs;
        if pad > 0 {
            let zeros = vec![0u8; pad as usize];
            self.append(&zeros)?;
        }
        Ok(())
    }

    fn check_gc(&self, gc: u64) -> Result<(), FormatError> {
        if gc >= self.size.div_ceil(self.cs()) {
            return Err(FormatError::Refused(format!(
                "guest cluster {gc} is beyond the image size"
            )));
        }
        Ok(())
    }

    /// Store guest cluster `gc` uncompressed. `data` is one cluster (shorter only for the last).
    pub fn write_data(&mut self, gc: u64, data: &[u8]) -> Result<(), FormatError> {
        self.check_gc(gc)?;
        self.align_tail()?;
        let host = self.tail;
        let cs = self.cs();
        self.append(data)?;
        if (data.len() as u64) < cs {
            let zeros = vec![0u8; (cs - data.len() as u64) as usize];
            self.append(&zeros)?;
        }
        self.add_ref(host / cs);
        *self.entry_slot(gc) = host | OFLAG_COPIED;
        Ok(())
    }

    /// Store `(guest offset, one cluster of data)` pairs uncompressed. Runs of whole clusters
    /// go to the file with one write each, without passing through the batch buffer.
    pub fn write_run(&mut self, blocks: &[(u64, &[u8])]) -> Result<(), FormatError> {
        let cs = self.cs();
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].1.len() as u64 != cs {
                self.write_data(blocks[i].0 / cs, blocks[i].1)?;
                i += 1;
                continue;
            }
            self.align_tail()?;
            self.flush_buf()?;
            let host = self.tail;
            // Adjacent whole clusters in guest order land adjacently on the host.
            let mut j = i;
            while j + 1 < blocks.len()
                && j + 1 - i < 1024
                && blocks[j + 1].0 == blocks[j].0 + cs
                && blocks[j + 1].1.len() as u64 == cs
            {
                j += 1;
            }
            let len = (j - i + 1) * cs as usize;
            for (k, (goff, _)) in blocks[i..=j].iter().enumerate() {
                self.check_gc(goff / cs)?;
                self.add_ref(host / cs + k as u64);
                *self.entry_slot(goff / cs) = (host + k as u64 * cs) | OFLAG_COPIED;
            }
            let parts: Vec<&[u8]> = blocks[i..=j].iter().map(|(_, b)| *b).collect();
            pwrite_all_vectored(&self.file, &parts, host)
                .map_err(FormatError::io("writing image data"))?;
            self.tail = host + len as u64;
            self.buf_off = self.tail;
            i = j + 1;
        }
        Ok(())
    }

    /// Store guest cluster `gc` as compressed bytes from [`compress_cluster`].
    pub fn write_compressed(&mut self, gc: u64, compressed: &[u8]) -> Result<(), FormatError> {
        self.check_gc(gc)?;
        let cs = self.cs();
        // Never let one host cluster's refcount overflow 16 bits.
        if self
            .refs
            .get((self.tail / cs) as usize)
            .copied()
            .unwrap_or(0)
            >= MAX_RC - 2
        {
            self.align_tail()?;
        }
        let host = self.tail;
        let entry = L2Entry::encode_compressed(host, compressed.len() as u64, self.cluster_bits);
        self.append(compressed)?;
        let (start, end) = L2Entry::decode(entry, self.cluster_bits)
            .host_range(cs)
            .unwrap_or((host, host + 1));
        for c in start / cs..end.div_ceil(cs) {
            self.add_ref(c);
        }
        *self.entry_slot(gc) = entry;
        Ok(())
    }

    /// Write the tables and the header. The image is complete when this returns.
    pub fn finish(mut self) -> Result<File, FormatError> {
        self.align_tail()?;
        self.flush_buf()?;
        let cs = self.cs();
        let mut next = self.tail / cs;
        // L2 tables.
        let mut l2_offsets = Vec::new();
        let l2 = std::mem::take(&mut self.l2);
        for (idx, table) in &l2 {
            let off = next * cs;
            next += 1;
            l2_offsets.push((*idx, off));
            self.file
                .write_all_at(&entries_to_be(table), off)
                .map_err(FormatError::io("writing an L2 table"))?;
        }
        let per_l2 = cs / 8;
        let l1_size = self.size.div_ceil(per_l2 * cs);
        let mut l1 = vec![0u64; l1_size as usize];
        for (idx, off) in &l2_offsets {
            l1[*idx as usize] = off | OFLAG_COPIED;
        }
        let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);
        let l1_off = next * cs;
        next += l1_clusters;
        // Refcount structures must also count themselves.
        let per_rb = cs * 8 / 16;
        let mut rb_count = 1u64;
        let mut rt_clusters;
        loop {
            rt_clusters = (rb_count * 8).div_ceil(cs).max(1);
            let total = next + rt_clusters + rb_count;
            let need = total.div_ceil(per_rb);
            if need <= rb_count {
                break;
            }
            rb_count = need;
        }
        let rt_off = next * cs;
        let rb_off = (next + rt_clusters) * cs;
        let end = rb_off + rb_count * cs;
        for c in 0..end / cs {
            if c >= self.tail / cs {
                self.add_ref(c);
            }
        }
        let mut reftable = vec![0u64; (rt_clusters * cs / 8) as usize];
        for b in 0..rb_count {
            let mut block = vec![0u8; cs as usize];
            for i in 0..per_rb {
                let c = b * per_rb + i;
                if let Some(&r) = self.refs.get(c as usize) {
                    set_refcount(&mut block, i, REFCOUNT_ORDER, u64::from(r));
                }
            }
            reftable[b as usize] = rb_off + b * cs;
            self.file
                .write_all_at(&block, rb_off + b * cs)
                .map_err(FormatError::io("writing a refcount block"))?;
        }
        self.file
            .write_all_at(&entries_to_be(&l1), l1_off)
            .map_err(FormatError::io("writing the L1 table"))?;
        self.file
            .write_all_at(&entries_to_be(&reftable), rt_off)
            .map_err(FormatError::io("writing the refcount table"))?;
        self.file
            .set_len(end)
            .map_err(FormatError::io("sizing the image"))?;
        let header = new_header(
            self.size,
            self.cluster_bits,
            l1_size as u32,
            l1_off,
            rt_off,
            rt_clusters as u32,
        );
        let bytes = header.serialize()?;
        self.file
            .write_all_at(&bytes, 0)
            .map_err(FormatError::io("writing the header"))?;
        Ok(self.file)
    }
}

/// Write `parts` back to back at `offset` with as few `pwritev` calls as the kernel allows.
pub(crate) fn pwrite_all_vectored(
    file: &File,
    parts: &[&[u8]],
    offset: u64,
) -> std::io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0usize;
    while written < total {
        // The parts from byte `written` on.
        let mut skip = written;
        let mut slices = Vec::with_capacity(parts.len());
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices.push(std::io::IoSlice::new(&p[skip..]));
            skip = 0;
        }
        let n = rustix::io::pwritev(file, &slices, offset + written as u64)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// A version 3 header as berth writes it.
pub fn new_header(
    size: u64,
    cluster_bits: u32,
    l1_size: u32,
    l1_off: u64,
    rt_off: u64,
    rt_clusters: u32,
) -> Header {
    Header {
        version: 3,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits,
        size,
        crypt_method: 0,
        l1_size,
        l1_table_offset: l1_off,
        refcount_table_offset: rt_off,
        refcount_table_clusters: rt_clusters,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: REFCOUNT_ORDER,
        header_length: 112,
        compression_type: 0,
        backing_file: None,
        backing_format: None,
        bitmaps: None,
        feature_names: Vec::new(),
        extensions: Vec::new(),
    }
}
