//! The one executor: every instance request of the API is performed here, for the CLI
//! in-process and (later) for `berth daemon`. It finds an instance's type once, holds the
//! instance's lock while it changes it ([`crate::locks`]), hands the work to the type's
//! [`Driver`] (what differs between QEMU VMs and containers), reports progress as [`Event`]s,
//! and answers with API types and API errors (a kind and a message naming what is at fault).

use crate::containers::Containers;
use crate::dirs::Dirs;
use crate::drivers::Driver;
use crate::images::ImageError;
use crate::locks;
use crate::requests;
use crate::vms::Vms;
use berth_api::{
    Error, ErrorKind, Event, EventKind, Instance, InstanceCreate, InstanceDelete, InstanceSet,
    InstanceStateChange, InstanceType, State, StateAction, Status,
};
use berth_state::{InstanceRow, StateError, Store};
use std::time::{Duration, Instant};

mod commands;
mod copies;
mod images;
pub use commands::{shell_quote, LOG_CHUNK_MAX};
pub use images::{ImportFiles, DEFAULT_MIRROR};

/// How long a stop waits for the guest when the request names no timeout.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restart waits for the instance to be ready again.
const RESTART_WAIT: Duration = Duration::from_secs(300);

pub(crate) fn image_kind(e: &ImageError) -> ErrorKind {
    match e {
        ImageError::NotFound(_) => ErrorKind::NotFound,
        ImageError::Exists(_) => ErrorKind::Conflict,
        ImageError::UnknownRecipe(_) | ImageError::BadName(_) | ImageError::HalfBoot => {
            ErrorKind::Invalid
        }
        _ => ErrorKind::Internal,
    }
}

pub(crate) fn state_kind(e: &StateError) -> ErrorKind {
    match e {
        StateError::NameTaken(_)
        | StateError::DuplicateId { .. }
        | StateError::OwnerHasId { .. } => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    }
}

pub(crate) fn state_error(e: StateError) -> Error {
    Error::from_chain(state_kind(&e), &e)
}

/// What an instance's row says while a command creates it (and after that command was killed).
const CREATING: &str = "creating";

/// Whether a row's desired state is one of a move's (it is leaving or reaching this host).
fn moving(desired: &str) -> bool {
    desired == crate::vms::transfer::MOVING || desired == crate::vms::transfer::ARRIVING
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn row_type(row: &InstanceRow) -> Result<InstanceType, Error> {
    match row.kind.as_str() {
        "vm" => Ok(InstanceType::Vm),
        "container" => Ok(InstanceType::Container),
        other => Err(Error::internal(format!(
            "{} has a type berth does not know ({other:?})",
            row.name
        ))),
    }
}

/// Performs API requests against one data dir.
#[derive(Debug)]
pub struct Executor {
    dirs: Dirs,
    store: std::rc::Rc<Store>,
    vms: Vms,
    containers: Containers,
}

/// Progress of one request, as events for its caller.
struct Progress<'a> {
    name: String,
    started: Instant,
    sink: &'a mut dyn FnMut(Event),
}

impl Progress<'_> {
    fn emit(&mut self, kind: EventKind, message: &str) {
        (self.sink)(Event {
            kind,
            instance: self.name.clone(),
            message: message.to_string(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        });
    }
}

impl Executor {
    /// Open the data dir's state.
    pub fn open(dirs: &Dirs) -> Result<Executor, Error> {
        // One connection for the executor and both drivers: each open reads the schema again.
        let store = std::rc::Rc::new(Store::open(&dirs.root).map_err(state_error)?);
        Ok(Executor {
            dirs: dirs.clone(),
            vms: Vms::with_store(dirs, store.clone()),
            containers: Containers::with_store(dirs, store.clone()),
            store,
        })
    }

    /// The data dir.
    pub fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    /// NAME's type, or not found.
    pub fn type_of(&self, name: &str) -> Result<InstanceType, Error> {
        let row = self
            .store
            .instance(name)
            .map_err(state_error)?
            .ok_or_else(|| Error::no_instance(name))?;
        row_type(&row)
    }

    /// Every instance, VMs first.
    pub fn list(&self) -> Result<Vec<Instance>, Error> {
        let mut rows = self.store.instances().map_err(state_error)?;
        rows.sort_by_key(|r| r.kind != "vm");
        rows.iter().map(|r| self.instance(r, false)).collect()
    }

    /// One instance, with its live usage.
    pub fn info(&self, name: &str) -> Result<Instance, Error> {
        let row = self
            .store
            .instance(name)
            .map_err(state_error)?
            .ok_or_else(|| Error::no_instance(name))?;
        self.instance(&row, true)
    }

    /// What a row says, with the state looked up; `live` adds usage.
    fn instance(&self, row: &InstanceRow, live: bool) -> Result<Instance, Error> {
        let ty = row_type(row)?;
        let mut i = if row.spec.is_empty() {
            Instance {
                name: row.name.clone(),
                instance_type: ty,
                state: State {
                    state: Status::Creating,
                    reason: String::new(),
                },
                image: row.image.clone(),
                machine_id: None,
                created_at: row.created_at,
                vm: None,
                container: None,
            }
        } else {
            self.driver(ty).describe(row, live)?
        };
        if moving(&row.desired) {
            i.state = State {
                state: Status::Moving,
                reason: row.note.clone(),
            };
        }
        if row.desired == CREATING {
            i.state = match locks::holder(&self.dirs, &row.name) {
                Some(h) => State {
                    state: Status::Creating,
                    reason: format!("being created by berth process {}", h.pid),
                },
                None => State {
                    state: Status::Broken,
                    reason: format!(
                        "its creation was cut short (the command making it ended first); \
                         `berth delete --force {}` removes what is left",
                        row.name
                    ),
                },
            };
        }
        Ok(i)
    }

    /// Make an instance and start it; with `wait_seconds`, return once it is ready.
    pub fn create(
        &self,
        r: &InstanceCreate,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        r.check()?;
        let _lock = locks::acquire(&self.dirs, &r.name, "create")?;
        if self.store.instance(&r.name).map_err(state_error)?.is_some() {
            return Err(Error::conflict(format!(
                "an instance named {:?} already exists",
                r.name
            )));
        }
        let user = requests::user_data(r.cloud_init.as_ref(), "cloud_init")?;
        let wait = r.wait_seconds.map(Duration::from_secs);
        // The name is taken (once the driver has read the request) before anything is made, so
        // that a command killed at any moment leaves a row that `list` shows and
        // `delete --force` clears (see [`Executor::delete`]).
        let mut claimed = false;
        let mut claim = || {
            self.store
                .insert_instance(&InstanceRow {
                    name: r.name.clone(),
                    kind: r.instance_type.to_string(),
                    image: r.image.clone(),
                    spec: String::new(),
                    desired: CREATING.into(),
                    note: String::new(),
                    created_at: unix_now(),
                })
                .map_err(state_error)?;
            claimed = true;
            Ok(())
        };
        let mut p = Progress {
            name: r.name.clone(),
            started: Instant::now(),
            sink: events,
        };
        let made = self
            .driver(r.instance_type)
            .create(r, user, &mut claim, wait, &mut |m| {
                p.emit(EventKind::Progress, m)
            });
        if let Err(e) = made {
            // A driver that failed before the instance was complete took back what it had
            // made; its row goes too. One that failed later (a guest that did not get ready)
            // is kept for inspection, as it is.
            let row = self.store.instance(&r.name).ok().flatten();
            if claimed && row.is_some_and(|row| row.desired == CREATING) {
                let _ = self.store.delete_instance(&r.name);
            }
            return Err(e);
        }
        p.emit(EventKind::Lifecycle, "created");
        self.info(&r.name)
    }

    /// Start, stop, restart, pause or resume an instance. (What it is afterwards is `info`'s to
    /// say: a `berth run --rm` container is gone once stopped.)
    pub fn change_state(
        &self,
        name: &str,
        r: &InstanceStateChange,
        events: &mut dyn FnMut(Event),
    ) -> Result<(), Error> {
        let ty = self.type_of(name)?;
        let _lock = locks::acquire(&self.dirs, name, &r.action.to_string())?;
        self.made(name)?;
        let timeout = r.timeout_seconds.map_or(STOP_TIMEOUT, Duration::from_secs);
        let wait = r.wait_seconds.map(Duration::from_secs);
        let mut p = Progress {
            name: name.to_string(),
            started: Instant::now(),
            sink: events,
        };
        let d = self.driver(ty);
        let mut progress = |m: &str| p.emit(EventKind::Progress, m);
        match r.action {
            StateAction::Start => d.start(name, wait, &mut progress)?,
            StateAction::Stop => d.stop(name, r.force, timeout)?,
            StateAction::Restart => {
                d.stop(name, r.force, timeout)?;
                d.start(name, Some(wait.unwrap_or(RESTART_WAIT)), &mut progress)?;
            }
            StateAction::Pause | StateAction::Resume => {
                d.pause(name, r.action == StateAction::Pause)?
            }
        }
        let done = match r.action {
            StateAction::Start => "started",
            StateAction::Stop => "stopped",
            StateAction::Restart => "restarted",
            StateAction::Pause => "paused",
            StateAction::Resume => "resumed",
        };
        p.emit(EventKind::Lifecycle, done);
        Ok(())
    }

    /// Refuse to change an instance whose creation was cut short (the lock is held, so its
    /// creator is gone): only `delete --force` applies to it.
    fn made(&self, name: &str) -> Result<(), Error> {
        match self.store.instance(name).map_err(state_error)? {
            Some(row) if row.desired == CREATING => Err(Error::conflict(format!(
                "{name} was never finished: its creation was cut short; \
                 `berth delete --force {name}` removes what is left"
            ))),
            Some(row) if moving(&row.desired) => Err(Error::conflict(format!(
                "{name} is moving ({}): it can change once `berth move` has finished or \
                 undone the move (run it again to finish a move cut short)",
                row.note
            ))),
            Some(_) => Ok(()),
            None => Err(Error::no_instance(name)),
        }
    }

    /// Delete an instance (refused while it runs, unless `force`). One whose creation was cut
    /// short is cleared by name (its folder, cgroup, mounts, machine-id, row) when berth had not
    /// written its record yet, and as any other instance when it had.
    pub fn delete(&self, name: &str, r: &InstanceDelete) -> Result<(), Error> {
        let ty = self.type_of(name)?;
        let _lock = locks::acquire(&self.dirs, name, "delete")?;
        let row = self
            .store
            .instance(name)
            .map_err(state_error)?
            .ok_or_else(|| Error::no_instance(name))?;
        if row.spec.is_empty() {
            return self.driver(ty).purge(name);
        }
        if moving(&row.desired) && !r.force {
            return Err(Error::conflict(format!(
                "{name} is moving ({}): this may be the only whole copy of the guest; \
                 `berth move` finishes or undoes the move, --force deletes it anyway",
                row.note
            )));
        }
        self.driver(ty).delete(name, r.force)
    }

    /// Change a container's limits (at once while it runs).
    pub fn set(&self, name: &str, r: &InstanceSet) -> Result<(), Error> {
        let ty = self.type_of(name)?;
        if ty == InstanceType::Vm {
            // Refused before the lock: nothing is changed.
            return self.driver(ty).set(name, &r.limits);
        }
        let _lock = locks::acquire(&self.dirs, name, "set")?;
        self.made(name)?;
        self.driver(ty).set(name, &r.limits)
    }

    /// The driver of an instance type.
    fn driver(&self, ty: InstanceType) -> &dyn Driver {
        match ty {
            InstanceType::Vm => &self.vms,
            InstanceType::Container => &self.containers,
        }
    }
}
