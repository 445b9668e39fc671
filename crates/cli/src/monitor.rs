//! `berth monitor [REMOTE:]`: a daemon's events as they happen (operations, lifecycle), one
//! line each, or JSON lines with --json. Events exist only where a daemon runs: for this host
//! (remote `local`), the daemon on its data dir's socket.

use anyhow::{bail, Result};
use berth_api::DaemonEvent;
use clap::Args;

use crate::remote::Target;
use crate::Status;

// `berth monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The remote (`host2:`; the default remote if none).
    pub remote: Option<String>,
    /// Only events of this type (operation, lifecycle, logging); may be given more than once.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Print each event as a JSON line.
    #[arg(long)]
    pub json: bool,
}

/// One line for an event.
fn line(ev: &DaemonEvent) -> String {
    match ev {
        DaemonEvent::Operation {
            timestamp,
            operation,
        } => format!(
            "{timestamp} operation {} {:?}: {}{}",
            operation.id,
            operation.status,
            operation.description,
            operation
                .events
                .last()
                .map(|e| format!(" ({})", e.message))
                .unwrap_or_default()
        ),
        DaemonEvent::Lifecycle { timestamp, event } => {
            format!(
                "{timestamp} lifecycle {}: {}",
                event.instance, event.message
            )
        }
        DaemonEvent::Logging {
            timestamp,
            level,
            target,
            message,
        } => format!("{timestamp} logging {level} {target}: {message}"),
    }
}

pub fn run(a: MonitorArgs) -> Result<Status> {
    let remotes = crate::remote::load()?;
    let target = match a.remote.as_deref() {
        None => remotes.target(&remotes.default)?,
        Some(r) => match r.strip_suffix(':') {
            Some(n) => remotes.target(n)?,
            None => bail!("{r:?} is not a remote (write it REMOTE:, as in host2:)"),
        },
    };
    let endpoint = match target {
        Target::Daemon(_, e) => e,
        Target::Local => {
            let sock = berth_daemon::socket_path(&crate::output::dirs()?);
            if !sock.exists() {
                bail!(
                    "events come from a daemon, and none serves this host ({} is not there): \
                     start `berth daemon`",
                    sock.display()
                );
            }
            berth_client::Endpoint::Unix(sock)
        }
    };
    let client = berth_client::Remote::new(endpoint)?;
    client.monitor(&a.types, &mut |ev| {
        use std::io::Write;
        let text = if a.json {
            serde_json::to_string(&ev).unwrap_or_default()
        } else {
            line(&ev)
        };
        let mut out = std::io::stdout();
        // A reader that went away ends the monitor.
        writeln!(out, "{text}").and_then(|_| out.flush()).is_ok()
    })?;
    Ok(Status(0))
}
