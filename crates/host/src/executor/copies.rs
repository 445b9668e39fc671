//! An instance's two ends of `berth copy` (and the coming `berth move`): its export as a
//! transfer archive, and an archive taken as a new instance under the name's lock, its row
//! claimed first and removed again when the install fails. VMs only so far.

use super::*;
use crate::drivers::vm_error;
use crate::vms::transfer::{self, Identity};
use std::io::{Read, Write};
use std::path::Path;

impl Executor {
    /// Whether instance `name` can travel now (a stopped VM): checked before its export's
    /// stream begins, where a refusal can still be an answer of its own.
    pub fn instance_exportable(&self, name: &str) -> Result<(), Error> {
        match self.type_of(name)? {
            InstanceType::Vm => {
                self.made(name)?;
                self.vms.exportable(name).map(drop).map_err(vm_error)
            }
            InstanceType::Container => Err(Error::invalid(
                "name",
                format!("{name} is a container: berth copies VMs only so far"),
            )),
        }
    }

    /// Write instance `name` (a stopped VM) to `out` as it travels to another host.
    pub fn instance_export(&self, name: &str, out: &mut dyn Write) -> Result<(), Error> {
        self.instance_exportable(name)?;
        let _lock = locks::acquire(&self.dirs, name, "export")?;
        self.vms.export(name, out).map_err(vm_error)
    }

    /// Take a transfer archive from `input` as instance `name`: what a copy to this host sends
    /// when the CLI works in-process.
    pub fn instance_receive(
        &self,
        name: &str,
        input: &mut dyn Read,
        identity: Identity,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        berth_api::check_name(name)?;
        let work = self.receive_dir();
        std::fs::create_dir_all(work.parent().unwrap_or(&work))
            .map_err(|e| Error::internal(format!("making {}: {e}", work.display())))?;
        transfer::receive(input, &work, crate::images::archive::UPLOAD_MAX).map_err(vm_error)?;
        self.instance_upload(name, &work, identity, events)
    }

    /// A new folder name for an archive on its way in, beside the instances' folders.
    pub fn receive_dir(&self) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.dirs
            .root
            .join("instances")
            .join(format!(".receive-{nanos:x}-{}", std::process::id()))
    }

    /// Install the archive received into `work` as instance `name`, stopped. The folder goes
    /// either way.
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
        let made = self.vms.install(name, work, identity, &mut |m| {
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
