//! The client side of the API: what the CLI asks for instances, through one trait. The
//! in-process executor implements it today; a remote `berth daemon` will implement it too, so
//! that every instance command works the same on either.

use berth_api::{
    Error, Event, Instance, InstanceCreate, InstanceDelete, InstanceSet, InstanceStateChange,
    InstanceType,
};
use berth_host::executor::Executor;

/// Instance requests, answered by an executor in this process or on another host.
pub trait Client {
    /// Every instance.
    fn list(&self) -> Result<Vec<Instance>, Error>;
    /// One instance, with live usage.
    fn info(&self, name: &str) -> Result<Instance, Error>;
    /// An instance's type, or not found.
    fn type_of(&self, name: &str) -> Result<InstanceType, Error>;
    /// Make and start an instance; `events` gets its progress.
    fn create(&self, r: &InstanceCreate, events: &mut dyn FnMut(Event)) -> Result<Instance, Error>;
    /// Change its state; `events` gets the progress.
    fn change_state(
        &self,
        name: &str,
        r: &InstanceStateChange,
        events: &mut dyn FnMut(Event),
    ) -> Result<(), Error>;
    /// Delete it.
    fn delete(&self, name: &str, r: &InstanceDelete) -> Result<(), Error>;
    /// Change a container's limits.
    fn set(&self, name: &str, r: &InstanceSet) -> Result<(), Error>;
}

impl Client for Executor {
    fn list(&self) -> Result<Vec<Instance>, Error> {
        Executor::list(self)
    }
    fn info(&self, name: &str) -> Result<Instance, Error> {
        Executor::info(self, name)
    }
    fn type_of(&self, name: &str) -> Result<InstanceType, Error> {
        Executor::type_of(self, name)
    }
    fn create(&self, r: &InstanceCreate, events: &mut dyn FnMut(Event)) -> Result<Instance, Error> {
        Executor::create(self, r, events)
    }
    fn change_state(
        &self,
        name: &str,
        r: &InstanceStateChange,
        events: &mut dyn FnMut(Event),
    ) -> Result<(), Error> {
        Executor::change_state(self, name, r, events)
    }
    fn delete(&self, name: &str, r: &InstanceDelete) -> Result<(), Error> {
        Executor::delete(self, name, r)
    }
    fn set(&self, name: &str, r: &InstanceSet) -> Result<(), Error> {
        Executor::set(self, name, r)
    }
}

/// The executor for this user's data dir, in this process.
pub fn local() -> anyhow::Result<Box<dyn Client>> {
    Ok(Box::new(Executor::open(&crate::output::dirs()?)?))
}
