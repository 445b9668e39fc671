//! Removing containers: by record, or by name when creation was cut short; ending what runs.

use super::*;

impl Containers {
    /// Remove everything of a container: libcontainer's state, its cgroup, the overlay mount,
    /// its folder and its row.
    pub(super) fn remove_all(
        &self,
        name: &str,
        cgroup: &Cgroup,
        system: bool,
    ) -> Result<(), ContainerError> {
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

/// SIGKILL everything in a container's groups and wait (up to 10 s) until they are empty.
pub(super) fn end_all(cgroup: &Cgroup) -> Result<(), ContainerError> {
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
pub(super) fn kill(pid: u32, signal: &str) {
    if pid == 0 {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}
