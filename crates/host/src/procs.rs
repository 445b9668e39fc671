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

/// QEMU, passt or the NIC relay between them.
pub fn vm_helper(args: &[&[u8]]) -> bool {
    let name = args
        .first()
        .map(|a| a.rsplit(|&b| b == b'/').next().unwrap_or(a))
        .unwrap_or_default();
    name.starts_with(b"qemu-system") || name.starts_with(b"passt") || nic_relay(args)
}

/// `berth nic-relay` (see `crate::nic`).
pub fn nic_relay(args: &[&[u8]]) -> bool {
    args.get(1) == Some(&&b"nic-relay"[..])
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

/// What a process (a VM's QEMU) uses, from `/proc/PID`: CPU time (user + system), resident
/// memory, threads, and bytes it read from and wrote to storage.
pub fn usage(pid: i32) -> berth_api::Usage {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok();
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let cpu_ns = read("stat")
        .as_deref()
        .and_then(stat_cpu_ticks)
        .map(|t| t.saturating_mul(1_000_000_000) / ticks);
    let (memory_bytes, pids) = read("status")
        .as_deref()
        .map(status_rss_threads)
        .unwrap_or((None, None));
    let (io_read_bytes, io_write_bytes) =
        read("io").as_deref().map(io_bytes).unwrap_or((None, None));
    berth_api::Usage {
        memory_bytes,
        cpu_ns,
        pids,
        io_read_bytes,
        io_write_bytes,
    }
}

/// utime + stime (fields 14 and 15) of `/proc/PID/stat`, in clock ticks. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is the 12th here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` (in bytes) and `Threads` of `/proc/PID/status`.
fn status_rss_threads(status: &str) -> (Option<u64>, Option<u64>) {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    (field("VmRSS:").map(|kb| kb * 1024), field("Threads:"))
}

/// `read_bytes` and `write_bytes` of `/proc/PID/io` (storage I/O, not the page cache's).
fn io_bytes(io: &str) -> (Option<u64>, Option<u64>) {
    let field = |key: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    (field("read_bytes:"), field("write_bytes:"))
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 6000 0 1 0 150 25 0 0 20 0 7 0";
        assert_eq!(stat_cpu_ticks(stat), Some(175));
        assert_eq!(stat_cpu_ticks("junk"), None);
        let status = "Name:\tqemu\nVmRSS:\t  204800 kB\nThreads:\t7\n";
        assert_eq!(status_rss_threads(status), (Some(204800 * 1024), Some(7)));
        let io = "rchar: 1\nwchar: 2\nread_bytes: 4096\nwrite_bytes: 8192\n";
        assert_eq!(io_bytes(io), (Some(4096), Some(8192)));
        let me = usage(std::process::id() as i32);
        assert!(
            me.memory_bytes.unwrap() > 0 && me.pids.unwrap() >= 1,
            "{me:?}"
        );
    }
}
