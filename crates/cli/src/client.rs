//! The client side of the API: what the CLI asks for instances, through one trait, implemented
//! by the in-process executor (remote `local`) and by a client of a `berth daemon`
//! ([`berth_client::Remote`]), so that every instance command works the same on either.

use crate::remote::Target;
use berth_api::{
    Error, Event, ExecExit, Image, ImageBuild, Instance, InstanceCreate, InstanceDelete,
    InstanceExec, InstanceMove, InstanceRun, InstanceSet, InstanceStateChange, InstanceType,
    LogChunk,
};
use berth_host::executor::{Executor, ImportFiles};
pub use berth_host::vms::transfer::Identity;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
    /// Every image.
    fn images(&self) -> Result<Vec<Image>, Error>;
    /// One image.
    fn image(&self, name: &str) -> Result<Image, Error>;
    /// Image `name` as it travels to another host, as a stream (see
    /// [`berth_client::Remote::image_export`]).
    fn image_export(&self, name: &str) -> Result<Box<dyn Read + Send>, Error>;
    /// Take as image `name` what another host's [`Client::image_export`] streams.
    fn image_receive(
        &self,
        name: &str,
        input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error>;
    /// Instance `name` as it travels to another host, as a stream: a stopped VM, or for a move
    /// (`moving`) one that departs, with its own SSH key.
    fn instance_export(&self, name: &str, moving: bool) -> Result<Box<dyn Read + Send>, Error>;
    /// A step of instance `name`'s move between hosts.
    fn instance_move(&self, name: &str, r: &InstanceMove) -> Result<(), Error>;
    /// Take as instance `name` what another host's [`Client::instance_export`] streams.
    fn instance_receive(
        &self,
        name: &str,
        identity: Identity,
        input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error>;
    /// Remove an image.
    fn image_delete(&self, name: &str) -> Result<(), Error>;
    /// Build an image; `events` gets its progress.
    fn image_build(&self, r: &ImageBuild, events: &mut dyn FnMut(Event)) -> Result<Image, Error>;
    /// Import a disk of this machine (with a kernel and initrd, or not) as image `name`.
    fn image_import(
        &self,
        name: &str,
        disk: &Disk<'_>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error>;
}

/// A disk to import, on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Disk<'a> {
    /// The disk (qcow2 or raw).
    pub file: &'a Path,
    /// Its kernel and initrd, or none (read out of the disk).
    pub boot: Option<(&'a Path, &'a Path)>,
    /// Folders its backing files may be in, besides its own.
    pub allow: &'a [PathBuf],
}

/// Both ends of a console connection.
pub struct Console {
    /// What the console prints.
    pub output: Box<dyn Read + Send>,
    /// What is typed into it.
    pub input: Box<dyn Write + Send>,
}

/// What `write` writes, as a stream read as it is made. The executor stays on this thread: the
/// stream's writer opens one of its own on the same data dir.
fn exported(
    ex: &Executor,
    write: impl FnOnce(&Executor, &mut (dyn Write + Send)) -> Result<(), Error> + Send + 'static,
) -> Box<dyn Read + Send> {
    let dirs = ex.dirs().clone();
    berth_client::reader_of(move |out| write(&Executor::open(&dirs)?, out))
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
        console_of(name, Executor::console(self, name)?)
    }
    fn images(&self) -> Result<Vec<Image>, Error> {
        Executor::images(self)
    }
    fn image(&self, name: &str) -> Result<Image, Error> {
        Executor::image(self, name)
    }
    fn image_export(&self, name: &str) -> Result<Box<dyn Read + Send>, Error> {
        Executor::image(self, name)?;
        let name = name.to_string();
        Ok(exported(self, move |ex, out| ex.image_export(&name, out)))
    }
    fn image_receive(
        &self,
        name: &str,
        mut input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        Executor::image_receive(self, name, &mut input, events)
    }
    fn instance_export(&self, name: &str, moving: bool) -> Result<Box<dyn Read + Send>, Error> {
        Executor::instance_exportable(self, name, moving)?;
        let name = name.to_string();
        Ok(exported(self, move |ex, out| {
            ex.instance_export(&name, moving, out)
        }))
    }
    fn instance_move(&self, name: &str, r: &InstanceMove) -> Result<(), Error> {
        Executor::instance_move(self, name, r)
    }
    fn instance_receive(
        &self,
        name: &str,
        identity: Identity,
        mut input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        Executor::instance_receive(self, name, &mut input, identity, events)
    }
    fn image_delete(&self, name: &str) -> Result<(), Error> {
        Executor::image_delete(self, name)
    }
    fn image_build(&self, r: &ImageBuild, events: &mut dyn FnMut(Event)) -> Result<Image, Error> {
        Executor::image_build(self, r, events)
    }
    fn image_import(
        &self,
        name: &str,
        disk: &Disk<'_>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        let files = ImportFiles {
            disk: disk.file.to_path_buf(),
            kernel: disk.boot.map(|(k, _)| k.to_path_buf()),
            initrd: disk.boot.map(|(_, i)| i.to_path_buf()),
            from: disk.file.display().to_string(),
            allow: disk.allow.to_vec(),
            store_backing: true,
        };
        Executor::image_import(self, name, &files, events)
    }
}

/// This process's standard streams, for a command run through a daemon.
fn run_here(
    f: impl FnOnce(berth_client::Streams<'_>) -> Result<ExecExit, Error>,
) -> Result<ExecExit, Error> {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    f(berth_client::Streams {
        input: Box::new(std::io::stdin()),
        output: &mut out,
        error: &mut err,
    })
}

/// Both ends of a console as [`Console`] has them.
fn console_of(name: &str, s: UnixStream) -> Result<Console, Error> {
    let output = s
        .try_clone()
        .map_err(|e| Error::internal(format!("the console of {name}: {e}")))?;
    Ok(Console {
        output: Box::new(output),
        input: Box::new(s),
    })
}

impl Client for berth_client::Remote {
    fn list(&self) -> Result<Vec<Instance>, Error> {
        berth_client::Remote::list(self)
    }
    fn info(&self, name: &str) -> Result<Instance, Error> {
        berth_client::Remote::info(self, name)
    }
    fn type_of(&self, name: &str) -> Result<InstanceType, Error> {
        Ok(berth_client::Remote::info(self, name)?.instance_type)
    }
    fn create(&self, r: &InstanceCreate, events: &mut dyn FnMut(Event)) -> Result<Instance, Error> {
        berth_client::Remote::create(self, r, events)
    }
    fn change_state(
        &self,
        name: &str,
        r: &InstanceStateChange,
        events: &mut dyn FnMut(Event),
    ) -> Result<(), Error> {
        berth_client::Remote::change_state(self, name, r, events)
    }
    fn delete(&self, name: &str, r: &InstanceDelete) -> Result<(), Error> {
        berth_client::Remote::delete(self, name, r)
    }
    fn set(&self, name: &str, r: &InstanceSet) -> Result<(), Error> {
        berth_client::Remote::set(self, name, r)
    }
    fn exec(&self, name: &str, r: &InstanceExec) -> Result<ExecExit, Error> {
        run_here(|streams| berth_client::Remote::exec(self, name, r, streams))
    }
    fn run(&self, r: &InstanceRun) -> Result<ExecExit, Error> {
        run_here(|streams| berth_client::Remote::run(self, r, streams))
    }
    fn console_log(&self, name: &str, offset: u64) -> Result<LogChunk, Error> {
        berth_client::Remote::console_log(self, name, offset)
    }
    fn console(&self, name: &str) -> Result<Console, Error> {
        console_of(name, berth_client::Remote::console(self, name)?)
    }
    fn images(&self) -> Result<Vec<Image>, Error> {
        berth_client::Remote::images(self)
    }
    fn image(&self, name: &str) -> Result<Image, Error> {
        berth_client::Remote::image(self, name)
    }
    fn image_export(&self, name: &str) -> Result<Box<dyn Read + Send>, Error> {
        berth_client::Remote::image_export(self, name)
    }
    fn image_receive(
        &self,
        name: &str,
        input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        berth_client::Remote::image_send(self, name, input, events)
    }
    fn instance_export(&self, name: &str, moving: bool) -> Result<Box<dyn Read + Send>, Error> {
        berth_client::Remote::instance_export(self, name, moving)
    }
    fn instance_move(&self, name: &str, r: &InstanceMove) -> Result<(), Error> {
        berth_client::Remote::instance_move(self, name, r)
    }
    fn instance_receive(
        &self,
        name: &str,
        identity: Identity,
        input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        let identity = match identity {
            Identity::New => "new",
            Identity::Keep => "keep",
        };
        berth_client::Remote::instance_send(self, name, identity, input, events)
    }
    fn image_delete(&self, name: &str) -> Result<(), Error> {
        berth_client::Remote::image_delete(self, name)
    }
    fn image_build(&self, r: &ImageBuild, events: &mut dyn FnMut(Event)) -> Result<Image, Error> {
        berth_client::Remote::image_build(self, r, events)
    }
    fn image_import(
        &self,
        name: &str,
        disk: &Disk<'_>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        // A disk on backing files goes as one (the server takes no backing files from a
        // client), written to a scratch folder first.
        let flat = crate::image::standalone(disk.file, disk.allow)?;
        let upload = berth_client::Upload {
            disk: flat.as_ref().map_or(disk.file, |f| f.path()).to_path_buf(),
            boot: disk.boot.map(|(k, i)| (k.to_path_buf(), i.to_path_buf())),
            from: disk.file.display().to_string(),
        };
        berth_client::Remote::image_import(self, name, upload, events)
    }
}

/// The executor for this user's data dir, in this process.
pub fn local() -> anyhow::Result<Box<dyn Client>> {
    Ok(Box::new(Executor::open(&crate::output::dirs()?)?))
}

/// The client of a remote.
pub fn of(target: Target) -> anyhow::Result<Box<dyn Client>> {
    match target {
        Target::Local => local(),
        Target::Daemon(_, endpoint) => Ok(Box::new(berth_client::Remote::new(endpoint)?)),
    }
}

/// `REMOTE:NAME` or `NAME` (on the default remote): its client and the instance's name.
pub fn target(raw: &str) -> anyhow::Result<(Box<dyn Client>, String)> {
    let (t, name) = crate::remote::load()?.split(raw)?;
    let name = name.to_string();
    Ok((of(t)?, name))
}

/// `REMOTE:` (or nothing: the default remote): its client.
pub fn remote(raw: Option<&str>) -> anyhow::Result<Box<dyn Client>> {
    let remotes = crate::remote::load()?;
    let t = match raw {
        None => remotes.target(&remotes.default)?,
        Some(r) => match r.strip_suffix(':') {
            Some(name) => remotes.target(name)?,
            None => anyhow::bail!("{r:?} is not a remote (write it REMOTE:, as in host2:)"),
        },
    };
    of(t)
}
