//! The ends of an instance's copy or move between hosts (`berth copy`, `berth move`): its
//! export, streamed; the receipt of such an archive as an instance (received first, then an
//! operation); a move's steps.

use super::images::{streamed, taken};
use super::*;
use axum::body::Body;
use berth_api::InstanceMove;
use berth_host::vms::transfer::Identity;

#[utoipa::path(get, path = "/1.0/instances/{name}/export", tag = "instances", params(("name" = String, Path, description = "The instance: a stopped VM, or for a move one that departs"), ("move" = Option<bool>, Query, description = "`true`: the export of a move (after its `depart` step), which also carries the guest's own SSH key `id_ed25519`")),
    description = "The instance as it travels to another host: an uncompressed tar of `instance.json` (its settings, machine-id, user-data and its image's fingerprint, without what belongs to this host), `disk.qcow2`, its overlay on the image, and for a move `id_ed25519` (what `PUT /1.0/instances/{name}` takes). A failure on the way cuts the body short.",
    responses((status = 200, description = "The instance archive", content_type = "application/octet-stream", body = String), documented::NoInstance, documented::Refused))]
pub(super) async fn instance_export(
    State(host): State<Host>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> HttpResponse {
    match name(&raw).and_then(|n| Ok((n, moving(query.as_deref())?))) {
        Ok((n, moving)) => {
            let m = n.clone();
            streamed(
                host.dirs,
                move |ex| ex.instance_exportable(&n, moving),
                move |ex, out| ex.instance_export(&m, moving, out),
            )
            .await
        }
        Err(e) => answer_error(e),
    }
}

/// `move` of an export: `true` or `false` (the default).
fn moving(query: Option<&str>) -> Result<bool, Error> {
    let mut out = false;
    for (k, v) in params(query, &["move"], "an instance's export")? {
        out = match v {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Error::invalid(
                    k,
                    format!("move {v:?} is not true or false"),
                ))
            }
        };
    }
    Ok(out)
}

#[utoipa::path(post, path = "/1.0/instances/{name}/move", tag = "instances", params(("name" = String, Path, description = "The instance")),
    request_body = InstanceMove,
    description = "A step of the instance's move between hosts, on the host it leaves (`depart`, `stay`, `departed`) or the one it reaches (`arrived`); see `MoveStep`. Each is quick and idempotent.",
    responses((status = 200, description = "Done", body = Response<berth_api::Nothing>), (status = 409, description = "Another command holds the instance", body = Response<berth_api::Nothing>), documented::NoInstance, documented::Refused))]
pub(super) async fn instance_move(
    State(host): State<Host>,
    Path(raw): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    match name(&raw).and_then(|n| Ok((n, body::parse::<InstanceMove>(&read(bytes)?, None)?))) {
        Ok((n, step)) => {
            perform(host.dirs, move |ex| {
                ex.instance_move(&n, &step).map(|()| berth_api::Nothing {})
            })
            .await
        }
        Err(e) => answer_error(e),
    }
}

/// `identity` of a receipt: `new` (a copy, the default) or `keep` (a moved guest).
fn identity(query: Option<&str>) -> Result<Identity, Error> {
    let mut out = Identity::New;
    for (k, v) in params(query, &["identity"], "an instance's receipt")? {
        out = match v {
            "new" => Identity::New,
            "keep" => Identity::Keep,
            _ => {
                return Err(Error::invalid(
                    k,
                    format!("identity {v:?} is not new or keep"),
                ))
            }
        };
    }
    Ok(out)
}

#[utoipa::path(put, path = "/1.0/instances/{name}", tag = "instances",
    params(("name" = String, Path, description = "The new instance"), ("identity" = Option<String>, Query, description = "`new` (a copy: a new machine-id; the default) or `keep` (the guest's own machine-id)")),
    request_body(content = String, content_type = "application/octet-stream",
        description = "An instance archive as `GET /1.0/instances/{name}/export` makes it: `instance.json` first, then `disk.qcow2`, nothing else. The image it names by fingerprint must be on this host. The instance is made stopped."),
    responses((status = 202, description = "Received; the install is an operation", body = Response<berth_api::Nothing>), (status = 409, description = "An instance of that name exists", body = Response<berth_api::Nothing>), (status = 400, description = "The archive or a field is wrong (the error names it)", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn instance_receive(
    State(host): State<Host>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> HttpResponse {
    let (n, identity) = match name(&raw).and_then(|n| Ok((n, identity(query.as_deref())?))) {
        Ok(v) => v,
        Err(e) => return answer_error(e),
    };
    let upload = berth_host::dirs::work_dir(&host.dirs.root.join("instances"), ".receive");
    let job = Job::InstanceReceive {
        name: n.clone(),
        upload: upload.clone(),
        identity,
    };
    let (dirs, dir) = (host.dirs.clone(), upload.clone());
    let received = taken(body, "the instance", move |input| {
        Executor::open(&dirs)?.instance_take(&n, input, &dir, identity)
    })
    .await;
    match received {
        Ok(()) => in_worker(host, job).await,
        Err(e) => answer_error(e),
    }
}
