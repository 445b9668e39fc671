//! `exec` and `run` over a websocket ([`berth_api::stream`]), and the console. The command runs in a worker process whose
//! standard streams are pipes relayed to and from the socket; signals the client sends go to
//! the worker's process group (the command with it); the exit status is the last message.

use crate::routes::Host;
use crate::worker::{self, Job};
use axum::extract::ws::{Message, WebSocket};
use berth_api::stream::{frame, unframe, STDERR, STDIN, STDOUT};
use berth_api::{Error, ExecExit, StreamControl};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        (Serve::Exec(name), Ok(StreamControl::Start { exec })) => {
            run(&host, Job::Exec { name, exec }, &mut ws).await
        }
        (Serve::Run, Ok(StreamControl::Run { run: r })) => match r.check() {
            Ok(()) => run(&host, Job::Run { run: r }, &mut ws).await,
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

async fn run(host: &Host, job: Job, ws: &mut WebSocket) -> Result<ExecExit, Error> {
    let name = job.instance().to_string();
    let run_dir = host.dirs.root.join("run");
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| Error::internal(format!("creating {}: {e}", run_dir.display())))?;
    let answer = run_dir.join(format!("exec-{}.json", uuid::Uuid::new_v4()));
    let job_text = serde_json::to_string(&job)
        .map_err(|e| Error::internal(format!("writing the exec's job: {e}")))?;
    let mut child = tokio::process::Command::new(&host.worker)
        .arg("daemon-worker")
        .env("BERTH_DIR", &host.dirs.root)
        .env(worker::JOB_ENV, job_text)
        .env(worker::ANSWER_ENV, &answer)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            Error::internal(format!(
                "starting the exec's worker ({}): {e}",
                host.worker.display()
            ))
        })?;
    let pid = child.id().unwrap_or(0);
    let mut stdin = child.stdin.take();
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
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
                    Ok(StreamControl::Eof) => stdin = None,
                    Ok(StreamControl::Signal { signal }) => signal_group(pid, signal),
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
