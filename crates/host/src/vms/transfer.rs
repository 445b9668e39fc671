//! A VM as it travels between hosts (`berth copy`, `berth move`): an uncompressed tar of
//! `instance.json` ([`VmArchive`]), its thin qcow2 overlay `disk.qcow2` and, when it moves, its
//! own SSH key `id_ed25519` (a moved guest keeps its cloud-init instance, which will not take
//! the new host's key; a copy is a new instance and gets a key of its own). The overlay's
//! backing file is the VM's image, which travels apart, once, as an image copy, and is found on
//! the receiving host by its fingerprint (whatever it is named there). The VM is installed
//! whole or not at all.

use super::archive::{user_data_for_copy, VmArchive, DISK, META, META_MAX};
use super::launch::write_seed;
use super::moves::own_key_of;
use super::KEY;
use super::*;
use berth_disk::ops::RebaseOptions;
use std::io::{Read, Write};

/// The row state of a VM leaving this host (`berth move`'s depart): stopped, and it may not
/// start until the move is finished or undone.
pub const MOVING: &str = "moving";

/// The row state of a VM received by a move, until the host it left has let it go.
pub const ARRIVING: &str = "arriving";

/// The longest private key a moved VM's archive may carry.
const KEY_MAX: u64 = 16 << 10;

/// Read a VM's archive on `input` into `dir` (made here, removed again when the archive is
/// refused or cut short): `instance.json` first, checked (then by `check`, the receiving
/// host's own refusals) before anything else is taken, then `disk.qcow2`, at most `max` bytes,
/// and maybe the VM's key; nothing else.
pub fn receive(
    input: &mut dyn Read,
    dir: &Path,
    max: u64,
    check: &dyn Fn(&VmArchive) -> Result<(), VmError>,
) -> Result<VmArchive, VmError> {
    std::fs::create_dir(dir).map_err(io("making", dir))?;
    let r = unpack(input, dir, max, check);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    r
}

fn unpack(
    input: &mut dyn Read,
    dir: &Path,
    max: u64,
    check: &dyn Fn(&VmArchive) -> Result<(), VmError>,
) -> Result<VmArchive, VmError> {
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
        check_member(e, want, limit)
    };
    let mut text = Vec::new();
    next(META, META_MAX)?
        .read_to_end(&mut text)
        .map_err(|e| bad(format!("{META}: {e}")))?;
    let a: VmArchive = serde_json::from_slice(&text).map_err(|e| bad(format!("{META}: {e}")))?;
    a.check()?;
    check(&a)?;
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
    let only = || bad(format!("may hold only {META}, {DISK} and {KEY}"));
    if let Some(key) = entries.next() {
        let mut key = check_member(
            key.map_err(|e| bad(format!("is unreadable: {e}")))?,
            KEY,
            KEY_MAX,
        )
        .map_err(|_| only())?;
        let mut text = String::new();
        key.read_to_string(&mut text)
            .map_err(|e| bad(format!("{KEY}: {e}")))?;
        // Kept 0600 until the install puts it in place (checked there, as a key).
        let path = dir.join(KEY);
        berth_files::output::write_atomic(&path, text.as_bytes(), 0o600, "a private key")
            .map_err(|e| bad(format!("{KEY}: {e}")))?;
    }
    if entries.next().is_some() {
        return Err(only());
    }
    Ok(a)
}

/// Entry `e` if it is the regular file `want` of at most `limit` bytes.
fn check_member<'a, R: Read>(
    e: tar::Entry<'a, R>,
    want: &str,
    limit: u64,
) -> Result<tar::Entry<'a, R>, VmError> {
    let bad = |m: String| VmError::Invalid(format!("the instance archive {m}"));
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
    /// VM `name`, if it can travel now: stopped, for a copy; departing (see [`Vms::depart`]),
    /// for a move.
    pub fn exportable(&self, name: &str, moving: bool) -> Result<(InstanceRow, VmRecord), VmError> {
        let (row, rec) = self.get(name)?;
        if moving {
            if row.desired != MOVING {
                return Err(VmError::Invalid(format!(
                    "{name} is not moving: a move's export follows its depart step"
                )));
            }
            return Ok((row, rec));
        }
        if row.desired == MOVING || row.desired == ARRIVING {
            return Err(VmError::Invalid(format!(
                "{name} is moving ({}): berth copies it once the move is finished or undone",
                row.note
            )));
        }
        if !matches!(self.state(&row, &rec)?, VmState::Stopped { .. }) {
            return Err(VmError::Invalid(format!(
                "{name} is running: stop it first (berth stop {name}); berth does not copy a \
                 running VM yet"
            )));
        }
        Ok((row, rec))
    }

    /// Write VM `name` as a transfer archive to `out`: stopped, for a copy; departing, for a
    /// move, with its own SSH key.
    pub fn export(&self, name: &str, moving: bool, out: &mut dyn Write) -> Result<(), VmError> {
        let (row, rec) = self.exportable(name, moving)?;
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
        if moving {
            let key = own_key_of(name, &rec)?;
            let mut file = std::fs::File::open(&key).map_err(io("reading", &key))?;
            b.append_file(KEY, &mut file).map_err(io("sending", &key))?;
        }
        b.into_inner()
            .map_err(io("sending", &dir))?
            .flush()
            .map_err(io("sending", &dir))
    }

    /// Install as VM `name` the archive received into `work` (`a`, its `instance.json` as
    /// [`read`] found it, and `disk.qcow2`), under the row the executor has made for it, on
    /// `image`, this host's copy of its image ([`image_of`]). The VM gets an SSH port and a
    /// seed of its own and, as `identity` says, is a copy (stopped, with a new machine-id and
    /// SSH key) or the guest moved (arriving, with its own). Anything that fails takes back
    /// what was made here; `work` is the caller's to remove.
    pub fn install(
        &self,
        name: &str,
        work: &Path,
        a: &VmArchive,
        image: &crate::images::ImageMeta,
        identity: Identity,
        progress: &mut dyn FnMut(&str),
    ) -> Result<VmRecord, VmError> {
        check_name(name)
            .map_err(|_| VmError::Invalid(format!("invalid instance name {name:?}")))?;
        let image_dir = ImageStore::new(&self.dirs).path(&image.name);
        for f in std::iter::once(&a.config.kernel).chain(a.config.initrd.as_ref()) {
            if !image_dir.join(f).is_file() {
                return Err(VmError::Invalid(format!(
                    "image {} here has no {f}, which {} boots",
                    image.name, a.name
                )));
            }
        }
        self.can_take(a, identity)?;
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
            let (key, user_data) = match identity {
                Identity::New => {
                    let (key, public) = own_key(&dir, name)?;
                    let ud = user_data_for_copy(&a.user_data, &a.name, name, &a.ssh_user, &public)?;
                    (key, ud)
                }
                Identity::Keep => {
                    let from = work.join(KEY);
                    let text = std::fs::read_to_string(&from).map_err(|_| {
                        VmError::Invalid(format!(
                            "the archive of {} holds no {KEY}, which a moved VM brings",
                            a.name
                        ))
                    })?;
                    let key = dir.join(KEY);
                    keys::install_private(&text, &key)
                        .map_err(|e| VmError::Invalid(format!("{KEY} of {}: {e}", a.name)))?;
                    (key, a.user_data.clone())
                }
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
            match identity {
                Identity::New => self.store.set_instance_state(
                    name,
                    "stopped",
                    &format!("copied from {}", a.name),
                )?,
                Identity::Keep => self.store.set_instance_state(
                    name,
                    ARRIVING,
                    "arriving: the host it leaves still holds it",
                )?,
            }
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
            rec.ssh_key = own_key(&dir, name).unwrap().0;
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

    /// Install the archive in `work` as the executor does: read, on this host's image.
    fn take(vms: &Vms, name: &str, work: &Path, identity: Identity) -> Result<VmRecord, VmError> {
        let a = read(work)?;
        let image = image_of(&ImageStore::new(&vms.dirs), &a)?;
        vms.install(name, work, &a, &image, identity, &mut |_| {})
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
        a.export("web", false, &mut t).unwrap();
        let work = d.path().join("b/instances/.receive");
        std::fs::create_dir_all(work.parent().unwrap()).unwrap();
        let got = receive(&mut t.as_slice(), &work, 1 << 30, &|_| Ok(())).unwrap();
        assert_eq!(
            (got.name.as_str(), got.image.as_str()),
            ("web", "debian-12")
        );
        claim(&b, "web2");
        let rec = take(&b, "web2", &work, Identity::New).unwrap();
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
        receive(&mut t.as_slice(), &work, 1 << 30, &|_| Ok(())).unwrap();
        claim(&c, "web");
        let e = take(&c, "web", &work, Identity::Keep).unwrap_err();
        assert!(e.to_string().contains("image debian-12"), "{e}");
        assert!(!c.dir("web").exists());
        assert!(c
            .store
            .machine_id_holder(&src.machine_id)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_moved_vm_keeps_its_machine_id_and_key_and_is_never_startable_at_both_ends() {
        let d = tempfile::tempdir().unwrap();
        let a = host(&d.path().join("a"), "debian-12", Some("web"));
        let b = host(&d.path().join("b"), "debian-12", None);
        let (_, src) = a.get("web").unwrap();
        // A copy's export is not a move's, and a move's needs its depart step first.
        let e = a.export("web", true, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("not moving"), "{e}");
        a.depart("web", "b:").unwrap();
        let (row, _) = a.get("web").unwrap();
        assert_eq!(
            (row.desired.as_str(), row.note.as_str()),
            (MOVING, "moving to b:")
        );
        assert!(a.exportable("web", false).is_err(), "a moving VM is copied");
        let mut t = Vec::new();
        a.export("web", true, &mut t).unwrap();
        let work = d.path().join("b/instances/.receive");
        std::fs::create_dir_all(work.parent().unwrap()).unwrap();
        // Refused before the disk is read when the host holds its machine-id.
        b.store
            .register_machine_id(&src.machine_id, "vm", "other")
            .unwrap();
        let check = |x: &VmArchive| b.can_take(x, Identity::Keep);
        let e = receive(&mut t.as_slice(), &work, 1 << 30, &check).unwrap_err();
        assert!(e.to_string().contains("already holds machine-id"), "{e}");
        assert!(!work.exists());
        b.store.release_machine_id("vm", "other").unwrap();
        receive(&mut t.as_slice(), &work, 1 << 30, &check).unwrap();
        claim(&b, "web");
        let rec = take(&b, "web", &work, Identity::Keep).unwrap();
        // Its own machine-id (held here now, and still at a until a lets it go) and its key.
        assert_eq!(rec.machine_id, src.machine_id);
        assert_eq!(rec.ssh_key, b.dir("web").join(KEY));
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&rec.ssh_key), read(&src.ssh_key));
        assert_eq!(
            read(&keys::public_path(&rec.ssh_key)),
            read(&keys::public_path(&src.ssh_key))
        );
        let (row, _) = b.get("web").unwrap();
        assert_eq!(row.desired, ARRIVING);
        assert!(b.depart("web", "c:").is_err(), "an arriving VM departs");
        assert!(b.stay("web").is_err(), "an arriving VM stays");
        // The user-data is the guest's own, as its cloud-init instance is.
        let ud = read(&rec.paths.disk.with_file_name("user-data"));
        assert_eq!(ud, USER_DATA);
        a.departed("web").unwrap();
        assert!(a.get("web").is_err());
        assert!(a
            .store
            .machine_id_holder(&src.machine_id)
            .unwrap()
            .is_none());
        b.arrived("web", "a:").unwrap();
        b.arrived("web", "a:").unwrap();
        let (row, _) = b.get("web").unwrap();
        assert_eq!(
            (row.desired.as_str(), row.note.as_str()),
            ("stopped", "moved here from a:")
        );
    }

    #[test]
    fn a_move_undone_leaves_a_stopped_vm_and_one_with_the_hosts_key_does_not_depart() {
        let d = tempfile::tempdir().unwrap();
        let a = host(&d.path().join("a"), "debian-12", Some("web"));
        a.depart("web", "b:").unwrap();
        a.depart("web", "b:").unwrap();
        a.stay("web").unwrap();
        a.stay("web").unwrap();
        let (row, rec) = a.get("web").unwrap();
        assert_eq!(row.desired, "stopped");
        assert!(
            a.departed("web").is_err(),
            "a stopped VM is removed as departed"
        );
        // A VM made before VMs had keys of their own.
        let mut old = rec.clone();
        old.ssh_key = a.dirs.keys().join(KEY);
        a.store.set_instance_spec("web", &old.to_json()).unwrap();
        let e = a.depart("web", "b:").unwrap_err();
        assert!(e.to_string().contains("shared SSH key"), "{e}");
        assert_eq!(a.get("web").unwrap().0.desired, "stopped");
    }

    #[test]
    fn an_archive_with_anything_but_its_two_members_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a = host(&d.path().join("a"), "debian-12", Some("web"));
        let mut t = Vec::new();
        a.export("web", false, &mut t).unwrap();
        let work = d.path().join("w");
        // Cut short in the disk.
        let e = receive(&mut &t[..t.len() - 2048], &work, 1 << 30, &|_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("disk.qcow2"), "{e}");
        assert!(!work.exists());
        // A disk over the budget.
        let e = receive(&mut t.as_slice(), &work, 10, &|_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
        assert!(!work.exists());
        // Not a tar at all.
        assert!(receive(&mut &b"nonsense"[..], &work, 1 << 30, &|_| Ok(())).is_err());
        assert!(!work.exists());
    }
}
