//! `disk map`: which guest ranges hold data, read as zeroes, or come from which backing layer,
//! with `qemu-img map --output=json`'s field names.

use super::{next_data, next_hole};
use crate::image::{Chain, Format};
use crate::policy::BackingPolicy;
use crate::{Error, Result};
use imago::ShallowMapping;
use serde::Serialize;
use std::path::Path;

/// One range of the map.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Layer the range comes from (0 = top).
    pub depth: usize,
    /// Whether some layer defines the range (false: unallocated everywhere).
    pub present: bool,
    /// Reads as zeroes.
    pub zero: bool,
    /// Holds data.
    pub data: bool,
    /// Stored compressed.
    pub compressed: bool,
    /// Host offset in that layer's file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The file the data is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// Map the whole of `path`.
pub fn map(path: &Path, format: Option<Format>, policy: &BackingPolicy) -> Result<Vec<MapEntry>> {
    let chain = Chain::open(path, format, false, policy)?;
    let size = chain.size();
    let raw_files: Vec<Option<std::fs::File>> = chain
        .layers
        .iter()
        .map(|l| {
            (l.format == Format::Raw)
                .then(|| std::fs::File::open(&l.path).ok())
                .flatten()
        })
        .collect();
    let mut out: Vec<MapEntry> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let mut layer = &chain.access;
        let mut depth = 0usize;
        let mut off = pos;
        let mut max = size - pos;
        let entry = loop {
            let (m, len) = layer
                .get_shallow_mapping(off, max)
                .map_err(Error::io("mapping", chain.path()))?;
            let len = len.min(max);
            let fname = Some(chain.layers[depth].path.display().to_string());
            match m {
                ShallowMapping::Raw { offset, .. } => {
                    let (zero, len) = match &raw_files[depth] {
                        Some(f) => match next_data(f, offset) {
                            None => (true, len),
                            Some(d) if d > offset => (true, len.min(d - offset)),
                            Some(_) => (
                                false,
                                len.min(
                                    next_hole(f, offset, u64::MAX).saturating_sub(offset).max(1),
                                ),
                            ),
                        },
                        None => (false, len),
                    };
                    break MapEntry {
                        start: pos,
                        length: len,
                        depth,
                        present: true,
                        zero,
                        data: !zero,
                        compressed: false,
                        offset: Some(offset),
                        filename: fname,
                    };
                }
                ShallowMapping::Indirect {
                    layer: next,
                    offset: noff,
                    ..
                } => {
                    layer = next;
                    depth += 1;
                    off = noff;
                    max = len;
                }
                ShallowMapping::Zero { explicit, .. } => {
                    break MapEntry {
                        start: pos,
                        length: len,
                        depth,
                        present: explicit,
                        zero: true,
                        data: false,
                        compressed: false,
                        offset: None,
                        filename: None,
                    };
                }
                ShallowMapping::Eof { .. } => {
                    break MapEntry {
                        start: pos,
                        length: max,
                        depth,
                        present: false,
                        zero: true,
                        data: false,
                        compressed: false,
                        offset: None,
                        filename: None,
                    };
                }
                ShallowMapping::Special { .. } => {
                    break MapEntry {
                        start: pos,
                        length: len,
                        depth,
                        present: true,
                        zero: false,
                        data: true,
                        compressed: true,
                        offset: None,
                        filename: fname,
                    };
                }
                _ => {
                    break MapEntry {
                        start: pos,
                        length: len,
                        depth,
                        present: true,
                        zero: false,
                        data: true,
                        compressed: false,
                        offset: None,
                        filename: fname,
                    };
                }
            }
        };
        if entry.length == 0 {
            return Err(Error::Invalid(format!(
                "mapping of {} made no progress at offset {pos}",
                path.display()
            )));
        }
        pos += entry.length;
        push_merged(&mut out, entry);
    }
    Ok(out)
}

fn push_merged(out: &mut Vec<MapEntry>, e: MapEntry) {
    if let Some(prev) = out.last_mut() {
        let contiguous = match (prev.offset, e.offset) {
            (Some(a), Some(b)) => a + prev.length == b,
            (None, None) => true,
            _ => false,
        };
        if contiguous
            && prev.depth == e.depth
            && prev.present == e.present
            && prev.zero == e.zero
            && prev.data == e.data
            && prev.compressed == e.compressed
            && prev.filename == e.filename
        {
            prev.length += e.length;
            return;
        }
    }
    out.push(e);
}
