//! berth's own runtime for application containers (`berth run`): it carries out the same OCI spec
//! [`crate::spec::build`] makes, in one `clone` and no helper processes, where libcontainer
//! spends 7-40 ms (an intermediate process, notify sockets, state files, its cgroup manager) on
//! a container that runs `/bin/true` in 1 ms.
//!
//! Planning ([`prepare`]) is pure and unit-tested: it turns a spec into flat lists of mounts,
//! device binds, masks and credentials, and refuses what it does not implement. [`Prepared::spawn`]
//! then clones a child into new namespaces. The child builds its root (mounts, device nodes bound
//! from the host, `pivot_root`, masked and read-only paths) while the parent writes its ID maps
//! and moves it into its cgroup; at the parent's go it enters a cgroup namespace, sets hostname,
//! rlimits and credentials, drops capabilities, sets `no_new_privs`, loads the seccomp filter and
//! execs. Any failure before the exec comes back to the parent as a message over a close-on-exec
//! pipe, so the parent knows the command started when that pipe closes empty.
//!
//! Devices: besides the standard nodes berth binds in, no device can be used: the root, `/dev`
//! and every other mount are `nodev`, so a node made with CAP_MKNOD does not open (what the
//! devices cgroup does for runc, without a cgroup v2 eBPF program).

use std::ffi::{CStr, CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use libcontainer::oci_spec::runtime::{Capability, LinuxNamespaceType, PosixRlimitType, Spec};
use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::{CapabilitySet, UnshareFlags};
use thiserror::Error;

mod mounts;
mod seccomp;
mod spawn;
mod terminal;

use mounts::*;
use seccomp::*;
pub use spawn::Child;

/// Errors from planning or starting a container.
#[derive(Debug, Error)]
pub enum DirectError {
    /// The spec asks for something this runtime does not do.
    #[error("the container's spec: {0}")]
    Unsupported(String),
    /// A system call in berth (the parent) failed.
    #[error("{what}: {source}")]
    Host {
        /// What berth was doing.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The container's process failed before running its command.
    #[error("setting up the container: {0}")]
    Child(String),
    /// Building the seccomp filter failed.
    #[error("building the seccomp filter: {0}")]
    Seccomp(String),
    /// The command does not exist in the container (berth exits 127, as Docker and Podman).
    #[error("{0}")]
    CommandNotFound(String),
    /// The command exists but cannot be run (berth exits 126, as Docker and Podman).
    #[error("{0}")]
    CommandNotExecutable(String),
}

/// How the child marks a failure of the command itself, as opposed to the container's setup.
const TAG_NOT_FOUND: &str = "not-found\0";
const TAG_NOT_EXECUTABLE: &str = "not-executable\0";

fn host(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DirectError {
    let what = what.into();
    move |source| DirectError::Host { what, source }
}

fn cstr(s: impl AsRef<OsStr>, field: &str) -> Result<CString, DirectError> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| DirectError::Unsupported(format!("{field} contains a NUL byte")))
}

/// A cgroup directory on the host that appears read-only under `/sys/fs/cgroup` inside: at the
/// top on v2 (`name` None), as `/sys/fs/cgroup/NAME` for each v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupView {
    /// The container's group directory on the host.
    pub host: PathBuf,
    /// The hierarchy's name under `/sys/fs/cgroup` (v1), or None (v2).
    pub name: Option<String>,
}

/// What an entry in the plan makes at its target before mounting there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Make {
    Dir,
    File,
}

/// How a [`MountOp`] is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// A new mount of `fstype` with `flags` and `data`.
    Mount,
    /// A bind mount of `source` (recursive with `REC`), then remounted with the rest of
    /// `flags` when there are any (a bind takes per-mount flags only that way).
    Bind,
    /// Make everything mounted at and below `target` read-only, nosuid, nodev and noexec in
    /// one call (`mount_setattr` with `AT_RECURSIVE`).
    ReadOnlyTree,
}

/// One mount, with its target already inside the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountOp {
    how: How,
    source: CString,
    target: CString,
    fstype: CString,
    flags: MountFlags,
    data: CString,
    make: Make,
}

/// The standard device nodes, bound from the host's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// `/dev`'s standard symbolic links.
const DEV_LINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
];

/// A container planned from its spec, ready to [`spawn`](Prepared::spawn).
#[derive(Debug, Clone)]
pub struct Prepared {
    clone_flags: u64,
    cgroup_ns: bool,
    user_ns: bool,
    /// v1: each hierarchy's `tasks` file the child writes itself into.
    join_tasks: Vec<PathBuf>,
    /// v2: the group the child is cloned into (`CLONE_INTO_CGROUP`).
    join_v2: Option<PathBuf>,
    uid_map: String,
    gid_map: String,
    rootfs: CString,
    mounts: Vec<MountOp>,
    devices: Vec<(CString, CString)>,
    links: Vec<(CString, CString)>,
    masked: Vec<CString>,
    readonly: Vec<CString>,
    hostname: Option<Vec<u8>>,
    rlimits: Vec<(rustix::process::Resource, u64, u64)>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    caps: CapabilitySet,
    no_new_privs: bool,
    args: Vec<CString>,
    env: Vec<CString>,
    path: Vec<PathBuf>,
    /// Syscalls the filter refuses, each with the errno it returns (allowed by default).
    seccomp: Option<Vec<(String, i32)>>,
}

/// Where `dest` (absolute, inside the container) is under `root`, refusing `..`.
fn inside(root: &Path, dest: &Path, field: &str) -> Result<PathBuf, DirectError> {
    let mut out = root.to_path_buf();
    for c in dest.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            _ => {
                return Err(DirectError::Unsupported(format!(
                    "{field} {} leaves the container's root",
                    dest.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Split mount options into flags and the filesystem's own data, as mount(8) does.
fn mount_options(options: &[String]) -> (MountFlags, String, bool) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    let mut readonly = false;
    for o in options {
        match o.as_str() {
            "ro" => readonly = true,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "bind" => flags |= MountFlags::BIND,
            "rbind" => flags |= MountFlags::BIND | MountFlags::REC,
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable"
            | "runbindable" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","), readonly)
}

/// Map an OCI capability name (`CAP_CHOWN`) to its bit.
/// The bit of an OCI capability (whose name is `CHOWN` for `CAP_CHOWN`, as rustix names them).
fn capability(c: &Capability) -> Result<CapabilitySet, DirectError> {
    let name = c.to_string();
    CapabilitySet::from_name(&name)
        .ok_or_else(|| DirectError::Unsupported(format!("unknown capability CAP_{name}")))
}

fn rlimit(t: PosixRlimitType) -> Result<rustix::process::Resource, DirectError> {
    use rustix::process::Resource as R;
    Ok(match t {
        PosixRlimitType::RlimitCpu => R::Cpu,
        PosixRlimitType::RlimitFsize => R::Fsize,
        PosixRlimitType::RlimitData => R::Data,
        PosixRlimitType::RlimitStack => R::Stack,
        PosixRlimitType::RlimitCore => R::Core,
        PosixRlimitType::RlimitRss => R::Rss,
        PosixRlimitType::RlimitNproc => R::Nproc,
        PosixRlimitType::RlimitNofile => R::Nofile,
        PosixRlimitType::RlimitMemlock => R::Memlock,
        PosixRlimitType::RlimitAs => R::As,
        PosixRlimitType::RlimitLocks => R::Locks,
        PosixRlimitType::RlimitSigpending => R::Sigpending,
        PosixRlimitType::RlimitMsgqueue => R::Msgqueue,
        PosixRlimitType::RlimitNice => R::Nice,
        PosixRlimitType::RlimitRtprio => R::Rtprio,
        PosixRlimitType::RlimitRttime => R::Rttime,
    })
}

/// Plan `spec`, whose cgroup appears inside as `cgroups` describes.
pub fn prepare(spec: &Spec, cgroups: &[CgroupView]) -> Result<Prepared, DirectError> {
    let unsupported = |s: &str| Err(DirectError::Unsupported(s.to_string()));
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| DirectError::Unsupported("no root filesystem".into()))?;
    let rootfs = root.path().clone();
    if !rootfs.is_absolute() {
        return unsupported("the root path must be absolute");
    }
    if root.readonly() == Some(true) {
        return unsupported("a read-only root is not supported");
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| DirectError::Unsupported("no process".into()))?;
    if process.terminal() == Some(true) {
        return unsupported("a terminal is not supported (use libcontainer)");
    }
    let args: Vec<CString> = process
        .args()
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|a| cstr(a, "an argument"))
        .collect::<Result<_, _>>()?;
    if args.is_empty() || args[0].is_empty() {
        return unsupported("no command");
    }
    let env_strings = process.env().clone().unwrap_or_default();
    let path = env_strings
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    let env = env_strings
        .iter()
        .map(|e| cstr(e, "an environment entry"))
        .collect::<Result<_, _>>()?;

    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| DirectError::Unsupported("no linux section".into()))?;
    let mut clone_flags = 0u64;
    let mut cgroup_ns = false;
    let mut user_ns = false;
    for ns in linux.namespaces().clone().unwrap_or_default() {
        if ns.path().is_some() {
            return unsupported("joining an existing namespace is not supported");
        }
        clone_flags |= match ns.typ() {
            LinuxNamespaceType::Mount => UnshareFlags::NEWNS.bits() as u64,
            LinuxNamespaceType::Pid => UnshareFlags::NEWPID.bits() as u64,
            LinuxNamespaceType::Uts => UnshareFlags::NEWUTS.bits() as u64,
            LinuxNamespaceType::Ipc => UnshareFlags::NEWIPC.bits() as u64,
            LinuxNamespaceType::Network => UnshareFlags::NEWNET.bits() as u64,
            LinuxNamespaceType::User => {
                user_ns = true;
                UnshareFlags::NEWUSER.bits() as u64
            }
            LinuxNamespaceType::Cgroup => {
                cgroup_ns = true;
                0
            }
            LinuxNamespaceType::Time => UnshareFlags::NEWTIME.bits() as u64,
        };
    }
    if clone_flags & UnshareFlags::NEWNS.bits() as u64 == 0 {
        return unsupported("a container needs its own mount namespace");
    }
    let map = |m: &Option<Vec<libcontainer::oci_spec::runtime::LinuxIdMapping>>| {
        m.clone()
            .unwrap_or_default()
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let (uid_map, gid_map) = (map(linux.uid_mappings()), map(linux.gid_mappings()));
    if user_ns && (uid_map.is_empty() || gid_map.is_empty()) {
        return unsupported("a user namespace needs uid and gid mappings");
    }

    let mut mounts = Vec::new();
    for m in spec.mounts().clone().unwrap_or_default() {
        let dest = m.destination();
        let target = inside(&rootfs, dest, "a mount destination")?;
        let typ = m.typ().clone().unwrap_or_default();
        let options = m.options().clone().unwrap_or_default();
        let (mut flags, data, readonly) = mount_options(&options);
        if typ == "cgroup" || typ == "cgroup2" {
            mounts.extend(cgroup_mounts(&target, cgroups, flags)?);
            continue;
        }
        let bind = flags.contains(MountFlags::BIND) || typ == "bind";
        if readonly {
            flags |= MountFlags::RDONLY;
        }
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
        let make = if bind && source.is_file() {
            Make::File
        } else {
            Make::Dir
        };
        mounts.push(MountOp {
            how: if bind { How::Bind } else { How::Mount },
            source: cstr(&source, "a mount source")?,
            target: cstr(&target, "a mount destination")?,
            fstype: cstr(if bind { "none" } else { typ.as_str() }, "a mount type")?,
            // Nodes made inside never open: only the standard ones, bound from the host, do.
            flags: if bind {
                flags | MountFlags::BIND
            } else {
                flags | MountFlags::NODEV
            },
            data: cstr(&data, "mount options")?,
            make,
        });
    }
    let dev = inside(&rootfs, Path::new("/dev"), "/dev")?;
    let devices = DEVICES
        .iter()
        .map(|d| {
            Ok((
                cstr(format!("/dev/{d}"), "a device")?,
                cstr(dev.join(d), "a device")?,
            ))
        })
        .collect::<Result<_, DirectError>>()?;
    let links = DEV_LINKS
        .iter()
        .map(|(to, at)| Ok((cstr(to, "a link")?, cstr(dev.join(at), "a link")?)))
        .collect::<Result<_, DirectError>>()?;
    let paths = |v: &Option<Vec<String>>, field: &str| -> Result<Vec<CString>, DirectError> {
        v.clone()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    return Err(DirectError::Unsupported(format!("{field} {p}")));
                }
                cstr(p, field)
            })
            .collect()
    };

    let mut caps = CapabilitySet::empty();
    if let Some(c) = process.capabilities() {
        if c.effective() != c.bounding() || c.permitted() != c.bounding() {
            return unsupported(
                "capability sets other than bounding = effective = permitted are not supported",
            );
        }
        let empty = |s: &Option<std::collections::HashSet<Capability>>| {
            s.as_ref().is_none_or(|s| s.is_empty())
        };
        if !empty(c.inheritable()) || !empty(c.ambient()) {
            return unsupported("inheritable or ambient capabilities are not supported");
        }
        for cap in c.bounding().iter().flatten() {
            caps |= capability(cap)?;
        }
    }
    let seccomp = match linux.seccomp() {
        None => None,
        Some(s) => {
            use libcontainer::oci_spec::runtime::LinuxSeccompAction as A;
            if s.default_action() != A::ScmpActAllow {
                return unsupported("only an allow-by-default seccomp filter is supported");
            }
            let mut denied = Vec::new();
            for rule in s.syscalls().clone().unwrap_or_default() {
                if rule.action() != A::ScmpActErrno || rule.args().is_some() {
                    return unsupported("only seccomp rules that return an errno are supported");
                }
                // EPERM unless the rule says otherwise, as runc does.
                let errno = rule.errno_ret().unwrap_or(1) as i32;
                denied.extend(rule.names().iter().map(|n| (n.clone(), errno)));
            }
            Some(denied)
        }
    };
    let user = process.user();
    Ok(Prepared {
        clone_flags,
        cgroup_ns,
        user_ns,
        join_tasks: cgroups
            .iter()
            .filter(|v| v.name.is_some())
            .map(|v| v.host.join("tasks"))
            .collect(),
        join_v2: cgroups
            .iter()
            .find(|v| v.name.is_none())
            .map(|v| v.host.clone()),
        uid_map,
        gid_map,
        rootfs: cstr(&rootfs, "the root path")?,
        mounts,
        devices,
        links,
        masked: paths(linux.masked_paths(), "a masked path")?,
        readonly: paths(linux.readonly_paths(), "a read-only path")?,
        hostname: spec.hostname().clone().map(String::into_bytes),
        rlimits: process
            .rlimits()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|r| Ok((rlimit(r.typ())?, r.soft(), r.hard())))
            .collect::<Result<_, DirectError>>()?,
        cwd: cstr(process.cwd(), "the working directory")?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        caps,
        no_new_privs: process.no_new_privileges() == Some(true),
        args,
        env,
        path,
        seccomp,
    })
}

/// `/sys/fs/cgroup` inside: the container's own groups, read-only.
fn cgroup_mounts(
    target: &Path,
    cgroups: &[CgroupView],
    flags: MountFlags,
) -> Result<Vec<MountOp>, DirectError> {
    let op = |how, source: &Path, at: &Path, flags, data: &str| -> Result<MountOp, DirectError> {
        Ok(MountOp {
            how,
            source: cstr(source, "a cgroup")?,
            target: cstr(at, "a cgroup")?,
            fstype: cstr(if how == How::Bind { "none" } else { "tmpfs" }, "")?,
            flags,
            data: cstr(data, "")?,
            make: Make::Dir,
        })
    };
    let flags = flags - MountFlags::RDONLY - MountFlags::BIND - MountFlags::REC;
    let bind = |host: &Path, at: &Path| op(How::Bind, host, at, MountFlags::BIND, "");
    // Read-only at the end, all at once.
    let seal = op(How::ReadOnlyTree, Path::new("none"), target, flags, "")?;
    if let [CgroupView { host, name: None }] = cgroups {
        return Ok(vec![bind(host, target)?, seal]);
    }
    let tmpfs = Path::new("tmpfs");
    let mut out = vec![op(
        How::Mount,
        tmpfs,
        target,
        flags | MountFlags::NODEV,
        "mode=755",
    )?];
    for v in cgroups {
        let Some(name) = &v.name else {
            return Err(DirectError::Unsupported(
                "a v2 cgroup view among v1 ones".into(),
            ));
        };
        out.push(bind(
            &v.host,
            &inside(target, Path::new(name), "a cgroup")?,
        )?);
    }
    out.push(seal);
    Ok(out)
}

/// Have writes to a pipe or socket whose reader went away fail with EPIPE instead of ending
/// berth by SIGPIPE (the default `main` restores, so that `berth list | head` ends quietly):
/// `berth run CMD 2>&1 | head` must not lose berth between starting a container and removing
/// it. The container's command gets the default back before exec ([`Prepared::spawn`]).
#[allow(unsafe_code)]
pub fn ignore_sigpipe() {
    // SAFETY: changes one signal's disposition to SIG_IGN; no handler runs, and berth has no
    // other thread that relies on SIGPIPE's default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

#[cfg(test)]
mod tests;
