//! One interface for every instance type, as Incus has one instance interface with a qemu and
//! an lxc driver: the executor ([`crate::executor`]) finds an instance's type once and asks its
//! [`Driver`]. What is the same for every type (the name check, the lock, taking the name
//! before anything is made, the rollback of a failed create, events) stays in the executor;
//! what differs (QEMU and QMP, namespaces and cgroups) sits behind this trait.
//!
//! Two drivers: [`crate::vms::Vms`] (QEMU VMs) and [`crate::containers::Containers`] (system
//! containers, and the application containers of `berth run`, which share their records and
//! their runtime and differ in what their plan starts).

mod container;
mod vm;

pub(crate) use container::container_exit;
pub(crate) use vm::vm_error;

use berth_api::{Error, ExecExit, Instance, InstanceCreate, InstanceExec};
use berth_cloudinit::compose::UserData;
use berth_state::InstanceRow;
use std::path::PathBuf;
use std::time::Duration;

/// What the executor asks of one instance type. Errors are the API's.
pub trait Driver {
    /// Make and start the instance of a checked request. The driver reads the request's
    /// type-specific parts first, then calls `claim` (which takes the name: the executor inserts
    /// the instance's row), then makes it. A driver that fails before the instance is complete
    /// takes back what it made; `wait` returns once the instance is ready.
    fn create(
        &self,
        r: &InstanceCreate,
        user: UserData,
        claim: &mut dyn FnMut() -> Result<(), Error>,
        wait: Option<Duration>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), Error>;

    /// The instance of a row that has a record, with its state looked up; `live` adds usage.
    fn describe(&self, row: &InstanceRow, live: bool) -> Result<Instance, Error>;

    /// Start it; `wait` returns once it is ready.
    fn start(
        &self,
        name: &str,
        wait: Option<Duration>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), Error>;

    /// Stop it: cleanly within `timeout`, or at once with `force`.
    fn stop(&self, name: &str, force: bool, timeout: Duration) -> Result<(), Error>;

    /// Pause or resume it.
    fn pause(&self, name: &str, pause: bool) -> Result<(), Error>;

    /// Change its limits (`KEY=VALUE`).
    fn set(&self, name: &str, limits: &[String]) -> Result<(), Error>;

    /// Delete it (refused while it runs, unless `force`).
    fn delete(&self, name: &str, force: bool) -> Result<(), Error>;

    /// Clear what a creation cut short before the record was written left under this name.
    fn purge(&self, name: &str) -> Result<(), Error>;

    /// Run a command in it, on this process's standard streams.
    fn exec(&self, name: &str, r: &InstanceExec) -> Result<ExecExit, Error>;

    /// Its console log.
    fn console_log(&self, name: &str) -> Result<PathBuf, Error>;

    /// Its console's socket.
    fn console_socket(&self, name: &str) -> Result<PathBuf, Error>;
}
