//! How a request fails: a kind that a program can act on, and a sentence for the user.

use serde::{Deserialize, Serialize};

/// What kind of failure, as a client acts on it (and as the daemon maps it to HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No instance, image or operation of that name.
    NotFound,
    /// The name is taken, or another command holds the instance, or its state forbids it.
    Conflict,
    /// The request itself is wrong: a field, a value, a combination.
    Invalid,
    /// The client may not do this.
    Forbidden,
    /// berth or the machine failed (a disk, QEMU, the kernel).
    Internal,
}

impl ErrorKind {
    /// The HTTP status the daemon answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Invalid => 400,
            ErrorKind::Forbidden => 403,
            ErrorKind::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Internal => "internal",
        })
    }
}

/// A failed request. `message` is the whole story in sentences (causes included), for a user;
/// `field` names the request field at fault when there is one (`limits.memory`, `name`).
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, naming the thing at fault.
    pub message: String,
    /// The request field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// The request is wrong in `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Invalid,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// Nothing named `name`: "no instance named "web" (see `berth list`)".
    pub fn no_instance(name: &str) -> Error {
        Error::new(
            ErrorKind::NotFound,
            format!("no instance named {name:?} (see `berth list`)"),
        )
    }

    /// A conflict.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, message)
    }

    /// berth or the machine failed.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// An error of `kind` whose message is `e` and its causes on one line, each once: many
    /// errors already end with their cause's text, which the plain chain would repeat.
    pub fn from_chain(kind: ErrorKind, e: &(dyn std::error::Error + 'static)) -> Error {
        Error::new(kind, chain_message(e))
    }

    /// The same error, naming `field` as the one at fault.
    pub fn on(mut self, field: impl Into<String>) -> Error {
        self.field = Some(field.into());
        self
    }
}

/// `e` and its causes on one line, each cause once (see [`Error::from_chain`]).
pub fn chain_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening {0}: {1}")]
    struct Repeats(&'static str, #[source] std::io::Error);

    #[test]
    fn a_chain_names_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::from_chain(ErrorKind::Internal, &Repeats("/x", io()));
        assert_eq!(e.message, "opening /x: no such file");
        #[derive(Debug, thiserror::Error)]
        #[error("reading the seed")]
        struct Plain(#[source] std::io::Error);
        assert_eq!(
            chain_message(&Plain(io())),
            "reading the seed: no such file"
        );
    }

    #[test]
    fn kinds_travel_as_snake_case_and_map_to_http() {
        let e = Error::invalid("limits.memory", "invalid memory \"x\"");
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(
            j,
            r#"{"kind":"invalid","message":"invalid memory \"x\"","field":"limits.memory"}"#
        );
        assert_eq!(serde_json::from_str::<Error>(&j).unwrap(), e);
        assert_eq!(e.kind.http_status(), 400);
        assert_eq!(Error::no_instance("web").kind.http_status(), 404);
        assert_eq!(Error::conflict("x").kind.http_status(), 409);
        assert_eq!(ErrorKind::Forbidden.http_status(), 403);
        assert_eq!(Error::internal("x").kind.http_status(), 500);
        assert_eq!(
            Error::no_instance("web").to_string(),
            "no instance named \"web\" (see `berth list`)"
        );
    }
}
