//! The instance routes: list, info, create, state, set, delete, the console log, and the exec,
//! run and console websockets. Changes run as operations in worker processes.

use super::*;
use crate::ops::Made;
use berth_api::{Instance, LogChunk};

/// Check a changing request against the host as it is (no such instance; a create of a name
/// that is taken), so that these are answered at once; races between requests are settled by
/// the executor's locks in the worker.
pub(super) fn precheck(dirs: &Dirs, job: &Job) -> Result<(), Error> {
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
        Job::InstanceReceive { name, .. } => match ex.type_of(name) {
            Ok(_) => Err(Error::conflict(format!(
                "an instance named {name:?} already exists"
            ))),
            Err(e) if e.kind == berth_api::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
        Job::ImageBuild { .. } => Ok(()),
        Job::ImageImport { name, .. } => match ex.image(name) {
            Ok(_) => Err(Error::conflict(format!(
                "an image named {name:?} already exists"
            ))),
            Err(e) if e.kind == berth_api::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
        _ => ex.type_of(job.instance()).map(|_| ()),
    }
}

/// Begin a changing request as an operation run by a worker process, and answer with the
/// operation (202). A cancelled create is undone: what it left is deleted.
pub(super) async fn in_worker(host: Host, job: Job) -> HttpResponse {
    let (dirs, checked) = (host.dirs.clone(), job.clone());
    let pre = tokio::task::spawn_blocking(move || precheck(&dirs, &checked))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("checking the request failed: {e}"))));
    if let Err(e) = pre {
        return answer::<()>(Err(e));
    }
    let may_cancel = matches!(
        job,
        Job::Create { .. } | Job::ImageBuild { .. } | Job::ImageImport { .. }
    );
    let op = host
        .ops
        .begin(job.description(), vec![job.resource()], may_cancel);
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
        if let Job::InstanceReceive { upload, .. } = &job {
            // What a killed worker left of the received archive.
            let _ = std::fs::remove_dir_all(upload);
        }
        if job.is_image() {
            // What a cancelled (killed) build or import left, and an upload not taken.
            if let Job::ImageImport { upload, .. } = &job {
                let _ = std::fs::remove_dir_all(upload);
            }
            berth_host::images::Store::new(&host.dirs).sweep();
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
            Job::Create { .. } | Job::InstanceReceive { .. } => serde_json::from_value(v)
                .map(|i| Made::Instance(Box::new(i)))
                .map_err(|e| Error::internal(format!("the worker's instance: {e}"))),
            Job::ImageBuild { .. } | Job::ImageImport { .. } => serde_json::from_value(v)
                .map(|i| Made::Image(Box::new(i)))
                .map_err(|e| Error::internal(format!("the worker's image: {e}"))),
            _ => Ok(Made::Nothing),
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

#[utoipa::path(get, path = "/1.0/instances/{name}/logs", tag = "instances",
    params(("name" = String, Path, description = "The instance"), ("offset" = Option<u64>, Query, description = "Byte offset"),
        ("max" = Option<u64>, Query, description = "At most this many bytes (1 MiB cap)")),
    responses((status = 200, description = "Part of the console log", body = Response<LogChunk>), documented::NoInstance, documented::Refused))]
pub(super) async fn logs(
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

/// The instance `raw` names, checked to exist.
pub(super) async fn existing(host: &Host, raw: &str) -> Result<String, Error> {
    let n = name(raw)?;
    let (dirs, checked) = (host.dirs.clone(), n.clone());
    tokio::task::spawn_blocking(move || Executor::open(&dirs)?.type_of(&checked))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("checking the request failed: {e}"))))?;
    Ok(n)
}

#[utoipa::path(get, path = "/1.0/instances/{name}/exec", tag = "instances", params(("name" = String, Path, description = "The instance")),
    description = "A websocket: the first text frame is a start (StreamControl), binary frames carry the streams (first byte 0 stdin, 1 stdout, 2 stderr), the last text frame is an exit or an error.",
    responses(documented::Upgraded, documented::NoInstance, documented::Refused))]
pub(super) async fn exec(
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

#[utoipa::path(
    get,
    path = "/1.0/run",
    tag = "instances",
    description = "A websocket as exec's, whose first text frame is a run (StreamControl).",
    responses(documented::Upgraded, documented::Refused)
)]
pub(super) async fn run(
    State(host): State<Host>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HttpResponse {
    upgrade(ws, move |socket| {
        crate::exec::serve(host, crate::exec::Serve::Run, socket)
    })
}

#[utoipa::path(get, path = "/1.0/instances/{name}/console", tag = "instances", params(("name" = String, Path, description = "The instance")),
    description = "A websocket: binary frames, 0 what is typed, 1 what the console prints.",
    responses(documented::Upgraded, documented::NoInstance, (status = 409, description = "It is not running", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn console(
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

#[utoipa::path(get, path = "/1.0/instances", tag = "instances",
    responses((status = 200, description = "Every instance", body = Response<Vec<Instance>>)))]
pub(super) async fn list(State(host): State<Host>) -> HttpResponse {
    perform(host.dirs, |ex| ex.list()).await
}

#[utoipa::path(get, path = "/1.0/instances/{name}", tag = "instances", params(("name" = String, Path, description = "The instance")),
    responses((status = 200, description = "The instance, with live usage", body = Response<Instance>), documented::NoInstance, documented::Refused))]
pub(super) async fn info(State(host): State<Host>, Path(raw): Path<String>) -> HttpResponse {
    match name(&raw) {
        Ok(n) => perform(host.dirs, move |ex| ex.info(&n)).await,
        Err(e) => answer::<()>(Err(e)),
    }
}

#[utoipa::path(post, path = "/1.0/instances", tag = "instances", request_body = InstanceCreate,
    responses(documented::Begun, (status = 409, description = "The name is taken, or another command holds the instance", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn create(
    State(host): State<Host>,
    bytes: Result<Bytes, BytesRejection>,
) -> HttpResponse {
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

#[utoipa::path(put, path = "/1.0/instances/{name}/state", tag = "instances", params(("name" = String, Path, description = "The instance")),
    request_body = InstanceStateChange, responses(documented::Begun, documented::NoInstance, documented::Refused))]
pub(super) async fn change_state(
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

#[utoipa::path(patch, path = "/1.0/instances/{name}", tag = "instances", params(("name" = String, Path, description = "The instance")),
    request_body = InstanceSet, responses(documented::Begun, documented::NoInstance, documented::Refused))]
pub(super) async fn set(
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

#[utoipa::path(delete, path = "/1.0/instances/{name}", tag = "instances", params(("name" = String, Path, description = "The instance")),
    request_body(content = InstanceDelete, description = "Optional: no body is {\"force\": false}"),
    responses(documented::Begun, documented::NoInstance, documented::Refused))]
pub(super) async fn delete(
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
