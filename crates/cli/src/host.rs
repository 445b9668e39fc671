//! `berth host check`: the host's virtualization support, as virt-host-validate and kvm-ok
//! report it, and the accelerator `--accel auto` will pick.

use crate::output::print_json;
use crate::Status;
use anyhow::Result;
use berth_qemu::host::{self, KvmDevice};
use berth_qemu::probe::ProbeRun;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum HostCommand {
    /// Check CPU virtualization extensions, /dev/kvm, whether KVM can really run a guest (a short
    /// probe run), the QEMU binary and version, firmware, and the accelerator berth will use.
    ///
    /// Exit status 0 when berth can run VMs (with KVM or TCG), 1 when it cannot (no QEMU).
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn run_text(p: &Option<ProbeRun>) -> String {
    match p {
        None => "not run".into(),
        Some(ProbeRun::Completed { millis }) => format!("completed in {millis} ms"),
        Some(ProbeRun::TooSlow { limit_millis }) => {
            format!("still running after {limit_millis} ms (stopped)")
        }
        Some(ProbeRun::Failed { message, .. }) => format!("failed: {message}"),
    }
}

pub fn run(cmd: HostCommand) -> Result<Status> {
    let HostCommand::Check { json } = cmd;
    let r = host::check();
    if json {
        print_json(&r)?;
    } else {
        let line = |what: &str, ok: bool, detail: &str| {
            println!(
                "{:<52}: {} {}",
                what,
                if ok { "PASS" } else { "FAIL" },
                detail
            )
        };
        line(
            "Checking for hardware virtualization (vmx/svm)",
            r.cpu.virt_extension.is_some(),
            &r.cpu
                .virt_extension
                .clone()
                .map(|v| format!("({v})"))
                .unwrap_or_else(|| {
                    format!(
                        "(none{})",
                        if r.cpu.under_hypervisor {
                            "; running under a hypervisor"
                        } else {
                            ""
                        }
                    )
                }),
        );
        let (ok, detail) = match &r.kvm_device {
            KvmDevice::Accessible => (true, String::new()),
            KvmDevice::Missing => (false, "(missing)".into()),
            KvmDevice::NoAccess(e) => (false, format!("({e})")),
        };
        line(
            "Checking if device /dev/kvm exists and is usable",
            ok,
            &detail,
        );
        line(
            "Checking if KVM can run an unmodified guest (probe)",
            r.kvm.usable,
            &format!("({})", r.kvm.reason),
        );
        line(
            "Checking for QEMU",
            r.qemu_binary.is_some(),
            &format!(
                "({} {})",
                r.qemu_binary
                    .clone()
                    .unwrap_or_else(|| "qemu-system-x86_64 not found".into()),
                r.qemu_version.clone().unwrap_or_default()
            ),
        );
        println!("{:<52}: {}", "Same probe under TCG", run_text(&r.tcg_probe));
        for f in &r.firmware {
            println!(
                "{:<52}: {} ({})",
                format!("Firmware: {}", f.name),
                if f.present { "present" } else { "missing" },
                f.path
            );
        }
        println!("Accelerator for --accel auto: {}", r.accel);
    }
    Ok(Status(if r.qemu_binary.is_some() { 0 } else { 1 }))
}
