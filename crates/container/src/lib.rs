//! berth's containers, below the orchestrator: the OCI runtime spec berth generates ([`spec`]),
//! copy-on-write root filesystems on overlayfs ([`rootfs`]), and running a bundle with youki's
//! `libcontainer` ([`runtime`]).
//!
//! Not here: cgroup limits (the `berth-cgroups` crate), state and naming (`berth-host`), and
//! networking.

pub mod console;
pub mod direct;
pub mod rootfs;
pub mod runtime;
pub mod spec;

pub use rootfs::{Overlay, RootfsError};
pub use runtime::{Created, Runtime, RuntimeError, Stdio};
pub use spec::{Network, Plan, SpecError};
