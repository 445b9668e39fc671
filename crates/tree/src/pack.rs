//! A folder's tree into a tar stream (see the crate's docs).

use crate::{io, xattr_travels, IdShift, TreeError, Xattrs};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Write the tree at `src` into `b`, each entry named `prefix` + its path in the tree (the
/// tree's own root as `prefix` itself, a folder), parents before children, names in byte
/// order. With `shift`, owners are written as the container sees them (a host ID outside the
/// range is an error naming the file). Returns the number of entries written.
pub fn pack<W: Write>(
    b: &mut tar::Builder<W>,
    src: &Path,
    prefix: &str,
    shift: Option<IdShift>,
) -> Result<u64, TreeError> {
    let mut p = Packer {
        b,
        shift,
        links: HashMap::new(),
        count: 0,
    };
    let root = PathBuf::from(prefix.trim_end_matches('/'));
    p.entry(src, &root)?;
    Ok(p.count)
}

struct Packer<'a, W: Write> {
    b: &'a mut tar::Builder<W>,
    shift: Option<IdShift>,
    /// Files with more than one name: (device, inode) -> the name written first.
    links: HashMap<(u64, u64), PathBuf>,
    count: u64,
}

impl<W: Write> Packer<'_, W> {
    fn entry(&mut self, path: &Path, name: &Path) -> Result<(), TreeError> {
        let meta = std::fs::symlink_metadata(path).map_err(io("reading", path))?;
        let ft = meta.file_type();
        if ft.is_socket() {
            return Ok(());
        }
        let shown = || path.display().to_string();
        let (uid, gid) = match &self.shift {
            Some(s) => (s.inside(meta.uid(), &shown)?, s.inside(meta.gid(), &shown)?),
            None => (meta.uid(), meta.gid()),
        };
        let mut h = tar::Header::new_gnu();
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mode(meta.mode() & 0o7777);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        let send = io("sending", path);
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                self.count += 1;
                let first = first.clone();
                return self.b.append_link(&mut h, name, first).map_err(send);
            }
            self.links.insert(key, name.to_path_buf());
        }
        let xattrs = xattrs(path)?;
        if !xattrs.is_empty() {
            let pax: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| {
                    (
                        format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
                        v.as_slice(),
                    )
                })
                .collect();
            self.b
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(io("sending", path))?;
        }
        self.count += 1;
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(io("reading", path))?;
            h.set_entry_type(tar::EntryType::Symlink);
            return self.b.append_link(&mut h, name, target).map_err(send);
        }
        if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            let file = std::fs::File::open(path).map_err(io("reading", path))?;
            // A file that changes size while it is read would misalign the stream: exactly
            // the size in the header is sent, or the packing fails.
            let mut exact = Exact {
                inner: file,
                left: meta.len(),
            };
            self.b.append_data(&mut h, name, &mut exact).map_err(send)?;
            if exact.left != 0 {
                return Err(TreeError::Invalid(format!(
                    "{}: it shrank while it was read",
                    path.display()
                )));
            }
            return Ok(());
        }
        if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let rdev = meta.rdev();
            let maj = rustix::fs::major(rdev);
            let min = rustix::fs::minor(rdev);
            h.set_device_major(maj).map_err(io("sending", path))?;
            h.set_device_minor(min).map_err(io("sending", path))?;
            return self
                .b
                .append_data(&mut h, name, std::io::empty())
                .map_err(send);
        }
        if ft.is_fifo() {
            h.set_entry_type(tar::EntryType::Fifo);
            h.set_device_major(0).map_err(io("sending", path))?;
            h.set_device_minor(0).map_err(io("sending", path))?;
            return self
                .b
                .append_data(&mut h, name, std::io::empty())
                .map_err(send);
        }
        // A folder: itself, then what it holds.
        h.set_entry_type(tar::EntryType::Directory);
        let dir_name = if name.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            name.to_path_buf()
        };
        self.b
            .append_data(&mut h, &dir_name, std::io::empty())
            .map_err(send)?;
        let mut names: Vec<OsString> = std::fs::read_dir(path)
            .map_err(io("reading", path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io("reading", path))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            self.entry(&path.join(&n), &name.join(&n))?;
        }
        Ok(())
    }
}

/// Reads at most `left` bytes of `inner`.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let cap = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..cap])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The xattrs of `path` (not followed) that travel, in name order.
fn xattrs(path: &Path) -> Result<Xattrs, TreeError> {
    let err = |e: rustix::io::Errno| io("reading the xattrs of", path)(e.into());
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !xattr_travels(name) {
            continue;
        }
        let cname = std::ffi::CString::new(name).expect("split at NUL");
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value[..]) {
                Ok(n) => break Some(n),
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                // Removed since it was listed.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(err(e)),
            }
        };
        if let Some(n) = n {
            value.truncate(n);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}
