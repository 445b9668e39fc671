//! Containers: run a command in a container made from a base image's tree, with cgroup limits.
//!
//! Each container has a folder under `DATA/containers/NAME` (overlayfs `upper/`, `work/`, the
//! merged `rootfs/`, and the OCI `config.json`) and a row in the state database (type
//! `container`) holding a [`ContainerRecord`]. The image's tree is extracted once, on first use,
//! to `DATA/images/IMAGE/rootfs` and shared read-only by every container made from it.
//! libcontainer's own state lives in `DATA/run/containers`; the cgroup is `berth/NAME` on the
//! host's hierarchy (v1 or v2, detected).

use crate::dirs::Dirs;
use crate::images::{check_name, ImageError, Store as ImageStore};
use berth_cgroups::{Cgroup, CgroupError, Hierarchy, IoMax, Limits};
use berth_cloudinit::compose::UserData;
use berth_container::{direct, spec, Network, Overlay, Plan, Runtime};
use berth_disk::ops::{self, ConvertOptions};
use berth_disk::{BackingPolicy, Format};
use berth_state::{InstanceRow, Store};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors from container operations; each names the container, file or value at fault.
#[derive(Debug, Error)]
pub enum ContainerError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// No such container.
    #[error("no instance named {0:?} (see `berth list`)")]
    NotFound(String),
    /// The image store.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The disk engine (extracting an image's tree).
    #[error(transparent)]
    Disk(#[from] berth_disk::Error),
    /// A file the user named (not a regular file, over its cap, not text).
    #[error(transparent)]
    File(#[from] berth_files::FileError),
    /// State.
    #[error(transparent)]
    State(#[from] berth_state::StateError),
    /// cgroups.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Root filesystems.
    #[error(transparent)]
    Rootfs(#[from] berth_container::RootfsError),
    /// The OCI spec.
    #[error(transparent)]
    Spec(#[from] berth_container::SpecError),
    /// The runtime.
    #[error(transparent)]
    Runtime(#[from] berth_container::RuntimeError),
    /// berth's own runtime (`berth run`).
    #[error(transparent)]
    Direct(#[from] berth_container::direct::DirectError),
    /// Networking.
    #[error(transparent)]
    Net(#[from] berth_net::NetError),
    /// A filesystem operation.
    #[error("{what} {path}: {source}")]
    Io {
        /// What berth was doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_path_buf();
    move |source| ContainerError::Io { what, path, source }
}

/// How a command berth ran in a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandExit {
    /// Its exit status, or 128 + the signal that ended it.
    pub code: i32,
    /// Processes in the container that the kernel's OOM killer ended, because of the
    /// container's memory limit, while the command ran.
    pub oom_kills: u64,
}

/// What berth stores for a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    /// Image name.
    pub image: String,
    /// The command.
    pub args: Vec<String>,
    /// Configured limits.
    pub limits: Limits,
    /// `--io-max` devices, resolved.
    pub io: Vec<IoMax>,
    /// cgroup path (relative to the hierarchy's root).
    pub cgroup: String,
    /// Host pid of the container's init while it runs.
    pub pid: Option<u32>,
    /// Exit status of its last run.
    pub exit: Option<i32>,
    /// `none`, `host` or `bridge`.
    pub network: String,
    /// The container's address on berth0 (bridge networking).
    #[serde(default)]
    pub address: Option<std::net::Ipv4Addr>,
    /// TCP forwards: host port -> container port.
    #[serde(default)]
    pub forwards: Vec<(u16, u16)>,
    /// Size of the container's own disk (its writable layer), when it has one.
    #[serde(default)]
    pub disk: Option<u64>,
    /// The host ID that root inside maps to, for an unprivileged container.
    #[serde(default)]
    pub id_base: Option<u32>,
    /// A system container (systemd as PID 1) rather than one command.
    #[serde(default)]
    pub system: bool,
    /// The machine-id registered for a system container.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// Hostname inside (the cloud-config's `hostname`, else the name).
    #[serde(default)]
    pub hostname: Option<String>,
}

/// What `berth launch --container` asks for.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Base image.
    pub image: String,
    /// Container name.
    pub name: String,
    /// Limits.
    pub limits: Limits,
    /// The user's user-data, checked ([`UserData::accept`]).
    pub user_data: UserData,
    /// `none`, `host` or `bridge`.
    pub network: String,
    /// TCP forwards: host port -> container port (bridge only).
    pub forwards: Vec<(u16, u16)>,
    /// Cap what the container can write: its upper layer on a disk of this size.
    pub disk: Option<u64>,
    /// Run in a user namespace: root inside is an unprivileged ID range outside.
    pub unprivileged: bool,
}

/// What `berth run` asks for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Base image.
    pub image: String,
    /// Container name.
    pub name: String,
    /// The command.
    pub args: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// Remove the container when the command ends.
    pub rm: bool,
    /// `none` (default), `host` or `bridge`.
    pub network: String,
    /// Cap what the container can write: its upper layer on a disk of this size.
    pub disk: Option<u64>,
    /// Run in a user namespace: root inside is an unprivileged ID range outside.
    pub unprivileged: bool,
}

/// berth's containers.
#[derive(Debug)]
pub struct Containers {
    dirs: Dirs,
    store: Store,
}

impl Containers {
    /// Open berth's state.
    pub fn open(dirs: &Dirs) -> Result<Containers, ContainerError> {
        Ok(Containers {
            dirs: dirs.clone(),
            store: Store::open(&dirs.root)?,
        })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.dirs.root.join("containers").join(name)
    }

    fn runtime(&self) -> Runtime {
        Runtime::new(self.dirs.root.join("run").join("containers"))
    }

    /// A container's record.
    pub fn get(&self, name: &str) -> Result<(InstanceRow, ContainerRecord), ContainerError> {
        let row = self
            .store
            .instance(name)?
            .filter(|r| r.kind == "container")
            .ok_or_else(|| ContainerError::NotFound(name.to_string()))?;
        let rec = serde_json::from_str(&row.spec).map_err(|e| {
            ContainerError::Invalid(format!("stored record of {name} is unreadable: {e}"))
        })?;
        Ok((row, rec))
    }

    /// Whether the container's init still runs (its pid alive and in the container's cgroup).
    pub fn is_running(&self, rec: &ContainerRecord) -> bool {
        let Some(pid) = rec.pid else { return false };
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| {
                let ours = format!("/{}", rec.cgroup);
                t.lines().any(|l| {
                    l.split_once(&ours)
                        .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with('/'))
                })
            })
            .unwrap_or(false)
    }

    /// Why a container is not running when berth did not stop it.
    pub fn reason(&self, row: &InstanceRow, running: bool) -> String {
        if !running && row.desired == "running" {
            "its init ended outside berth (killed or crashed)".into()
        } else {
            row.note.clone()
        }
    }

    /// All containers with whether each runs.
    pub fn list(&self) -> Result<Vec<(InstanceRow, ContainerRecord, bool)>, ContainerError> {
        let mut out = Vec::new();
        for row in self.store.instances()? {
            // An instance being created has no record yet (see the executor).
            if row.kind != "container" || row.spec.is_empty() {
                continue;
            }
            let (row, rec) = self.get(&row.name)?;
            let running = self.is_running(&rec);
            out.push((row, rec, running));
        }
        Ok(out)
    }

    /// The image's shared tree, extracted on first use (from a raw copy of its disk, mounted
    /// read-only by the kernel).
    pub fn image_tree(&self, image: &str) -> Result<PathBuf, ContainerError> {
        let images = ImageStore::new(&self.dirs);
        let meta = images.get(image)?;
        let dir = images.path(image);
        let tree = dir.join("rootfs");
        if tree.is_dir() {
            return Ok(tree);
        }
        let raw = dir.join(format!(".rootfs-{}.raw", std::process::id()));
        let _ = std::fs::remove_file(&raw);
        let converted = ops::convert(
            &ConvertOptions::new(dir.join(&meta.disk), &raw, Format::Raw),
            &BackingPolicy::default(),
            &mut |_, _| {},
        );
        let extracted = converted
            .map_err(ContainerError::from)
            .and_then(|_| Ok(berth_container::rootfs::extract_tree(&raw, &tree)?));
        let _ = std::fs::remove_file(&raw);
        extracted?;
        Ok(tree)
    }

    fn check_new(
        &self,
        name: &str,
        limits: &Limits,
        network: &str,
        forwards: &[(u16, u16)],
        disk: &Option<u64>,
    ) -> Result<(), ContainerError> {
        check_name(name).map_err(|_| {
            ContainerError::Invalid(format!(
                "invalid instance name {name:?}: use letters, digits, '-', '_' and '.'"
            ))
        })?;
        limits
            .check()
            .map_err(|e| ContainerError::Invalid(e.to_string()))?;
        if limits.io_max.iter().any(|m| m.device == "disk") && disk.is_none() {
            return Err(ContainerError::Invalid(
                "--io-max disk:... needs --disk (the container's own disk)".into(),
            ));
        }
        if let Some(size) = disk {
            if *size < 16 << 20 {
                return Err(ContainerError::Invalid(format!(
                    "--disk {size} bytes is too small (at least 16M)"
                )));
            }
            if *size > i64::MAX as u64 {
                return Err(ContainerError::Invalid(format!(
                    "--disk {size} bytes is larger than any file can be (at most {} bytes, 8E - 1)",
                    i64::MAX
                )));
            }
        }
        if !["none", "host", "bridge"].contains(&network) {
            return Err(ContainerError::Invalid(format!(
                "--network {network:?}: expected none, host or bridge"
            )));
        }
        if network != "bridge" && (limits.net_rate.is_some() || !forwards.is_empty()) {
            return Err(ContainerError::Invalid(format!(
                "--net-rate and --forward need --network bridge (this container's is {network})"
            )));
        }
        crate::vms::check_forwards(forwards.iter().map(|(h, _)| *h))
            .map_err(|e| ContainerError::Invalid(e.to_string()))?;
        // Looking for nft and iptables only when there are forwards to check.
        let net = (!forwards.is_empty()).then(berth_net::Host::detect);
        for (host, _) in forwards {
            if net.as_ref().is_some_and(|n| n.forwarded(*host)) {
                return Err(ContainerError::Invalid(format!(
                    "host port {host} is already forwarded to another container"
                )));
            }
            std::net::TcpListener::bind(("0.0.0.0", *host)).map_err(|e| {
                ContainerError::Invalid(format!(
                    "host port {host} is not available for --forward: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Launch a system container: the image's systemd as PID 1, its own hostname and a
    /// registered machine-id, the cloud-config given to cloud-init as NoCloud data, limits in
    /// place before init runs. With `wait`, returns once systemd is up (`running` or
    /// `degraded`) and cloud-init is done; a timeout leaves the container for inspection.
    pub fn launch(
        &self,
        o: &LaunchOptions,
        wait: Option<std::time::Duration>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ContainerRecord, ContainerError> {
        self.check_new(&o.name, &o.limits, &o.network, &o.forwards, &o.disk)?;
        let user = &o.user_data;
        Hierarchy::detect()?;
        progress("preparing the image's tree");
        let lower = self.lower_for(&o.image, o.unprivileged.then_some(ID_BASE))?;
        let dir = self.dir(&o.name);
        std::fs::create_dir_all(dir.parent().unwrap_or(&dir)).map_err(io("creating", &dir))?;
        std::fs::create_dir(&dir).map_err(io("creating", &dir))?;
        let made = (|| -> Result<ContainerRecord, ContainerError> {
            let machine_id = crate::machine_ids::allocate(&self.store, "container", &o.name)
                .map_err(|e| ContainerError::Invalid(e.to_string()))?
                .to_string();
            // Identity goes into the upper layer before it is mounted (so nothing in the image,
            // such as a symlink, can redirect it).
            if let Some(size) = o.disk {
                self.create_disk(&o.name, size)?;
            }
            self.mount_disk(&o.name, o.disk)?;
            let upper = self.overlay_for(&o.name, &lower, o.disk).upper;
            let mut ours = berth_cloudinit::config::GuestConfig {
                hostname: Some(o.name.clone()),
                ..Default::default()
            };
            ours.extra
                .insert("manage_etc_hosts".into(), serde_json::json!(true));
            let merged = user.merged(&ours);
            let hostname = merged
                .get("hostname")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(&o.name)
                .to_string();
            let seed = upper.join("var/lib/cloud/seed/nocloud");
            for (path, text) in [
                (upper.join("etc/machine-id"), format!("{machine_id}\n")),
                // The image's fstab names the VM disk's root (LABEL=rootfs), which a container
                // has not got: systemd-remount-fs failed on it and left every system container
                // `degraded`. berth mounts a container's root and kernel file systems itself, as
                // LXC's templates have it.
                (
                    upper.join("etc/fstab"),
                    "# Written by berth: a container's file systems are mounted by berth.\n"
                        .to_string(),
                ),
                (upper.join("etc/hostname"), format!("{hostname}\n")),
                // berth sets the hostname from outside (the UTS namespace and /etc/hostname): a
                // container may not change it itself, and cloud-init warns when it tries. In
                // the system configuration, as cloud-init sets it before reading user-data.
                (
                    upper.join("etc/cloud/cloud.cfg.d/99-berth-hostname.cfg"),
                    "# Written by berth: the hostname is set from the host.\npreserve_hostname: true\n".to_string(),
                ),
                (
                    seed.join("user-data"),
                    berth_cloudinit::compose::render(&merged, &user.parts),
                ),
                (
                    seed.join("meta-data"),
                    berth_cloudinit::seed::meta_data(&format!("iid-{machine_id}"), Some(&hostname)),
                ),
            ] {
                let parent = path.parent().unwrap_or(&upper);
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
                std::fs::write(&path, text).map_err(io("writing", &path))?;
            }
            write_network_files(&upper, &o.network)?;
            if o.unprivileged {
                berth_container::rootfs::shift_tree(&upper, ID_BASE, spec::ID_RANGE)?;
            }
            let cgroup = Cgroup::new(Hierarchy::detect()?, format!("berth/{}", o.name));
            let rec = ContainerRecord {
                image: o.image.clone(),
                args: vec!["/sbin/init".into()],
                limits: o.limits.clone(),
                io: Vec::new(),
                cgroup: cgroup.relative().to_string_lossy().into_owned(),
                pid: None,
                exit: None,
                network: o.network.clone(),
                address: None,
                forwards: o.forwards.clone(),
                disk: o.disk,
                id_base: o.unprivileged.then_some(ID_BASE),
                system: true,
                machine_id: Some(machine_id),
                hostname: Some(hostname),
            };
            // The record before anything runs: whatever happens next, a later berth finds it.
            self.store.set_instance_spec(
                &o.name,
                &serde_json::to_string(&rec).expect("record serialises"),
            )?;
            progress("starting systemd");
            let rec = self.boot(&o.name, &lower, rec)?;
            self.store.set_instance_state(&o.name, "running", "")?;
            Ok(rec)
        })();
        let rec = match made {
            Ok(rec) => rec,
            Err(e) => {
                let cgroup = Cgroup::new(Hierarchy::detect()?, format!("berth/{}", o.name));
                if let Some(pid) = self.get(&o.name).ok().and_then(|(_, r)| r.pid) {
                    kill(pid, "KILL");
                }
                let _ = self.remove_all(&o.name, &cgroup, true);
                let _ = self.store.release_machine_id("container", &o.name);
                return Err(e);
            }
        };
        if let Some(limit) = wait {
            progress("waiting for systemd and cloud-init");
            self.wait_ready(&o.name, limit)?;
        }
        Ok(rec)
    }

    /// Mount the root, create the container with systemd as init (console output to
    /// `console.log`), write the limits, start it, and record its pid.
    fn boot(
        &self,
        name: &str,
        lower: &Path,
        mut rec: ContainerRecord,
    ) -> Result<ContainerRecord, ContainerError> {
        let dir = self.dir(name);
        // /dev/console: a pty whose master a relay process holds (berth console, berth logs).
        let pty = berth_container::console::open_pty()
            .map_err(|e| io("opening a pseudo-terminal for", &dir)(e))?;
        if let Some(base) = rec.id_base {
            berth_container::rootfs::shift_tree(&pty.slave, base, spec::ID_RANGE)?;
        }
        self.mount_disk(name, rec.disk)?;
        let overlay = self.overlay_for(name, lower, rec.disk);
        overlay.mount()?;
        rec.io = self.resolve_io(name, &rec.limits)?;
        let cgroup = Cgroup::new(Hierarchy::detect()?, &rec.cgroup);
        let plan = system_plan(
            name,
            &rec,
            &overlay.merged,
            &cgroup,
            Some(pty.slave.clone()),
        );
        let log_path = dir.join("console.log");
        let spec = spec::build(&plan)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("opening", &log_path))?;
        let log2 = log.try_clone().map_err(io("opening", &log_path))?;
        if let Some(base) = rec.id_base {
            // Root inside writes its console through the bind mount: it must own the file.
            berth_container::rootfs::shift_tree(&log_path, base, spec::ID_RANGE)?;
        }
        let null =
            std::fs::File::open("/dev/null").map_err(io("opening", Path::new("/dev/null")))?;
        let runtime = self.runtime();
        // What a container killed from outside, or a stop cut short, left behind.
        if cgroup.exists() {
            end_all(&cgroup)?;
            cgroup.remove()?;
        }
        self.remove_systemd_group(name)?;
        runtime.delete(name)?;
        // On a v1 host systemd inside keeps its groups in the name=systemd hierarchy, which
        // libcontainer does not manage: berth steps into berth/NAME there while the container is
        // created, so its init (and its cgroup namespace) starts there, then steps back.
        let sd_root = systemd_v1_root();
        let sd_group = sd_root.as_ref().map(|r| r.join("berth").join(name));
        let back = match (&sd_root, &sd_group) {
            (Some(r), Some(g)) => Some(enter_group(r, g)?),
            _ => None,
        };
        let created = runtime.create(
            name,
            &dir,
            &spec,
            berth_container::Stdio {
                stdin: Some(null),
                stdout: Some(log),
                stderr: Some(log2),
            },
        );
        if let (Some(r), Some(back)) = (&sd_root, back) {
            enter_group(r, &back)?;
        }
        let mut created = created?;
        if let (Some(base), Some(g)) = (rec.id_base, &sd_group) {
            berth_container::rootfs::shift_tree(g, base, spec::ID_RANGE)?;
        }
        rec.pid = created.pid();
        self.spawn_relay(name, pty, rec.pid.unwrap_or(0))?;
        self.store.set_instance_spec(
            name,
            &serde_json::to_string(&rec).expect("record serialises"),
        )?;
        cgroup.create()?;
        cgroup.apply(&rec.limits, &rec.io, None)?;
        if let Some(base) = rec.id_base {
            // systemd inside makes its own groups: root inside must own the container's.
            for d in cgroup.dirs() {
                berth_container::rootfs::shift_tree(&d, base, spec::ID_RANGE)?;
            }
        }
        self.connect(name, &mut rec)?;
        created.start()?;
        self.store.set_instance_state(name, "running", "")?;
        Ok(rec)
    }

    /// Bridge networking for a created container (its init waits in its own namespace): an
    /// address (kept across restarts), eth0 on berth0, shaping, forwards. A no-op otherwise.
    fn connect(&self, name: &str, rec: &mut ContainerRecord) -> Result<(), ContainerError> {
        if rec.network != "bridge" {
            return Ok(());
        }
        let net = berth_net::Host::detect();
        let _lock = host_net_lock()?;
        net.ensure_bridge()?;
        let key = self.net_key(name);
        // Addresses are the bridge's, host-wide: this data dir's and every live lease of the
        // others (a lease lives while its veth does).
        let leased = berth_net::leases::live(&key);
        let taken = |a: &std::net::Ipv4Addr| leased.contains(a);
        if rec.address.as_ref().is_some_and(taken) {
            rec.address = None;
        }
        if rec.address.is_none() {
            let mut used: Vec<std::net::Ipv4Addr> = self
                .list()?
                .into_iter()
                .filter(|(row, _, _)| row.name != name)
                .filter_map(|(_, r, _)| r.address)
                .collect();
            used.extend(leased.iter().copied());
            rec.address = Some(berth_net::allocate(&net.bridge, &used)?);
            self.store.set_instance_spec(
                name,
                &serde_json::to_string(&rec).expect("record serialises"),
            )?;
        }
        let addr = rec.address.expect("allocated above");
        berth_net::leases::take(addr, &key);
        net.attach(
            &self.net_key(name),
            rec.pid.unwrap_or(0),
            addr,
            rec.limits.net_rate,
        )?;
        for (host, port) in &rec.forwards {
            net.remove_forward(*host, addr, *port)?;
            net.add_forward(*host, addr, *port)?;
        }
        Ok(())
    }

    /// Undo [`Self::connect`]'s host side: forwards and the veth (the namespace's end goes with
    /// it); with `last`, the bridge and berth's rules go when no other container uses them.
    fn disconnect(
        &self,
        name: &str,
        rec: &ContainerRecord,
        last: bool,
    ) -> Result<(), ContainerError> {
        if rec.network != "bridge" {
            return Ok(());
        }
        let net = berth_net::Host::detect();
        if let Some(addr) = rec.address {
            for (host, port) in &rec.forwards {
                net.remove_forward(*host, addr, *port)?;
            }
        }
        let _lock = host_net_lock()?;
        net.detach(&self.net_key(name))?;
        // The bridge is host-wide: it goes only when no container of any data dir is on it,
        // which the kernel knows (its ports), not this data dir's records.
        if last && net.bridge_up() && net.bridge_ports() == 0 {
            net.teardown_bridge()?;
        }
        Ok(())
    }

    /// The shared lower tree: the image's own, or for unprivileged containers a copy owned by
    /// the mapped ID range (made once per image and base).
    fn lower_for(&self, image: &str, id_base: Option<u32>) -> Result<PathBuf, ContainerError> {
        let tree = self.image_tree(image)?;
        let Some(base) = id_base else {
            return Ok(tree);
        };
        let shifted = ImageStore::new(&self.dirs)
            .path(image)
            .join(format!("rootfs-{base}"));
        if !shifted.is_dir() {
            berth_container::rootfs::shifted_copy(&tree, &shifted, base, spec::ID_RANGE)?;
        }
        Ok(shifted)
    }

    /// The container's group in the v1 name=systemd hierarchy, on hosts that have one.
    fn systemd_group(&self, name: &str) -> Option<PathBuf> {
        Some(systemd_v1_root()?.join("berth").join(name))
    }

    /// Remove the container's name=systemd groups (after its processes are gone).
    fn remove_systemd_group(&self, name: &str) -> Result<(), ContainerError> {
        if let Some(g) = self.systemd_group(name) {
            berth_cgroups::remove_tree(&g)?;
        }
        Ok(())
    }

    /// The container's name on the host's network (its veth names and lease): unique across
    /// data dirs, which may hold containers of the same name.
    fn net_key(&self, name: &str) -> String {
        format!("{}/{name}", self.dirs.root.display())
    }

    fn layer_dir(&self, name: &str) -> PathBuf {
        self.dir(name).join("layer")
    }

    /// The container's own disk: a sparse raw image made by berth's disk engine, with ext4.
    fn create_disk(&self, name: &str, size: u64) -> Result<(), ContainerError> {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let disk = dir.join("disk.raw");
        ops::create(
            &ops::CreateOptions::new(&disk, Format::Raw, Some(size)),
            &BackingPolicy::default(),
        )?;
        Ok(berth_container::rootfs::make_ext4(&disk, "berth-layer")?)
    }

    /// Mount the container's disk (if it has one) where its writable layer lives.
    fn mount_disk(&self, name: &str, disk: Option<u64>) -> Result<(), ContainerError> {
        if disk.is_none() {
            return Ok(());
        }
        let layer = self.layer_dir(name);
        std::fs::create_dir_all(&layer).map_err(io("creating", &layer))?;
        if berth_container::rootfs::is_mount_point(&layer) {
            return Ok(());
        }
        let img = self.dir(name).join("disk.raw");
        Ok(berth_container::rootfs::mount_ext4_loop(&img, &layer, "")?)
    }

    /// The overlay of a container: its writable layer on its own disk, or in its folder.
    fn overlay_for(&self, name: &str, lower: &Path, disk: Option<u64>) -> Overlay {
        let dir = self.dir(name);
        let mut o = Overlay::under(&dir, lower);
        if disk.is_some() {
            let layer = self.layer_dir(name);
            o.upper = layer.join("upper");
            o.work = layer.join("work");
        }
        o
    }

    /// Unmount the merged root and the container's disk (idempotent).
    fn unmount(&self, name: &str) -> Result<(), ContainerError> {
        Overlay::under(&self.dir(name), Path::new("/")).unmount()?;
        let layer = self.layer_dir(name);
        if berth_container::rootfs::is_mount_point(&layer) {
            rustix::mount::unmount(&layer, rustix::mount::UnmountFlags::empty())
                .map_err(|e| io("unmounting", &layer)(e.into()))?;
        }
        Ok(())
    }

    /// `--io-max` devices as major:minor: `disk` is the container's own disk (its loop device,
    /// which changes from boot to boot), a path is stat'ed, `MAJ:MIN` is taken as is.
    fn resolve_io(&self, name: &str, limits: &Limits) -> Result<Vec<IoMax>, ContainerError> {
        limits
            .io_max
            .iter()
            .map(|spec| {
                let mut caps = spec.caps.clone();
                if spec.device == "disk" {
                    let layer = self.layer_dir(name);
                    let (maj, min) =
                        berth_container::rootfs::mount_device(&layer).ok_or_else(|| {
                            ContainerError::Invalid(format!(
                                "{name}'s disk is not mounted at {}",
                                layer.display()
                            ))
                        })?;
                    caps.major = maj;
                    caps.minor = min;
                } else if spec.device.starts_with('/') {
                    let st = rustix::fs::stat(spec.device.as_str())
                        .map_err(|e| io("reading", Path::new(&spec.device))(e.into()))?;
                    if st.st_mode & 0o170000 != 0o060000 {
                        return Err(ContainerError::Invalid(format!(
                            "--io-max {}: not a block device",
                            spec.device
                        )));
                    }
                    caps.major = rustix::fs::major(st.st_rdev);
                    caps.minor = rustix::fs::minor(st.st_rdev);
                }
                Ok(caps)
            })
            .collect()
    }

    /// Wait until systemd reports `running` or `degraded` and cloud-init is done. Done with
    /// recoverable errors (cloud-init 23.4 and later exit 2: a deprecated key, a warning) is
    /// done, as for VMs, where berth reads only the `errors` of cloud-init's result.
    pub fn wait_ready(&self, name: &str, limit: std::time::Duration) -> Result<(), ContainerError> {
        let secs = limit.as_secs().max(1).to_string();
        // systemctl says nothing until systemd's private socket is up, and `offline` until
        // systemd has made /run/systemd/system: ask until it says more.
        let script = "while :; do s=$(systemctl is-system-running --wait 2>/dev/null); \
                        case \"$s\" in ''|offline) sleep 0.1;; *) break;; esac; done; \
                      case \"$s\" in running|degraded) ;; *) echo \"systemd: $s\" >&2; exit 3;; esac; \
                      cloud-init status --wait >/dev/null; rc=$?; \
                      case $rc in 0|2) ;; *) cloud-init status --long >&2; exit 4;; esac";
        let code = self.exec(
            name,
            vec![
                "timeout".into(),
                secs.clone(),
                "sh".into(),
                "-c".into(),
                script.into(),
            ],
        )?;
        match code.code {
            0 => Ok(()),
            124 => Err(ContainerError::Invalid(format!(
                "{name} was not ready after {secs} s (left running for inspection: berth logs {name}, berth shell {name})"
            ))),
            3 => Err(ContainerError::Invalid(format!(
                "{name}: systemd did not come up (left running: berth logs {name})"
            ))),
            _ => Err(ContainerError::Invalid(format!(
                "{name}: cloud-init failed (left running: berth exec {name} -- cloud-init status --long)"
            ))),
        }
    }

    /// Run a command in a running container; its exit status.
    pub fn exec(&self, name: &str, args: Vec<String>) -> Result<CommandExit, ContainerError> {
        let (_, rec) = self.get(name)?;
        if !self.is_running(&rec) {
            return Err(ContainerError::Invalid(format!(
                "{name} is not running (berth start {name})"
            )));
        }
        // Every command berth starts in a container goes through berth's own runtime: it joins
        // the container's namespaces (the user namespace last) and cgroup, with the container's
        // credentials, capabilities, no_new_privs and seccomp filter. libcontainer 0.7's exec
        // (its tenant builder) is not used: it joins every namespace but the user namespace (so
        // commands ran as the host's root) and loads no seccomp filter for a privileged system
        // container (`Seccomp: 0`, so keyctl and unshare -U worked there).
        let cgroup = Cgroup::new(Hierarchy::detect()?, &rec.cgroup);
        let root = self.dir(name).join("rootfs");
        let plan = if rec.system {
            system_plan(name, &rec, &root, &cgroup, None)
        } else {
            run_plan(name, &rec, &root, &cgroup)
        };
        let spec = spec::build(&plan)?;
        let pid = rec.pid.unwrap_or(0);
        let prepared = direct::prepare(&spec, &exec_views(&cgroup, pid))?;
        let before = cgroup.oom_kills().unwrap_or(0);
        let code = prepared.exec_in(pid, &args)?;
        Ok(CommandExit {
            code,
            oom_kills: cgroup.oom_kills().unwrap_or(0).saturating_sub(before),
        })
    }

    /// Stop a container: SIGRTMIN+3 to systemd (a clean halt) or SIGTERM to a command, SIGKILL
    /// to whatever is left after `timeout` (at once with `force`). Its files stay.
    pub fn stop(
        &self,
        name: &str,
        force: bool,
        timeout: std::time::Duration,
    ) -> Result<(), ContainerError> {
        let (_, rec) = self.get(name)?;
        let cgroup = Cgroup::new(Hierarchy::detect()?, &rec.cgroup);
        if self.is_running(&rec) {
            let pid = rec.pid.unwrap_or(0);
            if !force {
                kill(pid, if rec.system { "RTMIN+3" } else { "TERM" });
                let deadline = std::time::Instant::now() + timeout;
                while std::time::Instant::now() < deadline && self.is_running(&rec) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
        end_all(&cgroup)?;
        cgroup.remove()?;
        self.remove_systemd_group(name)?;
        if rec.system {
            crate::procs::end(&self.dir(name), crate::procs::console_relay);
        }
        self.runtime().delete(name)?;
        self.disconnect(name, &rec, false)?;
        self.unmount(name)?;
        self.store
            .set_instance_state(name, "stopped", if force { "killed" } else { "stopped" })?;
        Ok(())
    }

    /// Start a stopped system container again (its files kept).
    pub fn start(&self, name: &str) -> Result<ContainerRecord, ContainerError> {
        let (_, rec) = self.get(name)?;
        if self.is_running(&rec) {
            return Err(ContainerError::Invalid(format!(
                "{name} is already running"
            )));
        }
        if !rec.system {
            return Err(ContainerError::Invalid(format!(
                "{name} ran one command (berth run); run it again with berth run"
            )));
        }
        let lower = self.lower_for(&rec.image, rec.id_base)?;
        self.boot(name, &lower, rec)
    }

    /// Change limits (`KEY=VALUE`, `KEY=none` lifts one); on a running container they take
    /// effect at once, in its cgroup and on its interface. The new limits are returned.
    pub fn set(&self, name: &str, assignments: &[String]) -> Result<Limits, ContainerError> {
        let (_, mut rec) = self.get(name)?;
        let old = rec.limits.clone();
        let mut new = old.clone();
        for a in assignments {
            new.set(a)
                .map_err(|e| ContainerError::Invalid(format!("{name}: {e}")))?;
        }
        if new.io_max.iter().any(|m| m.device == "disk") && rec.disk.is_none() {
            return Err(ContainerError::Invalid(format!(
                "io-max disk:... needs a container launched with --disk ({name} has none)"
            )));
        }
        if new.net_rate.is_some() && rec.network != "bridge" {
            return Err(ContainerError::Invalid(format!(
                "net-rate needs --network bridge ({name}'s is {})",
                rec.network
            )));
        }
        if self.is_running(&rec) {
            let cgroup = Cgroup::new(Hierarchy::detect()?, &rec.cgroup);
            let io = self.resolve_io(name, &new)?;
            cgroup.apply(&new, &io, Some((&old, &rec.io)))?;
            rec.io = io;
            if new.net_rate != old.net_rate {
                berth_net::Host::detect().shape(
                    &self.net_key(name),
                    rec.pid.unwrap_or(0),
                    new.net_rate,
                )?;
            }
        }
        rec.limits = new.clone();
        self.store.set_instance_spec(
            name,
            &serde_json::to_string(&rec).expect("record serialises"),
        )?;
        Ok(new)
    }

    /// Start the console relay for a created container (see `berth_container::console`): this
    /// same program, run as `berth console-relay`, in its own process group so it outlives the
    /// command that launched the container.
    fn spawn_relay(
        &self,
        name: &str,
        pty: berth_container::console::Pty,
        pid: u32,
    ) -> Result<(), ContainerError> {
        use std::os::unix::process::CommandExt;
        let dir = self.dir(name);
        let exe = std::env::current_exe().map_err(io("finding berth's own program for", &dir))?;
        std::process::Command::new(&exe)
            .arg("console-relay")
            .arg("--slave")
            .arg(&pty.slave)
            .arg("--socket")
            .arg(dir.join("console.sock"))
            .arg("--log")
            .arg(dir.join("console.log"))
            .arg("--pid")
            .arg(pid.to_string())
            .stdin(std::process::Stdio::from(pty.master))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io("starting the console relay", &exe))?;
        Ok(())
    }

    /// The socket `berth console` attaches to (while the container runs).
    pub fn console_socket(&self, name: &str) -> Result<PathBuf, ContainerError> {
        self.get(name)?;
        Ok(self.dir(name).join("console.sock"))
    }

    /// Bytes the container received and sent on its bridge interface, read from the host's end
    /// of its veth pair (what the host end transmits, the container receives).
    pub fn net_bytes(&self, name: &str, rec: &ContainerRecord) -> Option<(u64, u64)> {
        if rec.network != "bridge" || !self.is_running(rec) {
            return None;
        }
        let (host, _) = berth_net::veth_names(&self.net_key(name));
        let stat = |f: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/sys/class/net/{host}/statistics/{f}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some((stat("tx_bytes")?, stat("rx_bytes")?))
    }

    /// A container's console log.
    pub fn console_log(&self, name: &str) -> Result<PathBuf, ContainerError> {
        self.get(name)?;
        Ok(self.dir(name).join("console.log"))
    }

    /// Run a command in a new container and wait for it: the command's exit status (128 + N when
    /// signal N ended it). With `rm` nothing of the container is left afterwards; otherwise it
    /// stays, stopped, until `berth delete`.
    /// `lock` holds the name (see [`crate::locks`]) until the container's row exists.
    pub fn run(
        &self,
        o: &RunOptions,
        lock: crate::locks::InstanceLock,
    ) -> Result<CommandExit, ContainerError> {
        let name = o.name.clone();
        let mut clock = Clock::start();
        self.check_new(&name, &o.limits, &o.network, &[], &o.disk)?;
        if self.store.instance(&name)?.is_some() {
            return Err(ContainerError::Invalid(format!(
                "an instance named {name:?} already exists"
            )));
        }
        clock.mark("checks");
        if o.args.is_empty() {
            return Err(ContainerError::Invalid(
                "no command given: berth run IMAGE -- CMD [ARGS...]".into(),
            ));
        }
        let hierarchy = Hierarchy::detect()?;
        let lower = self.lower_for(&o.image, o.unprivileged.then_some(ID_BASE))?;
        let cgroup = Cgroup::new(hierarchy, format!("berth/{name}"));
        clock.mark("hierarchy and image tree");
        let mut rec = ContainerRecord {
            image: o.image.clone(),
            args: o.args.clone(),
            limits: o.limits.clone(),
            io: Vec::new(),
            cgroup: cgroup.relative().to_string_lossy().into_owned(),
            pid: None,
            exit: None,
            network: o.network.clone(),
            address: None,
            forwards: Vec::new(),
            disk: o.disk,
            id_base: o.unprivileged.then_some(ID_BASE),
            system: false,
            machine_id: None,
            hostname: None,
        };
        // Its own machine-id, registered like every guest's: systemd and D-Bus code in the
        // command (journald, dbus-daemon, anything keyed by /etc/machine-id) sees a unique one.
        let machine_id = crate::machine_ids::allocate(&self.store, "container", &name)?;
        rec.machine_id = Some(machine_id.to_string());
        let row = InstanceRow {
            name: name.clone(),
            kind: "container".into(),
            image: o.image.clone(),
            spec: serde_json::to_string(&rec).expect("record serialises"),
            desired: "running".into(),
            note: String::new(),
            created_at: unix_now() as i64,
        };
        if let Err(e) = self.store.insert_instance(&row) {
            let _ = self.store.release_machine_id("container", &name);
            return Err(e.into());
        }
        // From here the row holds the name; the lock would keep `stop` and `delete` of the
        // running command away.
        drop(lock);
        clock.mark("state row");
        let result = self.run_inner(&name, &lower, &cgroup, &mut rec, o, &mut clock);
        // Whatever happened, the container's process is gone or reaped by now.
        let outcome = match &result {
            Ok(exit) if exit.oom_kills > 0 => format!(
                "exited with {} after its memory limit killed {} process(es)",
                exit.code, exit.oom_kills
            ),
            Ok(exit) => format!("exited with {}", exit.code),
            Err(e) => format!("failed: {e}"),
        };
        rec.pid = None;
        rec.exit = result.as_ref().ok().map(|e| e.code);
        clock.mark("record exit");
        if o.rm || result.is_err() {
            let cleaned = self
                .disconnect(&name, &rec, true)
                .and_then(|_| self.remove_all(&name, &cgroup, false))
                .and_then(|_| {
                    self.store
                        .release_machine_id("container", &name)
                        .map(drop)
                        .map_err(ContainerError::from)
                });
            clock.mark("removed");
            result.and_then(|code| cleaned.map(|_| code))
        } else {
            self.store.set_instance_spec(
                &name,
                &serde_json::to_string(&rec).expect("record serialises"),
            )?;
            self.store.set_instance_state(&name, "stopped", &outcome)?;
            self.unmount(&name)?;
            result
        }
    }

    fn run_inner(
        &self,
        name: &str,
        lower: &Path,
        cgroup: &Cgroup,
        rec: &mut ContainerRecord,
        o: &RunOptions,
        clock: &mut Clock,
    ) -> Result<CommandExit, ContainerError> {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        if let Some(size) = o.disk {
            self.create_disk(name, size)?;
        }
        self.mount_disk(name, o.disk)?;
        rec.io = self.resolve_io(name, &o.limits)?;
        let overlay = self.overlay_for(name, lower, o.disk);
        if o.network != "none" {
            write_network_files(&overlay.upper, &o.network)?;
        }
        if let Some(id) = &rec.machine_id {
            write_machine_id(&overlay.upper, id)?;
        }
        if let Some(base) = rec.id_base {
            std::fs::create_dir_all(&overlay.upper).map_err(io("creating", &overlay.upper))?;
            berth_container::rootfs::shift_tree(&overlay.upper, base, spec::ID_RANGE)?;
        }
        if o.rm {
            overlay.mount_throwaway()?;
        } else {
            overlay.mount()?;
        }
        clock.mark("overlay");
        let spec = spec::build(&run_plan(name, rec, &overlay.merged, cgroup))?;
        // The group and its limits exist before the process: it joins the group before its
        // command starts, and sees its own group under /sys/fs/cgroup.
        cgroup.create()?;
        cgroup.apply(&o.limits, &rec.io, None)?;
        let prepared = direct::prepare(&spec, &cgroup_views(cgroup))?;
        clock.mark("spec, cgroup, limits");
        let mut child = prepared.spawn()?;
        clock.mark("clone");
        rec.pid = Some(child.pid());
        self.store.set_instance_spec(
            name,
            &serde_json::to_string(&rec).expect("record serialises"),
        )?;
        self.connect(name, rec)?;
        clock.mark("record pid, network");
        child.start()?;
        clock.mark("command started");
        // Ctrl-C, a terminal hang-up or a TERM to berth go to the command, as a shell passes
        // them on: berth waits for it and cleans up rather than leaving it behind.
        let forward = forward_signals(child.pid(), cgroup.clone());
        let code = child.wait();
        if let Some(handle) = forward {
            handle.close();
        }
        let code = code.map_err(io("waiting for the command of", &dir))?;
        clock.mark("command ran");
        // The group is new, so every OOM kill it counts happened to this command's processes.
        Ok(CommandExit {
            code,
            oom_kills: cgroup.oom_kills().unwrap_or(0),
        })
    }

    /// Remove everything of a container: libcontainer's state, its cgroup, the overlay mount,
    /// its folder and its row.
    fn remove_all(&self, name: &str, cgroup: &Cgroup, system: bool) -> Result<(), ContainerError> {
        // Our cgroup first, child groups included (systemd makes them, and libcontainer's own
        // removal gives up on a group that has children).
        cgroup.remove()?;
        let dir = self.dir(name);
        if system {
            self.remove_systemd_group(name)?;
            crate::procs::end(&dir, crate::procs::console_relay);
        }
        self.runtime().delete(name)?;
        if system {
            // libcontainer made the group in every hierarchy; its delete of a create cut short
            // may not have removed them.
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(io("reading", Path::new("/proc/self/mountinfo")))?;
            cgroup.remove_everywhere(&mountinfo)?;
        }
        self.unmount(name)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io("removing", &dir))?;
        }
        self.store.delete_instance(name)?;
        Ok(())
    }

    /// Clear what a launch cut short before it wrote the container's record left: anything in
    /// its cgroup (an init cloned before the kill), the cgroup, runtime state, mounts (overlay,
    /// its own disk), its folder, its machine-id and its row. Its network is set up only after
    /// the record is written, so there is none.
    pub fn purge(&self, name: &str) -> Result<(), ContainerError> {
        let cgroup = Cgroup::new(Hierarchy::detect()?, format!("berth/{name}"));
        end_all(&cgroup)?;
        self.remove_all(name, &cgroup, true)?;
        self.store.release_machine_id("container", name)?;
        Ok(())
    }

    /// Delete a stopped container (a running one only with `force`, which kills it).
    pub fn delete(&self, name: &str, force: bool) -> Result<(), ContainerError> {
        let (_, rec) = self.get(name)?;
        if !force && self.is_running(&rec) {
            return Err(ContainerError::Invalid(format!(
                "{name} is running; stop it first or pass --force"
            )));
        }
        let cgroup = Cgroup::new(Hierarchy::detect()?, &rec.cgroup);
        end_all(&cgroup)?;
        self.disconnect(name, &rec, true)?;
        self.remove_all(name, &cgroup, rec.system)?;
        self.store.release_machine_id("container", name)?;
        Ok(())
    }
}

/// `/etc/machine-id` in a container's upper layer (before it is mounted, so nothing in the
/// image can redirect the write), 0444 as systemd makes it.
fn write_machine_id(upper: &Path, id: &str) -> Result<(), ContainerError> {
    use std::os::unix::fs::PermissionsExt;
    let etc = upper.join("etc");
    std::fs::create_dir_all(&etc).map_err(io("creating", &etc))?;
    let path = etc.join("machine-id");
    std::fs::write(&path, format!("{id}\n")).map_err(io("writing", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
        .map_err(io("setting the mode of", &path))
}

/// What a system container runs with (`console`: the pty that becomes its /dev/console).
fn system_plan(
    name: &str,
    rec: &ContainerRecord,
    rootfs: &Path,
    cgroup: &Cgroup,
    console: Option<PathBuf>,
) -> Plan {
    Plan {
        rootfs: rootfs.to_path_buf(),
        args: rec.args.clone(),
        env: vec!["container=berth".into()],
        hostname: rec.hostname.clone().unwrap_or_else(|| name.to_string()),
        cgroups_path: Path::new("/").join(cgroup.relative()),
        network: if rec.network == "host" {
            Network::Host
        } else {
            Network::None // bridge: berth adds eth0 to the container's namespace
        },
        terminal: false,
        system: true,
        console,
        id_base: rec.id_base,
    }
}

/// What a `berth run` container runs with.
fn run_plan(name: &str, rec: &ContainerRecord, rootfs: &Path, cgroup: &Cgroup) -> Plan {
    Plan {
        rootfs: rootfs.to_path_buf(),
        args: rec.args.clone(),
        env: vec!["container=berth".into()],
        hostname: name.to_string(),
        cgroups_path: Path::new("/").join(cgroup.relative()),
        network: if rec.network == "host" {
            Network::Host
        } else {
            Network::None
        },
        terminal: false,
        system: false,
        console: None,
        id_base: rec.id_base,
    }
}

/// How a container's cgroup appears under its `/sys/fs/cgroup`: its group directory on v2, or
/// each v1 hierarchy's, under that hierarchy's mount point name.
fn cgroup_views(cgroup: &Cgroup) -> Vec<direct::CgroupView> {
    let depth = cgroup.relative().components().count();
    cgroup
        .dirs()
        .into_iter()
        .map(|host| {
            let name = match cgroup.hierarchy().version() {
                berth_cgroups::Version::V2 => None,
                berth_cgroups::Version::V1 => host
                    .ancestors()
                    .nth(depth)
                    .and_then(|m| m.file_name())
                    .map(|n| n.to_string_lossy().into_owned()),
            };
            direct::CgroupView { host, name }
        })
        .collect()
}

/// The host-wide lock for berth's bridge, its rules and its addresses (all data dirs share
/// them).
fn host_net_lock() -> Result<std::fs::File, ContainerError> {
    let dir = Path::new("/run/berth");
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let lock_path = dir.join("net.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("opening", &lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io("locking", &lock_path)(e.into()))?;
    Ok(lock)
}

/// The groups a command berth starts in a running container joins: berth's own (those of its
/// limits), and on v1 every other hierarchy in which the container's first process `pid` lives
/// under the container's group: freezer (libcontainer's), and name=systemd (where berth put the
/// system container's systemd). So the command is in the container's cgroup namespace root in
/// every hierarchy, not at the host's root in some.
fn exec_views(cgroup: &Cgroup, pid: u32) -> Vec<direct::CgroupView> {
    let mut views = cgroup_views(cgroup);
    if cgroup.hierarchy().version() != berth_cgroups::Version::V1 {
        return views;
    }
    let (Ok(mountinfo), Ok(theirs)) = (
        std::fs::read_to_string("/proc/self/mountinfo"),
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")),
    ) else {
        return views;
    };
    let set = |s: &str| -> std::collections::BTreeSet<String> {
        s.split(',').map(str::to_string).collect()
    };
    let group = Path::new("/").join(cgroup.relative());
    let mounts = Hierarchy::v1_mounts(&mountinfo);
    for line in theirs.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(names), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if names.is_empty() || !Path::new(path).starts_with(&group) {
            continue;
        }
        let Some((_, mount)) = mounts.iter().find(|(n, _)| set(n) == set(names)) else {
            continue;
        };
        let host = mount.join(cgroup.relative());
        if host.is_dir() && !views.iter().any(|v| v.host == host) {
            views.push(direct::CgroupView {
                host,
                name: Some(names.to_string()),
            });
        }
    }
    views
}

/// Where the v1 name=systemd hierarchy is mounted, on hosts whose controllers are on v1.
fn systemd_v1_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    if Hierarchy::from_mountinfo(&text).ok()?.version() != berth_cgroups::Version::V1 {
        return None;
    }
    Hierarchy::systemd_v1_mount(&text)
}

/// Move this process into the v1 group `dir` of the hierarchy mounted at `root` (created if need be); returns the group it was in,
/// to come back to.
fn enter_group(root: &Path, dir: &Path) -> Result<PathBuf, ContainerError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let current = own
        .lines()
        .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| "/".into());
    let back = root.join(current.trim_start_matches('/'));
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(io("joining", &procs))?;
    Ok(back)
}

/// Per-phase timings, logged at debug level (`BERTH_LOG=berth_host=debug`), for finding where a
/// container start spends its time.
struct Clock {
    start: std::time::Instant,
    last: std::time::Instant,
}

impl Clock {
    fn start() -> Clock {
        let now = std::time::Instant::now();
        Clock {
            start: now,
            last: now,
        }
    }

    fn mark(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        tracing::debug!(
            phase,
            ms = format!("{:.2}", (now - self.last).as_secs_f64() * 1000.0),
            total_ms = format!("{:.2}", (now - self.start).as_secs_f64() * 1000.0),
            "container phase"
        );
        self.last = now;
    }
}

/// Where root of an unprivileged container maps to on the host (as LXD's default map starts).
pub const ID_BASE: u32 = 1_000_000;

/// What a container's network needs in its upper layer: the host's resolvers (on a bridge the
/// ones it can reach from there; on the host's network the host's file as is), and cloud-init
/// told to leave the network alone (berth configures eth0 from outside and there is no DHCP
/// server on berth0; on the host's network the interfaces are the host's own).
fn write_network_files(upper: &Path, network: &str) -> Result<(), ContainerError> {
    let cfg = upper.join("etc/cloud/cloud.cfg.d");
    std::fs::create_dir_all(&cfg).map_err(io("creating", &cfg))?;
    let f = cfg.join("99-berth-network.cfg");
    std::fs::write(
        &f,
        "# Written by berth: eth0 is configured from the host.\nnetwork: {config: disabled}\n",
    )
    .map_err(io("writing", &f))?;
    if network == "bridge" {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let servers: String = host
            .lines()
            .filter(|l| l.starts_with("nameserver") && !l.contains("127."))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = if servers.is_empty() {
            "nameserver 1.1.1.1\n".to_string()
        } else {
            servers
        };
        let r = upper.join("etc/resolv.conf");
        let _ = std::fs::remove_file(&r);
        std::fs::write(&r, text).map_err(io("writing", &r))?;
    } else if network == "host" {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let etc = upper.join("etc");
        std::fs::create_dir_all(&etc).map_err(io("creating", &etc))?;
        let r = etc.join("resolv.conf");
        let _ = std::fs::remove_file(&r);
        std::fs::write(&r, host).map_err(io("writing", &r))?;
    }
    Ok(())
}

/// Pass SIGINT, SIGTERM and SIGHUP received by berth on to `pid` until the handle is closed.
/// A command that is PID 1 of its namespace ignores signals it has no handler for (as under
/// `docker run` without `--init`), so 10 s after the first one, or at the second, whatever is
/// left in the container's cgroup is killed.
fn forward_signals(pid: u32, cgroup: Cgroup) -> Option<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).ok()?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            seen += 1;
            if seen > 1 {
                let _ = end_all(&cgroup);
                continue;
            }
            let name = match sig {
                SIGINT => "INT",
                SIGHUP => "HUP",
                _ => "TERM",
            };
            kill(pid, name);
            let later = cgroup.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(10));
                let _ = end_all(&later);
            });
        }
    });
    Some(handle)
}

/// SIGKILL everything in a container's groups and wait (up to 10 s) until they are empty.
fn end_all(cgroup: &Cgroup) -> Result<(), ContainerError> {
    for _ in 0..500 {
        let pids = cgroup.pids()?;
        if pids.is_empty() {
            break;
        }
        for p in pids {
            kill(p, "KILL");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Send a signal by name (`kill -s`, which knows the real-time signals' numbers on this libc).
fn kill(pid: u32, signal: &str) {
    if pid == 0 {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
