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

/// `berth console NAME` is interactive both ways: a user name typed into the guest's serial getty
/// brings its password prompt back, and Ctrl-] detaches with status 0, leaving the guest running.
pub fn console_answers(state_dir: &Path, name: &str) {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["console", name])
        .env("BERTH_DIR", state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut input = child.stdin.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Keep typing the user name until getty asks for its password (the first keystrokes may
    // arrive while getty is still starting).
    loop {
        input.write_all(b"console-check\r").unwrap();
        std::thread::sleep(Duration::from_secs(2));
        if String::from_utf8_lossy(&seen.lock().unwrap()).contains("Password:") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no password prompt on the console; it showed:\n{}",
            String::from_utf8_lossy(&seen.lock().unwrap())
        );
    }
    input.write_all(&[0x1d]).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "console exited with {status}: {err}");
    assert!(err.contains(&format!("Detached from {name}")), "{err}");
}
