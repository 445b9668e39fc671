//! What berth tells about an instance: its state, and what it is (a VM or a container).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What an instance is: a QEMU virtual machine, or a container on the host's kernel (a system
/// container, whose init is the image's systemd, or an application container from `berth run`,
/// told apart by [`ContainerDetails::system`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceType {
    /// A VM.
    Vm,
    /// A container.
    Container,
}

impl std::fmt::Display for InstanceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceType::Vm => "vm",
            InstanceType::Container => "container",
        })
    }
}

/// Running or not, or not made yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A command is making it now.
    Creating,
    /// Running.
    Running,
    /// Paused (a VM's vCPUs stopped).
    Paused,
    /// Not running.
    Stopped,
    /// Its creation was cut short (the command making it was killed): `delete --force`
    /// removes what is left.
    Broken,
    /// Being moved between hosts (`berth move`), on the host it leaves or the one it reaches:
    /// not running, and it cannot start until the move is finished or undone (the reason says
    /// which host is the other).
    Moving,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Broken => "broken",
            Status::Moving => "moving",
        })
    }
}

/// An instance's state and, when berth knows, why it is in it ("exited with 0", "the guest
/// powered off", "its init ended outside berth").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct State {
    /// Running, paused or stopped.
    pub state: Status,
    /// Why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A VM's guest kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// Emulated hardware, no guest drivers.
    Full,
    /// An unmodified OS with virtio drivers (q35).
    Hybrid,
    /// A kernel that knows it is a guest (microvm).
    Paravirt,
}

impl std::fmt::Display for GuestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GuestKind::Full => "full",
            GuestKind::Hybrid => "hybrid",
            GuestKind::Paravirt => "paravirt",
        })
    }
}

/// A port forward: the host's port to the instance's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// Host port (on 127.0.0.1 for a VM).
    pub host: u16,
    /// The instance's port.
    pub guest: u16,
}

/// How to reach a VM over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ssh {
    /// The login user berth made.
    pub user: String,
    /// The port on 127.0.0.1 forwarded to the guest's 22.
    pub port: u16,
    /// berth's private key for the guest, on the host that runs it.
    pub key: String,
}

/// What is special to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmDetails {
    /// Guest kind.
    pub kind: GuestKind,
    /// The accelerator it runs on (`kvm` or `tcg`).
    pub accel: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual disk size in bytes.
    pub disk_size: u64,
    /// Bytes the disk's own layer takes on the host (`info` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_usage: Option<u64>,
    /// Forwards from the host's loopback.
    pub forwards: Vec<Forward>,
    /// Seconds since QEMU started, while it runs (`info` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// Live usage of its QEMU process while it runs (`info` only): CPU time, resident memory,
    /// threads, bytes it read and wrote to its disks. (Not `usage`: a VM's and a container's
    /// details are flattened into one object, so their keys must differ.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_usage: Option<Usage>,
    /// Bytes through its NIC since QEMU started, while it runs (`info` only), as berth's relay
    /// between QEMU and passt counts them (frames, without the stream's length fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<NetBytes>,
    /// SSH access.
    pub ssh: Ssh,
}

/// Live usage of a running instance: a container's from its cgroup, a VM's from its QEMU process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Memory in use.
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

/// Bytes through an instance's network link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetBytes {
    /// Received by the instance.
    pub received_bytes: u64,
    /// Sent by the instance.
    pub sent_bytes: u64,
}

/// What is special to a container (system or application).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContainerDetails {
    /// A system container (systemd as PID 1) rather than one command.
    pub system: bool,
    /// Hostname inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The command (a system container's is its init).
    pub command: Vec<String>,
    /// `none`, `host` or `bridge`.
    pub network: String,
    /// Its address on berth0 (bridge networking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub address: Option<Ipv4Addr>,
    /// TCP forwards from the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Forward>,
    /// The host ID root inside maps to (unprivileged containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_base: Option<u32>,
    /// Size of its own disk (its writable layer), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
    /// Its cgroup, relative to the hierarchy's root.
    pub cgroup: String,
    /// Limits as `berth set` takes them (`memory` = `256M`); absent keys are not limited.
    pub limits: BTreeMap<String, String>,
    /// Host pid of its init while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Exit status of its last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
    /// Live usage while it runs (`info` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Network bytes while it runs (`info` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetBytes>,
}

/// One instance, as `list` and `info` show it: what every instance has, and the VM's or the
/// container's own details, flattened into one JSON object beside `type`. The details are
/// absent only while the instance is being created, or when its creation was cut short before
/// berth had written them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    /// Unique name on its host.
    pub name: String,
    /// VM or container.
    #[serde(rename = "type")]
    pub instance_type: InstanceType,
    /// State, with the reason.
    pub state: State,
    /// The image it was made from.
    pub image: String,
    /// Its registered machine-id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// Unix time of creation.
    pub created_at: i64,
    /// A VM's details.
    #[serde(flatten, default)]
    pub vm: Option<VmDetails>,
    /// A container's details.
    #[serde(flatten, default)]
    pub container: Option<ContainerDetails>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM's and a container's details share one flattened object: a container's usage must
    /// come back as the container's (a key both had would be taken by the first).
    #[test]
    fn a_containers_usage_survives_the_flattened_json() {
        let v = serde_json::json!({
            "name": "web", "type": "container",
            "state": {"state": "running", "reason": ""},
            "image": "debian-12", "created_at": 0,
            "system": true, "command": [], "network": "none", "cgroup": "berth/web",
            "limits": {}, "usage": {"memory_bytes": 1, "cpu_ns": 2, "pids": 3,
                                    "io_read_bytes": 4, "io_write_bytes": 5}
        });
        let i: Instance = serde_json::from_value(v).unwrap();
        assert!(i.vm.is_none());
        assert_eq!(i.container.unwrap().usage.unwrap().pids, Some(3));
    }

    #[test]
    fn an_instance_is_flat_json_tagged_by_type_and_reads_back() {
        let i = Instance {
            name: "web".into(),
            state: State {
                state: Status::Stopped,
                reason: "the guest powered off".into(),
            },
            image: "debian-12".into(),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            created_at: 1,
            instance_type: InstanceType::Vm,
            container: None,
            vm: Some(VmDetails {
                kind: GuestKind::Paravirt,
                accel: "tcg".into(),
                cpus: 2,
                memory_mib: 1024,
                disk_size: 4 << 30,
                disk_usage: None,
                forwards: vec![Forward {
                    host: 8080,
                    guest: 80,
                }],
                uptime_seconds: None,
                qemu_usage: None,
                nic: None,
                ssh: Ssh {
                    user: "berth".into(),
                    port: 2222,
                    key: "/k".into(),
                },
            }),
        };
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["type"], "vm");
        assert_eq!(v["kind"], "paravirt");
        assert_eq!(v["state"]["state"], "stopped");
        assert_eq!(v["state"]["reason"], "the guest powered off");
        assert_eq!(v["ssh"]["port"], 2222);
        assert!(v.get("disk_usage").is_none());
        let back: Instance = serde_json::from_value(v).unwrap();
        assert_eq!(back, i);
        // Before berth has written its details, an instance is what every instance has.
        let bare = Instance {
            vm: None,
            state: State {
                state: Status::Broken,
                reason: "cut short".into(),
            },
            ..i
        };
        let v = serde_json::to_value(&bare).unwrap();
        assert!(v.get("kind").is_none() && v["state"]["state"] == "broken");
        assert_eq!(serde_json::from_value::<Instance>(v).unwrap(), bare);
    }
}
