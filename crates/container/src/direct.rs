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

/// Clone a child with `flags` (namespaces; born in the v2 group `group` when given) that runs
/// `body`, which returns only with what went wrong: that goes to the parent over a close-on-exec
/// pipe, whose read end comes back with the pid, and the child ends with 125.
#[allow(unsafe_code)]
fn fork(
    flags: u64,
    group: Option<&OwnedFd>,
    body: impl FnOnce() -> Result<std::convert::Infallible, String>,
) -> Result<(u32, OwnedFd), DirectError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(host("reading /proc/self/task"))?
        .count();
    if threads != 1 {
        // A clone of a threaded process may inherit another thread's locks.
        return Err(DirectError::Unsupported(format!(
            "berth has {threads} threads; a container is started from a single thread"
        )));
    }
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| host("making a pipe")(e.into()))?;
    let pid = match group {
        None => {
            // SAFETY: clone without a new stack is fork with namespace flags: the child runs on
            // a copy of this stack and returns 0 here. berth is single-threaded (checked above),
            // so the child inherits no lock another thread holds, and it leaves only by exec or
            // _exit.
            unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    flags | libc::SIGCHLD as u64,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            }
        }
        Some(fd) => {
            let args = CloneArgs {
                flags: flags | CLONE_INTO_CGROUP,
                exit_signal: libc::SIGCHLD as u64,
                cgroup: fd.as_raw_fd() as u64,
                ..CloneArgs::default()
            };
            // SAFETY: as above, clone3 with no stack given is fork (here born in its v2 group);
            // `args` is a valid clone_args of the size passed, alive for the call.
            unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            }
        }
    };
    if pid < 0 {
        return Err(host("cloning the container's process")(
            std::io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        drop(err_r);
        let message = match body() {
            Ok(never) => match never {},
            Err(m) => m,
        };
        let _ = std::fs::File::from(err_w).write_all(message.as_bytes());
        // SAFETY: _exit ends the child without running the parent's atexit handlers or
        // destructors on state it shares with the parent.
        unsafe { libc::_exit(125) };
    }
    drop(err_w);
    Ok((pid as u32, err_r))
}

/// What the child reported over its close-on-exec pipe, read until the exec closed it (None) or
/// it ended with a message.
fn report(errors: &OwnedFd) -> Result<Option<DirectError>, DirectError> {
    let mut buf = Vec::new();
    errors
        .try_clone()
        .map(std::fs::File::from)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(host("reading the container process's report"))?;
    Ok((!buf.is_empty()).then(|| decode_failure(&String::from_utf8_lossy(&buf))))
}

fn decode_failure(message: &str) -> DirectError {
    if let Some(m) = message.strip_prefix(TAG_NOT_FOUND) {
        DirectError::CommandNotFound(m.to_string())
    } else if let Some(m) = message.strip_prefix(TAG_NOT_EXECUTABLE) {
        DirectError::CommandNotExecutable(m.to_string())
    } else {
        DirectError::Child(message.to_string())
    }
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

/// The seccomp filter as the child receives it after the go: the number of BPF instructions
/// (u32, little-endian; 0 for none), then the instructions as the kernel lays them out.
fn encode_filter(program: Option<&[libc::sock_filter]>) -> Vec<u8> {
    let program = program.unwrap_or_default();
    let mut out = (program.len() as u32).to_le_bytes().to_vec();
    for i in program {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.extend_from_slice(&[i.jt, i.jf]);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

/// BPF instructions from their bytes (8 each, in the kernel's layout); None if a part is left.
fn decode_program(bytes: &[u8]) -> Option<Vec<libc::sock_filter>> {
    let chunks = bytes.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return None;
    }
    Some(
        chunks
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

/// The child's side of [`encode_filter`]. The kernel takes at most 4096 instructions.
fn read_filter(from: &mut impl Read) -> std::io::Result<Option<Vec<libc::sock_filter>>> {
    let mut n = [0u8; 4];
    from.read_exact(&mut n)?;
    let n = u32::from_le_bytes(n) as usize;
    if n == 0 {
        return Ok(None);
    }
    if n > 4096 {
        return Err(std::io::Error::other(format!(
            "{n} instructions is over the kernel's limit"
        )));
    }
    let mut bytes = vec![0u8; n * 8];
    from.read_exact(&mut bytes)?;
    Ok(decode_program(&bytes))
}

/// Install the BPF `program` as this thread's seccomp filter (no_new_privs or CAP_SYS_ADMIN
/// needed, as for `seccomp_load`).
#[allow(unsafe_code)]
fn install_filter(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| std::io::Error::other("filter too long"))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, `len` instructions that live across the call; the
    // kernel copies the program and does not keep the pointer.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Create what `target` (under `root`) needs: missing directories, and the last component as a
/// file for [`Make::File`]. A component that is a symbolic link is refused: what an image holds
/// must not lead a mount out of the container's root.
///
/// `seen` holds the directories already found to be no link, in earlier calls while the same
/// root was built (`/sys/fs/cgroup` is the way to seven targets): mounts made since then only
/// ever put a filesystem's root, never a link, where such a directory was.
fn make_within(
    root: &Path,
    target: &Path,
    make: Make,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<(), String> {
    let rel = target
        .strip_prefix(root)
        .map_err(|_| format!("{} is outside the container's root", target.display()))?;
    let n = rel.components().count();
    let mut p = root.to_path_buf();
    for (i, c) in rel.components().enumerate() {
        p.push(c);
        if i + 1 < n && seen.contains(&p) {
            continue;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link in the image; berth does not mount over one",
                    p.display()
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let made = if i + 1 == n && make == Make::File {
                    std::fs::File::create_new(&p).map(drop)
                } else {
                    std::fs::create_dir(&p)
                };
                made.map_err(|e| format!("creating {}: {e}", p.display()))?;
            }
            Err(e) => return Err(format!("looking at {}: {e}", p.display())),
        }
        if i + 1 < n {
            seen.insert(p.clone());
        }
    }
    Ok(())
}

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Everything mounted at and below `target`: read-only, nosuid, nodev, noexec.
#[allow(unsafe_code)]
fn read_only_tree(target: &CStr) -> Result<(), rustix::io::Errno> {
    const RDONLY: u64 = 0x1;
    const NOSUID: u64 = 0x2;
    const NODEV: u64 = 0x4;
    const NOEXEC: u64 = 0x8;
    const AT_RECURSIVE: u64 = 0x8000;
    let attr = MountAttr {
        attr_set: RDONLY | NOSUID | NODEV | NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `target` is a NUL-terminated path and `attr` a mount_attr of the size passed;
    // both outlive the call, which only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(
            rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
                .unwrap_or(rustix::io::Errno::INVAL),
        );
    }
    Ok(())
}

/// `clone3`'s argument (linux/sched.h, version 2: with `cgroup`).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3: start the child in the cgroup `CloneArgs::cgroup` names.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A started container process waiting for [`Child::start`].
#[derive(Debug)]
pub struct Child {
    pid: u32,
    go: Option<OwnedFd>,
    errors: OwnedFd,
    /// The uid and gid maps to write, with a user namespace.
    maps: Option<(String, String)>,
    /// The seccomp filter, as sent with the go ([`encode_filter`]).
    filter: Vec<u8>,
}

impl Prepared {
    /// Clone the container's process into its namespaces. With a user namespace its ID maps are
    /// written before this returns; then it builds its root and waits for [`Child::start`].
    #[allow(unsafe_code)]
    pub fn spawn(&self) -> Result<Child, DirectError> {
        // A socket, not a pipe: a send to a child that died is EPIPE (MSG_NOSIGNAL), not a
        // SIGPIPE that would end berth before it reads the child's report.
        let (go_r, go_w) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| host("making a socket pair")(e.into()))?;
        let (tasks, group) = self.open_group()?;
        let mut go_r = Some(go_r);
        let (pid, errors) = fork(self.clone_flags, group.as_ref(), || {
            let go = go_r.take().expect("the child runs once");
            self.child(go, &tasks)
        })?;
        drop(go_r);
        let mut child = Child {
            pid,
            go: Some(go_w),
            errors,
            maps: self
                .user_ns
                .then(|| (self.uid_map.clone(), self.gid_map.clone())),
            filter: Vec::new(),
        };
        child.map_ids()?;
        // The filter is compiled while the child builds its root (a quarter of a millisecond
        // of libseccomp's work that no longer delays the command), and sent with the go.
        child.filter = encode_filter(self.seccomp_program()?.as_deref());
        Ok(child)
    }

    /// Run `args` in the running container whose first process is `pid` (`berth exec`):
    /// joining its namespaces and cgroup, with the same credentials, capabilities and seccomp
    /// filter as its command. Waits for it: its exit status, or 128 + the signal that ended it.
    pub fn exec_in(&self, pid: u32, args: &[String]) -> Result<i32, DirectError> {
        if args.is_empty() {
            return Err(DirectError::Unsupported("no command".into()));
        }
        let mut me = Prepared {
            args: args
                .iter()
                .map(|a| cstr(a, "an argument"))
                .collect::<Result<_, _>>()?,
            ..self.clone()
        };
        // Its namespaces: the user namespace last, so that joining the others is done with
        // the host's privileges over them.
        use rustix::thread::LinkNameSpaceType as Ns;
        let mut kinds = vec![
            ("ipc", Ns::InterProcessCommunication),
            ("uts", Ns::HostNameAndNISDomainName),
            ("net", Ns::Network),
            ("cgroup", Ns::ControlGroup),
            ("mnt", Ns::Mount),
        ];
        if self.user_ns {
            kinds.push(("user", Ns::User));
        }
        let ns = kinds
            .iter()
            .map(|(k, _)| {
                let p = format!("/proc/{pid}/ns/{k}");
                std::fs::File::open(&p).map_err(host(format!("opening {p}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let filter = self.seccomp_program()?;
        let (tasks, group) = self.open_group()?;
        // A new process lands in the pid namespace of its parent's pid_for_children: berth's,
        // for this one clone, then back.
        let own =
            std::fs::File::open("/proc/self/ns/pid").map_err(host("opening /proc/self/ns/pid"))?;
        let theirs = format!("/proc/{pid}/ns/pid");
        let theirs = std::fs::File::open(&theirs).map_err(host(format!("opening {theirs}")))?;
        rustix::thread::move_into_link_name_space(theirs.as_fd(), Some(Ns::ProcessID))
            .map_err(|e| host("entering the container's pid namespace")(e.into()))?;
        me.hostname = None;
        let forked = fork(0, group.as_ref(), || {
            for (mut f, p) in tasks.iter().zip(&me.join_tasks) {
                f.write_all(b"0")
                    .map_err(|e| format!("joining {}: {e}", p.display()))?;
            }
            for (f, (k, kind)) in ns.iter().zip(&kinds) {
                rustix::thread::move_into_link_name_space(f.as_fd(), Some(*kind))
                    .map_err(|e| format!("joining the container's {k} namespace: {e}"))?;
            }
            me.become_command(filter.as_deref())
        });
        let back = rustix::thread::move_into_link_name_space(own.as_fd(), Some(Ns::ProcessID));
        let (child, errors) = forked?;
        back.map_err(|e| host("leaving the container's pid namespace")(e.into()))?;
        let failure = report(&errors)?;
        let code =
            crate::runtime::wait_status(child as i32).map_err(host("waiting for the command"))?;
        match failure {
            Some(e) => Err(e),
            None => Ok(code),
        }
    }

    /// The cgroup the process joins: v1 `tasks` files opened here (written by the child: moving
    /// oneself, pid 0, by a `tasks` file skips the global lock whose write side waits for an
    /// RCU grace period, 5-20 ms here; the permission check uses these open-time credentials,
    /// so it works from a user namespace too), or the v2 group to clone into.
    fn open_group(&self) -> Result<(Vec<std::fs::File>, Option<OwnedFd>), DirectError> {
        let tasks = self
            .join_tasks
            .iter()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(host(format!("opening {}", p.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let group = self
            .join_v2
            .as_ref()
            .map(|p| {
                rustix::fs::open(
                    p,
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| host(format!("opening {}", p.display()))(e.into()))
            })
            .transpose()?;
        Ok((tasks, group))
    }

    /// The seccomp filter as the BPF program libseccomp compiles for it (what `seccomp_load`
    /// would install), to be installed with one system call in the child.
    fn seccomp_program(&self) -> Result<Option<Vec<libc::sock_filter>>, DirectError> {
        let Some(f) = self.seccomp_filter()? else {
            return Ok(None);
        };
        let e = |e: std::io::Error| DirectError::Seccomp(format!("exporting the program: {e}"));
        let mem = rustix::fs::memfd_create("berth-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|x| e(x.into()))?;
        f.export_bpf(&mem)
            .map_err(|x| DirectError::Seccomp(x.to_string()))?;
        let mut bytes = Vec::new();
        let mut file = std::fs::File::from(mem);
        std::io::Seek::rewind(&mut file).map_err(e)?;
        file.read_to_end(&mut bytes).map_err(e)?;
        decode_program(&bytes).map(Some).ok_or_else(|| {
            DirectError::Seccomp(format!(
                "libseccomp exported {} bytes, not whole instructions",
                bytes.len()
            ))
        })
    }

    fn seccomp_filter(&self) -> Result<Option<ScmpFilterContext>, DirectError> {
        let Some(denied) = &self.seccomp else {
            return Ok(None);
        };
        let e = |e: libseccomp::error::SeccompError| DirectError::Seccomp(e.to_string());
        let mut f = ScmpFilterContext::new(ScmpAction::Allow).map_err(e)?;
        // berth sets no_new_privs itself, in the order the spec asks.
        f.set_ctl_nnp(false).map_err(e)?;
        for (name, errno) in denied {
            // A name this kernel's libseccomp does not know is nothing the process can call.
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            f.add_rule(ScmpAction::Errno(*errno), sc).map_err(e)?;
        }
        Ok(Some(f))
    }

    /// The child's side: returns only with what went wrong.
    #[allow(unsafe_code)]
    fn child(
        &self,
        go: OwnedFd,
        tasks: &[std::fs::File],
    ) -> Result<std::convert::Infallible, String> {
        let mut go = std::fs::File::from(go);
        let wait = |go: &mut std::fs::File, what: &str| -> Result<(), String> {
            let mut b = [0u8; 1];
            match go.read(&mut b) {
                Ok(1) => Ok(()),
                _ => Err(format!("berth went away before {what}")),
            }
        };
        for (mut f, p) in tasks.iter().zip(&self.join_tasks) {
            f.write_all(b"0")
                .map_err(|e| format!("joining {}: {e}", p.display()))?;
        }
        if self.user_ns {
            wait(&mut go, "mapping IDs")?;
            // Still the host's root (unmapped here) until it takes the namespace's root IDs.
            let root = rustix::process::Gid::ROOT;
            rustix::thread::set_thread_res_gid(root, root, root)
                .map_err(|e| format!("becoming root in the user namespace: {e}"))?;
            let root = rustix::process::Uid::ROOT;
            rustix::thread::set_thread_res_uid(root, root, root)
                .map_err(|e| format!("becoming root in the user namespace: {e}"))?;
        }
        let sys = |what: &str, path: &CStr| {
            let what = format!("{what} {}", path.to_string_lossy());
            move |e: rustix::io::Errno| format!("{what}: {e}")
        };
        rustix::mount::mount_change(
            c"/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        )
        .map_err(sys("making mounts private under", c"/"))?;
        let root = &self.rootfs;
        rustix::mount::mount_bind_recursive(root.as_c_str(), root.as_c_str())
            .map_err(sys("binding the root", root))?;
        rustix::mount::mount_remount(root.as_c_str(), MountFlags::BIND | MountFlags::NODEV, c"")
            .map_err(sys("making the root nodev:", root))?;
        let mut seen = std::collections::HashSet::new();
        for m in &self.mounts {
            let target = Path::new(OsStr::from_bytes(m.target.as_bytes()));
            if m.how != How::ReadOnlyTree {
                make_within(
                    Path::new(OsStr::from_bytes(root.as_bytes())),
                    target,
                    m.make,
                    &mut seen,
                )?;
            }
            match m.how {
                How::Mount => rustix::mount::mount(
                    m.source.as_c_str(),
                    m.target.as_c_str(),
                    m.fstype.as_c_str(),
                    m.flags,
                    Some(m.data.as_c_str()),
                )
                .map_err(sys("mounting", &m.target))?,
                How::Bind => {
                    let bind = m.flags & (MountFlags::BIND | MountFlags::REC);
                    rustix::mount::mount(
                        m.source.as_c_str(),
                        m.target.as_c_str(),
                        c"none",
                        bind,
                        None,
                    )
                    .map_err(sys("binding", &m.target))?;
                    if m.flags != bind {
                        rustix::mount::mount_remount(
                            m.target.as_c_str(),
                            m.flags - MountFlags::REC,
                            c"",
                        )
                        .map_err(sys("remounting", &m.target))?;
                    }
                }
                How::ReadOnlyTree => {
                    read_only_tree(&m.target).map_err(sys("making read-only", &m.target))?
                }
            }
        }
        for (from, to) in &self.devices {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(OsStr::from_bytes(to.as_bytes()))
                .map_err(|e| format!("creating {}: {e}", to.to_string_lossy()))?;
            rustix::mount::mount_bind(from.as_c_str(), to.as_c_str())
                .map_err(sys("binding", to))?;
        }
        for (to, at) in &self.links {
            match std::os::unix::fs::symlink(
                OsStr::from_bytes(to.as_bytes()),
                OsStr::from_bytes(at.as_bytes()),
            ) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("linking {}: {e}", at.to_string_lossy())),
            }
        }
        rustix::process::chdir(root.as_c_str()).map_err(sys("entering", root))?;
        rustix::process::pivot_root(c".", c".").map_err(sys("pivot_root to", root))?;
        rustix::mount::unmount(c".", UnmountFlags::DETACH)
            .map_err(sys("detaching the old root", c"/"))?;
        rustix::process::chdir(c"/").map_err(sys("entering", c"/"))?;
        for p in &self.masked {
            let path = Path::new(OsStr::from_bytes(p.as_bytes()));
            let r = match std::fs::metadata(path) {
                Err(_) => continue,
                Ok(md) if md.is_dir() => rustix::mount::mount(
                    c"tmpfs",
                    p.as_c_str(),
                    c"tmpfs",
                    MountFlags::RDONLY
                        | MountFlags::NODEV
                        | MountFlags::NOSUID
                        | MountFlags::NOEXEC,
                    None,
                ),
                Ok(_) => rustix::mount::mount_bind(c"/dev/null", p.as_c_str()),
            };
            r.map_err(sys("masking", p))?;
        }
        for p in &self.readonly {
            if std::fs::symlink_metadata(OsStr::from_bytes(p.as_bytes())).is_err() {
                continue;
            }
            rustix::mount::mount_bind_recursive(p.as_c_str(), p.as_c_str())
                .map_err(sys("binding", p))?;
            rustix::mount::mount_remount(
                p.as_c_str(),
                MountFlags::BIND
                    | MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC,
                c"",
            )
            .map_err(sys("making read-only", p))?;
        }
        // Berth says go, with the seccomp filter to install last.
        wait(&mut go, "starting the command")?;
        let filter =
            read_filter(&mut go).map_err(|e| format!("receiving the seccomp filter: {e}"))?;
        if self.cgroup_ns {
            // SAFETY: NEWCGROUP changes only how this process sees cgroup paths; it shares no
            // file table or memory with another thread that could be surprised by it.
            unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWCGROUP) }
                .map_err(|e| format!("entering a cgroup namespace: {e}"))?;
        }
        if let Some(h) = &self.hostname {
            rustix::system::sethostname(h).map_err(|e| format!("setting the hostname: {e}"))?;
        }
        self.become_command(filter.as_deref())
    }

    /// Take the command's limits, IDs, capabilities and filter, and exec it.
    #[allow(unsafe_code)]
    fn become_command(
        &self,
        filter: Option<&[libc::sock_filter]>,
    ) -> Result<std::convert::Infallible, String> {
        // An ignored signal stays ignored across exec: the command starts with SIGPIPE's
        // default whatever berth does with it ([`ignore_sigpipe`]).
        // SAFETY: sets one signal's disposition back to the default in this single-threaded
        // child, which execs next.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        for (res, soft, hard) in &self.rlimits {
            rustix::process::setrlimit(
                *res,
                rustix::process::Rlimit {
                    current: Some(*soft),
                    maximum: Some(*hard),
                },
            )
            .map_err(|e| format!("setting {res:?}: {e}"))?;
        }
        rustix::process::chdir(self.cwd.as_c_str())
            .map_err(|e| format!("entering {}: {e}", self.cwd.to_string_lossy()))?;
        let gids: Vec<rustix::process::Gid> = self
            .groups
            .iter()
            .map(|g| rustix::process::Gid::from_raw(*g))
            .collect();
        rustix::thread::set_thread_groups(&gids).map_err(|e| format!("setting groups: {e}"))?;
        // Keep capabilities across the change of IDs (the sets below then decide).
        rustix::thread::set_keep_capabilities(true)
            .map_err(|e| format!("keeping capabilities: {e}"))?;
        rustix::thread::set_thread_res_gid(
            rustix::process::Gid::from_raw(self.gid),
            rustix::process::Gid::from_raw(self.gid),
            rustix::process::Gid::from_raw(self.gid),
        )
        .map_err(|e| format!("setting gid {}: {e}", self.gid))?;
        rustix::thread::set_thread_res_uid(
            rustix::process::Uid::from_raw(self.uid),
            rustix::process::Uid::from_raw(self.uid),
            rustix::process::Uid::from_raw(self.uid),
        )
        .map_err(|e| format!("setting uid {}: {e}", self.uid))?;
        for bit in 0..=63u32 {
            let cap = CapabilitySet::from_bits_retain(1 << bit);
            if self.caps.contains(cap) {
                continue;
            }
            match rustix::thread::remove_capability_from_bounding_set(cap) {
                // Past the last capability this kernel knows.
                Err(rustix::io::Errno::INVAL) => break,
                r => r.map_err(|e| format!("dropping capability {bit}: {e}"))?,
            }
        }
        rustix::thread::clear_ambient_capability_set()
            .map_err(|e| format!("clearing ambient capabilities: {e}"))?;
        if self.no_new_privs {
            rustix::thread::set_no_new_privs(true)
                .map_err(|e| format!("setting no_new_privs: {e}"))?;
        }
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: self.caps,
                permitted: self.caps,
                inheritable: CapabilitySet::empty(),
            },
        )
        .map_err(|e| format!("setting capabilities: {e}"))?;
        let program = self.resolve()?;
        if let Some(f) = filter {
            install_filter(f).map_err(|e| format!("loading the seccomp filter: {e}"))?;
        }
        let mut argv: Vec<*const libc::c_char> = self.args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: program, argv and envp are NUL-terminated C strings and NULL-terminated
        // arrays that live until execve returns (it only returns on failure).
        unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = std::io::Error::last_os_error();
        let tag = match e.raw_os_error() {
            // The file, or the interpreter its #! line names, is not there.
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => TAG_NOT_FOUND,
            Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EPERM) | Some(libc::EISDIR) => {
                TAG_NOT_EXECUTABLE
            }
            _ => "",
        };
        Err(format!(
            "{tag}{}: cannot run it in the container: {e}",
            program.to_string_lossy()
        ))
    }

    /// The command's program, looked up in the container's PATH unless it names a path.
    fn resolve(&self) -> Result<CString, String> {
        let name = &self.args[0];
        if name.as_bytes().contains(&b'/') {
            return Ok(name.clone());
        }
        for dir in &self.path {
            let p = dir.join(OsStr::from_bytes(name.as_bytes()));
            if rustix::fs::access(&p, rustix::fs::Access::EXEC_OK).is_ok() && p.is_file() {
                return CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string());
            }
        }
        Err(format!(
            "{TAG_NOT_FOUND}{}: command not found in the container's PATH",
            name.to_string_lossy()
        ))
    }
}

impl Child {
    /// The container's process on the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Write the child's uid and gid maps (with a user namespace), so that it can go on.
    fn map_ids(&mut self) -> Result<(), DirectError> {
        let Some((uid_map, gid_map)) = self.maps.take() else {
            return Ok(());
        };
        for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
            let path = format!("/proc/{}/{file}", self.pid);
            std::fs::write(&path, map).map_err(host(format!("writing {path}")))?;
        }
        self.signal(b"g")
    }

    fn signal(&self, message: &[u8]) -> Result<(), DirectError> {
        let go = self.go.as_ref().expect("the go socket is open until start");
        let mut rest = message;
        while !rest.is_empty() {
            match rustix::net::send(go, rest, rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => rest = &rest[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(self
                        .failure()
                        .unwrap_or_else(|| host("signalling the container")(e.into())))
                }
            }
        }
        Ok(())
    }

    /// What the child reported, if it failed.
    fn failure(&self) -> Option<DirectError> {
        report(&self.errors).ok().flatten()
    }

    /// Let the child run its command, and wait until it has (or has failed to).
    pub fn start(&mut self) -> Result<(), DirectError> {
        let mut message = b"g".to_vec();
        message.append(&mut self.filter);
        self.signal(&message)?;
        self.go = None;
        match self.failure() {
            None => Ok(()),
            Some(e) => {
                let _ = rustix::process::waitpid(
                    rustix::process::Pid::from_raw(self.pid as i32),
                    rustix::process::WaitOptions::empty(),
                );
                Err(e)
            }
        }
    }
}

impl Child {
    /// Wait for the command to end: its exit status, or 128 + the signal that ended it.
    pub fn wait(&self) -> Result<i32, std::io::Error> {
        crate::runtime::wait_status(self.pid as i32)
    }
}

impl Drop for Child {
    /// A child never told to start ends at the closed pipe (with 125); reap it.
    fn drop(&mut self) {
        if self.go.take().is_some() {
            let _ = rustix::process::waitpid(
                rustix::process::Pid::from_raw(self.pid as i32),
                rustix::process::WaitOptions::empty(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{build, Network, Plan};

    fn plan() -> Plan {
        Plan {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            ..crate::spec::test_plan()
        }
    }

    fn v1() -> Vec<CgroupView> {
        ["memory", "pids", "cpu,cpuacct"]
            .iter()
            .map(|h| CgroupView {
                host: Path::new("/sys/fs/cgroup").join(h).join("berth/web"),
                name: Some(h.to_string()),
            })
            .collect()
    }

    fn at<'a>(p: &'a Prepared, dest: &str) -> Vec<&'a MountOp> {
        let want = format!("/var/lib/berth/containers/web/rootfs{dest}");
        p.mounts
            .iter()
            .filter(|m| m.target.to_str().unwrap() == want)
            .collect()
    }

    #[test]
    fn the_default_spec_plans_isolation_in_full() {
        let p = prepare(&build(&plan()).unwrap(), &v1()).unwrap();
        for ns in [
            UnshareFlags::NEWNS,
            UnshareFlags::NEWPID,
            UnshareFlags::NEWUTS,
            UnshareFlags::NEWIPC,
            UnshareFlags::NEWNET,
        ] {
            assert_ne!(p.clone_flags & ns.bits() as u64, 0, "{ns:?}");
        }
        assert_eq!(p.clone_flags & UnshareFlags::NEWUSER.bits() as u64, 0);
        assert!(p.cgroup_ns && !p.user_ns);
        // Docker's 14 capabilities, nothing that administers the host.
        assert_eq!(p.caps.bits().count_ones(), 14);
        for cap in [
            CapabilitySet::SYS_ADMIN,
            CapabilitySet::SYS_MODULE,
            CapabilitySet::SYS_BOOT,
        ] {
            assert!(!p.caps.contains(cap), "{cap:?}");
        }
        assert!(p.caps.contains(CapabilitySet::CHOWN | CapabilitySet::KILL));
        assert!(p.no_new_privs);
        let denied = p.seccomp.as_ref().unwrap();
        for sc in ["mount", "init_module", "kexec_load", "keyctl"] {
            assert!(denied.iter().any(|(d, _)| d == sc), "{sc}");
        }
        assert!(denied.iter().all(|(_, errno)| *errno == 1), "EPERM");
        // New filesystems never honour device nodes; /sys goes read-only at once.
        let proc_ = at(&p, "/proc");
        assert_eq!(proc_[0].how, How::Mount);
        assert!(proc_[0].flags.contains(MountFlags::NODEV));
        let sys = at(&p, "/sys")[0];
        assert!(sys.flags.contains(MountFlags::RDONLY | MountFlags::NODEV));
        assert_eq!(
            at(&p, "/dev")[0].data.to_str().unwrap(),
            "mode=755,size=65536k"
        );
        // v1: a tmpfs with each hierarchy's group bound in, then all of it read-only.
        let cg = at(&p, "/sys/fs/cgroup");
        assert_eq!(cg.first().unwrap().how, How::Mount);
        assert_eq!(cg.last().unwrap().how, How::ReadOnlyTree);
        let mem = at(&p, "/sys/fs/cgroup/memory")[0];
        assert_eq!(mem.how, How::Bind);
        assert_eq!(
            mem.source.to_str().unwrap(),
            "/sys/fs/cgroup/memory/berth/web"
        );
        assert_eq!(at(&p, "/sys/fs/cgroup/cpu,cpuacct").len(), 1);
        assert_eq!(p.join_tasks.len(), 3);
        assert!(p.join_v2.is_none());
        assert!(p
            .masked
            .iter()
            .any(|m| m.to_str().unwrap() == "/proc/kcore"));
        assert!(p
            .readonly
            .iter()
            .any(|m| m.to_str().unwrap() == "/proc/sysrq-trigger"));
        assert_eq!(p.hostname.as_deref(), Some(&b"web"[..]));
        assert_eq!(p.args[0].to_str().unwrap(), "sh");
        assert!(p.path.contains(&PathBuf::from("/usr/bin")));
        assert!(p
            .rlimits
            .iter()
            .any(|(r, s, h)| *r == rustix::process::Resource::Nofile && *s == 1024 && *h == 1024));
    }

    #[test]
    fn v2_binds_the_group_and_clones_into_it() {
        let view = [CgroupView {
            host: "/sys/fs/cgroup/berth/web".into(),
            name: None,
        }];
        let p = prepare(&build(&plan()).unwrap(), &view).unwrap();
        let cg = at(&p, "/sys/fs/cgroup");
        assert_eq!(
            cg.iter().map(|m| m.how).collect::<Vec<_>>(),
            [How::Bind, How::ReadOnlyTree]
        );
        assert_eq!(
            p.join_v2.as_deref(),
            Some(Path::new("/sys/fs/cgroup/berth/web"))
        );
        assert!(p.join_tasks.is_empty());
    }

    #[test]
    fn unprivileged_maps_ids_and_adds_a_user_namespace() {
        let mut pl = plan();
        pl.id_base = Some(1_000_000);
        let p = prepare(&build(&pl).unwrap(), &v1()).unwrap();
        assert!(p.user_ns);
        assert_ne!(p.clone_flags & UnshareFlags::NEWUSER.bits() as u64, 0);
        assert_eq!(p.uid_map, "0 1000000 65536\n");
        assert_eq!(p.gid_map, "0 1000000 65536\n");
    }

    #[test]
    fn host_network_keeps_the_hosts_namespace() {
        let mut pl = plan();
        pl.network = Network::Host;
        let p = prepare(&build(&pl).unwrap(), &v1()).unwrap();
        assert_eq!(p.clone_flags & UnshareFlags::NEWNET.bits() as u64, 0);
    }

    #[test]
    fn what_it_does_not_implement_is_refused_by_name() {
        let mut pl = plan();
        pl.terminal = true;
        let e = prepare(&build(&pl).unwrap(), &v1()).unwrap_err();
        assert!(e.to_string().contains("terminal"), "{e}");

        let mut pl = plan();
        pl.network = Network::Join("/run/netns/x".into());
        let e = prepare(&build(&pl).unwrap(), &v1()).unwrap_err();
        assert!(e.to_string().contains("existing namespace"), "{e}");

        let mut spec = build(&plan()).unwrap();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts[0].set_destination("/proc/../../etc".into());
        spec.set_mounts(Some(mounts));
        let e = prepare(&spec, &v1()).unwrap_err();
        assert!(e.to_string().contains("leaves the container's root"), "{e}");
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let opts = |v: &[&str]| mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (f, d, ro) = opts(&[
            "nosuid",
            "noexec",
            "mode=1777",
            "size=64k",
            "ro",
            "rprivate",
        ]);
        assert_eq!(f, MountFlags::NOSUID | MountFlags::NOEXEC);
        assert_eq!(d, "mode=1777,size=64k");
        assert!(ro);
        let (f, _, ro) = opts(&["rbind", "rw"]);
        assert_eq!(f, MountFlags::BIND | MountFlags::REC);
        assert!(!ro);
    }

    #[test]
    fn mount_targets_are_made_but_never_through_a_link() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let mut seen = std::collections::HashSet::new();
        make_within(&root, &root.join("dev/pts"), Make::Dir, &mut seen).unwrap();
        assert!(root.join("dev/pts").is_dir());
        make_within(&root, &root.join("etc/hosts"), Make::File, &mut seen).unwrap();
        assert!(root.join("etc/hosts").is_file());
        // An image whose /sys points at the host's /etc does not get a mount there.
        std::os::unix::fs::symlink("/etc", root.join("sys")).unwrap();
        let e = make_within(&root, &root.join("sys/fs/cgroup"), Make::Dir, &mut seen).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!Path::new("/etc/fs").exists());
        // Directories on the way are looked at once per root; the targets themselves always.
        assert!(seen.contains(&root.join("dev")) && seen.contains(&root.join("etc")));
        assert!(!seen.contains(&root.join("dev/pts")) && !seen.contains(&root.join("sys")));
        std::fs::remove_dir(root.join("dev/pts")).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("dev/pts")).unwrap();
        let e = make_within(&root, &root.join("dev/pts"), Make::Dir, &mut seen).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn the_filter_travels_to_the_child_whole() {
        let p = prepare(&build(&plan()).unwrap(), &v1()).unwrap();
        let program = p
            .seccomp_program()
            .unwrap()
            .expect("the default spec has a filter");
        assert!(program.len() > crate::spec::DENIED_SYSCALLS.len());
        let bytes = encode_filter(Some(&program));
        let back = read_filter(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(back.len(), program.len());
        for (a, b) in back.iter().zip(&program) {
            assert_eq!((a.code, a.jt, a.jf, a.k), (b.code, b.jt, b.jf, b.k));
        }
        assert!(read_filter(&mut &encode_filter(None)[..])
            .unwrap()
            .is_none());
        // Cut short, or claiming more than the kernel takes: an error, not a partial filter.
        assert!(read_filter(&mut &bytes[..bytes.len() - 3]).is_err());
        assert!(read_filter(&mut &5000u32.to_le_bytes()[..]).is_err());
    }

    #[test]
    fn the_compiled_filter_refuses_what_it_lists() {
        if !rustix::process::geteuid().is_root() {
            return; // installing a filter without no_new_privs needs CAP_SYS_ADMIN
        }
        let p = prepare(&build(&plan()).unwrap(), &v1()).unwrap();
        let program = p.seccomp_program().unwrap().unwrap();
        // A thread of its own: a filter binds the thread that installs it, for good.
        let keyctl = std::thread::spawn(move || {
            install_filter(&program).unwrap();
            // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): allowed unfiltered.
            // SAFETY: a plain system call with integer arguments.
            #[allow(unsafe_code)]
            let r = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
            (r, std::io::Error::last_os_error().raw_os_error())
        })
        .join()
        .unwrap();
        assert_eq!(keyctl, (-1, Some(libc::EPERM)));
    }

    #[test]
    fn the_child_tells_a_missing_command_from_a_failed_setup() {
        let f = |m: &str| decode_failure(m);
        assert!(matches!(
            f(&format!("{TAG_NOT_FOUND}nosuch: command not found")),
            DirectError::CommandNotFound(m) if m == "nosuch: command not found"
        ));
        assert!(matches!(
            f(&format!("{TAG_NOT_EXECUTABLE}/etc/passwd: cannot run it")),
            DirectError::CommandNotExecutable(m) if m == "/etc/passwd: cannot run it"
        ));
        assert!(matches!(f("mounting /proc: EPERM"), DirectError::Child(_)));
    }
}
