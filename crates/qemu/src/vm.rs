//! A VM's specification and its QEMU command line (pure: no I/O, no QEMU needed to test).
//!
//! Three guest kinds, as in the mission:
//! - `full`: emulated hardware only (i440fx `pc`, IDE disk and CD, e1000 NIC), so the guest
//!   needs no virtio drivers;
//! - `hybrid`: `q35` with virtio disk and network, for an unmodified OS with guest drivers;
//! - `paravirt`: QEMU's minimal `microvm` machine, virtio-mmio only, no firmware option ROMs,
//!   direct kernel boot: the fastest.
//!
//! QEMU daemonizes itself (it outlives `berth`), writes a pidfile, serves QMP and the serial
//! console on unix sockets, and logs the console to a file.

use crate::host::Accel;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Guest kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Emulated hardware, no guest drivers.
    Full,
    /// q35 + virtio.
    #[default]
    Hybrid,
    /// microvm, virtio-mmio, direct kernel boot.
    Paravirt,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Full => "full",
            Kind::Hybrid => "hybrid",
            Kind::Paravirt => "paravirt",
        })
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "full" => Ok(Kind::Full),
            "hybrid" => Ok(Kind::Hybrid),
            "paravirt" => Ok(Kind::Paravirt),
            other => Err(format!(
                "unknown guest kind {other:?} (full, hybrid or paravirt)"
            )),
        }
    }
}

/// A port forward from the host's loopback to the guest (served by the VM's passt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// Host port on 127.0.0.1.
    pub host: u16,
    /// Guest port.
    pub guest: u16,
}

/// Everything QEMU needs to run one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Instance name.
    pub name: String,
    /// Guest kind.
    pub kind: Kind,
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The guest's disk (qcow2).
    pub disk: PathBuf,
    /// Disk cache mode (`writeback` normally; `unsafe` for throwaway test guests).
    pub disk_cache: String,
    /// The NoCloud seed (ISO), read-only.
    pub seed: Option<PathBuf>,
    /// Kernel for direct boot.
    pub kernel: PathBuf,
    /// Its initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// SMBIOS system UUID (pc and q35).
    pub smbios_uuid: Option<String>,
    /// Port forwards (SSH's first).
    pub forwards: Vec<Forward>,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Serial console socket.
    pub console_socket: PathBuf,
    /// Serial console log.
    pub console_log: PathBuf,
    /// Pidfile.
    pub pidfile: PathBuf,
    /// The CPU model under TCG (`max` when None). A plain model, never `max` with flags taken
    /// away: that broke guest boots here.
    #[serde(default)]
    pub tcg_cpu: Option<String>,
    /// passt's socket (see [`crate::passt`]); `None` in records made before berth used passt,
    /// which berth moves to passt when it starts them again.
    #[serde(default)]
    pub passt_socket: Option<PathBuf>,
    /// The socket QEMU's NIC connects to when it is not passt's own: the relay that counts the
    /// VM's network bytes on their way to passt (`berth_host::nic`).
    #[serde(default)]
    pub nic_socket: Option<PathBuf>,
    /// The NIC's MAC address (QEMU's own default, the same for every guest, when `None`).
    #[serde(default)]
    pub mac: Option<String>,
}

/// The TCG CPU model for guests whose userland needs only the x86-64 baseline (berth's own
/// Debian images). Measured here (same image, one guest at a time): ready in 20.8-21.7 s with
/// `qemu64`, 23.0-24.9 s with `max`, 26.8-27.8 s with `Nehalem`. The likely reason is the code
/// paths glibc and the kernel pick for the features offered (SSE2 only with `qemu64`), which TCG
/// runs at different costs; the guest's speculation mitigations are the same for `qemu64` and
/// `max` here, and `mitigations=off` changed nothing measurable. `-svm` because qemu64 offers
/// AMD-V, for which udev loads the 1 MiB kvm and kvm_amd modules at every boot: nested guests
/// under TCG are not something anyone can use. Imported images keep `max`: their userland may
/// need x86-64-v2 or later.
///
/// `+rdrand` (TCG answers RDRAND from the host's `getrandom`) because Debian's kernel trusts the
/// CPU's generator: its random pool is ready 0.05 s into the boot. Without it the pool waited for
/// `virtio_rng`, a module udev loads about 5 s in, or for the kernel's timer-jitter fallback, and
/// in CI a paravirt guest sharing two cores with three others was still blocked in `getrandom`
/// 592 s into its boot, with no SSH.
pub const TCG_CPU_BASELINE: &str = "qemu64,-svm,+rdrand";

/// The machine-id as a UUID (8-4-4-4-12), for SMBIOS.
pub fn machine_id_uuid(id: &str) -> Option<String> {
    if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    ))
}

/// The NIC's MAC for a machine-id: QEMU's and libvirt's `52:54:00` prefix and three bytes of
/// the id, so that a guest keeps its MAC when it moves and a copy (a new machine-id) gets a new
/// one, instead of QEMU's `52:54:00:12:34:56` for every guest.
pub fn machine_id_mac(id: &str) -> Option<String> {
    machine_id_uuid(id)?;
    Some(format!(
        "52:54:00:{}:{}:{}",
        &id[0..2],
        &id[2..4],
        &id[4..6]
    ))
}

fn push(a: &mut Vec<String>, items: &[&str]) {
    a.extend(items.iter().map(|s| s.to_string()));
}

/// Escape a value for QEMU's comma-separated option syntax.
fn opt(v: &str) -> String {
    v.replace(',', ",,")
}

impl VmSpec {
    /// The QEMU argument vector (without the binary).
    pub fn argv(&self) -> Vec<String> {
        let mut a = Vec::new();
        push(
            &mut a,
            &[
                "-name",
                &format!("{},process=berth-{}", opt(&self.name), opt(&self.name)),
            ],
        );
        match self.accel {
            Accel::Kvm => push(&mut a, &["-accel", "kvm", "-cpu", "host"]),
            // Plain `max`: adding or removing flags broke guest boots under TCG (measured).
            Accel::Tcg => push(
                &mut a,
                &[
                    "-accel",
                    "tcg,thread=multi",
                    "-cpu",
                    self.tcg_cpu.as_deref().unwrap_or("max"),
                ],
            ),
        }
        let machine = match self.kind {
            Kind::Full => "pc".to_string(),
            Kind::Hybrid => "q35".to_string(),
            Kind::Paravirt => "microvm,x-option-roms=off,rtc=on,isa-serial=on".to_string(),
        };
        push(&mut a, &["-machine", &machine]);
        push(
            &mut a,
            &[
                "-smp",
                &self.cpus.to_string(),
                "-m",
                &format!("{}M", self.memory_mib),
            ],
        );
        push(
            &mut a,
            &[
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-vga",
                "none",
            ],
        );
        if let (Some(uuid), false) = (&self.smbios_uuid, self.kind == Kind::Paravirt) {
            push(&mut a, &["-smbios", &format!("type=1,uuid={uuid}")]);
            push(&mut a, &["-uuid", uuid]);
        }
        // Disk and seed.
        let disk = format!(
            "file={},if=none,id=disk0,format=qcow2,cache={},discard=unmap",
            opt(&self.disk.display().to_string()),
            self.disk_cache
        );
        push(&mut a, &["-drive", &disk]);
        let seed = self.seed.as_ref().map(|s| {
            format!(
                "file={},if=none,id=seed0,format=raw,readonly=on",
                opt(&s.display().to_string())
            )
        });
        match self.kind {
            Kind::Full => {
                push(&mut a, &["-device", "ide-hd,drive=disk0,bus=ide.0,unit=0"]);
                if let Some(s) = &seed {
                    push(&mut a, &["-drive", &format!("{s},media=cdrom")]);
                    push(&mut a, &["-device", "ide-cd,drive=seed0,bus=ide.1,unit=0"]);
                }
            }
            Kind::Hybrid => {
                push(
                    &mut a,
                    &["-device", "virtio-blk-pci,drive=disk0,bootindex=1"],
                );
                if let Some(s) = &seed {
                    push(&mut a, &["-drive", s]);
                    push(&mut a, &["-device", "virtio-blk-pci,drive=seed0"]);
                }
            }
            Kind::Paravirt => {
                push(&mut a, &["-device", "virtio-blk-device,drive=disk0"]);
                if let Some(s) = &seed {
                    push(&mut a, &["-drive", s]);
                    push(&mut a, &["-device", "virtio-blk-device,drive=seed0"]);
                }
            }
        }
        // Network: passt on its socket (the forwards are passt's). QEMU's user-mode NAT only
        // for a spec without one, which would let the guest reach the host's loopback.
        let netdev = match self.nic_socket.as_ref().or(self.passt_socket.as_ref()) {
            Some(s) => crate::passt::netdev(s),
            None => {
                let mut n = "user,id=net0".to_string();
                for f in &self.forwards {
                    n.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
                }
                n
            }
        };
        push(&mut a, &["-netdev", &netdev]);
        let mut nic = match self.kind {
            Kind::Full => "e1000,netdev=net0,romfile=",
            Kind::Hybrid => "virtio-net-pci,netdev=net0,romfile=",
            Kind::Paravirt => "virtio-net-device,netdev=net0",
        }
        .to_string();
        if let Some(mac) = &self.mac {
            nic.push_str(&format!(",mac={}", opt(mac)));
        }
        push(&mut a, &["-device", &nic]);
        // Entropy from the host: virtio-rng where the guest has virtio. It is the one source for a
        // KVM guest whose host CPU lacks RDRAND and for imported kernels that do not trust the CPU.
        match self.kind {
            Kind::Full => {}
            Kind::Hybrid => push(&mut a, &["-device", "virtio-rng-pci"]),
            Kind::Paravirt => push(&mut a, &["-device", "virtio-rng-device"]),
        }
        // Direct kernel boot.
        push(&mut a, &["-kernel", &self.kernel.display().to_string()]);
        if let Some(i) = &self.initrd {
            push(&mut a, &["-initrd", &i.display().to_string()]);
        }
        push(&mut a, &["-append", &self.cmdline]);
        // Console, QMP, process.
        let chardev = format!(
            "socket,id=ser0,path={},server=on,wait=off,logfile={},logappend=on",
            opt(&self.console_socket.display().to_string()),
            opt(&self.console_log.display().to_string())
        );
        push(&mut a, &["-chardev", &chardev, "-serial", "chardev:ser0"]);
        push(
            &mut a,
            &[
                "-qmp",
                &format!(
                    "unix:{},server=on,wait=off",
                    opt(&self.qmp_socket.display().to_string())
                ),
            ],
        );
        push(
            &mut a,
            &[
                "-pidfile",
                &self.pidfile.display().to_string(),
                "-daemonize",
            ],
        );
        a
    }
}

/// The host's TSC frequency in kHz from /proc/cpuinfo's "cpu MHz" (under TCG the guest's TSC
/// runs at the host's rate).
pub fn tsc_khz_from_cpuinfo(text: &str) -> Option<u64> {
    let mhz: f64 = text.lines().find_map(|l| {
        l.strip_prefix("cpu MHz")?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    })?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Extra kernel parameters a guest kind needs on an accelerator.
///
/// Under TCG every vCPU reads QEMU's one clock as its TSC, but the kernel's boot-time warp test
/// between vCPUs running as host threads fails ("Marking TSC unstable due to TSCs
/// unsynchronized"): a q35 guest then falls back to the HPET (each clock read an emulated MMIO
/// access) and a microvm guest, which has no HPET, to `refined-jiffies`, a 4 ms clock with no
/// high-resolution timers. `tsc=reliable` keeps the TSC.
///
/// microvm has no HPET and no ACPI PM timer either, so under TCG on a busy host the kernel's
/// quick TSC calibration against the PIT can fail ("tsc: Unable to calibrate against PIT"),
/// after which the boot hangs with the clock stuck at 0 (seen in CI with three guests on two
/// cores); telling it the TSC rate skips that calibration.
pub fn kind_cmdline(kind: Kind, accel: Accel, tsc_khz: Option<u64>) -> String {
    match (kind, accel, tsc_khz) {
        (_, Accel::Kvm, _) => String::new(),
        (Kind::Paravirt, Accel::Tcg, Some(khz)) => format!(" tsc=reliable tsc_early_khz={khz}"),
        (_, Accel::Tcg, _) => " tsc=reliable".to_string(),
    }
}

/// The kernel command line berth gives a guest whose root file system is `root`
/// (`LABEL=rootfs`, `UUID=...`).
///
/// The guest's one network is its own passt (earlier QEMU's user-mode NAT): nothing else lives
/// on its link (only the virtual gateway answers there), so duplicate address detection for
/// its IPv6 addresses can find nothing. The kernel still waits a random 0-1 s
/// (`router_solicitation_delay`) and then 1 s per probe (`dad_transmits`) before an address is
/// usable, and systemd-networkd-wait-online waits for the link-local one: with everything
/// ordered after the network (cloud-init's network stage, sshd) behind it, that was 1-2 s of
/// every boot. Both are 0 here; the kernel applies `sysctl.*` parameters before it starts init.
pub fn guest_cmdline(root: &str, machine_id: &str) -> String {
    format!(
        "root={root} ro console=ttyS0,115200 net.ifnames=0 systemd.machine_id={machine_id} \
         ds=nocloud sysctl.net.ipv6.conf.default.dad_transmits=0 \
         sysctl.net.ipv6.conf.default.router_solicitation_delay=0"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: Kind, accel: Accel) -> VmSpec {
        VmSpec {
            name: "web1".into(),
            kind,
            accel,
            cpus: 2,
            memory_mib: 1024,
            disk: "/var/lib/berth/instances/web1/disk.qcow2".into(),
            disk_cache: "writeback".into(),
            seed: Some("/var/lib/berth/instances/web1/seed.iso".into()),
            kernel: "/var/lib/berth/images/debian-12/vmlinuz".into(),
            initrd: Some("/var/lib/berth/images/debian-12/initrd.img".into()),
            cmdline: guest_cmdline("LABEL=rootfs", "0123456789abcdef0123456789abcdef"),
            smbios_uuid: machine_id_uuid("0123456789abcdef0123456789abcdef"),
            forwards: vec![
                Forward {
                    host: 40022,
                    guest: 22,
                },
                Forward {
                    host: 8080,
                    guest: 80,
                },
            ],
            qmp_socket: "/run/q.sock".into(),
            console_socket: "/run/c.sock".into(),
            console_log: "/run/console.log".into(),
            pidfile: "/run/qemu.pid".into(),
            tcg_cpu: None,
            passt_socket: Some("/run/passt.sock".into()),
            nic_socket: None,
            mac: None,
        }
    }

    fn has_pair(a: &[String], k: &str, v: &str) -> bool {
        a.windows(2).any(|w| w[0] == k && w[1] == v)
    }

    #[test]
    fn tcg_never_enables_kvm() {
        let a = spec(Kind::Hybrid, Accel::Tcg).argv();
        assert!(has_pair(&a, "-accel", "tcg,thread=multi"));
        assert!(has_pair(&a, "-cpu", "max"));
        assert!(!a.iter().any(|x| x.contains("kvm")), "{a:?}");
        let k = spec(Kind::Hybrid, Accel::Kvm).argv();
        assert!(has_pair(&k, "-accel", "kvm") && has_pair(&k, "-cpu", "host"));
        // A baseline model where the guest allows it; KVM always passes the host's CPU.
        let mut b = spec(Kind::Hybrid, Accel::Tcg);
        b.tcg_cpu = Some(TCG_CPU_BASELINE.into());
        assert!(has_pair(&b.argv(), "-cpu", TCG_CPU_BASELINE));
        b.accel = Accel::Kvm;
        assert!(has_pair(&b.argv(), "-cpu", "host"));
    }

    #[test]
    fn kinds_pick_their_machines_and_devices() {
        let full = spec(Kind::Full, Accel::Tcg).argv();
        assert!(has_pair(&full, "-machine", "pc"));
        assert!(has_pair(&full, "-device", "e1000,netdev=net0,romfile="));
        assert!(has_pair(
            &full,
            "-device",
            "ide-hd,drive=disk0,bus=ide.0,unit=0"
        ));
        assert!(
            !full.iter().any(|x| x.contains("virtio")),
            "full guests need no virtio: {full:?}"
        );
        let hybrid = spec(Kind::Hybrid, Accel::Tcg).argv();
        assert!(has_pair(&hybrid, "-machine", "q35"));
        assert!(has_pair(
            &hybrid,
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=1"
        ));
        let pv = spec(Kind::Paravirt, Accel::Tcg).argv();
        assert!(pv.iter().any(|x| x.starts_with("microvm,")));
        assert!(
            pv.iter().all(|x| !x.contains("-pci")),
            "microvm has no PCI: {pv:?}"
        );
        assert!(!pv.contains(&"-smbios".to_string()));
    }

    #[test]
    fn identity_network_and_control_channels() {
        let a = spec(Kind::Hybrid, Accel::Tcg).argv();
        assert!(has_pair(
            &a,
            "-smbios",
            "type=1,uuid=01234567-89ab-cdef-0123-456789abcdef"
        ));
        assert!(a
            .iter()
            .any(|x| x.contains("systemd.machine_id=0123456789abcdef0123456789abcdef")));
        // passt, never QEMU's user-mode NAT, whose gateway is the host's loopback.
        assert!(has_pair(
            &a,
            "-netdev",
            "stream,id=net0,server=off,addr.type=unix,addr.path=/run/passt.sock"
        ));
        assert!(!a
            .iter()
            .any(|x| x.contains("hostfwd") || x.starts_with("user,")));
        // Through the relay that counts its bytes, when there is one.
        let mut counted = spec(Kind::Hybrid, Accel::Tcg);
        counted.nic_socket = Some("/d/vm/nic.sock".into());
        assert!(has_pair(
            &counted.argv(),
            "-netdev",
            "stream,id=net0,server=off,addr.type=unix,addr.path=/d/vm/nic.sock"
        ));
        // A record from before passt, as stored, still builds (berth moves it to passt when it
        // starts it).
        let mut old = spec(Kind::Hybrid, Accel::Tcg);
        old.passt_socket = None;
        assert!(has_pair(
            &old.argv(),
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:8080-:80"
        ));
        assert!(has_pair(&a, "-qmp", "unix:/run/q.sock,server=on,wait=off"));
        assert!(a.contains(&"-daemonize".to_string()));
        assert!(a
            .iter()
            .any(|x| x.contains("readonly=on") && x.contains("seed.iso")));
        assert_eq!(machine_id_uuid("xyz"), None);
    }

    #[test]
    fn a_guests_mac_follows_its_machine_id() {
        let id = "5e5693f454f8456f9fc644a446d80ca6";
        assert_eq!(machine_id_mac(id).as_deref(), Some("52:54:00:5e:56:93"));
        assert_eq!(machine_id_mac("xyz"), None);
        let mut s = spec(Kind::Paravirt, Accel::Tcg);
        s.mac = machine_id_mac(id);
        assert!(has_pair(
            &s.argv(),
            "-device",
            "virtio-net-device,netdev=net0,mac=52:54:00:5e:56:93"
        ));
    }

    #[test]
    fn guests_on_user_mode_nat_skip_ipv6_duplicate_address_detection() {
        let c = guest_cmdline("LABEL=rootfs", "0123456789abcdef0123456789abcdef");
        assert!(c.starts_with("root=LABEL=rootfs ro console=ttyS0,115200 "));
        assert!(c.contains(" systemd.machine_id=0123456789abcdef0123456789abcdef "));
        assert!(c.contains(" sysctl.net.ipv6.conf.default.dad_transmits=0"));
        assert!(c.contains(" sysctl.net.ipv6.conf.default.router_solicitation_delay=0"));
        assert!(!c.contains("  "), "one space between parameters: {c:?}");
    }

    #[test]
    fn tcg_guests_keep_the_tsc_and_microvm_is_told_its_rate() {
        assert_eq!(
            tsc_khz_from_cpuinfo("processor: 0\ncpu MHz\t\t: 2596.150\n"),
            Some(2_596_150)
        );
        assert_eq!(tsc_khz_from_cpuinfo("nothing"), None);
        assert_eq!(
            kind_cmdline(Kind::Paravirt, Accel::Tcg, Some(2_596_150)),
            " tsc=reliable tsc_early_khz=2596150"
        );
        assert_eq!(
            kind_cmdline(Kind::Hybrid, Accel::Tcg, Some(2_596_150)),
            " tsc=reliable"
        );
        assert_eq!(
            kind_cmdline(Kind::Paravirt, Accel::Kvm, Some(2_596_150)),
            ""
        );
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut s = spec(Kind::Hybrid, Accel::Tcg);
        s.disk = "/tmp/a,b/disk.qcow2".into();
        assert!(s
            .argv()
            .iter()
            .any(|x| x.starts_with("file=/tmp/a,,b/disk.qcow2,")));
    }
}
