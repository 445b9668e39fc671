//! A client of `berth daemon`: the API's requests ([`berth_api`]) sent to a daemon and its
//! answers read back, operations followed to their end with their progress passed on as
//! events. Blocking (each call runs on a runtime of its own, on this thread), so the CLI uses
//! it where it would call the executor in-process.
//!
//! Transport: HTTP/1.1 over the daemon's unix socket (`unix:///var/lib/berth/berth.sock`).

mod copies;
mod exec;
mod images;
mod pipe;
mod transport;

use berth_api::{
    Error, Event, Instance, InstanceCreate, InstanceDelete, InstanceSet, InstanceStateChange,
    LogChunk, Operation, Response, ServerInfo,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

pub use exec::{window_size, RawMode, Streams};
pub use images::Upload;
pub use pipe::reader_of;
pub use transport::{client_identity, Endpoint};

/// How long one `/wait` call waits before the client looks for new progress.
const POLL: Duration = Duration::from_millis(500);

/// A daemon, as its client reaches it.
#[derive(Debug)]
pub struct Remote {
    endpoint: Endpoint,
    rt: tokio::runtime::Runtime,
}

/// A request's path segment: an instance name as the URL carries it. Names are checked by the
/// API (letters, digits, `-`), so they need no escaping; anything else is refused here too.
fn segment(name: &str) -> Result<&str, Error> {
    berth_api::check_name(name)?;
    Ok(name)
}

impl Remote {
    /// A client of the daemon at `endpoint`.
    pub fn new(endpoint: Endpoint) -> Result<Remote, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("starting the client's runtime: {e}")))?;
        Ok(Remote { endpoint, rt })
    }

    /// A client of the daemon on the unix socket `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Result<Remote, Error> {
        Remote::new(Endpoint::Unix(path.into()))
    }

    /// Where it reaches the daemon.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Send `METHOD path` with `body` (JSON), and the answer's envelope.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Response<T>, Error> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::internal(format!("writing the request to {path}: {e}")))?;
        let (status, answer) =
            self.rt
                .block_on(transport::send(&self.endpoint, method, path, bytes))?;
        self.envelope(method, path, status, &answer)
    }

    /// The envelope of the answer (HTTP `status`, body `answer`) to `METHOD path`.
    fn envelope<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        status: u16,
        answer: &[u8],
    ) -> Result<Response<T>, Error> {
        serde_json::from_slice::<Response<T>>(answer).map_err(|e| {
            Error::internal(format!(
                "{} answered {method} {path} with HTTP {status} and a body berth cannot read \
                 ({e}): {}",
                self.endpoint,
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ))
        })
    }

    fn sync<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        self.call(method, path, body)?.into_result()
    }

    /// Send a changing request: the operation it begins.
    fn begin(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Operation, Error> {
        let answer = self.call::<serde_json::Value>(method, path, body)?;
        self.begun(method, path, answer)
    }

    /// The operation `answer` (to `METHOD path`) says began, or its error.
    fn begun(
        &self,
        method: &str,
        path: &str,
        answer: Response<serde_json::Value>,
    ) -> Result<Operation, Error> {
        match answer {
            Response::Async { metadata, .. } => Ok(*metadata),
            Response::Error { error, .. } => Err(error),
            Response::Sync { .. } => Err(Error::internal(format!(
                "{} answered {method} {path} at once where an operation was expected",
                self.endpoint
            ))),
        }
    }

    /// Send a changing request and follow the operation it begins to its end, passing its
    /// progress to `events`.
    fn operate(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Option<Instance>, Error> {
        let op = self.begin(method, path, body)?;
        self.follow(op, events)?.outcome()
    }

    /// Wait for `op` to end, passing on each progress event once.
    pub fn follow(
        &self,
        mut op: Operation,
        events: &mut dyn FnMut(Event),
    ) -> Result<Operation, Error> {
        let mut seen = 0;
        loop {
            for ev in op.events.iter().skip(seen) {
                events(ev.clone());
            }
            seen = op.events.len();
            if op.status.is_final() {
                return Ok(op);
            }
            let path = format!(
                "/1.0/operations/{}/wait?timeout={}",
                op.id,
                POLL.as_secs_f64()
            );
            op = self.sync("GET", &path, None::<&()>)?;
        }
    }

    /// What the server says of itself.
    pub fn server(&self) -> Result<ServerInfo, Error> {
        self.sync("GET", "/1.0", None::<&()>)
    }

    /// Every instance.
    pub fn list(&self) -> Result<Vec<Instance>, Error> {
        self.sync("GET", "/1.0/instances", None::<&()>)
    }

    /// One instance, with live usage.
    pub fn info(&self, name: &str) -> Result<Instance, Error> {
        self.sync(
            "GET",
            &format!("/1.0/instances/{}", segment(name)?),
            None::<&()>,
        )
    }

    /// Make and start an instance.
    pub fn create(
        &self,
        r: &InstanceCreate,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        segment(&r.name)?;
        self.operate("POST", "/1.0/instances", Some(r), events)?
            .ok_or_else(|| {
                Error::internal(format!(
                    "{} created {} but did not say what it made",
                    self.endpoint, r.name
                ))
            })
    }

    /// Change an instance's state.
    pub fn change_state(
        &self,
        name: &str,
        r: &InstanceStateChange,
        events: &mut dyn FnMut(Event),
    ) -> Result<(), Error> {
        let path = format!("/1.0/instances/{}/state", segment(name)?);
        self.operate("PUT", &path, Some(r), events).map(|_| ())
    }

    /// Delete an instance.
    pub fn delete(&self, name: &str, r: &InstanceDelete) -> Result<(), Error> {
        let path = format!("/1.0/instances/{}", segment(name)?);
        self.operate("DELETE", &path, Some(r), &mut |_| {})
            .map(|_| ())
    }

    /// Change a container's limits.
    pub fn set(&self, name: &str, r: &InstanceSet) -> Result<(), Error> {
        let path = format!("/1.0/instances/{}", segment(name)?);
        self.operate("PATCH", &path, Some(r), &mut |_| {})
            .map(|_| ())
    }

    /// Part of an instance's console log from `offset`.
    pub fn console_log(&self, name: &str, offset: u64) -> Result<LogChunk, Error> {
        let path = format!("/1.0/instances/{}/logs?offset={offset}", segment(name)?);
        self.sync("GET", &path, None::<&()>)
    }

    /// Run a command in an instance with `streams` as its standard streams; its exit.
    pub fn exec(
        &self,
        name: &str,
        r: &berth_api::InstanceExec,
        streams: Streams<'_>,
    ) -> Result<berth_api::ExecExit, Error> {
        let path = format!("/1.0/instances/{}/exec", segment(name)?);
        let start = berth_api::StreamControl::Start {
            exec: r.clone(),
            window: r.interactive.then(exec::window_size).flatten(),
        };
        self.rt
            .block_on(exec::command(&self.endpoint, &path, &start, streams))
    }

    /// Run a command in a new application container with `streams` as its standard streams;
    /// its exit.
    pub fn run(
        &self,
        r: &berth_api::InstanceRun,
        streams: Streams<'_>,
    ) -> Result<berth_api::ExecExit, Error> {
        if let Some(n) = &r.name {
            segment(n)?;
        }
        let start = berth_api::StreamControl::Run { run: r.clone() };
        self.rt
            .block_on(exec::command(&self.endpoint, "/1.0/run", &start, streams))
    }

    /// An instance's console: a local stream relayed to it (by a thread of this client).
    pub fn console(&self, name: &str) -> Result<std::os::unix::net::UnixStream, Error> {
        exec::console(&self.endpoint, segment(name)?)
    }

    /// Join the daemon with a token's `secret`: it trusts this client's certificate from now on.
    pub fn join(&self, secret: &str) -> Result<berth_api::TrustedClient, Error> {
        let add = berth_api::TrustAdd {
            secret: secret.to_string(),
        };
        self.sync("POST", "/1.0/certificates", Some(&add))
    }

    /// Follow the daemon's events (of `types`, or all), handing each to `f` until it answers
    /// false.
    pub fn monitor(
        &self,
        types: &[String],
        f: &mut dyn FnMut(berth_api::DaemonEvent) -> bool,
    ) -> Result<(), Error> {
        for t in types {
            if !t.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(Error::invalid(
                    "type",
                    format!("{t:?} is not an event type"),
                ));
            }
        }
        let path = if types.is_empty() {
            "/1.0/events".to_string()
        } else {
            format!("/1.0/events?type={}", types.join(","))
        };
        self.rt.block_on(exec::monitor(&self.endpoint, &path, f))
    }

    /// An operation as it is now.
    pub fn operation(&self, id: &str) -> Result<Operation, Error> {
        self.sync("GET", &format!("/1.0/operations/{id}"), None::<&()>)
    }
}
