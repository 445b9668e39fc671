//! File trees as tar streams, and back: what a container's writable layer is when it travels
//! to another host (`berth copy`, `berth move`), and (issue 16) what an image layer is.
//!
//! [`pack`] writes a folder's tree into a [`tar::Builder`] with everything a root file system
//! needs kept: numeric owners, modes with setuid/setgid/sticky, mtimes, extended attributes
//! (PAX `SCHILY.xattr.*`, overlayfs' `trusted.overlay.opaque` included), character and block
//! devices (overlayfs whiteouts are 0/0 character devices), FIFOs, symlinks as they are (never
//! followed), hard links as links. Sockets are skipped: they are made by their listener.
//!
//! [`Unpacker`] takes such entries beneath a root and never anywhere else: every path is
//! resolved from the root with no symlink followed on the way (libpathrs: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), entries are created relative to their parent
//! folder's descriptor, never by path, and `..`, absolute names, a name twice, a link to
//! something outside, and more bytes or entries than allowed are refused with the member named.
//! The tar crate's own unpacking is not used: it makes a character device a regular file, and
//! sets no xattrs on folders.
//!
//! Owners may be shifted on the way (an unprivileged container's IDs are stored as the
//! container sees them, and shifted into this host's range when unpacked): see [`IdShift`].

mod pack;
mod unpack;

pub use pack::pack;
pub use unpack::{Limits, Unpacker};

use std::path::PathBuf;

/// What went wrong with a tree or an archive of one.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The archive is not one berth takes (names the member and why).
    #[error("{0}")]
    Invalid(String),
    /// A file system operation.
    #[error("{what} {path}: {source}")]
    Io {
        /// What berth was doing.
        what: &'static str,
        /// The path (in the tree, or of the archive's member).
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> TreeError {
    let path = path.into();
    move |source| TreeError::Io { what, path, source }
}

/// Extended attributes, name and value, in name order.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// An unprivileged container's ID range on this host: IDs `0..len` inside are `base..base+len`
/// outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    /// The host ID that ID 0 inside is.
    pub base: u32,
    /// How many IDs the range holds.
    pub len: u32,
}

impl IdShift {
    /// The ID inside for host ID `id`, refused for one outside the range (`what` names the
    /// file, for the error).
    pub fn inside(&self, id: u32, what: &dyn Fn() -> String) -> Result<u32, TreeError> {
        id.checked_sub(self.base)
            .filter(|i| *i < self.len)
            .ok_or_else(|| {
                TreeError::Invalid(format!(
                    "{}: owner {id} is outside the container's ID range ({}-{})",
                    what(),
                    self.base,
                    self.base as u64 + self.len as u64 - 1
                ))
            })
    }

    /// The host ID for ID `id` inside, refused for one the range does not hold.
    pub fn outside(&self, id: u32, what: &dyn Fn() -> String) -> Result<u32, TreeError> {
        if id >= self.len {
            return Err(TreeError::Invalid(format!(
                "{}: owner {id} is outside an unprivileged container's IDs (0-{})",
                what(),
                self.len - 1
            )));
        }
        Ok(self.base + id)
    }
}

/// The xattrs of overlayfs that travel with a layer: whether a folder hides the lower one, and
/// where a renamed folder came from. The others (`origin`, `impure`, `nlink`, `uuid`, ...)
/// describe the upper's relation to this host's lower inodes and are rebuilt by the kernel.
pub fn xattr_travels(name: &[u8]) -> bool {
    match name.strip_prefix(b"trusted.overlay.") {
        Some(rest) => rest == b"opaque" || rest == b"redirect",
        None => true,
    }
}

#[cfg(test)]
mod tests;
