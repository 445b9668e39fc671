//! The executor's image requests: list, info, build, import (of a disk, with its kernel or
//! not), export and install (an image as it travels between hosts) and delete. An image's name has a lock of its own (`image@NAME`: no instance name has
//! an `@`), so that a build, an import and a delete of one name never run at once; an image is
//! not removed while instances are made from it (their disks and layers sit on it).

use super::{image_kind, state_error, Executor, Progress};
use crate::images::archive::{self, Received};
use crate::images::{self, transfer, ImageError, ImageMeta, Phase, Store, IMPORTED_RECIPE};
use crate::locks;
use berth_api::{Error, ErrorKind, Event, EventKind, Image, ImageBuild, ImageSource};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The mirror a build uses when the request names none.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// What an import reads: files on this host (the CLI's own, or an upload the daemon received).
#[derive(Debug, Clone, Default)]
pub struct ImportFiles {
    /// The disk (qcow2 or raw).
    pub disk: PathBuf,
    /// A kernel for direct boot, with `initrd`; none reads the newest out of the disk.
    pub kernel: Option<PathBuf>,
    /// Its initrd.
    pub initrd: Option<PathBuf>,
    /// What the image says it was imported from.
    pub from: String,
    /// Folders the disk's backing files may be in, besides the disk's own folder.
    pub allow: Vec<PathBuf>,
    /// Whether the disk may also sit on images in the store (not for an upload: a client's
    /// disk may name only what it sent).
    pub store_backing: bool,
}

fn image_error(e: ImageError) -> Error {
    match &e {
        ImageError::UnknownRecipe(_) => Error::from_chain(ErrorKind::Invalid, &e).on("recipe"),
        ImageError::HalfBoot => Error::from_chain(ErrorKind::Invalid, &e).on("kernel"),
        _ => Error::from_chain(image_kind(&e), &e),
    }
}

/// An import's disk that berth cannot use is the request's fault, not the host's.
fn import_error(e: ImageError) -> Error {
    match &e {
        ImageError::Tool { .. } | ImageError::Disk(_) => {
            Error::from_chain(ErrorKind::Invalid, &e).on("disk")
        }
        _ => image_error(e),
    }
}

/// The API's view of an image's metadata.
fn image_of(store: &Store, m: ImageMeta, used_by: Vec<String>) -> Image {
    let stored_bytes =
        std::fs::metadata(store.path(&m.name).join(&m.disk)).map_or(0, |md| md.len());
    let source = match m.recipe.strip_prefix(IMPORTED_RECIPE) {
        Some(from) => ImageSource::Imported {
            from: from.to_string(),
        },
        None => ImageSource::Built { recipe: m.recipe },
    };
    Image {
        name: m.name,
        os: m.os,
        release: m.release,
        arch: m.arch,
        size: m.size,
        stored_bytes,
        fingerprint: m.sha256,
        created_at: m.built_at as i64,
        kernel: m.kernel_cloud.map(|k| k.version),
        source,
        used_by,
    }
}

impl Executor {
    pub(super) fn image_store(&self) -> Store {
        Store::new(&self.dirs)
    }

    /// The instances made from image `name`.
    fn image_users(&self, name: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .store
            .instances()
            .map_err(state_error)?
            .into_iter()
            .filter(|r| r.image == name)
            .map(|r| r.name)
            .collect())
    }

    /// Every image, by name.
    pub fn images(&self) -> Result<Vec<Image>, Error> {
        let store = self.image_store();
        let rows = self.store.instances().map_err(state_error)?;
        let metas = store.list().map_err(image_error)?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let users = rows
                    .iter()
                    .filter(|r| r.image == m.name)
                    .map(|r| r.name.clone())
                    .collect();
                image_of(&store, m, users)
            })
            .collect())
    }

    /// One image.
    pub fn image(&self, name: &str) -> Result<Image, Error> {
        berth_api::check_name(name)?;
        let store = self.image_store();
        let m = store.get(name).map_err(image_error)?;
        Ok(image_of(&store, m, self.image_users(name)?))
    }

    /// Remove an image no instance is made from.
    pub fn image_delete(&self, name: &str) -> Result<(), Error> {
        berth_api::check_name(name)?;
        let _lock = locks::acquire(&self.dirs, &format!("image@{name}"), "remove image")?;
        let users = self.image_users(name)?;
        if !users.is_empty() {
            return Err(Error::conflict(format!(
                "image {name} is in use by {}; delete them first (nothing was removed)",
                users.join(", ")
            )));
        }
        self.image_store().remove(name).map_err(image_error)
    }

    /// Build an image from its recipe (at once when the same recipe built it already).
    pub fn image_build(
        &self,
        r: &ImageBuild,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        r.check()?;
        let name = r.image_name().to_string();
        let _lock = locks::acquire(&self.dirs, &format!("image@{name}"), "build image")?;
        let mirror = r
            .mirror
            .clone()
            .or_else(|| {
                std::env::var("BERTH_DEBIAN_MIRROR")
                    .ok()
                    .filter(|m| !m.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_MIRROR.into());
        let mut p = Progress {
            name: name.clone(),
            started: Instant::now(),
            sink: events,
        };
        let store = self.image_store();
        store.sweep();
        let size = r.size.unwrap_or(berth_api::image::IMAGE_SIZE_DEFAULT);
        let (meta, cached) = store
            .build(&r.recipe, &name, size, &mirror, &mut |phase, line| {
                let step = match phase {
                    Phase::Bootstrap => "debootstrap",
                    Phase::Configure => "configure",
                    Phase::Filesystem => "filesystem",
                    Phase::Convert => "qcow2",
                    Phase::Finish => "finish",
                };
                p.emit(EventKind::Progress, &format!("{step}: {line}"));
            })
            .map_err(image_error)?;
        p.emit(
            EventKind::Lifecycle,
            if cached {
                "image up to date"
            } else {
                "image built"
            },
        );
        Ok(image_of(&store, meta, self.image_users(&name)?))
    }

    /// Import a disk as image `name`.
    pub fn image_import(
        &self,
        name: &str,
        files: &ImportFiles,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        images::check_name(name).map_err(image_error)?;
        let _lock = locks::acquire(&self.dirs, &format!("image@{name}"), "import image")?;
        let store = self.image_store();
        store.sweep();
        let mut p = Progress {
            name: name.to_string(),
            started: Instant::now(),
            sink: events,
        };
        p.emit(
            EventKind::Progress,
            "reading the disk and converting it to qcow2",
        );
        let policy = berth_disk::BackingPolicy::new(
            files.store_backing.then(|| store.dir.clone()),
            files.allow.clone(),
        );
        let meta = store
            .import(
                &files.disk,
                &files.from,
                name,
                files.kernel.as_deref(),
                files.initrd.as_deref(),
                &policy,
            )
            .map_err(import_error)?;
        p.emit(EventKind::Lifecycle, "image imported");
        Ok(image_of(&store, meta, Vec::new()))
    }

    /// Write image `name` as it travels between hosts (`berth image copy`) to `out`.
    pub fn image_export(&self, name: &str, out: &mut dyn std::io::Write) -> Result<(), Error> {
        images::check_name(name).map_err(image_error)?;
        let _lock = locks::acquire(&self.dirs, &format!("image@{name}"), "export image")?;
        self.image_store().export(name, out).map_err(image_error)
    }

    /// Take an image archive from `input` as image `name` (see [`archive::receive`]): what a
    /// copy to this host sends when the CLI works in-process.
    pub fn image_receive(
        &self,
        name: &str,
        input: &mut dyn std::io::Read,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        images::check_name(name).map_err(image_error)?;
        let store = self.image_store();
        if store.path(name).exists() {
            return Err(image_error(ImageError::Exists(name.to_string())));
        }
        std::fs::create_dir_all(&store.dir)
            .map_err(|e| Error::internal(format!("making {}: {e}", store.dir.display())))?;
        let upload = crate::dirs::work_dir(&store.dir, ".upload");
        let from = match archive::receive(input, &upload, archive::UPLOAD_MAX)? {
            Received::Disk(files) => files.from,
            Received::Image => String::new(),
        };
        self.image_upload(name, &upload, from, events)
    }

    /// Take the archive received into `upload` as image `name`: an exported image is installed
    /// as it is, a disk imported. The folder goes either way.
    pub fn image_upload(
        &self,
        name: &str,
        upload: &Path,
        from: String,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        let r = if upload.join(transfer::META).exists() {
            self.image_install(name, upload, events)
        } else {
            self.image_import(name, &archive::files_in(upload, from), events)
        };
        let _ = std::fs::remove_dir_all(upload);
        r
    }

    fn image_install(
        &self,
        name: &str,
        work: &Path,
        events: &mut dyn FnMut(Event),
    ) -> Result<Image, Error> {
        images::check_name(name).map_err(image_error)?;
        let _lock = locks::acquire(&self.dirs, &format!("image@{name}"), "install image")?;
        let store = self.image_store();
        let mut p = Progress {
            name: name.to_string(),
            started: Instant::now(),
            sink: events,
        };
        p.emit(EventKind::Progress, "checking the disk's fingerprint");
        let meta = store.install(work, name).map_err(import_error)?;
        p.emit(EventKind::Lifecycle, "image installed");
        Ok(image_of(&store, meta, Vec::new()))
    }
}
