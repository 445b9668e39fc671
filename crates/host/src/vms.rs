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
    store: Store,
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

/// A console log as text (empty when it cannot be read).
fn console_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of a text.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

/// The first `n` distinct reports of trouble in a console log (see [`CONSOLE_REPORTS`]), the
/// part of a failed boot its last lines (often the middle of a stack dump) do not show.
pub fn console_reports(text: &str, n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if out.len() == n {
            break;
        }
        let plain = strip_ansi(line);
        if CONSOLE_REPORTS.iter().any(|p| plain.contains(p)) && !out.contains(&plain) {
            out.push(plain);
        }
    }
    out
}

/// A line without its terminal colour sequences (`ESC [ ... m`), as systemd writes them.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

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

/// The errors in cloud-init's `result.json` (`{"v1": {"datasource": ..., "errors": [...]}}`).
fn cloud_init_errors(text: &str) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| e.to_string())?;
    let errors = v
        .get("v1")
        .and_then(|v1| v1.get("errors"))
        .and_then(Value::as_array)
        .ok_or("no v1.errors list")?;
    Ok(errors
        .iter()
        .map(|e| {
            e.as_str()
                .map(String::from)
                .unwrap_or_else(|| e.to_string())
        })
        .collect())
}

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
        Ok(Vms {
            dirs: dirs.clone(),
            store: Store::open(&dirs.root)?,
        })
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

    /// Create and start a VM under the row the executor has made for it (desired `creating`,
    /// no record yet): the record is written before QEMU starts, `running` once it has. Any
    /// failure before that takes back what was made and the row; with `wait`, the launch also
    /// waits until SSH answers and cloud-init has finished (a guest that does not get ready is
    /// kept, for inspection).
    pub fn launch(
        &self,
        o: &LaunchOptions,
        wait: Option<Duration>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<VmRecord, VmError> {
        check_name(&o.name).map_err(|_| {
            VmError::Invalid(format!(
                "invalid instance name {:?}: use letters, digits, '-', '_' and '.'",
                o.name
            ))
        })?;
        if o.cpus == 0 || o.cpus > 64 {
            return Err(VmError::Invalid(format!(
                "--cpus {} is out of range (1-64)",
                o.cpus
            )));
        }
        if o.memory_mib < 256 {
            return Err(VmError::Invalid(format!(
                "--memory {} MiB is too small for a Debian guest (at least 256M)",
                o.memory_mib
            )));
        }
        check_forwards(o.forwards.iter().map(|f| f.host))?;
        let user = &o.user_data;
        let extra_keys = &o.extra_keys;
        let images = ImageStore::new(&self.dirs);
        let image = images.get(&o.image)?;
        let kind = o.kind.unwrap_or_else(|| default_kind(&image.recipe));
        let boot = match kind {
            Kind::Full => image.kernel_generic.clone().or(image.kernel_cloud.clone()),
            _ => image.kernel_cloud.clone().or(image.kernel_generic.clone()),
        }
        .ok_or_else(|| {
            VmError::Invalid(format!("image {} has no kernel for direct boot", o.image))
        })?;
        for f in &o.forwards {
            check_port(f.host)?;
        }
        let qemu = qhost::qemu_binary().ok_or_else(|| {
            VmError::QemuStart(
                "qemu-system-x86_64 was not found (install qemu-system-x86, or set BERTH_QEMU)"
                    .into(),
            )
        })?;
        let accel = self.accel(&qemu, o.accel, progress)?;
        let disk_size = o.disk.unwrap_or(image.size).max(image.size);
        // Everything checked: create. Any failure from here removes what was made.
        let dir = self.dir(&o.name);
        std::fs::create_dir_all(dir.parent().unwrap_or(&dir)).map_err(io("creating", &dir))?;
        std::fs::create_dir(&dir).map_err(io("creating", &dir))?;
        let created = (|| -> Result<VmRecord, VmError> {
            let base = images.path(&o.image).join(&image.disk);
            let disk = dir.join("disk.qcow2");
            let policy = BackingPolicy::new(Some(self.dirs.images()), Vec::new());
            let mut co = CreateOptions::new(&disk, Format::Qcow2, Some(disk_size));
            co.backing = Some(base.display().to_string());
            co.backing_format = Some(Format::Qcow2);
            ops::create(&co, &policy)?;
            let machine_id = crate::machine_ids::allocate(&self.store, "vm", &o.name)?.to_string();
            let key = keys::ensure_default(&self.dirs.keys(), "berth")?;
            let mut authorized = vec![std::fs::read_to_string(keys::public_path(&key))
                .map_err(io("reading", &key))?
                .trim()
                .to_string()];
            authorized.extend(extra_keys.iter().cloned());
            let mut ours = GuestConfig {
                hostname: Some(o.name.clone()),
                users: vec![User {
                    name: "berth".into(),
                    ssh_authorized_keys: authorized,
                    sudo: Some("ALL=(ALL) NOPASSWD:ALL".into()),
                    shell: Some("/bin/bash".into()),
                    groups: Vec::new(),
                    lock_passwd: Some(true),
                }],
                ..GuestConfig::default()
            };
            // What a guest does not need at boot under emulation: RSA host keys, key dumps to the
            // console, grub (there is none: direct kernel boot).
            ours.extra.insert("manage_etc_hosts".into(), json!(true));
            ours.extra
                .insert("ssh_genkeytypes".into(), json!(["ed25519"]));
            ours.extra
                .insert("ssh".into(), json!({"emit_keys_to_console": false}));
            ours.extra
                .insert("grub_dpkg".into(), json!({"enabled": false}));
            // The user's cloud-config parts merged with berth's; scripts, includes, boothooks
            // and the rest follow as further MIME parts.
            let merged = user.merged(&ours);
            let user_data = berth_cloudinit::compose::render(&merged, &user.parts);
            std::fs::write(dir.join("user-data"), &user_data).map_err(io("writing", &dir))?;
            let hostname = merged
                .get("hostname")
                .and_then(Value::as_str)
                .unwrap_or(&o.name)
                .to_string();
            let files = SeedFiles {
                user_data: user_data.into_bytes(),
                meta_data: seed::meta_data(&format!("iid-{machine_id}"), Some(&hostname))
                    .into_bytes(),
                network_config: Some(GUEST_NETWORK_CONFIG.as_bytes().to_vec()),
                vendor_data: None,
            };
            seed::write(&dir.join("seed.iso"), &files, SeedFormat::Iso, true)?;
            let ssh_port = free_port()?;
            let mut forwards = vec![Forward {
                host: ssh_port,
                guest: 22,
            }];
            forwards.extend(o.forwards.iter().copied());
            let rec = VmRecord {
                config: VmConfig {
                    kind,
                    accel,
                    cpus: o.cpus,
                    memory_mib: o.memory_mib,
                    disk_cache: o.disk_cache.clone(),
                    forwards,
                    kernel: boot.kernel.clone(),
                    initrd: Some(boot.initrd.clone()),
                    root: image.root.as_deref().unwrap_or("LABEL=rootfs").to_string(),
                    // berth's own images need only the x86-64 baseline; imported ones keep `max`.
                    tcg_cpu: (!image.recipe.starts_with(crate::images::IMPORTED_RECIPE))
                        .then(|| berth_qemu::vm::TCG_CPU_BASELINE.to_string()),
                },
                ssh_port,
                ssh_user: "berth".into(),
                ssh_key: key,
                machine_id,
                disk_size,
                image: o.image.clone(),
                paths: VmPaths::of(&dir),
            };
            // The record before QEMU: whatever happens next, a later berth finds the guest.
            self.store.set_instance_spec(&o.name, &rec.to_json())?;
            progress("starting QEMU");
            // An imported disk may not be clean; only berth's own image is known to be.
            let fresh_root = !image.recipe.starts_with(crate::images::IMPORTED_RECIPE);
            self.spawn(&qemu, &o.name, &rec, fresh_root)?;
            self.store.set_instance_state(&o.name, "running", "")?;
            Ok(rec)
        })();
        let rec = match created {
            Ok(r) => r,
            Err(e) => {
                let _ = self.store.delete_instance(&o.name);
                let _ = self.store.release_machine_id("vm", &o.name);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        if let Some(limit) = wait {
            self.wait_ready(&o.name, &rec, limit, progress)?;
        }
        Ok(rec)
    }

    fn accel(
        &self,
        qemu: &Path,
        req: AccelRequest,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Accel, VmError> {
        if req == AccelRequest::Tcg {
            return Ok(Accel::Tcg);
        }
        let dev = qhost::kvm_device(Path::new("/dev/kvm"));
        let probe = match dev {
            qhost::KvmDevice::Accessible => Some(self.cached_probe(qemu)),
            _ => None,
        };
        let verdict = qhost::kvm_verdict(&dev, probe);
        let (accel, notice) = qhost::choose_accel(req, &verdict)?;
        if let Some(n) = notice {
            progress(&n);
        }
        Ok(accel)
    }

    /// The KVM probe result, cached in the data folder for as long as the QEMU binary, the
    /// running kernel and /dev/kvm stay the same (a probe can take seconds on a host where KVM
    /// is emulated; it is not repeated for every launch).
    fn cached_probe(&self, qemu: &Path) -> berth_qemu::probe::ProbeRun {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        };
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let key = format!(
            "{}|{}|{}|{}",
            qemu.display(),
            stamp(qemu),
            kernel.trim(),
            stamp(Path::new("/dev/kvm"))
        );
        let path = self.dirs.root.join("host-probe.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if v["key"] == key.as_str() {
                    if let Ok(run) = serde_json::from_value(v["probe"].clone()) {
                        return run;
                    }
                }
            }
        }
        let run = berth_qemu::probe::run_probe(qemu, true, berth_qemu::probe::KVM_PROBE_LIMIT);
        let _ = std::fs::write(&path, json!({"key": key, "probe": run}).to_string());
        run
    }

    /// Start QEMU for `rec`. `fresh_root` is for a guest's first boot from an image berth built:
    /// its root file system is that image (checked by its sha256) under an overlay nothing has
    /// written to yet, so it is mounted read-write from the start, which skips the file system
    /// check (systemd-fsck-root runs only for a read-only root; 0.4-0.7 s under TCG, most of it
    /// starting the process). Every other boot mounts it read-only and checks it first.
    fn spawn(
        &self,
        qemu: &Path,
        name: &str,
        rec: &VmRecord,
        fresh_root: bool,
    ) -> Result<(), VmError> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let images = ImageStore::new(&self.dirs);
        let mut spec = rec.spec(name, &images.path(&rec.image), &cpuinfo);
        if fresh_root {
            spec.cmdline.push_str(FIRST_BOOT_CMDLINE);
        }
        for p in [
            &rec.paths.qmp_socket,
            &rec.paths.console_socket,
            &rec.paths.pidfile,
        ] {
            let _ = std::fs::remove_file(p);
        }
        // (A guest made before berth used passt moves to it now: its spec is made afresh.)
        let socket = rec.paths.passt_socket.clone();
        crate::passt::start(&spec).map_err(VmError::QemuStart)?;
        let started = (|| {
            let out = Command::new(qemu)
                .args(spec.argv())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| VmError::QemuStart(format!("{}: {e}", qemu.display())))?;
            if !out.status.success() {
                return Err(VmError::QemuStart(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
            if qemu_pid(rec).is_none() {
                return Err(VmError::QemuStart(
                    "QEMU exited right after starting (see the console log)".into(),
                ));
            }
            Ok(())
        })();
        if started.is_err() {
            crate::passt::end(&socket);
        }
        started
    }

    /// Wait until SSH answers and cloud-init is done.
    pub fn wait_ready(
        &self,
        name: &str,
        rec: &VmRecord,
        limit: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), VmError> {
        let dir = self.dir(name);
        let start = Instant::now();
        let fail = |message: String| {
            let console = console_text(&rec.paths.console_log);
            VmError::NotReady {
                name: name.to_string(),
                message,
                log: rec.paths.console_log.display().to_string(),
                reports: console_reports(&console, 12).join("\n"),
                tail: last_lines(&console, 15),
            }
        };
        let stopped = || fail("QEMU stopped while the guest was booting".into());
        let silent = || {
            fail(format!(
                "SSH did not answer within {} s (the guest is left running for inspection)",
                limit.as_secs()
            ))
        };
        progress("waiting for SSH");
        // First the guest's sshd banner on the forwarded port, cheaply: an SSH login attempt
        // before sshd listens costs seconds and a failed one was followed by a 1 s pause.
        let alive = || qemu_pid(rec).is_some();
        // Not before the guest has its address (or, for a guest that takes none over DHCP, a
        // while): until then passt can only hold the probe's connections (see `ssh_probe`).
        let socket = rec.paths.passt_socket.clone();
        while !crate::passt::guest_has_address(&socket) && start.elapsed() < UNLEASED_PROBE {
            if !alive() {
                return Err(stopped());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !crate::ssh_probe::answers(rec.ssh_port, limit.saturating_sub(start.elapsed()), &alive) {
            return Err(if alive() { silent() } else { stopped() });
        }
        // One SSH session per attempt that, once in, waits for the file cloud-init writes when
        // its last stage ends and prints it: what `cloud-init status --wait` reads, without
        // starting Python (1-2 s under TCG) or a second SSH handshake.
        let mut announced = false;
        loop {
            if qemu_pid(rec).is_none() {
                return Err(stopped());
            }
            let left = limit.saturating_sub(start.elapsed());
            let out = ssh_base(rec, &dir)
                .arg(format!(
                    "echo ssh-up; timeout {} sh -c 'until [ -e {RESULT} ]; do sleep 0.2; done'; \
                     cat {RESULT}",
                    left.as_secs().max(1)
                ))
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map_err(|e| fail(format!("running ssh: {e}")))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            tracing::debug!(
                at_ms = start.elapsed().as_millis() as u64,
                status = %out.status,
                in_guest = text.starts_with("ssh-up\n"),
                "SSH readiness session ended"
            );
            if let Some(result) = text.strip_prefix("ssh-up\n") {
                if !announced {
                    announced = true;
                    progress(&format!(
                        "SSH answers after {} s; waiting for cloud-init",
                        start.elapsed().as_secs()
                    ));
                }
                if !result.trim().is_empty() {
                    return match cloud_init_errors(result) {
                        Ok(errors) if errors.is_empty() => {
                            progress(&format!("ready after {} s", start.elapsed().as_secs()));
                            Ok(())
                        }
                        Ok(errors) => Err(fail(format!(
                            "cloud-init finished with errors: {} (the guest is left running \
                             for inspection)",
                            errors.join("; ")
                        ))),
                        Err(e) => Err(fail(format!(
                            "cloud-init's {RESULT} is not what berth expects: {e}"
                        ))),
                    };
                }
            }
            if start.elapsed() > limit {
                return Err(if announced {
                    fail(format!(
                        "cloud-init did not finish within {} s (the guest is left running for \
                         inspection)",
                        limit.as_secs()
                    ))
                } else {
                    silent()
                });
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Start a stopped VM.
    pub fn start(
        &self,
        name: &str,
        wait: Option<Duration>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), VmError> {
        let (row, rec) = self.get(name)?;
        if !matches!(self.state(&row, &rec)?, VmState::Stopped { .. }) {
            return Err(VmError::Invalid(format!("{name} is already running")));
        }
        let qemu = qhost::qemu_binary()
            .ok_or_else(|| VmError::QemuStart("qemu-system-x86_64 was not found".into()))?;
        self.store.set_instance_state(name, "running", "")?;
        if let Err(e) = self.spawn(&qemu, name, &rec, false) {
            self.store
                .set_instance_state(name, "stopped", &e.to_string())?;
            return Err(e);
        }
        if let Some(limit) = wait {
            self.wait_ready(name, &rec, limit, progress)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_boot_is_summed_up_by_its_console_reports() {
        let log = "[    0.000000] Linux version 6.1.0\n\
[    5.081837] random: crng init done\n\
\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39mnetworking.service\u{1b}[0m.\n\
\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39mnetworking.service\u{1b}[0m.\n\
[  242.100000] INFO: task cloud-init:183 blocked for more than 120 seconds.\n\
[  242.100100] Call Trace:\n\
[  242.100200]  <TASK>\n";
        assert_eq!(
            console_reports(log, 12),
            [
                "[    5.081837] random: crng init done",
                "FAILED] Failed to start networking.service.",
                "[  242.100000] INFO: task cloud-init:183 blocked for more than 120 seconds.",
            ]
        );
        assert_eq!(console_reports(log, 1).len(), 1);
        assert!(console_reports("[ 1.0] all well\n", 12).is_empty());
        // The error shows them above the tail, and leaves the heading out when there are none.
        let err = |reports: &str| {
            VmError::NotReady {
                name: "g".into(),
                message: "SSH did not answer".into(),
                log: "/x/console.log".into(),
                reports: reports.into(),
                tail: "last".into(),
            }
            .to_string()
        };
        assert_eq!(
            err("r1\nr2"),
            "g: SSH did not answer\n--- what the guest reported on its console ---\nr1\nr2\n\
--- last lines of the console (/x/console.log) ---\nlast"
        );
        assert_eq!(
            err(""),
            "g: SSH did not answer\n--- last lines of the console (/x/console.log) ---\nlast"
        );
    }

    #[test]
    fn berths_own_images_boot_paravirt_and_imported_ones_hybrid() {
        assert_eq!(default_kind("3f9a0c1d2e4b5a69"), Kind::Paravirt);
        assert_eq!(default_kind("imported:0a1b2c3d"), Kind::Hybrid);
    }

    #[test]
    fn cloud_init_results_are_read_as_cloud_init_status_reads_them() {
        let done = r#"{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vdb]", "errors": []}}"#;
        assert_eq!(cloud_init_errors(done).unwrap(), Vec::<String>::new());
        let failed = r#"{
 "v1": {
  "datasource": "DataSourceNoCloud",
  "errors": ["('scripts_user', RuntimeError('Runparts: 1 failures'))"]
 }
}"#;
        assert_eq!(
            cloud_init_errors(failed).unwrap(),
            ["('scripts_user', RuntimeError('Runparts: 1 failures'))"]
        );
        assert!(cloud_init_errors("{\"v1\": {}}").is_err());
        assert!(cloud_init_errors("cat: /run/cloud-init/result.json: No such file").is_err());
    }
}
