//! `disk convert` and `disk compare`: walk a source chain in large chunks, skip what the
//! metadata (or the file system's holes) says is zero, and detect zero clusters in the data.
//! qcow2 destinations go through the streaming writer (compressing on all cores with
//! `--compress`); raw destinations stay sparse.

use super::{check_overwrite, is_zero, next_data, start_output, Progress};
use crate::image::{Chain, Format};
use crate::policy::BackingPolicy;
use crate::qcow2::writer::{compress_cluster, pwrite_all_vectored, StreamWriter};
use crate::{Error, Result};
use imago::Mapping;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const CHUNK: u64 = 4 << 20;

/// Options for [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Source image.
    pub src: PathBuf,
    /// Source format (probed when `None`: the user named this file).
    pub src_format: Option<Format>,
    /// Destination.
    pub dst: PathBuf,
    /// Destination format.
    pub dst_format: Format,
    /// Write compressed qcow2 clusters.
    pub compress: bool,
    /// Destination cluster size (qcow2).
    pub cluster_size: Option<u64>,
    /// Overwrite an existing destination.
    pub force: bool,
}

impl ConvertOptions {
    /// Convert `src` (format probed) to `dst` in `dst_format`, uncompressed, default cluster
    /// size, refusing to overwrite; change fields for the rest.
    pub fn new(
        src: impl Into<PathBuf>,
        dst: impl Into<PathBuf>,
        dst_format: Format,
    ) -> ConvertOptions {
        ConvertOptions {
            src: src.into(),
            src_format: None,
            dst: dst.into(),
            dst_format,
            compress: false,
            cluster_size: None,
            force: false,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Virtual size.
    pub size: u64,
    /// Bytes of guest data written (not zero).
    pub data_bytes: u64,
    /// Clusters stored compressed.
    pub compressed_clusters: u64,
}

/// Is `[off, off+len)` known to read as zeroes without reading it?
fn known_zero(chain: &Chain, raw_file: Option<&std::fs::File>, off: u64, len: u64) -> Result<bool> {
    if let Some(f) = raw_file {
        return Ok(match next_data(f, off) {
            None => true,
            Some(d) => d >= off + len,
        });
    }
    let mut pos = off;
    while pos < off + len {
        let (m, l) = chain
            .access
            .get_mapping(pos, off + len - pos)
            .map_err(Error::io("mapping", chain.path()))?;
        match m {
            Mapping::Zero { .. } => {}
            Mapping::Eof { .. } => return Ok(true),
            _ => return Ok(false),
        }
        if l == 0 {
            return Ok(false);
        }
        pos += l;
    }
    Ok(true)
}

/// A raw, single-layer chain's file, for hole detection.
fn raw_top(chain: &Chain) -> Option<std::fs::File> {
    (chain.layers.len() == 1 && chain.layers[0].format == Format::Raw)
        .then(|| std::fs::File::open(&chain.layers[0].path).ok())
        .flatten()
}

/// Convert `o.src` to `o.dst`, flattening any backing chain. The destination appears only when
/// complete.
pub fn convert(
    o: &ConvertOptions,
    policy: &BackingPolicy,
    progress: Progress<'_>,
) -> Result<ConvertStats> {
    check_overwrite(&o.dst, o.force)?;
    let src = Chain::open(&o.src, o.src_format, false, policy)?;
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&o.src), std::fs::canonicalize(&o.dst)) {
        if a == b {
            return Err(Error::Invalid(format!(
                "{} is both source and destination",
                o.src.display()
            )));
        }
    }
    if o.compress && o.dst_format != Format::Qcow2 {
        return Err(Error::Invalid(
            "--compress needs a qcow2 destination".into(),
        ));
    }
    let size = src.size();
    let cs = o.cluster_size.unwrap_or(65536);
    if o.dst_format == Format::Qcow2 && (!cs.is_power_of_two() || !(512..=2 << 20).contains(&cs)) {
        return Err(Error::Invalid(format!(
            "invalid cluster size {cs}: must be a power of two from 512 to 2M"
        )));
    }
    let bs = if o.dst_format == Format::Qcow2 {
        cs
    } else {
        4096
    };
    let chunk = CHUNK.max(bs) / bs * bs;
    let out = start_output(&o.dst, o.force)?;
    let tmp = out.temp().to_path_buf();
    let file = out.file().try_clone().map_err(Error::io("opening", &tmp))?;
    let raw = raw_top(&src);
    let mut stats = ConvertStats {
        size,
        ..ConvertStats::default()
    };
    let mut writer = match o.dst_format {
        Format::Qcow2 => Some(
            StreamWriter::new(
                file.try_clone().map_err(Error::io("opening", &tmp))?,
                size,
                cs.trailing_zeros(),
            )
            .map_err(Error::format(&o.dst))?,
        ),
        Format::Raw => None,
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    // A reader thread fills chunks while this thread detects zeroes, compresses and writes;
    // buffers go round between the two so nothing is allocated per chunk.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<(u64, Vec<u8>)>>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        let _ = empty_tx.send(vec![0u8; chunk as usize]);
    }
    std::thread::scope(|scope| -> Result<()> {
        // Owned by this closure, so that a write error (ENOSPC, EIO) that ends it also ends a
        // reader waiting for a free buffer.
        let empty_tx = empty_tx;
        let src = &src;
        let raw = raw.as_ref();
        let src_path = &o.src;
        scope.spawn(move || {
            let mut off = 0u64;
            while off < size {
                let len = chunk.min(size - off);
                let item = (|| -> Result<Option<(u64, Vec<u8>)>> {
                    if known_zero(src, raw, off, len)? {
                        return Ok(None);
                    }
                    let Ok(mut buf) = empty_rx.recv() else {
                        // The writer has stopped: so does the reader.
                        return Err(Error::Invalid("the writer stopped".into()));
                    };
                    buf.resize(len as usize, 0);
                    match raw {
                        // A plain raw file: read it directly, no format layer in between.
                        Some(f) => f
                            .read_exact_at(&mut buf, off)
                            .map_err(Error::io("reading", src_path))?,
                        None => src.read(&mut buf, off)?,
                    }
                    Ok(Some((off, buf)))
                })();
                let stop = item.is_err();
                let sent = match item {
                    Ok(None) => Ok(()),
                    Ok(Some(x)) => full_tx.send(Ok(x)),
                    Err(e) => full_tx.send(Err(e)),
                };
                if stop || sent.is_err() {
                    return;
                }
                off += len;
            }
        });
        for item in full_rx {
            let (off, data) = item?;
            progress(off, size);
            let blocks: Vec<(u64, &[u8])> = data
                .chunks(bs as usize)
                .enumerate()
                .map(|(i, b)| (off + i as u64 * bs, b))
                .filter(|(_, b)| !is_zero(b))
                .collect();
            stats.data_bytes += blocks.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            match writer.as_mut() {
                None => write_raw_runs(&file, &blocks, &o.dst)?,
                Some(w) if o.compress => {
                    let per = blocks.len().div_ceil(threads).max(1);
                    let compressed: Vec<Option<Vec<u8>>> = std::thread::scope(|s| {
                        let handles: Vec<_> = blocks
                            .chunks(per)
                            .map(|part| {
                                s.spawn(move || {
                                    part.iter()
                                        .map(|(_, b)| compress_one(b, bs as usize))
                                        .collect::<Vec<_>>()
                                })
                            })
                            .collect();
                        handles
                            .into_iter()
                            .flat_map(|h| h.join().unwrap_or_default())
                            .collect()
                    });
                    for ((goff, b), c) in blocks.iter().zip(compressed) {
                        let gc = goff / bs;
                        match c {
                            Some(c) => {
                                w.write_compressed(gc, &c).map_err(Error::format(&o.dst))?;
                                stats.compressed_clusters += 1;
                            }
                            None => w.write_data(gc, b).map_err(Error::format(&o.dst))?,
                        }
                    }
                }
                Some(w) => w.write_run(&blocks).map_err(Error::format(&o.dst))?,
            }
            drop(blocks);
            let _ = empty_tx.send(data);
        }
        Ok(())
    })?;
    let file = match writer {
        Some(w) => w.finish().map_err(Error::format(&o.dst))?,
        None => {
            file.set_len(size).map_err(Error::io("sizing", &o.dst))?;
            file
        }
    };
    file.sync_all().map_err(Error::io("writing", &o.dst))?;
    drop(file);
    progress(size, size);
    out.commit()?;
    Ok(stats)
}

/// A full cluster for compression (the last one is padded with zeroes, as QEMU does).
fn compress_one(b: &[u8], bs: usize) -> Option<Vec<u8>> {
    if b.len() == bs {
        compress_cluster(b)
    } else {
        let mut full = b.to_vec();
        full.resize(bs, 0);
        compress_cluster(&full)
    }
}

/// Write runs of adjacent blocks with one vectored write each.
fn write_raw_runs(
    file: &std::fs::File,
    blocks: &[(u64, &[u8])],
    path: &std::path::Path,
) -> Result<()> {
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i;
        while j + 1 < blocks.len()
            && j + 1 - i < 1024
            && blocks[j + 1].0 == blocks[j].0 + blocks[j].1.len() as u64
        {
            j += 1;
        }
        let parts: Vec<&[u8]> = blocks[i..=j].iter().map(|(_, b)| *b).collect();
        pwrite_all_vectored(file, &parts, blocks[i].0).map_err(Error::io("writing", path))?;
        i = j + 1;
    }
    Ok(())
}

/// Result of [`compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOutcome {
    /// Same guest-visible content.
    Identical {
        /// The sizes differ (the larger image's extra part reads as zeroes).
        size_mismatch: bool,
    },
    /// First differing byte offset.
    Mismatch {
        /// Offset of the first difference.
        offset: u64,
        /// The sizes differ.
        size_mismatch: bool,
    },
}

/// Compare the guest-visible content of two images, as `qemu-img compare` does (a size
/// difference is allowed when the extra part reads as zeroes, unless `strict`).
pub fn compare(
    a: &std::path::Path,
    fa: Option<Format>,
    b: &std::path::Path,
    fb: Option<Format>,
    strict: bool,
    policy: &BackingPolicy,
    progress: Progress<'_>,
) -> Result<CompareOutcome> {
    let ca = Chain::open(a, fa, false, policy)?;
    let cb = Chain::open(b, fb, false, policy)?;
    let (sa, sb) = (ca.size(), cb.size());
    let size_mismatch = sa != sb;
    if strict && size_mismatch {
        return Ok(CompareOutcome::Mismatch {
            offset: sa.min(sb),
            size_mismatch,
        });
    }
    let (ra, rb) = (raw_top(&ca), raw_top(&cb));
    let total = sa.max(sb);
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < total {
        progress(off, total);
        let len = CHUNK.min(total - off);
        let za = off >= sa || known_zero(&ca, ra.as_ref(), off, len.min(sa - off))?;
        let zb = off >= sb || known_zero(&cb, rb.as_ref(), off, len.min(sb - off))?;
        if !(za && zb) {
            let (xa, xb) = (&mut ba[..len as usize], &mut bb[..len as usize]);
            if za {
                xa.fill(0)
            } else {
                read_clipped(&ca, xa, off, sa)?
            }
            if zb {
                xb.fill(0)
            } else {
                read_clipped(&cb, xb, off, sb)?
            }
            if xa != xb {
                let pos = xa
                    .iter()
                    .zip(xb.iter())
                    .position(|(x, y)| x != y)
                    .unwrap_or(0);
                return Ok(CompareOutcome::Mismatch {
                    offset: off + pos as u64,
                    size_mismatch,
                });
            }
        }
        off += len;
    }
    progress(total, total);
    Ok(CompareOutcome::Identical { size_mismatch })
}

fn read_clipped(c: &Chain, buf: &mut [u8], off: u64, size: u64) -> Result<()> {
    let n = (size.saturating_sub(off)).min(buf.len() as u64) as usize;
    c.read(&mut buf[..n], off)?;
    buf[n..].fill(0);
    Ok(())
}
