//! Opening images: the top-level format (given, or detected from the magic number), the strict
//! qcow2 validation, and the backing chain opened layer by layer through the policy gate and
//! handed to imago with every implicit open denied.

use crate::policy::BackingPolicy;
use crate::qcow2::{FormatError, Header, Qcow2File};
use crate::{Error, Result};
use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};
use std::fmt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Deepest backing chain berth opens.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// An image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// A plain disk image.
    Raw,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        })
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        match s {
            "qcow2" => Ok(Format::Qcow2),
            "raw" => Ok(Format::Raw),
            other => Err(Error::UnknownFormat(other.to_string())),
        }
    }
}

/// Detect the format of a top-level image the user named: qcow2 by its magic, raw otherwise.
/// Never used for backing files.
pub fn probe_format(path: &Path) -> Result<Format> {
    check_kind(path)?;
    let f = std::fs::File::open(path).map_err(Error::io("opening", path))?;
    let mut magic = [0u8; 4];
    match f.read_exact_at(&mut magic, 0) {
        Ok(()) if u32::from_be_bytes(magic) == crate::qcow2::header::MAGIC => Ok(Format::Qcow2),
        Ok(()) => Ok(Format::Raw),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Format::Raw),
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}

/// Refuse, before opening it, a path that is neither a regular file nor a block device: a FIFO
/// would block the open, a character device never ends.
pub fn check_kind(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let ft = std::fs::metadata(path)
        .map_err(Error::io("opening", path))?
        .file_type();
    if ft.is_file() || ft.is_block_device() {
        return Ok(());
    }
    Err(Error::NotAnImage {
        path: path.to_path_buf(),
        kind: berth_files::kind_name(ft),
    })
}

/// One image of a chain.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Path as opened (canonical for backing files).
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The qcow2 header, for qcow2 layers.
    pub header: Option<Header>,
    /// Virtual size in bytes.
    pub size: u64,
}

/// Walk a chain's metadata from `top` downwards, through the policy, without opening any data.
pub fn walk_chain(top: &Path, format: Format, policy: &BackingPolicy) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut path = top.to_path_buf();
    let mut fmt = format;
    loop {
        if layers.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::ChainTooDeep {
                image: top.to_path_buf(),
                max: MAX_CHAIN_DEPTH,
            });
        }
        let canon = std::fs::canonicalize(&path).map_err(Error::io("opening", &path))?;
        check_kind(&canon)?;
        if seen.contains(&canon) {
            return Err(Error::BackingLoop {
                image: top.to_path_buf(),
                repeated: canon,
            });
        }
        seen.push(canon);
        match fmt {
            Format::Raw => {
                let len = std::fs::metadata(&path)
                    .map_err(Error::io("reading", &path))?
                    .len();
                layers.push(Layer {
                    path,
                    format: Format::Raw,
                    header: None,
                    size: len,
                });
                return Ok(layers);
            }
            Format::Qcow2 => {
                let q = Qcow2File::open(&path, false).map_err(Error::format(&path))?;
                crate::qcow2::overlap::verify(&q).map_err(Error::format(&path))?;
                let header = q.header;
                let next = match &header.backing_file {
                    None => None,
                    Some(name) => {
                        let resolved = policy.resolve(top, &path, name)?;
                        let bfmt = match header.backing_format.as_deref() {
                            None | Some("") => {
                                return Err(Error::BackingFormatMissing {
                                    image: path.clone(),
                                    name: name.clone(),
                                })
                            }
                            Some(f) => f.parse::<Format>().map_err(|_| Error::Format {
                                path: path.clone(),
                                source: FormatError::Unsupported(format!(
                                    "backing format {f:?} (berth opens qcow2 and raw backing files)"
                                )),
                            })?,
                        };
                        Some((resolved, bfmt))
                    }
                };
                let size = header.size;
                layers.push(Layer {
                    path,
                    format: Format::Qcow2,
                    header: Some(header),
                    size,
                });
                match next {
                    None => return Ok(layers),
                    Some((p, f)) => {
                        path = p;
                        fmt = f;
                    }
                }
            }
        }
    }
}

/// An opened image with its whole backing chain.
pub struct Chain {
    /// The layers, top first.
    pub layers: Vec<Layer>,
    /// imago's access to the top layer (which owns the rest).
    pub access: FormatAccess<ImagoFile>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("layers", &self.layers)
            .finish()
    }
}

impl Chain {
    /// Open `path` (format given or probed) and its backing chain; only the top is writable.
    pub fn open(
        path: &Path,
        format: Option<Format>,
        writable: bool,
        policy: &BackingPolicy,
    ) -> Result<Chain> {
        let format = match format {
            Some(f) => f,
            None => probe_format(path)?,
        };
        let layers = walk_chain(path, format, policy)?;
        let mut below: Option<FormatAccess<ImagoFile>> = None;
        for (i, layer) in layers.iter().enumerate().rev() {
            let w = writable && i == 0;
            below = Some(open_layer(layer, w, below.take())?);
        }
        let access = below.ok_or_else(|| Error::Invalid("empty chain".into()))?;
        Ok(Chain { layers, access })
    }

    /// Guest-visible size.
    pub fn size(&self) -> u64 {
        self.access.size()
    }

    /// The top layer's path.
    pub fn path(&self) -> &Path {
        &self.layers[0].path
    }

    /// Read `buf.len()` bytes at `offset` (zeroes past the end).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.access
            .read(buf, offset)
            .map_err(Error::io("reading", self.path()))
    }

    /// Flush caches to the file and the disk.
    pub fn flush(&self) -> Result<()> {
        self.access
            .flush()
            .map_err(Error::io("flushing", self.path()))?;
        self.access
            .sync()
            .map_err(Error::io("syncing", self.path()))
    }
}

fn open_layer(
    layer: &Layer,
    writable: bool,
    backing: Option<FormatAccess<ImagoFile>>,
) -> Result<FormatAccess<ImagoFile>> {
    let opts = StorageOpenOptions::new()
        .filename(&layer.path)
        .write(writable);
    let storage = ImagoFile::open(opts).map_err(Error::io("opening", &layer.path))?;
    match layer.format {
        Format::Raw => {
            let raw = Raw::builder(storage)
                .write(writable)
                .open(DenyImplicitOpenGate::default())
                .map_err(Error::io("opening", &layer.path))?;
            Ok(FormatAccess::new(raw))
        }
        Format::Qcow2 => {
            let q = Qcow2::<ImagoFile>::builder(storage)
                .write(writable)
                .backing(backing)
                .data_file(None)
                .open(DenyImplicitOpenGate::default())
                .map_err(Error::io("opening", &layer.path))?;
            Ok(FormatAccess::new(q))
        }
    }
}

impl crate::qcow2::safe_write::BackingRead for Chain {
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::result::Result<(), FormatError> {
        let size = self.size();
        let n = size.saturating_sub(off).min(buf.len() as u64) as usize;
        if n > 0 {
            self.access
                .read(&mut buf[..n], off)
                .map_err(FormatError::io(format!(
                    "reading backing file {}",
                    self.path().display()
                )))?;
        }
        buf[n..].fill(0);
        Ok(())
    }
}

/// Open a qcow2 image for crash-safe guest writes, with its backing chain (through the policy)
/// for partial-cluster copy-on-write.
pub fn safe_writer(
    path: &Path,
    policy: &BackingPolicy,
) -> Result<crate::qcow2::safe_write::SafeWriter<Chain>> {
    let layers = walk_chain(path, Format::Qcow2, policy)?;
    let backing = match layers.get(1) {
        Some(b) => Some(Chain::open(&b.path, Some(b.format), false, policy)?),
        None => None,
    };
    let q = Qcow2File::open(path, true).map_err(Error::format(path))?;
    let m = crate::qcow2::refcount::Qcow2Mut::new(q).map_err(Error::format(path))?;
    Ok(crate::qcow2::safe_write::SafeWriter::new(m, backing))
}
