//! Images on a daemon: list, info, remove, build; import, which streams an image archive (a tar
//! of the disk and its kernel, see [`berth_api::image`]) made on the fly from files on this
//! machine, so that nothing of the client's paths reaches the server; and export and send, the
//! two ends of an image's copy from one host to another (`berth image copy`).

use super::{reader_of, segment, transport, Remote};
use berth_api::image::{ARCHIVE_DISK, ARCHIVE_FROM, ARCHIVE_INITRD, ARCHIVE_KERNEL};
use berth_api::{Error, Event, Image, ImageBuild, Nothing};
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use std::io::{Read, Write};
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
pub(crate) struct ToBody {
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
        let boot = upload.boot.iter().flat_map(|(k, i)| [k, i]);
        for p in std::iter::once(&upload.disk).chain(boot) {
            std::fs::metadata(p)
                .map_err(|e| Error::invalid("file", format!("{}: {e}", p.display())))?;
        }
        self.upload(name, move |out| archive(&upload, out), events)
    }

    /// Send as image `name` an image another host exported ([`Remote::image_export`]), read
    /// from `input` as it comes, and follow its install.
    pub fn image_send(
        &self,
        name: &str,
        input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        self.image_absent(name)?;
        self.send_stream(&format!("/1.0/images/{}", segment(name)?), input, events)?
            .image_outcome()
    }

    /// Refused before anything is sent, where the daemon would refuse it after: a name taken.
    fn image_absent(&self, name: &str) -> Result<(), Error> {
        match self.image(name) {
            Ok(_) => Err(Error::conflict(format!(
                "{} already has an image named {name:?}",
                self.endpoint
            ))),
            Err(e) if e.kind == berth_api::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Image `name` as it travels to another host: a stream of its transfer archive (its
    /// `image.json`, then its files), read from this daemon as the reader takes it. A failure
    /// on the way is the stream's last read.
    pub fn image_export(&self, name: &str) -> Result<Box<dyn Read + Send>, Error> {
        let path = format!("/1.0/images/{}/export", segment(name)?);
        // Refused here, where a missing image would otherwise show as a broken stream.
        self.image(name)?;
        Ok(self.download_stream(path))
    }

    /// PUT to `/1.0/images/NAME` the archive `produce` writes, and follow the operation the
    /// daemon begins with it.
    fn upload(
        &self,
        name: &str,
        produce: impl FnOnce(ToBody) -> std::io::Result<()> + Send + 'static,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        let path = format!("/1.0/images/{}", segment(name)?);
        self.image_absent(name)?;
        self.put_stream(&path, produce, events)?.image_outcome()
    }

    /// PUT to `path` the body `produce` writes on a thread of its own, and follow the operation
    /// the daemon begins with it to its end.
    pub(crate) fn put_stream(
        &self,
        path: &str,
        produce: impl FnOnce(ToBody) -> std::io::Result<()> + Send + 'static,
        events: &mut dyn FnMut(Event),
    ) -> Result<berth_api::Operation, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let producer = std::thread::spawn(move || {
            let failed = tx.clone();
            produce(ToBody { tx }).inspect_err(|e| {
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
            path,
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
                    "{} (sending {path}: {w})",
                    e.message
                )))
            }
        };
        let op = self.begun("PUT", path, self.envelope("PUT", path, status, &answer)?)?;
        self.follow(op, events)
    }

    /// Stream `input` to `path` as [`Remote::image_send`] does.
    pub(crate) fn send_stream(
        &self,
        path: &str,
        mut input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<berth_api::Operation, Error> {
        self.put_stream(
            path,
            move |out| {
                let mut out = std::io::BufWriter::with_capacity(CHUNK, out);
                std::io::copy(&mut input, &mut out)?;
                out.flush()
            },
            events,
        )
    }

    /// Download `path` as a stream read as the reader takes it (what [`Remote::image_export`]
    /// does); a failure on the way is the stream's last read.
    pub(crate) fn download_stream(&self, path: String) -> Box<dyn Read + Send> {
        let endpoint = self.endpoint.clone();
        reader_of(move |out| {
            let remote = Remote::new(endpoint)?;
            match remote
                .rt
                .block_on(transport::download(&remote.endpoint, &path, out))?
            {
                None => Ok(()),
                Some((status, answer)) => remote
                    .envelope::<Nothing>("GET", &path, status, &answer)?
                    .into_result()
                    .map(|_| ()),
            }
        })
    }
}
