//! Resource limits for berth's containers, on cgroup v1 and on cgroup v2.
//!
//! - [`limits`]: what users ask for (`--memory 256M`, `berth set NAME cpus=0.5`), parsed and checked
//!   without I/O;
//! - [`files`]: what those limits become in v1 or v2 files, also pure;
//! - [`Hierarchy::from_mountinfo`]: which version a host runs, read from mountinfo text (this
//!   machine: v1 controllers beside an empty cgroup2 mount, so v1);
//! - [`Cgroup`]: one group's directories under an injected root: create, apply, join, usage, remove.
//!
//! It does not start processes or shape network traffic (`net-rate` is tc's, in the container
//! crate); it never assumes `/sys/fs/cgroup`: roots are parameters, so the v2 and v1 paths are
//! tested against fake trees.

pub mod files;
pub mod limits;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use limits::{IoMax, IoMaxSpec, LimitError, Limits};

/// Which cgroup version the host's controllers are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// Controllers on per-controller v1 hierarchies (possibly beside a cgroup2 mount).
    V1,
    /// The unified hierarchy.
    V2,
}

/// Errors from reading or writing cgroup files.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// No cgroup controllers found at all.
    #[error("no cgroup hierarchy found in {0}: neither cgroup2 nor v1 controllers are mounted")]
    NoHierarchy(String),
    /// A v1 controller berth needs is not mounted.
    #[error("the cgroup v1 controller {0:?} is not mounted; berth needs it for {1}")]
    MissingController(&'static str, &'static str),
    /// The kernel does not offer a file a limit needs.
    #[error("cannot set {what}: {path} does not exist ({hint})")]
    Unsupported {
        /// The limit.
        what: String,
        /// The missing file.
        path: PathBuf,
        /// Why it may be missing.
        hint: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What berth was doing.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A value written was refused by the kernel.
    #[error("the kernel refused {value:?} for {path}: {source}")]
    Refused {
        /// The value.
        value: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The controllers berth manages on v1, and what for.
pub const V1_CONTROLLERS: [(&str, &str); 7] = [
    ("memory", "--memory"),
    ("cpu", "--cpus and --cpu-weight"),
    ("cpuacct", "CPU usage"),
    ("cpuset", "--cpuset"),
    ("pids", "--pids"),
    ("blkio", "--io-weight and --io-max"),
    ("devices", "device access"),
];

/// Where the host's cgroup controllers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy mounted at this path.
    V2(PathBuf),
    /// v1: controller name -> mount point (`cpu` and `cpuacct` may share one).
    V1(BTreeMap<String, PathBuf>),
}

impl Hierarchy {
    /// Work out the hierarchy from `/proc/self/mountinfo`'s text. v1 wins as soon as the memory
    /// controller is on a v1 mount (hybrid hosts keep their controllers there); otherwise the
    /// cgroup2 mount is used.
    pub fn from_mountinfo(text: &str) -> Result<Hierarchy, CgroupError> {
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(mount_point), Some(fstype), Some(superopts)) =
                (fields.get(4), fields.get(dash + 1), fields.get(dash + 3))
            else {
                continue;
            };
            let mount_point = unescape(mount_point);
            match *fstype {
                // Prefer the conventional place when there are several.
                "cgroup2" if v2.is_none() || mount_point == Path::new("/sys/fs/cgroup") => {
                    v2 = Some(mount_point);
                }
                "cgroup" => {
                    for opt in superopts.split(',') {
                        if V1_CONTROLLERS.iter().any(|(c, _)| *c == opt) {
                            v1.entry(opt.to_string()).or_insert(mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        if v1.contains_key("memory") {
            return Ok(Hierarchy::V1(v1));
        }
        match v2 {
            Some(p) => Ok(Hierarchy::V2(p)),
            None => Err(CgroupError::NoHierarchy("mountinfo".into())),
        }
    }

    /// Where a v1 host mounts the named `name=systemd` hierarchy (no controller, but systemd in
    /// a container keeps its own groups there), from mountinfo's text.
    pub fn systemd_v1_mount(text: &str) -> Option<PathBuf> {
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let superopts = fields.get(dash + 3)?;
            let mount_point = fields.get(4)?;
            (*fields.get(dash + 1)? == "cgroup"
                && superopts.split(',').any(|o| o == "name=systemd"))
            .then(|| unescape(mount_point))
        })
    }

    /// Every v1 hierarchy of mountinfo's text (controllers berth does not manage, such as
    /// freezer, and named ones such as `name=systemd`, included): where it is mounted, and the
    /// name `/proc/PID/cgroup` gives it (its controllers and name, comma-joined, in mount order).
    pub fn v1_mounts(text: &str) -> Vec<(String, PathBuf)> {
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let dash = fields.iter().position(|f| *f == "-")?;
                if *fields.get(dash + 1)? != "cgroup" {
                    return None;
                }
                let superopts = fields.get(dash + 3)?;
                let names: Vec<&str> = superopts
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "noprefix" | "clone_children" | "xattr")
                            && !o.starts_with("release_agent=")
                            && !o.starts_with("cpuset_v2_mode")
                    })
                    .collect();
                Some((names.join(","), unescape(fields.get(4)?)))
            })
            .collect()
    }

    /// Read the host's own hierarchy from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
            what: "reading",
            path: path.into(),
            source,
        })?;
        Hierarchy::from_mountinfo(&text)
    }

    /// The version.
    pub fn version(&self) -> Version {
        match self {
            Hierarchy::V1(_) => Version::V1,
            Hierarchy::V2(_) => Version::V2,
        }
    }
}

/// mountinfo escapes spaces and the like as `\040`.
fn unescape(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Octal escapes only, read as bytes (found by fuzzing: slicing the str could split a
        // multi-byte character).
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(octal) {
            let n = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(n) = u8::try_from(n) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Live usage of one group, as `berth info` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Memory in use, bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time used, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub io_write_bytes: Option<u64>,
}

/// One control group (e.g. `berth/web`) in a hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    path: PathBuf,
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Cgroup {
    /// The group at `path` (relative, e.g. `berth/web`) in `hierarchy`.
    pub fn new(hierarchy: Hierarchy, path: impl AsRef<Path>) -> Cgroup {
        let path = path
            .as_ref()
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        Cgroup { hierarchy, path }
    }

    /// The hierarchy the group lives in.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The group's path relative to the hierarchy's root (as OCI's `cgroupsPath` takes it, with
    /// a leading `/`).
    pub fn relative(&self) -> &Path {
        &self.path
    }

    /// The directory for a v1 controller (ignored on v2).
    pub fn dir(&self, controller: &str) -> Result<PathBuf, CgroupError> {
        match &self.hierarchy {
            Hierarchy::V2(root) => Ok(root.join(&self.path)),
            Hierarchy::V1(map) => {
                let root = map.get(controller).ok_or_else(|| {
                    let why = V1_CONTROLLERS
                        .iter()
                        .find(|(c, _)| *c == controller)
                        .map(|(_, w)| *w)
                        .unwrap_or("limits");
                    let c = V1_CONTROLLERS
                        .iter()
                        .find(|(c, _)| *c == controller)
                        .map(|(c, _)| *c)
                        .unwrap_or("unknown");
                    CgroupError::MissingController(c, why)
                })?;
                Ok(root.join(&self.path))
            }
        }
    }

    /// Every directory of the group (one on v2, one per mounted controller on v1).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V2(root) => vec![root.join(&self.path)],
            Hierarchy::V1(map) => {
                let mut v: Vec<PathBuf> = map.values().map(|r| r.join(&self.path)).collect();
                v.sort();
                v.dedup();
                v
            }
        }
    }

    /// Create the group's directories. On v2 the controllers berth uses are enabled in every
    /// ancestor's `cgroup.subtree_control`; on v1 a new cpuset group gets its parent's CPUs and
    /// memory nodes (the kernel leaves them empty, and an empty cpuset refuses tasks).
    pub fn create(&self) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V2(root) => {
                let mut dir = root.clone();
                for part in self.path.iter() {
                    enable_v2_controllers(&dir)?;
                    dir.push(part);
                    mkdir(&dir)?;
                }
            }
            Hierarchy::V1(map) => {
                for (controller, root) in map {
                    make_v1(root, &root.join(&self.path), controller == "cpuset")?;
                }
            }
        }
        Ok(())
    }

    /// Write `limits` (and lift what `previous` set and `limits` no longer does). `io` holds the
    /// resolved devices of `limits.io_max` (and `previous_io` those of `previous`).
    pub fn apply(
        &self,
        limits: &Limits,
        io: &[IoMax],
        previous: Option<(&Limits, &[IoMax])>,
    ) -> Result<(), CgroupError> {
        let version = self.hierarchy.version();
        let mut writes = Vec::new();
        if let Some((old, old_io)) = previous {
            let parent_cpus = match version {
                Version::V1 => {
                    let dir = self.dir("cpuset")?;
                    let parent = dir.parent().unwrap_or(&dir);
                    read(&parent.join("cpuset.cpus"))?.trim().to_string()
                }
                Version::V2 => String::new(),
            };
            writes.extend(files::resets(
                version,
                old,
                limits,
                old_io,
                io,
                &parent_cpus,
            ));
        }
        writes.extend(files::writes(version, limits, io));
        let mut i = 0;
        while i < writes.len() {
            let wr = &writes[i];
            let path = self.dir(wr.controller)?.join(wr.file);
            if !path.exists() {
                return Err(CgroupError::Unsupported {
                    what: wr.file.to_string(),
                    path,
                    hint: hint(wr.file),
                });
            }
            match write(&path, &wr.value) {
                Ok(()) => i += 1,
                // v1 keeps memsw >= memory at every step: when raising memory above the old
                // memsw, memsw has to go first.
                Err(CgroupError::Refused { .. })
                    if wr.file == "memory.limit_in_bytes"
                        && writes
                            .get(i + 1)
                            .is_some_and(|n| n.file == "memory.memsw.limit_in_bytes") =>
                {
                    writes.swap(i, i + 1);
                    let first = &writes[i];
                    write(&self.dir(first.controller)?.join(first.file), &first.value)?;
                    i += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Move a process into the group (every hierarchy on v1).
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the group and in every group below it (a system container's systemd
    /// makes its own).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let dir = match &self.hierarchy {
            Hierarchy::V2(_) => self.dir("")?,
            Hierarchy::V1(_) => self.dir("pids").or_else(|_| self.dir("memory"))?,
        };
        let mut out = Vec::new();
        collect_pids(&dir, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Live usage; a figure the kernel does not offer stays `None`.
    pub fn usage(&self) -> Usage {
        let num = |p: Option<PathBuf>| -> Option<u64> {
            std::fs::read_to_string(p?).ok()?.trim().parse().ok()
        };
        match &self.hierarchy {
            Hierarchy::V2(_) => {
                let dir = self.dir("").ok();
                let at = |f: &str| dir.as_ref().map(|d| d.join(f));
                let cpu = at("cpu.stat")
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .and_then(|t| keyed(&t, "usage_usec"))
                    .map(|us| us * 1000);
                let (r, w) = at("io.stat")
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .map(|t| io_stat_v2(&t))
                    .unwrap_or((None, None));
                Usage {
                    memory_bytes: num(at("memory.current")),
                    cpu_ns: cpu,
                    pids: num(at("pids.current")),
                    io_read_bytes: r,
                    io_write_bytes: w,
                }
            }
            Hierarchy::V1(_) => {
                let at = |c: &str, f: &str| self.dir(c).ok().map(|d| d.join(f));
                let (r, w) = at("blkio", "blkio.throttle.io_service_bytes")
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .map(|t| io_stat_v1(&t))
                    .unwrap_or((None, None));
                Usage {
                    memory_bytes: num(at("memory", "memory.usage_in_bytes")),
                    cpu_ns: num(at("cpuacct", "cpuacct.usage")),
                    pids: num(at("pids", "pids.current")),
                    io_read_bytes: r,
                    io_write_bytes: w,
                }
            }
        }
    }

    /// How many processes of the group the kernel's OOM killer has ended because of the group's
    /// memory limit (`oom_kill` of v2's `memory.events`, of v1's `memory.oom_control`); None
    /// where the kernel does not count them.
    pub fn oom_kills(&self) -> Option<u64> {
        let (controller, file) = match self.hierarchy {
            Hierarchy::V2(_) => ("", "memory.events"),
            Hierarchy::V1(_) => ("memory", "memory.oom_control"),
        };
        let text = std::fs::read_to_string(self.dir(controller).ok()?.join(file)).ok()?;
        keyed(&text, "oom_kill")
    }

    /// Remove the group's directories, child groups first (the groups must be empty).
    /// Missing directories are fine: removal is idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            remove_tree(&dir)?;
        }
        Ok(())
    }

    /// Remove the group from every cgroup mount in `mountinfo` (its text), not only from the
    /// controllers berth uses: a runtime such as libcontainer makes the group in every v1
    /// hierarchy (freezer, net_cls, perf_event...). The groups must be empty.
    pub fn remove_everywhere(&self, mountinfo: &str) -> Result<(), CgroupError> {
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            if let (Some(&("cgroup" | "cgroup2")), Some(mount)) =
                (fields.get(dash + 1), fields.get(4))
            {
                remove_tree(&unescape(mount).join(&self.path))?;
            }
        }
        Ok(())
    }

    /// Whether any of the group's directories exists.
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }
}

fn hint(file: &str) -> &'static str {
    if file.starts_with("memory.memsw") || file.starts_with("memory.swap") {
        "swap accounting is off in this kernel (swapaccount=1)"
    } else if file == "blkio.weight" || file == "io.weight" {
        "the disk's I/O scheduler has no weights; BFQ has them"
    } else {
        "the controller is not enabled for this group"
    }
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sum `rbytes=`/`wbytes=` over every device line of v2's `io.stat`.
fn io_stat_v2(text: &str) -> (Option<u64>, Option<u64>) {
    let (mut r, mut w) = (0, 0);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r += v.parse::<u64>().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w += v.parse::<u64>().unwrap_or(0);
        }
    }
    (Some(r), Some(w))
}

/// Sum `MAJ:MIN Read N` / `MAJ:MIN Write N` over v1's `blkio.throttle.io_service_bytes`.
fn io_stat_v1(text: &str) -> (Option<u64>, Option<u64>) {
    let (mut r, mut w) = (0, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 {
            match f[1] {
                "Read" => r += f[2].parse::<u64>().unwrap_or(0),
                "Write" => w += f[2].parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    (Some(r), Some(w))
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", dir)(e)),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect())
}

fn collect_pids(dir: &Path, out: &mut Vec<u32>) -> Result<(), CgroupError> {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(t) => out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("reading", dir)(e)),
    }
    for sub in subdirs(dir)? {
        collect_pids(&sub, out)?;
    }
    Ok(())
}

/// Remove a group directory and every group below it, deepest first (they must be empty of
/// processes). A missing directory is fine.
pub fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    // Most groups have no children: one rmdir, no listing.
    match std::fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    // A group is busy for a moment after its last process was killed (it is still exiting).
    for attempt in 0.. {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(16) && attempt < 100 => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(io_err("removing", dir)(e)),
        }
    }
    Ok(())
}

/// Create the v1 group `dir` and whichever of its parents below the hierarchy's `root` are
/// missing; a new cpuset group gets its parent's CPUs and memory nodes (it starts with none).
/// The group itself is tried first: its parents nearly always exist, and on cgroupfs a mkdir
/// that fails with EEXIST costs as much as one that succeeds (50 us here, per hierarchy).
fn make_v1(root: &Path, dir: &Path, cpuset: bool) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(root);
    let fresh = match mkdir(dir) {
        Err(CgroupError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && parent != root
                && parent.starts_with(root) =>
        {
            make_v1(root, parent, cpuset)?;
            mkdir(dir)?
        }
        r => r?,
    };
    if fresh && cpuset {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let v = read(&parent.join(f))?;
            write(&dir.join(f), v.trim())?;
        }
    }
    Ok(())
}

/// Create a directory; true if it was new.
fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err("creating", dir)(e)),
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io_err("reading", path))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    // One write per value, as the kernel wants it (no temp files). O_TRUNC and O_CREAT are no-ops
    // on cgroupfs, whose files always exist, and keep fake trees in tests honest.
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    f.write_all(value.as_bytes())
        .map_err(|source| CgroupError::Refused {
            value: value.to_string(),
            path: path.to_path_buf(),
            source,
        })
}

/// On v2, enable the controllers berth uses (those the parent offers) for `dir`'s children.
fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let offered = read(&dir.join("cgroup.controllers"))?;
    let enabled = read(&dir.join("cgroup.subtree_control")).unwrap_or_default();
    let want: Vec<String> = ["cpu", "cpuset", "io", "memory", "pids"]
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter(|c| !enabled.split_whitespace().any(|o| o == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &want.join(" "))
}

#[cfg(test)]
mod tests;
