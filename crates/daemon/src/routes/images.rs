//! The image routes: list, info and remove (answered at once), a build (an operation) and an
//! import of an image archive the client uploads (received first, then an operation).

use super::*;
use axum::body::Body;
use berth_api::{Image, ImageBuild};
use futures_util::StreamExt;

/// The most an image archive may carry.
pub(crate) const UPLOAD_MAX: u64 = 256 << 30;

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
        description = "An image archive: an uncompressed tar of regular files named `disk` (qcow2 or raw, required), `kernel` and `initrd` (both or neither; without them the newest /boot/vmlinuz-* in the disk is used) and `from` (text: what the disk was imported from)."),
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
    let upload = host.dirs.images().join(format!(
        ".upload-{}-{}",
        uuid::Uuid::new_v4().simple(),
        std::process::id()
    ));
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
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let mut input = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let dir = upload.clone();
    let received = tokio::task::spawn_blocking(move || {
        berth_host::images::archive::receive(&mut input, &dir, UPLOAD_MAX)
    })
    .await
    .unwrap_or_else(|e| Err(Error::internal(format!("receiving the image failed: {e}"))));
    match received {
        Ok(files) => {
            let job = Job::ImageImport {
                name: n,
                upload,
                from: files.from,
            };
            in_worker(host, job).await
        }
        Err(e) => answer_error(e),
    }
}
