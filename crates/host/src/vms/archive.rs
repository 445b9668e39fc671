//! What travels of a VM between hosts besides its disk ([`VmArchive`], `instance.json` in the
//! archive [`super::transfer`] sends): berth's record of the VM without what belongs to the host
//! it is on (SSH port, key path, folder). It is untrusted input on the receiving host: every
//! field that reaches a file name, QEMU's argv or the guest kernel's command line is checked
//! ([`VmArchive::check`]) before any of it is used. Also the user-data a copy boots with.

use super::{VmConfig, VmError, VmRecord};
use crate::images::transfer::{check_file, check_root};
use berth_cloudinit::compose::{render, UserData};
use berth_identity::machine_id::MachineId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The metadata member, always first.
pub const META: &str = "instance.json";

/// The overlay member.
pub const DISK: &str = "disk.qcow2";

/// The longest `instance.json` (its user-data included) a transfer may carry.
pub const META_MAX: u64 = 1 << 20;

/// The archive's format.
pub const FORMAT: u32 = 1;

/// The disk cache modes QEMU takes.
const DISK_CACHES: [&str; 5] = ["writeback", "writethrough", "none", "directsync", "unsafe"];

/// What travels of a VM besides its disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmArchive {
    /// [`FORMAT`].
    pub format: u32,
    /// Its name on the host it comes from.
    pub name: String,
    /// Its image's name there.
    pub image: String,
    /// Its image's fingerprint (the SHA-256 of the image's disk), by which the receiving host
    /// finds its own copy of the image.
    pub image_fingerprint: String,
    /// Its machine-id (kept by a move, replaced by a copy).
    pub machine_id: String,
    /// Unix time of its creation.
    pub created_at: i64,
    /// Its settings; `forwards` are the user's only (the SSH forward is the host's to pick).
    pub config: VmConfig,
    /// The login user berth made in the guest.
    pub ssh_user: String,
    /// Its disk's virtual size.
    pub disk_size: u64,
    /// The user-data it was launched with.
    pub user_data: String,
}

fn invalid(field: &str, detail: String) -> VmError {
    VmError::Invalid(format!("{META}: {field}: {detail}"))
}

impl VmArchive {
    /// The archive of VM `name` (`rec`), made from image `fingerprint`.
    pub fn of(
        name: &str,
        rec: &VmRecord,
        created_at: i64,
        fingerprint: &str,
        user_data: String,
    ) -> VmArchive {
        let mut config = rec.config.clone();
        config.forwards.retain(|f| f.host != rec.ssh_port);
        VmArchive {
            format: FORMAT,
            name: name.to_string(),
            image: rec.image.clone(),
            image_fingerprint: fingerprint.to_string(),
            machine_id: rec.machine_id.clone(),
            created_at,
            config,
            ssh_user: rec.ssh_user.clone(),
            disk_size: rec.disk_size,
            user_data,
        }
    }

    /// Check what a received `instance.json` says, before any of it is used.
    pub fn check(&self) -> Result<(), VmError> {
        if self.format != FORMAT {
            return Err(invalid(
                "format",
                format!(
                    "{} is not a format this berth reads ({FORMAT})",
                    self.format
                ),
            ));
        }
        for (field, v) in [("name", &self.name), ("image", &self.image)] {
            berth_api::check_name(v).map_err(|e| invalid(field, e.message))?;
        }
        let hex = self.image_fingerprint.len() == 64
            && self
                .image_fingerprint
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        if !hex {
            return Err(invalid(
                "image_fingerprint",
                format!("{:?} is not a SHA-256", self.image_fingerprint),
            ));
        }
        MachineId::parse(&self.machine_id)
            .map_err(|e| invalid("machine_id", format!("{:?}: {e}", self.machine_id)))?;
        let c = &self.config;
        if c.cpus == 0 || c.cpus > 64 {
            return Err(invalid(
                "config.cpus",
                format!("{} is out of range (1-64)", c.cpus),
            ));
        }
        if c.memory_mib < 256 || c.memory_mib > 1 << 22 {
            return Err(invalid(
                "config.memory_mib",
                format!("{} is out of range (256 MiB to 4 TiB)", c.memory_mib),
            ));
        }
        if !DISK_CACHES.contains(&c.disk_cache.as_str()) {
            return Err(invalid(
                "config.disk_cache",
                format!(
                    "{:?} is not one of {}",
                    c.disk_cache,
                    DISK_CACHES.join(", ")
                ),
            ));
        }
        for (field, f) in [
            ("config.kernel", Some(&c.kernel)),
            ("config.initrd", c.initrd.as_ref()),
        ] {
            if let Some(f) = f {
                check_file(field, f).map_err(|_| {
                    invalid(
                        field,
                        format!("{f:?} is not a file name in an image's folder"),
                    )
                })?;
            }
        }
        check_root(&c.root).map_err(|_| {
            invalid(
                "config.root",
                format!("{:?} is not LABEL=WORD or UUID=WORD", c.root),
            )
        })?;
        if let Some(cpu) = &c.tcg_cpu {
            let ok = !cpu.is_empty()
                && cpu.len() <= 128
                && cpu
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+,=".contains(&b));
            if !ok {
                return Err(invalid(
                    "config.tcg_cpu",
                    format!("{cpu:?} is not a CPU model with flags"),
                ));
            }
        }
        if let Some(f) = c.forwards.iter().find(|f| f.host == 0 || f.guest == 0) {
            return Err(invalid(
                "config.forwards",
                format!("forward {}:{} has port 0", f.host, f.guest),
            ));
        }
        let user_ok = !self.ssh_user.is_empty()
            && self.ssh_user.len() <= 32
            && self
                .ssh_user
                .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && self
                .ssh_user
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
        if !user_ok {
            return Err(invalid(
                "ssh_user",
                format!("{:?} is not a user name", self.ssh_user),
            ));
        }
        if self.disk_size == 0 || self.disk_size > i64::MAX as u64 {
            return Err(invalid(
                "disk_size",
                format!("{} bytes is not a disk size", self.disk_size),
            ));
        }
        UserData::split(self.user_data.as_bytes())
            .map_err(|e| invalid("user_data", e.to_string()))?;
        Ok(())
    }
}

/// The user-data of a copy of VM `from` named `to`: the hostname berth gave it (the VM's name)
/// becomes the copy's (a hostname the user chose stays), and `key`, the receiving host's key
/// for `user`, is added to the keys of that user. cloud-init applies both at the copy's first
/// boot, because its new machine-id gives it a new instance-id (which also makes cloud-init
/// generate new SSH host keys).
pub fn user_data_for_copy(
    text: &str,
    from: &str,
    to: &str,
    user: &str,
    key: &str,
) -> Result<String, VmError> {
    let split =
        UserData::split(text.as_bytes()).map_err(|e| invalid("user_data", e.to_string()))?;
    let mut merged = Map::new();
    for c in &split.cloud_configs {
        for (k, v) in c {
            merged.insert(k.clone(), v.clone());
        }
    }
    if merged.get("hostname").and_then(Value::as_str) == Some(from) {
        merged.insert("hostname".into(), Value::String(to.to_string()));
    }
    let users = merged
        .entry("users")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(users) = users {
        if let Some(u) = users
            .iter_mut()
            .find(|u| u.get("name").and_then(Value::as_str) == Some(user))
        {
            let keys = u
                .as_object_mut()
                .map(|o| {
                    o.entry("ssh_authorized_keys")
                        .or_insert_with(|| Value::Array(Vec::new()))
                })
                .and_then(Value::as_array_mut);
            if let Some(keys) = keys {
                if !keys.iter().any(|k| k.as_str() == Some(key)) {
                    keys.push(Value::String(key.to_string()));
                }
            }
        }
    }
    Ok(render(&merged, &split.parts))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_qemu::vm::Forward;

    /// The record the VM record's tests use, with a forward of the user's beside SSH's.
    pub(crate) fn record() -> VmRecord {
        let mut r = crate::vm_record::tests::record();
        r.config.forwards.push(Forward {
            host: 8080,
            guest: 80,
        });
        r
    }

    pub(crate) const USER_DATA: &str = "#cloud-config\nhostname: web\nusers:\n- name: berth\n  ssh_authorized_keys:\n  - ssh-ed25519 AAAA source\n";

    pub(crate) fn archive() -> VmArchive {
        VmArchive::of("web", &record(), 1, &"ab".repeat(32), USER_DATA.into())
    }

    #[test]
    fn what_belongs_to_the_host_stays_behind() {
        let a = archive();
        assert_eq!(
            a.config.forwards,
            vec![Forward {
                host: 8080,
                guest: 80
            }]
        );
        let json = serde_json::to_string(&a).unwrap();
        assert!(
            !json.contains("id_ed25519") && !json.contains("40022"),
            "{json}"
        );
        assert_eq!(a.check().map_err(|e| e.to_string()), Ok(()));
        let back: VmArchive = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn what_could_reach_a_path_argv_or_the_command_line_is_refused_by_field() {
        let refused = |change: &dyn Fn(&mut VmArchive)| {
            let mut a = archive();
            change(&mut a);
            a.check().unwrap_err().to_string()
        };
        assert!(refused(&|a| a.format = 2).contains("format"));
        assert!(refused(&|a| a.name = "../x".into()).contains("name"));
        assert!(refused(&|a| a.image = "a/b".into()).contains("image"));
        assert!(refused(&|a| a.image_fingerprint = "ab".into()).contains("image_fingerprint"));
        assert!(refused(&|a| a.machine_id = "0".repeat(32)).contains("machine_id"));
        assert!(refused(&|a| a.config.cpus = 0).contains("config.cpus"));
        assert!(refused(&|a| a.config.memory_mib = 8).contains("config.memory_mib"));
        assert!(
            refused(&|a| a.config.disk_cache = "x,file=/etc".into()).contains("config.disk_cache")
        );
        assert!(refused(&|a| a.config.kernel = "../../vmlinuz".into()).contains("config.kernel"));
        assert!(refused(&|a| a.config.initrd = Some("/boot/x".into())).contains("config.initrd"));
        assert!(refused(&|a| a.config.root = "LABEL=x init=/bin/sh".into()).contains("config.root"));
        assert!(refused(&|a| a.config.tcg_cpu = Some("max -S".into())).contains("config.tcg_cpu"));
        assert!(refused(&|a| a.config.forwards[0].guest = 0).contains("config.forwards"));
        assert!(refused(&|a| a.ssh_user = "root;x".into()).contains("ssh_user"));
        assert!(refused(&|a| a.disk_size = 0).contains("disk_size"));
        let unknown = serde_json::to_string(&archive())
            .unwrap()
            .replacen('{', "{\"extra\":1,", 1);
        assert!(serde_json::from_str::<VmArchive>(&unknown).is_err());
    }

    #[test]
    fn a_copy_is_named_anew_and_reached_with_the_receiving_hosts_key() {
        let out = user_data_for_copy(USER_DATA, "web", "web2", "berth", "ssh-ed25519 BBBB target")
            .unwrap();
        let again = UserData::split(out.as_bytes()).unwrap();
        let c = &again.cloud_configs[0];
        assert_eq!(c["hostname"], "web2");
        let keys = &c["users"][0]["ssh_authorized_keys"];
        assert_eq!(keys[0], "ssh-ed25519 AAAA source");
        assert_eq!(keys[1], "ssh-ed25519 BBBB target");
        // A hostname the user chose is theirs; the key is not added twice.
        let theirs = USER_DATA.replace("hostname: web", "hostname: www");
        let out =
            user_data_for_copy(&theirs, "web", "web2", "berth", "ssh-ed25519 AAAA source").unwrap();
        let c = &UserData::split(out.as_bytes()).unwrap().cloud_configs[0];
        assert_eq!(c["hostname"], "www");
        assert_eq!(
            c["users"][0]["ssh_authorized_keys"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
