//! The routes under `/1.0`, each a request to an executor (see the crate's note).
//!
//! - `GET /1.0`: the server.
//! - `GET /1.0/instances`, `POST /1.0/instances` (an `InstanceCreate`).
//! - `GET /1.0/instances/NAME`, `PATCH` (an `InstanceSet`), `DELETE` (an `InstanceDelete`, or
//!   no body).
//! - `PUT /1.0/instances/NAME/state` (an `InstanceStateChange`).
//! - `GET /1.0/instances/NAME/logs?offset=N&max=N`: part of its console log (a `LogChunk`).
//! - `GET /1.0/instances/NAME/exec`, a websocket: a command's streams and exit ([`crate::exec`]).
//! - `GET /1.0/run`, a websocket: `berth run` (a new application container's command).
//! - `GET /1.0/instances/NAME/console`, a websocket: the console, both ways.
//! - `GET /1.0/events?type=operation,lifecycle`, a websocket: the event stream.
//! - `GET /1.0/metrics`: every instance in Prometheus' text format ([`crate::metrics`]).
//! - `GET /1.0/certificates` (trusted clients), `POST` (join with a token's secret: the only
//!   request but `GET /1.0` an untrusted HTTPS client may make), `DELETE /1.0/certificates/WHO`.
//! - `GET /1.0/operations`, `GET /1.0/operations/ID`, `DELETE` (cancel),
//!   `GET /1.0/operations/ID/wait?timeout=SECONDS`.
//!
//! Changes (create, state, set, delete) answer 202 with an operation ([`crate::ops`]) once the
//! request has been read and checked; the operation tells how it ended.
//!
//! Every answer is a [`Response`] with the error's HTTP status; an unknown path is a 404 in the
//! same envelope.

use crate::body;
use crate::https::Peer;
use crate::ops::Operations;
use crate::worker::{self, Job};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, put};
use axum::Router;
use berth_api::{
    check_name, Error, InstanceCreate, InstanceDelete, InstanceSet, InstanceStateChange, Response,
    ServerInfo, TrustAdd,
};
use berth_host::dirs::Dirs;
use berth_host::executor::Executor;
use serde::Serialize;
use std::path::PathBuf;

/// What every route has: the data dir, and the program that runs a changing request
/// ([`crate::worker`]).
#[derive(Debug, Clone)]
pub struct Host {
    pub(crate) dirs: Dirs,
    pub(crate) worker: PathBuf,
    ops: Operations,
}

/// The API's router for the data dir `dirs`; changes run in `worker daemon-worker` processes
/// (berth's own binary).
pub fn router(dirs: Dirs, worker: PathBuf) -> Router {
    Router::new()
        .route("/1.0", get(server))
        .route("/1.0/instances", get(list).post(create))
        .route("/1.0/instances/{name}", get(info).patch(set).delete(delete))
        .route("/1.0/instances/{name}/state", put(change_state))
        .route("/1.0/instances/{name}/logs", get(logs))
        .route("/1.0/instances/{name}/exec", get(exec))
        .route("/1.0/instances/{name}/console", get(console))
        .route("/1.0/run", get(run))
        .route("/1.0/certificates", get(trusted_clients).post(join))
        .route("/1.0/metrics", get(metrics))
        .route("/1.0/events", get(events))
        .route(
            "/1.0/certificates/{who}",
            axum::routing::delete(not_trusted_any_more),
        )
        .route("/1.0/operations", get(operations))
        .route("/1.0/operations/{id}", get(operation).delete(cancel))
        .route("/1.0/operations/{id}/wait", get(wait))
        .fallback(not_found)
        // Bodies are read whole and capped in `body::parse`; past the transport's cap (just
        // above it) the rejection is turned into the API's 400 by `read`.
        .layer(axum::extract::DefaultBodyLimit::max(body::MAX_BODY + 1))
        .with_state(Host {
            dirs,
            worker,
            ops: Operations::default(),
        })
}

/// An error in the API's envelope, with its kind's status.
pub fn answer_error(e: Error) -> HttpResponse {
    answer::<()>(Err(e))
}

/// An answer in the API's envelope.
fn answer<T: Serialize>(r: Result<T, Error>) -> HttpResponse {
    match r {
        Ok(v) => (StatusCode::OK, axum::Json(Response::ok(v))).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.kind.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(Response::<()>::error(e))).into_response()
        }
    }
}

/// Run `f` with an executor of its own on a blocking thread.
async fn perform<T, F>(dirs: Dirs, f: F) -> HttpResponse
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Executor) -> Result<T, Error> + Send + 'static,
{
    let r = tokio::task::spawn_blocking(move || f(&Executor::open(&dirs)?))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("the request's worker failed: {e}"))));
    answer(r)
}

impl Job {
    /// The instance it is about.
    fn instance(&self) -> &str {
        match self {
            Job::Create { create } => &create.name,
            Job::ChangeState { name, .. }
            | Job::Delete { name, .. }
            | Job::Set { name, .. }
            | Job::Exec { name, .. } => name,
            Job::Run { run } => run.name.as_deref().unwrap_or("(new)"),
        }
    }

    /// What it does, in words.
    fn description(&self) -> String {
        let n = self.instance();
        match self {
            Job::Create { .. } => format!("creating instance {n}"),
            Job::ChangeState { change, .. } => format!("{} instance {n}", change.action),
            Job::Delete { .. } => format!("deleting instance {n}"),
            Job::Set { .. } => format!("changing the limits of instance {n}"),
            Job::Exec { .. } => format!("running a command in instance {n}"),
            Job::Run { .. } => format!("running a command in a new container {n}"),
        }
    }
}

/// Check a changing request against the host as it is (no such instance; a create of a name
/// that is taken), so that these are answered at once; races between requests are settled by
/// the executor's locks in the worker.
fn precheck(dirs: &Dirs, job: &Job) -> Result<(), Error> {
    let ex = Executor::open(dirs)?;
    match job {
        Job::Create { create } => match ex.type_of(&create.name) {
            Ok(_) => Err(Error::conflict(format!(
                "an instance named {:?} already exists",
                create.name
            ))),
            Err(e) if e.kind == berth_api::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
        _ => ex.type_of(job.instance()).map(|_| ()),
    }
}

/// Begin a changing request as an operation run by a worker process, and answer with the
/// operation (202). A cancelled create is undone: what it left is deleted.
async fn in_worker(host: Host, job: Job) -> HttpResponse {
    let (dirs, checked) = (host.dirs.clone(), job.clone());
    let pre = tokio::task::spawn_blocking(move || precheck(&dirs, &checked))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("checking the request failed: {e}"))));
    if let Err(e) = pre {
        return answer::<()>(Err(e));
    }
    let may_cancel = matches!(job, Job::Create { .. });
    let op = host.ops.begin(
        job.description(),
        vec![format!("/1.0/instances/{}", job.instance())],
        may_cancel,
    );
    let id = op.id.clone();
    tokio::task::spawn_blocking(move || {
        let ops = host.ops.clone();
        let r = worker::perform(
            &host.worker,
            &host.dirs,
            &job,
            &mut |pid| ops.running_in(&id, pid),
            &mut |ev| ops.progress(&id, ev),
        );
        if ops.is_cancelled(&id) {
            if let Job::Create { create } = &job {
                undo_create(&host, &create.name);
            }
        }
        // Deletes and limit changes say nothing of themselves on the way: their end is the
        // lifecycle event.
        let done = match &job {
            Job::Delete { .. } => Some("deleted"),
            Job::Set { .. } => Some("updated"),
            _ => None,
        };
        if let (Some(message), Ok(_)) = (done, &r) {
            ops.lifecycle(berth_api::Event {
                kind: berth_api::EventKind::Lifecycle,
                instance: job.instance().to_string(),
                message: message.into(),
                elapsed_ms: 0,
            });
        }
        let r = r.and_then(|v| match job {
            Job::Create { .. } => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| Error::internal(format!("the worker's instance: {e}"))),
            _ => Ok(None),
        });
        ops.finish(&id, r);
    });
    (
        StatusCode::ACCEPTED,
        axum::Json(Response::<()>::operation(op)),
    )
        .into_response()
}

/// Delete what a cancelled create of `name` left, if anything.
fn undo_create(host: &Host, name: &str) {
    let exists = Executor::open(&host.dirs)
        .and_then(|ex| ex.type_of(name))
        .is_ok();
    if !exists {
        return;
    }
    let job = Job::Delete {
        name: name.to_string(),
        delete: InstanceDelete { force: true },
    };
    if let Err(e) = worker::perform(&host.worker, &host.dirs, &job, &mut |_| false, &mut |_| {}) {
        tracing::warn!("undoing the cancelled create of {name}: {e}");
    }
}

/// `offset` and `max` of a log request (numbers of bytes).
fn log_range(query: Option<&str>) -> Result<(u64, u64), Error> {
    let (mut offset, mut max) = (0, berth_host::executor::LOG_CHUNK_MAX);
    for (k, v) in params(query, &["offset", "max"], "/logs")? {
        let n = v
            .parse::<u64>()
            .map_err(|_| Error::invalid(k, format!("{k} {v:?} is not a number of bytes")))?;
        if k == "offset" {
            offset = n;
        } else {
            max = n;
        }
    }
    Ok((offset, max))
}

async fn logs(
    State(host): State<Host>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> HttpResponse {
    match name(&raw).and_then(|n| Ok((n, log_range(query.as_deref())?))) {
        Ok((n, (offset, max))) => {
            perform(host.dirs, move |ex| ex.console_log(&n, offset, max)).await
        }
        Err(e) => answer::<()>(Err(e)),
    }
}

/// A websocket route's answer: the upgrade, or why there is none (the API's error).
fn upgrade<F, Fut>(ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>, f: F) -> HttpResponse
where
    F: FnOnce(axum::extract::ws::WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match ws {
        Ok(ws) => ws.on_upgrade(f),
        Err(e) => answer::<()>(Err(Error::invalid(
            "upgrade",
            format!("this is a websocket (GET with Upgrade: websocket): {e}"),
        ))),
    }
}

/// The instance `raw` names, checked to exist.
async fn existing(host: &Host, raw: &str) -> Result<String, Error> {
    let n = name(raw)?;
    let (dirs, checked) = (host.dirs.clone(), n.clone());
    tokio::task::spawn_blocking(move || Executor::open(&dirs)?.type_of(&checked))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("checking the request failed: {e}"))))?;
    Ok(n)
}

async fn exec(
    State(host): State<Host>,
    Path(raw): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HttpResponse {
    match existing(&host, &raw).await {
        Ok(n) => upgrade(ws, move |socket| {
            crate::exec::serve(host, crate::exec::Serve::Exec(n), socket)
        }),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn run(
    State(host): State<Host>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HttpResponse {
    upgrade(ws, move |socket| {
        crate::exec::serve(host, crate::exec::Serve::Run, socket)
    })
}

async fn console(
    State(host): State<Host>,
    Path(raw): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HttpResponse {
    let n = match name(&raw) {
        Ok(n) => n,
        Err(e) => return answer::<()>(Err(e)),
    };
    // Connected before the upgrade, so that a console that is not there is the API's error.
    let dirs = host.dirs.clone();
    let conn = tokio::task::spawn_blocking(move || Executor::open(&dirs)?.console(&n))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("opening the console failed: {e}"))));
    match conn {
        Ok(c) => upgrade(ws, move |socket| crate::exec::console(c, socket)),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn operations(State(host): State<Host>) -> HttpResponse {
    answer(Ok(host.ops.list()))
}

async fn operation(State(host): State<Host>, Path(id): Path<String>) -> HttpResponse {
    answer(host.ops.get(&id))
}

/// A query's `key=value` pairs, each key one of `known` (`what` names the route for the error).
fn params<'a>(
    query: Option<&'a str>,
    known: &[&str],
    what: &str,
) -> Result<Vec<(&'a str, &'a str)>, Error> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&k) {
            return Err(Error::invalid(
                k,
                format!("{k:?} is not a parameter of {what} ({})", known.join(", ")),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// `?timeout=SECONDS` (a number, fractions allowed; none or negative: until it ends).
fn timeout_of(query: Option<&str>) -> Result<Option<std::time::Duration>, Error> {
    let mut timeout = None;
    for (_, v) in params(query, &["timeout"], "/wait")? {
        let secs: f64 = v.parse().map_err(|_| {
            Error::invalid(
                "timeout",
                format!("timeout {v:?} is not a number of seconds"),
            )
        })?;
        timeout = (secs.is_finite() && secs >= 0.0)
            .then(|| std::time::Duration::from_secs_f64(secs.min(86_400.0)));
    }
    Ok(timeout)
}

async fn wait(
    State(host): State<Host>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> HttpResponse {
    match timeout_of(query.as_deref()) {
        Ok(t) => answer(host.ops.wait(&id, t).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn cancel(State(host): State<Host>, Path(id): Path<String>) -> HttpResponse {
    match host.ops.cancel(&id) {
        Ok(pid) => {
            if let Some(pid) = pid {
                worker::terminate(pid);
            }
            answer(host.ops.get(&id))
        }
        Err(e) => answer::<()>(Err(e)),
    }
}

/// The body as read, or why it could not be (larger than the transport's cap: the API's 400).
fn read(b: Result<Bytes, BytesRejection>) -> Result<Bytes, Error> {
    b.map_err(|e| {
        Error::invalid(
            "body",
            format!(
                "the request body could not be read ({e}); berth reads at most {} bytes",
                body::MAX_BODY
            ),
        )
    })
}

/// A name from the path, checked before anything else (it cannot leave the data dir).
fn name(raw: &str) -> Result<String, Error> {
    check_name(raw)?;
    Ok(raw.to_string())
}

/// Who asks (none: a test's oneshot, taken as the unix socket).
fn peer_of(p: Option<Extension<Peer>>) -> Peer {
    p.map_or(Peer::Unix, |Extension(p)| p)
}

async fn server(peer: Option<Extension<Peer>>) -> HttpResponse {
    let peer = peer_of(peer);
    answer(Ok(ServerInfo {
        api_version: "1.0".into(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        hostname: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        auth: if peer.trusted() {
            "trusted"
        } else {
            "untrusted"
        }
        .into(),
        fingerprint: match peer {
            Peer::Tls { server, .. } => Some(server),
            Peer::Unix => None,
        },
    }))
}

/// `POST /1.0/certificates`: join with a token, trusting this connection's certificate.
async fn join(
    State(host): State<Host>,
    peer: Option<Extension<Peer>>,
    bytes: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let r = read(bytes).and_then(|b| body::parse::<TrustAdd>(&b, None));
    let add = match r {
        Ok(a) => a,
        Err(e) => return answer::<()>(Err(e)),
    };
    let Peer::Tls {
        fingerprint: Some(fp),
        ..
    } = peer_of(peer)
    else {
        return answer::<()>(Err(Error::invalid(
            "certificate",
            "joining needs HTTPS with a client certificate (the unix socket is trusted already)",
        )));
    };
    let dirs = host.dirs.clone();
    let r = tokio::task::spawn_blocking(move || crate::trust::join(&dirs, &add.secret, &fp))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("joining failed: {e}"))));
    answer(r)
}

/// `GET /1.0/events?type=operation,lifecycle`: the event stream as a websocket of JSON text
/// frames (every type when none is named).
async fn events(
    State(host): State<Host>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HttpResponse {
    let mut wanted = Vec::new();
    match params(query.as_deref(), &["type"], "/1.0/events") {
        Ok(ps) => {
            for (_, v) in ps {
                for t in v.split(',').filter(|t| !t.is_empty()) {
                    if !["operation", "lifecycle"].contains(&t) {
                        return answer_error(Error::invalid(
                            "type",
                            format!("{t:?} is not an event type (operation, lifecycle)"),
                        ));
                    }
                    wanted.push(t.to_string());
                }
            }
        }
        Err(e) => return answer_error(e),
    }
    let mut rx = host.ops.subscribe();
    upgrade(ws, move |mut socket| async move {
        use axum::extract::ws::Message;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if !wanted.is_empty() && !wanted.iter().any(|w| w == ev.type_name()) {
                            continue;
                        }
                        let Ok(text) = serde_json::to_string(&ev) else { continue };
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    // A listener that fell behind misses what it could not take, and goes on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!("an events listener missed {n} events");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                m = socket.recv() => match m {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    })
}

/// Every instance with its live usage, in Prometheus' text format.
async fn metrics(State(host): State<Host>) -> HttpResponse {
    let dirs = host.dirs.clone();
    let r = tokio::task::spawn_blocking(move || {
        let ex = Executor::open(&dirs)?;
        let all = ex.list()?;
        // Usage is read live, one instance at a time; one that went meanwhile is left out.
        Ok::<_, Error>(
            all.into_iter()
                .filter_map(|i| match ex.info(&i.name) {
                    Ok(live) => Some(live),
                    Err(e) if e.kind == berth_api::ErrorKind::NotFound => None,
                    Err(_) => Some(i),
                })
                .collect::<Vec<_>>(),
        )
    })
    .await
    .unwrap_or_else(|e| Err(Error::internal(format!("reading the metrics failed: {e}"))));
    match r {
        Ok(all) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::render(&all),
        )
            .into_response(),
        Err(e) => answer_error(e),
    }
}

async fn trusted_clients(State(host): State<Host>) -> HttpResponse {
    answer(crate::trust::list(&host.dirs))
}

async fn not_trusted_any_more(State(host): State<Host>, Path(who): Path<String>) -> HttpResponse {
    let dirs = host.dirs.clone();
    answer(
        tokio::task::spawn_blocking(move || crate::trust::remove(&dirs, &who))
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("removing failed: {e}")))),
    )
}

async fn not_found() -> HttpResponse {
    answer::<()>(Err(Error::new(
        berth_api::ErrorKind::NotFound,
        "no such path in berth's API (see /1.0)",
    )))
}

async fn list(State(host): State<Host>) -> HttpResponse {
    perform(host.dirs, |ex| ex.list()).await
}

async fn info(State(host): State<Host>, Path(raw): Path<String>) -> HttpResponse {
    match name(&raw) {
        Ok(n) => perform(host.dirs, move |ex| ex.info(&n)).await,
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn create(State(host): State<Host>, bytes: Result<Bytes, BytesRejection>) -> HttpResponse {
    match read(bytes).and_then(|b| body::parse::<InstanceCreate>(&b, None)) {
        Ok(create) => {
            if let Err(e) = create.check() {
                return answer::<()>(Err(e));
            }
            in_worker(host, Job::Create { create }).await
        }
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn change_state(
    State(host): State<Host>,
    Path(raw): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let parsed =
        name(&raw).and_then(|n| Ok((n, body::parse::<InstanceStateChange>(&read(bytes)?, None)?)));
    match parsed {
        Ok((name, change)) => in_worker(host, Job::ChangeState { name, change }).await,
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn set(
    State(host): State<Host>,
    Path(raw): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let parsed = name(&raw).and_then(|n| Ok((n, body::parse::<InstanceSet>(&read(bytes)?, None)?)));
    match parsed {
        Ok((name, set)) => in_worker(host, Job::Set { name, set }).await,
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn delete(
    State(host): State<Host>,
    Path(raw): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let parsed = name(&raw).and_then(|n| {
        Ok((
            n,
            body::parse::<InstanceDelete>(&read(bytes)?, Some(InstanceDelete::default()))?,
        ))
    });
    match parsed {
        Ok((name, delete)) => in_worker(host, Job::Delete { name, delete }).await,
        Err(e) => answer::<()>(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(dirs: &Dirs, method: &str, uri: &str, body: &str) -> (u16, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .unwrap();
        // No request in these tests gets as far as a worker.
        let res = router(dirs.clone(), "/nonexistent/berth".into())
            .oneshot(req)
            .await
            .unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn dirs() -> (tempfile::TempDir, Dirs) {
        let d = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            root: d.path().to_path_buf(),
        };
        (d, dirs)
    }

    #[tokio::test]
    async fn the_server_and_an_empty_host_answer_in_the_envelope() {
        let (_d, dirs) = dirs();
        let (s, v) = call(&dirs, "GET", "/1.0", "").await;
        assert_eq!((s, v["type"].as_str()), (200, Some("sync")));
        assert_eq!(v["metadata"]["api_version"], "1.0");
        let (s, v) = call(&dirs, "GET", "/1.0/instances", "").await;
        assert_eq!((s, &v["metadata"]), (200, &serde_json::json!([])));
        let (s, v) = call(&dirs, "GET", "/1.0/nothing", "").await;
        assert_eq!((s, v["type"].as_str()), (404, Some("error")));
    }

    #[tokio::test]
    async fn bad_requests_get_a_400_naming_the_field_and_change_nothing() {
        let (_d, dirs) = dirs();
        let cases = [
            (
                "POST",
                "/1.0/instances",
                r#"{"name":"a","image":"i","type":"vm","cpu":2}"#,
                "cpu",
            ),
            (
                "POST",
                "/1.0/instances",
                r#"{"name":"a","image":"i","type":"vm","vm":{"cpus":"x"}}"#,
                "vm.cpus",
            ),
            (
                "POST",
                "/1.0/instances",
                r#"{"name":"../a","image":"i","type":"vm"}"#,
                "name",
            ),
            (
                "POST",
                "/1.0/instances",
                r#"{"name":"a","image":"i","type":"vm","disk":18446744073709551615}"#,
                "disk",
            ),
            ("GET", "/1.0/instances/..%2Fetc", "", "name"),
            ("GET", "/1.0/instances/a/logs?offset=-1", "", "offset"),
            ("GET", "/1.0/instances/a/logs?colour=1", "", "colour"),
            (
                "PUT",
                "/1.0/instances/a/state",
                r#"{"action":"explode"}"#,
                "action",
            ),
            (
                "PATCH",
                "/1.0/instances/a",
                r#"{"limits":"memory=1G"}"#,
                "limits",
            ),
        ];
        for (method, uri, body, field) in cases {
            let (s, v) = call(&dirs, method, uri, body).await;
            assert_eq!(s, 400, "{method} {uri} {body}: {v}");
            assert_eq!(v["error"]["field"], field, "{method} {uri} {body}: {v}");
        }
        let big = format!(
            r#"{{"name":"a","image":"i","type":"vm","cloud_init":"{}"}}"#,
            "x".repeat(body::MAX_BODY)
        );
        let (s, v) = call(&dirs, "POST", "/1.0/instances", &big).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (400, Some("body")),
            "{v}"
        );
        let (_, v) = call(&dirs, "GET", "/1.0/instances", "").await;
        assert_eq!(v["metadata"], serde_json::json!([]));
        assert!(!dirs.root.join("instances").exists());
    }

    #[tokio::test]
    async fn a_change_is_an_operation_that_tells_how_it_ended() {
        let (_d, dirs) = dirs();
        let app = router(dirs.clone(), "/nonexistent/berth".into());
        let send = |method: &str, uri: &str, body: &str| {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(body.to_string()))
                .unwrap();
            let app = app.clone();
            async move {
                let res = app.oneshot(req).await.unwrap();
                let status = res.status().as_u16();
                let bytes = res.into_body().collect().await.unwrap().to_bytes();
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
                )
            }
        };
        let (s, v) = send(
            "POST",
            "/1.0/instances",
            r#"{"name":"web","image":"debian-12","type":"container"}"#,
        )
        .await;
        assert_eq!((s, v["type"].as_str()), (202, Some("async")), "{v}");
        let url = v["operation"].as_str().unwrap().to_string();
        assert_eq!(v["metadata"]["resources"][0], "/1.0/instances/web");
        assert_eq!(v["metadata"]["description"], "creating instance web");
        // This router's worker program does not exist: the operation fails, saying so.
        let (s, v) = send("GET", &format!("{url}/wait?timeout=30"), "").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["metadata"]["status"], "failure", "{v}");
        assert!(v["metadata"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/berth"));
        let (_, v) = send("GET", "/1.0/operations", "").await;
        assert_eq!(v["metadata"].as_array().unwrap().len(), 1);
        // It has ended: it cannot be cancelled.
        let (s, _) = send("DELETE", &url, "").await;
        assert_eq!(s, 409);
        let (s, v) = send("GET", &format!("{url}/wait?timeout=soon"), "").await;
        assert_eq!((s, v["error"]["field"].as_str()), (400, Some("timeout")));
        let (s, _) = send("GET", "/1.0/operations/nope/wait", "").await;
        assert_eq!(s, 404);
    }

    #[tokio::test]
    async fn an_unknown_instance_is_a_404() {
        let (_d, dirs) = dirs();
        for (method, uri, body) in [
            ("GET", "/1.0/instances/web", ""),
            ("GET", "/1.0/instances/web/logs?offset=0", ""),
            ("DELETE", "/1.0/instances/web", ""),
            ("PUT", "/1.0/instances/web/state", r#"{"action":"stop"}"#),
            ("PATCH", "/1.0/instances/web", r#"{"limits":["memory=1G"]}"#),
        ] {
            let (s, v) = call(&dirs, method, uri, body).await;
            assert_eq!(
                (s, v["error"]["kind"].as_str()),
                (404, Some("not_found")),
                "{method} {uri}: {v}"
            );
        }
    }
}
