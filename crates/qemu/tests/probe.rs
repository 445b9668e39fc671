//! The accelerator probe against the real QEMU of this machine: the TCG run must complete, and
//! the KVM verdict must agree with what the CPU shows. Without vmx/svm flags, /dev/kvm can only
//! be a paravirtual or emulated KVM (this machine's case), which the probe must reject; on a
//! machine with hardware extensions and an accessible /dev/kvm the probe must complete quickly.

use berth_qemu::host::{self, Accel, KvmDevice};
use berth_qemu::probe::ProbeRun;

#[test]
fn the_probe_tells_real_kvm_from_emulated_kvm() {
    let r = host::check();
    assert!(
        r.qemu_binary.is_some(),
        "qemu-system-x86_64 is installed by scripts/setup.sh"
    );
    assert!(
        matches!(r.tcg_probe, Some(ProbeRun::Completed { .. })),
        "TCG probe: {:?}",
        r.tcg_probe
    );
    if r.kvm_device == KvmDevice::Accessible {
        assert!(
            r.kvm.probe.is_some(),
            "with /dev/kvm present, a probe must run"
        );
    }
    if r.cpu.virt_extension.is_none() {
        assert!(
            !r.kvm.usable,
            "no vmx/svm but KVM judged usable: {:?}",
            r.kvm
        );
        assert_eq!(r.accel, Accel::Tcg);
    }
    if r.kvm.usable {
        assert!(matches!(r.kvm.probe, Some(ProbeRun::Completed { millis }) if millis < 4000));
        assert_eq!(r.accel, Accel::Kvm);
    }
    assert!(r
        .firmware
        .iter()
        .any(|f| f.name.starts_with("SeaBIOS") && f.present));
}
