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

mod commands;
mod remove;
mod system;

use remove::*;
use system::*;

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
    store: std::rc::Rc<Store>,
}

impl Containers {
    /// Open berth's state.
    pub fn open(dirs: &Dirs) -> Result<Containers, ContainerError> {
        Ok(Containers::with_store(
            dirs,
            std::rc::Rc::new(Store::open(&dirs.root)?),
        ))
    }

    /// Over `store`, the data dir's state opened already (the executor's, shared by its drivers).
    pub fn with_store(dirs: &Dirs, store: std::rc::Rc<Store>) -> Containers {
        Containers {
            dirs: dirs.clone(),
            store,
        }
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
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
