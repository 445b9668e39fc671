//! An instance's ends of `berth copy` and `berth move`: its export as a transfer archive, an
//! archive taken as an instance under the name's lock (its row claimed first and removed again
//! when the install fails), and a move's steps. VMs only so far.

use super::*;
use crate::drivers::vm_error;
use crate::vms::transfer::{self, Identity};
use berth_api::{InstanceMove, MoveStep};
use std::io::{Read, Write};
use std::path::Path;

impl Executor {
    /// Whether instance `name` can travel now, checked before its export's stream begins, where
    /// a refusal can still be an answer of its own: a stopped VM for a copy, a departing one
    /// (see [`Executor::instance_move`]) for a move.
    pub fn instance_exportable(&self, name: &str, moving: bool) -> Result<(), Error> {
        match self.type_of(name)? {
            InstanceType::Vm => {
                if !moving {
                    self.made(name)?;
                }
                self.vms
                    .exportable(name, moving)
                    .map(drop)
                    .map_err(vm_error)
            }
            InstanceType::Container => Err(Error::invalid(
                "name",
                format!("{name} is a container: berth copies and moves VMs only so far"),
            )),
        }
    }

    /// Write instance `name` to `out` as it travels to another host (see
    /// [`Executor::instance_exportable`]).
    pub fn instance_export(
        &self,
        name: &str,
        moving: bool,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        self.instance_exportable(name, moving)?;
        let _lock = locks::acquire(&self.dirs, name, "export")?;
        self.vms.export(name, moving, out).map_err(vm_error)
    }

    /// A step of instance `name`'s move (see [`MoveStep`]). `departed` for an instance this
    /// host no longer has is done already.
    pub fn instance_move(&self, name: &str, r: &InstanceMove) -> Result<(), Error> {
        r.check()?;
        match self.type_of(name) {
            Ok(InstanceType::Vm) => {}
            Ok(InstanceType::Container) => {
                return Err(Error::invalid(
                    "name",
                    format!("{name} is a container: berth moves VMs only so far"),
                ))
            }
            Err(e) if e.kind == ErrorKind::NotFound && r.step == MoveStep::Departed => {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
        let _lock = locks::acquire(&self.dirs, name, &format!("move ({})", r.step))?;
        match r.step {
            MoveStep::Depart => self.vms.depart(name, &r.peer),
            MoveStep::Stay => self.vms.stay(name),
            MoveStep::Departed => self.vms.departed(name),
            MoveStep::Arrived => self.vms.arrived(name, &r.peer),
        }
        .map_err(vm_error)
    }

    /// Take a transfer archive from `input` into the new folder `work`, refused (and nothing
    /// left) before its disk is read when this host cannot take it as `identity` says: the
    /// name taken, a forwarded port taken, a moved guest's machine-id held here.
    pub fn instance_take(
        &self,
        name: &str,
        input: &mut dyn Read,
        work: &Path,
        identity: Identity,
    ) -> Result<(), Error> {
        berth_api::check_name(name)?;
        if self.store.instance(name).map_err(state_error)?.is_some() {
            return Err(Error::conflict(format!(
                "an instance named {name:?} already exists"
            )));
        }
        let parent = work.parent().unwrap_or(work);
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::internal(format!("making {}: {e}", parent.display())))?;
        crate::dirs::sweep_work(parent, &[".receive-"]);
        let check = |a: &crate::vms::archive::VmArchive| self.vms.can_take(a, identity);
        transfer::receive(input, work, crate::images::archive::UPLOAD_MAX, &check)
            .map(drop)
            .map_err(vm_error)
    }

    /// Take a transfer archive from `input` as instance `name`: what a copy or move to this
    /// host sends when the CLI works in-process.
    pub fn instance_receive(
        &self,
        name: &str,
        input: &mut dyn Read,
        identity: Identity,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        let work = crate::dirs::work_dir(&self.dirs.root.join("instances"), ".receive");
        self.instance_take(name, input, &work, identity)?;
        self.instance_upload(name, &work, identity, events)
    }

    /// Install the archive received into `work` as instance `name`: stopped (a copy) or
    /// arriving (a move). The folder goes either way.
    pub fn instance_upload(
        &self,
        name: &str,
        work: &Path,
        identity: Identity,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        let r = self.install(name, work, identity, events);
        let _ = std::fs::remove_dir_all(work);
        r
    }

    fn install(
        &self,
        name: &str,
        work: &Path,
        identity: Identity,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        berth_api::check_name(name)?;
        let _lock = locks::acquire(&self.dirs, name, "copy")?;
        let archive = transfer::read(work).map_err(vm_error)?;
        let image = transfer::image_of(&self.image_store(), &archive).map_err(vm_error)?;
        // The image cannot be removed while its new user is installed.
        let _image_lock = locks::acquire(&self.dirs, &format!("image@{}", image.name), "copy")?;
        self.store
            .insert_instance(&InstanceRow {
                name: name.to_string(),
                kind: InstanceType::Vm.to_string(),
                image: image.name.clone(),
                spec: String::new(),
                desired: CREATING.into(),
                note: String::new(),
                created_at: unix_now(),
            })
            .map_err(|e| match e {
                StateError::NameTaken(_) => {
                    Error::conflict(format!("an instance named {name:?} already exists"))
                }
                e => state_error(e),
            })?;
        let mut p = Progress {
            name: name.to_string(),
            started: Instant::now(),
            sink: events,
        };
        let made = self
            .vms
            .install(name, work, &archive, &image, identity, &mut |m| {
                p.emit(EventKind::Progress, m)
            });
        if let Err(e) = made {
            let _ = self.store.delete_instance(name);
            return Err(vm_error(e));
        }
        p.emit(EventKind::Lifecycle, "created");
        self.info(name)
    }
}
