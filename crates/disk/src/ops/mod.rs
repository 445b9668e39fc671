//! The disk commands as library calls: create, info, check, convert, map, compare, resize,
//! snapshots, rebase, commit and write. Each takes typed options and returns typed results;
//! printing is the caller's business.

mod convert;
mod create;
mod info;
mod map;
mod modify;

pub use convert::{compare, convert, CompareOutcome, ConvertOptions, ConvertStats};
pub use create::{create, CreateOptions, Preallocation};
pub use info::{info, ImageInfo, SnapshotInfo};
pub use map::{map, MapEntry};
pub use modify::{
    check, commit, rebase, resize, snapshot_apply, snapshot_create, snapshot_delete, snapshot_list,
    write, NewSize, RebaseOptions,
};

use crate::{Error, Result};
use std::path::Path;

/// Progress callback: (bytes done, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Refuse to write `dst` when it exists, unless `force`; never when it is not a regular file.
pub(crate) fn check_overwrite(dst: &Path, force: bool) -> Result<()> {
    match berth_files::output::check_target(dst, force, "a disk image") {
        Err(berth_files::FileError::Exists(p)) => Err(Error::Exists(p)),
        other => Ok(other?),
    }
}

/// Start writing `dst` under its temporary name (refusing what [`check_overwrite`] refuses).
pub(crate) fn start_output(dst: &Path, force: bool) -> Result<berth_files::output::Output> {
    check_overwrite(dst, force)?;
    Ok(berth_files::output::Output::create(
        dst,
        force,
        None,
        "a disk image",
    )?)
}

/// Whether a buffer is all zero bytes.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let words = buf.chunks_exact(16);
    let tail = words.remainder();
    words
        .clone()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && tail.iter().all(|&b| b == 0)
}

/// Find the next data offset at or after `off` in a raw file (SEEK_DATA); `None` if only holes
/// follow, `Some(off)` if the file system cannot tell.
pub(crate) fn next_data(file: &std::fs::File, off: u64) -> Option<u64> {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(off)) {
        Ok(pos) => Some(pos),
        Err(rustix::io::Errno::NXIO) => None,
        Err(_) => Some(off),
    }
}

/// End of the data region starting at `off` (SEEK_HOLE).
pub(crate) fn next_hole(file: &std::fs::File, off: u64, len: u64) -> u64 {
    rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(off)).unwrap_or(len)
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_detection_covers_words_and_tail() {
        assert!(super::is_zero(&[]));
        assert!(super::is_zero(&[0u8; 4096]));
        let mut b = vec![0u8; 4099];
        b[4098] = 1;
        assert!(!super::is_zero(&b), "a byte in the tail counts");
        b[4098] = 0;
        b[17] = 1;
        assert!(!super::is_zero(&b), "a byte in a word counts");
    }
}
