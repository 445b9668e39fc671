//! `berth host check`: what this host offers for running VMs (as `virt-host-validate` and
//! `kvm-ok` report it), and which accelerator berth will use. Parsing is pure and takes its
//! inputs as text and paths; [`check`] gathers them from the system.

use crate::probe::{run_probe, ProbeRun, KVM_PROBE_LIMIT};
use serde::Serialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// An accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Linux KVM.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelRequest {
    /// KVM when the probe says it works, TCG otherwise.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// TCG.
    Tcg,
}

/// CPU virtualization support read from /proc/cpuinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuInfo {
    /// "vmx" (Intel VT-x), "svm" (AMD-V), or none.
    pub virt_extension: Option<String>,
    /// The CPU says it runs under a hypervisor.
    pub under_hypervisor: bool,
    /// Model name.
    pub model: Option<String>,
}

/// Parse /proc/cpuinfo text.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut flags: Vec<&str> = Vec::new();
    let mut model = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "flags" if flags.is_empty() => flags = v.split_whitespace().collect(),
            "model name" if model.is_none() => model = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let virt = ["vmx", "svm"]
        .into_iter()
        .find(|f| flags.contains(f))
        .map(str::to_string);
    CpuInfo {
        virt_extension: virt,
        under_hypervisor: flags.contains(&"hypervisor"),
        model,
    }
}

/// `/dev/kvm` state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmDevice {
    /// No such device (module not loaded, or no support).
    Missing,
    /// Present but this user cannot open it read-write.
    NoAccess(String),
    /// Present and usable by this user.
    Accessible,
}

/// Check `/dev/kvm` (or the given path).
pub fn kvm_device(path: &Path) -> KvmDevice {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => KvmDevice::Accessible,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KvmDevice::Missing,
        Err(e) => KvmDevice::NoAccess(e.to_string()),
    }
}

/// The QEMU version from `qemu-system-x86_64 --version` output.
pub fn parse_qemu_version(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let rest = first.split("version ").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// Find an executable on `path_var` (a PATH value).
pub fn find_in_path(name: &str, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Firmware files QEMU may use, and whether each is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Firmware {
    /// What it is.
    pub name: String,
    /// Where berth looked.
    pub path: String,
    /// Present.
    pub present: bool,
}

/// Firmware berth's machine types need, looked up under `root` ("/" normally). NIC option ROMs
/// are listed for information: berth boots from disk or kernel, never PXE, and gives NICs an
/// empty `romfile`.
pub fn firmware(root: &Path) -> Vec<Firmware> {
    [
        (
            "SeaBIOS (pc, q35)",
            &[
                "usr/share/seabios/bios-256k.bin",
                "usr/share/qemu/bios-256k.bin",
            ][..],
        ),
        ("qboot (microvm)", &["usr/share/qemu/qboot.rom"][..]),
        (
            "linuxboot option ROM (direct kernel boot)",
            &["usr/share/qemu/linuxboot_dma.bin"][..],
        ),
        (
            "e1000 option ROM (not needed)",
            &[
                "usr/share/qemu/efi-e1000.rom",
                "usr/lib/ipxe/qemu/efi-e1000.rom",
            ][..],
        ),
        (
            "OVMF UEFI (optional)",
            &[
                "usr/share/OVMF/OVMF_CODE.fd",
                "usr/share/OVMF/OVMF_CODE_4M.fd",
            ][..],
        ),
    ]
    .into_iter()
    .map(|(name, rels)| {
        let found = rels.iter().map(|r| root.join(r)).find(|p| p.exists());
        let path = found.clone().unwrap_or_else(|| root.join(rels[0]));
        Firmware {
            name: name.into(),
            path: path.display().to_string(),
            present: found.is_some(),
        }
    })
    .collect()
}

/// Whether KVM can run guests, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvmVerdict {
    /// KVM can run unmodified guests at native speed.
    pub usable: bool,
    /// Why (or why not), in one line.
    pub reason: String,
    /// The KVM probe run, if one was made.
    pub probe: Option<ProbeRun>,
}

/// Decide from the device state and a probe run.
pub fn kvm_verdict(dev: &KvmDevice, probe: Option<ProbeRun>) -> KvmVerdict {
    match (dev, &probe) {
        (KvmDevice::Missing, _) => KvmVerdict { usable: false, reason: "/dev/kvm does not exist (no KVM support or module not loaded)".into(), probe },
        (KvmDevice::NoAccess(e), _) => KvmVerdict { usable: false, reason: format!("/dev/kvm is not accessible to this user: {e}"), probe },
        (_, Some(ProbeRun::Completed { millis })) => KvmVerdict { usable: true, reason: format!("a ring-0 test guest ran {} iterations under KVM in {millis} ms", crate::probe::PROBE_ITERATIONS), probe },
        (_, Some(ProbeRun::TooSlow { limit_millis })) => KvmVerdict {
            usable: false,
            reason: format!("/dev/kvm exists but a ring-0 test guest did not finish within {limit_millis} ms: guest kernel code is being emulated (nested or paravirtual KVM), an unmodified kernel would crawl"),
            probe,
        },
        (_, Some(ProbeRun::Failed { message, .. })) => KvmVerdict { usable: false, reason: format!("/dev/kvm exists but QEMU cannot run a guest with it: {message}"), probe },
        (_, None) => KvmVerdict { usable: false, reason: "no probe was run (QEMU not found)".into(), probe },
    }
}

/// Why the requested accelerator cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccelError {
    /// KVM was asked for and does not work.
    #[error("--accel kvm was requested but KVM cannot run guests here: {0}")]
    KvmUnusable(String),
}

/// Pick the accelerator; with `auto` a fallback to TCG comes with a one-line notice.
pub fn choose_accel(
    req: AccelRequest,
    kvm: &KvmVerdict,
) -> Result<(Accel, Option<String>), AccelError> {
    match req {
        AccelRequest::Tcg => Ok((Accel::Tcg, None)),
        AccelRequest::Kvm if kvm.usable => Ok((Accel::Kvm, None)),
        AccelRequest::Kvm => Err(AccelError::KvmUnusable(kvm.reason.clone())),
        AccelRequest::Auto if kvm.usable => Ok((Accel::Kvm, None)),
        AccelRequest::Auto => Ok((
            Accel::Tcg,
            Some(format!(
                "notice: using TCG software emulation: {}",
                kvm.reason
            )),
        )),
    }
}

/// The whole host report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    /// CPU.
    pub cpu: CpuInfo,
    /// `/dev/kvm`.
    pub kvm_device: KvmDevice,
    /// The KVM verdict.
    pub kvm: KvmVerdict,
    /// The QEMU binary.
    pub qemu_binary: Option<String>,
    /// Its version.
    pub qemu_version: Option<String>,
    /// The same probe kernel under TCG, for comparison.
    pub tcg_probe: Option<ProbeRun>,
    /// Firmware files.
    pub firmware: Vec<Firmware>,
    /// What `--accel auto` picks.
    pub accel: Accel,
}

/// The QEMU binary berth uses: `$BERTH_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_QEMU").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    find_in_path(
        "qemu-system-x86_64",
        &std::env::var("PATH").unwrap_or_default(),
    )
}

/// Gather everything (runs the probes: a few seconds at most).
pub fn check() -> HostReport {
    let cpu = parse_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let dev = kvm_device(Path::new("/dev/kvm"));
    let qemu = qemu_binary();
    let version = qemu.as_ref().and_then(|q| {
        let out = std::process::Command::new(q)
            .arg("--version")
            .output()
            .ok()?;
        parse_qemu_version(&String::from_utf8_lossy(&out.stdout))
    });
    let kvm_probe = match (&qemu, &dev) {
        (Some(q), KvmDevice::Accessible) => Some(run_probe(q, true, KVM_PROBE_LIMIT)),
        _ => None,
    };
    let tcg_probe = qemu
        .as_ref()
        .map(|q| run_probe(q, false, std::time::Duration::from_secs(30)));
    let kvm = kvm_verdict(&dev, kvm_probe);
    let accel = if kvm.usable { Accel::Kvm } else { Accel::Tcg };
    HostReport {
        cpu,
        kvm_device: dev,
        kvm,
        qemu_binary: qemu.map(|q| q.display().to_string()),
        qemu_version: version,
        tcg_probe,
        firmware: firmware(Path::new("/")),
        accel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_flags() {
        let c =
            parse_cpuinfo("processor : 0\nmodel name : Test CPU\nflags : fpu vme hypervisor lm\n");
        assert_eq!(c.virt_extension, None);
        assert!(c.under_hypervisor);
        assert_eq!(c.model.as_deref(), Some("Test CPU"));
        assert_eq!(
            parse_cpuinfo("flags : fpu vmx\n").virt_extension.as_deref(),
            Some("vmx")
        );
        assert_eq!(
            parse_cpuinfo("flags : svm\n").virt_extension.as_deref(),
            Some("svm")
        );
    }

    #[test]
    fn qemu_version() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)\nCopyright"),
            Some("7.2.22".into())
        );
        assert_eq!(parse_qemu_version("garbage"), None);
    }

    #[test]
    fn accel_choice_follows_the_probe_not_the_device() {
        let present_but_slow = kvm_verdict(
            &KvmDevice::Accessible,
            Some(ProbeRun::TooSlow { limit_millis: 4000 }),
        );
        assert!(!present_but_slow.usable);
        let (a, notice) = choose_accel(AccelRequest::Auto, &present_but_slow).unwrap();
        assert_eq!(a, Accel::Tcg);
        assert!(notice.unwrap().contains("emulated"));
        assert!(matches!(
            choose_accel(AccelRequest::Kvm, &present_but_slow),
            Err(AccelError::KvmUnusable(_))
        ));
        let msr = kvm_verdict(
            &KvmDevice::Accessible,
            Some(ProbeRun::Failed {
                status: Some(134),
                message: "failed to set MSR 0x10a".into(),
            }),
        );
        assert!(!msr.usable && msr.reason.contains("MSR"));
        let real = kvm_verdict(
            &KvmDevice::Accessible,
            Some(ProbeRun::Completed { millis: 120 }),
        );
        assert_eq!(
            choose_accel(AccelRequest::Auto, &real).unwrap(),
            (Accel::Kvm, None)
        );
        assert_eq!(
            choose_accel(AccelRequest::Tcg, &real).unwrap(),
            (Accel::Tcg, None)
        );
        assert!(!kvm_verdict(&KvmDevice::Missing, None).usable);
    }
}
