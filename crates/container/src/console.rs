//! A system container's console: a pseudo-terminal whose slave is bind-mounted on the
//! container's `/dev/console`, and a relay process that holds the master side for as long as the
//! container runs. The relay appends everything the console prints to `console.log` (what
//! `berth logs` shows) and lets one `berth console` at a time attach through a unix socket (the
//! same protocol as a VM's serial console: raw bytes both ways).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::pty::OpenptFlags;

/// The master side of a new pseudo-terminal and its slave's path (`/dev/pts/N`).
#[derive(Debug)]
pub struct Pty {
    /// The master.
    pub master: OwnedFd,
    /// The slave's device path.
    pub slave: PathBuf,
}

/// Open a pseudo-terminal pair.
pub fn open_pty() -> std::io::Result<Pty> {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = PathBuf::from(name.to_string_lossy().into_owned());
    Ok(Pty { master, slave })
}

/// Relay the console whose master is `master` until process `pid` (the container's init) is
/// gone: output to the end of `log` and to the attached client, the client's input to the
/// console. Clients connect to `socket`; a new one replaces the old.
pub fn relay(
    master: OwnedFd,
    slave: &Path,
    socket: &Path,
    log: &Path,
    pid: u32,
) -> std::io::Result<()> {
    // Hold the slave open too, so the master never reads EIO between the container's opens.
    let _slave = File::options().read(true).write(true).open(slave)?;
    let master = File::from(master);
    let mut reader = master.try_clone()?;
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let client: Arc<Mutex<Option<UnixStream>>> = Arc::new(Mutex::new(None));
    let mut log = File::options().create(true).append(true).open(log)?;

    let out_client = client.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = log.write_all(&buf[..n]);
            let mut c = out_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = c.as_mut() {
                if s.write_all(&buf[..n]).is_err() {
                    *c = None;
                }
            }
        }
    });

    let in_client = client.clone();
    let console_in = master.try_clone()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let Ok(mut from) = conn.try_clone() else {
                continue;
            };
            *in_client.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
            let Ok(mut to) = console_in.try_clone() else {
                continue;
            };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });

    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                // The state follows the command name in parentheses; Z is a zombie.
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
            .unwrap_or(false)
    };
    while alive(pid) {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_logs_and_serves_a_client() {
        let t = tempfile::tempdir().unwrap();
        let pty = open_pty().unwrap();
        assert!(pty.slave.starts_with("/dev/pts"));
        let slave = pty.slave.clone();
        let (sock, log) = (t.path().join("console.sock"), t.path().join("console.log"));
        // A stand-in for the container's init: this test's own child, alive for a while.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("3")
            .spawn()
            .unwrap();
        let pid = sleeper.id();
        let (s2, l2, sl2) = (sock.clone(), log.clone(), slave.clone());
        let master = pty.master;
        let handle = std::thread::spawn(move || relay(master, &sl2, &s2, &l2, pid));
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut client = UnixStream::connect(&sock).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        // What the "container" prints reaches the log and the client.
        let mut console = File::options().write(true).open(&slave).unwrap();
        console.write_all(b"hello from init\r\n").unwrap();
        let mut got = [0u8; 15];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello from init");
        // What the client types reaches the console.
        let mut console_in = File::options().read(true).open(&slave).unwrap();
        client.write_all(b"typed\n").unwrap();
        let mut typed = [0u8; 5];
        console_in.read_exact(&mut typed).unwrap();
        assert_eq!(&typed, b"typed");
        sleeper.wait().unwrap();
        handle.join().unwrap().unwrap();
        assert!(std::fs::read_to_string(&log)
            .unwrap()
            .contains("hello from init"));
        assert!(
            !sock.exists(),
            "the relay removes its socket when init is gone"
        );
    }
}
