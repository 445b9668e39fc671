//! Helpers shared by the CLI's integration tests: run the `berth` binary with a given state
//! folder (`BERTH_DIR`), and insist on success.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Run `berth ARGS` with `BERTH_DIR=state`.
pub fn run(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_DIR", state)
        .output()
        .expect("berth runs")
}

/// Run `berth ARGS` and return its stdout; panics with both outputs on failure.
pub fn run_ok(state: &Path, args: &[&str]) -> String {
    let out = run(state, args);
    assert!(
        out.status.success(),
        "berth {args:?} failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the end-to-end tests keep their state and the cached base image (outside the repo).
pub fn e2e_dir() -> PathBuf {
    PathBuf::from(std::env::var("BERTH_E2E_DIR").unwrap_or_else(|_| "/var/tmp/berth-e2e".into()))
}

/// Build (or reuse) the debian-12 image in [`e2e_dir`] once per test process.
pub fn e2e_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        std::fs::create_dir_all(e2e_dir()).unwrap();
        run_ok(&e2e_dir(), &["image", "build", "debian-12"]);
    });
}
