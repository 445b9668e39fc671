//! End-to-end: system containers (`berth launch --container`) booting the debian-12 image's
//! systemd with an identity of their own, cloud-init, `exec`, `shell` on a pty of the
//! container's own, and nothing left behind.

mod common;

use common::ct::*;
use common::{e2e_dir, e2e_image};

#[test]
fn system_container_boots_systemd_with_its_own_identity() {
    e2e_image();
    let a = Ct(format!("ct-sys-{}", std::process::id()));
    let b = Ct(format!("ct-sys2-{}", std::process::id()));
    let cc = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/container-cloud-config.yaml"
    );
    launch_ct(
        &a.0,
        &[
            "--cloud-init",
            cc,
            "--memory",
            "512M",
            "--pids",
            "400",
            "--network",
            "none",
        ],
    );
    // (The bridge is the networking test's: this one keeps to --network none.)
    // The second gets its user-data as cloud-init also takes it (issue 13 item 12): a gzip'ed
    // MIME multipart of a cloud-config and a shell script, which launch used to refuse.
    let ud = tempfile::tempdir().unwrap();
    let mime = ud.path().join("user-data");
    std::fs::write(
        &mime,
        "Content-Type: multipart/mixed; boundary=\"PART\"\nMIME-Version: 1.0\n\n\
         --PART\nContent-Type: text/cloud-config\n\n#cloud-config\nwrite_files:\n\
         \x20 - path: /etc/berth-mime\n    content: from a MIME part\n\
         --PART\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho \"script ran\" > /etc/berth-script\n\
         --PART--\n",
    )
    .unwrap();
    assert!(std::process::Command::new("gzip")
        .arg(&mime)
        .status()
        .unwrap()
        .success());
    let gz = ud.path().join("user-data.gz");
    launch_ct(
        &b.0,
        &["--network", "none", "--cloud-init", gz.to_str().unwrap()],
    );

    // systemd is PID 1 and came up; the cloud-config's modules ran.
    assert_eq!(exec(&a.0, "cat /proc/1/comm"), "systemd");
    // Nothing failed: `degraded` would name a unit that does not belong in a container.
    let state = exec(
        &a.0,
        "systemctl is-system-running || systemctl --failed --no-legend",
    );
    assert_eq!(state, "running");
    assert_eq!(exec(&a.0, "hostname"), "ct-e2e");
    assert_eq!(exec(&a.0, "cat /etc/timezone"), "Africa/Dar_es_Salaam");
    assert_eq!(exec(&a.0, "cat /etc/berth-ct"), "hello container");
    assert_eq!(exec(&a.0, "stat -c %a /etc/berth-ct"), "640");
    assert_eq!(exec(&a.0, "cat /root/runcmd-ok"), "ran");
    assert_eq!(exec(&b.0, "hostname"), b.0);
    assert_eq!(exec(&b.0, "cat /etc/berth-mime"), "from a MIME part");
    assert_eq!(exec(&b.0, "cat /etc/berth-script"), "script ran");

    // Its own machine-id: the registered one, unlike the host's and the other container's.
    let id_a = exec(&a.0, "cat /etc/machine-id");
    let id_b = exec(&b.0, "cat /etc/machine-id");
    assert_eq!(info(&a.0)["machine_id"], id_a.as_str());
    assert_eq!(info(&b.0)["machine_id"], id_b.as_str());
    assert_ne!(id_a, id_b);
    if let Ok(host) = std::fs::read_to_string("/etc/machine-id") {
        assert_ne!(host.trim(), id_a);
    }

    // Isolation from inside a system container too.
    let host_pids = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .parse::<u32>()
                .is_ok()
        })
        .count();
    let inside: usize = exec(&a.0, "ls /proc | grep -c '^[0-9]*$'").parse().unwrap();
    assert!(
        inside < host_pids && inside < 40,
        "{inside} processes visible"
    );
    assert!(!exec(&a.0, "ps -e -o comm=").contains("berth"));
    assert_eq!(
        exec(
            &a.0,
            "(echo 1 > /proc/sysrq-trigger) 2>/dev/null && echo writable || echo refused"
        ),
        "refused"
    );
    assert_eq!(
        exec(
            &a.0,
            "mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo refused"
        ),
        "refused"
    );
    assert!(exec(
        &a.0,
        "python3 -c 'import ctypes; print(ctypes.CDLL(None).init_module(None, 0, b\"\"))'"
    )
    .contains("-1"));
    // Limits apply to the whole system container.
    let usage = &info(&a.0)["usage"];
    assert!(usage["memory_bytes"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["pids"].as_u64().unwrap() >= 3, "{usage}");

    // The console is interactive (getty on /dev/console) and its output is in the logs.
    common::console_answers(&e2e_dir(), &a.0);
    assert!(ok(&["logs", &a.0]).contains("login:"));
    // `berth shell` gets a pty of the container's own devpts, owned by its root.
    common::shell_has_a_pty(common::command(&e2e_dir()), &a.0);

    // berth set changes limits on the running container, and they bite at once.
    ok(&["set", &a.0, "pids=60", "memory=256M"]);
    assert_eq!(
        exec(&a.0, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"),
        (256u64 << 20).to_string()
    );
    let forks = exec(
        &a.0,
        "python3 -c '
import os, time
n = 0
for i in range(120):
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    n += 1
print(n)'",
    );
    let n: u32 = forks.parse().unwrap();
    assert!(n < 60, "{n} forks under pids=60");
    ok(&["set", &a.0, "pids=none"]);
    assert_eq!(info(&a.0)["limits"]["pids"], serde_json::Value::Null);
    let bad = berth(&["set", &a.0, "pids=lots"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lots"));

    // stop/start keeps the container's data and identity.
    exec(&a.0, "echo kept > /root/data");
    ok(&["stop", &a.0]);
    assert_eq!(info(&a.0)["state"]["state"], "stopped");
    ok(&["start", &a.0]);
    assert_eq!(exec(&a.0, "cat /root/data"), "kept");
    assert_eq!(exec(&a.0, "cat /etc/machine-id"), id_a);

    // Killed from outside: seen as stopped, with the reason; start brings it back.
    let pid = info(&b.0)["pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let st = &info(&b.0)["state"];
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(
        st["reason"].as_str().unwrap().contains("outside berth"),
        "{st}"
    );
    ok(&["start", &b.0]);
    assert_eq!(exec(&b.0, "cat /etc/machine-id"), id_b);

    // delete refuses a running container, then removes everything.
    let refused = berth(&["delete", &a.0]);
    assert!(!refused.status.success());
    ok(&["delete", "--force", &a.0]);
    assert!(!names().contains(&a.0));
    assert!(!e2e_dir().join("containers").join(&a.0).exists());
    assert!(!cgroup_of(&a.0).exists());
    let audit = ok(&["machine-id", "audit"]);
    assert!(!audit.contains(&id_a), "{audit}");
}
