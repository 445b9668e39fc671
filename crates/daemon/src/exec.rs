//! `exec` and `run` over a websocket ([`berth_api::stream`]), and the console. The command runs in a worker process whose
//! standard streams are pipes relayed to and from the socket (an interactive one's: a pty, its
//! controlling terminal, whose size the client sets); signals the client sends go to the
//! worker's process group (the command with it); the exit status is the last message.

use crate::routes::Host;
use crate::worker::{self, Job};
use axum::extract::ws::{Message, WebSocket};
use berth_api::stream::{frame, unframe, STDERR, STDIN, STDOUT};
use berth_api::{Error, ExecExit, StreamControl, WindowSize};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where what the client sends goes (a pipe or a pty's master).
type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
/// Where the command's output is read (a pipe or a pty's master).
type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// How long the command's output is still read after its worker ended (a process it left in
/// the background can hold the pipes open for good).
const DRAIN: Duration = Duration::from_secs(2);

async fn send_control(ws: &mut WebSocket, m: &StreamControl) {
    if let Ok(t) = serde_json::to_string(m) {
        let _ = ws.send(Message::Text(t.into())).await;
    }
}

/// What a command websocket serves.
#[derive(Debug)]
pub enum Serve {
    /// `exec` in this instance (checked to exist before the upgrade).
    Exec(String),
    /// `run`: a new application container.
    Run,
}

/// Serve one exec or run websocket.
pub async fn serve(host: Host, what: Serve, mut ws: WebSocket) {
    let start = match ws.recv().await {
        Some(Ok(Message::Text(t))) => crate::body::parse::<StreamControl>(t.as_bytes(), None),
        _ => Err(Error::invalid(
            "start",
            "the first message must be a start or a run (text)",
        )),
    };
    let r = match (what, start) {
        (Serve::Exec(name), Ok(StreamControl::Start { exec, window })) => {
            run(&host, Job::Exec { name, exec }, window, &mut ws).await
        }
        (Serve::Run, Ok(StreamControl::Run { run: r })) => match r.check() {
            Ok(()) => run(&host, Job::Run { run: r }, None, &mut ws).await,
            Err(e) => Err(e),
        },
        (w, Ok(other)) => Err(Error::invalid(
            "start",
            format!("the first message of {w:?} cannot be {other:?}"),
        )),
        (_, Err(e)) => Err(e),
    };
    let last = match r {
        Ok(exit) => StreamControl::Exit { exit },
        Err(error) => StreamControl::Error { error },
    };
    send_control(&mut ws, &last).await;
    let _ = ws.send(Message::Close(None)).await;
}

/// Relay an instance's console (a unix stream) and a websocket both ways until either ends.
pub async fn console(console: std::os::unix::net::UnixStream, mut ws: WebSocket) {
    let Ok(c) = console
        .set_nonblocking(true)
        .and_then(|_| tokio::net::UnixStream::from_std(console))
    else {
        return;
    };
    let (mut rd, mut wr) = c.into_split();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Some((STDIN, data)) = unframe(&b) {
                        if wr.write_all(data).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws.send(Message::Binary(frame(STDOUT, &buf[..n]).into())).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}

fn signal_group(pid: u32, signal: i32) {
    use rustix::process::{kill_process_group, Pid, Signal};
    let (Some(pgid), Some(sig)) = (Pid::from_raw(pid as i32), Signal::from_named_raw(signal))
    else {
        return;
    };
    let _ = kill_process_group(pgid, sig);
}

/// Give the pty whose master is `fd` this size.
fn resize(fd: &std::os::fd::OwnedFd, w: WindowSize) {
    let size = rustix::termios::Winsize {
        ws_row: w.rows,
        ws_col: w.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(fd, size);
}

/// An interactive command's terminal: the worker gets the slave as its standard streams and
/// controlling terminal; the daemon relays the master.
struct Terminal {
    /// Read from: the command's output (and errors).
    output: tokio::fs::File,
    /// Written to: what is typed.
    input: tokio::fs::File,
    /// For size changes.
    control: std::os::fd::OwnedFd,
}

/// Set `cmd` up to run on a new pty of size `window`.
#[allow(unsafe_code)]
fn on_pty(
    cmd: &mut tokio::process::Command,
    window: Option<WindowSize>,
) -> std::io::Result<Terminal> {
    use std::os::unix::fs::OpenOptionsExt;
    let pty = berth_container::console::open_pty()?;
    if let Some(w) = window {
        resize(&pty.master, w);
    }
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&pty.slave)?;
    cmd.stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    // SAFETY: between fork and exec the child calls only setsid(2) and ioctl(TIOCSCTTY), which
    // are async-signal-safe and touch no memory of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    let master = std::fs::File::from(pty.master);
    Ok(Terminal {
        input: tokio::fs::File::from_std(master.try_clone()?),
        control: master.try_clone()?.into(),
        output: tokio::fs::File::from_std(master),
    })
}

async fn run(
    host: &Host,
    job: Job,
    window: Option<WindowSize>,
    ws: &mut WebSocket,
) -> Result<ExecExit, Error> {
    let name = job.instance().to_string();
    let interactive = matches!(&job, Job::Exec { exec, .. } if exec.interactive);
    let run_dir = host.dirs.root.join("run");
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| Error::internal(format!("creating {}: {e}", run_dir.display())))?;
    let answer = run_dir.join(format!("exec-{}.json", uuid::Uuid::new_v4()));
    let job_text = serde_json::to_string(&job)
        .map_err(|e| Error::internal(format!("writing the exec's job: {e}")))?;
    let mut cmd = tokio::process::Command::new(&host.worker);
    cmd.arg("daemon-worker")
        .env("BERTH_DIR", &host.dirs.root)
        .env(worker::JOB_ENV, job_text)
        .env(worker::ANSWER_ENV, &answer);
    let terminal = if interactive {
        let t = on_pty(&mut cmd, window)
            .map_err(|e| Error::internal(format!("making a pty for the exec: {e}")))?;
        Some(t)
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        None
    };
    let mut child = cmd.spawn().map_err(|e| {
        Error::internal(format!(
            "starting the exec's worker ({}): {e}",
            host.worker.display()
        ))
    })?;
    // The slave's copies go with the command, so that the master ends when the command does.
    drop(cmd);
    let pid = child.id().unwrap_or(0);
    let (mut stdin, mut out, mut err, control): (
        Option<Writer>,
        Option<Reader>,
        Option<Reader>,
        _,
    ) = match terminal {
        Some(t) => (
            Some(Box::new(t.input)),
            Some(Box::new(t.output)),
            None,
            Some(t.control),
        ),
        None => (
            child.stdin.take().map(|s| Box::new(s) as Writer),
            child.stdout.take().map(|s| Box::new(s) as Reader),
            child.stderr.take().map(|s| Box::new(s) as Reader),
            None,
        ),
    };
    let (mut obuf, mut ebuf) = (vec![0u8; 32 << 10], vec![0u8; 32 << 10]);
    let mut status = None;
    let mut client_gone = false;
    let drain = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(drain);
    while out.is_some() || err.is_some() {
        tokio::select! {
            m = ws.recv(), if !client_gone => match m {
                Some(Ok(Message::Binary(b))) => match unframe(&b) {
                    Some((STDIN, data)) => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(data).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    _ => tracing::debug!("exec in {name}: a frame for no stream the client writes"),
                },
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<StreamControl>(&t) {
                    // On a pty the end of input is its EOF character (^D), as typed.
                    Ok(StreamControl::Eof) if control.is_some() => {
                        if let Some(s) = stdin.as_mut() {
                            let _ = s.write_all(&[4]).await;
                        }
                    }
                    Ok(StreamControl::Eof) => stdin = None,
                    Ok(StreamControl::Signal { signal }) => signal_group(pid, signal),
                    Ok(StreamControl::Resize { window }) => {
                        if let Some(fd) = &control {
                            resize(fd, window);
                        }
                    }
                    other => tracing::debug!("exec in {name}: ignored message {other:?}"),
                },
                Some(Ok(_)) => {}
                // The client went away: the command is hung up on, as a terminal's would be.
                Some(Err(_)) | None => {
                    client_gone = true;
                    stdin = None;
                    signal_group(pid, rustix::process::Signal::HUP.as_raw());
                }
            },
            n = read_some(&mut out, &mut obuf) => match n {
                Some(n) => { let _ = ws.send(Message::Binary(frame(STDOUT, &obuf[..n]).into())).await; }
                None => out = None,
            },
            n = read_some(&mut err, &mut ebuf) => match n {
                Some(n) => { let _ = ws.send(Message::Binary(frame(STDERR, &ebuf[..n]).into())).await; }
                None => err = None,
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st);
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            },
            _ = &mut drain => break,
        }
    }
    let status = match status {
        Some(st) => st,
        None => child.wait().await,
    };
    let r = match status {
        // A signal the client passed on ended the worker with the command (they share a
        // process group) before it could answer: the command's status is the signal's.
        Ok(st) if !answer.exists() && st.signal().is_some() => Ok(ExecExit {
            code: 128 + st.signal().unwrap_or(0),
            ..ExecExit::default()
        }),
        Ok(_) => worker::exec_answer(&answer),
        Err(e) => Err(Error::internal(format!(
            "waiting for the exec's worker: {e}"
        ))),
    };
    let _ = std::fs::remove_file(&answer);
    r
}

/// Read what the pipe has (None at its end, or when there is no pipe: then never ready).
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    r: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    match r {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}
