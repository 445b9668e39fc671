//! The executor's requests that run commands and reach consoles: `exec` (and `shell`), `run`,
//! the console log and the console itself. In this process the command's standard input,
//! output and error are this process's own (the CLI's terminal or pipes).

use super::Executor;
use crate::containers::RunOptions;
use crate::locks;
use crate::requests;
use berth_api::{Error, ExecExit, InstanceExec, InstanceRun, LogChunk};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// At most this much of a console log per [`Executor::console_log`] answer.
pub const LOG_CHUNK_MAX: u64 = 1 << 20;

/// A word as the guest's login shell reads it back as that one word (SSH hands the command line
/// to it as one string).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Executor {
    /// Run a command in a running instance and wait for it: in a container through berth's
    /// runtime (the container's namespaces, cgroup, credentials and seccomp filter), in a VM
    /// over SSH as the guest's `berth` user. No lock is held while it runs, so that a long
    /// shell does not keep `stop` away.
    pub fn exec(&self, name: &str, r: &InstanceExec) -> Result<ExecExit, Error> {
        let ty = self.type_of(name)?;
        self.made(name)?;
        self.driver(ty).exec(name, r)
    }

    /// Run a command in a new application container and wait for it. The name is held
    /// ([`locks`]) until the container's row exists, so that a create racing it gets a
    /// conflict; with `rm` nothing of the container is left afterwards.
    pub fn run(&self, r: &InstanceRun) -> Result<ExecExit, Error> {
        r.check()?;
        let name = match &r.name {
            Some(n) => n.clone(),
            None => format!("run-{}-{}", std::process::id(), super::unix_now() % 100_000),
        };
        let lock = locks::acquire(&self.dirs, &name, "run")?;
        if self
            .store
            .instance(&name)
            .map_err(super::state_error)?
            .is_some()
        {
            return Err(Error::conflict(format!(
                "an instance named {name:?} already exists"
            )));
        }
        let o = RunOptions {
            image: r.image.clone(),
            name,
            args: r.command.clone(),
            limits: requests::limits(&r.limits, "limits")?,
            rm: r.rm,
            network: r
                .network
                .map_or_else(|| "none".to_string(), |n| n.to_string()),
            disk: r.disk,
            unprivileged: r.unprivileged,
        };
        crate::drivers::container_exit(self.containers.run(&o, lock))
    }

    /// Up to `max` bytes (at most [`LOG_CHUNK_MAX`]) of an instance's console log from
    /// `offset`. A log that is shorter than `offset` (it was started afresh) is read from its
    /// start.
    pub fn console_log(&self, name: &str, offset: u64, max: u64) -> Result<LogChunk, Error> {
        let path = self.driver(self.type_of(name)?).console_log(name)?;
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Not written yet: the instance has not started.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LogChunk {
                    data: Vec::new(),
                    next_offset: 0,
                })
            }
            Err(e) => return Err(Error::internal(format!("opening {}: {e}", path.display()))),
        };
        let failed =
            |e: std::io::Error| Error::internal(format!("reading {}: {e}", path.display()));
        let len = f.metadata().map_err(failed)?.len();
        let from = if offset > len { 0 } else { offset };
        f.seek(SeekFrom::Start(from)).map_err(failed)?;
        let mut data = Vec::new();
        f.take(max.min(LOG_CHUNK_MAX))
            .read_to_end(&mut data)
            .map_err(failed)?;
        Ok(LogChunk {
            next_offset: from + data.len() as u64,
            data,
        })
    }

    /// A connection to a running instance's console (a VM's serial port, a system container's
    /// /dev/console).
    pub fn console(&self, name: &str) -> Result<UnixStream, Error> {
        let path = self.driver(self.type_of(name)?).console_socket(name)?;
        // A container's relay may take a moment to listen after a start.
        for _ in 0..50 {
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        UnixStream::connect(&path).map_err(|e| {
            Error::conflict(format!(
                "{name} is not running (no console at {}: {e})",
                path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_reach_the_guest_as_the_same_words() {
        assert_eq!(shell_quote("uname"), "uname");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
    }
}
