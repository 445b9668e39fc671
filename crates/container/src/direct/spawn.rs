//! Starting a container: clone3 into its namespaces and cgroup, the child's root and
//! credentials, the go, and the failure messages it sends back.

use super::*;

/// Clone a child with `flags` (namespaces; born in the v2 group `group` when given) that runs
/// `body`, which returns only with what went wrong: that goes to the parent over a close-on-exec
/// pipe, whose read end comes back with the pid, and the child ends with 125.
#[allow(unsafe_code)]
pub(super) fn fork(
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
pub(super) fn report(errors: &OwnedFd) -> Result<Option<DirectError>, DirectError> {
    let mut buf = Vec::new();
    errors
        .try_clone()
        .map(std::fs::File::from)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(host("reading the container process's report"))?;
    Ok((!buf.is_empty()).then(|| decode_failure(&String::from_utf8_lossy(&buf))))
}

pub(super) fn decode_failure(message: &str) -> DirectError {
    if let Some(m) = message.strip_prefix(TAG_NOT_FOUND) {
        DirectError::CommandNotFound(m.to_string())
    } else if let Some(m) = message.strip_prefix(TAG_NOT_EXECUTABLE) {
        DirectError::CommandNotExecutable(m.to_string())
    } else {
        DirectError::Child(message.to_string())
    }
}

/// `clone3`'s argument (linux/sched.h, version 2: with `cgroup`).
#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct CloneArgs {
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
pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

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
    /// With `interactive`, the command runs on a pty of the container's own, relayed to berth's
    /// standard input and output (see [`super::terminal`]).
    pub fn exec_in(
        &self,
        pid: u32,
        args: &[String],
        interactive: bool,
    ) -> Result<i32, DirectError> {
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
        let terminal = if interactive {
            let owner = if self.user_ns {
                super::terminal::outside(&self.uid_map, self.uid)
            } else {
                Some(self.uid)
            };
            Some(super::terminal::Terminal::open_in(pid, owner)?)
        } else {
            None
        };
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
            if let Some(t) = &terminal {
                super::terminal::attach(t.slave())?;
            }
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
        if let (None, Some(t)) = (&failure, terminal) {
            // A relay that fails (berth's output gone) closes the master, which hangs the
            // command's terminal up; berth still waits for it.
            if let Err(e) = t.relay(child) {
                tracing::warn!("relaying the terminal of the command in process {pid}: {e}");
            }
        }
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
    pub(super) fn open_group(&self) -> Result<(Vec<std::fs::File>, Option<OwnedFd>), DirectError> {
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
    pub(super) fn seccomp_program(&self) -> Result<Option<Vec<libc::sock_filter>>, DirectError> {
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

    pub(super) fn seccomp_filter(&self) -> Result<Option<ScmpFilterContext>, DirectError> {
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
    pub(super) fn child(
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
    pub(super) fn become_command(
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
    pub(super) fn resolve(&self) -> Result<CString, String> {
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
    pub(super) fn map_ids(&mut self) -> Result<(), DirectError> {
        let Some((uid_map, gid_map)) = self.maps.take() else {
            return Ok(());
        };
        for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
            let path = format!("/proc/{}/{file}", self.pid);
            std::fs::write(&path, map).map_err(host(format!("writing {path}")))?;
        }
        self.signal(b"g")
    }

    pub(super) fn signal(&self, message: &[u8]) -> Result<(), DirectError> {
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
    pub(super) fn failure(&self) -> Option<DirectError> {
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
