//! An image as it travels between hosts (`berth image copy`): an uncompressed tar of its
//! `image.json` first, then the files it names (the qcow2 disk, each kernel and initrd), byte for
//! byte, so that the image keeps its fingerprint (the disk's SHA-256) on the other host and a
//! second copy of the same image is recognised and not sent.
//!
//! The receiving side takes the metadata as untrusted input: every field that reaches a file
//! name or a kernel command line is checked, the disk must be a standalone qcow2 of the size
//! and fingerprint the metadata states, and the image is installed whole (a folder renamed into
//! place) or not at all.

use super::*;
use berth_disk::{BackingPolicy, Format};
use std::io::Write;

/// The metadata member, always first in a transfer archive.
pub const META: &str = "image.json";

/// The longest `image.json` a transfer may carry.
pub const META_MAX: u64 = 64 << 10;

/// The files of an image besides its metadata: the disk, then each kernel and initrd once.
pub fn files_of(meta: &ImageMeta) -> Vec<String> {
    let mut out = vec![meta.disk.clone()];
    for b in [&meta.kernel_cloud, &meta.kernel_generic]
        .into_iter()
        .flatten()
    {
        for f in [&b.kernel, &b.initrd] {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
    }
    out
}

fn invalid(field: &str, detail: String) -> ImageError {
    ImageError::Metadata {
        path: PathBuf::from(META),
        message: format!("{field}: {detail}"),
    }
}

/// A file of the image: a plain name in its folder.
pub(crate) fn check_file(field: &str, name: &str) -> Result<(), ImageError> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if plain && name != META {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} is not a file name an image may use"),
        ))
    }
}

/// Free text shown to users: short, one line.
fn check_text(field: &str, v: &str) -> Result<(), ImageError> {
    if v.len() <= 4096 && !v.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(invalid(
            field,
            "too long, or holds control characters".into(),
        ))
    }
}

/// The root device goes onto the guest kernel's command line: `LABEL=` or `UUID=` and one word.
pub(crate) fn check_root(root: &str) -> Result<(), ImageError> {
    let ok = ["LABEL=", "UUID="].iter().any(|p| {
        root.strip_prefix(p).is_some_and(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        })
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "root",
            format!("{root:?} is not LABEL=WORD or UUID=WORD"),
        ))
    }
}

/// Check what a transfer's `image.json` says, before any of its files is taken.
pub fn check_meta(meta: &ImageMeta) -> Result<(), ImageError> {
    check_file("disk", &meta.disk)?;
    for (field, b) in [
        ("kernel_cloud", &meta.kernel_cloud),
        ("kernel_generic", &meta.kernel_generic),
    ] {
        if let Some(b) = b {
            check_file(field, &b.kernel)?;
            check_file(field, &b.initrd)?;
            check_text(field, &b.version)?;
        }
    }
    if meta.kernel_cloud.is_none() && meta.kernel_generic.is_none() {
        return Err(invalid("kernel_cloud", "the image has no kernel".into()));
    }
    for (field, v) in [
        ("os", &meta.os),
        ("release", &meta.release),
        ("suite", &meta.suite),
        ("arch", &meta.arch),
        ("recipe", &meta.recipe),
    ] {
        check_text(field, v)?;
    }
    if let Some(r) = &meta.root {
        check_root(r)?;
    }
    let hex = meta.sha256.len() == 64 && meta.sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(invalid(
            "sha256",
            format!("{:?} is not a SHA-256", meta.sha256),
        ));
    }
    Ok(())
}

impl Store {
    /// Write image `name` as a transfer archive to `out`.
    pub fn export(&self, name: &str, out: &mut dyn Write) -> Result<(), ImageError> {
        let meta = self.get(name)?;
        let dir = self.path(name);
        let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
        b.mode(tar::HeaderMode::Deterministic);
        b.sparse(false);
        let text = serde_json::to_vec_pretty(&meta).expect("metadata serialises");
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let sent = |e: std::io::Error| io("sending", &dir)(e);
        b.append_data(&mut h, META, text.as_slice()).map_err(sent)?;
        for f in files_of(&meta) {
            let p = dir.join(&f);
            let mut file = std::fs::File::open(&p).map_err(io("reading", &p))?;
            b.append_file(&f, &mut file).map_err(io("sending", &p))?;
        }
        b.into_inner()
            .map_err(sent)?
            .flush()
            .map_err(io("sending", &dir))
    }

    /// Install as image `name` the transfer received into `work` (its `image.json` and files,
    /// the metadata checked by [`check_meta`]): the disk must be a standalone qcow2 with the
    /// stated size and fingerprint. `work` becomes the image's folder, or is removed.
    pub fn install(&self, work: &Path, name: &str) -> Result<ImageMeta, ImageError> {
        let cleanup = Cleanup(Some(work.to_path_buf()));
        check_name(name)?;
        let mp = work.join(META);
        let text = std::fs::read(&mp).map_err(io("reading", &mp))?;
        let mut meta: ImageMeta =
            serde_json::from_slice(&text).map_err(|e| ImageError::Metadata {
                path: mp.clone(),
                message: e.to_string(),
            })?;
        check_meta(&meta)?;
        let disk = work.join(&meta.disk);
        let sha = sha256_file(&disk)?;
        if sha != meta.sha256 {
            return Err(invalid(
                "sha256",
                format!(
                    "the disk's SHA-256 is {sha}, not {}: it changed on the way",
                    meta.sha256
                ),
            ));
        }
        let info =
            berth_disk::ops::info(&disk, Some(Format::Qcow2), false, &BackingPolicy::default())?;
        let top = info
            .first()
            .ok_or_else(|| invalid("disk", "no image".into()))?;
        if let Some(b) = &top.backing_filename {
            return Err(invalid(
                "disk",
                format!("it names a backing file ({b:?}); an image stands alone"),
            ));
        }
        if top.virtual_size != meta.size {
            return Err(invalid(
                "size",
                format!(
                    "the disk holds {} bytes, not {}",
                    top.virtual_size, meta.size
                ),
            ));
        }
        meta.name = name.to_string();
        berth_files::output::write_atomic(
            &mp,
            serde_json::to_string_pretty(&meta)
                .unwrap_or_default()
                .as_bytes(),
            0o644,
            "image metadata",
        )
        .map_err(|e| ImageError::Tool {
            tool: "install".into(),
            detail: e.to_string(),
        })?;
        let dest = self.path(name);
        if dest.exists() {
            return Err(ImageError::Exists(name.to_string()));
        }
        std::fs::rename(work, &dest).map_err(io("installing", &dest))?;
        std::mem::forget(cleanup);
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ImageMeta {
        let boot = |t: &str| BootFiles {
            kernel: format!("vmlinuz-{t}"),
            initrd: format!("initrd-{t}.img"),
            version: "6.1.0-10-cloud-amd64".into(),
        };
        ImageMeta {
            name: "debian-12".into(),
            os: "debian".into(),
            release: "12".into(),
            suite: "bookworm".into(),
            arch: "x86_64".into(),
            disk: "disk.qcow2".into(),
            size: 1 << 30,
            sha256: "ab".repeat(32),
            built_at: 1,
            recipe: "r".into(),
            kernel_cloud: Some(boot("cloud")),
            kernel_generic: Some(boot("generic")),
            root: Some("LABEL=rootfs".into()),
        }
    }

    #[test]
    fn an_images_files_are_its_disk_and_kernels_once_each() {
        let mut m = meta();
        assert_eq!(
            files_of(&m),
            [
                "disk.qcow2",
                "vmlinuz-cloud",
                "initrd-cloud.img",
                "vmlinuz-generic",
                "initrd-generic.img"
            ]
        );
        m.kernel_generic = m.kernel_cloud.clone();
        assert_eq!(files_of(&m).len(), 3);
    }

    #[test]
    fn metadata_that_could_reach_a_path_or_the_kernel_command_line_is_refused() {
        check_meta(&meta()).unwrap();
        let refused = |f: &dyn Fn(&mut ImageMeta), field: &str| {
            let mut m = meta();
            f(&mut m);
            let e = check_meta(&m).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        };
        refused(&|m| m.disk = "../../etc/passwd".into(), "disk");
        refused(&|m| m.disk = "image.json".into(), "disk");
        refused(&|m| m.disk = ".hidden".into(), "disk");
        refused(
            &|m| m.kernel_cloud.as_mut().unwrap().initrd = "/boot/x".into(),
            "kernel_cloud",
        );
        refused(
            &|m| m.root = Some("LABEL=rootfs init=/bin/sh".into()),
            "root",
        );
        refused(&|m| m.sha256 = "xyz".into(), "sha256");
        refused(&|m| m.os = "debian\n12".into(), "os");
        refused(
            &|m| {
                m.kernel_cloud = None;
                m.kernel_generic = None;
            },
            "kernel",
        );
    }

    /// An image folder in `store` with a real qcow2 disk, as a build leaves it.
    fn made(store: &Store, name: &str, backing: Option<&str>) -> ImageMeta {
        use berth_disk::ops::{create, CreateOptions};
        let dir = store.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut o = CreateOptions::new(dir.join("disk.qcow2"), Format::Qcow2, Some(1 << 20));
        if let Some(b) = backing {
            o.backing = Some(b.into());
            o.backing_format = Some(Format::Raw);
        }
        create(&o, &BackingPolicy::default()).unwrap();
        for f in files_of(&meta()).into_iter().skip(1) {
            std::fs::write(dir.join(&f), f.as_bytes()).unwrap();
        }
        let mut m = meta();
        m.name = name.into();
        m.size = 1 << 20;
        m.sha256 = sha256_file(&dir.join("disk.qcow2")).unwrap();
        std::fs::write(dir.join(META), serde_json::to_vec(&m).unwrap()).unwrap();
        m
    }

    fn stores(d: &Path) -> (Store, Store) {
        let s = |h: &str| Store {
            dir: d.join(h).join("images"),
            cache: d.join(h).join("cache"),
        };
        (s("a"), s("b"))
    }

    /// Export from `a`, receive into `b`'s upload folder and install there as `name`.
    fn send(a: &Store, b: &Store, from: &str, name: &str) -> Result<ImageMeta, ImageError> {
        let mut t = Vec::new();
        a.export(from, &mut t).unwrap();
        std::fs::create_dir_all(&b.dir).unwrap();
        let up = b.dir.join(".upload");
        let r = super::super::archive::receive(&mut t.as_slice(), &up, 1 << 30).unwrap();
        assert!(matches!(r, super::super::archive::Received::Image));
        b.install(&up, name)
    }

    #[test]
    fn an_image_travels_whole_and_keeps_its_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = stores(d.path());
        let m = made(&a, "debian-12", None);
        let got = send(&a, &b, "debian-12", "copy").unwrap();
        assert_eq!(got.name, "copy");
        assert_eq!(got.sha256, m.sha256);
        assert_eq!(b.get("copy").unwrap(), got);
        for f in files_of(&m) {
            assert_eq!(
                std::fs::read(a.path("debian-12").join(&f)).unwrap(),
                std::fs::read(b.path("copy").join(&f)).unwrap(),
                "{f}"
            );
        }
        assert!(!b.dir.join(".upload").exists());
        // The same archive twice: deterministic.
        let (mut t1, mut t2) = (Vec::new(), Vec::new());
        a.export("debian-12", &mut t1).unwrap();
        a.export("debian-12", &mut t2).unwrap();
        assert_eq!(t1, t2);
        // A name that is taken is refused, and the upload goes.
        let e = send(&a, &b, "debian-12", "copy").unwrap_err();
        assert!(matches!(e, ImageError::Exists(_)), "{e}");
        assert!(!b.dir.join(".upload").exists());
    }

    #[test]
    fn a_disk_that_changed_on_the_way_or_leans_on_another_file_is_not_installed() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = stores(d.path());
        let mut m = made(&a, "changed", None);
        m.sha256 = "cd".repeat(32);
        std::fs::write(
            a.path("changed").join(META),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        let e = send(&a, &b, "changed", "x").unwrap_err().to_string();
        assert!(
            e.contains("sha256") && e.contains("changed on the way"),
            "{e}"
        );
        assert!(!b.path("x").exists() && !b.dir.join(".upload").exists());

        std::fs::create_dir_all(a.path("leaning")).unwrap();
        std::fs::write(a.path("leaning").join("base.raw"), vec![0u8; 1 << 20]).unwrap();
        made(&a, "leaning", Some("base.raw"));
        let e = send(&a, &b, "leaning", "y").unwrap_err().to_string();
        assert!(e.contains("backing file"), "{e}");
        assert!(!b.path("y").exists());

        let mut m = made(&a, "sized", None);
        m.size = 2 << 20;
        std::fs::write(a.path("sized").join(META), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = send(&a, &b, "sized", "z").unwrap_err().to_string();
        assert!(e.contains("size"), "{e}");
    }
}
