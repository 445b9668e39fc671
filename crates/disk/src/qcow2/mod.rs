//! qcow2 metadata, read and written by berth itself: header, L1/L2 tables, refcounts, internal
//! snapshots, consistency check, and a streaming writer for fresh images.
//!
//! Guest data I/O on existing images goes through `imago`; this module owns what imago lacks
//! (check, snapshots, compressed writes, header rewrites) and the strict validation that runs
//! before an untrusted image reaches imago at all.

pub mod check;
pub mod header;
pub mod meta;
pub mod overlap;
pub mod refcount;
pub mod safe_write;
pub mod snapshot;
pub mod writer;

use std::io;
use thiserror::Error;

pub use header::Header;
pub use meta::{L2Entry, Qcow2File};

/// Bits 9..55 of an L1 or L2 entry: the host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: the cluster's refcount is exactly one (it may be written in place).
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of an L2 entry: the cluster reads as zeroes.
pub const OFLAG_ZERO: u64 = 1;

/// What is wrong with a qcow2 file's structure, or why reading it failed.
#[derive(Debug, Error)]
pub enum FormatError {
    /// The magic number is not qcow2's.
    #[error("not a qcow2 image (bad magic number)")]
    BadMagic,
    /// The file ends before a structure does.
    #[error("{what} is truncated: need {need} bytes, have {have}")]
    Truncated {
        /// The structure.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// A header field has an impossible or hostile value.
    #[error("invalid {field} ({value}): {why}")]
    Invalid {
        /// Field name as in the qcow2 specification.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Why it is refused.
        why: String,
    },
    /// A table entry points somewhere it must not.
    #[error("corrupt {what}: {why}")]
    Corrupt {
        /// Which table and entry.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// A feature berth does not handle.
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    /// An operation that the image's settings do not allow.
    #[error("{0}")]
    Refused(String),
    /// Reading or writing the file failed.
    #[error("I/O error on {what}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl FormatError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> FormatError {
        let what = what.into();
        move |source| FormatError::Io { what, source }
    }
}

/// Read big-endian u64 entries from bytes.
pub(crate) fn be64_entries(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

/// Write u64 entries as big-endian bytes.
pub(crate) fn entries_to_be(entries: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 8);
    for e in entries {
        out.extend_from_slice(&e.to_be_bytes());
    }
    out
}
