//! Long requests as the daemon runs them: each change (create, state change, delete, set) is an
//! operation with an id that the client follows (`/1.0/operations/ID`, `/wait`) and may cancel,
//! as Incus's operations are.

use crate::error::Error;
use crate::event::Event;
use crate::image::Image;
use crate::instance::Instance;
use serde::{Deserialize, Serialize};

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationStatus {
    /// Still at work.
    Running,
    /// Done.
    Success,
    /// Failed; `error` says why.
    Failure,
    /// Cancelled by a client; what it had begun is undone.
    Cancelled,
}

impl OperationStatus {
    /// Whether it has ended (in any way).
    pub fn is_final(self) -> bool {
        self != OperationStatus::Running
    }
}

/// At most this many progress events are kept per operation (the first ones go).
pub const OPERATION_EVENTS_MAX: usize = 200;

/// One operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Its id (a UUID).
    pub id: String,
    /// What it does, in words ("creating instance web").
    pub description: String,
    /// Where it is.
    pub status: OperationStatus,
    /// When it began (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// What it works on (`/1.0/instances/web`).
    pub resources: Vec<String>,
    /// Its progress so far, oldest first (at most [`OPERATION_EVENTS_MAX`]).
    pub events: Vec<Event>,
    /// The instance as a create left it, once it has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
    /// The image as a build or an import left it, once it has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    /// Whether a client may cancel it.
    pub may_cancel: bool,
}

impl Operation {
    /// What it ended with: nothing or the instance it made, or its error (a cancelled one's
    /// too).
    pub fn outcome(self) -> Result<Option<Instance>, Error> {
        self.ended()?;
        Ok(self.instance)
    }

    /// What an image's build or import ended with: the image, or its error.
    pub fn image_outcome(self) -> Result<Image, Error> {
        self.ended()?;
        let id = self.id.clone();
        self.image.ok_or_else(|| {
            Error::internal(format!(
                "operation {id} succeeded but did not say what image it made"
            ))
        })
    }

    fn ended(&self) -> Result<(), Error> {
        match (self.status, &self.error) {
            (OperationStatus::Success, _) => Ok(()),
            (_, Some(e)) => Err(e.clone()),
            (s, None) => Err(Error::internal(format!(
                "operation {} ended {s:?} with no error",
                self.id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_reads_back_with_its_outcome() {
        let op = Operation {
            id: "1".into(),
            description: "creating instance web".into(),
            status: OperationStatus::Failure,
            created_at: "2026-12-03T08:00:00Z".into(),
            updated_at: "2026-12-03T08:00:01Z".into(),
            resources: vec!["/1.0/instances/web".into()],
            events: vec![],
            instance: None,
            image: None,
            error: Some(Error::conflict("web exists")),
            may_cancel: true,
        };
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["status"], "failure");
        let back: Operation = serde_json::from_value(v).unwrap();
        assert_eq!(back, op);
        assert_eq!(back.outcome().unwrap_err().message, "web exists");
        assert!(OperationStatus::Cancelled.is_final());
        assert!(!OperationStatus::Running.is_final());
    }
}
