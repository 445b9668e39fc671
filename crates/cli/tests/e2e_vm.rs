//! End-to-end: real Debian guests booted by `berth launch` (TCG on machines like CI's, where
//! KVM cannot run guests), provisioned by cloud-init, checked over SSH.
//!
//! The base image is built once with debootstrap into `$BERTH_E2E_DIR` (default
//! /var/tmp/berth-e2e, outside the repo) and reused by later runs. Each guest takes tens of
//! seconds to boot under TCG, so the tests are few and do a lot each.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::e2e_dir;

fn berth(args: &[&str]) -> Output {
    common::run(&e2e_dir(), args)
}

fn ok(args: &[&str]) -> String {
    common::run_ok(&e2e_dir(), args)
}

fn exec(name: &str, cmd: &str) -> String {
    ok(&["exec", name, "--", "sh", "-c", cmd])
        .trim()
        .to_string()
}

use common::e2e_image as image;

/// Deletes the instance when the test ends, however it ends.
struct Guest(String);

impl Guest {
    fn new(prefix: &str) -> Guest {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = berth(&["delete", "--force", &name]);
        Guest(name)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = berth(&["delete", "--force", &self.0]);
    }
}

fn info(name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["info", "--json", name])).unwrap()
}

fn registered_id(name: &str) -> String {
    info(name)["machine_id"].as_str().unwrap().to_string()
}

fn state(name: &str) -> serde_json::Value {
    info(name)["state"].clone()
}

#[test]
fn launch_provision_lifecycle_and_kinds() {
    image();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("alice");
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "key",
            "generate",
            "-f",
            key.to_str().unwrap(),
            "-C",
            "alice@e2e",
        ])
        .env("BERTH_DIR", e2e_dir())
        .output()
        .unwrap();
    let alice_pub = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let cc = dir.path().join("cc.yaml");
    std::fs::write(
        &cc,
        format!(
            "#cloud-config\nhostname: e2e-guest\ntimezone: Africa/Dar_es_Salaam\nusers:\n  - default\n  - name: alice\n    shell: /bin/bash\n    ssh_authorized_keys:\n      - {}\nwrite_files:\n  - path: /etc/berth-e2e\n    content: written by cloud-init\n    permissions: '0640'\nruncmd:\n  - [sh, -c, \"echo ran > /root/runcmd-ok\"]\n",
            alice_pub.trim()
        ),
    )
    .unwrap();
    let a = Guest::new("e2e-a");
    ok(&[
        "launch",
        "debian-12",
        &a.0,
        "--cloud-init",
        cc.to_str().unwrap(),
        "--disk-cache",
        "unsafe",
        "--disk",
        "3G",
        "--kind",
        "hybrid",
        "--timeout",
        "600",
    ]);
    assert_eq!(info(&a.0)["kind"], "hybrid");
    // Every part of the cloud-config took effect.
    assert_eq!(exec(&a.0, "hostname"), "e2e-guest");
    assert_eq!(exec(&a.0, "cat /etc/timezone"), "Africa/Dar_es_Salaam");
    assert_eq!(exec(&a.0, "date +%Z"), "EAT");
    assert_eq!(exec(&a.0, "getent passwd alice | cut -d: -f7"), "/bin/bash");
    assert!(exec(&a.0, "sudo cat /home/alice/.ssh/authorized_keys")
        .contains(alice_pub.split_whitespace().nth(1).unwrap()));
    assert_eq!(
        exec(&a.0, "sudo cat /etc/berth-e2e"),
        "written by cloud-init"
    );
    assert_eq!(exec(&a.0, "sudo stat -c %a /etc/berth-e2e"), "640");
    assert_eq!(exec(&a.0, "sudo cat /root/runcmd-ok"), "ran");
    // The guest's machine-id is the one berth registered.
    let id_a = registered_id(&a.0);
    assert_eq!(exec(&a.0, "cat /etc/machine-id"), id_a);
    assert_eq!(exec(&a.0, "cat /var/lib/dbus/machine-id"), id_a);
    // The root file system grew to --disk.
    let size: u64 = exec(&a.0, "df --output=size -B1 / | tail -1")
        .parse()
        .unwrap();
    assert!(size > 2_500_000_000, "root fs is {size} bytes");
    // exec passes the exit status through.
    assert_eq!(
        berth(&["exec", &a.0, "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );

    // A second guest from the same image, of the default kind for berth's own images
    // (paravirt): its own machine-id.
    let b = Guest::new("e2e-b");
    ok(&[
        "launch",
        "debian-12",
        &b.0,
        "--disk-cache",
        "unsafe",
        "--timeout",
        "600",
    ]);
    assert_eq!(info(&b.0)["kind"], "paravirt");
    let id_b = registered_id(&b.0);
    assert_ne!(id_a, id_b);
    assert_eq!(exec(&b.0, "cat /etc/machine-id"), id_b);
    assert_eq!(exec(&b.0, "hostname"), b.0);
    // The kernel's random pool is ready at once (the CPU's RDRAND), not after udev loads
    // virtio_rng or the timer-jitter fallback gathers enough: nothing in the boot waits in
    // getrandom.
    let crng = exec(&b.0, "sudo dmesg | grep -m1 'crng init done'");
    let at: f64 = crng
        .trim_start_matches('[')
        .split(']')
        .next()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no crng time in {crng:?}"));
    assert!(at < 2.0, "{crng}");
    assert!(
        exec(
            &b.0,
            "cat /sys/class/dmi/id/sys_vendor 2>/dev/null || echo none"
        )
        .len()
            < 200
    );

    // stop/start keeps the guest's data.
    exec(&a.0, "echo kept > /home/berth/data && sync");
    ok(&["stop", &a.0]);
    assert_eq!(state(&a.0)["state"], "stopped");
    ok(&["start", &a.0, "--timeout", "600"]);
    assert_eq!(exec(&a.0, "cat /home/berth/data"), "kept");

    // kill -9 of QEMU is noticed.
    let pid =
        std::fs::read_to_string(e2e_dir().join("instances").join(&b.0).join("qemu.pid")).unwrap();
    Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let st = state(&b.0);
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(
        st["reason"].as_str().unwrap().contains("no longer running"),
        "{st}"
    );
    // Delete refuses a running guest without --force.
    let out = berth(&["delete", &a.0]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--force"));

    // The audit sees both registered guests, no duplicates.
    let audit: serde_json::Value =
        serde_json::from_str(&ok(&["machine-id", "audit", "--json"])).unwrap();
    assert!(
        audit["duplicates"].as_object().unwrap().is_empty(),
        "{audit}"
    );
    drop(b);
    drop(a);
}

#[test]
fn full_emulation_guest_boots() {
    image();
    let c = Guest::new("e2e-full");
    // Its user-data is a plain #! script (issue 13 item 12: launch used to refuse one); berth's
    // own cloud-config still creates its user and key beside it.
    let ud = tempfile::tempdir().unwrap();
    let script = ud.path().join("setup.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"script ran as $(id -un)\" > /etc/berth-script\n",
    )
    .unwrap();
    ok(&[
        "launch",
        "debian-12",
        &c.0,
        "--cloud-init",
        script.to_str().unwrap(),
        "--kind",
        "full",
        "--disk-cache",
        "unsafe",
        "--timeout",
        "900",
    ]);
    // Emulated hardware: an IDE disk and an e1000 NIC, no virtio.
    let drivers = exec(
        &c.0,
        "readlink /sys/class/net/eth0/device/driver; ls /sys/bus/virtio/devices | wc -l",
    );
    assert!(drivers.contains("e1000"), "{drivers}");
    assert!(drivers.ends_with('0'), "no virtio devices: {drivers}");
    assert_eq!(exec(&c.0, "cat /etc/berth-script"), "script ran as root");
    assert_eq!(exec(&c.0, "cat /etc/machine-id"), registered_id(&c.0));
    common::console_answers(&e2e_dir(), &c.0);
    assert_eq!(state(&c.0)["state"], "running");
}

#[test]
fn bad_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_DIR", dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["launch", "no-such-image", "x"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no image named \"no-such-image\"")
    );
    let out = run(&["launch", "debian-12", "bad/name"]);
    assert!(!out.status.success());
    let out = run(&["launch", "debian-12", "x", "--forward", "99999:80"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid port"));
    let out = run(&["stop", "ghost"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no instance named \"ghost\"")
    );
    assert!(
        !dir.path().join("instances").exists()
            || std::fs::read_dir(dir.path().join("instances"))
                .unwrap()
                .count()
                == 0
    );
    let _ = Path::new("");
}

/// The `#cloud-config` from the mission's notes, exactly as written there.
const MISSION: &str = "#cloud-config
timezone: Africa/Dar_es_Salaam
hostname: test-system

# update the system when it first boots up
apt_update: true
apt_upgrade: true

# install the nginx web server
packages:
- nginx
";

#[test]
fn the_missions_cloud_config_as_written_serves_nginx() {
    image();
    let dir = tempfile::tempdir().unwrap();
    let cc = dir.path().join("cloudconfig.yaml");
    std::fs::write(&cc, MISSION).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let g = Guest::new("e2e-nginx");
    // apt update, upgrade and an install run under emulation: allow for it.
    ok(&[
        "launch",
        "debian-12",
        &g.0,
        "--cloud-init",
        cc.to_str().unwrap(),
        "--forward",
        &format!("{port}:80"),
        "--disk-cache",
        "unsafe",
        "--timeout",
        "1800",
    ]);
    assert_eq!(exec(&g.0, "hostname"), "test-system");
    assert_eq!(exec(&g.0, "cat /etc/timezone"), "Africa/Dar_es_Salaam");
    assert_eq!(
        exec(&g.0, "dpkg-query -W -f '${Status}' nginx"),
        "install ok installed"
    );
    // nginx's page, fetched from the host through the forwarded port.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("Welcome to nginx!"), "{page}");
}
