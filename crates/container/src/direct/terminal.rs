//! An interactive command's terminal in a running container, as `lxc-attach` and
//! `podman exec -t` make it: a pseudo-terminal of the container's own devpts instance (so that
//! `tty` in the container names `/dev/pts/N` and the slave belongs to the command's user), whose
//! slave is the command's standard streams and controlling terminal, and a relay between its
//! master and berth's own standard input and output. berth's terminal is raw meanwhile; its size
//! is the pty's, at the start and at every SIGWINCH; SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to
//! berth go to the command.

use super::{host, DirectError};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::pty::OpenptFlags;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// `/dev/ptmx`'s device number, which every devpts instance's `ptmx` node has too.
const PTMX: (u32, u32) = (5, 2);

/// The signals berth passes on to the command while it relays.
const FORWARDED: [i32; 4] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGQUIT,
];

/// A pty opened in a container.
#[derive(Debug)]
pub(super) struct Terminal {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Terminal {
    /// A new pty of the devpts instance on `/dev/pts` in the container whose process is `pid`,
    /// sized as berth's own terminal; its slave owned by `owner` (a uid as the host sees it).
    pub(super) fn open_in(pid: u32, owner: Option<u32>) -> Result<Terminal, DirectError> {
        let err = |what: &str| {
            let f = host(format!("{what} for the command's terminal"));
            move |e: rustix::io::Errno| f(e.into())
        };
        let root = format!("/proc/{pid}/root");
        let root = rustix::fs::open(
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err(&format!("opening {root}")))?;
        // Resolved inside the container's root: a link the container made on its way cannot
        // point the open at one of the host's files.
        let master = rustix::fs::openat2(
            &root,
            "dev/pts/ptmx",
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(err("opening the container's /dev/pts/ptmx"))?;
        let st = rustix::fs::fstat(&master).map_err(err("reading /dev/pts/ptmx"))?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        let dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        if kind != rustix::fs::FileType::CharacterDevice || dev != PTMX {
            return Err(DirectError::Unsupported(format!(
                "the container's /dev/pts/ptmx is not a pty multiplexer ({kind:?} {}:{})",
                dev.0, dev.1
            )));
        }
        rustix::pty::unlockpt(&master).map_err(err("unlocking the pty"))?;
        let slave = rustix::pty::ioctl_tiocgptpeer(
            &master,
            OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
        )
        .map_err(err("opening the pty's slave"))?;
        if let Some(uid) = owner {
            rustix::fs::fchown(&slave, Some(rustix::fs::Uid::from_raw(uid)), None)
                .map_err(err("giving the pty to the command's user"))?;
        }
        copy_size(&master);
        Ok(Terminal { master, slave })
    }

    /// The slave, for the command.
    pub(super) fn slave(&self) -> BorrowedFd<'_> {
        self.slave.as_fd()
    }

    /// Relay until the command, process `child`, has ended (see the module's notes). What the
    /// command's terminal still has to say when it ends is passed on; what processes it left in
    /// the background write later is not.
    pub(super) fn relay(self, child: u32) -> std::io::Result<()> {
        let Terminal { master, slave } = self;
        // Only the command holds the slave now, so the master ends when the command does.
        drop(slave);
        let pid = rustix::process::Pid::from_raw(child as i32)
            .ok_or_else(|| std::io::Error::other("no process to relay for"))?;
        let exited = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        let signals = Signals::register()?;
        let raw = berth_term::RawMode::enter(true);
        let result = pump(&master, &exited, &signals, child);
        drop(raw);
        drop(signals);
        result
    }
}

/// Give the pty whose master is `master` the size of berth's terminal, if it has one.
fn copy_size(master: &OwnedFd) {
    if let Some((cols, rows)) = berth_term::size() {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}

/// The signals berth receives while relaying, each as a byte on a socket of its own (written by
/// signal-hook's handler), which the relay polls with the rest.
struct Signals {
    ids: Vec<signal_hook::SigId>,
    /// SIGWINCH's socket, then [`FORWARDED`]'s, in order.
    readers: Vec<UnixStream>,
    /// Set when the relay is over: a forwarded signal then has its default action again
    /// (signal-hook cannot put the old disposition back).
    over: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        let over = Arc::new(AtomicBool::new(false));
        let mut s = Signals {
            ids: Vec::new(),
            readers: Vec::new(),
            over: over.clone(),
        };
        for sig in std::iter::once(signal_hook::consts::SIGWINCH).chain(FORWARDED) {
            let (r, w) = UnixStream::pair()?;
            r.set_nonblocking(true)?;
            w.set_nonblocking(true)?;
            s.ids.push(signal_hook::low_level::pipe::register(sig, w)?);
            s.readers.push(r);
            if sig != signal_hook::consts::SIGWINCH {
                signal_hook::flag::register_conditional_default(sig, over.clone())?;
            }
        }
        Ok(s)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        self.over.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The relay's loop.
fn pump(master: &OwnedFd, exited: &OwnedFd, signals: &Signals, child: u32) -> std::io::Result<()> {
    let mut stdin_open = true;
    let mut buf = vec![0u8; 16 << 10];
    let mut stdout = std::io::stdout().lock();
    loop {
        let stdin = rustix::stdio::stdin();
        let mut fds = vec![
            PollFd::new(master, PollFlags::IN),
            PollFd::new(exited, PollFlags::IN),
        ];
        fds.extend(
            signals
                .readers
                .iter()
                .map(|r| PollFd::new(r, PollFlags::IN)),
        );
        if stdin_open {
            fds.push(PollFd::from_borrowed_fd(stdin, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            r => r?,
        };
        let ready: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        let is = |i: usize| !ready[i].is_empty();
        if is(0) {
            match rustix::io::read(master, &mut buf) {
                Ok(0) | Err(rustix::io::Errno::IO) => return Ok(()),
                Ok(n) => {
                    stdout.write_all(&buf[..n])?;
                    stdout.flush()?;
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if is(1) {
            return drain(master, &mut buf, &mut stdout);
        }
        for (i, r) in signals.readers.iter().enumerate() {
            if !is(2 + i) {
                continue;
            }
            while (&*r).read(&mut [0u8; 64]).is_ok_and(|n| n > 0) {}
            match i {
                0 => copy_size(master),
                _ => {
                    let sig = rustix::process::Signal::from_named_raw(FORWARDED[i - 1]);
                    let pid = rustix::process::Pid::from_raw(child as i32);
                    if let (Some(sig), Some(pid)) = (sig, pid) {
                        let _ = rustix::process::kill_process(pid, sig);
                    }
                }
            }
        }
        if stdin_open && is(2 + signals.readers.len()) {
            match rustix::io::read(stdin, &mut buf) {
                // The end of input is the pty's end-of-file character, as if typed.
                Ok(0) | Err(rustix::io::Errno::IO) => {
                    stdin_open = false;
                    write_all(master, &[4])?;
                }
                Ok(n) => write_all(master, &buf[..n])?,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// What the master still holds once the command has ended: read while more comes within a
/// moment (its last writes may still be in the line discipline's hands).
fn drain(master: &OwnedFd, buf: &mut [u8], out: &mut impl Write) -> std::io::Result<()> {
    let moment = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    loop {
        let mut fds = [PollFd::new(master, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&moment)) {
            Ok(0) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            r => {
                r?;
            }
        }
        match rustix::io::read(master, &mut *buf) {
            Ok(0) | Err(rustix::io::Errno::IO) => return Ok(()),
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// In the command's child, before it becomes the command: a session of its own with the slave
/// as its standard streams and controlling terminal.
pub(super) fn attach(slave: BorrowedFd<'_>) -> Result<(), String> {
    rustix::process::setsid().map_err(|e| format!("starting a session: {e}"))?;
    let e = |e: rustix::io::Errno| format!("making the pty the command's standard streams: {e}");
    rustix::stdio::dup2_stdin(slave).map_err(e)?;
    rustix::stdio::dup2_stdout(slave).map_err(e)?;
    rustix::stdio::dup2_stderr(slave).map_err(e)?;
    rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())
        .map_err(|e| format!("making the pty the command's controlling terminal: {e}"))
}

/// The host's uid for `id` in the container under `map` (a `uid_map`'s lines: inside, outside,
/// count); `None` when the map does not cover it.
pub(super) fn outside(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|x| x.parse::<u32>().ok());
        let (inside, out, count) = (f.next()??, f.next()??, f.next()??);
        (id >= inside && id - inside < count).then(|| out + (id - inside))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_mapped_out_of_the_container() {
        let map = "0 1000000 65536\n";
        assert_eq!(outside(map, 0), Some(1_000_000));
        assert_eq!(outside(map, 1000), Some(1_001_000));
        assert_eq!(outside(map, 65536), None);
        assert_eq!(outside("0 1000 1\n1 100000 65535\n", 5), Some(100_004));
        assert_eq!(outside("", 0), None);
        assert_eq!(outside("junk\n", 0), None);
    }
}
