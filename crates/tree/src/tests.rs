//! A tree with every kind of inode through [`pack`] and [`Unpacker`] and compared, and hostile
//! archives refused. Root is needed (owners, device nodes, trusted.* xattrs), as berth is.

use super::*;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

const LIMITS: Limits = Limits {
    bytes: 1 << 30,
    entries: 1 << 20,
};

fn setx(p: &Path, k: &str, v: &[u8]) {
    rustix::fs::lsetxattr(p, k, v, rustix::fs::XattrFlags::empty()).unwrap();
}

/// An overlay upper layer's worth of everything.
fn sample(root: &Path) {
    std::fs::create_dir_all(root.join("etc/ssh")).unwrap();
    std::fs::write(root.join("etc/hostname"), "web\n").unwrap();
    std::fs::write(root.join("etc/big"), vec![7u8; 300_000]).unwrap();
    let su = root.join("etc/su");
    std::fs::write(&su, "#!/bin/sh\n").unwrap();
    rustix::fs::chown(&su, Some(rustix::fs::Uid::from_raw(0)), None).unwrap();
    std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::hard_link(root.join("etc/hostname"), root.join("etc/ssh/linked")).unwrap();
    symlink("../hostname", root.join("etc/ssh/up")).unwrap();
    symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("etc/removed"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    let opaque = root.join("var/opaque");
    std::fs::create_dir_all(&opaque).unwrap();
    setx(&opaque, "trusted.overlay.opaque", b"y");
    setx(&opaque, "trusted.overlay.origin", b"\0\xfb\x21");
    setx(&root.join("etc/hostname"), "user.note", b"kept");
    let home = root.join("home/me");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("f"), "mine").unwrap();
    for p in [&home, &home.join("f")] {
        rustix::fs::chown(
            p.as_path(),
            Some(rustix::fs::Uid::from_raw(1000)),
            Some(rustix::fs::Gid::from_raw(1000)),
        )
        .unwrap();
    }
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750)).unwrap();
    let old = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
    };
    for p in ["etc/ssh/up", "home/me/f", "home/me", "etc/ssh"] {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            root.join(p),
            &old,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

/// Each path in the tree with what the tree keeps of it.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let mut x = Vec::new();
        let mut names = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(&p, &mut names[..]).unwrap();
        for k in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
            let mut v = vec![0u8; 4096];
            let k = std::str::from_utf8(k).unwrap();
            let l = rustix::fs::lgetxattr(&p, k, &mut v[..]).unwrap();
            x.push(format!("{k}={:?}", &v[..l]));
        }
        x.sort();
        let content = if m.file_type().is_file() {
            format!("{:x}", {
                let b = std::fs::read(&p).unwrap();
                b.iter()
                    .fold(0u64, |h, c| h.wrapping_mul(31).wrapping_add(*c as u64))
            })
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        // Folders' mtimes change as their contents are made; the root's included.
        out.push(format!(
            "{rel} {:o} {}:{} rdev={} nlink={} mtime={} {content} {x:?}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.rdev(),
            m.nlink(),
            m.mtime()
        ));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn unpack_all(data: &[u8], to: &Path, shift: Option<IdShift>) -> Result<(), TreeError> {
    let mut u = Unpacker::new(to, Path::new(""), shift, false, LIMITS)?;
    let mut a = tar::Archive::new(data);
    for e in a.entries().unwrap() {
        let mut e = e.map_err(|e| TreeError::Invalid(e.to_string()))?;
        u.take(&mut e)?;
    }
    u.finish()
}

fn packed(src: &Path, prefix: &str, shift: Option<IdShift>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    pack(&mut b, src, prefix, shift).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_tree_with_every_kind_of_inode_comes_back_the_same() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    sample(&src);
    let t = packed(&src, "", None);
    let dst = d.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    unpack_all(&t, &dst, None).unwrap();
    let (mut a, b) = (describe(&src), describe(&dst));
    // overlayfs' origin stays behind, the opaque mark travels.
    for l in a.iter_mut() {
        *l = l.replace(", \"trusted.overlay.origin=[0, 251, 33]\"", "");
    }
    assert_eq!(a, b);
    assert!(b.iter().any(|l| l.contains("trusted.overlay.opaque")));
    assert!(
        b.iter().any(|l| l.starts_with("etc/su 104755 0:0")),
        "{b:#?}"
    );
    assert!(
        b.iter().any(|l| l.starts_with("home/me 40750 1000:1000")),
        "{b:#?}"
    );
    assert!(
        b.iter()
            .any(|l| l.starts_with("etc/removed 20000 0:0 rdev=0")),
        "{b:#?}"
    );
}

#[test]
fn an_unprivileged_trees_owners_travel_as_the_container_sees_them() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    sample(&src);
    let here = IdShift {
        base: 100_000,
        len: 65536,
    };
    // Shifted into one range on the way in...
    let t = packed(&src, "upper", None);
    let shifted = d.path().join("shifted");
    std::fs::create_dir(&shifted).unwrap();
    let mut u = Unpacker::new(&shifted, Path::new("upper"), Some(here), false, LIMITS).unwrap();
    let mut a = tar::Archive::new(t.as_slice());
    for e in a.entries().unwrap() {
        u.take(&mut e.unwrap()).unwrap();
    }
    u.finish().unwrap();
    let m = std::fs::metadata(shifted.join("home/me/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (101_000, 101_000));
    assert_eq!(std::fs::metadata(&shifted).unwrap().uid(), 100_000);
    // ... and back out of it, the same tree as the container saw it.
    let back = packed(&shifted, "", Some(here));
    let dst = d.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    unpack_all(&back, &dst, None).unwrap();
    let m = std::fs::metadata(dst.join("home/me/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    // A host ID outside the range is no ID the container has.
    let e = pack(&mut tar::Builder::new(Vec::new()), &src, "", Some(here)).unwrap_err();
    assert!(
        e.to_string().contains("outside the container's ID range"),
        "{e}"
    );
    // Nor is one past the range, on the way in.
    let small = IdShift {
        base: 100_000,
        len: 500,
    };
    let other = d.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let e = unpack_all(&t, &other, Some(small)).unwrap_err();
    assert!(e.to_string().contains("owner 1000 is outside"), "{e}");
}

/// A raw entry: name, type, link target, content.
type Raw<'a> = (&'a str, tar::EntryType, &'a str, &'a [u8]);

/// A tar of raw entries, names written as they are.
fn hostile(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn hostile_archives_are_refused_and_write_nothing_outside() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "s").unwrap();
    let cases: [(&str, Vec<Raw>, &str); 8] = [
        (
            "dotdot",
            vec![("../outside/x", Regular, "", b"x")],
            "leads out",
        ),
        ("absolute", vec![("/tmp/x", Regular, "", b"x")], "absolute"),
        (
            "through a symlink",
            vec![
                ("esc", Symlink, "../outside", b""),
                ("esc/x", Regular, "", b"x"),
            ],
            "without following a symlink",
        ),
        (
            "hard link out",
            vec![("l", Link, "../outside/secret", b"")],
            "leads out",
        ),
        (
            "hard link to a host file",
            vec![("l", Link, "/etc/passwd", b"")],
            "absolute",
        ),
        (
            "hard link through a symlink",
            vec![
                ("esc", Symlink, "../outside", b""),
                ("l", Link, "esc/secret", b""),
            ],
            "not made before",
        ),
        (
            "twice",
            vec![("a", Regular, "", b"1"), ("./a", Regular, "", b"2")],
            "twice",
        ),
        (
            "a file where a folder was",
            vec![("a", Regular, "", b"1"), ("a/b", Directory, "", b"")],
            "not a folder",
        ),
    ];
    for (what, entries, says) in cases {
        let t = hostile(&entries);
        let root = d.path().join(what.replace(' ', "-"));
        std::fs::create_dir(&root).unwrap();
        let e = unpack_all(&t, &root, None).expect_err(what);
        assert!(e.to_string().contains(says), "{what}: {e}");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "{what} wrote outside"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "s"
        );
    }
    // A device node, and more than the budget.
    let root = d.path().join("dev");
    std::fs::create_dir(&root).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Block);
    h.set_device_major(8).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_size(0);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "sda", std::io::empty()).unwrap();
    let e = unpack_all(&b.into_inner().unwrap(), &root, None).unwrap_err();
    assert!(e.to_string().contains("device node (8:0)"), "{e}");
    let t = hostile(&[("a", Regular, "", &[1u8; 2000])]);
    let root = d.path().join("big");
    std::fs::create_dir(&root).unwrap();
    let mut u = Unpacker::new(
        &root,
        Path::new(""),
        None,
        false,
        Limits {
            bytes: 1000,
            entries: 10,
        },
    )
    .unwrap();
    let mut a = tar::Archive::new(t.as_slice());
    let mut e = a.entries().unwrap().next().unwrap().unwrap();
    let err = u.take(&mut e).unwrap_err();
    assert!(err.to_string().contains("more than 1000 bytes"), "{err}");
}

/// The names under `dir`, recursively, sorted.
fn names(dir: &Path) -> Vec<String> {
    describe(dir)
        .into_iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, at: &Path) {
    std::fs::create_dir_all(work).unwrap();
    std::fs::create_dir_all(at).unwrap();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    rustix::mount::mount(
        "overlay",
        at,
        "overlay",
        rustix::mount::MountFlags::empty(),
        std::ffi::CString::new(data).unwrap().as_c_str(),
    )
    .unwrap();
}

#[test]
fn an_overlay_upper_layer_unpacked_elsewhere_shows_the_same_merged_tree() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s);
    std::fs::create_dir_all(p("lower/a")).unwrap();
    std::fs::create_dir_all(p("lower/d/deep")).unwrap();
    std::fs::write(p("lower/a/x"), "x").unwrap();
    std::fs::write(p("lower/a/keep"), "k").unwrap();
    std::fs::write(p("lower/d/deep/y"), "y").unwrap();
    std::fs::create_dir(p("upper")).unwrap();
    mount_overlay(&p("lower"), &p("upper"), &p("work"), &p("merged"));
    // A deletion (a whiteout) and a folder removed and made again (opaque).
    std::fs::remove_file(p("merged/a/x")).unwrap();
    std::fs::remove_dir_all(p("merged/d")).unwrap();
    std::fs::create_dir(p("merged/d")).unwrap();
    std::fs::write(p("merged/d/z"), "z").unwrap();
    let before = names(&p("merged"));
    rustix::mount::unmount(p("merged"), rustix::mount::UnmountFlags::empty()).unwrap();
    let t = packed(&p("upper"), "upper", None);
    std::fs::create_dir(p("upper2")).unwrap();
    let mut u = Unpacker::new(&p("upper2"), Path::new("upper"), None, false, LIMITS).unwrap();
    for e in tar::Archive::new(t.as_slice()).entries().unwrap() {
        u.take(&mut e.unwrap()).unwrap();
    }
    u.finish().unwrap();
    mount_overlay(&p("lower"), &p("upper2"), &p("work2"), &p("merged2"));
    let after = names(&p("merged2"));
    rustix::mount::unmount(p("merged2"), rustix::mount::UnmountFlags::empty()).unwrap();
    assert_eq!(before, after);
    assert!(after.contains(&"d/z".to_string()) && !after.contains(&"a/x".to_string()));
    assert!(!after.iter().any(|n| n.starts_with("d/deep")), "{after:?}");
}
