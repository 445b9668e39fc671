//! What a client asks berth to do. Each request is checked without the system ([`check_name`],
//! [`InstanceCreate::check`]); the executor checks the rest against the host.

use crate::blob::Blob;
use crate::error::Error;
use crate::instance::{Forward, GuestKind, InstanceType};
use serde::{Deserialize, Serialize};

/// Longest instance or image name (a DNS label).
pub const NAME_MAX: usize = 63;

/// Instance and image names: 1-63 of `A-Za-z0-9-_.`, starting with a letter or digit, so a name
/// is always one path component under the data dir and never `.` or `..`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "invalid name {name:?}: use 1-{NAME_MAX} letters, digits, '-', '_' or '.', \
                 starting with a letter or digit"
            ),
        ))
    }
}

/// The accelerator a VM asks for; none given means KVM when a probe shows it works, else TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM, refused when the probe shows it cannot run guests.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// A container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Its own namespace with loopback only.
    None,
    /// The host's.
    Host,
    /// An address on berth0, NAT out.
    Bridge,
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Network::None => "none",
            Network::Host => "host",
            Network::Bridge => "bridge",
        })
    }
}

/// What only a VM takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreate {
    /// vCPUs (default 2).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory in bytes (default 1 GiB, at least 256 MiB).
    #[serde(default)]
    pub memory: Option<u64>,
    /// Guest kind; none picks paravirt for berth's own images, hybrid for imported ones.
    #[serde(default)]
    pub kind: Option<GuestKind>,
    /// Accelerator; none picks as the probe says.
    #[serde(default)]
    pub accel: Option<Accel>,
    /// Public keys (OpenSSH text) authorized for the guest's user besides berth's own.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// QEMU's disk cache mode (`writeback`, or `unsafe` for throwaway guests).
    #[serde(default)]
    pub disk_cache: Option<String>,
}

/// What only a system container takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerCreate {
    /// Limits as `berth set` takes them, in order: `memory=256M`, `cpus=0.5`,
    /// `io-max=8:0:rbps=10M` (one per device).
    #[serde(default)]
    pub limits: Vec<String>,
    /// Network (default bridge).
    #[serde(default)]
    pub network: Option<Network>,
    /// Root inside is an unprivileged ID range outside.
    #[serde(default)]
    pub unprivileged: bool,
}

/// Make an instance and start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    /// Its name.
    pub name: String,
    /// The image to make it from.
    pub image: String,
    /// VM or (system) container.
    #[serde(rename = "type")]
    pub instance_type: InstanceType,
    /// Disk size in bytes (a VM's root grows to it; a container's writable layer is capped).
    #[serde(default)]
    pub disk: Option<u64>,
    /// User-data of any kind cloud-init takes (#cloud-config, a script, MIME, gzip), by
    /// content; a #cloud-config is merged with berth's own, the user's winning.
    #[serde(default)]
    pub cloud_init: Option<Blob>,
    /// Forwards from the host.
    #[serde(default)]
    pub forwards: Vec<Forward>,
    /// Wait this long for the instance to be ready (SSH and cloud-init, or systemd up);
    /// none returns once it starts.
    #[serde(default)]
    pub wait_seconds: Option<u64>,
    /// A VM's own settings (only with type `vm`).
    #[serde(default)]
    pub vm: Option<VmCreate>,
    /// A container's own settings (only with type `container`).
    #[serde(default)]
    pub container: Option<ContainerCreate>,
}

/// A disk size (or a container's disk cap) that a disk can have.
pub fn check_disk(disk: Option<u64>) -> Result<(), Error> {
    match disk {
        Some(d) if d > i64::MAX as u64 => Err(Error::invalid(
            "disk",
            format!(
                "disk size {d} is larger than a disk can be (at most {} bytes)",
                i64::MAX
            ),
        )),
        _ => Ok(()),
    }
}

/// The smallest memory a Debian guest boots in.
pub const VM_MEMORY_MIN: u64 = 256 << 20;

impl InstanceCreate {
    /// The checks that need no system: the name, settings only for the other type, sizes.
    pub fn check(&self) -> Result<(), Error> {
        check_name(&self.name)?;
        if self.image.is_empty() {
            return Err(Error::invalid("image", "no image given"));
        }
        check_name(&self.image).map_err(|_| {
            Error::invalid(
                "image",
                format!(
                    "invalid image name {:?}: images are named as instances are (see berth \
                     image list)",
                    self.image
                ),
            )
        })?;
        match self.instance_type {
            InstanceType::Vm if self.container.is_some() => Err(Error::invalid(
                "container",
                "container settings were given for a VM (type vm)",
            )),
            InstanceType::Container if self.vm.is_some() => Err(Error::invalid(
                "vm",
                "VM settings were given for a container (type container)",
            )),
            _ => Ok(()),
        }?;
        if let Some(vm) = &self.vm {
            if vm.cpus == Some(0) {
                return Err(Error::invalid("vm.cpus", "a VM needs at least 1 vCPU"));
            }
            if let Some(m) = vm.memory.filter(|&m| m < VM_MEMORY_MIN) {
                return Err(Error::invalid(
                    "vm.memory",
                    format!("memory {m} bytes is too small for a Debian guest (at least 256M)"),
                ));
            }
        }
        check_disk(self.disk)?;
        if let Some(f) = self.forwards.iter().find(|f| f.host == 0 || f.guest == 0) {
            return Err(Error::invalid(
                "forwards",
                format!("forward {}:{} has port 0", f.host, f.guest),
            ));
        }
        Ok(())
    }
}

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateAction {
    /// Start a stopped instance.
    Start,
    /// Stop it (an ACPI power-down for a VM, SIGTERM to a container's init), or at once with
    /// `force`.
    Stop,
    /// Stop, then start.
    Restart,
    /// Pause a VM's vCPUs.
    Pause,
    /// Resume a paused VM.
    Resume,
}

impl std::fmt::Display for StateAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateAction::Start => "start",
            StateAction::Stop => "stop",
            StateAction::Restart => "restart",
            StateAction::Pause => "pause",
            StateAction::Resume => "resume",
        })
    }
}

/// Change an instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceStateChange {
    /// What to do.
    pub action: StateAction,
    /// Stop at once instead of asking the guest.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for the guest to stop (default 120).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// After a start, wait this long for it to be ready; none returns once it starts.
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

/// Delete an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceDelete {
    /// Delete it even while it runs.
    #[serde(default)]
    pub force: bool,
}

/// A step of an instance's move between hosts (`berth move`), on the host it leaves or the one
/// it reaches. A move is `depart` there, the archive sent with `identity=keep` (received here
/// as an instance that is `arriving`), `departed` there, `arrived` here; a failure before
/// `departed` is undone with `stay` there (and the arriving instance deleted here). Each step
/// is idempotent, so that a move cut short is finished or undone by doing it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MoveStep {
    /// On the host it leaves: a stopped instance becomes moving (it cannot start, change or be
    /// copied until the move ends), so that what travels is what it is.
    Depart,
    /// On the host it leaves: the move is undone; it is a stopped instance here again.
    Stay,
    /// On the host it leaves: the other host has it; it is removed here, its machine-id
    /// released.
    Departed,
    /// On the host it reaches: the instance received arriving is now this host's, stopped.
    Arrived,
}

impl std::fmt::Display for MoveStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MoveStep::Depart => "depart",
            MoveStep::Stay => "stay",
            MoveStep::Departed => "departed",
            MoveStep::Arrived => "arrived",
        })
    }
}

/// A step of a move (see [`MoveStep`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceMove {
    /// Which step.
    pub step: MoveStep,
    /// The other host, as the user names it (shown in the instance's state while it moves).
    #[serde(default)]
    pub peer: String,
}

impl InstanceMove {
    /// Check the request.
    pub fn check(&self) -> Result<(), Error> {
        if self.peer.len() > 255 || self.peer.chars().any(char::is_control) {
            return Err(Error::invalid(
                "peer",
                format!(
                    "{:?} is not a host's name (at most 255 printable characters)",
                    self.peer
                ),
            ));
        }
        Ok(())
    }
}

/// Change a container's limits while it runs (`none` lifts one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSet {
    /// `KEY=VALUE`, in order, as `berth set NAME KEY=VALUE...` takes them.
    pub limits: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(json: &str) -> Result<InstanceCreate, String> {
        serde_json::from_str::<InstanceCreate>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_fields_are_refused_by_name_at_every_level() {
        let e = create(r#"{"name":"a","image":"debian-12","type":"vm","cpu":2}"#).unwrap_err();
        assert!(e.contains("unknown field `cpu`"), "{e}");
        let e = create(r#"{"name":"a","image":"i","type":"vm","vm":{"cpu":2}}"#).unwrap_err();
        assert!(e.contains("unknown field `cpu`"), "{e}");
        let e = serde_json::from_str::<InstanceStateChange>(r#"{"action":"stop","forse":true}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `forse`"), "{e}");
        let e = create(r#"{"name":"a","image":"i","type":"pod"}"#).unwrap_err();
        assert!(e.contains("unknown variant `pod`"), "{e}");
    }

    #[test]
    fn a_create_is_checked_without_the_system() {
        let ok =
            create(r#"{"name":"web","image":"debian-12","type":"vm","vm":{"cpus":2}}"#).unwrap();
        assert_eq!(ok.check(), Ok(()));
        let field = |j: &str| create(j).unwrap().check().unwrap_err().field.unwrap();
        assert_eq!(field(r#"{"name":"../x","image":"i","type":"vm"}"#), "name");
        assert_eq!(field(r#"{"name":"a","image":"","type":"vm"}"#), "image");
        assert_eq!(field(r#"{"name":"a","image":"../i","type":"vm"}"#), "image");
        assert_eq!(
            field(r#"{"name":"a","image":" ","type":"container"}"#),
            "image"
        );
        assert_eq!(
            field(r#"{"name":"a","image":"i","type":"vm","container":{}}"#),
            "container"
        );
        assert_eq!(
            field(r#"{"name":"a","image":"i","type":"container","vm":{}}"#),
            "vm"
        );
        assert_eq!(
            field(r#"{"name":"a","image":"i","type":"vm","vm":{"memory":1048576}}"#),
            "vm.memory"
        );
        assert_eq!(
            field(r#"{"name":"a","image":"i","type":"vm","disk":18446744073709551615}"#),
            "disk"
        );
        assert_eq!(
            field(r#"{"name":"a","image":"i","type":"vm","forwards":[{"host":0,"guest":22}]}"#),
            "forwards"
        );
    }

    #[test]
    fn names_stay_one_path_component() {
        for bad in ["", ".", "..", "../x", "-x", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "debian-12", "web_1.lan", &"x".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
