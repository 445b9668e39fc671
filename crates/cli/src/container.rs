//! `berth run`: a command in a container made from a base image, with cgroup limits; and the
//! container side of `list` and `delete`.

use crate::Status;
use anyhow::Result;
use berth_api::{InstanceRun, Network};
use berth_cgroups::Limits;
use clap::Args;

// Resource limits, shared by the container commands.
#[derive(Debug, Args, Default)]
pub struct LimitArgs {
    /// Memory plus swap (at least --memory).
    #[arg(long)]
    pub memory_swap: Option<String>,
    /// Relative CPU weight, 1-10000 (default 100).
    #[arg(long)]
    pub cpu_weight: Option<String>,
    /// CPUs to run on (e.g. 0-1,3).
    #[arg(long)]
    pub cpuset: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long)]
    pub pids: Option<String>,
    /// Relative I/O weight, 1-10000 (default 100).
    #[arg(long)]
    pub io_weight: Option<String>,
    /// Per-device I/O caps: DEV:rbps=..,wbps=..,riops=..,wiops=.. (DEV is MAJ:MIN or a path).
    #[arg(long)]
    pub io_max: Vec<String>,
    /// Network rate both ways (e.g. 10mbit).
    #[arg(long)]
    pub net_rate: Option<String>,
}

impl LimitArgs {
    /// The flags given, by name.
    pub fn given(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = [
            ("memory-swap", self.memory_swap.is_some()),
            ("cpu-weight", self.cpu_weight.is_some()),
            ("cpuset", self.cpuset.is_some()),
            ("pids", self.pids.is_some()),
            ("io-weight", self.io_weight.is_some()),
            ("net-rate", self.net_rate.is_some()),
        ]
        .iter()
        .filter(|(_, g)| *g)
        .map(|(k, _)| *k)
        .collect();
        if !self.io_max.is_empty() {
            v.push("io-max");
        }
        v
    }

    /// The typed limits, with `--memory` and `--cpus` (which VMs read differently); errors name
    /// the flag and the value.
    pub fn limits(&self, memory: Option<&String>, cpus: Option<&String>) -> Result<Limits> {
        let mut l = Limits::default();
        let pairs = [
            ("memory", memory),
            ("memory-swap", self.memory_swap.as_ref()),
            ("cpus", cpus),
            ("cpu-weight", self.cpu_weight.as_ref()),
            ("cpuset", self.cpuset.as_ref()),
            ("pids", self.pids.as_ref()),
            ("io-weight", self.io_weight.as_ref()),
            ("net-rate", self.net_rate.as_ref()),
        ];
        // Memory before swap: the cross-check needs both.
        for (key, v) in &pairs {
            if v.is_some_and(|v| v.trim().is_empty()) {
                anyhow::bail!("--{key} needs a value ('' was given; `berth set NAME {key}=none` lifts a limit)");
            }
        }
        for (key, v) in pairs.iter().filter(|(k, _)| *k != "memory-swap") {
            if let Some(v) = v {
                l.set(&format!("{key}={v}"))
                    .map_err(|e| anyhow::anyhow!("--{key}: {e}"))?;
            }
        }
        if let Some(v) = &self.memory_swap {
            l.set(&format!("memory-swap={v}"))
                .map_err(|e| anyhow::anyhow!("--memory-swap: {e}"))?;
        }
        for v in &self.io_max {
            l.set(&format!("io-max={v}"))
                .map_err(|e| anyhow::anyhow!("--io-max: {e}"))?;
        }
        Ok(l)
    }
}

// `berth run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Base image (its tree is extracted once and shared read-only); REMOTE:IMAGE runs it there.
    pub image: String,
    /// Remove the container when the command ends.
    #[arg(long)]
    pub rm: bool,
    /// Name the container (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Network: none (its own, loopback only), host, or bridge (an address on berth0, NAT out).
    #[arg(long, default_value = "none", value_parser = ["none", "host", "bridge"])]
    pub network: String,
    /// Memory limit (e.g. 256M); past it the kernel's OOM killer acts inside the container.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU time quota in CPUs (e.g. 0.5 = half a core).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Cap what the container can write (its writable layer on a disk of this size).
    #[arg(long)]
    pub disk: Option<String>,
    /// Run in a user namespace: root inside is an unprivileged ID range outside.
    #[arg(long)]
    pub unprivileged: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl LimitArgs {
    /// The limits as the API's `KEY=VALUE` assignments, checked here first so that errors name
    /// the flag.
    pub fn assignments(
        &self,
        memory: Option<&String>,
        cpus: Option<&String>,
    ) -> Result<Vec<String>> {
        Ok(self
            .limits(memory, cpus)?
            .assignments()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect())
    }
}

impl RunArgs {
    /// The API request (pure: the flags checked, nothing run).
    pub fn request(&self) -> Result<InstanceRun> {
        Ok(InstanceRun {
            image: self.image.clone(),
            name: self.name.clone(),
            command: self.command.clone(),
            limits: self
                .limits
                .assignments(self.memory.as_ref(), self.cpus.as_ref())?,
            rm: self.rm,
            network: Some(match self.network.as_str() {
                "host" => Network::Host,
                "bridge" => Network::Bridge,
                _ => Network::None,
            }),
            disk: match &self.disk {
                Some(d) => Some(
                    berth_disk::units::parse_size(d).map_err(|e| anyhow::anyhow!("--disk: {e}"))?,
                ),
                None => None,
            },
            unprivileged: self.unprivileged,
        })
    }
}

pub fn run(a: RunArgs) -> Result<Status> {
    berth_container::direct::ignore_sigpipe();
    // `REMOTE:IMAGE` runs it on that remote (its image), as a launch's `REMOTE:NAME` does.
    let (client, image) = crate::client::target(&a.image)?;
    let mut r = a.request()?;
    r.image = image;
    let exit = client.run(&r)?;
    Ok(crate::exit::for_command(exit, a.memory.as_deref()))
}

// `berth set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Container.
    pub name: String,
    /// KEY=VALUE (memory, memory-swap, cpus, cpu-weight, cpuset, pids, io-weight, net-rate);
    /// KEY=none lifts a limit.
    #[arg(required = true)]
    pub assignments: Vec<String>,
}

pub fn set(a: SetArgs) -> Result<Status> {
    let r = berth_api::InstanceSet {
        limits: a.assignments,
    };
    let (client, name) = crate::client::target(&a.name)?;
    client.set(&name, &r)?;
    println!("Updated {}.", a.name);
    Ok(Status(0))
}

// `berth console-relay` (internal): holds a system container's console; see
// `berth_container::console`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The pty slave (the container's /dev/console).
    #[arg(long)]
    pub slave: std::path::PathBuf,
    /// The socket `berth console` attaches to.
    #[arg(long)]
    pub socket: std::path::PathBuf,
    /// The console log.
    #[arg(long)]
    pub log: std::path::PathBuf,
    /// The container's init; the relay ends with it.
    #[arg(long)]
    pub pid: u32,
}

pub fn relay(a: RelayArgs) -> Result<Status> {
    use std::os::fd::AsFd;
    // The pty master arrives as standard input.
    let master = std::io::stdin().as_fd().try_clone_to_owned()?;
    berth_container::console::relay(master, &a.slave, &a.socket, &a.log, a.pid)?;
    Ok(Status(0))
}
