//! Regressions for issue 13 items 10 and 11: one exit-status scheme for every command (the
//! README's table), and messages that name what was typed. A missing instance was 255 from
//! `exec`, 1 from `info` and 125 from `run`; a command missing in a container was 125 or 255;
//! `run --memory` ended 137 without a word; `--disk 8E` said "out of range integral type
//! conversion attempted".

mod common;

use common::{e2e_dir, e2e_image, run};
use std::process::Output;

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_status(o: &Output, want: i32, what: &str) {
    assert_eq!(o.status.code(), Some(want), "{what}: {}", err(o));
}

#[test]
fn a_missing_instance_is_125_in_every_command() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    for args in [
        &["info", "ghost"][..],
        &["exec", "ghost", "--", "true"],
        &["shell", "ghost"],
        &["ssh", "ghost"],
        &["ssh", "ghost", "--", "true"],
        &["start", "ghost"],
        &["stop", "ghost"],
        &["restart", "ghost"],
        &["pause", "ghost"],
        &["resume", "ghost"],
        &["delete", "ghost"],
        &["console", "ghost"],
        &["logs", "ghost"],
        &["set", "ghost", "pids=10"],
    ] {
        let o = run(state, args);
        assert_status(&o, 125, &args.join(" "));
        assert!(
            err(&o).contains("no instance named \"ghost\""),
            "{args:?}: {}",
            err(&o)
        );
    }
    // A missing image, for a VM and for a container alike.
    for args in [
        &["run", "--rm", "no-such-image", "--", "true"][..],
        &["launch", "no-such-image", "vm-x"],
        &["launch", "--container", "no-such-image", "ct-x"],
    ] {
        let o = run(state, args);
        assert_status(&o, 125, &args.join(" "));
        assert!(err(&o).contains("no-such-image"), "{args:?}: {}", err(&o));
    }
}

#[test]
fn usage_errors_are_2_and_refused_values_125() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    for args in [
        &["exec"][..],
        &["exec", "ghost"],
        &["--no-such-flag"],
        &["no-such-command"],
        &["run", "--memory"],
        &["run", "--network", "wifi", "img", "--", "true"],
        &["disk", "create", "x.qcow2", "lots"],
    ] {
        let o = run(state, args);
        assert_status(&o, 2, &args.join(" "));
    }
    // Values that parse but are refused, and files that cannot be read: berth's own failure.
    let missing = d.path().join("missing.qcow2");
    for args in [
        &["disk", "info", missing.to_str().unwrap()][..],
        &[
            "disk",
            "compare",
            missing.to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        &["disk", "check", missing.to_str().unwrap()],
        &["seed", "validate", missing.to_str().unwrap()],
    ] {
        let o = run(state, args);
        assert_status(&o, 125, &args.join(" "));
        assert!(err(&o).contains("missing.qcow2"), "{args:?}: {}", err(&o));
    }
}

#[test]
fn sizes_past_any_file_name_the_value() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("huge.raw");
    let o = run(
        d.path(),
        &["disk", "create", "-f", "raw", img.to_str().unwrap(), "8E"],
    );
    assert_status(&o, 125, "disk create 8E");
    assert!(
        err(&o).contains("9223372036854775808") && err(&o).contains("larger than any file"),
        "{}",
        err(&o)
    );
    assert!(!err(&o).contains("integral"), "{}", err(&o));
    assert!(std::fs::read_dir(d.path()).unwrap().next().is_none());
    let o = run(
        d.path(),
        &["run", "--rm", "--disk", "8E", "img", "--", "true"],
    );
    assert_status(&o, 125, "run --disk 8E");
    assert!(
        err(&o).contains("--disk 9223372036854775808"),
        "{}",
        err(&o)
    );
}

#[test]
fn commands_that_cannot_run_in_a_container_are_127_and_126() {
    e2e_image();
    let state = e2e_dir();
    for (cmd, want, says) in [
        ("no-such-command", 127, "command not found"),
        ("/no/such/path", 127, "No such file or directory"),
        ("/etc/passwd", 126, "Permission denied"),
        ("/etc", 126, "cannot run it"),
    ] {
        let o = run(&state, &["run", "--rm", "debian-12", "--", cmd]);
        assert_status(&o, want, cmd);
        let e = err(&o);
        assert!(e.contains(cmd) && e.contains(says), "{cmd}: {e}");
        assert!(!e.contains('\x1b'), "no coloured log lines: {e:?}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    }
    // The command's own status passes through, and so does a shell's 127.
    let o = run(
        &state,
        &["run", "--rm", "debian-12", "--", "sh", "-c", "exit 42"],
    );
    assert_status(&o, 42, "exit 42");
    let o = run(
        &state,
        &["run", "--rm", "debian-12", "--", "sh", "-c", "nope"],
    );
    assert_status(&o, 127, "sh -c nope");

    // The same through exec into a running container.
    let name = format!("ct-exit-{}", std::process::id());
    let mut bg = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "run",
            "--rm",
            "--name",
            &name,
            "debian-12",
            "--",
            "sleep",
            "60",
        ])
        .env("BERTH_DIR", &state)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let o = run(&state, &["exec", &name, "--", "true"]);
        if o.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", err(&o));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = run(&state, &["exec", &name, "--", "no-such-command"]);
    assert_status(&o, 127, "exec no-such-command");
    let o = run(&state, &["exec", &name, "--", "/etc/passwd"]);
    assert_status(&o, 126, "exec /etc/passwd");
    let o = run(&state, &["exec", &name, "--", "sh", "-c", "exit 3"]);
    assert_status(&o, 3, "exec exit 3");
    common::run_ok(&state, &["stop", "--force", &name]);
    let _ = bg.wait();
}

/// `berth run --rm --memory 64M debian-12 -- sh -c SCRIPT`.
fn run_in_64m(script: &str) -> Output {
    run(
        &e2e_dir(),
        &[
            "run",
            "--rm",
            "--memory",
            "64M",
            "debian-12",
            "--",
            "sh",
            "-c",
            script,
        ],
    )
}

#[test]
fn the_memory_limit_says_it_killed_the_command() {
    e2e_image();
    let o = run_in_64m("head -c 300M /dev/zero | tail > /dev/null");
    assert_status(&o, 137, "run --memory 64M");
    let e = err(&o);
    assert!(
        e.contains("memory limit (--memory 64M)") && e.contains("OOM killer"),
        "{e}"
    );
    // Without the limit being reached, nothing is said.
    let o = run_in_64m("sh -c 'kill -9 $$'");
    assert_status(&o, 137, "kill -9");
    assert!(!err(&o).contains("memory limit"), "{}", err(&o));
}
