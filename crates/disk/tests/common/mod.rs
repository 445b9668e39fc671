//! Helpers for the interoperability tests: run qemu-img and qemu-io, read their JSON.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (installed by scripts/setup.sh)");
    out
}

/// Run qemu-img and insist on success.
pub fn qemu_img_ok(args: &[&str]) -> String {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// qemu-io commands against an image of a given format.
pub fn qemu_io(path: &Path, format: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg(format);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(path);
    let out = c.output().expect("qemu-io runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && !text.contains("Pattern verification failed")
            && !text.contains("failed"),
        "qemu-io {cmds:?} on {}: {text}",
        path.display()
    );
}

/// `qemu-img check` must find no errors and no leaks.
pub fn assert_qemu_clean(path: &Path) {
    let out = qemu_img(&["check", "--output=json", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img check {}: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v.get("leaks"), None, "{text}");
    assert_eq!(v.get("corruptions"), None, "{text}");
}

/// `qemu-img compare` must say identical.
pub fn assert_qemu_same(a: &Path, b: &Path) {
    let out = qemu_img(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn qemu_info(path: &Path) -> serde_json::Value {
    serde_json::from_str(&qemu_img_ok(&[
        "info",
        "--output=json",
        "-U",
        path.to_str().unwrap(),
    ]))
    .unwrap()
}

pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    pub fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    pub fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn policy() -> berth_disk::BackingPolicy {
    berth_disk::BackingPolicy::default()
}
