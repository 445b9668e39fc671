//! What happens while berth works: lifecycle changes and the progress of long work. The CLI
//! renders them as progress lines; the daemon streams them.

use serde::{Deserialize, Serialize};

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// An instance was created, started, stopped, deleted...
    Lifecycle,
    /// A step of long work ("cloning the disk", "waiting for SSH").
    Progress,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
