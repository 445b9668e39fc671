//! Instance commands: launch, list, info, start, stop, restart, pause, resume, delete, console,
//! logs, ssh, exec. Arguments become API requests here (pure but for reading the files a user
//! names); the executor does the work, through [`crate::client::Client`].

use crate::client;
use crate::output::print_json;
use crate::Status;
use anyhow::Result;
use berth_api::{
    Blob, ContainerCreate, Event, EventKind, ExecExit, GuestKind, InstanceCreate, InstanceDelete,
    InstanceExec, InstanceStateChange, InstanceType, Network, StateAction, VmCreate,
};
use berth_disk::units::parse_size;
use berth_qemu::vm::Forward;
use clap::{Args, ValueEnum};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Auto,
    Full,
    Hybrid,
    Paravirt,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

fn forward_arg(s: &str) -> Result<Forward, String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid --forward {s:?}: expected HOST:GUEST ports"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("invalid port {p:?} in --forward {s:?}"))
    };
    Ok(Forward {
        host: port(h)?,
        guest: port(g)?,
    })
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

// `berth launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Base image (see `berth image list`).
    pub image: String,
    /// Instance name.
    pub name: String,
    /// vCPUs (default 2); for a container, its CPU time quota in CPUs (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory (default 1G); for a container, its memory limit.
    #[arg(long)]
    pub memory: Option<String>,
    /// A system container instead of a VM: the image's systemd on the host's kernel.
    #[arg(long)]
    pub container: bool,
    /// Container in a user namespace: root inside is an unprivileged ID range outside.
    #[arg(long)]
    pub unprivileged: bool,
    /// Container network: bridge (default: an address on berth0, NAT out), none or host.
    #[arg(long, value_parser = ["bridge", "none", "host"])]
    pub network: Option<String>,
    #[command(flatten)]
    pub limits: crate::container::LimitArgs,
    /// Disk size (the root file system grows to it at first boot).
    #[arg(long, value_parser = size_arg)]
    pub disk: Option<u64>,
    /// A #cloud-config merged with berth's own (yours wins on conflicts).
    #[arg(long = "cloud-init")]
    pub cloud_init: Option<PathBuf>,
    /// An extra public key for the `berth` user (berth's own key is always added).
    #[arg(long = "ssh-key")]
    pub ssh_key: Option<PathBuf>,
    /// Guest kind: full (emulated hardware), hybrid (q35 + virtio), paravirt (microvm); auto is
    /// paravirt for images berth built, hybrid for imported ones.
    #[arg(long, value_enum, default_value = "auto")]
    pub kind: KindArg,
    /// Accelerator; auto uses KVM only when a probe shows it can run guests.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Forward 127.0.0.1:HOST to the guest's port GUEST (repeatable).
    #[arg(long = "forward", value_parser = forward_arg)]
    pub forward: Vec<Forward>,
    /// Do not wait for SSH and cloud-init.
    #[arg(long = "no-wait")]
    pub no_wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value = "300")]
    pub timeout: u64,
    /// Disk cache mode (writeback; unsafe for throwaway guests).
    #[arg(long = "disk-cache", default_value = "writeback", hide = true)]
    pub disk_cache: String,
}

// `berth list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The remote to list (`host2:`; the default remote if none).
    pub remote: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

// `berth info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Instance.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

// An instance name.
#[derive(Debug, Args)]
pub struct NameArg {
    /// Instance.
    pub name: String,
}

// `berth start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Instance.
    pub name: String,
    /// Do not wait for SSH.
    #[arg(long = "no-wait")]
    pub no_wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value = "300")]
    pub timeout: u64,
}

// `berth stop` / `berth restart`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Instance.
    pub name: String,
    /// End QEMU at once instead of an ACPI power-down.
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for the guest to power off.
    #[arg(long, default_value = "120")]
    pub timeout: u64,
}

// `berth delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Instance.
    pub name: String,
    /// Delete even if running.
    #[arg(long)]
    pub force: bool,
}

// `berth logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Instance.
    pub name: String,
    /// Keep printing as the console writes.
    #[arg(short, long)]
    pub follow: bool,
}

// `berth ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// Instance.
    pub name: String,
    /// A command to run instead of a shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

// `berth exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Instance.
    pub name: String,
    /// Give the command a terminal (a pty in the guest) even when berth's input or output is no
    /// terminal. By default it gets one when both are.
    #[arg(short = 't', long, conflicts_with = "force_noninteractive")]
    pub force_interactive: bool,
    /// Give the command pipes, not a terminal, even when berth runs in one.
    #[arg(short = 'T', long)]
    pub force_noninteractive: bool,
    /// The command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// Whether the command gets a terminal, as `incus exec` decides it.
    fn interactive(&self) -> bool {
        self.force_interactive
            || (!self.force_noninteractive
                && std::io::stdin().is_terminal()
                && std::io::stdout().is_terminal())
    }
}

fn say(msg: &str) {
    crate::output::say!("{msg}");
}

/// A file's bytes for a request field, read as berth reads every file a user names.
fn read_input(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    Ok(berth_files::input::read_capped(path, cap, what)?)
}

impl LaunchArgs {
    /// The API request, with the user's files read and checked here, where their names are
    /// known (errors say FILE:LINE:COLUMN); the executor checks their content again.
    pub fn request(&self) -> Result<InstanceCreate> {
        let cloud_init = match &self.cloud_init {
            Some(p) => {
                let bytes = read_input(
                    p,
                    berth_files::input::USER_DATA_CAP,
                    "the user-data (--cloud-init)",
                )?;
                let blob = Blob::from_bytes(bytes);
                berth_host::requests::user_data(Some(&blob), &p.display().to_string())?;
                Some(blob)
            }
            None => None,
        };
        let forwards = self
            .forward
            .iter()
            .map(|f| berth_api::Forward {
                host: f.host,
                guest: f.guest,
            })
            .collect();
        let (vm, container) = if self.container {
            if self.ssh_key.is_some() {
                anyhow::bail!(
                    "--ssh-key is for VMs; get into a container with berth shell or exec"
                );
            }
            let limits = self
                .limits
                .assignments(self.memory.as_ref(), self.cpus.as_ref())?;
            let container = ContainerCreate {
                limits,
                network: match self.network.as_deref() {
                    None | Some("bridge") => Some(Network::Bridge),
                    Some("none") => Some(Network::None),
                    Some(_) => Some(Network::Host),
                },
                unprivileged: self.unprivileged,
            };
            (None, Some(container))
        } else {
            (Some(self.vm_request()?), None)
        };
        Ok(InstanceCreate {
            name: self.name.clone(),
            image: self.image.clone(),
            instance_type: if self.container {
                InstanceType::Container
            } else {
                InstanceType::Vm
            },
            disk: self.disk,
            cloud_init,
            forwards,
            wait_seconds: (!self.no_wait).then_some(self.timeout),
            vm,
            container,
        })
    }

    fn vm_request(&self) -> Result<VmCreate> {
        if let Some(flag) = self.limits.given().first() {
            anyhow::bail!(
                "--{flag} is a container limit; add --container, or leave it out for a VM"
            );
        }
        if self.unprivileged {
            anyhow::bail!("--unprivileged is for containers (add --container)");
        }
        if self.network.is_some() {
            anyhow::bail!(
                "--network is for containers (a VM is networked through its own passt, with --forward)"
            );
        }
        let cpus: u32 = match &self.cpus {
            None => berth_host::requests::VM_CPUS,
            Some(c) => c
                .parse()
                .map_err(|_| anyhow::anyhow!("--cpus {c:?}: a VM takes a whole number of vCPUs"))?,
        };
        let typed = self.memory.as_deref().unwrap_or("1G");
        let memory = size_arg(typed).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
        // Checked here, where the value the user typed is known: in whole MiB, `--memory 1` would
        // be reported as "0 MiB".
        if memory < berth_api::request::VM_MEMORY_MIN {
            anyhow::bail!(
                "--memory {typed} ({memory} bytes) is too small for a Debian guest (at least 256M)"
            );
        }
        let ssh_keys = match &self.ssh_key {
            Some(k) => {
                let text = String::from_utf8(read_input(
                    k,
                    berth_files::input::PUBLIC_KEY_CAP,
                    "the public key (--ssh-key)",
                )?)
                .map_err(|_| anyhow::anyhow!("{}: the public key is not text", k.display()))?;
                berth_host::requests::public_keys(std::slice::from_ref(&text), |_| {
                    k.display().to_string()
                })?;
                vec![text]
            }
            None => Vec::new(),
        };
        Ok(VmCreate {
            cpus: Some(cpus),
            memory: Some(memory),
            kind: match self.kind {
                KindArg::Auto => None,
                KindArg::Full => Some(GuestKind::Full),
                KindArg::Hybrid => Some(GuestKind::Hybrid),
                KindArg::Paravirt => Some(GuestKind::Paravirt),
            },
            accel: match self.accel {
                AccelArg::Auto => None,
                AccelArg::Kvm => Some(berth_api::Accel::Kvm),
                AccelArg::Tcg => Some(berth_api::Accel::Tcg),
            },
            ssh_keys,
            disk_cache: Some(self.disk_cache.clone()),
        })
    }
}

/// Progress lines on stderr: `NAME: MESSAGE (+SECONDS s)`.
fn progress_line(e: Event) {
    if e.kind == EventKind::Progress {
        say(&format!(
            "{}: {} (+{:.3} s)",
            e.instance,
            e.message,
            e.elapsed_ms as f64 / 1000.0
        ));
    }
}

pub fn launch(mut a: LaunchArgs) -> Result<Status> {
    // The guest is made whether or not anyone still reads what berth says about it.
    berth_container::direct::ignore_sigpipe();
    let shown = a.name.clone();
    let (client, name) = client::target(&a.name)?;
    // On another host the guest's forwards are on that host's loopback: only berth reaches it.
    let remote = name != shown;
    a.name = name;
    let r = a.request()?;
    let started = std::time::Instant::now();
    let i = client.create(&r, &mut progress_line)?;
    let waited = r.wait_seconds.is_some();
    let took = started.elapsed().as_secs_f64();
    match (&i.vm, &i.container) {
        (Some(vm), _) => {
            if waited {
                crate::output::tell!(
                    "{} is ready after {took:.0} s ({} guest, {}).",
                    i.name,
                    vm.kind,
                    vm.accel
                );
            } else {
                crate::output::tell!("{} is starting ({} guest, {}).", i.name, vm.kind, vm.accel);
            }
            if remote {
                crate::output::tell!("Connect with: berth ssh {shown}");
            } else {
                crate::output::tell!(
                    "Connect with: berth ssh {}   (or: ssh -i {} -p {} {}@127.0.0.1)",
                    i.name,
                    vm.ssh.key,
                    vm.ssh.port,
                    vm.ssh.user
                );
            }
        }
        _ => {
            if waited {
                crate::output::tell!("{} is ready after {took:.1} s (system container).", i.name);
            } else {
                crate::output::tell!("{} is starting (system container).", i.name);
            }
            crate::output::tell!("Get a shell with: berth shell {shown}");
        }
    }
    Ok(Status(0))
}

pub fn list(a: ListArgs) -> Result<Status> {
    let all = client::remote(a.remote.as_deref())?.list()?;
    if a.json {
        print_json(&all)?;
        return Ok(Status(0));
    }
    println!(
        "{:<20} {:<9} {:<9} {:<9} {:<5} {:<14} SSH",
        "NAME", "TYPE", "STATE", "KIND", "ACCEL", "IMAGE"
    );
    for i in &all {
        let (kind, accel, ssh) = match &i.vm {
            Some(v) => (
                v.kind.to_string(),
                v.accel.clone(),
                format!("127.0.0.1:{}", v.ssh.port),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<20} {:<9} {:<9} {:<9} {:<5} {:<14} {ssh}",
            i.name,
            i.instance_type.to_string(),
            i.state.state.to_string(),
            kind,
            accel,
            i.image
        );
    }
    Ok(Status(0))
}

pub fn info(a: InfoArgs) -> Result<Status> {
    let (client, name) = client::target(&a.name)?;
    let i = client.info(&name)?;
    if a.json {
        print_json(&i)?;
    } else {
        crate::render::info(&i);
    }
    Ok(Status(0))
}

fn change(
    name: &str,
    action: StateAction,
    force: bool,
    timeout: Option<u64>,
    wait: Option<u64>,
) -> Result<()> {
    let r = InstanceStateChange {
        action,
        force,
        timeout_seconds: timeout,
        wait_seconds: wait,
    };
    let (client, name) = client::target(name)?;
    client.change_state(&name, &r, &mut |e| {
        if e.kind == EventKind::Progress {
            say(&format!("{}: {}", e.instance, e.message))
        }
    })?;
    Ok(())
}

pub fn start(a: StartArgs) -> Result<Status> {
    change(
        &a.name,
        StateAction::Start,
        false,
        None,
        (!a.no_wait).then_some(a.timeout),
    )?;
    println!("Started {}.", a.name);
    Ok(Status(0))
}

pub fn stop(a: StopArgs) -> Result<Status> {
    change(&a.name, StateAction::Stop, a.force, Some(a.timeout), None)?;
    println!("Stopped {}.", a.name);
    Ok(Status(0))
}

pub fn restart(a: StopArgs) -> Result<Status> {
    change(
        &a.name,
        StateAction::Restart,
        a.force,
        Some(a.timeout),
        None,
    )?;
    println!("Restarted {}.", a.name);
    Ok(Status(0))
}

pub fn pause(a: NameArg, p: bool) -> Result<Status> {
    let action = if p {
        StateAction::Pause
    } else {
        StateAction::Resume
    };
    change(&a.name, action, false, None, None)?;
    println!("{} {}.", if p { "Paused" } else { "Resumed" }, a.name);
    Ok(Status(0))
}

pub fn delete(a: DeleteArgs) -> Result<Status> {
    let (client, name) = client::target(&a.name)?;
    client.delete(&name, &InstanceDelete { force: a.force })?;
    println!("Deleted {}.", a.name);
    Ok(Status(0))
}

pub fn logs(a: LogsArgs) -> Result<Status> {
    let (client, name) = client::target(&a.name)?;
    let mut out = std::io::stdout().lock();
    let mut offset = 0;
    loop {
        let chunk = client.console_log(&name, offset)?;
        let more = chunk.next_offset != offset;
        offset = chunk.next_offset;
        out.write_all(&chunk.data)?;
        if more {
            continue;
        }
        out.flush()?;
        if !a.follow {
            return Ok(Status(0));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The exit status of a command run in an instance.
fn exec_status(e: ExecExit) -> Status {
    crate::exit::for_command(e, None)
}

/// `berth shell NAME`: a login shell in a container, or an SSH session to a VM.
pub fn shell(a: NameArg) -> Result<Status> {
    let r = InstanceExec {
        command: Vec::new(),
        interactive: std::io::stdin().is_terminal(),
    };
    let (client, name) = client::target(&a.name)?;
    Ok(exec_status(client.exec(&name, &r)?))
}

/// `berth ssh NAME [-- CMD]`: SSH to a VM (a session, or the command).
pub fn ssh(a: SshArgs) -> Result<Status> {
    let (client, name) = client::target(&a.name)?;
    if client.type_of(&name)? != InstanceType::Vm {
        anyhow::bail!(
            "{} is a container, not a VM: berth shell {} or berth exec {} -- CMD reach it",
            a.name,
            a.name,
            a.name
        );
    }
    let r = InstanceExec {
        interactive: a.command.is_empty() && std::io::stdin().is_terminal(),
        command: a.command,
    };
    Ok(exec_status(client.exec(&name, &r)?))
}

pub fn exec(a: ExecArgs) -> Result<Status> {
    let r = InstanceExec {
        interactive: a.interactive(),
        command: a.command,
    };
    let (client, name) = client::target(&a.name)?;
    Ok(exec_status(client.exec(&name, &r)?))
}

pub fn console(a: NameArg) -> Result<Status> {
    let crate::client::Console {
        output: mut reader,
        input: mut writer,
    } = {
        let (client, name) = client::target(&a.name)?;
        client.console(&name)?
    };
    let raw = berth_client::RawMode::enter(true);
    eprint!("Connected to {}'s console. Detach with Ctrl-].\r\n", a.name);
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = stdin.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == 0x1d) {
            let _ = writer.write_all(&buf[..i]);
            break;
        }
        if writer.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    drop(raw);
    eprintln!("\r\nDetached from {}.", a.name);
    Ok(Status(0))
}

// `berth nic-relay` (internal): a VM's NIC between QEMU and passt; see `berth_host::nic`.
#[derive(Debug, Args)]
pub struct NicRelayArgs {
    /// The socket QEMU connects to (its listener arrives as standard input).
    #[arg(long)]
    pub socket: std::path::PathBuf,
    /// passt's socket.
    #[arg(long)]
    pub passt: std::path::PathBuf,
    /// Where the counts go.
    #[arg(long)]
    pub counters: std::path::PathBuf,
}

pub fn nic_relay(a: NicRelayArgs) -> Result<Status> {
    use anyhow::Context;
    use std::os::fd::AsFd;
    let listener = std::io::stdin().as_fd().try_clone_to_owned()?;
    let listener = std::os::unix::net::UnixListener::from(listener);
    berth_host::nic::relay(listener, &a.passt, &a.counters)
        .with_context(|| format!("relaying {} to {}", a.socket.display(), a.passt.display()))?;
    Ok(Status(0))
}
