//! `exec` through a daemon: the websocket of [`berth_api::stream`], with this process's input
//! sent as the command's standard input, its output and error written here, SIGINT, SIGTERM and
//! SIGHUP passed on to the command, and its exit status returned.

use crate::transport::Endpoint;
use berth_api::stream::{frame, unframe, STDERR, STDIN, STDOUT};
use berth_api::{Error, ExecExit, StreamControl};
use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Where the command's streams go on this side.
pub struct Streams<'a> {
    /// What it reads (read on a thread of its own, to its end).
    pub input: Box<dyn Read + Send>,
    /// Where its output goes.
    pub output: &'a mut dyn Write,
    /// Where its errors go.
    pub error: &'a mut dyn Write,
}

impl std::fmt::Debug for Streams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streams")
    }
}

/// This process's terminal size (of standard output, else input), if it has a terminal.
pub fn window_size() -> Option<berth_api::WindowSize> {
    berth_term::size().map(|(cols, rows)| berth_api::WindowSize { cols, rows })
}

pub use berth_term::RawMode;

/// An answer that was not an upgrade: the API's error in it, if it has one.
fn refused(endpoint: &Endpoint, e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as W;
    if let W::Http(res) = &e {
        if let Some(body) = res.body() {
            if let Ok(r) = serde_json::from_slice::<berth_api::Response<serde_json::Value>>(body) {
                if let Err(e) = r.into_result() {
                    return e;
                }
            }
        }
    }
    Error::internal(format!("{endpoint} refused the exec's websocket: {e}"))
}

/// A websocket to `path` on the daemon at `endpoint`.
async fn open(
    endpoint: &Endpoint,
    path: &str,
) -> Result<WebSocketStream<Box<dyn crate::transport::Io>>, Error> {
    let stream = crate::transport::connect(endpoint).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://berth{path}"), stream)
        .await
        .map_err(|e| refused(endpoint, e))?;
    Ok(ws)
}

/// Run a command on the daemon at `endpoint`: `path` is the websocket (exec or run), `start`
/// its first message.
pub async fn command(
    endpoint: &Endpoint,
    path: &str,
    start: &StreamControl,
    streams: Streams<'_>,
) -> Result<ExecExit, Error> {
    let lost = |e: &dyn std::fmt::Display| {
        Error::internal(format!(
            "the command's connection to {endpoint} failed: {e}"
        ))
    };
    let mut ws = open(endpoint, path).await?;
    let interactive = matches!(start, StreamControl::Start { exec, .. } if exec.interactive);
    let start = serde_json::to_string(start).map_err(|e| lost(&e))?;
    ws.send(Message::Text(start.into()))
        .await
        .map_err(|e| lost(&e))?;

    // Standard input on a thread of its own (a blocking read), as chunks; None at its end.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(8);
    let mut input = streams.input;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigs = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ]
    .map(|k| signal(k).map_err(|e| lost(&e)));
    let [Ok(int), Ok(term), Ok(hup)] = &mut sigs else {
        return Err(Error::internal(
            "cannot watch for signals to pass on to the exec",
        ));
    };
    let mut winch = signal(SignalKind::window_change()).map_err(|e| lost(&e))?;
    let _raw = RawMode::enter(interactive);
    let (output, error) = (streams.output, streams.error);
    let mut input_open = true;
    loop {
        tokio::select! {
            chunk = rx.recv(), if input_open => {
                let m = match chunk.flatten() {
                    Some(data) => Message::Binary(frame(STDIN, &data).into()),
                    None => {
                        input_open = false;
                        let eof = serde_json::to_string(&StreamControl::Eof).map_err(|e| lost(&e))?;
                        Message::Text(eof.into())
                    }
                };
                // A command that has ended reads no more; its exit is still to come.
                let _ = ws.send(m).await;
            }
            _ = int.recv() => send_signal(&mut ws, 2).await,
            _ = term.recv() => send_signal(&mut ws, 15).await,
            _ = hup.recv() => send_signal(&mut ws, 1).await,
            _ = winch.recv(), if interactive => {
                if let Some(window) = window_size() {
                    if let Ok(t) = serde_json::to_string(&StreamControl::Resize { window }) {
                        let _ = ws.send(Message::Text(t.into())).await;
                    }
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    let (sink, data): (&mut dyn Write, &[u8]) = match unframe(&b) {
                        Some((STDOUT, d)) => (&mut *output, d),
                        Some((STDERR, d)) => (&mut *error, d),
                        _ => continue,
                    };
                    // A reader that went away on this side ends nothing there.
                    let _ = sink.write_all(data).and_then(|_| sink.flush());
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<StreamControl>(&t) {
                    Ok(StreamControl::Exit { exit }) => return Ok(exit),
                    Ok(StreamControl::Error { error }) => return Err(error),
                    other => tracing::debug!("exec: ignored message {other:?}"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    return Err(lost(&"it closed before the command's exit status came"))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(lost(&e)),
            }
        }
    }
}

async fn send_signal<S>(ws: &mut S, signal: i32)
where
    S: SinkExt<Message> + Unpin,
{
    if let Ok(t) = serde_json::to_string(&StreamControl::Signal { signal }) {
        let _ = ws.send(Message::Text(t.into())).await;
    }
}

/// An instance's console through the daemon at `endpoint`: this end of a local socket pair
/// whose other end a thread relays to and from the console's websocket.
pub fn console(endpoint: &Endpoint, name: &str) -> Result<std::os::unix::net::UnixStream, Error> {
    let failed = |e: &dyn std::fmt::Display| {
        Error::internal(format!(
            "the console's connection to {endpoint} failed: {e}"
        ))
    };
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| failed(&e))?;
    let (endpoint, path) = (endpoint.clone(), format!("/1.0/instances/{name}/console"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(Error::internal(format!(
                    "a runtime for the console: {e}"
                ))));
                return;
            }
        };
        rt.block_on(async move {
            let ws = match open(&endpoint, &path).await {
                Ok(ws) => {
                    let _ = tx.send(Ok(()));
                    ws
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = relay(ws, theirs).await;
        });
    });
    rx.recv().map_err(|e| failed(&e))?.map(|()| mine)
}

/// Both ways between a console websocket and a local stream, until either ends.
async fn relay(
    mut ws: WebSocketStream<Box<dyn crate::transport::Io>>,
    local: std::os::unix::net::UnixStream,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    local.set_nonblocking(true)?;
    let local = tokio::net::UnixStream::from_std(local)?;
    let (mut rd, mut wr) = local.into_split();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws.send(Message::Binary(frame(STDIN, &buf[..n]).into())).await.is_err() {
                        break;
                    }
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Some((STDOUT, data)) = unframe(&b) {
                        if wr.write_all(data).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// Follow the daemon's event stream at `path` (`/1.0/events?...`), handing each event to `f`
/// until it answers false or the daemon goes.
pub async fn monitor(
    endpoint: &Endpoint,
    path: &str,
    f: &mut dyn FnMut(berth_api::DaemonEvent) -> bool,
) -> Result<(), Error> {
    let mut ws = open(endpoint, path).await?;
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Text(t)) => match serde_json::from_str(&t) {
                Ok(ev) => {
                    if !f(ev) {
                        break;
                    }
                }
                Err(e) => tracing::debug!("an event berth cannot read ({e}): {t}"),
            },
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(Error::internal(format!(
                    "the event stream of {endpoint} failed: {e}"
                )))
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}
