//! The API's OpenAPI 3.1 document, generated from the route handlers' annotations and the API
//! types' schemas (utoipa), served at `/1.0/openapi.json`; `docs/openapi.json` is a copy that a
//! test keeps current.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth",
        description = "berth's REST API: instances, images, operations, events, trust."
    ),
    paths(
        crate::routes::server::server,
        crate::routes::instances::list,
        crate::routes::instances::create,
        crate::routes::instances::info,
        crate::routes::instances::set,
        crate::routes::instances::delete,
        crate::routes::instances::change_state,
        crate::routes::instances::logs,
        crate::routes::instances::exec,
        crate::routes::instances::run,
        crate::routes::instances::console,
        crate::routes::images::images,
        crate::routes::images::image_info,
        crate::routes::images::build,
        crate::routes::images::import,
        crate::routes::images::image_delete,
        crate::routes::images::export,
        crate::routes::server::operations,
        crate::routes::server::operation,
        crate::routes::server::wait,
        crate::routes::server::cancel,
        crate::routes::server::join,
        crate::routes::server::trusted_clients,
        crate::routes::server::not_trusted_any_more,
        crate::routes::server::events,
        crate::routes::server::metrics,
    ),
    components(schemas(berth_api::StreamControl, berth_api::DaemonEvent, berth_api::JoinToken))
)]
struct ApiDoc;

/// The document, as JSON.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is the document as the code makes it. To bring it up to date:
    /// `BERTH_UPDATE_OPENAPI=1 cargo test -p berth-daemon openapi`.
    #[test]
    fn the_committed_document_is_current() {
        let doc = super::document();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        if std::env::var_os("BERTH_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, format!("{doc}\n")).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed.trim_end() == doc.trim_end(),
            "{} is not the document the code makes: run \
             BERTH_UPDATE_OPENAPI=1 cargo test -p berth-daemon openapi",
            path.display()
        );
    }
}
