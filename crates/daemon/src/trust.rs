//! The server's side of trust ([`berth_api::trust`]): its TLS identity (`DATA/tls/server.*`),
//! the clients it trusts (`DATA/trust.json`), the join tokens not yet used (`DATA/tokens.json`,
//! secrets kept as SHA-256 only) and the addresses it serves HTTPS on (`DATA/https.json`, for
//! tokens). Changes take an `flock` on `DATA/trust.lock`, so a CLI making a token and the
//! daemon using one never lose each other's writes.

use berth_api::{Error, JoinToken, TrustedClient};
use berth_host::dirs::Dirs;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How long a token is good for when no other time is given.
pub const TOKEN_LIFETIME: u64 = 3600;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    clients: Vec<TrustedClient>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pending {
    client_name: String,
    secret_sha256: String,
    expires_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<Pending>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpsFile {
    addresses: Vec<String>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    berth_tls::fingerprint(s.as_bytes())
}

fn internal(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{what} {}: {e}", path.display()))
}

fn read_json<T: Default + serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    if !path.exists() {
        return Ok(T::default());
    }
    let text = berth_files::input::read_capped(path, 8 << 20, "a trust file")
        .map_err(|e| internal("reading", path, e))?;
    serde_json::from_slice(&text).map_err(|e| internal("reading", path, e))
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), Error> {
    let mut text = serde_json::to_vec_pretty(v).map_err(|e| internal("writing", path, e))?;
    text.push(b'\n');
    berth_files::output::write_atomic(path, &text, 0o600, "a trust file")
        .map_err(|e| internal("writing", path, e))
}

/// Hold the trust lock while `f` runs.
fn locked<T>(dirs: &Dirs, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    use rustix::fs::{flock, FlockOperation};
    let path = dirs.root.join("trust.lock");
    std::fs::create_dir_all(&dirs.root).map_err(|e| internal("creating", &dirs.root, e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| internal("opening", &path, e))?;
    flock(&file, FlockOperation::LockExclusive).map_err(|e| internal("locking", &path, e))?;
    f()
}

fn trust_path(dirs: &Dirs) -> PathBuf {
    dirs.root.join("trust.json")
}

fn tokens_path(dirs: &Dirs) -> PathBuf {
    dirs.root.join("tokens.json")
}

/// The server's TLS identity, made on first use.
pub fn server_identity(dirs: &Dirs) -> Result<berth_tls::Identity, Error> {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    berth_tls::load_or_make(&dirs.root.join("tls"), "server", &format!("berth@{host}"))
        .map_err(|e| Error::internal(format!("the server's TLS identity: {e}")))
}

/// The clients trusted.
pub fn list(dirs: &Dirs) -> Result<Vec<TrustedClient>, Error> {
    Ok(read_json::<TrustFile>(&trust_path(dirs))?.clients)
}

/// Whether the certificate `fingerprint` is trusted.
pub fn is_trusted(dirs: &Dirs, fingerprint: &str) -> bool {
    list(dirs).is_ok_and(|c| c.iter().any(|c| c.fingerprint == fingerprint))
}

/// Stop trusting the client named `who` (its name or fingerprint, or a unique prefix of it).
pub fn remove(dirs: &Dirs, who: &str) -> Result<TrustedClient, Error> {
    locked(dirs, || {
        let mut t: TrustFile = read_json(&trust_path(dirs))?;
        let hits: Vec<usize> = (0..t.clients.len())
            .filter(|&i| {
                let c = &t.clients[i];
                c.name == who || (who.len() >= 8 && c.fingerprint.starts_with(who))
            })
            .collect();
        match hits.as_slice() {
            [i] => {
                let gone = t.clients.remove(*i);
                write_json(&trust_path(dirs), &t)?;
                Ok(gone)
            }
            [] => Err(Error::new(
                berth_api::ErrorKind::NotFound,
                format!(
                "no trusted client named {who:?} or with that fingerprint (see `berth trust list`)"
            ),
            )),
            _ => Err(Error::invalid(
                "client",
                format!("{who:?} names more than one trusted client: give its fingerprint"),
            )),
        }
    })
}

/// Record the addresses the daemon serves HTTPS on (for tokens).
pub fn set_addresses(dirs: &Dirs, addresses: Vec<String>) -> Result<(), Error> {
    write_json(&dirs.root.join("https.json"), &HttpsFile { addresses })
}

/// A join token for a client to be named `client_name`, good for `lifetime` seconds, naming
/// `addresses` (none: those the daemon last served HTTPS on).
pub fn make_token(
    dirs: &Dirs,
    client_name: &str,
    addresses: Vec<String>,
    lifetime: u64,
) -> Result<JoinToken, Error> {
    berth_api::check_name(client_name).map_err(|e| Error::invalid("client", e.message))?;
    let addresses = if addresses.is_empty() {
        read_json::<HttpsFile>(&dirs.root.join("https.json"))?.addresses
    } else {
        addresses
    };
    if addresses.is_empty() {
        return Err(Error::invalid(
            "address",
            "no address to put in the token: start `berth daemon --listen ADDR:PORT` first, \
             or pass --address",
        ));
    }
    let fingerprint = server_identity(dirs)?.fingerprint();
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(|e| Error::internal(format!("randomness: {e}")))?;
    let secret = berth_tls::hex(&raw);
    let expires_at = now().saturating_add(lifetime);
    locked(dirs, || {
        let mut t: TokenFile = read_json(&tokens_path(dirs))?;
        let n = now();
        t.tokens.retain(|p| p.expires_at > n);
        t.tokens.push(Pending {
            client_name: client_name.to_string(),
            secret_sha256: sha256_hex(&secret),
            expires_at,
        });
        write_json(&tokens_path(dirs), &t)
    })?;
    Ok(JoinToken {
        client_name: client_name.to_string(),
        fingerprint,
        addresses,
        secret,
        expires_at,
    })
}

/// Use the token whose secret is `secret` to trust `fingerprint`: the client as trusted. The
/// token is spent whatever happens next; an unknown or expired one is forbidden.
pub fn join(dirs: &Dirs, secret: &str, fingerprint: &str) -> Result<TrustedClient, Error> {
    locked(dirs, || {
        let mut t: TokenFile = read_json(&tokens_path(dirs))?;
        let n = now();
        let hash = sha256_hex(secret);
        let found = t.tokens.iter().position(|p| p.secret_sha256 == hash);
        let pending = found.map(|i| t.tokens.remove(i));
        t.tokens.retain(|p| p.expires_at > n);
        write_json(&tokens_path(dirs), &t)?;
        let p =
            match pending {
                Some(p) if p.expires_at > n => p,
                Some(_) => {
                    return Err(Error::new(
                        berth_api::ErrorKind::Forbidden,
                        "this join token has expired: make a new one with `berth remote token`",
                    ))
                }
                None => return Err(Error::new(
                    berth_api::ErrorKind::Forbidden,
                    "no such join token (each is good once): make one with `berth remote token`",
                )),
            };
        let mut trust: TrustFile = read_json(&trust_path(dirs))?;
        trust.clients.retain(|c| c.fingerprint != fingerprint);
        let client = TrustedClient {
            name: p.client_name,
            fingerprint: fingerprint.to_string(),
            added_at: n,
        };
        trust.clients.push(client.clone());
        write_json(&trust_path(dirs), &trust)?;
        Ok(client)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_trusts_one_client_once() {
        let d = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            root: d.path().to_path_buf(),
        };
        assert_eq!(
            make_token(&dirs, "laptop", vec![], 60)
                .unwrap_err()
                .field
                .as_deref(),
            Some("address")
        );
        set_addresses(&dirs, vec!["10.0.0.2:8443".into()]).unwrap();
        let t = make_token(&dirs, "laptop", vec![], 60).unwrap();
        assert_eq!(t.addresses, ["10.0.0.2:8443"]);
        assert_eq!(t.fingerprint, server_identity(&dirs).unwrap().fingerprint());
        let fp = "b".repeat(64);
        assert!(!is_trusted(&dirs, &fp));
        assert_eq!(join(&dirs, &t.secret, &fp).unwrap().name, "laptop");
        assert!(is_trusted(&dirs, &fp));
        // Spent.
        assert_eq!(
            join(&dirs, &t.secret, &"c".repeat(64)).unwrap_err().kind,
            berth_api::ErrorKind::Forbidden
        );
        let expired = make_token(&dirs, "old", vec![], 0).unwrap();
        assert!(join(&dirs, &expired.secret, &"c".repeat(64))
            .unwrap_err()
            .message
            .contains("expired"));
        assert!(make_token(&dirs, "../x", vec![], 60).is_err());
        assert_eq!(remove(&dirs, "laptop").unwrap().fingerprint, fp);
        assert!(!is_trusted(&dirs, &fp));
        assert_eq!(
            remove(&dirs, "laptop").unwrap_err().kind,
            berth_api::ErrorKind::NotFound
        );
        let secrets = std::fs::read_to_string(d.path().join("tokens.json")).unwrap();
        assert!(!secrets.contains(&t.secret));
    }
}
