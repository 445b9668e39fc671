//! A VM as it travels between hosts (`berth copy`, and the coming `berth move`): an uncompressed
//! tar of `instance.json` ([`VmArchive`]) and its thin qcow2 overlay `disk.qcow2`. The overlay's
//! backing file is the VM's image, which travels apart, once, as an image copy, and is found on
//! the receiving host by its fingerprint (whatever it is named there). The VM is installed
//! whole or not at all.

use super::archive::{user_data_for_copy, VmArchive, DISK, META, META_MAX};
use super::launch::write_seed;
use super::*;
use berth_disk::ops::RebaseOptions;
use std::io::{Read, Write};

/// Read a VM's archive on `input` into `dir` (made here, removed again when the archive is
/// refused or cut short): `instance.json` first, checked before anything else is taken, then
/// `disk.qcow2`, at most `max` bytes; nothing else.
pub fn receive(input: &mut dyn Read, dir: &Path, max: u64) -> Result<VmArchive, VmError> {
    std::fs::create_dir(dir).map_err(io("making", dir))?;
    let r = unpack(input, dir, max);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    r
}

fn unpack(input: &mut dyn Read, dir: &Path, max: u64) -> Result<VmArchive, VmError> {
    let bad = |m: String| VmError::Invalid(format!("the instance archive {m}"));
    let mut entries = tar::Archive::new(input);
    let mut entries = entries
        .entries()
        .map_err(|e| bad(format!("is not a tar: {e}")))?;
    let mut next = |want: &str, limit: u64| -> Result<tar::Entry<'_, &mut dyn Read>, VmError> {
        let e = entries
            .next()
            .ok_or_else(|| bad(format!("holds no {want:?}")))?
            .map_err(|e| bad(format!("is unreadable: {e}")))?;
        let shown = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if shown != want || !e.header().entry_type().is_file() {
            return Err(bad(format!(
                "holds {shown:?} where a regular file {want:?} belongs"
            )));
        }
        if e.size() > limit {
            return Err(bad(format!("holds a {want:?} larger than {limit} bytes")));
        }
        Ok(e)
    };
    let mut text = Vec::new();
    next(META, META_MAX)?
        .read_to_end(&mut text)
        .map_err(|e| bad(format!("{META}: {e}")))?;
    let a: VmArchive = serde_json::from_slice(&text).map_err(|e| bad(format!("{META}: {e}")))?;
    a.check()?;
    std::fs::write(dir.join(META), &text).map_err(io("writing", dir))?;
    let mut disk = next(DISK, max)?;
    let size = disk.size();
    let path = dir.join(DISK);
    let mut out = std::fs::File::create_new(&path).map_err(io("writing", &path))?;
    let copied = std::io::copy(&mut disk, &mut out)
        .map_err(|e| bad(format!("was cut short in {DISK}: {e}")))?;
    if copied != size {
        return Err(bad(format!(
            "was cut short in {DISK} ({copied} of {size} bytes)"
        )));
    }
    drop(disk);
    if let Some(extra) = entries.next() {
        let shown = extra
            .map(|e| String::from_utf8_lossy(&e.path_bytes()).into_owned())
            .unwrap_or_default();
        return Err(bad(format!(
            "holds {shown:?} after {DISK}; it may hold only {META} and {DISK}"
        )));
    }
    Ok(a)
}

/// The `instance.json` of an archive received into `work`, checked.
pub fn read(work: &Path) -> Result<VmArchive, VmError> {
    let mp = work.join(META);
    let text = std::fs::read(&mp).map_err(io("reading", &mp))?;
    let a: VmArchive =
        serde_json::from_slice(&text).map_err(|e| VmError::Invalid(format!("{META}: {e}")))?;
    a.check()?;
    Ok(a)
}

/// This host's copy of the image a received VM was made from: the image with its fingerprint.
pub fn image_of(images: &ImageStore, a: &VmArchive) -> Result<crate::images::ImageMeta, VmError> {
    images
        .list()?
        .into_iter()
        .find(|m| m.sha256 == a.image_fingerprint)
        .ok_or_else(|| {
            VmError::Invalid(format!(
                "{}'s image {} (fingerprint {}) is not on this host: copy it here first \
                 (berth image copy)",
                a.name,
                a.image,
                &a.image_fingerprint[..16]
            ))
        })
}

/// Whose identity a received VM has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    /// A copy: a new machine-id (so a new MAC and, to cloud-init, a new instance: new SSH host
    /// keys), the copy's name as its hostname.
    New,
    /// The same guest, moved: its machine-id, registered here.
    Keep,
}

impl Vms {
    /// VM `name`, if it can travel now: stopped.
    pub fn exportable(&self, name: &str) -> Result<(InstanceRow, VmRecord), VmError> {
        let (row, rec) = self.get(name)?;
        if !matches!(self.state(&row, &rec)?, VmState::Stopped { .. }) {
            return Err(VmError::Invalid(format!(
                "{name} is running: stop it first (berth stop {name}); berth does not copy a \
                 running VM yet"
            )));
        }
        Ok((row, rec))
    }

    /// Write stopped VM `name` as a transfer archive to `out`.
    pub fn export(&self, name: &str, out: &mut dyn Write) -> Result<(), VmError> {
        let (row, rec) = self.exportable(name)?;
        let image = ImageStore::new(&self.dirs).get(&rec.image)?;
        let dir = self.dir(name);
        let ud = dir.join("user-data");
        let user_data = std::fs::read_to_string(&ud).map_err(io("reading", &ud))?;
        let archive = VmArchive::of(name, &rec, row.created_at, &image.sha256, user_data);
        let text = serde_json::to_vec_pretty(&archive).expect("an archive serialises");
        let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
        b.mode(tar::HeaderMode::Deterministic);
        b.sparse(false);
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, META, text.as_slice())
            .map_err(io("sending", &dir))?;
        let disk = &rec.paths.disk;
        let mut file = std::fs::File::open(disk).map_err(io("reading", disk))?;
        b.append_file(DISK, &mut file)
            .map_err(io("sending", disk))?;
        b.into_inner()
            .map_err(io("sending", &dir))?
            .flush()
            .map_err(io("sending", &dir))
    }

    /// Install as VM `name`, stopped, the archive received into `work` (its `instance.json`
    /// and `disk.qcow2`), under the row the executor has made for it. The overlay is put on
    /// this host's copy of the image (found by fingerprint), the VM gets an SSH port and a seed
    /// of its own, and, as `identity` says, a new machine-id or its own. Anything that fails
    /// takes back what was made here; `work` is the caller's to remove.
    pub fn install(
        &self,
        name: &str,
        work: &Path,
        identity: Identity,
        progress: &mut dyn FnMut(&str),
    ) -> Result<VmRecord, VmError> {
        check_name(name)
            .map_err(|_| VmError::Invalid(format!("invalid instance name {name:?}")))?;
        let a = read(work)?;
        let images = ImageStore::new(&self.dirs);
        let image = image_of(&images, &a)?;
        let image_dir = images.path(&image.name);
        for f in std::iter::once(&a.config.kernel).chain(a.config.initrd.as_ref()) {
            if !image_dir.join(f).is_file() {
                return Err(VmError::Invalid(format!(
                    "image {} here has no {f}, which {} boots",
                    image.name, a.name
                )));
            }
        }
        check_forwards(a.config.forwards.iter().map(|f| f.host))?;
        for f in &a.config.forwards {
            check_port(f.host)?;
        }
        let accel = match a.config.accel {
            Accel::Tcg => Accel::Tcg,
            Accel::Kvm => {
                let qemu = qhost::qemu_binary()
                    .ok_or_else(|| VmError::QemuStart("qemu-system-x86_64 was not found".into()))?;
                self.accel(&qemu, AccelRequest::Auto, progress)?
            }
        };
        let dir = self.dir(name);
        std::fs::create_dir_all(dir.parent().unwrap_or(&dir)).map_err(io("creating", &dir))?;
        std::fs::create_dir(&dir).map_err(io("creating", &dir))?;
        let mut registered = false;
        let made = (|| -> Result<VmRecord, VmError> {
            progress("putting the disk on this host's image");
            let disk = dir.join(DISK);
            let from = work.join(DISK);
            std::fs::rename(&from, &disk).map_err(io("moving", &from))?;
            let base = image_dir.join(&image.disk);
            let policy = BackingPolicy::new(Some(self.dirs.images()), Vec::new());
            let rebase = RebaseOptions {
                backing: Some(base.display().to_string()),
                backing_format: Some(Format::Qcow2),
                unsafe_mode: true,
            };
            ops::rebase(&disk, &rebase, &policy, &mut |_, _| {})?;
            let info = ops::info(&disk, Some(Format::Qcow2), true, &policy)?;
            let size = info.first().map_or(0, |i| i.virtual_size);
            if size != a.disk_size || info.len() != 2 {
                return Err(VmError::Invalid(format!(
                    "{DISK} of {} is not an overlay of {} bytes on its image (it is {size} \
                     bytes, {} layers)",
                    a.name,
                    a.disk_size,
                    info.len()
                )));
            }
            let machine_id = match identity {
                Identity::New => crate::machine_ids::allocate(&self.store, "vm", name)?.to_string(),
                Identity::Keep => {
                    self.store.register_machine_id(&a.machine_id, "vm", name)?;
                    a.machine_id.clone()
                }
            };
            registered = true;
            let key = keys::ensure_default(&self.dirs.keys(), "berth")?;
            let public =
                std::fs::read_to_string(keys::public_path(&key)).map_err(io("reading", &key))?;
            let user_data = match identity {
                Identity::New => {
                    user_data_for_copy(&a.user_data, &a.name, name, &a.ssh_user, public.trim())?
                }
                Identity::Keep => a.user_data.clone(),
            };
            write_seed(&dir, name, user_data, &machine_id)?;
            let ssh_port = free_port()?;
            let mut config = a.config.clone();
            config.accel = accel;
            config.forwards.insert(
                0,
                Forward {
                    host: ssh_port,
                    guest: 22,
                },
            );
            let rec = VmRecord {
                config,
                ssh_port,
                ssh_user: a.ssh_user.clone(),
                ssh_key: key,
                machine_id,
                disk_size: a.disk_size,
                image: image.name.clone(),
                paths: VmPaths::of(&dir),
            };
            self.store.set_instance_spec(name, &rec.to_json())?;
            let how = match identity {
                Identity::New => "copied from",
                Identity::Keep => "moved from",
            };
            self.store
                .set_instance_state(name, "stopped", &format!("{how} {}", a.name))?;
            Ok(rec)
        })();
        if made.is_err() {
            if registered {
                let _ = self.store.release_machine_id("vm", name);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vms::archive::tests::{record, USER_DATA};

    /// A data dir with image `image` (a 1 MiB standalone qcow2 and its kernel files, the same
    /// bytes on every host) and, when `vm` is given, a stopped VM of that name on it.
    fn host(root: &Path, image: &str, vm: Option<&str>) -> Vms {
        use berth_disk::ops::{create, CreateOptions};
        let dirs = crate::dirs::Dirs {
            root: root.to_path_buf(),
        };
        let idir = dirs.images().join(image);
        std::fs::create_dir_all(&idir).unwrap();
        let disk = idir.join("disk.qcow2");
        let base = root.with_file_name("base.qcow2");
        if !base.exists() {
            create(
                &CreateOptions::new(&base, Format::Qcow2, Some(1 << 20)),
                &BackingPolicy::default(),
            )
            .unwrap();
        }
        std::fs::copy(&base, &disk).unwrap();
        let boot = crate::images::BootFiles {
            kernel: record().config.kernel,
            initrd: record().config.initrd.unwrap(),
            version: "6.1.0-1-cloud-amd64".into(),
        };
        std::fs::write(idir.join(&boot.kernel), "k").unwrap();
        std::fs::write(idir.join(&boot.initrd), "i").unwrap();
        let meta = crate::images::ImageMeta {
            name: image.into(),
            os: "debian".into(),
            release: "12".into(),
            suite: "bookworm".into(),
            arch: "x86_64".into(),
            disk: "disk.qcow2".into(),
            size: 1 << 20,
            sha256: crate::images::sha256_file(&disk).unwrap(),
            built_at: 0,
            recipe: "test".into(),
            kernel_cloud: Some(boot),
            kernel_generic: None,
            root: None,
        };
        std::fs::write(idir.join("image.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        let vms = Vms::open(&dirs).unwrap();
        if let Some(name) = vm {
            let dir = vms.dir(name);
            std::fs::create_dir_all(&dir).unwrap();
            let mut co = CreateOptions::new(dir.join(DISK), Format::Qcow2, Some(2 << 20));
            co.backing = Some(disk.display().to_string());
            co.backing_format = Some(Format::Qcow2);
            create(&co, &BackingPolicy::new(Some(dirs.images()), Vec::new())).unwrap();
            std::fs::write(dir.join("user-data"), USER_DATA).unwrap();
            let mut rec = record();
            rec.disk_size = 2 << 20;
            rec.image = image.into();
            vms.store
                .insert_instance(&InstanceRow {
                    name: name.into(),
                    kind: "vm".into(),
                    image: image.into(),
                    spec: rec.to_json(),
                    desired: "stopped".into(),
                    note: String::new(),
                    created_at: 0,
                })
                .unwrap();
            crate::machine_ids::allocate(&vms.store, "vm", name).unwrap();
        }
        vms
    }

    fn claim(vms: &Vms, name: &str) {
        vms.store
            .insert_instance(&InstanceRow {
                name: name.into(),
                kind: "vm".into(),
                image: String::new(),
                spec: String::new(),
                desired: "creating".into(),
                note: String::new(),
                created_at: 0,
            })
            .unwrap();
    }

    #[test]
    fn a_stopped_vm_travels_to_a_host_that_names_its_image_otherwise() {
        let d = tempfile::tempdir().unwrap();
        let a = host(&d.path().join("a"), "debian-12", Some("web"));
        let b = host(&d.path().join("b"), "deb", None);
        let mut t = Vec::new();
        a.export("web", &mut t).unwrap();
        let work = d.path().join("b/instances/.receive");
        std::fs::create_dir_all(work.parent().unwrap()).unwrap();
        let got = receive(&mut t.as_slice(), &work, 1 << 30).unwrap();
        assert_eq!(
            (got.name.as_str(), got.image.as_str()),
            ("web", "debian-12")
        );
        claim(&b, "web2");
        let rec = b
            .install("web2", &work, Identity::New, &mut |_| {})
            .unwrap();
        // On b's image, with a machine-id of its own registered there, stopped.
        assert_eq!(rec.image, "deb");
        let (_, src) = a.get("web").unwrap();
        assert_ne!(rec.machine_id, src.machine_id);
        let holder = b.store.machine_id_holder(&rec.machine_id).unwrap().unwrap();
        assert_eq!(holder.name, "web2");
        let info = ops::info(
            &rec.paths.disk,
            Some(Format::Qcow2),
            true,
            &BackingPolicy::new(Some(b.dirs.images()), Vec::new()),
        )
        .unwrap();
        assert_eq!(info[0].virtual_size, 2 << 20);
        assert_eq!(
            info[0].backing_filename.as_deref(),
            Some(b.dirs.images().join("deb/disk.qcow2").to_str().unwrap())
        );
        assert_eq!(rec.config.forwards[0].guest, 22);
        assert_eq!(&rec.config.forwards[1..], &src.config.forwards[1..]);
        let (row, _) = b.get("web2").unwrap();
        assert_eq!(row.note, "copied from web");
        let ud = std::fs::read_to_string(rec.paths.disk.with_file_name("user-data")).unwrap();
        let c = &UserData::split(ud.as_bytes()).unwrap().cloud_configs[0];
        assert_eq!(c["hostname"], "web2", "{ud}");
        assert!(rec.paths.seed.exists());
        // The same archive again: the name is taken, and a host without the image says which.
        let c = host(&d.path().join("c"), "other", None);
        let meta = c.dirs.images().join("other/image.json");
        let text = std::fs::read_to_string(&meta).unwrap();
        let sha = text.split("\"sha256\":\"").nth(1).unwrap()[..64].to_string();
        std::fs::write(&meta, text.replace(&sha, &"0".repeat(64))).unwrap();
        let work = d.path().join("c/instances/.receive");
        std::fs::create_dir_all(work.parent().unwrap()).unwrap();
        receive(&mut t.as_slice(), &work, 1 << 30).unwrap();
        claim(&c, "web");
        let e = c
            .install("web", &work, Identity::Keep, &mut |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("image debian-12"), "{e}");
        assert!(!c.dir("web").exists());
        assert!(c
            .store
            .machine_id_holder(&src.machine_id)
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_archive_with_anything_but_its_two_members_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a = host(&d.path().join("a"), "debian-12", Some("web"));
        let mut t = Vec::new();
        a.export("web", &mut t).unwrap();
        let work = d.path().join("w");
        // Cut short in the disk.
        let e = receive(&mut &t[..t.len() - 2048], &work, 1 << 30).unwrap_err();
        assert!(e.to_string().contains("disk.qcow2"), "{e}");
        assert!(!work.exists());
        // A disk over the budget.
        let e = receive(&mut t.as_slice(), &work, 10).unwrap_err();
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
        assert!(!work.exists());
        // Not a tar at all.
        assert!(receive(&mut &b"nonsense"[..], &work, 1 << 30).is_err());
        assert!(!work.exists());
    }
}
