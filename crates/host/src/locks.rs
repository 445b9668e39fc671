//! Per-instance locks: every command that changes an instance (create, start, stop, delete,
//! set) holds its name's lock for as long as it works on it, so that two commands, or a command
//! and a daemon request, never change one instance at once, and a VM and a container can never
//! be created under one name. A second command does not wait: it gets a conflict naming the
//! process that holds the lock.
//!
//! The lock is a note in `DATA/locks/NAME`: the holder's pid, its start time and what it does.
//! A note whose process is gone (kill -9 included) or whose pid now belongs to a later process
//! holds nothing. `flock(2)` on the file only makes reading and writing the note atomic, for
//! microseconds: a lock held by `flock` for the whole command would also be held by every
//! process forked from it that has not exec'd yet, such as a container's init waiting to start,
//! and would outlive a killed command. The files stay (removing a lock file races with a
//! process that has just opened it).

use crate::dirs::Dirs;
use berth_api::Error;
use rustix::fs::{flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};

/// A held instance lock; dropping it lets it go.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    note: String,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = flock(&self.file, FlockOperation::LockExclusive);
        let mut now = String::new();
        let _ = self
            .file
            .rewind()
            .and_then(|_| self.file.read_to_string(&mut now));
        if now == self.note {
            let _ = self.file.set_len(0);
        }
        let _ = flock(&self.file, FlockOperation::Unlock);
    }
}

/// Take NAME's lock for `what` ("create", "stop", ...), or fail with a conflict when a live
/// process (this one included, for another request) holds it. NAME must already have passed
/// [`berth_api::check_name`].
pub fn acquire(dirs: &Dirs, name: &str, what: &str) -> Result<InstanceLock, Error> {
    let dir = dirs.root.join("locks");
    let path = dir.join(name);
    let fail = |e: std::io::Error| Error::internal(format!("locking {}: {e}", path.display()));
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).map_err(fail)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(fail)?;
    flock(&file, FlockOperation::LockExclusive).map_err(|e| fail(e.into()))?;
    let mut text = String::new();
    let read = file.read_to_string(&mut text);
    if let Some(h) = Holder::parse(&text).filter(Holder::alive) {
        let _ = flock(&file, FlockOperation::Unlock);
        return Err(Error::conflict(format!(
            "{name} is busy: berth process {} ({}) is working on it; try again when it is done",
            h.pid, h.what
        )));
    }
    let me = std::process::id();
    let note = format!("{me} {} ({what})\n", start_time(me).unwrap_or(0));
    let wrote = read
        .and_then(|_| file.set_len(0))
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(note.as_bytes()));
    let _ = flock(&file, FlockOperation::Unlock);
    wrote.map_err(fail)?;
    Ok(InstanceLock { file, note })
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`'s 22nd field), which
/// tells a live holder from a later process that got its pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Who holds (or last held) a lock, as its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// What it does ("create").
    pub what: String,
    start: u64,
}

impl Holder {
    fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    fn parse(text: &str) -> Option<Holder> {
        let (head, what) = text.trim().split_once(" (")?;
        let (pid, start) = head.split_once(' ')?;
        Some(Holder {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            what: what.strip_suffix(')')?.to_string(),
        })
    }
}

/// The live process that holds NAME's lock, if any, without taking it (taking it, even for a
/// moment, would turn a concurrent command away).
pub fn holder(dirs: &Dirs, name: &str) -> Option<Holder> {
    let mut file = File::open(dirs.root.join("locks").join(name)).ok()?;
    flock(&file, FlockOperation::LockShared).ok()?;
    let mut text = String::new();
    let read = file.read_to_string(&mut text);
    let _ = flock(&file, FlockOperation::Unlock);
    read.ok()?;
    Holder::parse(&text).filter(Holder::alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_gets_a_conflict_naming_the_first_until_it_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            root: d.path().to_path_buf(),
        };
        assert_eq!(holder(&dirs, "web"), None);
        let held = acquire(&dirs, "web", "create").unwrap();
        let e = acquire(&dirs, "web", "delete").unwrap_err();
        assert_eq!(e.kind, berth_api::ErrorKind::Conflict);
        assert!(
            e.message
                .contains(&format!("berth process {} (create)", std::process::id())),
            "{}",
            e.message
        );
        let h = holder(&dirs, "web").unwrap();
        assert_eq!((h.pid, h.what.as_str()), (std::process::id(), "create"));
        // A dead holder's note, or one whose pid now belongs to a later process, is no holder.
        std::fs::write(d.path().join("locks/db"), "4194304 1 (create)\n").unwrap();
        assert_eq!(holder(&dirs, "db"), None);
        let me = std::process::id();
        std::fs::write(d.path().join("locks/db"), format!("{me} 1 (create)\n")).unwrap();
        assert_eq!(holder(&dirs, "db"), None);
        // Other names are not held.
        drop(acquire(&dirs, "db", "create").unwrap());
        drop(held);
        assert_eq!(holder(&dirs, "web"), None, "a lock let go has no holder");
        acquire(&dirs, "web", "delete").unwrap();
    }
}
