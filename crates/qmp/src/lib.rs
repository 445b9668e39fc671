//! A small asynchronous QMP client (QEMU Machine Protocol), generic over the transport.
//!
//! QMP is newline-delimited JSON: QEMU greets (`{"QMP": {...}}`), the client must send
//! `qmp_capabilities`, then commands (`{"execute": ..., "arguments": ..., "id": ...}`) get
//! replies (`{"return": ...}` or `{"error": {"class", "desc"}}`) carrying the same `id`, and
//! asynchronous events (`{"event": ..., "data": ..., "timestamp": ...}`) may arrive at any time,
//! including between a command and its reply. A reader task routes replies to their callers by
//! id and events to subscribers, so commands can be issued concurrently.
//!
//! Not typed per command: QEMU's schema changes between versions, so commands take and return
//! `serde_json::Value`, and the callers (berth-host) own the few commands they use.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, oneshot};

/// QMP failures.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QmpError {
    /// The connection failed or closed.
    #[error("QMP connection: {0}")]
    Io(String),
    /// The peer does not speak QMP as expected.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU refused the command.
    #[error("QEMU refused {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP error class (e.g. `GenericError`, `CommandNotFound`).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// No reply within the time limit.
    #[error("no reply to {0} within the time limit")]
    Timeout(String),
}

/// An asynchronous event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// Name, e.g. `SHUTDOWN`, `POWERDOWN`, `STOP`, `RESUME`.
    pub event: String,
    /// Event data.
    #[serde(default)]
    pub data: Value,
    /// When QEMU emitted it.
    #[serde(default)]
    pub timestamp: Value,
}

/// The greeting's version and capabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Greeting {
    /// `{"qemu": {"major", "minor", "micro"}, "package": ...}`.
    pub version: Value,
    /// Offered capabilities.
    pub capabilities: Vec<String>,
}

type Pending = Arc<Mutex<HashMap<u64, (String, oneshot::Sender<Result<Value, QmpError>>)>>>;

/// A connected, negotiated QMP session.
pub struct Qmp {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    greeting: Greeting,
    closed: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("greeting", &self.greeting)
            .finish()
    }
}

fn io_err(e: std::io::Error) -> QmpError {
    QmpError::Io(e.to_string())
}

impl Qmp {
    /// Connect to QEMU's QMP unix socket.
    pub async fn connect_unix(path: &Path) -> Result<Qmp, QmpError> {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| QmpError::Io(format!("connecting to {}: {e}", path.display())))?;
        Qmp::connect(s).await
    }

    /// Run the handshake on any byte stream: read the greeting, negotiate capabilities.
    pub async fn connect<S>(stream: S) -> Result<Qmp, QmpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let mut lines = BufReader::new(r).lines();
        let first = lines
            .next_line()
            .await
            .map_err(io_err)?
            .ok_or_else(|| QmpError::Io("closed before the greeting".into()))?;
        let v: Value = serde_json::from_str(&first)
            .map_err(|e| QmpError::Protocol(format!("greeting is not JSON: {e}")))?;
        let qmp = v
            .get("QMP")
            .ok_or_else(|| QmpError::Protocol(format!("expected a QMP greeting, got {first}")))?;
        let greeting = Greeting {
            version: qmp.get("version").cloned().unwrap_or(Value::Null),
            capabilities: qmp
                .get("capabilities")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let (events, _) = broadcast::channel(256);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(Mutex::new(None));
        let me = Qmp {
            writer: tokio::sync::Mutex::new(Box::new(w)),
            pending: pending.clone(),
            events: events.clone(),
            next_id: AtomicU64::new(1),
            greeting,
            closed: closed.clone(),
        };
        tokio::spawn(async move {
            let reason = loop {
                match lines.next_line().await {
                    Ok(Some(line)) if line.trim().is_empty() => continue,
                    Ok(Some(line)) => route(&line, &pending, &events),
                    Ok(None) => break "QEMU closed the connection".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            *closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
            let waiting: Vec<_> = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            for (_, (_, tx)) in waiting {
                let _ = tx.send(Err(QmpError::Io(reason.clone())));
            }
        });
        me.execute("qmp_capabilities", None).await?;
        Ok(me)
    }

    /// The greeting QEMU sent.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Subscribe to events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Run a command and wait for its reply.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        if let Some(reason) = self
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(QmpError::Io(reason));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (command.to_string(), tx));
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            if let Err(e) = async {
                w.write_all(line.as_bytes()).await?;
                w.flush().await
            }
            .await
            {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                return Err(io_err(e));
            }
        }
        rx.await
            .map_err(|_| QmpError::Io("the connection closed".into()))?
    }

    /// [`Qmp::execute`] with a time limit.
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        limit: std::time::Duration,
    ) -> Result<Value, QmpError> {
        tokio::time::timeout(limit, self.execute(command, arguments))
            .await
            .map_err(|_| QmpError::Timeout(command.to_string()))?
    }
}

/// One message from QEMU after the greeting.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// An asynchronous event.
    Event(Event),
    /// A reply: the command's return value, or QEMU's (class, description).
    Reply {
        /// The id the command was sent with.
        id: u64,
        /// `return` or `error`.
        result: Result<Value, (String, String)>,
    },
}

/// Parse one line QEMU sent (untrusted input: never panics).
pub fn parse_message(line: &str) -> Result<Message, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("event").is_some() {
        return serde_json::from_value::<Event>(v)
            .map(Message::Event)
            .map_err(|e| format!("malformed event: {e}"));
    }
    let id = v
        .get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| "reply without a numeric id".to_string())?;
    let result = if let Some(r) = v.get("return") {
        Ok(r.clone())
    } else if let Some(e) = v.get("error") {
        Err((
            e.get("class")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            e.get("desc")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ))
    } else {
        return Err(format!("reply {id} with neither return nor error"));
    };
    Ok(Message::Reply { id, result })
}

fn route(line: &str, pending: &Pending, events: &broadcast::Sender<Event>) {
    match parse_message(line) {
        Err(why) => tracing::warn!(%line, %why, "QMP sent a line berth cannot use"),
        Ok(Message::Event(ev)) => {
            let _ = events.send(ev);
        }
        Ok(Message::Reply { id, result }) => {
            let Some((command, tx)) = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id)
            else {
                tracing::warn!(id, "QMP reply to no pending command");
                return;
            };
            let _ = tx.send(result.map_err(|(class, desc)| QmpError::Command {
                command,
                class,
                desc,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#;

    /// A scripted QEMU: greets, checks the capabilities negotiation, then answers commands
    /// out of order with events interleaved.
    async fn fake_qemu(stream: tokio::io::DuplexStream) {
        let (r, mut w) = tokio::io::split(stream);
        let mut lines = BufReader::new(r).lines();
        w.write_all(format!("{GREETING}\n").as_bytes())
            .await
            .unwrap();
        let caps: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(caps["execute"], "qmp_capabilities");
        w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", caps["id"]).as_bytes())
            .await
            .unwrap();
        let a: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        let b: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        // Event first, then the second command's reply before the first's.
        w.write_all(
            b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"POWERDOWN\"}\n",
        )
        .await
        .unwrap();
        w.write_all(format!("{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}, \"id\": {}}}\n", b["id"]).as_bytes()).await.unwrap();
        w.write_all(
            format!(
                "{{\"return\": {{\"status\": \"running\", \"running\": true}}, \"id\": {}}}\n",
                a["id"]
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        w.write_all(b"not json at all\n{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}, \"timestamp\": {}}\n").await.unwrap();
        // Then hang up.
        let _ = lines.next_line().await;
    }

    #[tokio::test]
    async fn handshake_id_matching_errors_and_events() {
        let (client, server) = tokio::io::duplex(4096);
        tokio::spawn(fake_qemu(server));
        let qmp = std::sync::Arc::new(Qmp::connect(client).await.unwrap());
        assert_eq!(qmp.greeting().version["qemu"]["major"], 7);
        assert_eq!(qmp.greeting().capabilities, vec!["oob"]);
        let mut ev = qmp.events();
        let (q1, q2) = (qmp.clone(), qmp.clone());
        let first = tokio::spawn(async move { q1.execute("query-status", None).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let second = tokio::spawn(async move { q2.execute("nope", Some(json!({"x": 1}))).await });
        assert_eq!(first.await.unwrap().unwrap()["status"], "running");
        match second.await.unwrap() {
            Err(QmpError::Command { command, class, .. }) => {
                assert_eq!(command, "nope");
                assert_eq!(class, "CommandNotFound");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ev.recv().await.unwrap().event, "POWERDOWN");
        let shutdown = ev.recv().await.unwrap();
        assert_eq!(shutdown.event, "SHUTDOWN");
        assert_eq!(shutdown.data["reason"], "guest-shutdown");
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qemu_or_hangs_up_is_an_error() {
        let (client, server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut s = server;
            s.write_all(b"{\"hello\": 1}\n").await.unwrap();
        });
        assert!(matches!(
            Qmp::connect(client).await,
            Err(QmpError::Protocol(_))
        ));
        let (client, server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(server);
            w.write_all(format!("{GREETING}\n").as_bytes())
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            let caps: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", caps["id"]).as_bytes())
                .await
                .unwrap();
            let _cmd = lines.next_line().await;
            // Close without replying.
        });
        let qmp = Qmp::connect(client).await.unwrap();
        assert!(matches!(
            qmp.execute("query-status", None).await,
            Err(QmpError::Io(_))
        ));
        assert!(matches!(
            qmp.execute("query-status", None).await,
            Err(QmpError::Io(_))
        ));
    }

    #[tokio::test]
    async fn against_a_real_qemu() {
        // QEMU with QMP on a socket pair's peer: `-qmp stdio` would mix with other output, so
        // use a unix socket in a temp dir.
        let Ok(qemu) = which("qemu-system-x86_64") else {
            panic!("qemu-system-x86_64 is installed by scripts/setup.sh");
        };
        let dir = std::env::temp_dir().join(format!("berth-qmp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("qmp.sock");
        let mut child = tokio::process::Command::new(qemu)
            .args([
                "-machine",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-S",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut tries = 0;
        let qmp = loop {
            match Qmp::connect_unix(&sock).await {
                Ok(q) => break q,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let status = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "prelaunch");
        let err = qmp.execute("no-such-command", None).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        let mut ev = qmp.events();
        qmp.execute("quit", None).await.unwrap();
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), ev.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.event, "SHUTDOWN");
        let status = child.wait().await.unwrap();
        assert!(status.success());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn which(name: &str) -> Result<std::path::PathBuf, ()> {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| std::path::Path::new(d).join(name))
            .find(|p| p.exists())
            .ok_or(())
    }
}
