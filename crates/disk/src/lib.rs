//! berth's disk image engine: qcow2 (copy-on-write, thin, backing chains, internal snapshots)
//! and raw images, byte-for-byte interoperable with QEMU's own tools.
//!
//! Guest-data I/O on existing images goes through the `imago` crate; the qcow2 metadata layer
//! ([`qcow2`]) is berth's own and covers what imago lacks: a strict validator that runs before an
//! untrusted image is opened, `check` and repair, internal snapshots, compressed writes and header
//! rewrites for rebase. Backing files pass the [`policy`] gate before anything opens them; their
//! format is recorded in the image, never probed.
//!
//! This crate does no argument parsing and prints nothing; progress is reported through a
//! callback. It is not a VM block device: QEMU opens the images berth makes.

pub mod image;
pub mod ops;
pub mod policy;
pub mod qcow2;
pub mod units;

use std::path::PathBuf;
use thiserror::Error;

pub use image::{Chain, Format};
pub use policy::BackingPolicy;

/// Errors from the disk engine. Each names the file or value at fault.
#[derive(Debug, Error)]
pub enum Error {
    /// The image's structure is invalid, hostile or unsupported.
    #[error("image {}", path.display())]
    Format {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: qcow2::FormatError,
    },
    /// A system call on a file failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What berth was doing ("reading", "creating", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A backing file lies outside the folders images may reference.
    #[error("backing file {name:?} of {} resolves to {}, outside the allowed folders ({allowed}); allow its folder explicitly (--allow-backing-dir) if it is trusted", image.display(), resolved.display())]
    BackingNotAllowed {
        /// The image naming the backing file.
        image: PathBuf,
        /// The name as stored.
        name: String,
        /// Where it resolves.
        resolved: PathBuf,
        /// The allowed folders.
        allowed: String,
    },
    /// A backing file does not exist.
    #[error("backing file {name:?} of {} does not exist (looked for {})", image.display(), resolved.display())]
    BackingMissing {
        /// The image naming the backing file.
        image: PathBuf,
        /// The name as stored.
        name: String,
        /// Where berth looked.
        resolved: PathBuf,
    },
    /// A backing file without a recorded format.
    #[error("{} names backing file {name:?} without a backing format, and berth never probes one; record it with `berth disk rebase --unsafe --backing {name} --backing-format qcow2|raw {}`", image.display(), image.display())]
    BackingFormatMissing {
        /// The image.
        image: PathBuf,
        /// The backing name.
        name: String,
    },
    /// A backing file name that is not a plain path.
    #[error("backing file name {name:?} of {} is not a plain file path (protocols and json: names are refused)", image.display())]
    BackingProtocol {
        /// The image.
        image: PathBuf,
        /// The name.
        name: String,
    },
    /// The backing chain loops.
    #[error("backing chain of {} loops back to {}", image.display(), repeated.display())]
    BackingLoop {
        /// The top image.
        image: PathBuf,
        /// The file seen twice.
        repeated: PathBuf,
    },
    /// The backing chain is too long.
    #[error("backing chain of {} is deeper than {max} images", image.display())]
    ChainTooDeep {
        /// The top image.
        image: PathBuf,
        /// The limit.
        max: usize,
    },
    /// A format name berth does not know.
    #[error("unknown image format {0:?} (expected qcow2 or raw)")]
    UnknownFormat(String),
    /// The request itself is impossible (bad size, option not valid for the format, ...).
    #[error("{0}")]
    Invalid(String),
    /// The destination exists and would be overwritten.
    #[error("{} already exists; pass --force to overwrite it", .0.display())]
    Exists(PathBuf),
    /// A path named as an image is neither a regular file nor a block device.
    #[error("{} is {kind}, not a disk image (berth opens regular files and block devices)", path.display())]
    NotAnImage {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// An output file could not be made (not a regular file, exists, I/O).
    #[error(transparent)]
    Output(#[from] berth_files::FileError),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>) -> impl FnOnce(qcow2::FormatError) -> Error {
        let path = path.into();
        move |source| Error::Format { path, source }
    }
}
