//! Is the guest's sshd there yet? A cheap probe of a VM's forwarded SSH port, before berth
//! spends an SSH login (seconds under TCG) on it.
//!
//! The port is passt's (`crate::passt`), and Debian 12's passt shapes the probe. passt accepts on
//! the host side at once, whatever the guest does, and then opens the connection to the guest.
//! When the guest cannot answer that (no address yet, or its SYN was lost while the guest was
//! still configuring the address it had just leased), passt holds the connection for its 10 s SYN
//! timeout, and a client that closes such a connection sooner makes passt spin on a core for the
//! rest of those 10 s (measured here: 9 s of CPU in the 9 s after one close). So the probe never
//! closes a connection that passt is still opening:
//! - each connection is held until it answers (the guest's identification line), ends (passt or
//!   the guest closed it: nothing listens yet), or the probe is over;
//! - while the newest one is silent, another is opened every [`SPACING`], so that one lost SYN
//!   costs a second rather than the 10 s step it cost when the probe held one connection at a
//!   time (measured: "SSH answers" 8-10 s after sshd listened in 1 launch of 4);
//! - the silent ones left when the probe ends go to a `sleep` that outlives passt's timeout
//!   ([`hand_off`]), so that they close after passt has given them up, not before.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the newest connection may stay silent before another one is opened.
const SPACING: Duration = Duration::from_millis(1500);
/// How soon a refused connection is tried again.
const RETRY: Duration = Duration::from_millis(200);
/// At most this many silent connections at a time (passt ends each within 10 s).
const MAX_OPEN: usize = 8;
/// How long the silent connections left at the end are held: past passt's 10 s SYN timeout.
const HOLD: &str = "11";
/// What berth says first: passt connects to the guest when it has something to send.
const IDENT: &[u8] = b"SSH-2.0-berth-probe\r\n";

struct Conn {
    stream: TcpStream,
    opened: Instant,
    got: Vec<u8>,
}

/// What one read of a connection told.
enum Heard {
    Silent,
    Closed,
    Ssh,
    NotSsh,
}

fn hear(c: &mut Conn) -> Heard {
    let mut buf = [0u8; 4];
    loop {
        match c.stream.read(&mut buf[..4 - c.got.len()]) {
            Ok(0) => return Heard::Closed,
            Ok(n) => {
                c.got.extend_from_slice(&buf[..n]);
                if c.got.len() == 4 {
                    return if c.got == b"SSH-" {
                        Heard::Ssh
                    } else {
                        Heard::NotSsh
                    };
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Heard::Silent,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Heard::Closed,
        }
    }
}

fn open(addr: &SocketAddr) -> Option<Conn> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_millis(500)).ok()?;
    stream.write_all(IDENT).ok()?;
    stream.set_nonblocking(true).ok()?;
    Some(Conn {
        stream,
        opened: Instant::now(),
        got: Vec::new(),
    })
}

/// Whether an SSH server answers on loopback `port` with its identification line within `wait`
/// (`alive` false ends the probe early: QEMU has gone).
pub fn answers(port: u16, wait: Duration, alive: &dyn Fn() -> bool) -> bool {
    let start = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut open_conns: Vec<Conn> = Vec::new();
    let mut answered = false;
    let mut last_open = None;
    while start.elapsed() < wait && alive() {
        // A new connection when the newest one has been silent for SPACING, or (none open: the
        // last one was refused) every RETRY.
        let gap = if open_conns.is_empty() {
            RETRY
        } else {
            SPACING
        };
        if open_conns.len() < MAX_OPEN && last_open.is_none_or(|t: Instant| t.elapsed() >= gap) {
            last_open = Some(Instant::now());
            match open(&addr) {
                Some(c) => open_conns.push(c),
                None => tracing::debug!(port, "SSH probe: no connection"),
            }
        }
        let mut i = 0;
        while i < open_conns.len() {
            let held_ms = open_conns[i].opened.elapsed().as_millis() as u64;
            match hear(&mut open_conns[i]) {
                Heard::Silent => i += 1,
                Heard::Ssh => {
                    tracing::debug!(port, held_ms, "SSH probe: answered");
                    open_conns.swap_remove(i);
                    answered = true;
                    break;
                }
                // Ended by passt or the guest: closing our side is free now.
                Heard::Closed | Heard::NotSsh => {
                    tracing::debug!(port, held_ms, "SSH probe: closed without an answer");
                    open_conns.remove(i);
                }
            }
        }
        if answered {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    hand_off(open_conns);
    answered
}

/// Leave the silent connections to a detached `sleep` that holds them until passt has given
/// them up (see the module's note), so that berth can go on, or end, at once.
fn hand_off(conns: Vec<Conn>) {
    if conns.is_empty() {
        return;
    }
    // Made inheritable just before the spawn; dropped (closed here) right after it.
    for c in &conns {
        let _ = rustix::io::fcntl_setfd(c.stream.as_fd(), rustix::io::FdFlags::empty());
    }
    let held = conns.len();
    let spawned = {
        use std::os::unix::process::CommandExt;
        Command::new("sleep")
            .arg(HOLD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    };
    match spawned {
        // Not waited for: it ends by itself, and init reaps it once berth is gone.
        Ok(child) => {
            tracing::debug!(
                held,
                pid = child.id(),
                "SSH probe: silent connections handed off"
            )
        }
        Err(e) => tracing::debug!(held, "SSH probe: could not hand off: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `answers` against a local listener; `serve` gets each connection in turn.
    fn check(wait: Duration, serve: fn(usize, TcpStream)) -> bool {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        serve(n, c);
                        n += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let seen = answers(port, wait, &|| true);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
        seen
    }

    #[test]
    fn an_ssh_server_is_told_by_its_identification_line() {
        let wait = Duration::from_millis(600);
        // sshd: answers with its version line.
        assert!(check(wait, |_, mut c| c
            .write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n")
            .unwrap()));
        // sshd that reads berth's identification before it answers.
        assert!(check(wait, |_, mut c| {
            let mut id = [0u8; 21];
            c.read_exact(&mut id).unwrap();
            assert_eq!(&id, IDENT);
            c.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").unwrap()
        }));
        // Nothing listening in the guest: accepted, then closed, every time.
        assert!(!check(wait, |_, c| drop(c)));
        // Another service on the port.
        assert!(!check(wait, |_, mut c| c
            .write_all(b"HTTP/1.1 400 Bad Request\r\n")
            .unwrap()));
    }

    #[test]
    fn a_silent_connection_is_held_and_a_second_one_gets_the_answer() {
        // The first connection is one passt cannot open (silent, kept open by the server side
        // too); the second, opened SPACING later, is answered.
        static HELD: std::sync::Mutex<Vec<TcpStream>> = std::sync::Mutex::new(Vec::new());
        let started = Instant::now();
        assert!(check(Duration::from_secs(5), |n, mut c| {
            if n == 0 {
                HELD.lock().unwrap().push(c);
            } else {
                c.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").unwrap();
            }
        }));
        let took = started.elapsed();
        assert!(
            took >= SPACING && took < SPACING * 2,
            "answered after {took:?}"
        );
        // The silent one was not closed by the probe: it went to the holder.
        let mut first = HELD.lock().unwrap().pop().unwrap();
        first
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut id = [0u8; 21];
        first.read_exact(&mut id).unwrap();
        let mut more = [0u8; 1];
        let still_open = matches!(
            first.read(&mut more),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut
        );
        assert!(still_open, "the silent connection was closed by the probe");
    }

    #[test]
    fn a_silent_guest_is_not_an_answer() {
        assert!(!check(Duration::from_millis(300), |_, c| {
            std::thread::sleep(Duration::from_millis(400));
            drop(c);
        }));
    }
}
