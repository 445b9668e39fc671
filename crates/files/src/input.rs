//! Reading a user's file: regular files only (a FIFO would block, `/dev/zero` never ends), up to
//! a cap, so that no input makes berth hold more than the cap in memory.
//!
//! The caps, documented in the README:
//! - [`USER_DATA_CAP`]: cloud-config and other user-data, seed parts (meta-data, network-config,
//!   vendor-data);
//! - [`PUBLIC_KEY_CAP`]: public keys and authorized_keys files;
//! - [`SMALL_CAP`]: one-line files (a machine-id).

use crate::{human, kind_name, FileError};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// User-data and seed parts: 4 MiB. cloud-init has no limit of its own for NoCloud; clouds cap
/// user-data at 16-64 KiB, so real configs are far below this.
pub const USER_DATA_CAP: u64 = 4 << 20;
/// Public keys and authorized_keys files: 1 MiB (some thousands of keys).
pub const PUBLIC_KEY_CAP: u64 = 1 << 20;
/// One-line files such as a machine-id: 64 KiB.
pub const SMALL_CAP: u64 = 64 << 10;

/// Read `path` (a regular file, at most `cap` bytes). `what` names it in errors ("the
/// cloud-config").
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>, FileError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| FileError::io("reading", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::io("reading", path, e))?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegularInput {
            path: path.to_path_buf(),
            what: what.to_string(),
            kind: kind_name(meta.file_type()),
        });
    }
    let too_large = || FileError::TooLarge {
        path: path.to_path_buf(),
        what: what.to_string(),
        cap: human(cap),
    };
    if meta.len() > cap {
        return Err(too_large());
    }
    // The size can change under us (a file still being written): read one byte past the cap.
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| FileError::io("reading", path, e))?;
    if buf.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(buf)
}

/// [`read_capped`], as UTF-8 text.
pub fn read_text_capped(path: &Path, cap: u64, what: &str) -> Result<String, FileError> {
    let bytes = read_capped(path, cap, what)?;
    String::from_utf8(bytes).map_err(|e| FileError::NotText {
        path: path.to_path_buf(),
        what: what.to_string(),
        offset: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_regular_file_up_to_its_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("user-data");
        std::fs::write(&p, "#cloud-config\n").unwrap();
        assert_eq!(
            read_text_capped(&p, 14, "the cloud-config").unwrap(),
            "#cloud-config\n"
        );
        let e = read_capped(&p, 13, "the cloud-config").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the cloud-config is larger than berth's limit of 13 bytes",
                p.display()
            )
        );
    }

    #[test]
    fn refuses_devices_fifos_and_folders_at_once() {
        let e = read_capped(Path::new("/dev/zero"), 1 << 20, "the public key").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/zero: the public key must be a regular file, and this is a character device"
        );
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        // Would block forever without O_NONBLOCK: nobody writes to it.
        let e = read_capped(&fifo, 10, "the cloud-config").unwrap_err();
        assert!(
            e.to_string().ends_with("this is a FIFO (named pipe)"),
            "{e}"
        );
        let e = read_capped(d.path(), 10, "the cloud-config").unwrap_err();
        assert!(e.to_string().ends_with("this is a folder"), "{e}");
    }

    #[test]
    fn binary_text_names_the_byte() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bin.dat");
        std::fs::write(&p, b"abc\xff\xfe").unwrap();
        let e = read_text_capped(&p, 100, "the cloud-config").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the cloud-config is not UTF-8 text (byte 3 is not part of a UTF-8 character)",
                p.display()
            )
        );
    }
}
