//! berth's API as types: what a client asks (requests), what it gets back (instances, events)
//! and how a request fails (an [`Error`] with a [`ErrorKind`] and a message naming the field or
//! value at fault). The CLI builds these in-process; `berth daemon` carries them as JSON.
//!
//! Types only: no I/O, no knowledge of QEMU, cgroups or the state database. Requests are input
//! from users and remote clients, so each refuses unknown fields (`deny_unknown_fields`) and
//! carries its inputs by content (cloud-config text, public key text), never as a path on the
//! client's machine. Checks that need no system (names, sizes given as numbers) live here too, so
//! the CLI and the daemon refuse the same things with the same words.

pub mod blob;
pub mod error;
pub mod event;
pub mod exec;
pub mod image;
pub mod instance;
pub mod operation;
pub mod request;
pub mod response;
pub mod stream;
pub mod trust;

pub use blob::Blob;
pub use error::{Error, ErrorKind};
pub use event::{DaemonEvent, Event, EventKind, EVENT_TYPES};
pub use exec::{ExecExit, InstanceExec, InstanceRun, LogChunk};
pub use image::{Image, ImageBuild, ImageSource};
pub use instance::{
    ContainerDetails, Forward, GuestKind, Instance, InstanceType, NetBytes, Ssh, State, Status,
    Usage, VmDetails,
};
pub use operation::{Operation, OperationStatus, OPERATION_EVENTS_MAX};
pub use request::{
    check_disk, check_name, Accel, ContainerCreate, InstanceCreate, InstanceDelete, InstanceMove,
    InstanceSet, InstanceStateChange, MoveStep, Network, StateAction, VmCreate,
};
pub use response::{Nothing, Response, ServerInfo};
pub use stream::{StreamControl, WindowSize};
pub use trust::{JoinToken, TrustAdd, TrustedClient};
