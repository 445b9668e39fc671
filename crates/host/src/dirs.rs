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

/// Where berth caches facts about the host itself, shared by every data dir on it (as libvirt
/// keeps QEMU's capabilities in `/var/cache/libvirt`): `BERTH_CACHE_DIR` if set, `/var/cache/berth`
/// for root, otherwise `$XDG_CACHE_HOME/berth` (`~/.cache/berth` when unset). `None` when
/// nothing fits (no HOME, or a relative path): the caller keeps the fact in its data dir instead.
pub fn host_cache(env: impl Fn(&str) -> Option<String>, uid: u32) -> Option<PathBuf> {
    let absolute = |k: &str| {
        env(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(d) = env("BERTH_CACHE_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d)).filter(|p| p.is_absolute());
    }
    if uid == 0 {
        return Some("/var/cache/berth".into());
    }
    if let Some(x) = absolute("XDG_CACHE_HOME") {
        return Some(x.join("berth"));
    }
    absolute("HOME").map(|h| h.join(".cache/berth"))
}

/// [`host_cache`] of the process's environment and effective uid.
pub fn host_cache_from_env() -> Option<PathBuf> {
    host_cache(
        |k| std::env::var(k).ok(),
        rustix::process::geteuid().as_raw(),
    )
}

/// A new work folder's path in `parent`: `PREFIX-ID-PID`, unique in this process (the time and
/// a count), named so that [`sweep_work`] removes it once this process has ended without
/// finishing it.
pub fn work_dir(parent: &Path, prefix: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    parent.join(format!("{prefix}-{nanos:x}{seq:x}-{}", std::process::id()))
}

/// Remove the work folders in `dir` named `PREFIX...-PID` (for each of `prefixes`) whose
/// process has ended: a berth killed while it built, imported or received something, which
/// that process can no longer finish or clean up.
pub(crate) fn sweep_work(dir: &Path, prefixes: &[&str]) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let pid = name
            .rsplit_once('-')
            .and_then(|(_, p)| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                tracing::info!(folder = %e.path().display(), "removing what an ended berth left");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_folders_of_ended_processes_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let mine = work_dir(d.path(), ".receive");
        assert_ne!(mine, work_dir(d.path(), ".receive"));
        // A pid above any kernel's pid_max.
        let gone = d.path().join(".receive-1b-4294967295");
        let other = d.path().join("web-4294967295");
        for f in [&mine, &gone, &other] {
            std::fs::create_dir(f).unwrap();
        }
        sweep_work(d.path(), &[".receive-"]);
        assert!(mine.exists() && other.exists());
        assert!(!gone.exists());
    }

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

    #[test]
    fn host_facts_are_cached_outside_any_data_dir() {
        assert_eq!(
            host_cache(env(&[("BERTH_DIR", "/d")]), 0),
            Some("/var/cache/berth".into())
        );
        assert_eq!(
            host_cache(env(&[("BERTH_CACHE_DIR", "/c"), ("HOME", "/h")]), 1000),
            Some("/c".into())
        );
        assert_eq!(
            host_cache(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]), 1000),
            Some("/x/berth".into())
        );
        assert_eq!(
            host_cache(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]), 1000),
            Some("/h/.cache/berth".into())
        );
        assert_eq!(host_cache(env(&[("BERTH_CACHE_DIR", "rel")]), 0), None);
        assert_eq!(host_cache(env(&[]), 1000), None);
    }
}
