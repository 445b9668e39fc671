//! The QEMU VM driver: [`Driver`] for [`Vms`].

use super::Driver;
use crate::executor::shell_quote;
use crate::executor::{image_kind, state_kind};
use crate::requests;
use crate::vms::{qemu_pid, VmError, VmRecord, VmState, Vms};
use berth_api::{
    Error, ErrorKind, ExecExit, Forward, GuestKind, Instance, InstanceCreate, InstanceExec,
    InstanceType, Ssh, State, Status, VmDetails,
};
use berth_cloudinit::compose::UserData;
use berth_state::InstanceRow;
use std::path::PathBuf;
use std::time::Duration;

/// A VM driver error as an API error.
pub(crate) fn vm_error(e: VmError) -> Error {
    let kind = match &e {
        VmError::NotFound(_) => ErrorKind::NotFound,
        VmError::Invalid(_) | VmError::File(_) | VmError::Accel(_) => ErrorKind::Invalid,
        VmError::Image(i) => image_kind(i),
        VmError::State(s) => state_kind(s),
        _ => ErrorKind::Internal,
    };
    Error::from_chain(kind, &e)
}

/// ssh's status as an exit: the command's (255 when ssh itself failed); 128 + N when signal N
/// ended ssh.
fn ssh_exit(st: std::process::ExitStatus) -> ExecExit {
    use std::os::unix::process::ExitStatusExt;
    let code = match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    ExecExit {
        code,
        ..ExecExit::default()
    }
}

impl Driver for Vms {
    fn create(
        &self,
        r: &InstanceCreate,
        user: UserData,
        claim: &mut dyn FnMut() -> Result<(), Error>,
        wait: Option<Duration>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), Error> {
        let keys = r.vm.as_ref().map(|v| v.ssh_keys.as_slice()).unwrap_or(&[]);
        let keys = requests::public_keys(keys, |i| format!("vm.ssh_keys[{i}]"))?;
        let o = requests::vm_options(r, user, keys);
        claim()?;
        self.launch(&o, wait, progress).map(drop).map_err(vm_error)
    }

    fn describe(&self, row: &InstanceRow, live: bool) -> Result<Instance, Error> {
        let rec = self.record(row).map_err(vm_error)?;
        let st = self.state(row, &rec).map_err(vm_error)?;
        Ok(describe(self, row, &rec, st, live))
    }

    fn start(
        &self,
        name: &str,
        wait: Option<Duration>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), Error> {
        Vms::start(self, name, wait, progress).map_err(vm_error)
    }

    fn stop(&self, name: &str, force: bool, timeout: Duration) -> Result<(), Error> {
        Vms::stop(self, name, force, timeout).map_err(vm_error)
    }

    fn pause(&self, name: &str, pause: bool) -> Result<(), Error> {
        Vms::pause(self, name, pause).map_err(vm_error)
    }

    fn set(&self, name: &str, _limits: &[String]) -> Result<(), Error> {
        Err(Error::invalid(
            "limits",
            format!(
                "{name} is not a container (berth set changes container limits; a VM's CPUs \
                 and memory are set at launch)"
            ),
        ))
    }

    fn delete(&self, name: &str, force: bool) -> Result<(), Error> {
        Vms::delete(self, name, force).map_err(vm_error)
    }

    fn purge(&self, name: &str) -> Result<(), Error> {
        Vms::purge(self, name).map_err(vm_error)
    }

    /// Over SSH as the guest's `berth` user; an empty command is a login session.
    fn exec(&self, name: &str, r: &InstanceExec) -> Result<ExecExit, Error> {
        let mut c = self.ssh_command(name).map_err(vm_error)?;
        if r.interactive {
            c.arg("-t");
        }
        if !r.command.is_empty() {
            c.arg("--");
            c.args(r.command.iter().map(|s| shell_quote(s)));
        }
        let st = c
            .status()
            .map_err(|e| Error::internal(format!("running ssh for {name}: {e}")))?;
        Ok(ssh_exit(st))
    }

    fn console_log(&self, name: &str) -> Result<PathBuf, Error> {
        Vms::console_log(self, name).map_err(vm_error)
    }

    fn console_socket(&self, name: &str) -> Result<PathBuf, Error> {
        Vms::console_socket(self, name).map_err(vm_error)
    }
}

fn describe(vms: &Vms, row: &InstanceRow, rec: &VmRecord, st: VmState, live: bool) -> Instance {
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
            kind: match rec.config.kind {
                berth_qemu::vm::Kind::Full => GuestKind::Full,
                berth_qemu::vm::Kind::Hybrid => GuestKind::Hybrid,
                berth_qemu::vm::Kind::Paravirt => GuestKind::Paravirt,
            },
            accel: rec.config.accel.to_string(),
            cpus: rec.config.cpus,
            memory_mib: rec.config.memory_mib,
            disk_size: rec.disk_size,
            disk_usage: live.then(|| vms.disk_usage(rec)),
            forwards: rec
                .config
                .forwards
                .iter()
                .map(|f| Forward {
                    host: f.host,
                    guest: f.guest,
                })
                .collect(),
            uptime_seconds: uptime,
            qemu_usage: live
                .then(|| qemu_pid(rec))
                .flatten()
                .map(crate::procs::usage),
            nic: live
                .then(|| qemu_pid(rec))
                .flatten()
                .and_then(|_| crate::nic::counts(&rec.paths))
                .map(|n| berth_api::NetBytes {
                    received_bytes: n.received_bytes,
                    sent_bytes: n.sent_bytes,
                }),
            ssh: Ssh {
                user: rec.ssh_user.clone(),
                port: rec.ssh_port,
                key: rec.ssh_key.display().to_string(),
            },
        }),
    }
}
