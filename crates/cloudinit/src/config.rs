//! Building a guest's `#cloud-config` from typed values, merged with the user's own file.
//!
//! Merge rules (the user's file wins on conflicts):
//! - a key berth sets with a single value (`hostname`, `timezone`, `package_update`, ...) is
//!   kept only if the user's file does not set that key;
//! - `users`: berth's users are added after the user's list, except those whose name the
//!   user's list already has (a user entry `default` stays where the user put it);
//! - `packages`, `runcmd`, `bootcmd`, `ssh_authorized_keys`: berth's entries first, then the
//!   user's, without repeating an identical entry;
//! - `write_files`: berth's entries for paths the user's file does not write, then the user's.
//!
//! What berth adds is decided by the caller (the VM and container code); this module only
//! shapes and merges.

use crate::yaml;
use serde_json::{json, Map, Value};
use thiserror::Error;

/// A user account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Public keys (`ssh-ed25519 AAAA... comment`).
    pub ssh_authorized_keys: Vec<String>,
    /// sudo rule, e.g. `ALL=(ALL) NOPASSWD:ALL`.
    pub sudo: Option<String>,
    /// Supplementary groups.
    pub groups: Vec<String>,
    /// Login shell.
    pub shell: Option<String>,
    /// Lock the password (cloud-init's default is true).
    pub lock_passwd: Option<bool>,
}

/// A file to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteFile {
    /// Absolute path in the guest.
    pub path: String,
    /// Content (plain text).
    pub content: String,
    /// Octal permissions, e.g. `0644`.
    pub permissions: Option<String>,
    /// `user:group`.
    pub owner: Option<String>,
}

/// What berth wants in a guest's cloud-config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestConfig {
    /// Hostname.
    pub hostname: Option<String>,
    /// Time zone (tz database name).
    pub timezone: Option<String>,
    /// Users to create.
    pub users: Vec<User>,
    /// Packages to install.
    pub packages: Vec<String>,
    /// Commands to run once at first boot.
    pub runcmd: Vec<String>,
    /// Files to write.
    pub write_files: Vec<WriteFile>,
    /// Other top-level keys, as JSON values (e.g. `ssh_genkeytypes`).
    pub extra: Map<String, Value>,
}

/// Why a merge failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MergeError {
    /// The user's file is not a cloud-config mapping.
    #[error("line {line}, column {column}: {message}")]
    Invalid {
        /// Line.
        line: usize,
        /// Column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl GuestConfig {
    /// This configuration as a JSON object with cloud-init's keys.
    pub fn to_value(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(h) = &self.hostname {
            m.insert("hostname".into(), json!(h));
        }
        if let Some(t) = &self.timezone {
            m.insert("timezone".into(), json!(t));
        }
        if !self.users.is_empty() {
            let users: Vec<Value> = self
                .users
                .iter()
                .map(|u| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(u.name));
                    if !u.ssh_authorized_keys.is_empty() {
                        o.insert("ssh_authorized_keys".into(), json!(u.ssh_authorized_keys));
                    }
                    if let Some(s) = &u.sudo {
                        o.insert("sudo".into(), json!(s));
                    }
                    if !u.groups.is_empty() {
                        o.insert("groups".into(), json!(u.groups));
                    }
                    if let Some(s) = &u.shell {
                        o.insert("shell".into(), json!(s));
                    }
                    if let Some(l) = u.lock_passwd {
                        o.insert("lock_passwd".into(), json!(l));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("users".into(), Value::Array(users));
        }
        if !self.packages.is_empty() {
            m.insert("packages".into(), json!(self.packages));
        }
        if !self.runcmd.is_empty() {
            m.insert("runcmd".into(), json!(self.runcmd));
        }
        if !self.write_files.is_empty() {
            let files: Vec<Value> = self
                .write_files
                .iter()
                .map(|f| {
                    let mut o = Map::new();
                    o.insert("path".into(), json!(f.path));
                    o.insert("content".into(), json!(f.content));
                    if let Some(p) = &f.permissions {
                        o.insert("permissions".into(), json!(p));
                    }
                    if let Some(p) = &f.owner {
                        o.insert("owner".into(), json!(p));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("write_files".into(), Value::Array(files));
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        m
    }
}

fn user_name(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("name").and_then(Value::as_str),
        _ => None,
    }
}

/// Merge berth's configuration with the user's cloud-config text (if any), user winning.
pub fn merge(
    berth: &GuestConfig,
    user_text: Option<&str>,
) -> Result<Map<String, Value>, MergeError> {
    let theirs = match user_text {
        None => Map::new(),
        Some(t) => parse(t)?,
    };
    Ok(merge_map(berth, theirs))
}

/// A cloud-config's top-level mapping (an empty document is an empty one).
pub fn parse(text: &str) -> Result<Map<String, Value>, MergeError> {
    match yaml::load(text) {
        Ok(doc) => match doc.value {
            Value::Object(o) => Ok(o),
            Value::Null => Ok(Map::new()),
            _ => Err(MergeError::Invalid {
                line: 1,
                column: 1,
                message: "the cloud-config is not a mapping of keys to values".into(),
            }),
        },
        Err(e) => Err(MergeError::Invalid {
            line: e.mark.line,
            column: e.mark.col,
            message: e.message,
        }),
    }
}

/// Merge berth's configuration with the user's cloud-config mapping, user winning: berth's user
/// is added to the user's `users`, its list items to theirs, its files beside theirs.
pub fn merge_map(berth: &GuestConfig, theirs: Map<String, Value>) -> Map<String, Value> {
    let ours = berth.to_value();
    let mut out = theirs;
    for (k, v) in ours {
        match (k.as_str(), out.get_mut(&k)) {
            (_, None) => {
                out.insert(k, v);
            }
            ("users", Some(Value::Array(list))) => {
                let names: Vec<String> = list
                    .iter()
                    .filter_map(user_name)
                    .map(str::to_string)
                    .collect();
                for u in v.as_array().into_iter().flatten() {
                    if user_name(u).is_some_and(|n| !names.iter().any(|m| m == n)) {
                        list.push(u.clone());
                    }
                }
            }
            (
                "packages" | "runcmd" | "bootcmd" | "ssh_authorized_keys",
                Some(Value::Array(list)),
            ) => {
                let mut merged: Vec<Value> = v.as_array().cloned().unwrap_or_default();
                for item in list.drain(..) {
                    if !merged.contains(&item) {
                        merged.push(item);
                    }
                }
                *list = merged;
            }
            ("write_files", Some(Value::Array(list))) => {
                let paths: Vec<String> = list
                    .iter()
                    .filter_map(|f| f.get("path").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect();
                let mut merged: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|f| {
                        f.get("path")
                            .and_then(Value::as_str)
                            .is_some_and(|p| !paths.iter().any(|q| q == p))
                    })
                    .cloned()
                    .collect();
                merged.append(list);
                *list = merged;
            }
            // Any other key the user set: theirs wins.
            _ => {}
        }
    }
    out
}

/// Render a configuration as `#cloud-config` text. The body is JSON, which is valid YAML that
/// cloud-init (PyYAML) reads back to exactly these values, with no implicit typing surprises.
pub fn render(config: &Map<String, Value>) -> String {
    let body = serde_json::to_string_pretty(config).unwrap_or_else(|_| "{}".into());
    format!("#cloud-config\n# Written by berth: the user's cloud-config merged with berth's additions.\n{body}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berth_side() -> GuestConfig {
        GuestConfig {
            hostname: Some("web1".into()),
            timezone: Some("UTC".into()),
            users: vec![User {
                name: "berth".into(),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAA b".into()],
                sudo: Some("ALL=(ALL) NOPASSWD:ALL".into()),
                ..User::default()
            }],
            packages: vec!["qemu-guest-agent".into()],
            runcmd: vec!["echo berth".into()],
            write_files: vec![
                WriteFile {
                    path: "/etc/berth".into(),
                    content: "x".into(),
                    ..WriteFile::default()
                },
                WriteFile {
                    path: "/etc/motd".into(),
                    content: "berth".into(),
                    ..WriteFile::default()
                },
            ],
            extra: Map::new(),
        }
    }

    #[test]
    fn the_users_file_wins_and_lists_merge() {
        let user = "#cloud-config\nhostname: test-system\ntimezone: Africa/Dar_es_Salaam\nusers:\n  - default\n  - name: berth\n    shell: /bin/zsh\n  - name: alice\npackages: [nginx, qemu-guest-agent]\nwrite_files:\n  - path: /etc/motd\n    content: mine\n";
        let m = merge(&berth_side(), Some(user)).unwrap();
        assert_eq!(m["hostname"], "test-system");
        assert_eq!(m["timezone"], "Africa/Dar_es_Salaam");
        let users = m["users"].as_array().unwrap();
        assert_eq!(users.len(), 3, "berth's user is not added twice: {users:?}");
        assert_eq!(users[1]["shell"], "/bin/zsh");
        assert_eq!(m["packages"], json!(["qemu-guest-agent", "nginx"]));
        assert_eq!(m["runcmd"], json!(["echo berth"]));
        let files = m["write_files"].as_array().unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0]["path"], "/etc/berth");
        assert_eq!(files[1]["content"], "mine");
    }

    #[test]
    fn rendered_config_reads_back_and_validates() {
        let m = merge(&berth_side(), None).unwrap();
        let text = render(&m);
        assert_eq!(yaml::load(&text).unwrap().value, Value::Object(m));
        let errs: Vec<_> = crate::schema::validate_cloud_config(&text, None)
            .into_iter()
            .filter(|p| p.severity == crate::schema::Severity::Error)
            .collect();
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn a_broken_user_file_is_a_positioned_error() {
        let e = merge(&berth_side(), Some("#cloud-config\nusers: [\n")).unwrap_err();
        assert!(matches!(e, MergeError::Invalid { .. }));
    }
}
