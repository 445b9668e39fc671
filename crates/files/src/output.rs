//! Writing a file for a user: under a temporary name beside the target, renamed into place when
//! complete, never over anything but a regular file.
//!
//! The temporary is `.NAME.berth-tmp-PID`, created exclusively and held under an exclusive
//! `flock` for as long as its writer lives. It goes away when the write fails or is dropped,
//! when the process gets SIGINT, SIGTERM or SIGHUP (after [`remove_on_signals`]), and, if the
//! process was killed outright, at the next [`Output::create`] in the same folder: a temporary
//! whose lock nobody holds and whose process is gone is removed then.

use crate::{kind_name, FileError};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporaries this process is writing, for the signal handler.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

const TEMP_MARK: &str = ".berth-tmp-";

/// Check that berth may write `dst`: missing, or (with `force`) an existing regular file. A
/// target that is anything else (a device node, a FIFO, a socket, a folder, a symbolic link to
/// one of those) is refused whatever `force` says.
pub fn check_target(dst: &Path, force: bool, what: &str) -> Result<(), FileError> {
    let link = match std::fs::symlink_metadata(dst) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FileError::io("looking at", dst, e)),
    };
    // A symbolic link is judged by what it leads to; one that leads nowhere is replaced.
    let kind = match std::fs::metadata(dst) {
        Ok(m) => m.file_type(),
        Err(_) if link.file_type().is_symlink() => link.file_type(),
        Err(e) => return Err(FileError::io("looking at", dst, e)),
    };
    if !kind.is_file() && !kind.is_symlink() {
        return Err(FileError::NotRegularOutput {
            path: dst.to_path_buf(),
            what: what.to_string(),
            kind: kind_name(kind),
        });
    }
    if !force {
        return Err(FileError::Exists(dst.to_path_buf()));
    }
    Ok(())
}

/// The temporary sibling of `dst` that this process writes.
pub fn temp_path(dst: &Path) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    dst.with_file_name(format!(".{name}{TEMP_MARK}{}", std::process::id()))
}

/// A file being written under its temporary name.
#[derive(Debug)]
pub struct Output {
    dst: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
}

impl Output {
    /// Start writing `dst` (see [`check_target`] for what may be replaced): sweep the folder's
    /// abandoned temporaries, then create this one with exactly `mode` (`None`: 0666 less the
    /// umask, as any new file).
    pub fn create(
        dst: &Path,
        force: bool,
        mode: Option<u32>,
        what: &str,
    ) -> Result<Output, FileError> {
        check_target(dst, force, what)?;
        let folder = folder_of(dst);
        sweep_stale(&folder);
        let tmp = temp_path(dst);
        // Our own leftover under this pid can only be from this process: replace it.
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o666))
            .open(&tmp)
            .map_err(|e| FileError::io("creating", &tmp, e))?;
        register(&tmp);
        let out = Output {
            dst: dst.to_path_buf(),
            tmp,
            file: Some(file),
        };
        let f = out.file();
        rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| FileError::io("locking", &out.tmp, e.into()))?;
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| FileError::io("setting the mode of", &out.tmp, e))?;
        }
        Ok(out)
    }

    /// The open temporary file.
    pub fn file(&self) -> &std::fs::File {
        self.file.as_ref().expect("open until committed")
    }

    /// The temporary's path (for writers that open by name).
    pub fn temp(&self) -> &Path {
        &self.tmp
    }

    /// The target.
    pub fn target(&self) -> &Path {
        &self.dst
    }

    /// Flush to disk, rename into place and make the rename durable.
    pub fn commit(mut self) -> Result<(), FileError> {
        let file = self.file.take().expect("open until committed");
        file.sync_all()
            .map_err(|e| FileError::io("writing", &self.dst, e))?;
        std::fs::rename(&self.tmp, &self.dst)
            .map_err(|e| FileError::io("renaming into place", &self.dst, e))?;
        unregister(&self.tmp);
        if let Ok(d) = std::fs::File::open(folder_of(&self.dst)) {
            let _ = d.sync_all();
        }
        // Disarmed: the rename consumed the temporary.
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
            unregister(&self.tmp);
        }
    }
}

/// Write `data` to `dst` atomically with exactly `mode`, replacing a regular file there (and
/// nothing else). `what` names it in errors.
pub fn write_atomic(dst: &Path, data: &[u8], mode: u32, what: &str) -> Result<(), FileError> {
    let out = Output::create(dst, true, Some(mode), what)?;
    let mut f = out.file();
    f.write_all(data)
        .map_err(|e| FileError::io("writing", dst, e))?;
    out.commit()
}

/// The folder that holds `path` ("." for a bare name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn register(tmp: &Path) {
    if let Ok(mut p) = PENDING.lock() {
        p.push(tmp.to_path_buf());
    }
}

fn unregister(tmp: &Path) {
    if let Ok(mut p) = PENDING.lock() {
        p.retain(|x| x != tmp);
    }
}

/// Remove every temporary this process is writing (what a signal handler does before the
/// process ends).
pub fn remove_pending() {
    if let Ok(p) = PENDING.lock() {
        for t in p.iter() {
            let _ = std::fs::remove_file(t);
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove this process's temporaries, then end as the signal's
/// default action would (same exit status). For commands that write outputs and have no
/// signal handling of their own.
pub fn remove_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("berth-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                remove_pending();
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

/// Remove the abandoned temporaries in `folder`: those whose writer is gone (no lock held on
/// them, and their process no longer exists). Returns how many were removed.
pub fn sweep_stale(folder: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = temp_pid(&name.to_string_lossy()) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = e.path();
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
        else {
            continue;
        };
        if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
            continue;
        }
        // Held by a writer (one whose pid we cannot see, say): leave it.
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The pid in a temporary's name `.NAME.berth-tmp-PID`.
fn temp_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, pid) = name.rsplit_once(TEMP_MARK)?;
    pid.parse().ok().filter(|&p| p > 0)
}

fn process_alive(pid: u32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(p),
        Err(rustix::io::Errno::SRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_device_nodes_fifos_and_folders_whatever_the_flags() {
        for force in [false, true] {
            let e = check_target(Path::new("/dev/null"), force, "a disk image").unwrap_err();
            assert_eq!(
                e.to_string(),
                "/dev/null is a character device: berth writes a disk image only to a regular \
                 file, and replaces nothing else, whatever the flags"
            );
        }
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("null-link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        assert!(matches!(
            check_target(&link, true, "x"),
            Err(FileError::NotRegularOutput { .. })
        ));
        assert!(matches!(
            check_target(d.path(), true, "x"),
            Err(FileError::NotRegularOutput { .. })
        ));
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(
            check_target(&f, false, "x"),
            Err(FileError::Exists(_))
        ));
        check_target(&f, true, "x").unwrap();
        check_target(&d.path().join("new"), false, "x").unwrap();
    }

    #[test]
    fn output_appears_only_when_committed() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("out");
        let out = Output::create(&dst, false, Some(0o600), "x").unwrap();
        let mut f = out.file();
        f.write_all(b"data").unwrap();
        assert!(!dst.exists());
        assert!(out.temp().exists());
        let tmp = out.temp().to_path_buf();
        out.commit().unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"data");
        assert!(!tmp.exists());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&dst).unwrap().mode() & 0o777, 0o600);
        // Dropped without commit: nothing left.
        let out = Output::create(&d.path().join("other"), false, None, "x").unwrap();
        let tmp = out.temp().to_path_buf();
        drop(out);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn sweep_removes_only_abandoned_temporaries() {
        let d = tempfile::tempdir().unwrap();
        // A dead writer: a process that has exited (its pid is free until reused).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let abandoned = d.path().join(format!(".disk.qcow2{TEMP_MARK}{dead}"));
        std::fs::write(&abandoned, "half").unwrap();
        // A live writer (this process's parent stands for one that holds its lock).
        let live = d.path().join(format!(
            ".disk.qcow2{TEMP_MARK}{}",
            std::os::unix::process::parent_id()
        ));
        std::fs::write(&live, "busy").unwrap();
        // Names that only look similar are not touched.
        let other = d.path().join("disk.qcow2.berth-tmp-1");
        std::fs::write(&other, "mine").unwrap();
        assert_eq!(sweep_stale(d.path()), 1);
        assert!(!abandoned.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn temp_names_carry_the_pid() {
        assert_eq!(temp_pid(".a.qcow2.berth-tmp-123"), Some(123));
        assert_eq!(temp_pid("a.qcow2.berth-tmp-123"), None);
        assert_eq!(temp_pid(".a.berth-tmp-x"), None);
        assert!(temp_path(Path::new("/x/disk.qcow2"))
            .to_string_lossy()
            .starts_with("/x/.disk.qcow2.berth-tmp-"));
    }
}
