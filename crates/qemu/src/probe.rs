//! The accelerator probe: can KVM really run an unmodified guest here?
//!
//! `/dev/kvm` existing proves little: under nested paravirtual KVM (as on berth's build
//! machines) guest ring-0 code is emulated thousands of times slower, and QEMU's `-cpu host`
//! can fail outright ("failed to set MSR"). So the probe boots a 60-byte multiboot kernel under
//! QEMU with `-accel kvm -cpu host`: in 32-bit protected mode at CPL0 it counts a register down
//! from 10^8 and reports through the isa-debug-exit port. On hardware KVM that takes tens of
//! milliseconds; emulated ring 0 would take minutes, so the probe gives up after a few
//! seconds. The same kernel under TCG is the baseline the report prints.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Loop iterations the probe kernel runs.
pub const PROBE_ITERATIONS: u32 = 100_000_000;
/// How long a KVM probe may take before KVM counts as unusable.
pub const KVM_PROBE_LIMIT: Duration = Duration::from_secs(4);

/// The probe kernel: a multiboot (v1) image loaded at 1 MiB.
pub fn probe_kernel() -> Vec<u8> {
    const LOAD: u32 = 0x10_0000;
    const HEADER: u32 = 32;
    let mut code = vec![0xB9];
    code.extend_from_slice(&PROBE_ITERATIONS.to_le_bytes()); // mov ecx, N
    code.extend_from_slice(&[
        0x49, 0x75, 0xFD, // loop: dec ecx; jnz loop
        0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4 (isa-debug-exit)
        0xB0, 0x00, // mov al, 0 -> QEMU exits with status 1
        0xEE, // out dx, al
        0xF4, 0xEB, 0xFD, // hlt; jmp hlt
    ]);
    let magic: u32 = 0x1BAD_B002;
    let flags: u32 = 1 << 16; // the address fields below are valid
    let checksum = 0u32.wrapping_sub(magic.wrapping_add(flags));
    let end = LOAD + HEADER + code.len() as u32;
    let mut out = Vec::new();
    for w in [magic, flags, checksum, LOAD, LOAD, end, end, LOAD + HEADER] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&code);
    out
}

/// How a probe run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ProbeRun {
    /// The loop ran and the guest reported back.
    Completed {
        /// Wall time of the whole QEMU run, milliseconds.
        millis: u64,
    },
    /// Still running at the limit: guest code is being emulated.
    TooSlow {
        /// The limit, milliseconds.
        limit_millis: u64,
    },
    /// QEMU failed (its message).
    Failed {
        /// Exit status, if any.
        status: Option<i32>,
        /// What QEMU printed.
        message: String,
    },
}

/// The QEMU arguments of a probe run.
pub fn probe_argv(kernel: &Path, kvm: bool) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if kvm {
        a.extend(["-accel", "kvm", "-cpu", "host"].map(String::from));
    } else {
        a.extend(["-accel", "tcg"].map(String::from));
    }
    a.extend(
        [
            "-machine",
            "pc",
            "-m",
            "16",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
        ]
        .map(String::from),
    );
    a.push(kernel.display().to_string());
    a
}

/// Run the probe with `qemu` (a qemu-system-x86_64 binary).
pub fn run_probe(qemu: &Path, kvm: bool, limit: Duration) -> ProbeRun {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return ProbeRun::Failed {
                status: None,
                message: format!("no temporary folder: {e}"),
            }
        }
    };
    let kernel = dir.path().join("probe.bin");
    if let Err(e) = std::fs::write(&kernel, probe_kernel()) {
        return ProbeRun::Failed {
            status: None,
            message: format!("writing the probe kernel: {e}"),
        };
    }
    let start = Instant::now();
    let mut child = match Command::new(qemu)
        .args(probe_argv(&kernel, kvm))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return ProbeRun::Failed {
                status: None,
                message: format!("starting {}: {e}", qemu.display()),
            }
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let millis = start.elapsed().as_millis() as u64;
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read;
                    let _ = s.read_to_string(&mut err);
                }
                // isa-debug-exit with value 0 makes QEMU exit with status 1.
                return if status.code() == Some(1) {
                    ProbeRun::Completed { millis }
                } else {
                    let message = err
                        .lines()
                        .filter(|l| !l.contains("warning:"))
                        .take(3)
                        .collect::<Vec<_>>()
                        .join("; ");
                    ProbeRun::Failed {
                        status: status.code(),
                        message: if message.is_empty() {
                            err.trim().to_string()
                        } else {
                            message
                        },
                    }
                };
            }
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return ProbeRun::TooSlow {
                    limit_millis: limit.as_millis() as u64,
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                return ProbeRun::Failed {
                    status: None,
                    message: format!("waiting for QEMU: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_kernel_has_a_valid_multiboot_header() {
        let k = probe_kernel();
        let w = |i: usize| u32::from_le_bytes(k[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(w(0), 0x1BAD_B002);
        assert_eq!(w(0).wrapping_add(w(1)).wrapping_add(w(2)), 0);
        assert_eq!(w(5) - w(4), k.len() as u32, "load_end covers the file");
        assert_eq!(w(7), 0x10_0020, "entry right after the header");
    }
}
