//! Remotes, as Incus users know them: named daemons this client reaches, a default one, and
//! `REMOTE:NAME` to name an instance on one of them. `local` is this host in-process (no daemon
//! needed) and is always there. The list lives in `remotes.json` in the client's config folder
//! (`BERTH_CONF`, else `$XDG_CONFIG_HOME/berth`, else `~/.config/berth`).

use anyhow::{bail, Context, Result};
use berth_client::Endpoint;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Status;

/// The in-process remote's name.
pub const LOCAL: &str = "local";

/// At most this many bytes of `remotes.json` are read.
const CONFIG_MAX: u64 = 1 << 20;

/// One remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteEntry {
    /// Where its daemon listens (`unix:///var/lib/berth/berth.sock`).
    pub address: String,
}

/// The client's remotes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remotes {
    /// The remote a name without `REMOTE:` is on.
    pub default: String,
    /// Every remote but `local`, by name.
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteEntry>,
}

impl Default for Remotes {
    fn default() -> Remotes {
        Remotes {
            default: LOCAL.into(),
            remotes: BTreeMap::new(),
        }
    }
}

/// Where a remote is reached: this process, or a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// In-process.
    Local,
    /// A daemon (the remote's name, its endpoint).
    Daemon(String, Endpoint),
}

impl Remotes {
    /// The remote named `name`.
    pub fn target(&self, name: &str) -> Result<Target> {
        if name == LOCAL {
            return Ok(Target::Local);
        }
        match self.remotes.get(name) {
            Some(r) => Ok(Target::Daemon(name.to_string(), Endpoint::parse(&r.address)?)),
            None => bail!(
                "no remote named {name:?} (see `berth remote list`; add one with `berth remote add`)"
            ),
        }
    }

    /// `REMOTE:NAME` or `NAME` (on the default remote): the remote and the instance name.
    pub fn split<'a>(&self, raw: &'a str) -> Result<(Target, &'a str)> {
        match raw.split_once(':') {
            Some((remote, name)) => Ok((self.target(remote)?, name)),
            None => Ok((self.target(&self.default)?, raw)),
        }
    }
}

/// The client's config folder.
pub fn conf_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("BERTH_CONF").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("berth"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config/berth")),
        None => bail!("no config folder for remotes: set BERTH_CONF, XDG_CONFIG_HOME or HOME"),
    }
}

fn config_path() -> Result<PathBuf> {
    Ok(conf_dir()?.join("remotes.json"))
}

/// The remotes in `path` (none yet: only `local`).
pub fn load_from(path: &Path) -> Result<Remotes> {
    let text = match berth_files::input::read_capped(path, CONFIG_MAX, "the remotes file") {
        Ok(t) => t,
        Err(e) if !path.exists() => {
            tracing::debug!("no remotes file {} ({e})", path.display());
            return Ok(Remotes::default());
        }
        Err(e) => return Err(e.into()),
    };
    let r: Remotes = serde_json::from_slice(&text)
        .with_context(|| format!("the remotes file {} is not valid", path.display()))?;
    Ok(r)
}

/// This client's remotes.
pub fn load() -> Result<Remotes> {
    load_from(&config_path()?)
}

fn save(r: &Remotes) -> Result<()> {
    let path = config_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_vec_pretty(r)?;
    text.push(b'\n');
    berth_files::output::write_atomic(&path, &text, 0o600, "the remotes file")?;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Add a remote: a berth daemon reached at ADDRESS (unix:///PATH/berth.sock).
    Add(AddArgs),
    /// List the remotes (the default one is marked).
    List(ListArgs),
    /// Remove a remote.
    Remove(NameArgs),
    /// Make a remote the default one (names without REMOTE: are on it).
    Switch(NameArgs),
    /// Print the default remote's name.
    GetDefault,
}

// Plain comments on deferred Args (see main.rs).
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The remote's name.
    pub name: String,
    /// Where its daemon listens.
    pub address: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The remote's name.
    pub name: String,
}

/// A remote's name: as an instance name is, so that `REMOTE:NAME` parses one way.
fn check_remote_name(name: &str) -> Result<()> {
    berth_api::check_name(name).map_err(|e| {
        anyhow::anyhow!(
            "invalid remote name {name:?}: {}",
            e.message.trim_start_matches("invalid name ")
        )
    })?;
    if name == LOCAL {
        bail!("{LOCAL:?} is this host in-process and cannot be replaced or removed");
    }
    Ok(())
}

pub fn run(cmd: RemoteCommand) -> Result<Status> {
    let mut r = load()?;
    match cmd {
        RemoteCommand::Add(a) => {
            check_remote_name(&a.name)?;
            if r.remotes.contains_key(&a.name) {
                bail!("a remote named {:?} exists (remove it first)", a.name);
            }
            let endpoint = Endpoint::parse(&a.address)?;
            // A remote is added only once it answers, so a typo is found now.
            let server = berth_client::Remote::new(endpoint.clone())?
                .server()
                .with_context(|| format!("adding remote {}", a.name))?;
            r.remotes.insert(
                a.name.clone(),
                RemoteEntry {
                    address: a.address.clone(),
                },
            );
            save(&r)?;
            println!(
                "Added remote {} (berth {} on {}).",
                a.name, server.server_version, server.hostname
            );
        }
        RemoteCommand::List(a) => {
            let mut rows = vec![(LOCAL.to_string(), "(in-process)".to_string())];
            rows.extend(
                r.remotes
                    .iter()
                    .map(|(n, e)| (n.clone(), e.address.clone())),
            );
            if a.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(n, addr)| {
                        serde_json::json!({"name": n, "address": addr, "default": *n == r.default})
                    })
                    .collect();
                crate::output::print_json(&v)?;
            } else {
                println!("{:<20} ADDRESS", "NAME");
                for (n, addr) in rows {
                    let mark = if n == r.default { " (default)" } else { "" };
                    println!("{:<20} {addr}", format!("{n}{mark}"));
                }
            }
        }
        RemoteCommand::Remove(a) => {
            check_remote_name(&a.name)?;
            if r.remotes.remove(&a.name).is_none() {
                bail!("no remote named {:?} (see `berth remote list`)", a.name);
            }
            if r.default == a.name {
                r.default = LOCAL.into();
            }
            save(&r)?;
            println!("Removed remote {}.", a.name);
        }
        RemoteCommand::Switch(a) => {
            r.target(&a.name)?;
            r.default = a.name.clone();
            save(&r)?;
            println!("The default remote is now {}.", a.name);
        }
        RemoteCommand::GetDefault => println!("{}", r.default),
    }
    Ok(Status(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_on_their_remote_and_default_to_the_default_one() {
        let mut r = Remotes::default();
        r.remotes.insert(
            "host2".into(),
            RemoteEntry {
                address: "unix:///run/b/berth.sock".into(),
            },
        );
        assert_eq!(r.split("web").unwrap(), (Target::Local, "web"));
        let d = Target::Daemon(
            "host2".into(),
            Endpoint::Unix(PathBuf::from("/run/b/berth.sock")),
        );
        assert_eq!(r.split("host2:web").unwrap(), (d.clone(), "web"));
        assert_eq!(r.split("host2:").unwrap(), (d.clone(), ""));
        assert_eq!(r.split("local:web").unwrap(), (Target::Local, "web"));
        r.default = "host2".into();
        assert_eq!(r.split("web").unwrap(), (d, "web"));
        let e = r.split("host3:web").unwrap_err().to_string();
        assert!(e.contains("host3"), "{e}");
    }

    #[test]
    fn the_remotes_file_reads_back_and_a_bad_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("remotes.json");
        assert_eq!(load_from(&p).unwrap(), Remotes::default());
        std::fs::write(&p, r#"{"default":"local","remotes":{},"colour":1}"#).unwrap();
        let e = format!("{:#}", load_from(&p).unwrap_err());
        assert!(e.contains("remotes.json") && e.contains("colour"), "{e}");
        assert!(check_remote_name("local").is_err());
        assert!(check_remote_name("a:b").is_err());
        assert!(check_remote_name("host-2").is_ok());
    }
}
