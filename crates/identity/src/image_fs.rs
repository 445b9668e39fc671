//! Read files out of an ext4 file system inside a raw or qcow2 disk image, without mounting:
//! berth's disk engine provides the guest bytes (through its backing-file policy), `ext4-view`
//! reads the file system. The file system may fill the whole disk (berth's own images) or sit
//! in an MBR or GPT partition (typical cloud images).

use berth_disk::{BackingPolicy, Chain, Format};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a file could not be read from an image.
#[derive(Debug, Error)]
pub enum ImageFsError {
    /// The disk engine refused or failed.
    #[error(transparent)]
    Disk(#[from] berth_disk::Error),
    /// No ext4 file system was found.
    #[error("no ext4 file system found in {} (whole disk or MBR/GPT partitions)", .0.display())]
    NoExt4(PathBuf),
    /// ext4-view failed.
    #[error("reading the ext4 file system in {}: {message}", path.display())]
    Ext4 {
        /// The image.
        path: PathBuf,
        /// ext4-view's message.
        message: String,
    },
}

struct ChainReader {
    chain: std::sync::Arc<Chain>,
    base: u64,
}

impl ext4_view::Ext4Read for ChainReader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let off = self.base.checked_add(start).ok_or("offset overflow")?;
        if off
            .checked_add(dst.len() as u64)
            .is_none_or(|e| e > self.chain.size())
        {
            return Err("read past the end of the disk".into());
        }
        self.chain
            .read(dst, off)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    }
}

fn read_at(chain: &Chain, off: u64, len: usize) -> Result<Vec<u8>, berth_disk::Error> {
    let mut b = vec![0u8; len];
    if off.saturating_add(len as u64) <= chain.size() {
        chain.read(&mut b, off)?;
    }
    Ok(b)
}

fn has_ext4(chain: &Chain, base: u64) -> Result<bool, berth_disk::Error> {
    let sb = read_at(chain, base + 1024, 1024)?;
    Ok(u16::from_le_bytes([sb[56], sb[57]]) == 0xef53)
}

/// Byte offsets of partitions from an MBR or GPT partition table.
fn partitions(chain: &Chain) -> Result<Vec<u64>, berth_disk::Error> {
    let mbr = read_at(chain, 0, 512)?;
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let gpt = read_at(chain, 512, 512)?;
    if &gpt[0..8] == b"EFI PART" {
        let entries_lba = u64::from_le_bytes(gpt[72..80].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(gpt[80..84].try_into().unwrap_or_default()).min(256);
        let size = u32::from_le_bytes(gpt[84..88].try_into().unwrap_or_default()).clamp(128, 4096);
        let table = read_at(
            chain,
            entries_lba.saturating_mul(512),
            (count * size) as usize,
        )?;
        for e in table.chunks_exact(size as usize) {
            if e[0..16].iter().any(|&b| b != 0) {
                out.push(
                    u64::from_le_bytes(e[32..40].try_into().unwrap_or_default())
                        .saturating_mul(512),
                );
            }
        }
    } else {
        for i in 0..4 {
            let e = &mbr[446 + i * 16..462 + i * 16];
            let start = u32::from_le_bytes(e[8..12].try_into().unwrap_or_default());
            if e[4] != 0 && start != 0 {
                out.push(u64::from(start) * 512);
            }
        }
    }
    Ok(out)
}

/// An ext4 file system opened inside a disk image.
pub struct ImageFs {
    fs: ext4_view::Ext4,
    path: PathBuf,
    base: u64,
}

impl std::fmt::Debug for ImageFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFs").field("path", &self.path).finish()
    }
}

impl ImageFs {
    /// Open the first ext4 file system of the image at `path`.
    pub fn open(
        path: &Path,
        format: Option<Format>,
        policy: &BackingPolicy,
    ) -> Result<ImageFs, ImageFsError> {
        let chain = std::sync::Arc::new(Chain::open(path, format, false, policy)?);
        let mut bases = vec![0u64];
        bases.extend(partitions(&chain)?);
        for base in bases {
            if has_ext4(&chain, base)? {
                let reader = ChainReader {
                    chain: chain.clone(),
                    base,
                };
                let fs =
                    ext4_view::Ext4::load(Box::new(reader)).map_err(|e| ImageFsError::Ext4 {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?;
                return Ok(ImageFs {
                    fs,
                    path: path.to_path_buf(),
                    base,
                });
            }
        }
        Err(ImageFsError::NoExt4(path.to_path_buf()))
    }

    /// Read a file (symlinks followed inside the file system); `None` if it does not exist.
    pub fn read(&self, guest: &str) -> Result<Option<Vec<u8>>, ImageFsError> {
        match self.fs.read(guest) {
            Ok(b) => Ok(Some(b)),
            Err(ext4_view::Ext4Error::NotFound) | Err(ext4_view::Ext4Error::IsADirectory) => {
                Ok(None)
            }
            Err(e) => Err(ImageFsError::Ext4 {
                path: self.path.clone(),
                message: format!("{guest}: {e}"),
            }),
        }
    }

    /// Names in a folder (symlinks followed); `None` if it does not exist.
    pub fn list(&self, guest: &str) -> Result<Option<Vec<String>>, ImageFsError> {
        let rd = match self.fs.read_dir(guest) {
            Ok(rd) => rd,
            Err(ext4_view::Ext4Error::NotFound) | Err(ext4_view::Ext4Error::NotADirectory) => {
                return Ok(None)
            }
            Err(e) => {
                return Err(ImageFsError::Ext4 {
                    path: self.path.clone(),
                    message: format!("{guest}: {e}"),
                })
            }
        };
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| ImageFsError::Ext4 {
                path: self.path.clone(),
                message: format!("{guest}: {e}"),
            })?;
            if let Ok(n) = entry.file_name().as_str() {
                if n != "." && n != ".." {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(Some(names))
    }

    /// The file system's label, if it has one.
    pub fn label(&self) -> Option<String> {
        self.fs
            .label()
            .to_str()
            .ok()
            .map(|s| s.trim_end_matches('\0').to_string())
            .filter(|s| !s.is_empty())
    }

    /// The file system's UUID.
    pub fn uuid(&self) -> String {
        self.fs.uuid().to_string()
    }

    /// Whether the file system fills the whole disk (no partition table in front of it).
    pub fn whole_disk(&self) -> bool {
        self.base == 0
    }

    /// The machine-id, as `dbus-uuidgen --get` would find it in this file system.
    pub fn machine_id(&self) -> Result<crate::machine_id::Found, ImageFsError> {
        crate::machine_id::read_with(|p| self.read(p))
    }
}
