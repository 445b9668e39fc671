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
    /// Where its daemon listens (`unix:///var/lib/berth/berth.sock`, `https://HOST:PORT`).
    pub address: String,
    /// For HTTPS, the server certificate's pinned SHA-256 fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl RemoteEntry {
    /// Where its daemon is reached (`conf`: the client's config folder, its identity's home).
    pub fn endpoint(&self, conf: &Path) -> Result<Endpoint> {
        match (self.address.strip_prefix("https://"), &self.fingerprint) {
            (Some(address), Some(fp)) => Ok(Endpoint::Https {
                address: address.to_string(),
                fingerprint: fp.clone(),
                identity: conf.to_path_buf(),
            }),
            (Some(_), None) => bail!(
                "remote at {} has no pinned fingerprint: remove it and add it with a token",
                self.address
            ),
            (None, _) => Ok(Endpoint::parse(&self.address)?),
        }
    }
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
            Some(r) => Ok(Target::Daemon(name.to_string(), r.endpoint(&conf_dir()?)?)),
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
    /// Add a remote: a berth daemon reached with a join token (from `berth remote token` on
    /// it), or at unix:///PATH/berth.sock.
    Add(AddArgs),
    /// Make a join token for a client to be called CLIENT (run on the server).
    Token(TokenArgs),
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
    /// A join token, or the daemon's unix:///PATH/berth.sock.
    pub target: String,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The client's name.
    pub client: String,
    /// An address to put in the token (HOST:PORT; default: where `berth daemon --listen` last
    /// listened).
    #[arg(long = "address")]
    pub addresses: Vec<String>,
    /// Seconds the token is good for.
    #[arg(long, default_value_t = berth_daemon::trust::TOKEN_LIFETIME)]
    pub expires: u64,
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

/// Join the daemon a token names, at the first of its addresses that answers: the remote to
/// keep (its address and pinned fingerprint).
fn join(token: &str) -> Result<RemoteEntry> {
    let t = berth_api::JoinToken::decode(token)?;
    let conf = conf_dir()?;
    let mut failures = Vec::new();
    for address in &t.addresses {
        let endpoint = Endpoint::Https {
            address: address.clone(),
            fingerprint: t.fingerprint.clone(),
            identity: conf.clone(),
        };
        match berth_client::Remote::new(endpoint)?.join(&t.secret) {
            Ok(_) => {
                return Ok(RemoteEntry {
                    address: format!("https://{address}"),
                    fingerprint: Some(t.fingerprint.clone()),
                })
            }
            // The server answered and refused: another address would refuse too.
            Err(e) if e.kind != berth_api::ErrorKind::Internal => return Err(e.into()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    bail!("no address in the token answered: {}", failures.join("; "))
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
            let entry = if a.target.starts_with("unix://") || a.target.starts_with('/') {
                RemoteEntry {
                    address: a.target.clone(),
                    fingerprint: None,
                }
            } else {
                join(&a.target).with_context(|| format!("adding remote {}", a.name))?
            };
            // A remote is added only once it answers (and trusts this client).
            let server = berth_client::Remote::new(entry.endpoint(&conf_dir()?)?)?
                .server()
                .with_context(|| format!("adding remote {}", a.name))?;
            if server.auth != "trusted" {
                bail!(
                    "adding remote {}: the server does not trust this client",
                    a.name
                );
            }
            let address = entry.address.clone();
            r.remotes.insert(a.name.clone(), entry);
            save(&r)?;
            println!(
                "Added remote {} at {address} (berth {} on {}).",
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
        RemoteCommand::Token(a) => {
            let dirs = crate::output::dirs()?;
            let t = berth_daemon::trust::make_token(&dirs, &a.client, a.addresses, a.expires)?;
            println!("{}", t.encode());
            crate::output::say!(
                "A token for {} ({} s, once): berth remote add NAME TOKEN on that client.",
                a.client,
                a.expires
            );
        }
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
                fingerprint: None,
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
