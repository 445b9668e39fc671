//! The `berth` binary end to end: help and version, exit statuses, JSON output, the README's
//! main job, and crash safety (kill -9 at random points mid-write and mid-convert).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn berth(args: &[&str], dir: &Path) -> Output {
    common::run(&dir.join("state"), args)
}

fn ok(args: &[&str], dir: &Path) -> String {
    common::run_ok(&dir.join("state"), args)
}

fn qemu_check_code(path: &Path) -> (Option<i32>, String) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_command_has_help_and_there_is_a_version() {
    let d = tempfile::tempdir().unwrap();
    assert!(ok(&["--version"], d.path()).starts_with("berth "));
    for cmd in [
        vec!["disk"],
        vec!["disk", "create"],
        vec!["disk", "info"],
        vec!["disk", "check"],
        vec!["disk", "convert"],
        vec!["disk", "resize"],
        vec!["disk", "map"],
        vec!["disk", "compare"],
        vec!["disk", "snapshot"],
        vec!["disk", "snapshot", "create"],
        vec!["disk", "snapshot", "list"],
        vec!["disk", "snapshot", "apply"],
        vec!["disk", "snapshot", "delete"],
        vec!["disk", "rebase"],
        vec!["disk", "commit"],
        vec!["disk", "write"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let text = ok(&args, d.path());
        assert!(text.contains("Usage:"), "{cmd:?}: {text}");
    }
    let check_help = ok(&["disk", "check", "--help"], d.path());
    assert!(
        check_help.contains("3 leaked clusters only"),
        "{check_help}"
    );
}

#[test]
fn the_readme_main_job_works_and_reports_json() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("demo.qcow2");
    let s = img.to_str().unwrap();
    ok(&["disk", "create", s, "10G"], d.path());
    ok(
        &["disk", "write", "-P", "0xab", "-l", "4M", s, "1G"],
        d.path(),
    );
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["disk", "info", "--json", s], d.path())).unwrap();
    assert_eq!(info["virtual-size"], 10u64 << 30);
    assert_eq!(info["format"], "qcow2");
    assert!(info["actual-size"].as_u64().unwrap() < 6 << 20);
    let check: serde_json::Value =
        serde_json::from_str(&ok(&["disk", "check", "--json", s], d.path())).unwrap();
    assert_eq!(check["allocated-clusters"], 64);
    assert_eq!(check["check-errors"], 0);
    assert_eq!(qemu_check_code(&img).0, Some(0));
    // Refuses to overwrite; bad sizes are clear errors.
    let out = berth(&["disk", "create", s, "1G"], d.path());
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = berth(
        &[
            "disk",
            "create",
            d.path().join("x.qcow2").to_str().unwrap(),
            "10Q",
        ],
        d.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size \"10Q\""));
    assert!(!d.path().join("x.qcow2").exists());
}

#[test]
fn check_and_compare_exit_statuses_follow_qemu_img() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.qcow2");
    let b = d.path().join("b.raw");
    ok(&["disk", "create", a.to_str().unwrap(), "8M"], d.path());
    ok(
        &["disk", "create", "-f", "raw", b.to_str().unwrap(), "8M"],
        d.path(),
    );
    assert_eq!(
        berth(
            &["disk", "compare", a.to_str().unwrap(), b.to_str().unwrap()],
            d.path()
        )
        .status
        .code(),
        Some(0)
    );
    ok(
        &[
            "disk",
            "write",
            "-P",
            "1",
            "-l",
            "512",
            a.to_str().unwrap(),
            "4096",
        ],
        d.path(),
    );
    let out = berth(
        &["disk", "compare", a.to_str().unwrap(), b.to_str().unwrap()],
        d.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Content mismatch at offset 4096!"));
    assert_eq!(
        berth(
            &["disk", "compare", a.to_str().unwrap(), "/nonexistent"],
            d.path()
        )
        .status
        .code(),
        Some(125),
        "an image that cannot be read is berth's own failure, as in every command"
    );
    // Leaks: exit 3, repaired: 0. Leak clusters with qemu-io's help: none exists, so make
    // one by truncating a refcount-updated allocation is fiddly; use berth's own library test
    // for leaks and check the corrupt status here instead.
    let img = d.path().join("c.qcow2");
    ok(&["disk", "create", img.to_str().unwrap(), "8M"], d.path());
    ok(
        &[
            "disk",
            "write",
            "-P",
            "1",
            "-l",
            "64k",
            img.to_str().unwrap(),
            "0",
        ],
        d.path(),
    );
    // Zero the refcount block: every referenced cluster now has refcount 0 (corruption).
    let data = std::fs::read(&img).unwrap();
    let rt = u64::from_be_bytes(data[48..56].try_into().unwrap()) as usize;
    let rb = u64::from_be_bytes(data[rt..rt + 8].try_into().unwrap()) as usize;
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 65536], rb as u64).unwrap();
    let out = berth(&["disk", "check", img.to_str().unwrap()], d.path());
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = berth(
        &["disk", "check", "--repair", "all", img.to_str().unwrap()],
        d.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        qemu_check_code(&img).0,
        Some(0),
        "{}",
        qemu_check_code(&img).1
    );
}

/// Kill `berth` at a pseudo-random point of its run, several times.
fn kill_at_random_points(args: &[&str], dir: &Path, rounds: u64, after_each: &mut dyn FnMut(u64)) {
    for round in 0..rounds {
        let delay = 5 + (round * 7919 + 13) % 120;
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_DIR", dir.join("state"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        after_each(round);
    }
}

#[test]
fn killing_a_writer_leaves_at_most_leaked_clusters() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("w.qcow2");
    let src = d.path().join("data.bin");
    // 48 MiB of varied data, written at an unaligned offset so clusters get allocated and COWed.
    let mut data = Vec::with_capacity(48 << 20);
    let mut x = 0x1234_5678_u64;
    while data.len() < 48 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&src, &data).unwrap();
    ok(&["disk", "create", img.to_str().unwrap(), "256M"], d.path());
    let args = [
        "disk",
        "write",
        "--from",
        src.to_str().unwrap(),
        img.to_str().unwrap(),
        "4097",
    ];
    kill_at_random_points(&args, d.path(), 12, &mut |round| {
        let (code, text) = qemu_check_code(&img);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert!(
            v.get("corruptions").is_none() && matches!(code, Some(0) | Some(3)),
            "round {round}: qemu-img check {code:?}: {text}"
        );
        let out = berth(&["disk", "check", img.to_str().unwrap()], d.path());
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "round {round}: berth check: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Still readable end to end.
        let out = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&img)
            .arg(d.path().join("readable.raw"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: unreadable: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Repair the leaks so the next round starts clean.
        berth(
            &["disk", "check", "--repair", "leaks", img.to_str().unwrap()],
            d.path(),
        );
    });
    // A complete write after all that: the data is all there.
    ok(&args, d.path());
    let flat = d.path().join("final.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&img)
        .arg(&flat)
        .output()
        .unwrap();
    assert!(out.status.success());
    let back = std::fs::read(&flat).unwrap();
    assert!(
        back[4097..4097 + data.len()] == data[..],
        "the completed write is all there"
    );
    assert_eq!(qemu_check_code(&img).0, Some(0));
}

#[test]
fn killing_a_convert_never_leaves_a_half_written_destination() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    let mut data = vec![0u8; 96 << 20];
    let mut x = 99u64;
    for (i, chunk) in data.chunks_mut(65536).enumerate() {
        if i % 3 != 0 {
            for b in chunk.iter_mut().step_by(7) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
    }
    std::fs::write(&src, &data).unwrap();
    let dst = d.path().join("dst.qcow2");
    for compress in [false, true] {
        let mut args = vec!["disk", "convert", "-O", "qcow2"];
        if compress {
            args.push("--compress");
        }
        args.push(src.to_str().unwrap());
        args.push(dst.to_str().unwrap());
        kill_at_random_points(&args, d.path(), 6, &mut |round| {
            if dst.exists() {
                // Only a complete image may appear under the destination name.
                let (code, text) = qemu_check_code(&dst);
                assert_eq!(code, Some(0), "round {round}: {text}");
                let out = Command::new("qemu-img")
                    .arg("compare")
                    .arg(&src)
                    .arg(&dst)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "round {round}: destination differs");
                std::fs::remove_file(&dst).unwrap();
            }
        });
    }
    // Temporary files of killed runs are the only leftovers, and are hidden dot-files.
    for e in std::fs::read_dir(d.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "src.raw" || name == "state" || name.starts_with(".dst.qcow2.berth-tmp-"),
            "{name}"
        );
    }
}
