//! Running a container from a bundle with `libcontainer` (youki's library): create (the init
//! process exists, in its namespaces and cgroup, waiting), start (it execs the command), wait,
//! delete. Between create and start the caller can act on the waiting process, e.g. write cgroup
//! limits that must hold before the command's first instruction.

use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use rustix::process::{Pid, WaitOptions};
use thiserror::Error;

/// Errors from the runtime.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// libcontainer failed.
    #[error("container {id}: {what}: {source}")]
    Libcontainer {
        /// The container.
        id: String,
        /// What berth asked of it.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// Writing the bundle failed.
    #[error("writing {path}: {source}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Removing libcontainer's state of a container failed.
    #[error("removing libcontainer's state {path}")]
    State {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the container's process failed.
    #[error("waiting for container {id}'s process: {source}")]
    Wait {
        /// The container.
        id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where libcontainer keeps its per-container state.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

/// Where a container's init reads and writes, and whether it is left to run on its own.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Standard input (inherited when `None`).
    pub stdin: Option<std::fs::File>,
    /// Standard output (inherited when `None`).
    pub stdout: Option<std::fs::File>,
    /// Standard error (inherited when `None`).
    pub stderr: Option<std::fs::File>,
}

/// A created container whose init process waits for [`Created::start`].
#[derive(Debug)]
pub struct Created {
    id: String,
    container: Container,
}

impl Runtime {
    /// libcontainer's state lives under `root` (one folder per container).
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    /// Write `spec` as `bundle/config.json` and create the container `id`. Its process is a
    /// child of this one, so [`Created::wait`] can reap it.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        spec: &Spec,
        stdio: Stdio,
    ) -> Result<Created, RuntimeError> {
        let config = bundle.join("config.json");
        let json = serde_json::to_vec_pretty(spec).map_err(|e| RuntimeError::Bundle {
            path: config.clone(),
            source: e.into(),
        })?;
        std::fs::write(&config, json).map_err(|source| RuntimeError::Bundle {
            path: config.clone(),
            source,
        })?;
        std::fs::create_dir_all(&self.root).map_err(|source| RuntimeError::Bundle {
            path: self.root.clone(),
            source,
        })?;
        let lc = |what| {
            move |e: libcontainer::error::LibcontainerError| RuntimeError::Libcontainer {
                id: id.to_string(),
                what,
                source: Box::new(e),
            }
        };
        let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.root)
            .map_err(lc("state folder"))?;
        if let Some(f) = stdio.stdin {
            builder = builder.with_stdin(f);
        }
        if let Some(f) = stdio.stdout {
            builder = builder.with_stdout(f);
        }
        if let Some(f) = stdio.stderr {
            builder = builder.with_stderr(f);
        }
        let container = builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(false)
            .build()
            .map_err(lc("create"))?;
        Ok(Created {
            id: id.to_string(),
            container,
        })
    }

    /// Remove what libcontainer keeps of `id` (its state and cgroup), killing what is left.
    /// Idempotent.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.root.join(id);
        if !dir.exists() {
            return Ok(());
        }
        let mut c = match Container::load(dir.clone()) {
            Ok(c) => c,
            // A create killed while libcontainer wrote its state file leaves one that does not
            // parse (empty, or cut short): libcontainer cannot act on it, and what it described
            // (the init in the container's cgroup) the caller has already ended, so the folder
            // is all that is left.
            Err(e) => {
                tracing::debug!("libcontainer cannot load {id} ({e}); removing its state");
                return remove_state(&dir);
            }
        };
        match c.delete(true) {
            Ok(()) => Ok(()),
            // A container whose create was cut short can have a state that libcontainer cannot
            // delete (its cgroup, which the caller ends and removes itself, already gone): its
            // state is then removed here, which is all that is left of it.
            Err(e) if c.root.exists() => {
                tracing::debug!("libcontainer could not delete {id} ({e}); removing its state");
                remove_state(&c.root)
            }
            Err(_) => Ok(()),
        }
    }
}

/// Remove a container's libcontainer state folder.
fn remove_state(dir: &Path) -> Result<(), RuntimeError> {
    std::fs::remove_dir_all(dir).map_err(|source| RuntimeError::State {
        path: dir.to_path_buf(),
        source,
    })
}

impl Created {
    /// The init process's pid (on the host).
    pub fn pid(&self) -> Option<u32> {
        self.container.pid().map(|p| p.as_raw() as u32)
    }

    /// Let the init process exec the command.
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        self.container
            .start()
            .map_err(|e| RuntimeError::Libcontainer {
                id: self.id.clone(),
                what: "start",
                source: Box::new(e),
            })
    }

    /// Wait for the command to end: its exit status, or 128 + the signal that killed it (as
    /// shells report it).
    pub fn wait(&self) -> Result<i32, RuntimeError> {
        let pid = self.container.pid().map(|p| p.as_raw()).unwrap_or(0);
        wait_pid(&self.id, pid)
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Reap a child: its exit status, or 128 + the signal that ended it (as shells report it).
fn wait_pid(id: &str, raw: i32) -> Result<i32, RuntimeError> {
    wait_status(raw).map_err(|source| RuntimeError::Wait {
        id: id.to_string(),
        source,
    })
}

/// Reap the child `raw`: its exit status, or 128 + the signal that ended it.
pub(crate) fn wait_status(raw: i32) -> Result<i32, std::io::Error> {
    let pid =
        Pid::from_raw(raw).ok_or_else(|| std::io::Error::other("the container has no process"))?;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(code);
                }
                if let Some(sig) = status.terminating_signal() {
                    return Ok(128 + sig);
                }
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A create killed while libcontainer wrote `state.json` leaves it empty or cut short:
    /// delete still removes the folder, so `delete --force` clears the container.
    #[test]
    fn delete_removes_a_state_that_does_not_parse() {
        for state in ["", "{\"oci_version\":\"1.0.2\",\"id\":\"c"] {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("c");
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("state.json"), state).unwrap();
            Runtime::new(root.path()).delete("c").unwrap();
            assert!(!dir.exists(), "state {state:?} left behind");
        }
    }

    #[test]
    fn delete_of_an_unknown_container_is_a_no_op() {
        let root = tempfile::tempdir().unwrap();
        Runtime::new(root.path()).delete("none").unwrap();
    }
}
