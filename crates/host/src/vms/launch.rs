//! Launching and starting VMs: the accelerator (a cached KVM probe), QEMU's spawn, the wait
//! for SSH and cloud-init with the console read for what went wrong.

use super::*;

impl Vms {
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
            let (key, public) = own_key(&dir, &o.name)?;
            let mut authorized = vec![public];
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
            write_seed(&dir, &o.name, user_data, &machine_id)?;
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

    pub(super) fn accel(
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

    /// The KVM probe result, cached for the host (`dirs::host_cache`, else the data dir) for
    /// as long as the QEMU binary, the running kernel and /dev/kvm stay the same: a probe takes
    /// 4 s on a host where KVM is emulated, and is a fact about the host, not about one data dir,
    /// so it is not repeated for every launch nor for every data dir.
    pub(super) fn cached_probe(&self, qemu: &Path) -> berth_qemu::probe::ProbeRun {
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
        let path = crate::dirs::host_cache_from_env()
            .filter(|d| std::fs::create_dir_all(d).is_ok())
            .unwrap_or_else(|| self.dirs.root.clone())
            .join("kvm-probe.json");
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
        let text = json!({"key": key, "probe": run}).to_string();
        // Whole or not at all: a launch beside this one reads it.
        if let Err(e) = berth_files::output::write_atomic(&path, text.as_bytes(), 0o644, "probe") {
            tracing::debug!("not caching the KVM probe: {e}");
        }
        run
    }

    /// Start QEMU for `rec`. `fresh_root` is for a guest's first boot from an image berth built:
    /// its root file system is that image (checked by its sha256) under an overlay nothing has
    /// written to yet, so it is mounted read-write from the start, which skips the file system
    /// check (systemd-fsck-root runs only for a read-only root; 0.4-0.7 s under TCG, most of it
    /// starting the process). Every other boot mounts it read-only and checks it first.
    pub(super) fn spawn(
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
        if let Err(e) = crate::nic::start(&rec.paths) {
            crate::passt::end(&socket);
            return Err(VmError::QemuStart(e));
        }
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
            crate::nic::end(rec.paths.folder());
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
}

/// A console log as text (empty when it cannot be read).
/// Write a VM's `user-data` and its NoCloud seed into its folder `dir`: the instance-id is
/// made from the machine-id (a new machine-id is a new instance to cloud-init), the hostname is
/// the user-data's, else the VM's `name`.
pub(super) fn write_seed(
    dir: &Path,
    name: &str,
    user_data: String,
    machine_id: &str,
) -> Result<(), VmError> {
    std::fs::write(dir.join("user-data"), &user_data).map_err(io("writing", dir))?;
    let hostname = UserData::split(user_data.as_bytes())
        .ok()
        .and_then(|u| {
            u.cloud_configs
                .iter()
                .rev()
                .find_map(|c| c.get("hostname").and_then(Value::as_str).map(String::from))
        })
        .unwrap_or_else(|| name.to_string());
    let files = SeedFiles {
        user_data: user_data.into_bytes(),
        meta_data: seed::meta_data(&format!("iid-{machine_id}"), Some(&hostname)).into_bytes(),
        network_config: Some(GUEST_NETWORK_CONFIG.as_bytes().to_vec()),
        vendor_data: None,
    };
    seed::write(&dir.join("seed.iso"), &files, SeedFormat::Iso, true)?;
    Ok(())
}

pub(super) fn console_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of a text.
pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

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
pub(super) fn strip_ansi(line: &str) -> String {
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

/// The errors in cloud-init's `result.json` (`{"v1": {"datasource": ..., "errors": [...]}}`).
pub(super) fn cloud_init_errors(text: &str) -> Result<Vec<String>, String> {
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
