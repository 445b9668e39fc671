//! Mount helpers the child uses while it builds its root: making mount points beneath the
//! root without following links out, and read-only trees (mount_setattr).

use super::*;

/// Create what `target` (under `root`) needs: missing directories, and the last component as a
/// file for [`Make::File`]. A component that is a symbolic link is refused: what an image holds
/// must not lead a mount out of the container's root.
///
/// `seen` holds the directories already found to be no link, in earlier calls while the same
/// root was built (`/sys/fs/cgroup` is the way to seven targets): mounts made since then only
/// ever put a filesystem's root, never a link, where such a directory was.
pub(super) fn make_within(
    root: &Path,
    target: &Path,
    make: Make,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<(), String> {
    let rel = target
        .strip_prefix(root)
        .map_err(|_| format!("{} is outside the container's root", target.display()))?;
    let n = rel.components().count();
    let mut p = root.to_path_buf();
    for (i, c) in rel.components().enumerate() {
        p.push(c);
        if i + 1 < n && seen.contains(&p) {
            continue;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link in the image; berth does not mount over one",
                    p.display()
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let made = if i + 1 == n && make == Make::File {
                    std::fs::File::create_new(&p).map(drop)
                } else {
                    std::fs::create_dir(&p)
                };
                made.map_err(|e| format!("creating {}: {e}", p.display()))?;
            }
            Err(e) => return Err(format!("looking at {}: {e}", p.display())),
        }
        if i + 1 < n {
            seen.insert(p.clone());
        }
    }
    Ok(())
}

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
pub(super) struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Everything mounted at and below `target`: read-only, nosuid, nodev, noexec.
#[allow(unsafe_code)]
pub(super) fn read_only_tree(target: &CStr) -> Result<(), rustix::io::Errno> {
    const RDONLY: u64 = 0x1;
    const NOSUID: u64 = 0x2;
    const NODEV: u64 = 0x4;
    const NOEXEC: u64 = 0x8;
    const AT_RECURSIVE: u64 = 0x8000;
    let attr = MountAttr {
        attr_set: RDONLY | NOSUID | NODEV | NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `target` is a NUL-terminated path and `attr` a mount_attr of the size passed;
    // both outlive the call, which only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(
            rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
                .unwrap_or(rustix::io::Errno::INVAL),
        );
    }
    Ok(())
}
