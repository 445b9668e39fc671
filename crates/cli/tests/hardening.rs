//! What a hostile user, a careless user and a failing machine tried (issue 13), replayed: bad
//! outputs (device nodes as targets), unbounded inputs (`/dev/zero`, FIFOs, alias bombs, huge
//! files) under a memory ceiling, and faults (a full disk, signals, kill -9 mid-write). Each
//! case checks the outcome *and* that nothing is left behind.
//!
//! Needs root (mknod, tmpfs mounts), as the rest of the end-to-end suite.
//! The red-team cases of running guests (escapes, networks) are in the e2e files.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The memory ceiling every berth command keeps to on hostile input (virtual memory, as
/// `ulimit -v` counts it): 1 GiB.
const CEILING_KIB: u64 = 1 << 20;

fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// Run berth under `ulimit -v CEILING` with a deadline; a command that outlives it is killed
/// and the test fails (a FIFO read that blocks, say).
fn berth_limited(state: &Path, args: &[&str], deadline: Duration) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {CEILING_KIB}; exec \"$0\" \"$@\""))
        .arg(berth_bin())
        .args(args)
        .env("BERTH_DIR", state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_deadline(child, deadline, args)
}

fn wait_deadline(mut child: std::process::Child, deadline: Duration, what: &[&str]) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "berth {what:?} did not end within {deadline:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A character device of our own (the same device as /dev/null), so that a failure of the
/// check below cannot damage the host's /dev/null.
fn char_device(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let ok = Command::new("mknod")
        .arg(&p)
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mknod (this test needs root)");
    p
}

fn is_char_device(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
}

/// Files berth left in `dir` under its temporary names.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".berth-tmp-"))
        .collect()
}

/// Regression for issue 13 item 3: `--force` and `key add` replaced device nodes with regular
/// files. Outputs are regular files; anything else is refused, whatever the flags.
#[test]
fn outputs_never_replace_device_nodes() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = d.path().join("src.qcow2");
    common::run_ok(&state, &["disk", "create", src.to_str().unwrap(), "64M"]);
    let pubkey = d.path().join("k");
    common::run_ok(
        &state,
        &["key", "generate", "-f", pubkey.to_str().unwrap(), "-C", "t"],
    );
    let node = char_device(d.path(), "node");
    let n = node.to_str().unwrap();
    let pub_path = format!("{}.pub", pubkey.display());
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "disk",
            "convert",
            "--force",
            "-O",
            "raw",
            src.to_str().unwrap(),
            n,
        ],
        vec!["disk", "convert", "-O", "qcow2", src.to_str().unwrap(), n],
        vec!["disk", "create", "--force", n, "1M"],
        vec!["disk", "create", "-f", "raw", "--force", n, "1M"],
        vec!["key", "generate", "--force", "-f", n, "-C", "x"],
        vec!["key", "add", &pub_path, "--to", n],
        vec!["seed", "create", "-o", n, "--hostname", "h"],
    ];
    for args in cases {
        let out = common::run(&state, &args);
        assert!(!out.status.success(), "berth {args:?} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains("is a character device") && err.contains("only to a regular file"),
            "berth {args:?}: {err}"
        );
        assert!(
            is_char_device(&node),
            "berth {args:?} replaced the device node"
        );
        assert!(
            temporaries(d.path()).is_empty(),
            "berth {args:?} left a temporary"
        );
    }
    // key generate's second output (PATH.pub) is checked before anything is written.
    let kp = d.path().join("pair");
    char_device(d.path(), "pair.pub");
    let out = common::run(
        &state,
        &["key", "generate", "--force", "-f", kp.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        !kp.exists(),
        "the private key was written before the public one was refused"
    );
    assert!(is_char_device(&d.path().join("pair.pub")));
}

/// Regression for issue 13 items 4 and 7: unbounded inputs drove berth to the OOM killer, and a
/// FIFO blocked `disk info` forever. Every file berth reads from a user is capped and must be
/// a regular file; every command stays under the memory ceiling and ends at once.
#[test]
fn hostile_inputs_end_in_clear_errors_under_a_memory_ceiling() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let dir = d.path();
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let big = dir.join("big.yaml");
    let mut text = String::from("#cloud-config\nwrite_files:\n");
    while text.len() <= 5 << 20 {
        text.push_str("  - {path: /x, content: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}\n");
    }
    std::fs::write(&big, &text).unwrap();
    // The alias bomb of the red-team run ("billion laughs", 10^9 nodes expanded).
    let bomb = dir.join("bomb.yaml");
    let mut b = String::from("#cloud-config\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let p = format!("*a{}", i - 1);
        b.push_str(&format!("a{i}: &a{i} [{}]\n", [p.as_str(); 8].join(", ")));
    }
    b.push_str("runcmd: [*a11]\n");
    std::fs::write(&bomb, &b).unwrap();
    let binary = dir.join("bin.dat");
    std::fs::write(&binary, b"#cloud-config\n\xff\xfe\x00\x01").unwrap();
    let (fifo_s, big_s, bomb_s, bin_s) = (
        fifo.to_str().unwrap(),
        big.to_str().unwrap(),
        bomb.to_str().unwrap(),
        binary.to_str().unwrap(),
    );
    let seed = dir.join("seed.iso");
    let seed_s = seed.to_str().unwrap();
    let ak = dir.join("authorized_keys");
    let ak_s = ak.to_str().unwrap();
    // (arguments, what stderr must say)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["launch", "img", "v1", "--cloud-init", "/dev/zero"],
            "must be a regular file, and this is a character device",
        ),
        (
            vec!["launch", "img", "v1", "--cloud-init", fifo_s],
            "this is a FIFO",
        ),
        (
            vec!["launch", "img", "v1", "--cloud-init", big_s],
            "larger than berth's limit of 4 MiB",
        ),
        (
            vec!["launch", "img", "v1", "--cloud-init", bomb_s],
            "alias bomb",
        ),
        (
            vec!["launch", "img", "v1", "--cloud-init", bin_s],
            "is not UTF-8 text (byte 14",
        ),
        (
            vec!["launch", "img", "v1", "--ssh-key", "/dev/zero"],
            "the public key (--ssh-key) must be a regular file",
        ),
        (
            vec![
                "launch",
                "img",
                "c1",
                "--container",
                "--cloud-init",
                "/dev/zero",
            ],
            "must be a regular file",
        ),
        (
            vec!["launch", "img", "c1", "--container", "--cloud-init", bomb_s],
            "alias bomb",
        ),
        (
            vec!["seed", "validate", "/dev/zero"],
            "must be a regular file",
        ),
        (vec!["seed", "validate", fifo_s], "this is a FIFO"),
        (vec!["seed", "validate", bomb_s], "alias bomb"),
        (
            vec!["seed", "create", "-o", seed_s, "--user-data", "/dev/zero"],
            "must be a regular file",
        ),
        (
            vec!["seed", "create", "-o", seed_s, "--user-data", big_s],
            "larger than berth's limit",
        ),
        (
            vec!["key", "add", "/dev/zero", "--to", ak_s],
            "must be a regular file",
        ),
        (vec!["key", "add", fifo_s, "--to", ak_s], "this is a FIFO"),
        (
            vec!["machine-id", "validate", "--file", "/dev/zero"],
            "must be a regular file",
        ),
        (
            vec!["disk", "info", fifo_s],
            "is a FIFO (named pipe), not a disk image",
        ),
        (vec!["disk", "check", fifo_s], "not a disk image"),
        (
            vec!["disk", "map", "/dev/zero"],
            "is a character device, not a disk image",
        ),
        (
            vec!["disk", "convert", "-O", "raw", "/dev/zero", seed_s],
            "not a disk image",
        ),
    ];
    for (args, want) in cases {
        let out = berth_limited(&state, &args, Duration::from_secs(30));
        let err = stderr(&out);
        assert!(!out.status.success(), "berth {args:?} succeeded: {err}");
        assert!(
            err.contains(want),
            "berth {args:?}: expected {want:?} in:\n{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("memory allocation"),
            "berth {args:?} did not fail cleanly: {err}"
        );
        assert!(
            !seed.exists() && !ak.exists(),
            "berth {args:?} wrote an output"
        );
        assert!(
            temporaries(dir).is_empty(),
            "berth {args:?} left a temporary"
        );
    }
    // Nothing was registered or created for the refused launches.
    let list = common::run_ok(&state, &["list"]);
    assert!(!list.contains("v1") && !list.contains("c1"), "{list}");
    assert!(
        !state.join("vms").join("v1").exists() && !state.join("containers").join("c1").exists()
    );
}

/// A tmpfs of `size` mounted at `dir` for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "berth-test"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs (this test needs root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Random (incompressible, never zero) data, so that every cluster is written.
fn random_raw(path: &Path, mib: usize) {
    use rand::RngCore;
    let mut buf = vec![0u8; mib << 20];
    rand::thread_rng().fill_bytes(&mut buf);
    std::fs::write(path, buf).unwrap();
}

/// Regression for issue 13 items 5 and 7: `disk convert` hung forever when the disk filled,
/// leaving its temporary; `create --preallocation falloc` printed an internal imago error.
/// Both now end with "no space left" naming the file, and leave nothing.
#[test]
fn full_disks_end_commands_with_a_clear_error_and_no_leftovers() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = d.path().join("src.raw");
    random_raw(&src, 48);
    let small = d.path().join("small");
    let _fs = Tmpfs::mount(&small, "16M");
    for (args, dst) in [
        (vec!["-O", "raw"], "out.raw"),
        (vec!["-O", "qcow2"], "out.qcow2"),
        (vec!["-O", "qcow2", "--compress"], "outc.qcow2"),
    ] {
        let dst = small.join(dst);
        let mut a = vec!["disk", "convert"];
        a.extend(&args);
        a.push(src.to_str().unwrap());
        a.push(dst.to_str().unwrap());
        let out = berth_limited(&state, &a, Duration::from_secs(60));
        let err = stderr(&out);
        assert!(!out.status.success(), "{a:?}");
        assert!(
            err.contains("No space left on device") && err.contains(dst.to_str().unwrap()),
            "{a:?}: {err}"
        );
        assert!(!dst.exists(), "{a:?} left its destination");
        assert!(
            temporaries(&small).is_empty(),
            "{a:?} left {:?}",
            temporaries(&small)
        );
    }
    for fmt in ["qcow2", "raw"] {
        let dst = small.join(format!("prealloc.{fmt}"));
        let a = [
            "disk",
            "create",
            "-f",
            fmt,
            "--preallocation",
            "falloc",
            dst.to_str().unwrap(),
            "64M",
        ];
        let out = berth_limited(&state, &a, Duration::from_secs(60));
        let err = stderr(&out);
        assert!(!out.status.success(), "{a:?}");
        assert!(err.contains("No space left on device"), "{a:?}: {err}");
        assert!(!err.contains("Refcount block dropped"), "{a:?}: {err}");
        assert!(
            !dst.exists() && temporaries(&small).is_empty(),
            "{a:?} left files"
        );
    }
}

/// Regression for issue 13 item 5: SIGINT and SIGTERM of a convert left its temporary, and
/// nothing removed what kill -9 left. Signals remove it; the next command in the folder removes
/// a dead process's leftover (and not a live writer's).
#[test]
fn interrupted_converts_leave_no_temporaries() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = d.path().join("src.raw");
    random_raw(&src, 256);
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let start = |name: &str| {
        Command::new(berth_bin())
            .args(["disk", "convert", "-O", "qcow2", "--compress"])
            .arg(&src)
            .arg(out_dir.join(name))
            .env("BERTH_DIR", &state)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_for_temp = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while temporaries(&out_dir).is_empty() {
            assert!(child.try_wait().unwrap().is_none(), "convert ended early");
            assert!(Instant::now() < deadline, "no temporary appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (sig, code) in [("TERM", 143), ("INT", 130)] {
        let mut child = start("img.qcow2");
        wait_for_temp(&mut child);
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let out = wait_deadline(child, Duration::from_secs(30), &["convert"]);
        // Ended by the signal itself, as its default action would (a shell shows 128+N).
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal().map(|s| 128 + s).or(out.status.code()),
            Some(code),
            "SIG{sig}: {}",
            stderr(&out)
        );
        assert!(
            temporaries(&out_dir).is_empty(),
            "SIG{sig} left {:?}",
            temporaries(&out_dir)
        );
        assert!(!out_dir.join("img.qcow2").exists());
    }
    // kill -9 cannot be caught: its temporary stays until a later command in that folder.
    let mut child = start("img.qcow2");
    wait_for_temp(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = temporaries(&out_dir);
    assert_eq!(left.len(), 1, "{left:?}");
    // A live writer's temporary in the same folder is not touched by that sweep.
    let mut live = start("other.qcow2");
    wait_for_temp(&mut live);
    let small = out_dir.join("small.qcow2");
    common::run_ok(&state, &["disk", "create", small.to_str().unwrap(), "1M"]);
    let now = temporaries(&out_dir);
    assert!(
        !now.contains(&left[0]),
        "the dead writer's temporary is still there: {now:?}"
    );
    assert_eq!(now.len(), 1, "the live writer's temporary went: {now:?}");
    let out = wait_deadline(live, Duration::from_secs(120), &["convert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(temporaries(&out_dir).is_empty());
}

/// Regression for issue 13 item 9: the same host port twice was accepted for a container (the
/// nft map kept one) and refused for a VM only by QEMU. Both are refused before anything starts.
#[test]
fn a_host_port_given_twice_is_refused_before_anything_starts() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    for extra in [&[][..], &["--container"][..]] {
        let mut a = vec![
            "launch",
            "img",
            "dup",
            "--forward",
            "2222:22",
            "--forward",
            "2222:80",
        ];
        a.extend(extra);
        let out = common::run(&state, &a);
        let err = stderr(&out);
        assert!(!out.status.success(), "{a:?}");
        assert!(
            err.contains("host port 2222 is given twice"),
            "{a:?}: {err}"
        );
    }
}

/// Regression for issue 13 item 7: a full data dir said only "berth's state database".
#[test]
fn a_full_data_dir_says_no_space_and_where() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let _fs = Tmpfs::mount(&state, "2M");
    common::run_ok(&state, &["list"]);
    // Fill what is left.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=8"])
        .arg(format!("of={}", state.join("fill").display()))
        .stderr(Stdio::null())
        .status();
    let out = common::run(&state, &["machine-id", "new", "--register", "vm/x"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "berth's state database {}: no space left on the device",
            state.join("berth.db").display()
        )),
        "{err}"
    );
}

/// Regression for issue 13 item 11 (part): `--cpuset ''` was taken as no limit, and a VM's
/// `--memory 1` was reported as "0 MiB".
#[test]
fn empty_limits_and_tiny_memory_name_what_was_typed() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let out = common::run(
        &state,
        &["run", "--rm", "--cpuset", "", "img", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("--cpuset needs a value"),
        "{}",
        stderr(&out)
    );
    let out = common::run(&state, &["launch", "img", "v", "--memory", "1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--memory 1 (1 bytes) is too small"), "{err}");
    assert!(!err.contains("0 MiB"), "{err}");
}
