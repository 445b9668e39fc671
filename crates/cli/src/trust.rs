//! `berth trust`: the clients this host's daemon trusts over HTTPS (joined with tokens from
//! `berth remote token`), listed and removed here in-process.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::Status;

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// List the trusted clients.
    List(ListArgs),
    /// Stop trusting a client (by name or fingerprint); its next request is refused.
    Remove(RemoveArgs),
}

// Plain comments on deferred Args (see main.rs).
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The client's name or fingerprint (8 characters or more of it).
    pub client: String,
}

pub fn run(cmd: TrustCommand) -> Result<Status> {
    let dirs = crate::output::dirs()?;
    match cmd {
        TrustCommand::List(a) => {
            let all = berth_daemon::trust::list(&dirs)?;
            if a.json {
                crate::output::print_json(&all)?;
            } else {
                println!("{:<20} FINGERPRINT", "NAME");
                for c in all {
                    println!("{:<20} {}", c.name, c.fingerprint);
                }
            }
        }
        TrustCommand::Remove(a) => {
            let gone = berth_daemon::trust::remove(&dirs, &a.client)?;
            println!("{} ({}) is no longer trusted.", gone.name, gone.fingerprint);
        }
    }
    Ok(Status(0))
}
