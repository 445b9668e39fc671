//! `berth key` and `berth machine-id` end to end, checked with the real tools: ssh-keygen reads
//! every key berth writes, permissions are read back with stat, machine-ids are read out of
//! ext4 images made by mkfs.ext4, and the audit catches a cloned image.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn berth(args: &[&str], dir: &Path) -> Output {
    common::run(&dir.join("state"), args)
}

fn ok(args: &[&str], dir: &Path) -> String {
    common::run_ok(&dir.join("state"), args)
}

fn stat_mode(p: &Path) -> String {
    let out = Command::new("stat")
        .args(["-c", "%a"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ssh_keygen_public(private: &Path, passphrase: &str) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-y", "-P", passphrase, "-f"])
        .arg(private)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen -y {}: {}",
        private.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn ssh_keygen_reads_every_key_berth_writes() {
    let d = tempfile::tempdir().unwrap();
    for (t, bits, pass) in [
        ("ed25519", None, ""),
        ("ed25519", None, "s3cret"),
        ("ecdsa", Some("256"), ""),
        ("ecdsa", Some("384"), ""),
        ("ecdsa", Some("521"), "pw"),
        ("rsa", Some("2048"), ""),
        ("rsa", Some("3072"), "pw"),
    ] {
        let path = d
            .path()
            .join(format!("ssh/{t}-{}-{}", bits.unwrap_or("x"), pass.len()));
        let p = path.to_str().unwrap();
        let mut args = vec![
            "key",
            "generate",
            "-t",
            t,
            "-f",
            p,
            "-C",
            "tester@berth",
            "-N",
            pass,
        ];
        if let Some(b) = bits {
            args.extend(["-b", b]);
        }
        ok(&args, d.path());
        let public = std::fs::read_to_string(format!("{p}.pub")).unwrap();
        let (kt, blob) = {
            let mut f = public.split_whitespace();
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        };
        let derived = ssh_keygen_public(&path, pass);
        assert!(
            derived.starts_with(&format!("{kt} {blob}")),
            "{t}: {derived} vs {public}"
        );
        assert_eq!(stat_mode(&path), "600");
        assert_eq!(stat_mode(Path::new(&format!("{p}.pub"))), "644");
        if !pass.is_empty() {
            let out = Command::new("ssh-keygen")
                .args(["-y", "-P", "wrong", "-f", p])
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "{t}: the passphrase protects the key"
            );
        }
    }
    assert_eq!(stat_mode(&d.path().join("ssh")), "700");
    // Refuses to overwrite; --force overwrites and still ends at 0600.
    let p = d.path().join("ssh/ed25519-x-0");
    let out = berth(&["key", "generate", "-f", p.to_str().unwrap()], d.path());
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    ok(
        &["key", "generate", "-f", p.to_str().unwrap(), "--force"],
        d.path(),
    );
    assert_eq!(stat_mode(&p), "600");
    // The default key lives under berth's data folder.
    ok(&["key", "generate"], d.path());
    assert_eq!(stat_mode(&d.path().join("state/keys/id_ed25519")), "600");
}

#[test]
fn key_add_behaves_like_ssh_copy_id() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("k");
    ok(
        &[
            "key",
            "generate",
            "-f",
            k.to_str().unwrap(),
            "-C",
            "new@key",
        ],
        d.path(),
    );
    let ak = d.path().join("home/.ssh/authorized_keys");
    ok(
        &[
            "key",
            "add",
            &format!("{}.pub", k.display()),
            "--to",
            ak.to_str().unwrap(),
        ],
        d.path(),
    );
    assert_eq!(stat_mode(&ak), "600");
    assert_eq!(stat_mode(ak.parent().unwrap()), "700");
    // An existing file with options, quoted spaces and no comment keeps its bytes.
    let other = d.path().join("o");
    ok(
        &["key", "generate", "-f", other.to_str().unwrap()],
        d.path(),
    );
    let other_pub = std::fs::read_to_string(format!("{}.pub", other.display())).unwrap();
    let mut f = other_pub.split_whitespace();
    let (t, b) = (f.next().unwrap(), f.next().unwrap());
    let existing = format!(
        "command=\"echo hi there\",no-pty {t} {b}\r\nno-agent-forwarding {t} {b}\n# a comment\n"
    );
    let ak2 = d.path().join("ak2");
    std::fs::write(&ak2, &existing).unwrap();
    std::fs::set_permissions(&ak2, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let out = ok(
        &[
            "key",
            "add",
            &format!("{}.pub", other.display()),
            "--to",
            ak2.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(
        out.contains("nothing added"),
        "same key, other comment: {out}"
    );
    assert_eq!(std::fs::read_to_string(&ak2).unwrap(), existing);
    ok(
        &[
            "key",
            "add",
            &format!("{}.pub", k.display()),
            "--to",
            ak2.to_str().unwrap(),
        ],
        d.path(),
    );
    let text = std::fs::read_to_string(&ak2).unwrap();
    assert!(text.starts_with(&existing));
    assert_eq!(text.lines().count(), 4);
    assert_eq!(stat_mode(&ak2), "640", "an existing file keeps its mode");
    // sshd's own parser accepts the result: ssh-keygen -l lists every key.
    let out = Command::new("ssh-keygen")
        .args(["-l", "-f"])
        .arg(&ak2)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // Garbage input: a clear error naming the file and line, nothing written.
    let bad = d.path().join("bad.pub");
    std::fs::write(&bad, "ssh-ed25519 not-base64!!\n").unwrap();
    let out = berth(
        &[
            "key",
            "add",
            bad.to_str().unwrap(),
            "--to",
            ak2.to_str().unwrap(),
        ],
        d.path(),
    );
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.pub") && err.contains("line 1"), "{err}");
    assert_eq!(std::fs::read_to_string(&ak2).unwrap(), text);
}

#[test]
fn machine_ids_from_trees_and_images_and_the_audit() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let id = ok(&["machine-id", "new"], dir).trim().to_string();
    ok(&["machine-id", "validate", &id], dir);
    for (bad, why) in [
        ("0123", "wrong length"),
        ("0123456789ABCDEF0123456789abcdef", "uppercase"),
        ("00000000000000000000000000000000", "all-zero"),
        ("uninitialized", "uninitialized"),
        ("0123456789abcdeg0123456789abcdef", "non-hex"),
    ] {
        let out = berth(&["machine-id", "validate", bad], dir);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A tree as debootstrap leaves it: empty /etc/machine-id, D-Bus folder present.
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dbus")).unwrap();
    std::fs::write(root.join("etc/machine-id"), "").unwrap();
    assert!(!berth(
        &["machine-id", "get", "--root", root.to_str().unwrap()],
        dir
    )
    .status
    .success());
    let out = ok(
        &["machine-id", "ensure", "--root", root.to_str().unwrap()],
        dir,
    );
    assert!(out.is_empty(), "ensure is silent");
    let got = ok(
        &["machine-id", "get", "--root", root.to_str().unwrap()],
        dir,
    )
    .trim()
    .to_string();
    ok(
        &[
            "machine-id",
            "validate",
            "--file",
            root.join("etc/machine-id").to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(stat_mode(&root.join("etc/machine-id")), "444");
    assert_eq!(
        std::fs::read_link(root.join("var/lib/dbus/machine-id")).unwrap(),
        Path::new("/etc/machine-id")
    );
    assert_eq!(
        ok(
            &["machine-id", "ensure", "--root", root.to_str().unwrap()],
            dir
        ),
        ""
    );
    assert_eq!(
        ok(
            &["machine-id", "get", "--root", root.to_str().unwrap()],
            dir
        )
        .trim(),
        got
    );
    // The same tree as an ext4 image, raw and qcow2: the id reads back without mounting.
    let raw = dir.join("img.raw");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .args(["-L", "rootfs"])
        .arg(&raw)
        .arg("64M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(
        ok(&["machine-id", "get", raw.to_str().unwrap()], dir).trim(),
        got
    );
    let qcow = dir.join("img.qcow2");
    ok(
        &[
            "disk",
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(
        ok(&["machine-id", "get", qcow.to_str().unwrap()], dir).trim(),
        got
    );
    // Registered ids are unique; the audit flags the cloned image.
    ok(&["machine-id", "new", "--register", "vm/one"], dir);
    let out = berth(&["machine-id", "new", "--register", "vm/one"], dir);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("vm/one already has machine-id")
    );
    let out = berth(
        &[
            "machine-id",
            "audit",
            "--json",
            raw.to_str().unwrap(),
            qcow.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(1), "duplicates exit 1");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["duplicates"][&got].as_array().unwrap().len(), 2);
    assert_eq!(v["entries"].as_array().unwrap().len(), 3);
    let out = berth(&["machine-id", "audit", raw.to_str().unwrap()], dir);
    assert_eq!(out.status.code(), Some(0));
}
