//! `berth daemon` end to end, as root on this machine: the instance requests over its unix
//! socket as operations, with the CLI working on the same instances in-process beside it; the
//! CLI through a remote; a cancelled VM create; and a daemon killed with SIGKILL while its
//! guests run.

mod common;

use common::{e2e_dir, e2e_image, run_ok, Client, Daemon, Instance};
use serde_json::Value;

/// The tests share the e2e data dir, so its daemon socket: one test at a time has a daemon.
static ONE_DAEMON: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_daemon() -> std::sync::MutexGuard<'static, ()> {
    ONE_DAEMON.lock().unwrap_or_else(|p| p.into_inner())
}

fn state_of(d: &Daemon, name: &str) -> String {
    let (s, v) = d.call("GET", &format!("/1.0/instances/{name}"), None);
    assert_eq!(s, 200, "{v}");
    v["metadata"]["state"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_container_made_and_changed_through_the_daemon_outlives_a_killed_daemon() {
    let _one = one_daemon();
    e2e_image();
    let state = e2e_dir();
    let name = format!("dmn-ct-{}", std::process::id());
    let _cleanup = Instance::named(&state, name.clone());
    let mut d = Daemon::start(&state);
    let sock = std::fs::metadata(d.socket()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(sock.permissions().mode() & 0o777, 0o660);

    // A bad body changes nothing and names its field.
    let (s, v) = d.call(
        "POST",
        "/1.0/instances",
        Some(&format!(
            r#"{{"name":"{name}","image":"debian-12","type":"container","memory":1}}"#
        )),
    );
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("memory")),
        "{v}"
    );
    assert_eq!(
        d.call("GET", &format!("/1.0/instances/{name}"), None).0,
        404
    );

    let create = format!(
        r#"{{"name":"{name}","image":"debian-12","type":"container","wait_seconds":120,
            "container":{{"limits":["memory=256M"]}}}}"#
    );
    let (s, op) = d.operate("POST", "/1.0/instances", Some(&create));
    assert_eq!(s, 202, "{op}");
    assert_eq!(op["status"], "success", "{op}");
    assert_eq!(op["instance"]["state"]["state"], "running", "{op}");
    assert!(!op["events"].as_array().unwrap().is_empty(), "{op}");
    // A second create of the name is a conflict, answered at once.
    let (s, v) = d.call("POST", "/1.0/instances", Some(&create));
    assert_eq!(
        (s, v["error"]["kind"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );

    // The CLI sees what the daemon made, and works on it beside the daemon.
    let host = run_ok(&state, &["exec", &name, "--", "hostname"]);
    assert_eq!(host.trim(), name);
    let listed: Value = serde_json::from_str(&run_ok(&state, &["list", "--json"])).unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == name.as_str()));

    let (s, op) = d.operate(
        "PATCH",
        &format!("/1.0/instances/{name}"),
        Some(r#"{"limits":["memory=300M"]}"#),
    );
    assert_eq!((s, op["status"].as_str()), (202, Some("success")), "{op}");
    let (_, v) = d.call("GET", &format!("/1.0/instances/{name}"), None);
    assert_eq!(v["metadata"]["limits"]["memory"], "300M", "{v}");

    // A daemon killed while its guest runs: the guest goes on, and a new daemon finds it.
    d.kill();
    let info: Value = serde_json::from_str(&run_ok(&state, &["info", "--json", &name])).unwrap();
    assert_eq!(info["state"]["state"], "running", "{info}");
    let d = Daemon::start(&state);
    assert_eq!(state_of(&d, &name), "running");

    let (s, op) = d.operate(
        "PUT",
        &format!("/1.0/instances/{name}/state"),
        Some(r#"{"action":"stop","timeout_seconds":60}"#),
    );
    assert_eq!((s, op["status"].as_str()), (202, Some("success")), "{op}");
    assert_eq!(state_of(&d, &name), "stopped");
    let (s, op) = d.operate("DELETE", &format!("/1.0/instances/{name}"), None);
    assert_eq!((s, op["status"].as_str()), (202, Some("success")), "{op}");
    assert_eq!(
        d.call("GET", &format!("/1.0/instances/{name}"), None).0,
        404
    );
}

#[test]
fn the_cli_manages_a_container_through_a_remote() {
    let _one = one_daemon();
    e2e_image();
    let state = e2e_dir();
    let name = format!("rmt-ct-{}", std::process::id());
    let _cleanup = Instance::named(&state, name.clone());
    let d = Daemon::start(&state);
    let c = Client::new();
    let addr = format!("unix://{}", d.socket().display());
    let out = c.run_ok(&["remote", "add", "d1", &addr]);
    assert!(out.contains("Added remote d1"), "{out}");
    // A remote that does not answer is not added.
    let bad = c.run(&["remote", "add", "d2", "unix:///nonexistent/berth.sock"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/berth.sock"));
    let remotes: Value = serde_json::from_str(&c.run_ok(&["remote", "list", "--json"])).unwrap();
    assert_eq!(remotes.as_array().unwrap().len(), 2, "{remotes}");

    // berth monitor follows the daemon's events from here on.
    let mut monitor = c
        .command()
        .args(["monitor", "d1:", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut monitor_out = monitor.stdout.take().unwrap();
    let seen = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut monitor_out, &mut text);
        text
    });
    std::thread::sleep(std::time::Duration::from_millis(500));

    let target = format!("d1:{name}");
    let out = c.run(&[
        "launch",
        "debian-12",
        &target,
        "--container",
        "--memory",
        "256M",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its progress came back from the daemon's operation.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{name}: ")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_str(&c.run_ok(&["list", "d1:", "--json"])).unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == name.as_str()));
    // The client's own host (its in-process remote) has no such instance.
    let local: Value = serde_json::from_str(&c.run_ok(&["list", "--json"])).unwrap();
    assert_eq!(local, serde_json::json!([]));
    let info: Value = serde_json::from_str(&c.run_ok(&["info", "--json", &target])).unwrap();
    assert_eq!(info["state"]["state"], "running", "{info}");

    // exec through the daemon: standard input piped through, output and error apart, the
    // exit status passed back; a command that does not exist is 127, as in-process.
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let out = c.run_input(&["exec", &target, "--", "sha256sum"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(&input)?;
            ch.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next(),
        String::from_utf8_lossy(&local.stdout)
            .split_whitespace()
            .next()
    );
    let out = c.run_input(
        &[
            "exec",
            &target,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let out = c.run_input(&["exec", &target, "--", "no-such-command"], b"");
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        c.run_ok(&["exec", &target, "--", "hostname"]).trim(),
        name.as_str()
    );

    // run through the daemon: a new application container there, stdin piped, its status back.
    let out = c.run_input(
        &[
            "run",
            "--rm",
            "d1:debian-12",
            "--",
            "sh",
            "-c",
            "cat; exit 5",
        ],
        b"through the daemon\n",
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the daemon\n");
    // The console, both ways, through the daemon.
    common::console_answers_with(c.command(), &target);

    c.run_ok(&["set", &target, "memory=300M"]);
    let info: Value = serde_json::from_str(&c.run_ok(&["info", "--json", &target])).unwrap();
    assert_eq!(info["limits"]["memory"], "300M", "{info}");
    c.run_ok(&["logs", &target]);
    c.run_ok(&["stop", &target]);
    // With the default remote switched, a bare name is on it.
    c.run_ok(&["remote", "switch", "d1"]);
    assert_eq!(c.run_ok(&["remote", "get-default"]).trim(), "d1");
    c.run_ok(&["start", &name]);
    assert_eq!(state_of(&d, &name), "running");
    c.run_ok(&["delete", "--force", &name]);
    assert_eq!(
        d.call("GET", &format!("/1.0/instances/{name}"), None).0,
        404
    );
    let _ = monitor.kill();
    let _ = monitor.wait();
    let events: Vec<Value> = seen
        .join()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lifecycle: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "lifecycle" && e["event"]["instance"] == name.as_str())
        .map(|e| e["event"]["message"].as_str().unwrap())
        .collect();
    for m in ["created", "updated", "stopped", "started", "deleted"] {
        assert!(lifecycle.contains(&m), "no {m} in {lifecycle:?}");
    }
    assert!(events.iter().any(|e| e["type"] == "operation"
        && e["operation"]["description"] == format!("creating instance {name}").as_str()
        && e["operation"]["status"] == "success"));
    // The daemon's log comes too.
    let began = format!("operation began: creating instance {name}");
    assert!(
        events.iter().any(|e| e["type"] == "logging"
            && e["level"] == "info"
            && e["message"].as_str().is_some_and(|m| m.starts_with(&began))),
        "no logging event {began:?}"
    );

    c.run_ok(&["remote", "remove", "d1"]);
    assert_eq!(c.run_ok(&["remote", "get-default"]).trim(), "local");
}

#[test]
fn a_cancelled_vm_create_leaves_nothing() {
    let _one = one_daemon();
    e2e_image();
    let state = e2e_dir();
    let name = format!("dmn-cancel-{}", std::process::id());
    let _cleanup = Instance::named(&state, name.clone());
    let d = Daemon::start(&state);
    let (s, v) = d.call(
        "POST",
        "/1.0/instances",
        Some(&format!(
            r#"{{"name":"{name}","image":"debian-12","type":"vm","wait_seconds":300}}"#
        )),
    );
    assert_eq!(s, 202, "{v}");
    let op = v["operation"].as_str().unwrap().to_string();
    assert_eq!(v["metadata"]["may_cancel"], true, "{v}");
    // Let it get under way (the disk is being made, or QEMU started).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (s, v) = d.call("DELETE", &op, None);
    assert_eq!(s, 200, "{v}");
    let (_, v) = d.call("GET", &format!("{op}/wait?timeout=120"), None);
    assert_eq!(v["metadata"]["status"], "cancelled", "{v}");
    assert_eq!(
        d.call("GET", &format!("/1.0/instances/{name}"), None).0,
        404
    );
    let qemu = std::process::Command::new("pgrep")
        .args(["-f", &format!("instances/{name}/")])
        .output()
        .unwrap();
    assert!(
        qemu.stdout.is_empty(),
        "a process of the cancelled create is left: {}",
        String::from_utf8_lossy(&qemu.stdout)
    );
    // The name can be used again (and the cancelled operation cannot be cancelled twice).
    assert_eq!(d.call("DELETE", &op, None).0, 409);
    let (s, op) = d.operate(
        "POST",
        "/1.0/instances",
        Some(&format!(
            r#"{{"name":"{name}","image":"debian-12","type":"container","wait_seconds":120}}"#
        )),
    );
    assert_eq!((s, op["status"].as_str()), (202, Some("success")), "{op}");
}

/// 50 creates at once from two clients (one through the daemon, one in-process on the same
/// data dir), with duplicate names among them and VMs racing containers for two names: each
/// name ends up made once, every loser gets a conflict, the registry holds one machine-id per
/// instance, and nothing runs that `list` does not show.
#[test]
fn fifty_concurrent_creates_from_two_clients_make_each_name_once() {
    let _one = one_daemon();
    e2e_image();
    let state = e2e_dir();
    let pid = std::process::id();
    let d = Daemon::start(&state);
    let c = Client::new();
    c.run_ok(&[
        "remote",
        "add",
        "d1",
        &format!("unix://{}", d.socket().display()),
    ]);
    let n = |p: &str, i: usize| format!("cc{pid}-{p}{i}");
    // (through the daemon?, name, VM?)
    let mut plan: Vec<(bool, String, bool)> = Vec::new();
    for i in 0..20 {
        plan.push((true, n("a", i), false));
    }
    for i in 10..20 {
        plan.push((false, n("a", i), false)); // 10 duplicates, from the other client
    }
    for i in 0..16 {
        plan.push((false, n("b", i), false));
    }
    for i in 0..2 {
        plan.push((true, n("r", i), true)); // a VM through the daemon ...
        plan.push((false, n("r", i), false)); // ... racing a container in-process
    }
    assert_eq!(plan.len(), 50);
    let mut names: Vec<String> = plan.iter().map(|p| p.1.clone()).collect();
    names.sort();
    names.dedup();
    let _cleanup: Vec<Instance> = names
        .iter()
        .map(|n| Instance::named(&state, n.clone()))
        .collect();

    let barrier = std::sync::Arc::new(std::sync::Barrier::new(plan.len()));
    let c = std::sync::Arc::new(c);
    let threads: Vec<_> = plan
        .iter()
        .cloned()
        .map(|(remote, name, vm)| {
            let (barrier, c, state) = (barrier.clone(), c.clone(), state.clone());
            std::thread::spawn(move || {
                let target = if remote {
                    format!("d1:{name}")
                } else {
                    name.clone()
                };
                let mut args = vec!["launch", "debian-12", target.as_str(), "--no-wait"];
                if !vm {
                    args.push("--container");
                }
                barrier.wait();
                let out = if remote {
                    c.run(&args)
                } else {
                    common::run(&state, &args)
                };
                (name, out)
            })
        })
        .collect();
    let results: Vec<(String, std::process::Output)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();

    let listed: Value = serde_json::from_str(&run_ok(&state, &["list", "--json"])).unwrap();
    let listed: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| names.contains(&i["name"].as_str().unwrap_or_default().to_string()))
        .collect();
    for name in &names {
        let made: Vec<_> = results
            .iter()
            .filter(|(n, o)| n == name && o.status.success())
            .collect();
        assert_eq!(made.len(), 1, "{name} was made {} times", made.len());
        for (_, o) in results
            .iter()
            .filter(|(n, o)| n == name && !o.status.success())
        {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("already exists") || err.contains("is busy"),
                "a losing create of {name} did not fail with a conflict: {err}"
            );
        }
        let rows: Vec<_> = listed
            .iter()
            .filter(|i| i["name"] == name.as_str())
            .collect();
        assert_eq!(rows.len(), 1, "{name} is listed {} times", rows.len());
    }
    // One machine-id per instance in the registry, none shared.
    let audit: Value =
        serde_json::from_str(&run_ok(&state, &["machine-id", "audit", "--json"])).unwrap();
    for name in &names {
        let ids: Vec<_> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name.as_str() && e["kind"] != "image")
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "{name} has {} registered machine-ids",
            ids.len()
        );
        assert_eq!(ids[0]["duplicate"], false, "{ids:?}");
    }
    // Nothing runs untracked: a QEMU only for a name listed as a VM.
    for i in 0..2 {
        let name = n("r", i);
        let qemus = std::process::Command::new("pgrep")
            .args(["-f", &format!("instances/{name}/")])
            .output()
            .unwrap();
        let vm_listed = listed
            .iter()
            .any(|r| r["name"] == name.as_str() && r["type"] == "vm");
        assert_eq!(
            !qemus.stdout.is_empty(),
            vm_listed,
            "{name}: QEMU running {:?}, listed as a VM {vm_listed}",
            String::from_utf8_lossy(&qemus.stdout)
        );
    }
    for name in &names {
        run_ok(&state, &["delete", "--force", name]);
    }
}
