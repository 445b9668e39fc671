//! System containers: launch (the image's systemd as init on a console pty), boot, the
//! bridge, readiness, stop and start, live limits, the console relay.

use super::*;

impl Containers {
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
    pub(super) fn boot(
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
    pub(super) fn connect(
        &self,
        name: &str,
        rec: &mut ContainerRecord,
    ) -> Result<(), ContainerError> {
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
    pub(super) fn disconnect(
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
            false,
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
    pub(super) fn spawn_relay(
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
}

/// `/etc/machine-id` in a container's upper layer (before it is mounted, so nothing in the
/// image can redirect the write), 0444 as systemd makes it.
pub(super) fn write_machine_id(upper: &Path, id: &str) -> Result<(), ContainerError> {
    use std::os::unix::fs::PermissionsExt;
    let etc = upper.join("etc");
    std::fs::create_dir_all(&etc).map_err(io("creating", &etc))?;
    let path = etc.join("machine-id");
    std::fs::write(&path, format!("{id}\n")).map_err(io("writing", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
        .map_err(io("setting the mode of", &path))
}

/// What a system container runs with (`console`: the pty that becomes its /dev/console).
pub(super) fn system_plan(
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

/// Where the v1 name=systemd hierarchy is mounted, on hosts whose controllers are on v1.
pub(super) fn systemd_v1_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    if Hierarchy::from_mountinfo(&text).ok()?.version() != berth_cgroups::Version::V1 {
        return None;
    }
    Hierarchy::systemd_v1_mount(&text)
}

/// Move this process into the v1 group `dir` of the hierarchy mounted at `root` (created if need be); returns the group it was in,
/// to come back to.
pub(super) fn enter_group(root: &Path, dir: &Path) -> Result<PathBuf, ContainerError> {
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

/// Where root of an unprivileged container maps to on the host (as LXD's default map starts).
pub const ID_BASE: u32 = 1_000_000;

/// What a container's network needs in its upper layer: the host's resolvers (on a bridge the
/// ones it can reach from there; on the host's network the host's file as is), and cloud-init
/// told to leave the network alone (berth configures eth0 from outside and there is no DHCP
/// server on berth0; on the host's network the interfaces are the host's own).
pub(super) fn write_network_files(upper: &Path, network: &str) -> Result<(), ContainerError> {
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

/// The host-wide lock for berth's bridge, its rules and its addresses (all data dirs share
/// them).
pub(super) fn host_net_lock() -> Result<std::fs::File, ContainerError> {
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
