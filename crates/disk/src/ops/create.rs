//! `disk create`: thin or preallocated qcow2 (through imago) and sparse or preallocated raw.

use super::{check_overwrite, start_output};
use crate::image::{Chain, Format};
use crate::policy::BackingPolicy;
use crate::{Error, Result};
use imago::file::File as ImagoFile;
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};
use std::path::PathBuf;

/// How much to allocate up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing: thin qcow2, sparse raw.
    #[default]
    Off,
    /// qcow2 metadata for every cluster (no data written).
    Metadata,
    /// Reserve the space with fallocate.
    Falloc,
    /// Write zeroes to everything.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Preallocation> {
        Ok(match s {
            "off" => Preallocation::Off,
            "metadata" => Preallocation::Metadata,
            "falloc" => Preallocation::Falloc,
            "full" => Preallocation::Full,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown preallocation {other:?} (expected off, metadata, falloc or full)"
                )))
            }
        })
    }
}

/// Options for [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The new image.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Virtual size; taken from the backing file when `None`.
    pub size: Option<u64>,
    /// Backing file name, stored as given and resolved relative to the image's folder.
    pub backing: Option<String>,
    /// Format of the backing file (required with `backing`).
    pub backing_format: Option<Format>,
    /// Preallocation.
    pub preallocation: Preallocation,
    /// qcow2 cluster size (512 B to 2 MiB, a power of two).
    pub cluster_size: Option<u64>,
    /// Overwrite an existing file.
    pub force: bool,
}

impl CreateOptions {
    /// A thin image (or sparse raw file) of `size` bytes at `path`, default cluster size, no
    /// backing file; change fields for the rest.
    pub fn new(path: impl Into<PathBuf>, format: Format, size: Option<u64>) -> CreateOptions {
        CreateOptions {
            path: path.into(),
            format,
            size,
            backing: None,
            backing_format: None,
            preallocation: Preallocation::Off,
            cluster_size: None,
            force: false,
        }
    }
}

/// Create an image. The file appears complete or not at all.
pub fn create(o: &CreateOptions, policy: &BackingPolicy) -> Result<u64> {
    check_overwrite(&o.path, o.force)?;
    let mut size = o.size;
    if let Some(name) = &o.backing {
        if o.format != Format::Qcow2 {
            return Err(Error::Invalid(
                "only qcow2 images can have a backing file".into(),
            ));
        }
        let fmt = o.backing_format.ok_or_else(|| {
            Error::Invalid(
                "--backing-format is required with --backing (berth records it and never probes)"
                    .into(),
            )
        })?;
        let resolved = policy.resolve(&o.path, &o.path, name)?;
        let backing = Chain::open(&resolved, Some(fmt), false, policy)?;
        if size.is_none() {
            size = Some(backing.size());
        }
    } else if o.backing_format.is_some() {
        return Err(Error::Invalid("--backing-format needs --backing".into()));
    }
    let size = size.ok_or_else(|| {
        Error::Invalid("a size is required (or a backing file to take it from)".into())
    })?;
    let cluster_size = o.cluster_size.unwrap_or(65536);
    if o.format == Format::Qcow2
        && (!cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&cluster_size))
    {
        return Err(Error::Invalid(format!(
            "invalid cluster size {cluster_size}: must be a power of two from 512 to 2M"
        )));
    }
    if o.format == Format::Raw && o.cluster_size.is_some() {
        return Err(Error::Invalid(
            "--cluster-size applies to qcow2 only".into(),
        ));
    }
    if o.format == Format::Raw && o.preallocation == Preallocation::Metadata {
        return Err(Error::Invalid(
            "preallocation 'metadata' applies to qcow2 only (raw takes off, falloc or full)".into(),
        ));
    }
    if o.format == Format::Raw && size > i64::MAX as u64 {
        return Err(Error::Invalid(format!(
            "size {size} is larger than any file can be (at most {} bytes, 8E - 1)",
            i64::MAX
        )));
    }
    if o.format == Format::Qcow2 {
        let max = crate::qcow2::header::MAX_L1_BYTES / 8 * (cluster_size / 8) * cluster_size;
        if size > max {
            return Err(Error::Invalid(format!(
                "size {size} exceeds the qcow2 limit of {max} bytes for {cluster_size}-byte clusters"
            )));
        }
    }
    let out = start_output(&o.path, o.force)?;
    let tmp = out.temp().to_path_buf();
    match o.format {
        Format::Raw => create_raw(out.file(), &o.path, size, o.preallocation)?,
        Format::Qcow2 => {
            let storage =
                ImagoFile::create_open(StorageCreateOptions::new().filename(&tmp).overwrite(true))
                    .map_err(Error::io("creating", &tmp))?;
            let mode = match o.preallocation {
                Preallocation::Off => PreallocateMode::None,
                Preallocation::Metadata => PreallocateMode::FormatAllocate,
                Preallocation::Falloc => PreallocateMode::FullAllocate,
                Preallocation::Full => PreallocateMode::WriteData,
            };
            let mut b = Qcow2::<ImagoFile>::create_builder(storage)
                .size(size)
                .preallocate(mode)
                .cluster_size(cluster_size as usize);
            if let (Some(name), Some(fmt)) = (&o.backing, o.backing_format) {
                b = b.backing(name.clone(), fmt.to_string());
            }
            b.create().map_err(Error::io("creating", &o.path))?;
        }
    }
    out.commit()?;
    Ok(size)
}

fn create_raw(
    f: &std::fs::File,
    path: &std::path::Path,
    size: u64,
    prealloc: Preallocation,
) -> Result<()> {
    match prealloc {
        Preallocation::Off | Preallocation::Metadata => {
            f.set_len(size).map_err(Error::io("sizing", path))?;
        }
        Preallocation::Falloc => {
            if size > 0 {
                rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, size)
                    .map_err(|e| Error::io("preallocating", path)(e.into()))?;
            }
        }
        Preallocation::Full => {
            use std::io::Write;
            let zeros = vec![0u8; 1 << 20];
            let mut w = std::io::BufWriter::new(f);
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..n])
                    .map_err(Error::io("writing", path))?;
                left -= n as u64;
            }
            w.flush().map_err(Error::io("writing", path))?;
        }
    }
    Ok(())
}
