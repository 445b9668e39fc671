//! The routes under `/1.0`, each a request to an executor (see the crate's note).
//!
//! - `GET /1.0`: the server.
//! - `GET /1.0/instances`, `POST /1.0/instances` (an `InstanceCreate`).
//! - `GET /1.0/instances/NAME`, `PATCH` (an `InstanceSet`), `DELETE` (an `InstanceDelete`, or
//!   no body).
//! - `PUT /1.0/instances/NAME/state` (an `InstanceStateChange`).
//!
//! Every answer is a [`Response`] with the error's HTTP status; an unknown path is a 404 in the
//! same envelope.

use crate::body;
use crate::worker::{self, Job};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, put};
use axum::Router;
use berth_api::{
    check_name, Error, InstanceCreate, InstanceDelete, InstanceSet, InstanceStateChange, Response,
    ServerInfo,
};
use berth_host::dirs::Dirs;
use berth_host::executor::Executor;
use serde::Serialize;
use std::path::PathBuf;

/// What every route has: the data dir, and the program that runs a changing request
/// ([`crate::worker`]).
#[derive(Debug, Clone)]
pub struct Host {
    dirs: Dirs,
    worker: PathBuf,
}

/// The API's router for the data dir `dirs`; changes run in `worker daemon-worker` processes
/// (berth's own binary).
pub fn router(dirs: Dirs, worker: PathBuf) -> Router {
    Router::new()
        .route("/1.0", get(server))
        .route("/1.0/instances", get(list).post(create))
        .route("/1.0/instances/{name}", get(info).patch(set).delete(delete))
        .route("/1.0/instances/{name}/state", put(change_state))
        .fallback(not_found)
        // Bodies are read whole and capped in `body::parse`; past the transport's cap (just
        // above it) the rejection is turned into the API's 400 by `read`.
        .layer(axum::extract::DefaultBodyLimit::max(body::MAX_BODY + 1))
        .with_state(Host { dirs, worker })
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

/// Run a changing request in a worker process. One on a named instance is answered here when
/// there is no such instance.
async fn in_worker(host: Host, job: Job) -> HttpResponse {
    let r = tokio::task::spawn_blocking(move || {
        let named = match &job {
            Job::Create { .. } => None,
            Job::ChangeState { name, .. } | Job::Delete { name, .. } | Job::Set { name, .. } => {
                Some(name.clone())
            }
        };
        if let Some(n) = named {
            Executor::open(&host.dirs)?.type_of(&n)?;
        }
        worker::perform(&host.worker, &host.dirs, &job)
    })
    .await
    .unwrap_or_else(|e| Err(Error::internal(format!("the request's worker failed: {e}"))));
    answer(r)
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

async fn server() -> HttpResponse {
    answer(Ok(ServerInfo {
        api_version: "1.0".into(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        hostname: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    }))
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
    async fn an_unknown_instance_is_a_404() {
        let (_d, dirs) = dirs();
        for (method, uri, body) in [
            ("GET", "/1.0/instances/web", ""),
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
