//! Where berth keeps its data: `BERTH_DIR` if set, `/var/lib/berth` for root, otherwise
//! `$XDG_DATA_HOME/berth` (`~/.local/share/berth` when unset). Resolution is pure: the caller
//! passes the environment and uid, so tests never touch the real locations.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why no data directory could be chosen.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DirsError {
    /// Neither XDG_DATA_HOME nor HOME is set for a non-root user.
    #[error("cannot choose a data directory: set BERTH_DIR, XDG_DATA_HOME or HOME")]
    NoHome,
    /// A relative BERTH_DIR or XDG_DATA_HOME.
    #[error("{0} must be an absolute path")]
    Relative(&'static str),
}

/// berth's directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// The root of berth's data.
    pub root: PathBuf,
}

impl Dirs {
    /// Resolve from an environment lookup and the effective uid.
    pub fn resolve(env: impl Fn(&str) -> Option<String>, uid: u32) -> Result<Dirs, DirsError> {
        let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
        if let Some(d) = nonempty("BERTH_DIR") {
            if !Path::new(&d).is_absolute() {
                return Err(DirsError::Relative("BERTH_DIR"));
            }
            return Ok(Dirs { root: d.into() });
        }
        if uid == 0 {
            return Ok(Dirs {
                root: "/var/lib/berth".into(),
            });
        }
        if let Some(x) = nonempty("XDG_DATA_HOME") {
            if !Path::new(&x).is_absolute() {
                return Err(DirsError::Relative("XDG_DATA_HOME"));
            }
            return Ok(Dirs {
                root: Path::new(&x).join("berth"),
            });
        }
        let home = nonempty("HOME").ok_or(DirsError::NoHome)?;
        Ok(Dirs {
            root: Path::new(&home).join(".local/share/berth"),
        })
    }

    /// Resolve from the process environment.
    pub fn from_env(uid: u32) -> Result<Dirs, DirsError> {
        Dirs::resolve(|k| std::env::var(k).ok(), uid)
    }

    /// The image store (base images; always an allowed folder for backing files).
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// berth's own SSH keys and other secrets.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn berth_dir_wins() {
        let d = Dirs::resolve(env(&[("BERTH_DIR", "/tmp/x"), ("HOME", "/home/u")]), 0).unwrap();
        assert_eq!(d.root, PathBuf::from("/tmp/x"));
        assert_eq!(d.images(), PathBuf::from("/tmp/x/images"));
    }

    #[test]
    fn root_uses_var_lib() {
        let d = Dirs::resolve(env(&[("HOME", "/root")]), 0).unwrap();
        assert_eq!(d.root, PathBuf::from("/var/lib/berth"));
    }

    #[test]
    fn users_use_xdg_then_home() {
        let d = Dirs::resolve(env(&[("XDG_DATA_HOME", "/d"), ("HOME", "/home/u")]), 1000).unwrap();
        assert_eq!(d.root, PathBuf::from("/d/berth"));
        let d = Dirs::resolve(env(&[("HOME", "/home/u")]), 1000).unwrap();
        assert_eq!(d.root, PathBuf::from("/home/u/.local/share/berth"));
        assert_eq!(Dirs::resolve(env(&[]), 1000), Err(DirsError::NoHome));
        assert_eq!(
            Dirs::resolve(env(&[("BERTH_DIR", "rel")]), 0),
            Err(DirsError::Relative("BERTH_DIR"))
        );
    }
}
