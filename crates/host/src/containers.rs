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
use berth_container::{spec, Network, Overlay, Plan, Runtime};
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
    /// `none` or `host`.
    pub network: String,
}

/// What `berth run` asks for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Base image.
    pub image: String,
    /// Container name; generated when absent.
    pub name: Option<String>,
    /// The command.
    pub args: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// Remove the container when the command ends.
    pub rm: bool,
    /// Share the host's network instead of an isolated one.
    pub host_network: bool,
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
            .map(|t| t.lines().any(|l| l.ends_with(&format!("/{}", rec.cgroup))))
            .unwrap_or(false)
    }

    /// All containers with whether each runs.
    pub fn list(&self) -> Result<Vec<(InstanceRow, ContainerRecord, bool)>, ContainerError> {
        let mut out = Vec::new();
        for row in self.store.instances()? {
            if row.kind != "container" {
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

    /// Run a command in a new container and wait for it: the command's exit status (128 + N when
    /// signal N ended it). With `rm` nothing of the container is left afterwards; otherwise it
    /// stays, stopped, until `berth delete`.
    pub fn run(&self, o: &RunOptions) -> Result<i32, ContainerError> {
        let name = match &o.name {
            Some(n) => n.clone(),
            None => format!("run-{}-{}", std::process::id(), unix_now() % 100_000),
        };
        check_name(&name).map_err(|_| {
            ContainerError::Invalid(format!(
                "invalid instance name {name:?}: use letters, digits, '-', '_' and '.'"
            ))
        })?;
        if self.store.instance(&name)?.is_some() {
            return Err(ContainerError::Invalid(format!(
                "an instance named {name:?} already exists"
            )));
        }
        if o.args.is_empty() {
            return Err(ContainerError::Invalid(
                "no command given: berth run IMAGE -- CMD [ARGS...]".into(),
            ));
        }
        o.limits
            .check()
            .map_err(|e| ContainerError::Invalid(e.to_string()))?;
        if o.limits.net_rate.is_some() || !o.limits.io_max.is_empty() {
            return Err(ContainerError::Invalid(
                "--net-rate and --io-max need a bridged network and a --disk; berth run does not \
                 offer those yet"
                    .into(),
            ));
        }
        let hierarchy = Hierarchy::detect()?;
        let lower = self.image_tree(&o.image)?;
        let cgroup = Cgroup::new(hierarchy, format!("berth/{name}"));
        let mut rec = ContainerRecord {
            image: o.image.clone(),
            args: o.args.clone(),
            limits: o.limits.clone(),
            io: Vec::new(),
            cgroup: cgroup.relative().to_string_lossy().into_owned(),
            pid: None,
            exit: None,
            network: if o.host_network { "host" } else { "none" }.into(),
        };
        let row = InstanceRow {
            name: name.clone(),
            kind: "container".into(),
            image: o.image.clone(),
            spec: serde_json::to_string(&rec).expect("record serialises"),
            desired: "running".into(),
            note: String::new(),
            created_at: unix_now() as i64,
        };
        self.store.insert_instance(&row)?;
        let result = self.run_inner(&name, &lower, &cgroup, &mut rec, o);
        // Whatever happened, the container's process is gone or reaped by now.
        let outcome = match &result {
            Ok(code) => format!("exited with {code}"),
            Err(e) => format!("failed: {e}"),
        };
        rec.pid = None;
        rec.exit = result.as_ref().ok().copied();
        if o.rm || result.is_err() {
            let cleaned = self.remove_all(&name, &cgroup);
            result.and_then(|code| cleaned.map(|_| code))
        } else {
            self.store.set_instance_spec(
                &name,
                &serde_json::to_string(&rec).expect("record serialises"),
            )?;
            self.store.set_instance_state(&name, "stopped", &outcome)?;
            let overlay = Overlay::under(&self.dir(&name), &lower);
            overlay.unmount()?;
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
    ) -> Result<i32, ContainerError> {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let overlay = Overlay::under(&dir, lower);
        overlay.mount()?;
        let plan = Plan {
            rootfs: overlay.merged.clone(),
            args: o.args.clone(),
            env: vec!["container=berth".into()],
            hostname: name.to_string(),
            cgroups_path: Path::new("/").join(cgroup.relative()),
            network: if o.host_network {
                Network::Host
            } else {
                Network::None
            },
            terminal: false,
        };
        let spec = spec::build(&plan)?;
        let runtime = self.runtime();
        let mut created = runtime.create(name, &dir, &spec)?;
        // The init process waits in its cgroup: the limits hold before the command starts.
        cgroup.create()?;
        cgroup.apply(&o.limits, &rec.io, None)?;
        rec.pid = created.pid();
        self.store.set_instance_spec(
            name,
            &serde_json::to_string(&rec).expect("record serialises"),
        )?;
        created.start()?;
        let code = created.wait()?;
        runtime.delete(name)?;
        Ok(code)
    }

    /// Remove everything of a container: libcontainer's state, its cgroup, the overlay mount,
    /// its folder and its row.
    fn remove_all(&self, name: &str, cgroup: &Cgroup) -> Result<(), ContainerError> {
        self.runtime().delete(name)?;
        let dir = self.dir(name);
        let overlay = Overlay::under(&dir, Path::new("/"));
        overlay.unmount()?;
        if cgroup.exists() {
            cgroup.remove()?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io("removing", &dir))?;
        }
        self.store.delete_instance(name)?;
        Ok(())
    }

    /// Delete a stopped container (a running one only with `force`, which kills it).
    pub fn delete(&self, name: &str, force: bool) -> Result<(), ContainerError> {
        let (_, rec) = self.get(name)?;
        if self.is_running(&rec) {
            if !force {
                return Err(ContainerError::Invalid(format!(
                    "{name} is running; stop it first or pass --force"
                )));
            }
            if let Some(pid) = rec
                .pid
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let hierarchy = Hierarchy::detect()?;
        let cgroup = Cgroup::new(hierarchy, &rec.cgroup);
        // Wait for the cgroup to empty after a kill.
        for _ in 0..100 {
            if cgroup.pids()?.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.remove_all(name, &cgroup)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
