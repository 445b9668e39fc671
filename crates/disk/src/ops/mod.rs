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
use std::path::{Path, PathBuf};

/// Progress callback: (bytes done, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A temporary sibling of `dst` to write into before an atomic rename.
pub(crate) fn temp_sibling(dst: &Path) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    dst.with_file_name(format!(".{name}.berth-tmp-{}", std::process::id()))
}

/// Refuse to overwrite `dst` unless `force`.
pub(crate) fn check_overwrite(dst: &Path, force: bool) -> Result<()> {
    if !force && std::fs::symlink_metadata(dst).is_ok() {
        return Err(Error::Exists(dst.to_path_buf()));
    }
    Ok(())
}

/// Move a finished temporary file into place and make the rename durable.
pub(crate) fn commit_temp(tmp: &Path, dst: &Path) -> Result<()> {
    std::fs::rename(tmp, dst).map_err(Error::io("renaming into place", dst))?;
    if let Some(parent) = crate::policy::absolute_parent(dst) {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Removes a temporary file unless disarmed.
pub(crate) struct TempGuard(pub Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
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
