//! Files that cross the line between berth and its user: what berth reads *from* a user (a
//! cloud-config, a public key, a seed part) and what it writes *for* one (a disk image, a key
//! pair, an authorized_keys file, a seed).
//!
//! Inputs ([`input`]) are read only from regular files, up to a stated cap, so that `/dev/zero`,
//! a FIFO or a huge file ends in a clear error instead of unbounded memory or a hang. Outputs
//! ([`output`]) are written under a locked temporary name beside the target and renamed into
//! place when complete; a target that exists and is not a regular file (a device node, a FIFO,
//! a folder) is refused whatever the flags; temporaries are removed on error, on SIGINT, SIGTERM
//! and SIGHUP (where the command asked for it), and by a later command in the same folder when
//! the process that made them is gone.
//!
//! Not for berth's own state files under its data dir, which `berth-host` manages.

pub mod input;
pub mod output;

use std::path::PathBuf;

/// What went wrong with a user's file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// An input that is not a regular file.
    #[error("{path}: {what} must be a regular file, and this is {kind}")]
    NotRegularInput {
        /// The file.
        path: PathBuf,
        /// What berth wanted to read ("the cloud-config").
        what: String,
        /// What it is ("a character device").
        kind: &'static str,
    },
    /// An input over its cap.
    #[error("{path}: {what} is larger than berth's limit of {cap}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What berth wanted to read.
        what: String,
        /// The cap, as text ("4 MiB").
        cap: String,
    },
    /// A text input that is not UTF-8.
    #[error("{path}: {what} is not UTF-8 text (byte {offset} is not part of a UTF-8 character)")]
    NotText {
        /// The file.
        path: PathBuf,
        /// What berth wanted to read.
        what: String,
        /// Offset of the first bad byte.
        offset: usize,
    },
    /// An output target that exists and is not a regular file.
    #[error(
        "{path} is {kind}: berth writes {what} only to a regular file, and replaces nothing \
         else, whatever the flags"
    )]
    NotRegularOutput {
        /// The target.
        path: PathBuf,
        /// What berth was to write.
        what: String,
        /// What the target is.
        kind: &'static str,
    },
    /// An output target that exists, without `--force`.
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    /// An I/O error, with what berth was doing and where (the cause, printed after it, says
    /// what happened: "No space left on device").
    #[error("{action} {path}")]
    Io {
        /// "reading", "writing"...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    /// An I/O error while `action` on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> FileError {
        FileError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// What kind of file a mode describes, in words for an error message.
pub fn kind_name(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// A byte count in binary units ("4 MiB"), for caps in messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024 && v % 1024 == 0 && u + 1 < UNITS.len() {
        v /= 1024;
        u += 1;
    }
    format!("{v} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(4 << 20), "4 MiB");
        assert_eq!(super::human(1000), "1000 bytes");
        assert_eq!(super::human(256 << 10), "256 KiB");
    }
}
