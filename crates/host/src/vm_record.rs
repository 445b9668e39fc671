//! What berth keeps of a VM: its own settings ([`VmConfig`]), not QEMU's argv types. QEMU's spec
//! is made from them at every start ([`VmRecord::spec`]), with the paths of the instance's
//! folder ([`VmPaths`]) and what the host is then (its TSC rate), so that a record says the
//! same on any host and a change in how berth drives QEMU reaches guests made before it.
//!
//! Records written before this form (QEMU's spec stored whole) are read too: their settings are
//! taken out of the spec, and the rest is made afresh like any other record's.

use berth_qemu::host::Accel;
use berth_qemu::vm::{
    guest_cmdline, kind_cmdline, machine_id_mac, machine_id_uuid, tsc_khz_from_cpuinfo, Forward,
    Kind, VmSpec,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A VM's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kind.
    pub kind: Kind,
    /// The accelerator chosen at launch.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk cache mode (`writeback`; `unsafe` for throwaway test guests).
    pub disk_cache: String,
    /// Host ports forwarded to the guest, SSH's first.
    pub forwards: Vec<Forward>,
    /// The kernel berth boots, a file in the image's folder.
    pub kernel: String,
    /// Its initrd, a file in the image's folder.
    pub initrd: Option<String>,
    /// The root device the guest mounts (`root=`).
    pub root: String,
    /// The CPU model under TCG (`max` when none).
    pub tcg_cpu: Option<String>,
}

/// What berth stores for a VM (its row's record).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmRecord {
    /// The VM's settings.
    pub config: VmConfig,
    /// Host port forwarded to the guest's SSH.
    pub ssh_port: u16,
    /// Login user berth created.
    pub ssh_user: String,
    /// Private key berth uses to reach the guest.
    pub ssh_key: PathBuf,
    /// The machine-id registered for the guest.
    pub machine_id: String,
    /// Virtual disk size.
    pub disk_size: u64,
    /// Image name.
    pub image: String,
    /// The files in the instance's folder (not stored: the folder is the data dir's).
    #[serde(skip)]
    pub paths: VmPaths,
}

/// The files of a VM in its folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmPaths {
    /// The qcow2 overlay.
    pub disk: PathBuf,
    /// The NoCloud seed.
    pub seed: PathBuf,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Serial console socket.
    pub console_socket: PathBuf,
    /// Serial console log.
    pub console_log: PathBuf,
    /// QEMU's pidfile.
    pub pidfile: PathBuf,
    /// passt's socket.
    pub passt_socket: PathBuf,
}

impl VmPaths {
    /// The VM's folder.
    pub fn folder(&self) -> &Path {
        self.qmp_socket.parent().unwrap_or(Path::new("/"))
    }

    /// The socket of the relay between QEMU and passt that counts the VM's network bytes (see
    /// `crate::nic`); a path of its own, not a field: records written before it have none.
    pub fn nic_socket(&self) -> PathBuf {
        self.folder().join("nic.sock")
    }

    /// Where that relay keeps its counts.
    pub fn nic_counters(&self) -> PathBuf {
        self.folder().join("nic.counters")
    }

    /// The files of the VM whose folder is `dir`.
    pub fn of(dir: &Path) -> VmPaths {
        VmPaths {
            disk: dir.join("disk.qcow2"),
            seed: dir.join("seed.iso"),
            qmp_socket: dir.join("qmp.sock"),
            console_socket: dir.join("console.sock"),
            console_log: dir.join("console.log"),
            pidfile: dir.join("qemu.pid"),
            passt_socket: dir.join("net").join("passt.sock"),
        }
    }
}

/// The record as berth wrote it before [`VmConfig`]: QEMU's spec, whole.
#[derive(Deserialize)]
struct SpecRecord {
    spec: VmSpec,
    ssh_port: u16,
    ssh_user: String,
    ssh_key: PathBuf,
    machine_id: String,
    disk_size: u64,
    image: String,
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl VmRecord {
    /// The stored record of the VM in `dir`, in either form.
    pub fn load(json: &str, dir: &Path) -> Result<VmRecord, serde_json::Error> {
        let mut rec = match serde_json::from_str::<VmRecord>(json) {
            Ok(r) => r,
            Err(e) => {
                let Ok(old) = serde_json::from_str::<SpecRecord>(json) else {
                    return Err(e);
                };
                let root = old
                    .spec
                    .cmdline
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("root="))
                    .unwrap_or("LABEL=rootfs")
                    .to_string();
                VmRecord {
                    config: VmConfig {
                        kind: old.spec.kind,
                        accel: old.spec.accel,
                        cpus: old.spec.cpus,
                        memory_mib: old.spec.memory_mib,
                        disk_cache: old.spec.disk_cache,
                        forwards: old.spec.forwards,
                        kernel: file_name(&old.spec.kernel),
                        initrd: old.spec.initrd.as_deref().map(file_name),
                        root,
                        tcg_cpu: old.spec.tcg_cpu,
                    },
                    ssh_port: old.ssh_port,
                    ssh_user: old.ssh_user,
                    ssh_key: old.ssh_key,
                    machine_id: old.machine_id,
                    disk_size: old.disk_size,
                    image: old.image,
                    paths: VmPaths::default(),
                }
            }
        };
        rec.paths = VmPaths::of(dir);
        Ok(rec)
    }

    /// The record as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serialises")
    }

    /// QEMU's spec for a start of VM `name`, whose image's files are in `image_dir`, on a host
    /// whose `/proc/cpuinfo` says `cpuinfo`.
    pub fn spec(&self, name: &str, image_dir: &Path, cpuinfo: &str) -> VmSpec {
        let c = &self.config;
        VmSpec {
            name: name.to_string(),
            kind: c.kind,
            accel: c.accel,
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            disk: self.paths.disk.clone(),
            disk_cache: c.disk_cache.clone(),
            seed: Some(self.paths.seed.clone()),
            kernel: image_dir.join(&c.kernel),
            initrd: c.initrd.as_ref().map(|i| image_dir.join(i)),
            cmdline: guest_cmdline(&c.root, &self.machine_id)
                + &kind_cmdline(c.kind, c.accel, tsc_khz_from_cpuinfo(cpuinfo)),
            smbios_uuid: machine_id_uuid(&self.machine_id),
            forwards: c.forwards.clone(),
            qmp_socket: self.paths.qmp_socket.clone(),
            console_socket: self.paths.console_socket.clone(),
            console_log: self.paths.console_log.clone(),
            pidfile: self.paths.pidfile.clone(),
            tcg_cpu: c.tcg_cpu.clone(),
            passt_socket: Some(self.paths.passt_socket.clone()),
            nic_socket: Some(self.paths.nic_socket()),
            mac: machine_id_mac(&self.machine_id),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A paravirt VM's record, as the tests of this record and of the VM archive use it.
    pub(crate) fn record() -> VmRecord {
        VmRecord {
            config: VmConfig {
                kind: Kind::Paravirt,
                accel: Accel::Tcg,
                cpus: 2,
                memory_mib: 1024,
                disk_cache: "writeback".into(),
                forwards: vec![Forward {
                    host: 40022,
                    guest: 22,
                }],
                kernel: "vmlinuz-cloud".into(),
                initrd: Some("initrd-cloud.img".into()),
                root: "LABEL=rootfs".into(),
                tcg_cpu: Some(berth_qemu::vm::TCG_CPU_BASELINE.into()),
            },
            ssh_port: 40022,
            ssh_user: "berth".into(),
            ssh_key: "/d/keys/id_ed25519".into(),
            machine_id: "5e5693f454f8456f9fc644a446d80ca6".into(),
            disk_size: 2 << 30,
            image: "debian-12".into(),
            paths: VmPaths::default(),
        }
    }

    #[test]
    fn the_stored_record_names_no_host_path_of_qemus() {
        let json = record().to_json();
        for absent in ["qmp", "pidfile", "cmdline", "console", "/d/instances"] {
            assert!(!json.contains(absent), "{absent} in {json}");
        }
        let back = VmRecord::load(&json, Path::new("/d/instances/web")).unwrap();
        assert_eq!(back.config, record().config);
        assert_eq!(
            back.paths.qmp_socket,
            Path::new("/d/instances/web/qmp.sock")
        );
    }

    #[test]
    fn the_spec_is_made_from_the_settings_and_the_folder() {
        let rec = VmRecord::load(&record().to_json(), Path::new("/d/instances/web")).unwrap();
        let spec = rec.spec(
            "web",
            Path::new("/d/images/debian-12"),
            "cpu MHz : 2596.096\n",
        );
        assert_eq!(spec.kernel, Path::new("/d/images/debian-12/vmlinuz-cloud"));
        assert_eq!(spec.disk, Path::new("/d/instances/web/disk.qcow2"));
        assert!(
            spec.cmdline.starts_with("root=LABEL=rootfs "),
            "{}",
            spec.cmdline
        );
        assert!(
            spec.cmdline.contains("systemd.machine_id=5e5693f4"),
            "{}",
            spec.cmdline
        );
        assert_eq!(spec.mac.as_deref(), Some("52:54:00:5e:56:93"));
        assert_eq!(
            spec.passt_socket.as_deref(),
            Some(Path::new("/d/instances/web/net/passt.sock"))
        );
        assert_eq!(
            spec.nic_socket.as_deref(),
            Some(Path::new("/d/instances/web/nic.sock"))
        );
    }

    #[test]
    fn a_record_of_qemus_spec_whole_is_read_as_settings() {
        // As berth wrote it before VmConfig (a paravirt guest from its launch code).
        let rec = VmRecord::load(&record().to_json(), Path::new("/d/instances/web")).unwrap();
        let spec = rec.spec("web", Path::new("/d/images/debian-12"), "");
        let old = serde_json::json!({
            "spec": spec, "ssh_port": 40022, "ssh_user": "berth",
            "ssh_key": "/d/keys/id_ed25519", "machine_id": rec.machine_id,
            "disk_size": rec.disk_size, "image": "debian-12"
        })
        .to_string();
        let read = VmRecord::load(&old, Path::new("/d/instances/web")).unwrap();
        assert_eq!(read.config, record().config);
        assert_eq!(read.machine_id, rec.machine_id);
        assert!(VmRecord::load("{\"spec\":1}", Path::new("/x")).is_err());
    }
}
