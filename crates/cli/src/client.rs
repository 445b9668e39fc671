//! The client side of the API: what the CLI asks for instances, through one trait. The
//! in-process executor implements it today; a remote `berth daemon` will implement it too, so
//! that every instance command works the same on either.

use berth_api::{
    Error, Event, ExecExit, Instance, InstanceCreate, InstanceDelete, InstanceExec, InstanceRun,
    InstanceSet, InstanceStateChange, InstanceType, LogChunk,
};
use berth_host::executor::Executor;
use std::io::{Read, Write};

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
    /// Run a command in an instance on this process's standard input, output and error.
    fn exec(&self, name: &str, r: &InstanceExec) -> Result<ExecExit, Error>;
    /// Run a command in a new application container, on this process's standard streams.
    fn run(&self, r: &InstanceRun) -> Result<ExecExit, Error>;
    /// Part of an instance's console log.
    fn console_log(&self, name: &str, offset: u64) -> Result<LogChunk, Error>;
    /// The instance's console, as a stream to read from and one to write to.
    fn console(&self, name: &str) -> Result<Console, Error>;
}

/// Both ends of a console connection.
pub struct Console {
    /// What the console prints.
    pub output: Box<dyn Read + Send>,
    /// What is typed into it.
    pub input: Box<dyn Write + Send>,
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
    fn exec(&self, name: &str, r: &InstanceExec) -> Result<ExecExit, Error> {
        Executor::exec(self, name, r)
    }
    fn run(&self, r: &InstanceRun) -> Result<ExecExit, Error> {
        Executor::run(self, r)
    }
    fn console_log(&self, name: &str, offset: u64) -> Result<LogChunk, Error> {
        Executor::console_log(self, name, offset, berth_host::executor::LOG_CHUNK_MAX)
    }
    fn console(&self, name: &str) -> Result<Console, Error> {
        let s = Executor::console(self, name)?;
        let output = s
            .try_clone()
            .map_err(|e| Error::internal(format!("the console of {name}: {e}")))?;
        Ok(Console {
            output: Box::new(output),
            input: Box::new(s),
        })
    }
}

/// The executor for this user's data dir, in this process.
pub fn local() -> anyhow::Result<Box<dyn Client>> {
    Ok(Box::new(Executor::open(&crate::output::dirs()?)?))
}
