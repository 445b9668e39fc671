//! A stopped VM's move between hosts (`berth move`), as each host sees it. The host it leaves
//! marks it moving ([`Vms::depart`]: it cannot start, change or be copied), sends it with its
//! own SSH key, and removes it only once the other host holds it ([`Vms::departed`]); the
//! host it reaches installs it arriving, with its machine-id registered there
//! ([`super::transfer`]), and makes it an ordinary stopped VM when told it has arrived
//! ([`Vms::arrived`]). A move cut short leaves it moving at one end, arriving at the other or
//! both, never running anywhere; doing the step again finishes it, [`Vms::stay`] undoes it.

use super::archive::VmArchive;
use super::transfer::{Identity, ARRIVING, MOVING};
use super::*;

/// The path of VM `name`'s own SSH key, the one it takes when it moves: refused for a VM that
/// trusts the host's shared key, which berth does not give to another host.
pub(super) fn own_key_of(name: &str, rec: &VmRecord) -> Result<PathBuf, VmError> {
    if rec.ssh_key != rec.paths.folder().join(KEY) {
        return Err(VmError::Invalid(format!(
            "{name} trusts this host's shared SSH key ({}; it was made before VMs had keys of \
             their own), which berth does not give to another host: copy it instead (berth \
             copy), and the copy gets a key of its own",
            rec.ssh_key.display()
        )));
    }
    Ok(rec.ssh_key.clone())
}

impl Vms {
    /// Whether this host can take the VM in `a` as `identity` says, before its disk is taken:
    /// its forwarded ports free here and, for a move, its machine-id held by no guest here.
    pub fn can_take(&self, a: &VmArchive, identity: Identity) -> Result<(), VmError> {
        check_forwards(a.config.forwards.iter().map(|f| f.host))?;
        for f in &a.config.forwards {
            check_port(f.host).map_err(|_| {
                VmError::Invalid(format!(
                    "{} forwards host port {} to its port {}, and that port is taken on this \
                     host",
                    a.name, f.host, f.guest
                ))
            })?;
        }
        if identity == Identity::Keep {
            if let Some(h) = self.store.machine_id_holder(&a.machine_id)? {
                return Err(VmError::Invalid(format!(
                    "this host already holds machine-id {} (as {} {}): {} cannot move here",
                    a.machine_id, h.kind, h.name, a.name
                )));
            }
        }
        Ok(())
    }

    /// Mark stopped VM `name` as moving to `peer`. Again on a moving VM, it only says so.
    pub fn depart(&self, name: &str, peer: &str) -> Result<(), VmError> {
        let (row, rec) = self.get(name)?;
        if row.desired == ARRIVING {
            return Err(VmError::Invalid(format!(
                "{name} is still arriving here from another host: berth move finishes that first"
            )));
        }
        if row.desired != MOVING {
            if !matches!(self.state(&row, &rec)?, VmState::Stopped { .. }) {
                return Err(VmError::Invalid(format!(
                    "{name} is running: stop it first (berth stop {name}); berth does not move \
                     a running VM yet"
                )));
            }
            own_key_of(name, &rec)?;
        }
        self.store
            .set_instance_state(name, MOVING, &format!("moving to {peer}"))?;
        Ok(())
    }

    /// Undo `name`'s move: a stopped VM of this host again. Nothing to do for a stopped one.
    pub fn stay(&self, name: &str) -> Result<(), VmError> {
        let (row, _) = self.get(name)?;
        match row.desired.as_str() {
            MOVING => Ok(self.store.set_instance_state(
                name,
                "stopped",
                &format!("its move was undone ({})", row.note),
            )?),
            ARRIVING => Err(VmError::Invalid(format!(
                "{name} is arriving here: the host it leaves undoes the move, and this copy is \
                 deleted (berth delete --force {name})"
            ))),
            _ => Ok(()),
        }
    }

    /// Remove moving VM `name`: the other host holds it now.
    pub fn departed(&self, name: &str) -> Result<(), VmError> {
        let (row, _) = self.get(name)?;
        if row.desired != MOVING {
            return Err(VmError::Invalid(format!(
                "{name} is not moving: berth removes only a VM whose move it began"
            )));
        }
        self.purge(name)
    }

    /// Make arriving VM `name` a stopped VM of this host. Nothing to do for a stopped one.
    pub fn arrived(&self, name: &str, peer: &str) -> Result<(), VmError> {
        let (row, _) = self.get(name)?;
        match row.desired.as_str() {
            ARRIVING => Ok(self.store.set_instance_state(
                name,
                "stopped",
                &format!("moved here from {peer}"),
            )?),
            MOVING => Err(VmError::Invalid(format!(
                "{name} is moving away from here, not arriving"
            ))),
            _ => Ok(()),
        }
    }
}
