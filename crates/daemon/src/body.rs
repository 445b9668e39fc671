//! Request bodies, read as untrusted input: capped in size, parsed into the API's types
//! (`deny_unknown_fields` everywhere), and every failure a 400 that names the field at fault
//! (its path in the document, as `vm.cpus` or `forwards[0].host`).

use berth_api::Error;
use serde::de::DeserializeOwned;

/// The largest body berth reads (user-data is capped at 1 MiB; base64 adds a third).
pub const MAX_BODY: usize = 2 << 20;

/// A body as request `T`; an empty body is `T`'s default when `empty` is given.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], empty: Option<T>) -> Result<T, Error> {
    if bytes.len() > MAX_BODY {
        return Err(Error::invalid(
            "body",
            format!(
                "the request body is {} bytes, more than the {MAX_BODY} berth reads",
                bytes.len()
            ),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if let Some(d) = empty {
            return Ok(d);
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // The path is where the fault stands (an unknown field's own name); a body that is not
        // JSON, or not an object, has none.
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        Error::invalid(field, format!("the request body is not valid: {inner}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::{InstanceCreate, InstanceDelete};

    fn create(json: &str) -> Result<InstanceCreate, Error> {
        parse(json.as_bytes(), None)
    }

    #[test]
    fn each_bad_body_names_its_field() {
        let e = create(r#"{"name":"a","image":"i","type":"vm","vm":{"cpus":"two"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("vm.cpus"), "{e:?}");
        let e = create(r#"{"name":"a","image":"i","type":"vm","cpu":2}"#).unwrap_err();
        assert!(e.message.contains("unknown field `cpu`"), "{e:?}");
        assert_eq!(e.field.as_deref(), Some("cpu"), "{e:?}");
        let e =
            create(r#"{"name":"a","image":"i","type":"vm","forwards":[{"host":-1}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("forwards[0].host"), "{e:?}");
        let e = create("{").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"), "{e:?}");
        let e = create(&format!("\"{}\"", "x".repeat(MAX_BODY))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
        assert!(e.message.contains("more than"), "{e:?}");
        assert!(create("").is_err());
    }

    #[test]
    fn an_empty_body_is_the_default_where_one_is_given() {
        let d: InstanceDelete = parse(b"", Some(InstanceDelete::default())).unwrap();
        assert!(!d.force);
        let d: InstanceDelete =
            parse(br#"{"force":true}"#, Some(InstanceDelete::default())).unwrap();
        assert!(d.force);
    }
}
