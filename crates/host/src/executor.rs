//! The one executor: every instance request of the API is performed here, for the CLI
//! in-process and (later) for `berth daemon`. It finds an instance's type once, holds the
//! instance's lock while it changes it ([`crate::locks`]), hands the work to the VM or container
//! driver, reports progress as [`Event`]s, and answers with API types and API errors (a kind and
//! a message naming what is at fault).

use crate::containers::{ContainerError, ContainerRecord, Containers};
use crate::dirs::Dirs;
use crate::images::ImageError;
use crate::locks;
use crate::requests;
use crate::vms::{qemu_pid, VmError, VmRecord, VmState, Vms};
use berth_api::{
    ContainerDetails, Error, ErrorKind, Event, EventKind, Forward, GuestKind, Instance,
    InstanceCreate, InstanceDelete, InstanceSet, InstanceStateChange, InstanceType, NetBytes, Ssh,
    State, StateAction, Status, Usage, VmDetails,
};
use berth_state::{InstanceRow, StateError, Store};
use std::time::{Duration, Instant};

mod commands;
pub use commands::{shell_quote, LOG_CHUNK_MAX};

/// How long a stop waits for the guest when the request names no timeout.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restart waits for the instance to be ready again.
const RESTART_WAIT: Duration = Duration::from_secs(300);

/// A VM driver error as an API error.
fn vm_error(e: VmError) -> Error {
    let kind = match &e {
        VmError::NotFound(_) => ErrorKind::NotFound,
        VmError::Invalid(_) | VmError::File(_) | VmError::Accel(_) => ErrorKind::Invalid,
        VmError::Image(i) => image_kind(i),
        VmError::State(s) => state_kind(s),
        _ => ErrorKind::Internal,
    };
    Error::from_chain(kind, &e)
}

/// A container driver error as an API error.
fn container_error(e: ContainerError) -> Error {
    let kind = match &e {
        ContainerError::NotFound(_) => ErrorKind::NotFound,
        ContainerError::Invalid(_) | ContainerError::File(_) | ContainerError::Spec(_) => {
            ErrorKind::Invalid
        }
        ContainerError::Image(i) => image_kind(i),
        ContainerError::State(s) => state_kind(s),
        _ => ErrorKind::Internal,
    };
    Error::from_chain(kind, &e)
}

fn image_kind(e: &ImageError) -> ErrorKind {
    match e {
        ImageError::NotFound(_) => ErrorKind::NotFound,
        ImageError::UnknownRecipe(_) | ImageError::BadName(_) => ErrorKind::Invalid,
        _ => ErrorKind::Internal,
    }
}

fn state_kind(e: &StateError) -> ErrorKind {
    match e {
        StateError::NameTaken(_)
        | StateError::DuplicateId { .. }
        | StateError::OwnerHasId { .. } => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    }
}

fn state_error(e: StateError) -> Error {
    Error::from_chain(state_kind(&e), &e)
}

/// What an instance's row says while a command creates it (and after that command was killed).
const CREATING: &str = "creating";

fn unix_now() -> i64 {
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
    store: Store,
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
        Ok(Executor {
            dirs: dirs.clone(),
            store: Store::open(&dirs.root).map_err(state_error)?,
            vms: Vms::open(dirs).map_err(vm_error)?,
            containers: Containers::open(dirs).map_err(container_error)?,
        })
    }

    /// The data dir.
    pub fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    /// The VM driver (for what the API does not carry yet: SSH, console sockets).
    pub fn vms(&self) -> &Vms {
        &self.vms
    }

    /// The container driver (for what the API does not carry yet: exec, run).
    pub fn containers(&self) -> &Containers {
        &self.containers
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
            let unreadable = |e: serde_json::Error| {
                Error::internal(format!(
                    "the stored record of {} is unreadable: {e}",
                    row.name
                ))
            };
            match ty {
                InstanceType::Vm => {
                    let rec: VmRecord = serde_json::from_str(&row.spec).map_err(unreadable)?;
                    let st = self.vms.state(row, &rec).map_err(vm_error)?;
                    self.vm_instance(row, &rec, st, live)
                }
                InstanceType::Container => {
                    let rec: ContainerRecord =
                        serde_json::from_str(&row.spec).map_err(unreadable)?;
                    let running = self.containers.is_running(&rec);
                    self.container_instance(row, &rec, running, live)
                }
            }
        };
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
        enum Options {
            Vm(crate::vms::LaunchOptions),
            Container(crate::containers::LaunchOptions),
        }
        let options = match r.instance_type {
            InstanceType::Vm => {
                let keys = r.vm.as_ref().map(|v| v.ssh_keys.as_slice()).unwrap_or(&[]);
                let keys = requests::public_keys(keys, |i| format!("vm.ssh_keys[{i}]"))?;
                Options::Vm(requests::vm_options(r, user, keys))
            }
            InstanceType::Container => Options::Container(requests::container_options(r, user)?),
        };
        // The name is taken before anything is made, so that a command killed at any moment
        // leaves a row that `list` shows and `delete --force` clears (see [`Executor::delete`]).
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
        let mut p = Progress {
            name: r.name.clone(),
            started: Instant::now(),
            sink: events,
        };
        let made = match options {
            Options::Vm(o) => self
                .vms
                .launch(&o, wait, &mut |m| p.emit(EventKind::Progress, m))
                .map(drop)
                .map_err(vm_error),
            Options::Container(o) => self
                .containers
                .launch(&o, wait, &mut |m| p.emit(EventKind::Progress, m))
                .map(drop)
                .map_err(container_error),
        };
        if let Err(e) = made {
            // A driver that failed before the instance was complete took back what it had
            // made; its row goes too. One that failed later (a guest that did not get ready)
            // is kept for inspection, as it is.
            let row = self.store.instance(&r.name).ok().flatten();
            if row.is_some_and(|row| row.desired == CREATING) {
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
        match (ty, r.action) {
            (InstanceType::Vm, StateAction::Start) => self.vm_start(name, wait, &mut p)?,
            (InstanceType::Vm, StateAction::Stop) => {
                self.vms.stop(name, r.force, timeout).map_err(vm_error)?
            }
            (InstanceType::Vm, StateAction::Restart) => {
                self.vms.stop(name, r.force, timeout).map_err(vm_error)?;
                self.vm_start(name, Some(wait.unwrap_or(RESTART_WAIT)), &mut p)?;
            }
            (InstanceType::Vm, StateAction::Pause | StateAction::Resume) => self
                .vms
                .pause(name, r.action == StateAction::Pause)
                .map_err(vm_error)?,
            (InstanceType::Container, StateAction::Start) => self.container_start(name, wait)?,
            (InstanceType::Container, StateAction::Stop) => self
                .containers
                .stop(name, r.force, timeout)
                .map_err(container_error)?,
            (InstanceType::Container, StateAction::Restart) => {
                self.containers
                    .stop(name, r.force, timeout)
                    .map_err(container_error)?;
                self.container_start(name, Some(wait.unwrap_or(RESTART_WAIT)))?;
            }
            (InstanceType::Container, StateAction::Pause | StateAction::Resume) => {
                return Err(Error::invalid(
                    "action",
                    format!("{name} is a container; {} is for VMs", r.action),
                ))
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
            Some(_) => Ok(()),
            None => Err(Error::no_instance(name)),
        }
    }

    fn vm_start(&self, name: &str, wait: Option<Duration>, p: &mut Progress) -> Result<(), Error> {
        self.vms
            .start(name, wait, &mut |m| p.emit(EventKind::Progress, m))
            .map_err(vm_error)
    }

    fn container_start(&self, name: &str, wait: Option<Duration>) -> Result<(), Error> {
        self.containers.start(name).map_err(container_error)?;
        if let Some(w) = wait {
            self.containers
                .wait_ready(name, w)
                .map_err(container_error)?;
        }
        Ok(())
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
            return match ty {
                InstanceType::Vm => self.vms.purge(name).map_err(vm_error),
                InstanceType::Container => self.containers.purge(name).map_err(container_error),
            };
        }
        match ty {
            InstanceType::Vm => self.vms.delete(name, r.force).map_err(vm_error),
            InstanceType::Container => self
                .containers
                .delete(name, r.force)
                .map_err(container_error),
        }
    }

    /// Change a container's limits (at once while it runs).
    pub fn set(&self, name: &str, r: &InstanceSet) -> Result<(), Error> {
        if self.type_of(name)? == InstanceType::Vm {
            return Err(Error::invalid(
                "limits",
                format!(
                    "{name} is not a container (berth set changes container limits; a VM's \
                     CPUs and memory are set at launch)"
                ),
            ));
        }
        let _lock = locks::acquire(&self.dirs, name, "set")?;
        self.made(name)?;
        self.containers
            .set(name, &r.limits)
            .map(drop)
            .map_err(container_error)
    }

    fn vm_instance(&self, row: &InstanceRow, rec: &VmRecord, st: VmState, live: bool) -> Instance {
        let state = match st {
            VmState::Running => State {
                state: Status::Running,
                reason: String::new(),
            },
            VmState::Paused => State {
                state: Status::Paused,
                reason: String::new(),
            },
            VmState::Stopped { reason } => State {
                state: Status::Stopped,
                reason,
            },
        };
        let uptime = live
            .then(|| qemu_pid(rec))
            .flatten()
            .and_then(|pid| std::fs::metadata(format!("/proc/{pid}")).ok())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs());
        Instance {
            name: row.name.clone(),
            state,
            image: rec.image.clone(),
            machine_id: Some(rec.machine_id.clone()),
            created_at: row.created_at,
            instance_type: InstanceType::Vm,
            container: None,
            vm: Some(VmDetails {
                kind: match rec.spec.kind {
                    berth_qemu::vm::Kind::Full => GuestKind::Full,
                    berth_qemu::vm::Kind::Hybrid => GuestKind::Hybrid,
                    berth_qemu::vm::Kind::Paravirt => GuestKind::Paravirt,
                },
                accel: rec.spec.accel.to_string(),
                cpus: rec.spec.cpus,
                memory_mib: rec.spec.memory_mib,
                disk_size: rec.disk_size,
                disk_usage: live.then(|| self.vms.disk_usage(rec)),
                forwards: rec
                    .spec
                    .forwards
                    .iter()
                    .map(|f| Forward {
                        host: f.host,
                        guest: f.guest,
                    })
                    .collect(),
                uptime_seconds: uptime,
                ssh: Ssh {
                    user: rec.ssh_user.clone(),
                    port: rec.ssh_port,
                    key: rec.ssh_key.display().to_string(),
                },
            }),
        }
    }

    fn container_instance(
        &self,
        row: &InstanceRow,
        rec: &ContainerRecord,
        running: bool,
        live: bool,
    ) -> Instance {
        let usage = (live && running)
            .then(|| berth_cgroups::Hierarchy::detect().ok())
            .flatten()
            .map(|h| {
                let u = berth_cgroups::Cgroup::new(h, &rec.cgroup).usage();
                Usage {
                    memory_bytes: u.memory_bytes,
                    cpu_ns: u.cpu_ns,
                    pids: u.pids,
                    io_read_bytes: u.io_read_bytes,
                    io_write_bytes: u.io_write_bytes,
                }
            });
        let net = live
            .then(|| self.containers.net_bytes(&row.name, rec))
            .flatten()
            .map(|(rx, tx)| NetBytes {
                received_bytes: rx,
                sent_bytes: tx,
            });
        Instance {
            name: row.name.clone(),
            state: State {
                state: if running {
                    Status::Running
                } else {
                    Status::Stopped
                },
                reason: self.containers.reason(row, running),
            },
            image: rec.image.clone(),
            machine_id: rec.machine_id.clone(),
            created_at: row.created_at,
            instance_type: InstanceType::Container,
            vm: None,
            container: Some(ContainerDetails {
                system: rec.system,
                hostname: rec.hostname.clone(),
                command: rec.args.clone(),
                network: rec.network.clone(),
                address: rec.address,
                forwards: rec
                    .forwards
                    .iter()
                    .map(|&(host, guest)| Forward { host, guest })
                    .collect(),
                id_base: rec.id_base,
                disk: rec.disk,
                cgroup: rec.cgroup.clone(),
                limits: rec.limits.assignments().into_iter().fold(
                    Default::default(),
                    |mut m: std::collections::BTreeMap<_, String>, (k, v)| {
                        m.entry(k.to_string())
                            .and_modify(|all| {
                                all.push(' ');
                                all.push_str(&v)
                            })
                            .or_insert(v);
                        m
                    },
                ),
                pid: rec.pid.filter(|_| running),
                exit: rec.exit,
                usage,
                net,
            }),
        }
    }
}
