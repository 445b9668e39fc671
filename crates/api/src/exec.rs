//! Commands in instances: `exec` (and `shell`, which is an exec of a login shell), `run` (a
//! command in a new application container), and the console log. What a command reads and
//! writes is the caller's: in-process, the CLI's own terminal or pipes; through `berth daemon`,
//! the exec's streams.

use crate::error::Error;
use crate::request::{check_name, Network};
use serde::{Deserialize, Serialize};

/// Run a command in a running instance. An empty `command` is a login shell: in a container,
/// `/bin/bash -l`; in a VM, an SSH session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceExec {
    /// The program and its arguments, not parsed by a shell (a VM's are quoted for its login
    /// shell, which SSH hands them to).
    #[serde(default)]
    pub command: Vec<String>,
    /// Give the command a terminal (a pty in the guest).
    #[serde(default)]
    pub interactive: bool,
}

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecExit {
    /// Its exit status, or 128 + the signal that ended it. For a VM, 255 when SSH itself failed.
    pub code: i32,
    /// Processes in the container that its memory limit's OOM killer ended while it ran.
    #[serde(default)]
    pub oom_kills: u64,
    /// Why the command could not be started in a container (with `code` 127: there is no such
    /// command; 126: it cannot be run), as Podman's exec reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Run a command in a new application container made from `image`, and wait for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRun {
    /// Base image.
    pub image: String,
    /// The container's name; berth picks one (`run-PID-N`) when none is given.
    #[serde(default)]
    pub name: Option<String>,
    /// The command (the image's shell when empty).
    #[serde(default)]
    pub command: Vec<String>,
    /// Limits as `KEY=VALUE`, as [`crate::ContainerCreate::limits`].
    #[serde(default)]
    pub limits: Vec<String>,
    /// Delete the container when the command ends.
    #[serde(default)]
    pub rm: bool,
    /// Network (default: bridge).
    #[serde(default)]
    pub network: Option<Network>,
    /// Size cap of the container's writable layer, in bytes.
    #[serde(default)]
    pub disk: Option<u64>,
    /// In a user namespace of its own.
    #[serde(default)]
    pub unprivileged: bool,
}

impl InstanceRun {
    /// Checks that need no system: the name and the image name (the disk cap is checked against
    /// the sizes the container's disk can have, with the run).
    pub fn check(&self) -> Result<(), Error> {
        if let Some(n) = &self.name {
            check_name(n)?;
        }
        if self.image.is_empty() {
            return Err(Error::invalid("image", "no image named"));
        }
        Ok(())
    }
}

/// A piece of an instance's console log, from `offset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogChunk {
    /// The bytes from the asked offset (at most the asked length).
    pub data: Vec<u8>,
    /// Where the next read goes on; as the asked offset when nothing new was there.
    pub next_offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_is_a_command_and_a_terminal_wish_only() {
        let r: InstanceExec = serde_json::from_str(r#"{"command":["uname","-r"]}"#).unwrap();
        assert_eq!(r.command, ["uname", "-r"]);
        assert!(!r.interactive);
        let e = serde_json::from_str::<InstanceExec>(r#"{"command":[],"cwd":"/"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `cwd`"), "{e}");
    }

    #[test]
    fn a_run_is_checked_without_the_system() {
        let run = |j: &str| serde_json::from_str::<InstanceRun>(j).unwrap();
        assert_eq!(run(r#"{"image":"debian-12","rm":true}"#).check(), Ok(()));
        let field = |j: &str| run(j).check().unwrap_err().field.unwrap();
        assert_eq!(field(r#"{"image":"debian-12","name":"../x"}"#), "name");
        assert_eq!(field(r#"{"image":""}"#), "image");
    }
}
