//! Virtual machines: launch a guest from a base image, and its lifecycle.
//!
//! Each VM has a folder under `DATA/instances/NAME` (qcow2 overlay on the base image, seed,
//! sockets, console log, pidfile) and a row in the state database holding its record (berth's
//! own settings, `crate::vm_record`; QEMU's spec is made from them at each start). QEMU
//! daemonizes, so guests outlive `berth`; every command re-adopts them from the pidfile (checked
//! against `/proc/PID/cmdline`) and QMP. A QEMU killed behind berth's back shows as stopped with
//! that reason; a guest that powered itself off (QEMU runs with `-no-shutdown`) shows as stopped
//! because the guest powered off, and berth then ends its QEMU.

use crate::dirs::Dirs;
use crate::images::{check_name, ImageError, Store as ImageStore};
use berth_cloudinit::compose::UserData;
use berth_cloudinit::config::{GuestConfig, User};
use berth_cloudinit::seed::{self, SeedFiles, SeedFormat};
use berth_disk::ops::{self, CreateOptions};
use berth_disk::{BackingPolicy, Format};
use berth_identity::keys;
use berth_qemu::host::{self as qhost, Accel, AccelRequest};
use berth_qemu::vm::{Forward, Kind};
use berth_state::{InstanceRow, Store};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

pub mod archive;
mod launch;
mod moves;
pub mod transfer;

pub use launch::console_reports;

/// Errors from VM operations. Each names the instance, file or value at fault.
#[derive(Debug, Error)]
pub enum VmError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// No such instance.
    #[error("no instance named {0:?} (see `berth list`)")]
    NotFound(String),
    /// The image store.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The disk engine.
    #[error(transparent)]
    Disk(#[from] berth_disk::Error),
    /// State.
    #[error(transparent)]
    State(#[from] berth_state::StateError),
    /// Keys.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Seeds.
    #[error(transparent)]
    Seed(#[from] seed::SeedError),
    /// A file the user named (not a regular file, over its cap, not text).
    #[error(transparent)]
    File(#[from] berth_files::FileError),
    /// QEMU failed to start.
    #[error("QEMU did not start: {0}")]
    QemuStart(String),
    /// QMP failed.
    #[error("talking to QEMU of {name}: {source}")]
    Qmp {
        /// Instance.
        name: String,
        /// Cause.
        #[source]
        source: berth_qmp::QmpError,
    },
    /// The accelerator cannot be used.
    #[error(transparent)]
    Accel(#[from] qhost::AccelError),
    /// Waiting for the guest failed.
    #[error("{name}: {message}\n{}--- last lines of the console ({log}) ---\n{tail}",
        if .reports.is_empty() { String::new() } else {
            format!("--- what the guest reported on its console ---\n{}\n", .reports)
        })]
    NotReady {
        /// Instance.
        name: String,
        /// What went wrong.
        message: String,
        /// Console log path.
        log: String,
        /// The kernel's and systemd's reports of trouble in it ([`console_reports`]).
        reports: String,
        /// Its last lines.
        tail: String,
    },
    /// File operations.
    #[error("{what} {}", path.display())]
    Io {
        /// What.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::Io { what, path, source }
}

pub use crate::vm_record::{VmConfig, VmPaths, VmRecord};

/// Runtime state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum VmState {
    /// Running.
    Running,
    /// Paused (QMP stop).
    Paused,
    /// Not running, with the reason.
    Stopped {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Running => f.write_str("running"),
            VmState::Paused => f.write_str("paused"),
            VmState::Stopped { .. } => f.write_str("stopped"),
        }
    }
}

/// Launch options.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Base image name.
    pub image: String,
    /// Instance name.
    pub name: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Disk size (at least the image's).
    pub disk: Option<u64>,
    /// The user's user-data, checked ([`UserData::accept`]).
    pub user_data: UserData,
    /// Public keys (authorized_keys lines) to authorize besides berth's own.
    pub extra_keys: Vec<String>,
    /// Guest kind; `None` picks [`default_kind`] for the image.
    pub kind: Option<Kind>,
    /// Accelerator.
    pub accel: AccelRequest,
    /// Extra forwards.
    pub forwards: Vec<Forward>,
    /// Disk cache mode.
    pub disk_cache: String,
}

/// The guest's network, given instead of cloud-init's fallback: DHCPv4 on the one NIC (eth0:
/// berth boots with `net.ifnames=0`) from the guest's passt. Newer cloud-init's fallback also
/// asks for DHCPv6, which a user-mode NAT may not serve: with ifupdown that holds
/// networking.service, and the boot, for minutes.
pub const GUEST_NETWORK_CONFIG: &str = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";

/// The guest kind when the user names none. berth's own images boot `paravirt`: their Debian
/// cloud kernel knows it is a guest (virtio-mmio, no firmware needed), and microvm skips the
/// firmware, PCI and ACPI device probing a guest with only virtio devices does not need (about 3 s
/// of a 24 s launch under TCG). An imported image's kernel is unknown, so it gets `hybrid`: q35
/// with virtio on PCI, which any distribution kernel with virtio drivers boots.
pub fn default_kind(image_recipe: &str) -> Kind {
    if image_recipe.starts_with(crate::images::IMPORTED_RECIPE) {
        Kind::Hybrid
    } else {
        Kind::Paravirt
    }
}

/// berth's VMs.
#[derive(Debug)]
pub struct Vms {
    dirs: Dirs,
    store: std::rc::Rc<Store>,
}

/// The name of a VM's own SSH key pair in its folder. Each VM has its own (VMs made before
/// December 2026 trust the host's key under `DATA/keys`), so a moved guest takes only its own
/// key to the new host.
pub const KEY: &str = "id_ed25519";

/// Make VM `name`'s own key pair in its folder `dir`; returns the private key's path and the
/// public key line.
fn own_key(dir: &Path, name: &str) -> Result<(PathBuf, String), VmError> {
    let key = keys::ensure_default(dir, &format!("berth@{name}"))?;
    debug_assert_eq!(key, dir.join(KEY));
    let public = std::fs::read_to_string(keys::public_path(&key)).map_err(io("reading", &key))?;
    Ok((key, public.trim().to_string()))
}

fn free_port() -> Result<u16, VmError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| VmError::Invalid(format!("no free loopback port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| VmError::Invalid(e.to_string()))?
        .port())
}

fn check_port(port: u16) -> Result<(), VmError> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| {
            VmError::Invalid(format!(
                "port {port} on 127.0.0.1 is not available for --forward: {e}"
            ))
        })
}

/// Refuse a host port given twice: only one of the forwards could win, silently.
pub(crate) fn check_forwards(hosts: impl Iterator<Item = u16>) -> Result<(), VmError> {
    let mut seen = std::collections::BTreeSet::new();
    for h in hosts {
        if !seen.insert(h) {
            return Err(VmError::Invalid(format!(
                "host port {h} is given twice in --forward; each host port forwards to one \
                 guest port"
            )));
        }
    }
    Ok(())
}

/// What a console line says when it is one of the kernel's or systemd's reports of trouble, or
/// the moment the kernel's random generator became ready (a guest that never gets there blocks
/// in `getrandom`).
const CONSOLE_REPORTS: [&str; 16] = [
    "Kernel panic",
    "BUG:",
    "WARNING:",
    "INFO: task",
    "blocked for more than",
    "rcu: INFO",
    "detected stall",
    "soft lockup",
    "hard LOCKUP",
    "Marking TSC unstable",
    "Unable to calibrate",
    "random: crng init done",
    "FAILED",
    "Timed out",
    "Dependency failed",
    "emergency mode",
];

fn qmp_call(name: &str, sock: &Path, cmd: &str, args: Option<Value>) -> Result<Value, VmError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| VmError::Invalid(e.to_string()))?;
    rt.block_on(async {
        let q = tokio::time::timeout(Duration::from_secs(5), berth_qmp::Qmp::connect_unix(sock))
            .await
            .map_err(|_| berth_qmp::QmpError::Timeout("connect".into()))??;
        q.execute_timeout(cmd, args, Duration::from_secs(10)).await
    })
    .map_err(|source| VmError::Qmp {
        name: name.to_string(),
        source,
    })
}

/// Is QEMU for this record alive? Checks the pidfile's process is really this guest's QEMU.
pub fn qemu_pid(rec: &VmRecord) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(&rec.paths.pidfile)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = rec.paths.qmp_socket.display().to_string();
    String::from_utf8_lossy(&cmdline)
        .contains(&needle)
        .then_some(pid)
}

/// Kernel parameters for a guest's first boot only (see [`Vms::spawn`]): the last of `ro` and
/// `rw` wins, in the kernel and in both of the image's initrd inits.
const FIRST_BOOT_CMDLINE: &str = " rw";

/// Where cloud-init records, at the end of its last stage, the datasource and any errors.
const RESULT: &str = "/run/cloud-init/result.json";

/// How long `wait_ready` waits for the guest's DHCP lease before it probes SSH anyway (a guest
/// with a static address takes none).
const UNLEASED_PROBE: Duration = Duration::from_secs(60);

fn ssh_base(rec: &VmRecord, dir: &Path) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-i")
        .arg(&rec.ssh_key)
        .args(["-p", &rec.ssh_port.to_string()])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
        ]);
    c.arg("-o").arg(format!(
        "UserKnownHostsFile={}",
        dir.join("known_hosts").display()
    ));
    c.arg(format!("{}@127.0.0.1", rec.ssh_user));
    c
}

impl Vms {
    /// Open berth's state.
    pub fn open(dirs: &Dirs) -> Result<Vms, VmError> {
        Ok(Vms::with_store(
            dirs,
            std::rc::Rc::new(Store::open(&dirs.root)?),
        ))
    }

    /// Over `store`, the data dir's state opened already (the executor's, shared by its drivers).
    pub fn with_store(dirs: &Dirs, store: std::rc::Rc<Store>) -> Vms {
        Vms {
            dirs: dirs.clone(),
            store,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.dirs.root.join("instances").join(name)
    }

    /// A VM's record.
    pub fn get(&self, name: &str) -> Result<(InstanceRow, VmRecord), VmError> {
        let row = self
            .store
            .instance(name)?
            .ok_or_else(|| VmError::NotFound(name.to_string()))?;
        if row.kind != "vm" {
            return Err(VmError::Invalid(format!(
                "{name} is a {}, not a VM; this command works on VMs only",
                row.kind
            )));
        }
        let rec = self.record(&row)?;
        Ok((row, rec))
    }

    /// The record in a VM's row.
    pub fn record(&self, row: &InstanceRow) -> Result<VmRecord, VmError> {
        VmRecord::load(&row.spec, &self.dir(&row.name)).map_err(|e| {
            VmError::Invalid(format!(
                "the stored record of {} is unreadable: {e}",
                row.name
            ))
        })
    }

    /// All instances.
    pub fn list(&self) -> Result<Vec<(InstanceRow, VmRecord, VmState)>, VmError> {
        let mut out = Vec::new();
        for row in self.store.instances()? {
            // An instance being created has no record yet (see the executor).
            if row.kind != "vm" || row.spec.is_empty() {
                continue;
            }
            let (row, rec) = self.get(&row.name)?;
            let st = self.state(&row, &rec)?;
            out.push((row, rec, st));
        }
        Ok(out)
    }

    /// The runtime state, reaping a QEMU whose guest powered off.
    pub fn state(&self, row: &InstanceRow, rec: &VmRecord) -> Result<VmState, VmError> {
        let Some(_pid) = qemu_pid(rec) else {
            if row.desired == "running" {
                let reason =
                    "QEMU is no longer running (killed or crashed outside berth; see `berth logs`)"
                        .to_string();
                self.store
                    .set_instance_state(&row.name, "stopped", &reason)?;
                return Ok(VmState::Stopped { reason });
            }
            return Ok(VmState::Stopped {
                reason: if row.note.is_empty() {
                    "stopped".into()
                } else {
                    row.note.clone()
                },
            });
        };
        let status = match qmp_call(&row.name, &rec.paths.qmp_socket, "query-status", None) {
            Ok(v) => v["status"].as_str().unwrap_or("").to_string(),
            Err(_) => return Ok(VmState::Running),
        };
        match status.as_str() {
            "paused" => Ok(VmState::Paused),
            "shutdown" => {
                let _ = qmp_call(&row.name, &rec.paths.qmp_socket, "quit", None);
                let reason = "the guest powered itself off".to_string();
                self.store
                    .set_instance_state(&row.name, "stopped", &reason)?;
                Ok(VmState::Stopped { reason })
            }
            _ => Ok(VmState::Running),
        }
    }

    /// Stop: ACPI power-down, then wait up to `timeout`; `force` ends QEMU at once.
    pub fn stop(&self, name: &str, force: bool, timeout: Duration) -> Result<(), VmError> {
        let (row, rec) = self.get(name)?;
        if matches!(self.state(&row, &rec)?, VmState::Stopped { .. }) {
            self.store
                .set_instance_state(name, "stopped", "stopped by berth")?;
            return Ok(());
        }
        self.store
            .set_instance_state(name, "stopped", "stopped by berth")?;
        if force {
            return self.kill(name, &rec);
        }
        qmp_call(name, &rec.paths.qmp_socket, "system_powerdown", None)?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if qemu_pid(&rec).is_none() {
                return Ok(());
            }
            if let Ok(v) = qmp_call(name, &rec.paths.qmp_socket, "query-status", None) {
                if v["status"] == "shutdown" {
                    let _ = qmp_call(name, &rec.paths.qmp_socket, "quit", None);
                    self.wait_gone(&rec, Duration::from_secs(10));
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        self.store.set_instance_state(name, "running", "")?;
        Err(VmError::Invalid(format!(
            "{name} did not power off within {} s; `berth stop --force {name}` ends it",
            timeout.as_secs()
        )))
    }

    fn wait_gone(&self, rec: &VmRecord, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if qemu_pid(rec).is_none() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn kill(&self, name: &str, rec: &VmRecord) -> Result<(), VmError> {
        let _ = qmp_call(name, &rec.paths.qmp_socket, "quit", None);
        if !self.wait_gone(rec, Duration::from_secs(5)) {
            if let Some(pid) = qemu_pid(rec) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                self.wait_gone(rec, Duration::from_secs(5));
            }
        }
        crate::nic::end(rec.paths.folder());
        crate::passt::end(&rec.paths.passt_socket.clone());
        Ok(())
    }

    /// Pause or resume the vCPUs.
    pub fn pause(&self, name: &str, pause: bool) -> Result<(), VmError> {
        let (row, rec) = self.get(name)?;
        if matches!(self.state(&row, &rec)?, VmState::Stopped { .. }) {
            return Err(VmError::Invalid(format!("{name} is not running")));
        }
        qmp_call(
            name,
            &rec.paths.qmp_socket,
            if pause { "stop" } else { "cont" },
            None,
        )
        .map(drop)
    }

    /// Delete a VM; a running one only with `force`.
    pub fn delete(&self, name: &str, force: bool) -> Result<(), VmError> {
        let (row, rec) = self.get(name)?;
        if !matches!(self.state(&row, &rec)?, VmState::Stopped { .. }) {
            if !force {
                return Err(VmError::Invalid(format!(
                    "{name} is running; stop it first or pass --force"
                )));
            }
            self.kill(name, &rec)?;
        }
        self.purge(name)
    }

    /// Remove a VM that is not running by berth's account: its folder (disk overlay, seed),
    /// its machine-id and its row, after ending any QEMU or passt whose command line names the
    /// folder (a passt whose QEMU never connected, a QEMU that was still daemonizing, without
    /// a pidfile, when its launcher died). Also what clears a launch cut short before it wrote
    /// the VM's record.
    pub fn purge(&self, name: &str) -> Result<(), VmError> {
        let dir = self.dir(name);
        crate::procs::end(&dir, crate::procs::vm_helper);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io("removing", &dir))?;
        }
        self.store.release_machine_id("vm", name)?;
        self.store.delete_instance(name)?;
        Ok(())
    }

    /// An ssh command line for the guest (for `berth ssh` and `berth exec`).
    pub fn ssh_command(&self, name: &str) -> Result<Command, VmError> {
        let (_, rec) = self.get(name)?;
        Ok(ssh_base(&rec, &self.dir(name)))
    }

    /// The console log path.
    pub fn console_log(&self, name: &str) -> Result<PathBuf, VmError> {
        Ok(self.get(name)?.1.paths.console_log)
    }

    /// The console socket path.
    pub fn console_socket(&self, name: &str) -> Result<PathBuf, VmError> {
        Ok(self.get(name)?.1.paths.console_socket)
    }

    /// Disk usage of the VM's overlay (bytes allocated on the host).
    pub fn disk_usage(&self, rec: &VmRecord) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&rec.paths.disk)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }
}
