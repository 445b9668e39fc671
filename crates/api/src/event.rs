//! What happens while berth works: lifecycle changes and the progress of long work. The CLI
//! renders them as progress lines; the daemon streams them.

use serde::{Deserialize, Serialize};

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// An instance was created, started, stopped, deleted...
    Lifecycle,
    /// A step of long work ("cloning the disk", "waiting for SSH").
    Progress,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// What it is about.
    pub kind: EventKind,
    /// The instance it concerns.
    pub instance: String,
    /// What happened, in words.
    pub message: String,
    /// Milliseconds since the request began.
    pub elapsed_ms: u64,
}

/// What the daemon's events websocket (`/1.0/events`) sends: operations as they change,
/// instances' lifecycle, and the daemon's log, as Incus's event stream does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DaemonEvent {
    /// An operation began, progressed or ended.
    Operation {
        /// When (RFC 3339).
        timestamp: String,
        /// The operation as it is now.
        operation: Box<crate::operation::Operation>,
    },
    /// An instance was created, started, stopped, deleted, changed.
    Lifecycle {
        /// When (RFC 3339).
        timestamp: String,
        /// What happened.
        event: Event,
    },
    /// A line of the daemon's log (info and above).
    Logging {
        /// When (RFC 3339).
        timestamp: String,
        /// `error`, `warn` or `info`.
        level: String,
        /// The part of berth that logged it (`berth_daemon::ops`).
        target: String,
        /// The line, with its fields.
        message: String,
    },
}

/// The event types of `/1.0/events?type=`.
pub const EVENT_TYPES: [&str; 3] = ["operation", "lifecycle", "logging"];

impl DaemonEvent {
    /// Its type as `/1.0/events?type=` names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            DaemonEvent::Operation { .. } => "operation",
            DaemonEvent::Lifecycle { .. } => "lifecycle",
            DaemonEvent::Logging { .. } => "logging",
        }
    }
}
