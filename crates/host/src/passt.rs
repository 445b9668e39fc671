//! passt, a VM's network companion (why passt: `berth_qemu::passt`): started before QEMU in the
//! VM's folder, detached from berth (its own process group, so a Ctrl-C of `berth launch` does
//! not reach it), and ended by `--one-off` when QEMU goes. What berth keeps of it: a pidfile,
//! checked against the process's command line before any signal is sent.

use berth_qemu::vm::VmSpec;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The passt binary: `BERTH_PASST`, else `passt` on the PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_PASST") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("passt"))
        .find(|p| p.is_file())
}

/// The user passt runs as when berth is root (it refuses root and would pick `nobody` itself):
/// Debian's `nobody`, named by number so that the folder below can be given to it.
const PASST_ID: u32 = 65534;

/// Files of a VM's passt: its pidfile and log in the VM's folder, beside the folder that holds
/// the socket (`net/`, which passt, binding after it dropped root, must be able to write).
fn files(socket: &Path) -> (PathBuf, PathBuf) {
    let vm = socket
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    (vm.join("passt.pid"), vm.join("passt.log"))
}

/// The socket's folder, writable by passt's user only.
fn socket_folder(socket: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = socket.parent().ok_or("passt's socket has no folder")?;
    let e = |what: &str, x: std::io::Error| format!("{what} {}: {x}", dir.display());
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|x| e("creating", x))?;
    }
    if rustix::process::geteuid().is_root() {
        let id = Some(rustix::fs::Uid::from_raw(PASST_ID));
        rustix::fs::chown(dir, id, Some(rustix::fs::Gid::from_raw(PASST_ID)))
            .map_err(|x| e("handing to passt's user", x.into()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|x| e("setting the mode of", x))
}

/// Start passt for `spec` (whose `passt_socket` is set) and wait until its socket listens.
pub fn start(spec: &VmSpec) -> Result<(), String> {
    let socket = spec
        .passt_socket
        .as_deref()
        .ok_or("the VM has no passt socket")?;
    let (pidfile, log) = files(socket);
    end(socket);
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(&log);
    let bin = binary().ok_or(
        "passt was not found (install Debian's passt package, or set BERTH_PASST): berth's \
         VMs reach the network through it",
    )?;
    socket_folder(socket)?;
    let mut argv = berth_qemu::passt::argv(socket, &log, &spec.forwards, spec.kind);
    if rustix::process::geteuid().is_root() {
        argv.extend(["--runas".into(), format!("{PASST_ID}:{PASST_ID}")]);
    }
    let mut child = Command::new(&bin)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    std::fs::write(&pidfile, child.id().to_string())
        .map_err(|e| format!("writing {}: {e}", pidfile.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if listening(socket) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "passt ended at once ({status}): {}",
                said.lines()
                    .filter(|l| !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if Instant::now() > deadline {
            end(socket);
            return Err("passt did not open its socket within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether the guest behind passt's `socket` has taken its DHCP lease, from passt's log (see
/// [`berth_qemu::passt::guest_has_address`]).
pub fn guest_has_address(socket: &Path) -> bool {
    let (_, log) = files(socket);
    std::fs::read_to_string(log).is_ok_and(|t| berth_qemu::passt::guest_has_address(&t))
}

/// Whether a unix socket at `path` is listening (`/proc/net/unix`, flag `__SO_ACCEPTCON`).
/// Connecting to find out would use up passt's one client.
fn listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8
            && f[7] == want
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
    })
}

/// End the VM's passt if it still runs (it ends by itself when QEMU goes; this is for a QEMU
/// that never connected). Idempotent.
pub fn end(socket: &Path) {
    let (pidfile, _) = files(socket);
    if let Some(pid) = pid(socket) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self::pid(socket).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self::pid(socket).is_some() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    let _ = std::fs::remove_file(pidfile);
}

/// The running passt of this socket, if any: the pidfile's process, if its command line names
/// the socket (a reused pid is left alone).
fn pid(socket: &Path) -> Option<rustix::process::Pid> {
    let (pidfile, _) = files(socket);
    let n: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{n}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{n}/stat")).ok()?;
    // A zombie (exited, not yet reaped) has no command line left to match, but be explicit.
    if stat
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('Z'))
    {
        return None;
    }
    let needle = socket.to_string_lossy();
    String::from_utf8_lossy(&cmdline)
        .contains(needle.as_ref())
        .then(|| rustix::process::Pid::from_raw(n))
        .flatten()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listening_socket_is_seen_and_a_bound_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        assert!(!super::listening(&p));
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(super::listening(&p));
        drop(l);
        assert!(!super::listening(&p));
    }
}
