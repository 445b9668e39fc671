//! The container driver: [`Driver`] for [`Containers`].

use super::Driver;
use crate::containers::{CommandExit, ContainerError, ContainerRecord, Containers};
use crate::executor::{image_kind, state_kind};
use crate::requests;
use berth_api::{
    ContainerDetails, Error, ErrorKind, ExecExit, Forward, Instance, InstanceCreate, InstanceExec,
    InstanceType, NetBytes, State, Status, Usage,
};
use berth_cloudinit::compose::UserData;
use berth_state::InstanceRow;
use std::path::PathBuf;
use std::time::Duration;

/// The login shell `exec` runs in a container when it names no command.
const SHELL: [&str; 2] = ["/bin/bash", "-l"];

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

/// A container command's end as the API has it: a command that could not be started is an exit
/// (127 or 126, with the reason), as its status is the caller's to pass on.
pub(crate) fn container_exit(r: Result<CommandExit, ContainerError>) -> Result<ExecExit, Error> {
    use berth_container::direct::DirectError;
    match r {
        Ok(e) => Ok(ExecExit {
            code: e.code,
            oom_kills: e.oom_kills,
            error: None,
        }),
        Err(ContainerError::Direct(DirectError::CommandNotFound(m))) => Ok(ExecExit {
            code: 127,
            oom_kills: 0,
            error: Some(m),
        }),
        Err(ContainerError::Direct(DirectError::CommandNotExecutable(m))) => Ok(ExecExit {
            code: 126,
            oom_kills: 0,
            error: Some(m),
        }),
        Err(e) => Err(container_error(e)),
    }
}

impl Driver for Containers {
    fn create(
        &self,
        r: &InstanceCreate,
        user: UserData,
        claim: &mut dyn FnMut() -> Result<(), Error>,
        wait: Option<Duration>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), Error> {
        let o = requests::container_options(r, user)?;
        claim()?;
        self.launch(&o, wait, progress)
            .map(drop)
            .map_err(container_error)
    }

    fn describe(&self, row: &InstanceRow, live: bool) -> Result<Instance, Error> {
        let rec: ContainerRecord = serde_json::from_str(&row.spec).map_err(|e| {
            Error::internal(format!(
                "the stored record of {} is unreadable: {e}",
                row.name
            ))
        })?;
        let running = self.is_running(&rec);
        Ok(describe(self, row, &rec, running, live))
    }

    fn start(
        &self,
        name: &str,
        wait: Option<Duration>,
        _progress: &mut dyn FnMut(&str),
    ) -> Result<(), Error> {
        Containers::start(self, name).map_err(container_error)?;
        if let Some(w) = wait {
            self.wait_ready(name, w).map_err(container_error)?;
        }
        Ok(())
    }

    fn stop(&self, name: &str, force: bool, timeout: Duration) -> Result<(), Error> {
        Containers::stop(self, name, force, timeout).map_err(container_error)
    }

    fn pause(&self, name: &str, pause: bool) -> Result<(), Error> {
        Err(Error::invalid(
            "action",
            format!(
                "{name} is a container; {} is for VMs",
                if pause { "pause" } else { "resume" }
            ),
        ))
    }

    fn set(&self, name: &str, limits: &[String]) -> Result<(), Error> {
        Containers::set(self, name, limits)
            .map(drop)
            .map_err(container_error)
    }

    fn delete(&self, name: &str, force: bool) -> Result<(), Error> {
        Containers::delete(self, name, force).map_err(container_error)
    }

    fn purge(&self, name: &str) -> Result<(), Error> {
        Containers::purge(self, name).map_err(container_error)
    }

    /// Through berth's runtime (the container's namespaces, cgroup, credentials and seccomp
    /// filter); an empty command is a login shell.
    fn exec(&self, name: &str, r: &InstanceExec) -> Result<ExecExit, Error> {
        let command = if r.command.is_empty() {
            SHELL.iter().map(|s| s.to_string()).collect()
        } else {
            r.command.clone()
        };
        container_exit(Containers::exec(self, name, command, r.interactive))
    }

    fn console_log(&self, name: &str) -> Result<PathBuf, Error> {
        Containers::console_log(self, name).map_err(container_error)
    }

    fn console_socket(&self, name: &str) -> Result<PathBuf, Error> {
        Containers::console_socket(self, name).map_err(container_error)
    }
}

fn describe(
    containers: &Containers,
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
        .then(|| containers.net_bytes(&row.name, rec))
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
            reason: containers.reason(row, running),
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
