//! Container root filesystems: an image's tree, extracted once and shared read-only, under a
//! per-container overlayfs upper layer (copy-on-write: a new container costs only what it writes).
//!
//! The tree is extracted from the image's ext4 filesystem by the kernel itself (a read-only loop
//! mount and `cp -a`), so ownership, modes, device nodes, hard links and file capabilities
//! (`security.capability` xattrs) come out exactly as the image holds them.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::mount::{MountFlags, UnmountFlags};
use thiserror::Error;

/// Errors from preparing or removing root filesystems.
#[derive(Debug, Error)]
pub enum RootfsError {
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What berth was doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper program failed.
    #[error("{program} failed ({status}): {stderr}")]
    Helper {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn run(cmd: &mut Command) -> Result<(), RootfsError> {
    let out = cmd.output().map_err(|source| RootfsError::Io {
        what: "running",
        path: PathBuf::from(cmd.get_program()),
        source,
    })?;
    if !out.status.success() {
        return Err(RootfsError::Helper {
            program: cmd.get_program().to_string_lossy().into_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Build the directory `dest` (which must not exist) under a temporary sibling with `make`,
/// then rename it into place; on error the sibling is removed, so nothing half-made is ever
/// seen under `dest`. When another process built the same `dest` meanwhile (two containers
/// started at once from an image never used before), its copy is kept and this one dropped.
fn build_into(
    dest: &Path,
    make: impl FnOnce(&Path) -> Result<(), RootfsError>,
) -> Result<(), RootfsError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    match make(&tmp) {
        Ok(()) => match std::fs::rename(&tmp, dest) {
            Err(e)
                if dest.is_dir()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::DirectoryNotEmpty
                    ) =>
            {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            r => r.map_err(io("renaming into place", dest)),
        },
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Make an ext4 filesystem labelled `label` on the image file `image`.
pub fn make_ext4(image: &Path, label: &str) -> Result<(), RootfsError> {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label])
        .arg(image))
}

/// Mount the ext4 filesystem in the image file `image` at `at` through a loop device, with
/// extra mount `options` (e.g. `ro,noload`).
pub fn mount_ext4_loop(image: &Path, at: &Path, options: &str) -> Result<(), RootfsError> {
    let opts = if options.is_empty() {
        "loop".to_string()
    } else {
        format!("loop,{options}")
    };
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", &opts])
        .arg(image)
        .arg(at))
}

/// Copy the filesystem of the raw ext4 image `raw` into the new directory `dest` (which must not
/// exist), built under a temporary sibling (see [`build_into`]).
pub fn extract_tree(raw: &Path, dest: &Path) -> Result<(), RootfsError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let mnt = parent.join(format!(".mnt-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).map_err(io("creating", &mnt))?;
    let result = build_into(dest, |tmp| {
        std::fs::create_dir_all(tmp).map_err(io("creating", tmp))?;
        mount_ext4_loop(raw, &mnt, "ro,noload")?;
        let copied = run(Command::new("cp")
            .arg("-a")
            .arg("--one-file-system")
            .arg(format!("{}/.", mnt.display()))
            .arg(tmp));
        let unmounted = unmount(&mnt);
        copied?;
        unmounted
    });
    let _ = std::fs::remove_dir(&mnt);
    result
}

/// Shift the ownership of everything under `dir` owned by an ID below `range` up by `base`
/// (lchown, never following symlinks), for a user namespace that maps 0 inside to `base`
/// outside. chown clears set-user-ID and set-group-ID bits, so they are put back. Entries
/// already at or above `range` are left alone, so shifting twice changes nothing.
pub fn shift_tree(dir: &Path, base: u32, range: u32) -> Result<(), RootfsError> {
    use rustix::fs::{AtFlags, Gid, Mode, Uid, CWD};
    let meta = std::fs::symlink_metadata(dir).map_err(io("reading", dir))?;
    shift_one(dir, &meta, base, range)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io("reading", &d))? {
            let entry = entry.map_err(io("reading", &d))?;
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
            shift_one(&path, &m, base, range)?;
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    return Ok(());

    fn shift_one(
        path: &Path,
        m: &std::fs::Metadata,
        base: u32,
        range: u32,
    ) -> Result<(), RootfsError> {
        use std::os::unix::fs::MetadataExt;
        let (uid, gid) = (m.uid(), m.gid());
        if uid >= range && gid >= range {
            return Ok(());
        }
        let nu = if uid < range { uid + base } else { uid };
        let ng = if gid < range { gid + base } else { gid };
        rustix::fs::chownat(
            CWD,
            path,
            Some(Uid::from_raw(nu)),
            Some(Gid::from_raw(ng)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io("changing the owner of", path)(e.into()))?;
        let special = m.mode() & 0o6000;
        if special != 0 && !m.file_type().is_symlink() {
            rustix::fs::chmodat(
                CWD,
                path,
                Mode::from_raw_mode(m.mode() & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| io("restoring the mode of", path)(e.into()))?;
        }
        Ok(())
    }
}

/// A copy of `tree` at `dest` (which must not exist) shifted for a user namespace based at
/// `base` (see [`shift_tree`]); built under a temporary sibling (see [`build_into`]).
pub fn shifted_copy(tree: &Path, dest: &Path, base: u32, range: u32) -> Result<(), RootfsError> {
    build_into(dest, |tmp| {
        run(Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(tree)
            .arg(tmp))?;
        shift_tree(tmp, base, range)
    })
}

/// The directories of one container's copy-on-write root.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// The shared, read-only image tree.
    pub lower: PathBuf,
    /// The container's own changes.
    pub upper: PathBuf,
    /// overlayfs' work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the merged root appears.
    pub merged: PathBuf,
}

impl Overlay {
    /// The layout under a container's directory: `upper/`, `work/` and `rootfs/`.
    pub fn under(dir: &Path, lower: &Path) -> Overlay {
        Overlay {
            lower: lower.to_path_buf(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("rootfs"),
        }
    }

    /// overlayfs' mount options.
    pub fn options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }

    /// Whether the merged root is mounted now.
    pub fn is_mounted(&self) -> bool {
        is_mount_point(&self.merged)
    }

    /// Create the directories and mount the merged root (idempotent).
    pub fn mount(&self) -> Result<(), RootfsError> {
        self.mount_with(false)
    }

    /// Mount a root that is thrown away after one use (`berth run --rm`): overlayfs' `volatile`
    /// mode skips syncing the upper layer, at unmount too, which costs a millisecond.
    pub fn mount_throwaway(&self) -> Result<(), RootfsError> {
        self.mount_with(true)
    }

    fn mount_with(&self, volatile: bool) -> Result<(), RootfsError> {
        for d in [&self.upper, &self.work, &self.merged] {
            std::fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        if self.is_mounted() {
            return Ok(());
        }
        let mut options = self.options();
        if volatile {
            options.push_str(",volatile");
        }
        let data = CString::new(options).map_err(|_| RootfsError::Io {
            what: "mounting",
            path: self.merged.clone(),
            source: std::io::Error::other("a path contains a NUL byte"),
        })?;
        rustix::mount::mount(
            "overlay",
            &self.merged,
            "overlay",
            MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| RootfsError::Io {
            what: "mounting overlayfs on",
            path: self.merged.clone(),
            source: e.into(),
        })
    }

    /// Unmount the merged root if it is mounted.
    pub fn unmount(&self) -> Result<(), RootfsError> {
        if self.is_mounted() {
            unmount(&self.merged)?;
        }
        Ok(())
    }
}

fn unmount(path: &Path) -> Result<(), RootfsError> {
    rustix::mount::unmount(path, UnmountFlags::empty()).map_err(|e| RootfsError::Io {
        what: "unmounting",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// The device (major, minor) of the filesystem mounted at `path`, if one is, from
/// `/proc/self/mountinfo` (which escapes spaces in mount points as `\040`).
pub fn mount_device(path: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy().replace(' ', "\\040");
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) != Some(&want.as_str()) {
            return None;
        }
        let (a, b) = f.get(2)?.split_once(':')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    })
}

/// Whether `path` is a mount point: statx's `STATX_ATTR_MOUNT_ROOT` where the kernel reports
/// it (5.8 and later; one call), else a look in `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags, CWD};
    match rustix::fs::statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Err(_) => false,
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Ok(_) => mount_device(path).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_moves_low_ids_up_once_and_keeps_setuid() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tree");
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(d.join("su"), "").unwrap();
        std::fs::set_permissions(d.join("su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        let owner = |p: &str| {
            let m = std::fs::symlink_metadata(d.join(p)).unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        let before = owner("etc/passwd").0;
        if before != 0 {
            return; // needs root to chown
        }
        shift_tree(&d, 100_000, 65_536).unwrap();
        assert_eq!(owner("etc/passwd").0, 100_000);
        assert_eq!(owner("link").0, 100_000);
        assert_eq!(owner("su"), (100_000, 100_000, 0o4755));
        // The symlink's target (outside the tree) was not touched.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
        shift_tree(&d, 100_000, 65_536).unwrap();
        assert_eq!(owner("etc/passwd").0, 100_000);
    }

    #[test]
    fn overlay_layout_and_options() {
        let o = Overlay::under(Path::new("/d/c"), Path::new("/img/rootfs"));
        assert_eq!(o.merged, Path::new("/d/c/rootfs"));
        assert_eq!(
            o.options(),
            "lowerdir=/img/rootfs,upperdir=/d/c/upper,workdir=/d/c/work"
        );
        assert!(!o.is_mounted());
        assert!(is_mount_point(Path::new("/")));
    }
}
