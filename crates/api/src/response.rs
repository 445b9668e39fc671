//! What `berth daemon` answers, as Incus answers: every body is an envelope saying whether the
//! request was done (`sync`, with its result in `metadata`), began an operation (`async`, with
//! the operation in `metadata` and its path in `operation`) or failed (`error`, with the API
//! error's kind, message and field).

use crate::error::Error;
use crate::operation::Operation;
use serde::{Deserialize, Serialize};

/// The body of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Response<T> {
    /// Done; `metadata` is the result.
    Sync {
        /// The HTTP status (200).
        status_code: u16,
        /// The result.
        metadata: T,
    },
    /// Begun: the operation follows it.
    Async {
        /// 100, as Incus has it ("operation created"; the HTTP status is 202).
        status_code: u16,
        /// The operation's path (`/1.0/operations/ID`).
        operation: String,
        /// The operation as it began.
        metadata: Box<Operation>,
    },
    /// Failed.
    Error {
        /// The HTTP status of the error's kind.
        error_code: u16,
        /// The error.
        error: Error,
    },
}

impl<T> Response<T> {
    /// A result.
    pub fn ok(metadata: T) -> Response<T> {
        Response::Sync {
            status_code: 200,
            metadata,
        }
    }

    /// An error.
    pub fn error(error: Error) -> Response<T> {
        Response::Error {
            error_code: error.kind.http_status(),
            error,
        }
    }

    /// An operation begun.
    pub fn operation(op: Operation) -> Response<T> {
        Response::Async {
            status_code: 100,
            operation: format!("/1.0/operations/{}", op.id),
            metadata: Box::new(op),
        }
    }

    /// The result, or the error it carries (an operation where a result was expected is an
    /// internal error).
    pub fn into_result(self) -> Result<T, Error> {
        match self {
            Response::Sync { metadata, .. } => Ok(metadata),
            Response::Async { operation, .. } => Err(Error::internal(format!(
                "the server began operation {operation} where an answer was expected"
            ))),
            Response::Error { error, .. } => Err(error),
        }
    }
}

/// The metadata of an answer that carries none: how the API's document names the envelope of
/// an error or of an operation begun (`Response<Nothing>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Nothing {}

/// What `GET /1.0` says of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerInfo {
    /// The API's version (`1.0`).
    pub api_version: String,
    /// berth's version.
    pub server_version: String,
    /// The host's name.
    pub hostname: String,
    /// Whether this client is trusted (`trusted`, `untrusted`; a unix-socket client is).
    #[serde(default = "trusted")]
    pub auth: String,
    /// The server certificate's fingerprint, when it serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

fn trusted() -> String {
    "trusted".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_a_result_or_an_error_with_its_kind() {
        let ok = serde_json::to_value(Response::ok(3)).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"type": "sync", "status_code": 200, "metadata": 3})
        );
        let e: Response<u8> = Response::error(Error::invalid("name", "bad"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error_code"], 400);
        assert_eq!(v["error"]["field"], "name");
        let back: Response<u8> = serde_json::from_value(v).unwrap();
        assert_eq!(
            back.into_result().unwrap_err().field.as_deref(),
            Some("name")
        );
    }
}
