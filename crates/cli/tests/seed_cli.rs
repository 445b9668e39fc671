//! `berth seed create` and `berth seed validate` end to end: blkid sees the cidata label,
//! xorriso and mtools read every file back byte for byte, and bad user-data stops the write.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn berth(args: &[&str], dir: &Path) -> Output {
    common::run(&dir.join("state"), args)
}

fn ok(args: &[&str], dir: &Path) -> String {
    common::run_ok(&dir.join("state"), args)
}

fn blkid(p: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-o", "export"])
        .arg(p)
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const USER: &str = "#cloud-config\ntimezone: Africa/Dar_es_Salaam\nhostname: test-system\n\n# update the system when it first boots up\napt_update: true\napt_upgrade: true\n\n# install the nginx web server\npackages:\n- nginx\n";
const NET: &str = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";
const VENDOR: &str = "#cloud-config\nfinal_message: vendor\n";

fn inputs(d: &Path) -> (String, String, String) {
    let (u, n, v) = (
        d.join("user-data.yaml"),
        d.join("net.yaml"),
        d.join("vendor.yaml"),
    );
    std::fs::write(&u, USER).unwrap();
    std::fs::write(&n, NET).unwrap();
    std::fs::write(&v, VENDOR).unwrap();
    (
        u.display().to_string(),
        n.display().to_string(),
        v.display().to_string(),
    )
}

#[test]
fn iso_seed_reads_back_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let (u, n, v) = inputs(d.path());
    let seed = d.path().join("seed.iso");
    ok(
        &[
            "seed",
            "create",
            "-o",
            seed.to_str().unwrap(),
            "--user-data",
            &u,
            "--network-config",
            &n,
            "--vendor-data",
            &v,
            "--hostname",
            "web1",
            "--instance-id",
            "iid-test-1",
        ],
        d.path(),
    );
    let b = blkid(&seed);
    assert!(
        b.contains("LABEL=cidata") && b.contains("TYPE=iso9660"),
        "{b}"
    );
    let out = d.path().join("x");
    let st = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&seed)
        .args(["-extract", "/"])
        .arg(&out)
        .output()
        .expect("xorriso");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("user-data")).unwrap(),
        USER
    );
    assert_eq!(
        std::fs::read_to_string(out.join("network-config")).unwrap(),
        NET
    );
    assert_eq!(
        std::fs::read_to_string(out.join("vendor-data")).unwrap(),
        VENDOR
    );
    assert_eq!(
        std::fs::read_to_string(out.join("meta-data")).unwrap(),
        "instance-id: iid-test-1\nlocal-hostname: web1\n"
    );
    // A given meta-data is used as is; an existing seed is not overwritten without --force.
    let meta = d.path().join("meta");
    std::fs::write(&meta, "instance-id: mine\n").unwrap();
    let out = berth(
        &[
            "seed",
            "create",
            "-o",
            seed.to_str().unwrap(),
            "--user-data",
            &u,
            "--meta-data",
            meta.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already exists")
    );
    ok(
        &[
            "seed",
            "create",
            "-o",
            seed.to_str().unwrap(),
            "--user-data",
            &u,
            "--meta-data",
            meta.to_str().unwrap(),
            "--force",
        ],
        d.path(),
    );
    let x2 = d.path().join("x2");
    Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&seed)
        .args(["-extract", "/"])
        .arg(&x2)
        .output()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(x2.join("meta-data")).unwrap(),
        "instance-id: mine\n"
    );
}

#[test]
fn vfat_seed_reads_back_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let (u, _, _) = inputs(d.path());
    let seed = d.path().join("seed.img");
    ok(
        &[
            "seed",
            "create",
            "--format",
            "vfat",
            "-o",
            seed.to_str().unwrap(),
            "--user-data",
            &u,
        ],
        d.path(),
    );
    let b = blkid(&seed);
    assert!(b.contains("LABEL=cidata") && b.contains("TYPE=vfat"), "{b}");
    let got = d.path().join("ud");
    let st = Command::new("mcopy")
        .args(["-n", "-i"])
        .arg(&seed)
        .arg("::user-data")
        .arg(&got)
        .output()
        .expect("mcopy (mtools)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(std::fs::read_to_string(&got).unwrap(), USER);
    let meta = d.path().join("md");
    Command::new("mcopy")
        .args(["-n", "-i"])
        .arg(&seed)
        .arg("::meta-data")
        .arg(&meta)
        .output()
        .unwrap();
    assert!(std::fs::read_to_string(&meta)
        .unwrap()
        .starts_with("instance-id: iid-"));
}

#[test]
fn invalid_user_data_stops_the_write_and_validate_reports_positions() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "#cloud-config\nhostname: test\nusers:\n  - name: a\n    lock_passwd: maybe\n",
    )
    .unwrap();
    let seed = d.path().join("s.iso");
    let out = berth(
        &[
            "seed",
            "create",
            "-o",
            seed.to_str().unwrap(),
            "--user-data",
            bad.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(!out.status.success());
    assert!(!seed.exists(), "nothing half-written");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", bad.display())), "{err}");
    let out = berth(&["seed", "validate", bad.to_str().unwrap()], d.path());
    assert_eq!(out.status.code(), Some(1));
    let script = d.path().join("s.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let out = berth(
        &["seed", "validate", "--json", script.to_str().unwrap()],
        d.path(),
    );
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["kind"], "script");
    assert_eq!(
        berth(&["seed", "validate", "/nonexistent"], d.path())
            .status
            .code(),
        Some(125)
    );
}
