//! Tar entries into a tree beneath a root, and nowhere else (see the crate's docs).

use crate::{io, xattr_travels, IdShift, TreeError, Xattrs};
use pathrs::flags::{OpenFlags, ResolverFlags};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timestamps, Uid, XattrFlags};
use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// How much an archive may put into a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file content, all files together.
    pub bytes: u64,
    /// Entries.
    pub entries: u64,
}

/// Takes entries beneath a root (see the crate's docs). Folders' mtimes are set by
/// [`Unpacker::finish`], after everything inside them is made.
#[derive(Debug)]
pub struct Unpacker {
    root: pathrs::Root,
    /// What each name in the archive begins with (`upper/`): the root's own name.
    prefix: PathBuf,
    /// The root itself, open, for its own metadata.
    top: File,
    shift: Option<IdShift>,
    devices: bool,
    limits: Limits,
    bytes: u64,
    entries: u64,
    seen: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, u64)>,
}

/// What an entry's inode gets.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
    xattrs: Xattrs,
}

impl Unpacker {
    /// Unpack beneath `root`, an existing folder, the entries named `prefix` (the root
    /// itself, a folder) and `prefix/...` (`prefix` may be empty). With `shift`, owners are shifted into this
    /// host's range (an owner outside the range is refused). Device nodes other than
    /// overlayfs' whiteouts (0/0 character devices) are refused unless `devices`.
    pub fn new(
        root: &Path,
        prefix: &Path,
        shift: Option<IdShift>,
        devices: bool,
        limits: Limits,
    ) -> Result<Unpacker, TreeError> {
        let top = File::open(root).map_err(io("opening", root))?;
        let root = pathrs::Root::open(root)
            .map_err(|e| io("opening", root)(std::io::Error::other(e.to_string())))?
            .with_resolver_flags(ResolverFlags::NO_SYMLINKS);
        Ok(Unpacker {
            root,
            prefix: clean(prefix).map_err(TreeError::Invalid)?,
            top,
            shift,
            devices,
            limits,
            bytes: 0,
            entries: 0,
            seen: HashSet::new(),
            dirs: Vec::new(),
        })
    }

    /// Take entry `e`: a name beneath the prefix, or an error naming it.
    pub fn take<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), TreeError> {
        let member = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let member = member.as_str();
        let bad = |m: String| TreeError::Invalid(format!("{member}: {m}"));
        let name = e
            .path()
            .map_err(|x| bad(format!("unreadable name: {x}")))?
            .into_owned();
        self.entries += 1;
        if self.entries > self.limits.entries {
            return Err(bad(format!(
                "the archive holds more than {} entries",
                self.limits.entries
            )));
        }
        let rel = self.beneath(&name).map_err(bad)?;
        if !self.seen.insert(rel.clone()) {
            return Err(bad("the archive holds this name twice".into()));
        }
        let h = e.header();
        let id = |v: std::io::Result<u64>, what: &str| -> Result<u32, TreeError> {
            let v = v.map_err(|e| bad(format!("unreadable {what}: {e}")))?;
            u32::try_from(v).map_err(|_| bad(format!("{what} {v} is out of range")))
        };
        let (mut uid, mut gid) = (id(h.uid(), "owner")?, id(h.gid(), "group")?);
        if let Some(s) = &self.shift {
            let shown = || member.to_string();
            uid = s.outside(uid, &shown)?;
            gid = s.outside(gid, &shown)?;
        }
        let meta = Meta {
            uid,
            gid,
            mode: h.mode().map_err(|e| bad(format!("unreadable mode: {e}")))? & 0o7777,
            mtime: h
                .mtime()
                .map_err(|e| bad(format!("unreadable mtime: {e}")))?,
            xattrs: xattrs_of(e).map_err(bad)?,
        };
        let kind = e.header().entry_type();
        if rel.as_os_str().is_empty() {
            if !kind.is_dir() {
                return Err(bad("the tree's root must be a folder".into()));
            }
            apply_fd(self.top.as_fd(), &meta, member)?;
            self.dirs.push((rel, meta.mtime));
            return Ok(());
        }
        let file_name = rel.file_name().expect("a clean path has a last name");
        let parent = self.parent(&rel, member)?;
        let pfd = parent.as_fd();
        let made = |e: rustix::io::Errno| io("making", member)(e.into());
        match kind {
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(pfd, file_name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(made(e)),
                }
                let fd = rustix::fs::openat(
                    pfd,
                    file_name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| match e {
                    rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => {
                        bad("a folder where the archive made something else".into())
                    }
                    e => made(e),
                })?;
                apply_fd(fd.as_fd(), &meta, member)?;
                self.dirs.push((rel, meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = e.size();
                self.bytes = self.bytes.saturating_add(size);
                if self.bytes > self.limits.bytes {
                    return Err(bad(format!(
                        "the archive's files hold more than {} bytes",
                        self.limits.bytes
                    )));
                }
                let fd = rustix::fs::openat(
                    pfd,
                    file_name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(made)?;
                let mut file = File::from(fd);
                let copied = std::io::copy(e, &mut file).map_err(io("writing", member))?;
                if copied != size {
                    return Err(bad(format!("cut short ({copied} of {size} bytes)")));
                }
                apply_fd(file.as_fd(), &meta, member)?;
                let t = times(meta.mtime);
                rustix::fs::futimens(&file, &t)
                    .map_err(|e| io("setting the mtime of", member)(e.into()))?;
            }
            tar::EntryType::Link => {
                let target = link_target(e).map_err(bad)?;
                let to = self
                    .beneath(&target)
                    .map_err(|m| bad(format!("a hard link {m}")))?;
                if !self.seen.contains(&to) || to == rel {
                    return Err(bad(format!(
                        "a hard link to {}, which the archive has not made before it",
                        target.display()
                    )));
                }
                let handle = self
                    .root
                    .resolve_nofollow(&to)
                    .map_err(|x| bad(format!("a hard link to {}: {x}", target.display())))?;
                rustix::fs::linkat(handle.as_fd(), "", pfd, file_name, AtFlags::EMPTY_PATH)
                    .map_err(|x| match x {
                        rustix::io::Errno::PERM => {
                            bad(format!("a hard link to the folder {}", target.display()))
                        }
                        x => made(x),
                    })?;
            }
            tar::EntryType::Symlink => {
                let target = link_target(e).map_err(bad)?;
                rustix::fs::symlinkat(&target, pfd, file_name).map_err(made)?;
                self.apply_at(pfd, file_name.as_bytes(), &meta, true, member)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let num = |v: std::io::Result<Option<u32>>| {
                    v.map_err(|e| bad(format!("unreadable device number: {e}")))
                        .map(|v| v.unwrap_or(0))
                };
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let (maj, min) = if ft == FileType::Fifo {
                    (0, 0)
                } else {
                    (num(h_dev_major(e))?, num(h_dev_minor(e))?)
                };
                let whiteout = kind == tar::EntryType::Char && maj == 0 && min == 0;
                if ft != FileType::Fifo && !whiteout && !self.devices {
                    return Err(bad(format!(
                        "a device node ({maj}:{min}), which this tree may not hold"
                    )));
                }
                let dev = if ft == FileType::Fifo {
                    0
                } else {
                    rustix::fs::makedev(maj, min)
                };
                rustix::fs::mknodat(pfd, file_name, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(made)?;
                self.apply_at(pfd, file_name.as_bytes(), &meta, false, member)?;
            }
            other => {
                return Err(bad(format!(
                    "an entry of a kind berth does not take ({other:?})"
                )))
            }
        }
        Ok(())
    }

    /// Set the folders' mtimes, now that nothing more is made in them.
    pub fn finish(self) -> Result<(), TreeError> {
        for (rel, mtime) in self.dirs.iter().rev() {
            let t = times(*mtime);
            let shown = rel.display().to_string();
            if rel.as_os_str().is_empty() {
                rustix::fs::futimens(&self.top, &t)
                    .map_err(|e| io("setting the mtime of", &shown)(e.into()))?;
                continue;
            }
            let dir = self
                .root
                .resolve_nofollow(rel)
                .and_then(|h| h.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY))
                .map_err(|e| io("opening", &shown)(std::io::Error::other(e.to_string())))?;
            rustix::fs::futimens(&dir, &t)
                .map_err(|e| io("setting the mtime of", &shown)(e.into()))?;
        }
        Ok(())
    }

    /// Archive name `name` as a path beneath the root.
    fn beneath(&self, name: &Path) -> Result<PathBuf, String> {
        let c = clean(name)?;
        c.strip_prefix(&self.prefix)
            .map(Path::to_path_buf)
            .map_err(|_| format!("{} is not in {}", name.display(), self.prefix.display()))
    }

    /// The folder that holds `rel`, made (0755) if the archive did not make it first, reached
    /// from the root with no symlink followed.
    fn parent(&self, rel: &Path, member: &str) -> Result<pathrs::Handle, TreeError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let got = if parent.as_os_str().is_empty() {
            self.root
                .try_clone()
                .map(|r| pathrs::Handle::from(std::os::fd::OwnedFd::from(r)))
        } else {
            self.root
                .mkdir_all(parent, &std::fs::Permissions::from_mode(0o755))
        };
        got.map_err(|e| {
            TreeError::Invalid(format!(
                "{member}: its folder {} cannot be reached beneath the tree's root without \
                 following a symlink, or is not a folder ({e})",
                parent.display()
            ))
        })
    }

    /// Owner, mode, xattrs and mtime of `name` in the folder `dir`, an inode just made there
    /// that is not a regular file or folder (so not opened: a device is not opened, a symlink
    /// cannot be).
    fn apply_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        m: &Meta,
        symlink: bool,
        member: &str,
    ) -> Result<(), TreeError> {
        let name = std::ffi::OsStr::from_bytes(name);
        let set = |what: &'static str| move |e: rustix::io::Errno| io(what, member)(e.into());
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(m.uid)),
            Some(Gid::from_raw(m.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(set("setting the owner of"))?;
        if !symlink {
            // After the owner, which clears setuid and setgid.
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(m.mode), AtFlags::empty())
                .map_err(set("setting the mode of"))?;
        }
        // The inode's own name through the folder's descriptor: the last name is not followed.
        let path = Path::new("/proc/self/fd")
            .join(dir.as_raw_fd().to_string())
            .join(name);
        for (k, v) in &m.xattrs {
            rustix::fs::lsetxattr(&path, k.as_slice(), v, XattrFlags::empty())
                .map_err(set("setting an xattr of"))?;
        }
        rustix::fs::utimensat(dir, name, &times(m.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(set("setting the mtime of"))
    }
}

/// Owner, mode and xattrs of an open file or folder (owner first: it clears setuid).
fn apply_fd(fd: BorrowedFd<'_>, m: &Meta, member: &str) -> Result<(), TreeError> {
    let set = |what: &'static str| move |e: rustix::io::Errno| io(what, member)(e.into());
    rustix::fs::fchown(fd, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
        .map_err(set("setting the owner of"))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode)).map_err(set("setting the mode of"))?;
    for (k, v) in &m.xattrs {
        rustix::fs::fsetxattr(fd, k.as_slice(), v, XattrFlags::empty())
            .map_err(set("setting an xattr of"))?;
    }
    Ok(())
}

fn times(mtime: u64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// `name` as a path beneath a root: only plain names (and `.`), never `..` or an absolute one.
fn clean(name: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("{} leads out of the tree (..)", name.display()))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{} is an absolute name", name.display()))
            }
        }
    }
    Ok(out)
}

fn link_target<R: Read>(e: &tar::Entry<'_, R>) -> Result<PathBuf, String> {
    e.link_name()
        .map_err(|e| format!("unreadable link name: {e}"))?
        .map(|p| p.into_owned())
        .ok_or_else(|| "a link without a target".to_string())
}

fn h_dev_major<R: Read>(e: &tar::Entry<'_, R>) -> std::io::Result<Option<u32>> {
    e.header().device_major()
}

fn h_dev_minor<R: Read>(e: &tar::Entry<'_, R>) -> std::io::Result<Option<u32>> {
    e.header().device_minor()
}

/// The xattrs an entry's PAX header carries (`SCHILY.xattr.NAME`), those that travel.
fn xattrs_of<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Xattrs, String> {
    let Some(exts) = e
        .pax_extensions()
        .map_err(|e| format!("unreadable PAX header: {e}"))?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for x in exts {
        let x = x.map_err(|e| format!("unreadable PAX header: {e}"))?;
        let Some(name) = x.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if name.is_empty() || name.contains(&0) {
            return Err("an xattr without a name".into());
        }
        if xattr_travels(name) {
            out.push((name.to_vec(), x.value_bytes().to_vec()));
        }
    }
    Ok(out)
}
