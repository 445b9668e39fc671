//! The routes under `/1.0`, each a request to an executor (see the crate's note).
//!
//! - `GET /1.0`: the server.
//! - `GET /1.0/instances`, `POST /1.0/instances` (an `InstanceCreate`).
//! - `GET /1.0/instances/NAME`, `PATCH` (an `InstanceSet`), `DELETE` (an `InstanceDelete`, or
//!   no body).
//! - `PUT /1.0/instances/NAME/state` (an `InstanceStateChange`).
//! - `GET /1.0/instances/NAME/logs?offset=N&max=N`: part of its console log (a `LogChunk`).
//! - `GET /1.0/instances/NAME/exec`, a websocket: a command's streams and exit ([`crate::exec`]).
//! - `GET /1.0/images`, `POST /1.0/images` (an `ImageBuild`), `GET /1.0/images/NAME`,
//!   `PUT` (an image archive: a tar of the disk and its kernel, see `berth_api::image`),
//!   `DELETE`.
//! - `GET /1.0/run`, a websocket: `berth run` (a new application container's command).
//! - `GET /1.0/instances/NAME/console`, a websocket: the console, both ways.
//! - `GET /1.0/events?type=operation,lifecycle`, a websocket: the event stream.
//! - `GET /1.0/openapi.json`: this API's OpenAPI 3.1 document ([`crate::openapi`]).
//! - `GET /1.0/metrics`: every instance in Prometheus' text format ([`crate::metrics`]).
//! - `GET /1.0/certificates` (trusted clients), `POST` (join with a token's secret: the only
//!   request but `GET /1.0` an untrusted HTTPS client may make), `DELETE /1.0/certificates/WHO`.
//! - `GET /1.0/operations`, `GET /1.0/operations/ID`, `DELETE` (cancel),
//!   `GET /1.0/operations/ID/wait?timeout=SECONDS`.
//!
//! Changes (create, state, set, delete, image build and import) answer 202 with an operation ([`crate::ops`]) once the
//! request has been read and checked; the operation tells how it ended.
//!
//! Every answer is a [`Response`] with the error's HTTP status; an unknown path is a 404 in the
//! same envelope.

pub(crate) mod copies;
mod documented;
pub(crate) mod images;
pub(crate) mod instances;
pub(crate) mod server;

use copies::*;
use images::*;
use instances::*;
use server::*;

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
        .route(
            "/1.0/instances/{name}",
            get(info).patch(set).delete(delete).put(instance_receive),
        )
        .route("/1.0/instances/{name}/export", get(instance_export))
        .route(
            "/1.0/instances/{name}/move",
            axum::routing::post(instance_move),
        )
        .route("/1.0/instances/{name}/state", put(change_state))
        .route("/1.0/instances/{name}/logs", get(logs))
        .route("/1.0/instances/{name}/exec", get(exec))
        .route("/1.0/instances/{name}/console", get(console))
        .route("/1.0/images", get(images).post(build))
        .route(
            "/1.0/images/{name}",
            get(image_info)
                .put(import)
                .delete(image_delete)
                // An upload is streamed to disk, within `images::UPLOAD_MAX`.
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/1.0/images/{name}/export", get(export))
        .route("/1.0/run", get(run))
        .route("/1.0/certificates", get(trusted_clients).post(join))
        .route("/1.0/metrics", get(metrics))
        .route("/1.0/events", get(events))
        .route("/1.0/openapi.json", get(openapi))
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

/// The API's OpenAPI 3.1 document.
async fn openapi() -> HttpResponse {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
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

async fn not_found() -> HttpResponse {
    answer::<()>(Err(Error::new(
        berth_api::ErrorKind::NotFound,
        "no such path in berth's API (see /1.0)",
    )))
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
            (
                "POST",
                "/1.0/images",
                r#"{"recipe":"debian-12","sise":1}"#,
                "sise",
            ),
            ("POST", "/1.0/images", r#"{"recipe":"fedora-40"}"#, "recipe"),
            (
                "POST",
                "/1.0/images",
                r#"{"recipe":"debian-12","size":1}"#,
                "size",
            ),
            (
                "POST",
                "/1.0/images",
                r#"{"recipe":"debian-12","name":"a/b"}"#,
                "name",
            ),
            ("PUT", "/1.0/images/a", "this is not a tar archive", "body"),
            ("PUT", "/1.0/images/a%20b", "", "name"),
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
        let (_, v) = call(&dirs, "GET", "/1.0/images", "").await;
        assert_eq!(v["metadata"], serde_json::json!([]));
        let left: Vec<_> = std::fs::read_dir(dirs.images()).unwrap().collect();
        assert!(left.is_empty(), "a refused upload left {left:?}");
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
            ("GET", "/1.0/images/web", ""),
            ("DELETE", "/1.0/images/web", ""),
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
