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
        crate::routes::copies::instance_export,
        crate::routes::copies::instance_receive,
        crate::routes::copies::instance_move,
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
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        flattened_options(schemas);
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// utoipa describes a `#[serde(flatten)] Option<T>` field as an `allOf` item "null or T", which
/// no JSON object is when the field is `None` (an instance's details while it is being
/// created): each such item becomes "T, or an object without all of T's required keys", which
/// is what serde reads and writes. (utoipa's schema types have no `not`, so this is done on the
/// JSON.)
fn flattened_options(schemas: &mut serde_json::Value) {
    use serde_json::{json, Value};
    let required = |name: &str, schemas: &Value| schemas[name]["required"].clone();
    let names: Vec<String> = schemas
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for name in names {
        let Some(items) = schemas[&name]["allOf"].as_array().cloned() else {
            continue;
        };
        let patched: Vec<Value> = items
            .into_iter()
            .map(|item| {
                let Some([null, inner]) = item["oneOf"].as_array().map(Vec::as_slice) else {
                    return item;
                };
                let target = inner["$ref"].as_str().and_then(|r| r.rsplit('/').next());
                match target {
                    Some(t) if null == &json!({"type": "null"}) => json!({"anyOf": [
                        inner,
                        {"type": "object", "not": {"required": required(t, schemas)}},
                    ]}),
                    _ => item,
                }
            })
            .collect();
        schemas[&name]["allOf"] = Value::Array(patched);
    }
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
        let details = &v["components"]["schemas"]["Instance"]["allOf"][0]["anyOf"];
        assert_eq!(details[0]["$ref"], "#/components/schemas/VmDetails");
        assert_eq!(details[1]["not"]["required"][0], "kind");
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
