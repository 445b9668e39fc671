//! berth's exit statuses, one scheme for every command (the README's table), and how an error
//! is printed.
//!
//! - 0: done.
//! - 1: a command that answers a question answered "no" (`disk compare`: the images differ,
//!   `seed validate` and `machine-id validate`: invalid, `machine-id audit`: duplicates found);
//!   `disk check` uses qemu-img's 1, 2 and 3.
//! - 2: the command line is wrong: an unknown command or flag, a missing argument, a value that
//!   does not parse (clap's own status).
//! - 125: berth could not do what was asked, in any command: no such instance or image, a value
//!   refused, a file that cannot be read or written. The message says which.
//! - 126: the command to run in a container exists but cannot be run.
//! - 127: the command to run in a container does not exist.
//! - anything else from `run`, `exec`, `shell` and `ssh`: the command's own status; 128 + N
//!   when signal N ended it. In a VM, the guest's shell gives 126 and 127 itself.

use crate::Status;
use berth_api::ExecExit;
use berth_container::direct::DirectError;
use berth_host::containers::ContainerError;
use std::io::Write as _;

/// berth itself failed (as Podman's and Docker's 125).
pub const FAILED: u8 = 125;
/// The command exists in the container but cannot be run.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command does not exist in the container.
pub const NOT_FOUND: u8 = 127;

/// The status for a failed command: 126 or 127 when the command in a container could not be
/// run, 125 for everything else.
pub fn for_error(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        let direct = cause.downcast_ref::<DirectError>().or_else(|| {
            match cause.downcast_ref::<ContainerError>() {
                Some(ContainerError::Direct(d)) => Some(d),
                _ => None,
            }
        });
        match direct {
            Some(DirectError::CommandNotFound(_)) => return NOT_FOUND,
            Some(DirectError::CommandNotExecutable(_)) => return NOT_EXECUTABLE,
            _ => {}
        }
    }
    FAILED
}

/// The error and its causes on one line, each cause once: many errors (ours and other crates')
/// already end with their cause's text, which the plain chain would repeat.
pub fn message(e: &anyhow::Error) -> String {
    berth_api::error::chain_message(e.as_ref())
}

/// A command's status, after saying on stderr why it could not be started, or that the
/// container's memory limit killed any of its processes (`limit` as the user gave it, if known).
pub fn for_command(exit: ExecExit, limit: Option<&str>) -> Status {
    if let Some(why) = &exit.error {
        let _ = writeln!(std::io::stderr(), "berth: error: {why}");
    }
    if exit.oom_kills > 0 {
        let limit = limit
            .map(|l| format!(" (--memory {l})"))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "berth: the container's memory limit{limit} was reached: the kernel's OOM killer \
             ended {} process{} of the command",
            exit.oom_kills,
            if exit.oom_kills == 1 { "" } else { "es" }
        );
    }
    Status(exit.code.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_its_parent_is_printed_once() {
        let busy = std::io::Error::from_raw_os_error(16);
        let e = anyhow::Error::new(ContainerError::Cgroup(berth_cgroups::CgroupError::Io {
            what: "removing",
            path: "/sys/fs/cgroup/memory/berth/x".into(),
            source: busy,
        }));
        let m = message(&e);
        assert_eq!(m.matches("os error 16").count(), 1, "{m}");
        assert!(
            m.starts_with("removing /sys/fs/cgroup/memory/berth/x"),
            "{m}"
        );
        // A cause that adds something is kept.
        let e = anyhow::anyhow!("disk full").context("writing x");
        assert_eq!(message(&e), "writing x: disk full");
    }

    #[test]
    fn a_command_that_cannot_be_run_is_126_or_127() {
        let e = |d| anyhow::Error::new(ContainerError::Direct(d));
        assert_eq!(
            for_error(&e(DirectError::CommandNotFound("x".into()))),
            NOT_FOUND
        );
        assert_eq!(
            for_error(&e(DirectError::CommandNotExecutable("x".into())).context("exec")),
            NOT_EXECUTABLE
        );
        assert_eq!(for_error(&e(DirectError::Child("mount".into()))), FAILED);
        assert_eq!(
            for_error(&anyhow::Error::new(ContainerError::NotFound("x".into()))),
            FAILED
        );
    }
}
