//! Instance commands: launch, list, info, start, stop, restart, pause, resume, delete, console,
//! logs, ssh, exec. Thin: parsing here, the work in `berth_host::vms`.

use crate::output::{dirs, print_json};
use crate::Status;
use anyhow::{Context, Result};
use berth_disk::units::{human_size, parse_size};
use berth_host::vms::{LaunchOptions, VmState, Vms};
use berth_qemu::host::AccelRequest;
use berth_qemu::vm::{Forward, Kind};
use clap::{Args, ValueEnum};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
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
    /// The command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn vms() -> Result<Vms> {
    Ok(Vms::open(&dirs()?)?)
}

fn say(msg: &str) {
    eprintln!("{msg}");
}

pub fn launch(a: LaunchArgs) -> Result<Status> {
    if a.container {
        return crate::container::launch(a);
    }
    if let Some(flag) = a.limits.given().first() {
        anyhow::bail!("--{flag} is a container limit; add --container, or leave it out for a VM");
    }
    if a.unprivileged {
        anyhow::bail!("--unprivileged is for containers (add --container)");
    }
    if a.network.is_some() {
        anyhow::bail!(
            "--network is for containers (a VM is networked through its own passt, with --forward)"
        );
    }
    let cpus: u32 = match &a.cpus {
        None => 2,
        Some(c) => c
            .parse()
            .map_err(|_| anyhow::anyhow!("--cpus {c:?}: a VM takes a whole number of vCPUs"))?,
    };
    let typed = a.memory.as_deref().unwrap_or("1G");
    let memory = size_arg(typed).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    // Checked here, where the value the user typed is known: in whole MiB, `--memory 1` would
    // be reported as "0 MiB".
    if memory < 256 << 20 {
        anyhow::bail!(
            "--memory {typed} ({memory} bytes) is too small for a Debian guest (at least 256M)"
        );
    }
    let o = LaunchOptions {
        image: a.image,
        name: a.name.clone(),
        cpus,
        memory_mib: memory / (1 << 20),
        disk: a.disk,
        cloud_init: a.cloud_init,
        ssh_key: a.ssh_key,
        kind: match a.kind {
            KindArg::Auto => None,
            KindArg::Full => Some(Kind::Full),
            KindArg::Hybrid => Some(Kind::Hybrid),
            KindArg::Paravirt => Some(Kind::Paravirt),
        },
        accel: match a.accel {
            AccelArg::Auto => AccelRequest::Auto,
            AccelArg::Kvm => AccelRequest::Kvm,
            AccelArg::Tcg => AccelRequest::Tcg,
        },
        forwards: a.forward,
        disk_cache: a.disk_cache,
    };
    let wait = (!a.no_wait).then(|| Duration::from_secs(a.timeout));
    let started = std::time::Instant::now();
    let rec = vms()?.launch(&o, wait, &mut |m| {
        say(&format!(
            "{}: {m} (+{:.3} s)",
            o.name,
            started.elapsed().as_secs_f64()
        ))
    })?;
    if !a.no_wait {
        println!(
            "{} is ready after {:.0} s ({} guest, {}).",
            o.name,
            started.elapsed().as_secs_f64(),
            rec.spec.kind,
            rec.spec.accel
        );
    } else {
        println!(
            "{} is starting ({} guest, {}).",
            o.name, rec.spec.kind, rec.spec.accel
        );
    }
    println!(
        "Connect with: berth ssh {}   (or: ssh -i {} -p {} {}@127.0.0.1)",
        o.name,
        rec.ssh_key.display(),
        rec.ssh_port,
        rec.ssh_user
    );
    Ok(Status(0))
}

pub fn list(a: ListArgs) -> Result<Status> {
    let all = vms()?.list()?;
    let ctl = crate::container::containers()?;
    let cts = ctl.list()?;
    let ct_state = |running: bool| if running { "running" } else { "stopped" };
    if a.json {
        let mut v: Vec<serde_json::Value> = all
            .iter()
            .map(|(row, rec, st)| serde_json::json!({"name": row.name, "type": "vm", "state": st, "kind": rec.spec.kind, "accel": rec.spec.accel, "image": rec.image, "ssh_port": rec.ssh_port, "machine_id": rec.machine_id}))
            .collect();
        v.extend(cts.iter().map(|(row, rec, running)| serde_json::json!({"name": row.name, "type": "container", "state": {"state": ct_state(*running), "reason": ctl.reason(row, *running)}, "image": rec.image, "command": rec.args, "limits": rec.limits})));
        print_json(&v)?;
    } else {
        println!(
            "{:<20} {:<9} {:<9} {:<9} {:<5} {:<14} SSH",
            "NAME", "TYPE", "STATE", "KIND", "ACCEL", "IMAGE"
        );
        for (row, rec, st) in &all {
            println!(
                "{:<20} {:<9} {:<9} {:<9} {:<5} {:<14} 127.0.0.1:{}",
                row.name,
                "vm",
                st.to_string(),
                rec.spec.kind.to_string(),
                rec.spec.accel.to_string(),
                rec.image,
                rec.ssh_port
            );
        }
        for (row, rec, running) in &cts {
            println!(
                "{:<20} {:<9} {:<9} {:<9} {:<5} {:<14} -",
                row.name,
                "container",
                ct_state(*running),
                "-",
                "-",
                rec.image
            );
        }
    }
    Ok(Status(0))
}

pub fn info(a: InfoArgs) -> Result<Status> {
    if let Ok(found) = crate::container::containers()?.get(&a.name) {
        return crate::container::info(found, a.json);
    }
    let v = vms()?;
    let (row, rec) = v.get(&a.name)?;
    let st = v.state(&row, &rec)?;
    let uptime = berth_host::vms::qemu_pid(&rec)
        .and_then(|pid| std::fs::metadata(format!("/proc/{pid}")).ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs());
    let usage = v.disk_usage(&rec);
    if a.json {
        print_json(&serde_json::json!({
            "name": row.name, "type": "vm", "state": st, "kind": rec.spec.kind, "accel": rec.spec.accel,
            "cpus": rec.spec.cpus, "memory_mib": rec.spec.memory_mib, "disk_size": rec.disk_size, "disk_usage": usage,
            "forwards": rec.spec.forwards, "machine_id": rec.machine_id, "image": rec.image, "uptime_seconds": uptime,
            "ssh": {"user": rec.ssh_user, "port": rec.ssh_port, "key": rec.ssh_key},
        }))?;
    } else {
        println!("Name:        {}", row.name);
        match &st {
            VmState::Stopped { reason } => println!("State:       stopped ({reason})"),
            other => println!("State:       {other}"),
        }
        println!("Kind:        {} ({})", rec.spec.kind, rec.spec.accel);
        println!("CPUs:        {}", rec.spec.cpus);
        println!("Memory:      {} MiB", rec.spec.memory_mib);
        println!(
            "Disk:        {} used of {}",
            human_size(usage),
            human_size(rec.disk_size)
        );
        println!("Image:       {}", rec.image);
        println!("Machine-id:  {}", rec.machine_id);
        for f in &rec.spec.forwards {
            println!("Forward:     127.0.0.1:{} -> {}", f.host, f.guest);
        }
        if let Some(u) = uptime {
            println!("Uptime:      {u} s");
        }
    }
    Ok(Status(0))
}

pub fn start(a: StartArgs) -> Result<Status> {
    let wait = (!a.no_wait).then(|| Duration::from_secs(a.timeout));
    if crate::container::is_container(&a.name) {
        return crate::container::start(&a.name, wait);
    }
    vms()?.start(&a.name, wait, &mut |m| say(&format!("{}: {m}", a.name)))?;
    println!("Started {}.", a.name);
    Ok(Status(0))
}

pub fn stop(a: StopArgs) -> Result<Status> {
    if crate::container::is_container(&a.name) {
        crate::container::containers()?.stop(&a.name, a.force, Duration::from_secs(a.timeout))?;
        println!("Stopped {}.", a.name);
        return Ok(Status(0));
    }
    vms()?.stop(&a.name, a.force, Duration::from_secs(a.timeout))?;
    println!("Stopped {}.", a.name);
    Ok(Status(0))
}

pub fn restart(a: StopArgs) -> Result<Status> {
    if crate::container::is_container(&a.name) {
        crate::container::containers()?.stop(&a.name, a.force, Duration::from_secs(a.timeout))?;
        crate::container::start(&a.name, Some(Duration::from_secs(300)))?;
        return Ok(Status(0));
    }
    let v = vms()?;
    v.stop(&a.name, a.force, Duration::from_secs(a.timeout))?;
    v.start(&a.name, Some(Duration::from_secs(300)), &mut |m| {
        say(&format!("{}: {m}", a.name))
    })?;
    println!("Restarted {}.", a.name);
    Ok(Status(0))
}

pub fn pause(a: NameArg, p: bool) -> Result<Status> {
    vms()?.pause(&a.name, p)?;
    println!("{} {}.", if p { "Paused" } else { "Resumed" }, a.name);
    Ok(Status(0))
}

pub fn delete(a: DeleteArgs) -> Result<Status> {
    let cts = crate::container::containers()?;
    if cts.get(&a.name).is_ok() {
        cts.delete(&a.name, a.force)?;
    } else {
        vms()?.delete(&a.name, a.force)?;
    }
    println!("Deleted {}.", a.name);
    Ok(Status(0))
}

pub fn logs(a: LogsArgs) -> Result<Status> {
    let path = if crate::container::is_container(&a.name) {
        crate::container::containers()?.console_log(&a.name)?
    } else {
        vms()?.console_log(&a.name)?
    };
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !a.follow {
            return Ok(Status(0));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `berth shell NAME`: a login shell in a container, or an SSH session to a VM.
pub fn shell(a: NameArg) -> Result<Status> {
    if crate::container::is_container(&a.name) {
        let exit =
            crate::container::containers()?.exec(&a.name, vec!["/bin/bash".into(), "-l".into()])?;
        return Ok(crate::exit::for_command(exit, None));
    }
    ssh(SshArgs {
        name: a.name,
        command: Vec::new(),
    })
}

pub fn ssh(a: SshArgs) -> Result<Status> {
    let mut c = vms()?.ssh_command(&a.name)?;
    if a.command.is_empty() && std::io::stdin().is_terminal() {
        c.arg("-t");
    }
    c.args(&a.command);
    let st = c.status().context("running ssh")?;
    Ok(ssh_status(st))
}

pub fn exec(a: ExecArgs) -> Result<Status> {
    if crate::container::is_container(&a.name) {
        let exit = crate::container::containers()?.exec(&a.name, a.command)?;
        return Ok(crate::exit::for_command(exit, None));
    }
    let mut c = vms()?.ssh_command(&a.name)?;
    c.arg("--");
    c.args(a.command.iter().map(|s| shell_quote(s)));
    let st = c.status().context("running ssh")?;
    Ok(ssh_status(st))
}

/// ssh's status is the command's (255 when ssh itself failed); 128 + N when signal N ended ssh.
fn ssh_status(st: std::process::ExitStatus) -> Status {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => Status(c.clamp(0, 255) as u8),
        (None, Some(sig)) => Status((128 + sig).clamp(0, 255) as u8),
        (None, None) => Status(crate::exit::FAILED),
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub fn console(a: NameArg) -> Result<Status> {
    let sock = if crate::container::is_container(&a.name) {
        let c = crate::container::containers()?;
        let path = c.console_socket(&a.name)?;
        // The relay may take a moment to listen after a start.
        for _ in 0..50 {
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        path
    } else {
        vms()?.console_socket(&a.name)?
    };
    let stream = std::os::unix::net::UnixStream::connect(&sock).with_context(|| {
        format!(
            "{} is not running (no console at {})",
            a.name,
            sock.display()
        )
    })?;
    let tty = std::io::stdin().is_terminal();
    let saved = if tty {
        let stdin = rustix::stdio::stdin();
        let old = rustix::termios::tcgetattr(stdin).ok();
        if let Some(o) = &old {
            let mut raw = o.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw);
        }
        old
    } else {
        None
    };
    eprint!("Connected to {}'s console. Detach with Ctrl-].\r\n", a.name);
    let mut reader = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut writer = stream;
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
    if let Some(o) = saved {
        let _ = rustix::termios::tcsetattr(
            rustix::stdio::stdin(),
            rustix::termios::OptionalActions::Now,
            &o,
        );
    }
    eprintln!("\r\nDetached from {}.", a.name);
    Ok(Status(0))
}
