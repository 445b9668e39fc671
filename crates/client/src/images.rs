//! Images on a daemon: list, info, remove, build, and import, which streams an image archive
//! (a tar of the disk and its kernel, see [`berth_api::image`]) made on the fly from files on
//! this machine, so that nothing of the client's paths reaches the server.

use super::{segment, transport, Remote};
use berth_api::image::{ARCHIVE_DISK, ARCHIVE_FROM, ARCHIVE_INITRD, ARCHIVE_KERNEL};
use berth_api::{Error, Event, Image, ImageBuild, Nothing};
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How much of the archive one frame of the upload carries.
const CHUNK: usize = 1 << 20;

/// What an upload sends: files on this machine.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The disk (qcow2 without a backing file, or raw).
    pub disk: PathBuf,
    /// A kernel and its initrd, or none (the server reads them out of the disk).
    pub boot: Option<(PathBuf, PathBuf)>,
    /// What to say the disk was imported from.
    pub from: String,
}

/// Writes what it is given to the upload's body, a chunk at a time.
struct ToBody {
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
}

impl Write for ToBody {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(buf))))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload ended"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Write the archive of `u` to `out`.
fn archive(u: &Upload, out: impl Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(CHUNK, out));
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(true);
    // Holes go as zeros: the server takes plain regular members only (no GNU sparse ones).
    b.sparse(false);
    let mut add = |path: &Path, name: &str| {
        let mut f = std::fs::File::open(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
        })?;
        b.append_file(name, &mut f)
    };
    add(&u.disk, ARCHIVE_DISK)?;
    if let Some((kernel, initrd)) = &u.boot {
        add(kernel, ARCHIVE_KERNEL)?;
        add(initrd, ARCHIVE_INITRD)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(u.from.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, ARCHIVE_FROM, u.from.as_bytes())?;
    b.into_inner()?.flush()
}

impl Remote {
    /// Every image.
    pub fn images(&self) -> Result<Vec<Image>, Error> {
        self.sync("GET", "/1.0/images", None::<&()>)
    }

    /// One image.
    pub fn image(&self, name: &str) -> Result<Image, Error> {
        self.sync(
            "GET",
            &format!("/1.0/images/{}", segment(name)?),
            None::<&()>,
        )
    }

    /// Remove an image.
    pub fn image_delete(&self, name: &str) -> Result<(), Error> {
        let path = format!("/1.0/images/{}", segment(name)?);
        self.sync::<Nothing>("DELETE", &path, None::<&()>)
            .map(|_| ())
    }

    /// Build an image on the daemon's host.
    pub fn image_build(
        &self,
        r: &ImageBuild,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        r.check()?;
        let op = self.begin("POST", "/1.0/images", Some(r))?;
        self.follow(op, events)?.image_outcome()
    }

    /// Send files of this machine as image `name` and follow its import.
    pub fn image_import(
        &self,
        name: &str,
        upload: Upload,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        let path = format!("/1.0/images/{}", segment(name)?);
        // Refused before anything is sent, where the daemon would refuse it after.
        match self.image(name) {
            Ok(_) => {
                return Err(Error::conflict(format!(
                    "{} already has an image named {name:?}",
                    self.endpoint
                )))
            }
            Err(e) if e.kind == berth_api::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let boot = upload.boot.iter().flat_map(|(k, i)| [k, i]);
        for p in std::iter::once(&upload.disk).chain(boot) {
            std::fs::metadata(p)
                .map_err(|e| Error::invalid("file", format!("{}: {e}", p.display())))?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let producer = std::thread::spawn(move || {
            let failed = tx.clone();
            archive(&upload, ToBody { tx }).inspect_err(|e| {
                // The body ends in an error, so that the server does not take a short archive
                // as the whole one.
                let _ = failed.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            })
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let sent = self.rt.block_on(transport::send_body(
            &self.endpoint,
            "PUT",
            &path,
            Some("application/octet-stream"),
            StreamBody::new(stream),
        ));
        let made = producer
            .join()
            .map_err(|_| Error::internal("the upload's writer panicked"))?;
        // What the server said comes first: it may have stopped reading because it refused.
        let (status, answer) = match (sent, made) {
            (Ok(a), _) => a,
            (Err(e), Ok(())) => return Err(e),
            (Err(e), Err(w)) => {
                return Err(Error::internal(format!(
                    "{} (sending the image: {w})",
                    e.message
                )))
            }
        };
        let op = self.begun("PUT", &path, self.envelope("PUT", &path, status, &answer)?)?;
        self.follow(op, events)?.image_outcome()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_the_members_the_server_takes() {
        let d = tempfile::tempdir().unwrap();
        let (disk, k, i) = (
            d.path().join("a.qcow2"),
            d.path().join("k"),
            d.path().join("i"),
        );
        std::fs::write(&disk, vec![3u8; 3 * CHUNK + 5]).unwrap();
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&i, b"initrd").unwrap();
        let mut out = Vec::new();
        let u = Upload {
            disk: disk.clone(),
            boot: Some((k.clone(), i.clone())),
            from: "a.qcow2".into(),
        };
        archive(&u, &mut out).unwrap();
        let mut a = tar::Archive::new(out.as_slice());
        let names: Vec<(String, u64)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.size())
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("disk".to_string(), 3 * CHUNK as u64 + 5),
                ("kernel".to_string(), 6),
                ("initrd".to_string(), 6),
                ("from".to_string(), 7)
            ]
        );
    }
}
