//! `berth`: the command line. Parses arguments into typed requests (clap), hands them to the
//! library crates, and prints results as text or JSON. No image or guest logic lives here.

mod client;
mod container;
mod copy;
mod disk;
mod docs;
mod exit;
mod host;
mod image;
mod key;
mod machine_id;
mod monitor;
mod moves;
mod output;
mod remote;
mod render;
mod seed;
mod trust;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::process::ExitCode;

/// berth runs virtual machines and system containers side by side on one Linux host.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Each subcommand's arguments are built only when it is the one chosen (`defer`): building all
/// of them took 0.25 ms of every `berth run`. A deferred `Args` struct's doc comment would then
/// replace the variant's help text, so those structs carry plain comments (see the test below).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
enum Command {
    /// Create, inspect, check, convert and snapshot disk images (qcow2 and raw).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Launch a VM (or with --container a system container) from a base image, provisioned by
    /// cloud-init, and wait until it is ready.
    Launch(vm::LaunchArgs),
    /// Run a command in a new container made from a base image; its exit status is berth's.
    Run(container::RunArgs),
    /// List instances.
    List(vm::ListArgs),
    /// Show one instance.
    Info(vm::InfoArgs),
    /// Start a stopped instance.
    Start(vm::StartArgs),
    /// Stop an instance (ACPI power-down; --force ends it at once).
    Stop(vm::StopArgs),
    /// Stop, then start.
    Restart(vm::StopArgs),
    /// Pause a running instance's vCPUs.
    Pause(vm::NameArg),
    /// Resume a paused instance.
    Resume(vm::NameArg),
    /// Delete an instance (a running one only with --force).
    Delete(vm::DeleteArgs),
    /// Copy a stopped VM to this or another host, with a new machine-id (its image goes too,
    /// when the target lacks it).
    Copy(copy::CopyArgs),
    /// Move a stopped VM to another host, keeping its machine-id, MAC and SSH keys (its image
    /// goes too, when the target lacks it).
    Move(moves::MoveArgs),
    /// Attach to the serial console (detach with Ctrl-]).
    Console(vm::NameArg),
    /// Show the console log.
    Logs(vm::LogsArgs),
    /// Open an SSH session, or run a command over SSH.
    Ssh(vm::SshArgs),
    /// Internal: hold a system container's console for `berth console` and `berth logs`.
    #[command(hide = true)]
    ConsoleRelay(container::RelayArgs),
    /// Internal: relay a VM's NIC between QEMU and passt, counting its bytes.
    #[command(hide = true)]
    NicRelay(vm::NicRelayArgs),
    /// Change a container's limits, at once if it runs (KEY=VALUE, KEY=none lifts one).
    Set(container::SetArgs),
    /// A login shell in a container (an SSH session for a VM).
    Shell(vm::NameArg),
    /// Run a command in the instance; its exit status is berth's.
    Exec(vm::ExecArgs),
    /// Base images: build Debian guests with debootstrap, list, remove.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// What this host offers for VMs, and the accelerator berth will use.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// cloud-init NoCloud seeds and user-data validation.
    #[command(subcommand)]
    Seed(seed::SeedCommand),
    /// SSH key pairs for guests, and authorized_keys edits (as ssh-keygen and ssh-copy-id).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// systemd/D-Bus machine-ids: new, validate, read from a tree or image, ensure, audit.
    #[command(subcommand, name = "machine-id")]
    MachineId(machine_id::MachineIdCommand),
    /// Remote hosts: berth daemons this client manages (REMOTE:NAME names an instance there).
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Follow a daemon's events (operations, lifecycle) as they happen.
    Monitor(monitor::MonitorArgs),
    /// Print shell completions (bash, zsh, fish).
    Completion(docs::CompletionArgs),
    /// Write man pages for berth and every subcommand to a folder.
    Man(docs::ManArgs),
    /// Clients this host's daemon trusts over HTTPS: list, remove.
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// Serve this host's instances as REST under /1.0 on DATA/berth.sock (mode 0660), and over
    /// HTTPS with --listen, until SIGTERM or SIGINT; guests keep running when it stops.
    Daemon(DaemonArgs),
    /// Internal: perform one of the daemon's changing requests, single-threaded (see
    /// `berth_daemon::worker`).
    #[command(hide = true, name = "daemon-worker")]
    DaemonWorker,
}

// `berth daemon`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Also serve HTTPS (TLS 1.3, trusted clients only) on ADDR:PORT.
    #[arg(long)]
    pub listen: Option<String>,
}

/// Exit status of a command that succeeded but has something to say (check, compare).
#[derive(Debug)]
pub struct Status(pub u8);

fn main() -> ExitCode {
    // `berth list | head` ends quietly, as Unix tools do, instead of panicking on EPIPE.
    sigpipe::reset();
    // libcontainer warns about every v1 controller this kernel lacks (hugetlb, net_cls...);
    // imago logs internal errors on the way out of a failed write ("Refcount block dropped
    // while modified" when the disk fills), whose cause berth reports itself.
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,libcgroups=error,libcontainer=error,imago=off")
    });
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .without_time()
                // A log line nobody can read any more (`berth run ... 2>&1 | head`) is
                // dropped; the default reports that with eprintln!, which panics on the same
                // closed pipe.
                .log_internal_errors(false)
                .with_filter(filter),
        )
        // The daemon's log as events for `berth monitor` (nothing while nobody listens).
        .with(berth_daemon::logging::layer())
        .init();
    let cli = Cli::parse();
    // Commands that write files for the user remove their temporaries when interrupted (the
    // others handle signals their own way: `run` forwards them to its command).
    if matches!(
        cli.command,
        Command::Disk(_) | Command::Key(_) | Command::Seed(_)
    ) {
        if let Err(e) = berth_files::output::remove_on_signals() {
            tracing::warn!(
                "cannot watch for signals, an interrupted write may leave its temporary file: {e}"
            );
        }
    }
    // One exit-status scheme for every command: see exit.rs and the README.
    let result: Result<Status> = match cli.command {
        Command::Disk(cmd) => disk::run(cmd),
        Command::Key(cmd) => key::run(cmd),
        Command::Host(cmd) => host::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Launch(a) => vm::launch(a),
        Command::Run(a) => container::run(a),
        Command::List(a) => vm::list(a),
        Command::Info(a) => vm::info(a),
        Command::Start(a) => vm::start(a),
        Command::Stop(a) => vm::stop(a),
        Command::Restart(a) => vm::restart(a),
        Command::Pause(a) => vm::pause(a, true),
        Command::Resume(a) => vm::pause(a, false),
        Command::Delete(a) => vm::delete(a),
        Command::Copy(a) => copy::run(a),
        Command::Move(a) => moves::run(a),
        Command::Console(a) => vm::console(a),
        Command::Logs(a) => vm::logs(a),
        Command::Ssh(a) => vm::ssh(a),
        Command::Exec(a) => vm::exec(a),
        Command::Shell(a) => vm::shell(a),
        Command::Set(a) => container::set(a),
        Command::ConsoleRelay(a) => container::relay(a),
        Command::NicRelay(a) => vm::nic_relay(a),
        Command::Seed(cmd) => seed::run(cmd),
        Command::MachineId(cmd) => machine_id::run(cmd),
        Command::Remote(cmd) => remote::run(cmd),
        Command::Trust(cmd) => trust::run(cmd),
        Command::Completion(a) => docs::completion(a),
        Command::Monitor(a) => monitor::run(a),
        Command::Man(a) => docs::man(a),
        Command::DaemonWorker => output::dirs().and_then(|d| {
            // A client gone mid-answer is the operation's to see as an error, not its end.
            berth_container::direct::ignore_sigpipe();
            berth_daemon::worker::main(&d)?;
            Ok(Status(0))
        }),
        Command::Daemon(a) => output::dirs().and_then(|d| {
            // A connection its peer dropped (a client killed, a link cut) fails that request;
            // with SIGPIPE's default it would end the daemon.
            berth_container::direct::ignore_sigpipe();
            berth_daemon::serve(&d, a.listen.as_deref())?;
            Ok(Status(0))
        }),
    };
    match result {
        Ok(Status(code)) => ExitCode::from(code),
        Err(e) => {
            // Not eprintln!, which panics when nobody reads stderr any more.
            let _ = writeln!(std::io::stderr(), "berth: error: {}", exit::message(&e));
            ExitCode::from(exit::for_error(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command};
    use clap::{CommandFactory, Subcommand};

    /// The help a subcommand shows once built equals what its parent lists for it: a doc comment
    /// on a deferred `Args` struct (applied at build time) would silently replace it.
    #[test]
    fn deferred_subcommands_keep_their_help() {
        let mut built = Cli::command();
        built.build();
        built.clone().debug_assert();
        let text = |c: &clap::Command| {
            (
                c.get_about().map(|a| a.to_string()),
                c.get_long_about().map(|a| a.to_string()),
            )
        };
        // Each level as its parent lists it (arguments not built yet), and the built tree.
        let levels = [
            (
                vec![],
                Command::augment_subcommands(clap::Command::new("berth")),
            ),
            (
                vec!["disk"],
                crate::disk::DiskCommand::augment_subcommands(clap::Command::new("disk")),
            ),
            (
                vec!["disk", "snapshot"],
                crate::disk::SnapshotCommand::augment_subcommands(clap::Command::new("snapshot")),
            ),
            (
                vec!["image"],
                crate::image::ImageCommand::augment_subcommands(clap::Command::new("image")),
            ),
            (
                vec!["host"],
                crate::host::HostCommand::augment_subcommands(clap::Command::new("host")),
            ),
            (
                vec!["seed"],
                crate::seed::SeedCommand::augment_subcommands(clap::Command::new("seed")),
            ),
            (
                vec!["key"],
                crate::key::KeyCommand::augment_subcommands(clap::Command::new("key")),
            ),
            (
                vec!["remote"],
                crate::remote::RemoteCommand::augment_subcommands(clap::Command::new("remote")),
            ),
            (
                vec!["trust"],
                crate::trust::TrustCommand::augment_subcommands(clap::Command::new("trust")),
            ),
            (
                vec!["machine-id"],
                crate::machine_id::MachineIdCommand::augment_subcommands(clap::Command::new(
                    "machine-id",
                )),
            ),
        ];
        for (path, listed) in levels {
            let level = path.iter().fold(&built, |c, n| {
                c.find_subcommand(n)
                    .unwrap_or_else(|| panic!("no subcommand {n}"))
            });
            for sub in listed.get_subcommands() {
                let name = sub.get_name();
                let b = level.find_subcommand(name).expect("listed, so built");
                assert_eq!(
                    text(sub),
                    text(b),
                    "help of `{}` changed once built",
                    ["berth"]
                        .iter()
                        .chain(&path)
                        .chain([&name])
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
    }
}
