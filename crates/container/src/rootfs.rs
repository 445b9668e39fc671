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

/// Copy the filesystem of the raw ext4 image `raw` into the new directory `dest` (which must not
/// exist). Built under a temporary sibling and renamed into place, so an interrupted extraction
/// leaves no half tree under `dest`.
pub fn extract_tree(raw: &Path, dest: &Path) -> Result<(), RootfsError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mnt = parent.join(format!(".mnt-{}", std::process::id()));
    for d in [&tmp, &mnt] {
        std::fs::create_dir_all(d).map_err(io("creating", d))?;
    }
    let result = (|| {
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro,noload"])
            .arg(raw)
            .arg(&mnt))?;
        let copied = run(Command::new("cp")
            .arg("-a")
            .arg("--one-file-system")
            .arg(format!("{}/.", mnt.display()))
            .arg(&tmp));
        let unmounted = unmount(&mnt);
        copied?;
        unmounted
    })();
    let _ = std::fs::remove_dir(&mnt);
    match result {
        Ok(()) => std::fs::rename(&tmp, dest).map_err(io("renaming into place", dest)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
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
        for d in [&self.upper, &self.work, &self.merged] {
            std::fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        if self.is_mounted() {
            return Ok(());
        }
        let data = CString::new(self.options()).map_err(|_| RootfsError::Io {
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

/// Whether `path` is a mount point, from `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == want)
}

#[cfg(test)]
mod tests {
    use super::*;

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
