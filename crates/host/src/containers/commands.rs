//! Commands in containers: `exec` in a running one (berth's own runtime joins it) and
//! `berth run`'s application containers.

use super::*;

impl Containers {
    /// Run a command in a running container; its exit status. An `interactive` one gets a pty of
    /// the container's own, relayed to this process's standard input and output.
    pub fn exec(
        &self,
        name: &str,
        args: Vec<String>,
        interactive: bool,
    ) -> Result<CommandExit, ContainerError> {
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
        let code = prepared.exec_in(pid, &args, interactive)?;
        Ok(CommandExit {
            code,
            oom_kills: cgroup.oom_kills().unwrap_or(0).saturating_sub(before),
        })
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

    pub(super) fn run_inner(
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
}

/// What a `berth run` container runs with.
pub(super) fn run_plan(name: &str, rec: &ContainerRecord, rootfs: &Path, cgroup: &Cgroup) -> Plan {
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
pub(super) fn cgroup_views(cgroup: &Cgroup) -> Vec<direct::CgroupView> {
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

/// The groups a command berth starts in a running container joins: berth's own (those of its
/// limits), and on v1 every other hierarchy in which the container's first process `pid` lives
/// under the container's group: freezer (libcontainer's), and name=systemd (where berth put the
/// system container's systemd). So the command is in the container's cgroup namespace root in
/// every hierarchy, not at the host's root in some.
pub(super) fn exec_views(cgroup: &Cgroup, pid: u32) -> Vec<direct::CgroupView> {
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

/// Per-phase timings, logged at debug level (`BERTH_LOG=berth_host=debug`), for finding where a
/// container start spends its time.
pub(super) struct Clock {
    start: std::time::Instant,
    last: std::time::Instant,
}

impl Clock {
    pub(super) fn start() -> Clock {
        let now = std::time::Instant::now();
        Clock {
            start: now,
            last: now,
        }
    }

    pub(super) fn mark(&mut self, phase: &str) {
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

/// Pass SIGINT, SIGTERM and SIGHUP received by berth on to `pid` until the handle is closed.
/// A command that is PID 1 of its namespace ignores signals it has no handler for (as under
/// `docker run` without `--init`), so 10 s after the first one, or at the second, whatever is
/// left in the container's cgroup is killed.
pub(super) fn forward_signals(pid: u32, cgroup: Cgroup) -> Option<signal_hook::iterator::Handle> {
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
