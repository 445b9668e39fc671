//! SSH key pairs as `ssh-keygen` writes them: OpenSSH private key (optionally encrypted with a
//! passphrase) at mode 0600 and `PATH.pub` at 0644, a created folder at 0700. Files are written
//! to a temporary name with the final mode and renamed, so an overwritten key never passes
//! through a readable state and a failure never leaves half a key.

use rand_core::OsRng;
use ssh_key::private::{EcdsaKeypair, KeypairData, RsaKeypair};
use ssh_key::{Algorithm, EcdsaCurve, LineEnding, PrivateKey};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Key type, as `ssh-keygen -t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// Ed25519 (the default).
    Ed25519,
    /// ECDSA on NIST P-256, P-384 or P-521 (`-b 256|384|521`).
    Ecdsa,
    /// RSA (`-b` bits, default 3072).
    Rsa,
}

impl std::str::FromStr for KeyType {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<KeyType, KeyError> {
        match s {
            "ed25519" => Ok(KeyType::Ed25519),
            "ecdsa" => Ok(KeyType::Ecdsa),
            "rsa" => Ok(KeyType::Rsa),
            other => Err(KeyError::Invalid(format!(
                "unknown key type {other:?} (ed25519, ecdsa or rsa)"
            ))),
        }
    }
}

/// Errors from key generation and writing.
#[derive(Debug, Error)]
pub enum KeyError {
    /// A bad request (type, bits).
    #[error("{0}")]
    Invalid(String),
    /// The key file exists.
    #[error("{} already exists; pass --force to overwrite it", .0.display())]
    Exists(PathBuf),
    /// The crypto library failed.
    #[error("generating the key: {0}")]
    Crypto(String),
    /// A file system call failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file could not be written (not a regular file, I/O).
    #[error(transparent)]
    File(#[from] berth_files::FileError),
}

/// A request for a key pair.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// Type.
    pub key_type: KeyType,
    /// Bits (RSA: 2048..=16384, ECDSA: 256/384/521); type default when `None`.
    pub bits: Option<u32>,
    /// Comment (ssh-keygen's default is user@host; berth's callers pass one).
    pub comment: String,
    /// Passphrase; empty for none.
    pub passphrase: String,
}

/// A generated key pair in OpenSSH encodings.
#[derive(Debug)]
pub struct KeyPair {
    /// The private key file content.
    pub private_openssh: zeroize::Zeroizing<String>,
    /// The public key line (with a trailing newline).
    pub public_openssh: String,
}

/// Generate a key pair.
pub fn generate(spec: &KeySpec) -> Result<KeyPair, KeyError> {
    let crypto = |e: ssh_key::Error| KeyError::Crypto(e.to_string());
    let mut key = match spec.key_type {
        KeyType::Ed25519 => {
            if spec.bits.is_some_and(|b| b != 256) {
                return Err(KeyError::Invalid(
                    "ed25519 keys have a fixed size; drop -b".into(),
                ));
            }
            PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(crypto)?
        }
        KeyType::Ecdsa => {
            let curve = match spec.bits.unwrap_or(256) {
                256 => EcdsaCurve::NistP256,
                384 => EcdsaCurve::NistP384,
                521 => EcdsaCurve::NistP521,
                b => {
                    return Err(KeyError::Invalid(format!(
                        "invalid ECDSA size {b}: use 256, 384 or 521"
                    )))
                }
            };
            let kp = EcdsaKeypair::random(&mut OsRng, curve).map_err(crypto)?;
            PrivateKey::new(KeypairData::Ecdsa(kp), "").map_err(crypto)?
        }
        KeyType::Rsa => {
            let bits = spec.bits.unwrap_or(3072);
            if !(2048..=16384).contains(&bits) {
                return Err(KeyError::Invalid(format!(
                    "invalid RSA size {bits}: use 2048 to 16384 bits"
                )));
            }
            let kp = RsaKeypair::random(&mut OsRng, bits as usize).map_err(crypto)?;
            PrivateKey::new(KeypairData::Rsa(kp), "").map_err(crypto)?
        }
    };
    key.set_comment(spec.comment.clone());
    let public_openssh = format!("{}\n", key.public_key().to_openssh().map_err(crypto)?);
    if !spec.passphrase.is_empty() {
        key = key
            .encrypt(&mut OsRng, spec.passphrase.as_bytes())
            .map_err(crypto)?;
    }
    let private_openssh = key.to_openssh(LineEnding::LF).map_err(crypto)?;
    Ok(KeyPair {
        private_openssh,
        public_openssh,
    })
}

/// The public key file next to a private key: `PATH.pub`.
pub fn public_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Generate and write a key pair to `path` and `path.pub`; refuses to overwrite without
/// `force`. A missing parent folder is created with mode 0700 (as `~/.ssh`).
pub fn generate_to(spec: &KeySpec, path: &Path, force: bool) -> Result<KeyPair, KeyError> {
    let public = public_path(path);
    for p in [path, public.as_path()] {
        match berth_files::output::check_target(p, force, "a key") {
            Err(berth_files::FileError::Exists(p)) => return Err(KeyError::Exists(p)),
            other => other?,
        }
    }
    let pair = generate(spec)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::ensure_dir(dir, 0o700).map_err(|source| KeyError::Io {
            what: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    berth_files::output::write_atomic(
        path,
        pair.private_openssh.as_bytes(),
        0o600,
        "a private key",
    )?;
    berth_files::output::write_atomic(
        &public,
        pair.public_openssh.as_bytes(),
        0o644,
        "a public key",
    )?;
    Ok(pair)
}

/// Write a private key received as text (an OpenSSH private key, not encrypted: a moved
/// guest's own key) to `path` (0600) and its public key to `path.pub` (0644), refusing to
/// overwrite either. Returns the public key line. The text is untrusted: anything but such a
/// key is refused before a file is written.
pub fn install_private(text: &str, path: &Path) -> Result<String, KeyError> {
    let key = PrivateKey::from_openssh(text)
        .map_err(|e| KeyError::Invalid(format!("not an OpenSSH private key: {e}")))?;
    if key.is_encrypted() {
        return Err(KeyError::Invalid(
            "the private key is encrypted; berth needs one it can use unattended".into(),
        ));
    }
    let crypto = |e: ssh_key::Error| KeyError::Crypto(e.to_string());
    let public_openssh = format!("{}\n", key.public_key().to_openssh().map_err(crypto)?);
    let private_openssh = key.to_openssh(LineEnding::LF).map_err(crypto)?;
    let public = public_path(path);
    for p in [path, public.as_path()] {
        match berth_files::output::check_target(p, false, "a key") {
            Err(berth_files::FileError::Exists(p)) => return Err(KeyError::Exists(p)),
            other => other?,
        }
    }
    berth_files::output::write_atomic(path, private_openssh.as_bytes(), 0o600, "a private key")?;
    berth_files::output::write_atomic(&public, public_openssh.as_bytes(), 0o644, "a public key")?;
    Ok(public_openssh)
}

/// berth's own key pair under its data folder, generated (ed25519) on first use.
pub fn ensure_default(keys_dir: &Path, comment: &str) -> Result<PathBuf, KeyError> {
    let path = keys_dir.join("id_ed25519");
    if path.exists() && public_path(&path).exists() {
        return Ok(path);
    }
    let spec = KeySpec {
        key_type: KeyType::Ed25519,
        bits: None,
        comment: comment.to_string(),
        passphrase: String::new(),
    };
    generate_to(&spec, &path, true)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_received_private_key_is_installed_with_its_public_key_or_refused() {
        let d = tempfile::tempdir().unwrap();
        let spec = KeySpec {
            key_type: KeyType::Ed25519,
            bits: None,
            comment: "berth@web".into(),
            passphrase: String::new(),
        };
        let pair = generate(&spec).unwrap();
        let path = d.path().join("id_ed25519");
        let public = install_private(&pair.private_openssh, &path).unwrap();
        assert_eq!(public, pair.public_openssh);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&public_path(&path)), 0o644);
        assert!(matches!(
            install_private(&pair.private_openssh, &path),
            Err(KeyError::Exists(_))
        ));
        let other = d.path().join("other");
        let e = install_private("not a key", &other).unwrap_err();
        assert!(e.to_string().contains("not an OpenSSH private key"), "{e}");
        let locked = generate(&KeySpec {
            passphrase: "secret".into(),
            ..spec
        })
        .unwrap();
        let e = install_private(&locked.private_openssh, &other).unwrap_err();
        assert!(e.to_string().contains("encrypted"), "{e}");
        assert!(!other.exists());
    }

    #[test]
    fn writes_modes_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ssh/id_test");
        let spec = KeySpec {
            key_type: KeyType::Ed25519,
            bits: None,
            comment: "t@berth".into(),
            passphrase: String::new(),
        };
        let pair = generate_to(&spec, &path, false).unwrap();
        assert!(
            pair.public_openssh.starts_with("ssh-ed25519 ")
                && pair.public_openssh.ends_with(" t@berth\n")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&public_path(&path)), 0o644);
        assert_eq!(mode(&d.path().join("ssh")), 0o700);
        assert!(matches!(
            generate_to(&spec, &path, false),
            Err(KeyError::Exists(_))
        ));
        // Overwrite a key someone made world-readable: the new one is 0600 all the same.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        generate_to(&spec, &path, true).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let spec = |t, b| KeySpec {
            key_type: t,
            bits: Some(b),
            comment: String::new(),
            passphrase: String::new(),
        };
        assert!(matches!(
            generate(&spec(KeyType::Ecdsa, 300)),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            generate(&spec(KeyType::Rsa, 1024)),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            generate(&spec(KeyType::Ed25519, 512)),
            Err(KeyError::Invalid(_))
        ));
    }
}
