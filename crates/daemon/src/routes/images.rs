//! The image routes: list, info and remove (answered at once), a build (an operation), an
//! import of an image archive the client uploads (received first, then an operation) and an
//! export of an image as it travels to another host (streamed).

use super::*;
use axum::body::Body;
use berth_api::{Image, ImageBuild};
use futures_util::StreamExt;

use berth_host::images::archive::{Received, UPLOAD_MAX};

#[utoipa::path(get, path = "/1.0/images", tag = "images",
    responses((status = 200, description = "Every image", body = Response<Vec<Image>>)))]
pub(super) async fn images(State(host): State<Host>) -> HttpResponse {
    perform(host.dirs, |ex| ex.images()).await
}

#[utoipa::path(get, path = "/1.0/images/{name}", tag = "images", params(("name" = String, Path, description = "The image")),
    responses((status = 200, description = "The image", body = Response<Image>), (status = 404, description = "No such image", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn image_info(State(host): State<Host>, Path(raw): Path<String>) -> HttpResponse {
    match name(&raw) {
        Ok(n) => perform(host.dirs, move |ex| ex.image(&n)).await,
        Err(e) => answer_error(e),
    }
}

#[utoipa::path(delete, path = "/1.0/images/{name}", tag = "images", params(("name" = String, Path, description = "The image")),
    responses((status = 200, description = "Removed", body = Response<berth_api::Nothing>), (status = 404, description = "No such image", body = Response<berth_api::Nothing>), (status = 409, description = "Instances are made from it", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn image_delete(
    State(host): State<Host>,
    Path(raw): Path<String>,
) -> HttpResponse {
    match name(&raw) {
        Ok(n) => {
            perform(host.dirs, move |ex| {
                ex.image_delete(&n).map(|()| berth_api::Nothing {})
            })
            .await
        }
        Err(e) => answer_error(e),
    }
}

#[utoipa::path(post, path = "/1.0/images", tag = "images", request_body = ImageBuild,
    responses(documented::Begun, (status = 409, description = "Another request holds the image", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn build(
    State(host): State<Host>,
    bytes: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    match read(bytes).and_then(|b| body::parse::<ImageBuild>(&b, None)) {
        Ok(build) => match build.check() {
            Ok(()) => in_worker(host, Job::ImageBuild { build }).await,
            Err(e) => answer_error(e),
        },
        Err(e) => answer_error(e),
    }
}

#[utoipa::path(put, path = "/1.0/images/{name}", tag = "images", params(("name" = String, Path, description = "The image")),
    request_body(content = String, content_type = "application/octet-stream",
        description = "An image archive, in one of two forms. To import a disk: an uncompressed tar of regular files named `disk` (qcow2 or raw, required), `kernel` and `initrd` (both or neither; without them the newest /boot/vmlinuz-* in the disk is used) and `from` (text: what the disk was imported from). To install an image as another host exported it (`GET /1.0/images/{name}/export`): `image.json` first, then exactly the files it names; the disk must be a qcow2 without a backing file, of the size and SHA-256 that `image.json` states."),
    responses((status = 202, description = "Received; the import is an operation", body = Response<berth_api::Nothing>), (status = 409, description = "An image of that name exists", body = Response<berth_api::Nothing>), (status = 400, description = "The archive or a field is wrong (the error names it)", body = Response<berth_api::Nothing>),
        (status = 403, description = "The client is not trusted", body = Response<berth_api::Nothing>)))]
pub(super) async fn import(
    State(host): State<Host>,
    Path(raw): Path<String>,
    body: Body,
) -> HttpResponse {
    let n = match name(&raw) {
        Ok(n) => n,
        Err(e) => return answer_error(e),
    };
    let upload = berth_host::dirs::work_dir(&host.dirs.images(), ".upload");
    let job = Job::ImageImport {
        name: n.clone(),
        upload: upload.clone(),
        from: String::new(),
    };
    let (dirs, checked) = (host.dirs.clone(), job.clone());
    let pre = tokio::task::spawn_blocking(move || {
        precheck(&dirs, &checked)?;
        std::fs::create_dir_all(dirs.images())
            .map_err(|e| Error::internal(format!("making {}: {e}", dirs.images().display())))
    })
    .await
    .unwrap_or_else(|e| Err(Error::internal(format!("checking the request failed: {e}"))));
    if let Err(e) = pre {
        return answer_error(e);
    }
    let dir = upload.clone();
    let received = taken(body, "the image", move |input| {
        berth_host::images::archive::receive(input, &dir, UPLOAD_MAX)
    })
    .await;
    match received {
        Ok(received) => {
            let from = match received {
                Received::Disk(files) => files.from,
                Received::Image => String::new(),
            };
            let job = Job::ImageImport {
                name: n,
                upload,
                from,
            };
            in_worker(host, job).await
        }
        Err(e) => answer_error(e),
    }
}

/// Writes what it is given to a response body, a chunk at a time.
struct ToBody(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ToBody {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[utoipa::path(get, path = "/1.0/images/{name}/export", tag = "images", params(("name" = String, Path, description = "The image")),
    description = "The image as it travels to another host: an uncompressed tar of `image.json` and then the files it names, byte for byte (what `PUT /1.0/images/{name}` installs as it is). A failure on the way cuts the body short.",
    responses((status = 200, description = "The image archive", content_type = "application/octet-stream", body = String), (status = 404, description = "No such image", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn export(State(host): State<Host>, Path(raw): Path<String>) -> HttpResponse {
    match name(&raw) {
        Ok(n) => {
            let m = n.clone();
            streamed(
                host.dirs,
                move |ex| ex.image(&n).map(drop),
                move |ex, out| ex.image_export(&m, out),
            )
            .await
        }
        Err(e) => answer_error(e),
    }
}

/// A request's streamed body, read by `take` off the async runtime (`what` names it when that
/// fails).
pub(super) async fn taken<T: Send + 'static>(
    body: Body,
    what: &'static str,
    take: impl FnOnce(&mut dyn std::io::Read) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let mut input = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    tokio::task::spawn_blocking(move || take(&mut input))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("receiving {what} failed: {e}"))))
}

/// A response body that `write` makes on a blocking thread with an executor of its own, once
/// `check` has passed (else its error, as an envelope). A failure on the way cuts the body
/// short with an error, so that the client does not take a short archive for the whole one.
pub(super) async fn streamed(
    dirs: Dirs,
    check: impl FnOnce(&Executor) -> Result<(), Error> + Send + 'static,
    write: impl FnOnce(&Executor, &mut dyn std::io::Write) -> Result<(), Error> + Send + 'static,
) -> HttpResponse {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let (ready_tx, ready) = tokio::sync::oneshot::channel::<Result<(), Error>>();
    tokio::task::spawn_blocking(move || {
        let ex = match Executor::open(&dirs).and_then(|ex| check(&ex).map(|_| ex)) {
            Ok(ex) => ex,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        if let Err(e) = write(&ex, &mut ToBody(tx.clone())) {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.message)));
        }
    });
    match ready.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return answer_error(e),
        Err(_) => return answer_error(Error::internal("the export's worker failed")),
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}
