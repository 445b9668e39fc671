//! Image archives as a client sends them (`PUT /1.0/images/NAME`), in one of two forms: an
//! uncompressed tar of a disk and, optionally, its kernel and initrd (members named in
//! [`berth_api::image`]), to import; or an image as another berth host exported it
//! ([`super::transfer`]: `image.json` first, then the files it names), to install as it is. The
//! archive is untrusted input: only regular files with exactly the names the form allows are
//! taken, each once, within a size budget, into a folder of their own; anything else is refused
//! by name and the folder goes.

use super::{transfer, ImageMeta};
use crate::executor::ImportFiles;
use berth_api::image::{
    ARCHIVE_DISK, ARCHIVE_FROM, ARCHIVE_INITRD, ARCHIVE_KERNEL, ARCHIVE_MEMBERS,
};
use berth_api::Error;
use std::io::Read;
use std::path::Path;

/// The most an image archive may carry.
pub const UPLOAD_MAX: u64 = 256 << 30;

/// The longest `from` member (a file name, as the client named it).
const FROM_MAX: u64 = 4096;

fn bad(message: String) -> Error {
    Error::invalid("body", message)
}

/// What an archive held.
#[derive(Debug)]
pub enum Received {
    /// A disk to import.
    Disk(ImportFiles),
    /// An image another host exported, its `image.json` and files in the folder.
    Image,
}

/// Read the archive on `input` into `dir` (made here; removed again when the archive is refused
/// or cut short), taking at most `max` bytes of members.
pub fn receive(input: &mut dyn Read, dir: &Path, max: u64) -> Result<Received, Error> {
    std::fs::create_dir(dir)
        .map_err(|e| Error::internal(format!("making {}: {e}", dir.display())))?;
    let r = unpack(input, dir, max);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    r
}

fn unpack(input: &mut dyn Read, dir: &Path, max: u64) -> Result<Received, Error> {
    let mut archive = tar::Archive::new(input);
    let mut seen: Vec<&'static str> = Vec::new();
    let mut left = max;
    let mut from = String::new();
    let mut entries = archive
        .entries()
        .map_err(|e| bad(format!("the image archive is not a tar: {e}")))?;
    let first = match entries.next() {
        Some(e) => e.map_err(|e| bad(format!("the image archive is unreadable: {e}")))?,
        None => {
            return Err(bad(format!(
                "the image archive holds no {ARCHIVE_DISK:?} member"
            )))
        }
    };
    if first.path_bytes().as_ref() == transfer::META.as_bytes() {
        unpack_image(first, entries, dir, max)?;
        return Ok(Received::Image);
    }
    for entry in std::iter::once(Ok(first)).chain(entries) {
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
        take(&mut entry, size, &dir.join(member), &shown)?;
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
    Ok(Received::Disk(files_in(dir, from)))
}

/// Write a member's `size` bytes to `path`, a new file.
fn take(entry: &mut dyn Read, size: u64, path: &Path, shown: &str) -> Result<(), Error> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;
    let copied = std::io::copy(entry, &mut out)
        .map_err(|e| bad(format!("{shown:?} in the image archive was cut short: {e}")))?;
    if copied != size {
        return Err(bad(format!(
            "{shown:?} in the image archive was cut short ({copied} of {size} bytes)"
        )));
    }
    Ok(())
}

/// The rest of an exported image: `meta`'s files, each once, within `max` bytes in all.
fn unpack_image<'a, R: Read + 'a>(
    mut meta_entry: tar::Entry<'a, R>,
    rest: tar::Entries<'a, R>,
    dir: &Path,
    max: u64,
) -> Result<(), Error> {
    if !meta_entry.header().entry_type().is_file() || meta_entry.size() > transfer::META_MAX {
        return Err(bad(format!(
            "{:?} in the image archive is not a regular file of at most {} bytes",
            transfer::META,
            transfer::META_MAX
        )));
    }
    let mut text = Vec::new();
    meta_entry
        .read_to_end(&mut text)
        .map_err(|e| bad(format!("{:?} in the image archive: {e}", transfer::META)))?;
    let meta: ImageMeta = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("{:?} in the image archive: {e}", transfer::META)))?;
    transfer::check_meta(&meta).map_err(|e| bad(format!("the image archive's {e}")))?;
    let len = text.len() as u64;
    take(
        &mut text.as_slice(),
        len,
        &dir.join(transfer::META),
        transfer::META,
    )?;
    let mut wanted = transfer::files_of(&meta);
    let mut left = max;
    for entry in rest {
        let mut entry = entry.map_err(|e| bad(format!("the image archive is unreadable: {e}")))?;
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(i) = wanted.iter().position(|w| *w == shown) else {
            return Err(bad(format!(
                "the image archive holds {shown:?}, which its image.json does not name (or names once)"
            )));
        };
        wanted.remove(i);
        if !entry.header().entry_type().is_file() {
            return Err(bad(format!(
                "{shown:?} in the image archive is not a regular file"
            )));
        }
        let size = entry.size();
        if size > left {
            return Err(bad(format!(
                "the image archive is larger than berth takes ({max} bytes)"
            )));
        }
        left -= size;
        take(&mut entry, size, &dir.join(&shown), &shown)?;
    }
    if let Some(missing) = wanted.first() {
        return Err(bad(format!(
            "the image archive holds no {missing:?}, which its image.json names"
        )));
    }
    Ok(())
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

    fn disk(r: Result<Received, Error>) -> ImportFiles {
        match r.unwrap() {
            Received::Disk(f) => f,
            Received::Image => panic!("a disk archive taken for an exported image"),
        }
    }

    fn meta_json(disk: &str) -> Vec<u8> {
        let boot =
            serde_json::json!({"kernel": "vmlinuz", "initrd": "initrd.img", "version": "6.1"});
        serde_json::to_vec(&serde_json::json!({
            "name": "elsewhere", "os": "debian", "release": "12", "suite": "bookworm",
            "arch": "x86_64", "disk": disk, "size": 4, "sha256": "ab".repeat(32),
            "built_at": 1, "recipe": "r", "kernel_cloud": boot, "kernel_generic": boot,
            "root": "LABEL=rootfs",
        }))
        .unwrap()
    }

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
        let f = disk(receive(&mut t.as_slice(), &dir, 1 << 20));
        assert_eq!(std::fs::read(&f.disk).unwrap(), b"QFI\xfb");
        assert_eq!(f.kernel, Some(dir.join("kernel")));
        assert_eq!(f.from, "/home/me/disk.qcow2");
        let d2 = d.path().join("plain");
        let f = disk(receive(
            &mut tar_of(&[("disk", b"x", FILE)]).as_slice(),
            &d2,
            10,
        ));
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

    #[test]
    fn an_exported_image_is_received_with_the_files_its_metadata_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("up");
        let m = meta_json("disk.qcow2");
        let t = tar_of(&[
            ("image.json", &m, FILE),
            ("disk.qcow2", b"QFI\xfb", FILE),
            ("vmlinuz", b"k", FILE),
            ("initrd.img", b"i", FILE),
        ]);
        assert!(matches!(
            receive(&mut t.as_slice(), &dir, 1 << 20).unwrap(),
            Received::Image
        ));
        assert_eq!(std::fs::read(dir.join("disk.qcow2")).unwrap(), b"QFI\xfb");
        assert_eq!(std::fs::read(dir.join("image.json")).unwrap(), m);
    }

    #[test]
    fn an_exported_image_with_other_members_or_bad_metadata_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("up");
        let m = meta_json("disk.qcow2");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                tar_of(&[("image.json", &m, FILE), ("disk.qcow2", b"x", FILE)]),
                "holds no \"vmlinuz\"",
            ),
            (
                tar_of(&[
                    ("image.json", &m, FILE),
                    ("disk.qcow2", b"x", FILE),
                    ("disk.qcow2", b"x", FILE),
                ]),
                "does not name (or names once)",
            ),
            (
                tar_of(&[("image.json", &m, FILE), ("../../etc/cron.d/x", b"x", FILE)]),
                "does not name",
            ),
            (
                tar_of(&[("image.json", &meta_json("../disk"), FILE)]),
                "disk:",
            ),
            (
                tar_of(&[("image.json", b"{\"name\": 1}", FILE)]),
                "image.json",
            ),
            (
                tar_of(&[("image.json", &m, FILE), ("disk.qcow2", &[0u8; 100], FILE)]),
                "larger than berth takes",
            ),
        ];
        for (t, says) in cases {
            let e = receive(&mut t.as_slice(), &dir, 50).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("body"), "{e:?}");
            assert!(e.message.contains(says), "{says}: {}", e.message);
            assert!(!dir.exists(), "{says}: the folder is left");
        }
    }
}
