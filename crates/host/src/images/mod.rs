//! Base images: Debian guests built from Debian's mirror with debootstrap, stored as qcow2 in
//! berth's image store with their kernels beside them for direct kernel boot.
//!
//! A build works in a hidden folder of the store and renames it into place only when complete,
//! so an interrupted build leaves nothing half-made. The image carries no machine-id (systemd's
//! first-boot state), no SSH host keys and no cloud-init instance state: every guest made from
//! it starts fresh. The recipe (release, packages, configuration, size) is hashed; a second
//! build of the same recipe is instant.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub mod archive;
mod build;
mod import;
mod recipe;
pub mod transfer;

pub use recipe::*;

/// Errors from the image store.
#[derive(Debug, Error)]
pub enum ImageError {
    /// Unknown recipe name.
    #[error("unknown image {0:?}: berth builds debian-12")]
    UnknownRecipe(String),
    /// Bad image name.
    #[error("invalid image name {0:?}: use letters, digits, '-', '_' and '.', starting with a letter or digit")]
    BadName(String),
    /// No such image.
    #[error("no image named {0:?} (see `berth image list`)")]
    NotFound(String),
    /// The name is taken.
    #[error("an image named {0:?} already exists (berth image rm {0})")]
    Exists(String),
    /// A kernel without its initrd, or the other way round.
    #[error("give both a kernel and an initrd, or neither")]
    HalfBoot,
    /// A tool failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool.
        tool: String,
        /// Its last output lines.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The disk engine failed.
    #[error(transparent)]
    Disk(#[from] berth_disk::Error),
    /// The image's metadata is unreadable.
    #[error("image metadata {}: {message}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

/// A kernel and initrd for direct boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFiles {
    /// Kernel file name in the image folder.
    pub kernel: String,
    /// Initrd file name in the image folder.
    pub initrd: String,
    /// Kernel version.
    pub version: String,
}

/// What `image.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Image name.
    pub name: String,
    /// "debian".
    pub os: String,
    /// "12".
    pub release: String,
    /// Debian suite, "bookworm".
    pub suite: String,
    /// "x86_64".
    pub arch: String,
    /// Disk file name in the image folder.
    pub disk: String,
    /// Virtual size.
    pub size: u64,
    /// sha256 of the disk file.
    pub sha256: String,
    /// Unix time of the build.
    pub built_at: u64,
    /// Hash of the recipe it was built from.
    pub recipe: String,
    /// The `cloud` kernel flavour (virtio guests).
    pub kernel_cloud: Option<BootFiles>,
    /// The generic kernel flavour (all drivers: full-emulation guests).
    pub kernel_generic: Option<BootFiles>,
    /// The root device for the kernel command line (`LABEL=rootfs`, `UUID=...`).
    #[serde(default)]
    pub root: Option<String>,
}

/// How an imported image's `recipe` field starts (what follows is the file it came from).
pub const IMPORTED_RECIPE: &str = "imported:";

/// Valid image and instance names.
pub fn check_name(name: &str) -> Result<(), ImageError> {
    berth_api::check_name(name).map_err(|_| ImageError::BadName(name.to_string()))
}

/// A build phase, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// debootstrap downloading and installing packages.
    Bootstrap,
    /// Writing configuration, generating the locale, cleaning.
    Configure,
    /// mkfs.ext4 -d.
    Filesystem,
    /// raw -> qcow2.
    Convert,
    /// Checksum and metadata.
    Finish,
}

/// Progress callback: (phase, one line of detail).
pub type Progress<'a> = &'a mut dyn FnMut(Phase, &str);

/// The image store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Folder holding one sub-folder per image.
    pub dir: PathBuf,
    /// debootstrap's package cache.
    pub cache: PathBuf,
}

pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(path).map_err(io("reading", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Compare version strings as `sort -V` does: runs of digits by value, the rest as text.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let digit = c.is_ascii_digit();
            match out.last_mut() {
                Some((d, t)) if *d == digit => t.push(c),
                _ => out.push((digit, c.to_string())),
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x.0, y.0) {
            (true, true) => {
                let (xs, ys) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                xs.len().cmp(&ys.len()).then_with(|| xs.cmp(ys))
            }
            _ => x.1.cmp(&y.1),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

impl Store {
    /// The store under berth's data folder.
    pub fn new(dirs: &crate::dirs::Dirs) -> Store {
        Store {
            dir: dirs.images(),
            cache: dirs.root.join("cache/debootstrap"),
        }
    }

    /// An image's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Read an image's metadata.
    pub fn get(&self, name: &str) -> Result<ImageMeta, ImageError> {
        check_name(name)?;
        let p = self.path(name).join("image.json");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io("reading", &p)(e)),
        };
        serde_json::from_str(&text).map_err(|e| ImageError::Metadata {
            path: p,
            message: e.to_string(),
        })
    }

    /// All images, by name.
    pub fn list(&self) -> Result<Vec<ImageMeta>, ImageError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("reading", &self.dir)(e)),
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(m) = self.get(&name) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remove the work folders (`.build-NAME-PID`, `.import-NAME-PID`, `.upload-ID-PID`) of
    /// processes that are gone: a build or import killed before it could clean up.
    pub fn sweep(&self) {
        crate::dirs::sweep_work(
            &self.dir,
            &[".build-", ".import-", ".upload-", ".rm-", ".old-"],
        );
    }

    /// Remove an image.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        self.get(name)?;
        let p = self.path(name);
        // Rename first so a half-removed image is never visible under its name.
        let trash = self.dir.join(format!(".rm-{name}-{}", std::process::id()));
        std::fs::rename(&p, &trash).map_err(io("removing", &p))?;
        std::fs::remove_dir_all(&trash).map_err(io("removing", &trash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_value() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("6.1.0-10-amd64", "6.1.0-9-amd64"), Greater);
        assert_eq!(version_cmp("6.1.0-9", "6.1.0-9"), Equal);
        assert_eq!(version_cmp("5.10", "6.1"), Less);
    }
}
