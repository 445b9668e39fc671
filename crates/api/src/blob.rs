//! Bytes in a request: text travels as it is, anything else (gzip'ed user-data) as base64.

use crate::error::Error;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// A file's content, by value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Blob {
    /// UTF-8 text.
    Text(String),
    /// Any bytes, base64 (standard alphabet, padded).
    Base64(String),
}

impl Blob {
    /// Text when the bytes are UTF-8, base64 otherwise.
    pub fn from_bytes(bytes: Vec<u8>) -> Blob {
        match String::from_utf8(bytes) {
            Ok(t) => Blob::Text(t),
            Err(e) => Blob::Base64(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
        }
    }

    /// The bytes; `field` names the request field in the error for bad base64.
    pub fn to_bytes(&self, field: &str) -> Result<Vec<u8>, Error> {
        match self {
            Blob::Text(t) => Ok(t.as_bytes().to_vec()),
            Blob::Base64(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Error::invalid(field, format!("{field}: not base64: {e}"))),
        }
    }

    /// How many bytes it carries, without decoding.
    pub fn len_hint(&self) -> usize {
        match self {
            Blob::Text(t) => t.len(),
            Blob::Base64(b) => b.len() / 4 * 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_text_and_bytes_round_trip() {
        let t = Blob::from_bytes(b"#cloud-config\n".to_vec());
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r##"{"text":"#cloud-config\n"}"##
        );
        let gz = vec![0x1f, 0x8b, 0x08, 0xff, 0x00];
        let b = Blob::from_bytes(gz.clone());
        assert!(matches!(b, Blob::Base64(_)));
        assert_eq!(b.to_bytes("cloud_init").unwrap(), gz);
        let bad = Blob::Base64("%%%".into())
            .to_bytes("cloud_init")
            .unwrap_err();
        assert_eq!(bad.field.as_deref(), Some("cloud_init"));
    }
}
