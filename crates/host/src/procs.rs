//! The processes berth starts for an instance and that outlive the command that started them
//! (QEMU, passt, a system container's console relay), found by the instance's folder in their
//! command line, and ended. `delete` uses this after its own bookkeeping (pidfiles, records),
//! which a command killed at the wrong moment may not have written yet: a QEMU that was still
//! daemonizing when its launcher died has no pidfile, but its command line names its folder.

use rustix::process::{kill_process, Pid, Signal};
use std::path::Path;
use std::time::Duration;

/// Which of berth's programs a command line (its arguments, NUL-split) is.
pub type Program = fn(&[&[u8]]) -> bool;

/// QEMU or passt.
pub fn vm_helper(args: &[&[u8]]) -> bool {
    let name = args
        .first()
        .map(|a| a.rsplit(|&b| b == b'/').next().unwrap_or(a))
        .unwrap_or_default();
    name.starts_with(b"qemu-system") || name.starts_with(b"passt")
}

/// `berth console-relay`.
pub fn console_relay(args: &[&[u8]]) -> bool {
    args.get(1) == Some(&&b"console-relay"[..])
}

/// Processes that are `program` with an argument inside `dir`.
pub fn find(dir: &Path, program: Program) -> Vec<Pid> {
    let mut inside = dir.as_os_str().as_encoded_bytes().to_vec();
    inside.push(b'/');
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                program(&args)
                    && args
                        .iter()
                        .any(|a| a.windows(inside.len()).any(|w| w == inside.as_slice()))
            })
        })
        .filter_map(Pid::from_raw)
        .collect()
}

/// End every `program` process with an argument inside `dir`: SIGTERM, then SIGKILL to what
/// is left after a second, and return once none is left (or after another second).
pub fn end(dir: &Path, program: Program) {
    for signal in [Signal::TERM, Signal::KILL] {
        let found = find(dir, program);
        if found.is_empty() {
            return;
        }
        for pid in found {
            let _ = kill_process(pid, signal);
        }
        for _ in 0..100 {
            if find(dir, program).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_told_by_their_command_line() {
        let qemu: Vec<&[u8]> = vec![b"/usr/bin/qemu-system-x86_64", b"-name", b"web"];
        assert!(vm_helper(&qemu) && !console_relay(&qemu));
        let passt: Vec<&[u8]> = vec![b"passt.avx2", b"--socket", b"/d/net/passt.sock"];
        assert!(vm_helper(&passt));
        let relay: Vec<&[u8]> = vec![b"/usr/bin/berth", b"console-relay", b"--socket", b"/d/c"];
        assert!(console_relay(&relay) && !vm_helper(&relay));
        let tail: Vec<&[u8]> = vec![b"tail", b"-f", b"/d/console.log"];
        assert!(!vm_helper(&tail) && !console_relay(&tail));
    }

    #[test]
    fn a_process_is_found_by_its_folder_and_ended() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("web");
        // `sleep`, run as WEB/sleeper, stands in for QEMU.
        fn sleeper(args: &[&[u8]]) -> bool {
            args.first().is_some_and(|a| a.ends_with(b"/sleeper"))
        }
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink("/bin/sleep", dir.join("sleeper")).unwrap();
        let mut child = std::process::Command::new(dir.join("sleeper"))
            .arg("60")
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while find(&dir, sleeper).is_empty() {
            assert!(std::time::Instant::now() < deadline, "not found");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            find(&d.path().join("we"), sleeper).is_empty(),
            "a prefix is not the folder"
        );
        end(&dir, sleeper);
        let _ = child.wait();
        assert!(find(&dir, sleeper).is_empty());
    }
}
