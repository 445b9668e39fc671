//! Helpers shared by the CLI's integration tests: run the `berth` binary with a given state
//! folder (`BERTH_DIR`), and insist on success.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

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
