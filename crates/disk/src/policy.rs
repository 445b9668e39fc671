//! The backing-file gate: where a qcow2 image's backing file may live.
//!
//! A backing file name comes from an untrusted image. It is resolved relative to the folder of
//! the image that names it (absolute names as they are), symlinks are followed, and the result
//! must lie under an allowed folder: by default the top image's own folder and berth's image
//! store, more only when the caller adds them. Protocol-style names (`nbd://`, `json:{...}`) are
//! refused outright. This module only decides; opening is [`crate::image`]'s job.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Which folders backing files may come from.
#[derive(Debug, Clone, Default)]
pub struct BackingPolicy {
    /// berth's image store, always allowed when set.
    pub store: Option<PathBuf>,
    /// Folders the user allowed explicitly.
    pub extra: Vec<PathBuf>,
}

impl BackingPolicy {
    /// A policy with berth's image store and explicitly allowed folders.
    pub fn new(store: Option<PathBuf>, extra: Vec<PathBuf>) -> BackingPolicy {
        BackingPolicy { store, extra }
    }

    /// The allowed folders for a chain whose top image is `top`, canonicalised; folders that do
    /// not exist are dropped.
    pub fn allowed_dirs(&self, top: &Path) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(parent) = absolute_parent(top) {
            dirs.push(parent);
        }
        dirs.extend(self.store.iter().cloned());
        dirs.extend(self.extra.iter().cloned());
        dirs.into_iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect()
    }

    /// Resolve backing file `name` named by `image`, within a chain whose top is `top`.
    pub fn resolve(&self, top: &Path, image: &Path, name: &str) -> Result<PathBuf> {
        if name.contains("://") || name.starts_with("json:") || name.is_empty() {
            return Err(Error::BackingProtocol {
                image: image.to_path_buf(),
                name: name.to_string(),
            });
        }
        let candidate = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            absolute_parent(image)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(name)
        };
        let resolved = std::fs::canonicalize(&candidate).map_err(|_| Error::BackingMissing {
            image: image.to_path_buf(),
            name: name.to_string(),
            resolved: candidate.clone(),
        })?;
        let allowed = self.allowed_dirs(top);
        if allowed.iter().any(|d| resolved.starts_with(d)) {
            Ok(resolved)
        } else {
            Err(Error::BackingNotAllowed {
                image: image.to_path_buf(),
                name: name.to_string(),
                resolved,
                allowed: allowed
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
}

/// The folder holding `path`, made absolute (not canonicalised).
pub fn absolute_parent(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    abs.parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_outside_and_protocols() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        std::fs::write(&top, b"x").unwrap();
        std::fs::write(dir.path().join("base.qcow2"), b"x").unwrap();
        let p = BackingPolicy::default();
        assert!(p.resolve(&top, &top, "base.qcow2").is_ok());
        assert!(matches!(
            p.resolve(&top, &top, "/etc/shadow"),
            Err(Error::BackingNotAllowed { .. })
        ));
        assert!(matches!(
            p.resolve(&top, &top, "../../../../etc/passwd"),
            Err(Error::BackingNotAllowed { .. })
        ));
        assert!(matches!(
            p.resolve(&top, &top, "nbd://host/x"),
            Err(Error::BackingProtocol { .. })
        ));
        assert!(matches!(
            p.resolve(&top, &top, "missing.qcow2"),
            Err(Error::BackingMissing { .. })
        ));
    }

    #[test]
    fn symlinks_out_of_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        std::fs::write(&top, b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        let p = BackingPolicy::default();
        assert!(matches!(
            p.resolve(&top, &top, "link"),
            Err(Error::BackingNotAllowed { .. })
        ));
    }
}
