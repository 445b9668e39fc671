//! Image archives as a client sends them (`PUT /1.0/images/NAME`): an uncompressed tar of a
//! disk and, optionally, its kernel and initrd (members named in [`berth_api::image`]). The
//! archive is untrusted input: only regular files with exactly those names are taken, each
//! once, within a size budget, into a folder of their own; anything else is refused by name
//! and the folder goes.

use crate::executor::ImportFiles;
use berth_api::image::{
    ARCHIVE_DISK, ARCHIVE_FROM, ARCHIVE_INITRD, ARCHIVE_KERNEL, ARCHIVE_MEMBERS,
};
use berth_api::Error;
use std::io::Read;
use std::path::Path;

/// The longest `from` member (a file name, as the client named it).
const FROM_MAX: u64 = 4096;

fn bad(message: String) -> Error {
    Error::invalid("body", message)
}

/// Read the archive on `input` into `dir` (made here; removed again when the archive is refused
/// or cut short), taking at most `max` bytes of members: what an import reads.
pub fn receive(input: &mut dyn Read, dir: &Path, max: u64) -> Result<ImportFiles, Error> {
    std::fs::create_dir(dir)
        .map_err(|e| Error::internal(format!("making {}: {e}", dir.display())))?;
    let r = unpack(input, dir, max);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    r
}

fn unpack(input: &mut dyn Read, dir: &Path, max: u64) -> Result<ImportFiles, Error> {
    let mut archive = tar::Archive::new(input);
    let mut seen: Vec<&'static str> = Vec::new();
    let mut left = max;
    let mut from = String::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("the image archive is not a tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("the image archive is unreadable: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let member = ARCHIVE_MEMBERS
            .iter()
            .copied()
            .find(|m| m.as_bytes() == raw.as_slice())
            .ok_or_else(|| {
                bad(format!(
                    "the image archive holds {shown:?}; it may hold only {}",
                    ARCHIVE_MEMBERS.join(", ")
                ))
            })?;
        if !entry.header().entry_type().is_file() {
            return Err(bad(format!(
                "{shown:?} in the image archive is not a regular file"
            )));
        }
        if seen.contains(&member) {
            return Err(bad(format!("the image archive holds {shown:?} twice")));
        }
        seen.push(member);
        let size = entry.size();
        if size > left {
            return Err(bad(format!(
                "the image archive is larger than berth takes ({max} bytes)"
            )));
        }
        left -= size;
        if member == ARCHIVE_FROM {
            if size > FROM_MAX {
                return Err(bad(format!("{shown:?} is longer than {FROM_MAX} bytes")));
            }
            entry
                .read_to_string(&mut from)
                .map_err(|e| bad(format!("{shown:?} in the image archive: {e}")))?;
            from = from.chars().filter(|c| !c.is_control()).collect();
            continue;
        }
        let path = dir.join(member);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;
        let copied = std::io::copy(&mut entry, &mut out)
            .map_err(|e| bad(format!("{shown:?} in the image archive was cut short: {e}")))?;
        if copied != size {
            return Err(bad(format!(
                "{shown:?} in the image archive was cut short ({copied} of {size} bytes)"
            )));
        }
    }
    if !seen.contains(&ARCHIVE_DISK) {
        return Err(bad(format!(
            "the image archive holds no {ARCHIVE_DISK:?} member"
        )));
    }
    if seen.contains(&ARCHIVE_KERNEL) != seen.contains(&ARCHIVE_INITRD) {
        return Err(bad(format!(
            "the image archive holds one of {ARCHIVE_KERNEL:?} and {ARCHIVE_INITRD:?}: give both or neither"
        )));
    }
    Ok(files_in(dir, from))
}

/// The files of an archive received into `dir`.
pub fn files_in(dir: &Path, from: String) -> ImportFiles {
    let kernel = dir.join(ARCHIVE_KERNEL);
    let has_kernel = kernel.exists();
    ImportFiles {
        disk: dir.join(ARCHIVE_DISK),
        kernel: has_kernel.then_some(kernel),
        initrd: has_kernel.then(|| dir.join(ARCHIVE_INITRD)),
        from: if from.is_empty() {
            "an upload".to_string()
        } else {
            from
        },
        allow: Vec::new(),
        store_backing: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, ty) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Names are written raw: `set_path` itself refuses `..`.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    const FILE: tar::EntryType = tar::EntryType::Regular;

    #[test]
    fn a_disk_with_its_kernel_is_received() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("up");
        let t = tar_of(&[
            ("disk", b"QFI\xfb", FILE),
            ("kernel", b"k", FILE),
            ("initrd", b"i", FILE),
            ("from", b"/home/me/disk.qcow2\n", FILE),
        ]);
        let f = receive(&mut t.as_slice(), &dir, 1 << 20).unwrap();
        assert_eq!(std::fs::read(&f.disk).unwrap(), b"QFI\xfb");
        assert_eq!(f.kernel, Some(dir.join("kernel")));
        assert_eq!(f.from, "/home/me/disk.qcow2");
        let d2 = d.path().join("plain");
        let f = receive(&mut tar_of(&[("disk", b"x", FILE)]).as_slice(), &d2, 10).unwrap();
        assert_eq!((f.kernel, f.initrd), (None, None));
    }

    #[test]
    fn anything_else_is_refused_by_name_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("up");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (tar_of(&[("../disk", b"x", FILE)]), "\"../disk\""),
            (tar_of(&[("/etc/passwd", b"x", FILE)]), "\"/etc/passwd\""),
            (
                tar_of(&[("disk", b"", tar::EntryType::Symlink)]),
                "not a regular file",
            ),
            (
                tar_of(&[("disk", b"x", FILE), ("disk", b"y", FILE)]),
                "twice",
            ),
            (tar_of(&[("kernel", b"k", FILE)]), "no \"disk\""),
            (
                tar_of(&[("disk", b"x", FILE), ("kernel", b"k", FILE)]),
                "both or neither",
            ),
            (
                tar_of(&[("disk", &[0u8; 100], FILE)]),
                "larger than berth takes",
            ),
            (b"not a tar at all, not at all, no".repeat(20), "unreadable"),
        ];
        for (t, says) in cases {
            let e = receive(&mut t.as_slice(), &dir, 50).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("body"), "{e:?}");
            assert!(e.message.contains(says), "{says}: {}", e.message);
            assert!(!dir.exists(), "{says}: the folder is left");
        }
        // Cut short in the middle of the disk.
        let t = tar_of(&[("disk", &[7u8; 4096], FILE)]);
        let e = receive(&mut &t[..1024], &dir, 1 << 20).unwrap_err();
        assert!(
            e.message.contains("cut short") || e.message.contains("unreadable"),
            "{e:?}"
        );
        assert!(!dir.exists());
    }
}
