//! Lifecycle that nothing can tear (issue 14): a VM launch and a container launch racing for
//! one name make one instance; a launch killed (SIGKILL or SIGTERM) at any moment leaves either
//! nothing or an instance that `list` shows and `delete --force` clears, after which nothing of
//! it is left on the host (folders, machine-ids, cgroups, mounts, processes, veths) and the name
//! works again.

mod common;

use common::{e2e_dir, e2e_image, run, run_ok};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Everything of instance NAME of data dir STATE still on the host.
fn leftovers(state: &Path, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for d in ["instances", "containers"] {
        if state.join(d).join(name).exists() {
            out.push(format!("folder {d}/{name}"));
        }
    }
    let audit: serde_json::Value =
        serde_json::from_str(&run_ok(state, &["machine-id", "audit", "--json"])).unwrap();
    for e in audit["entries"].as_array().unwrap() {
        if e["name"] == name && e["kind"] != "image" {
            out.push(format!("machine-id registered to {}/{name}", e["kind"]));
        }
    }
    let mut groups = vec![Path::new("/sys/fs/cgroup").join("berth").join(name)];
    for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        groups.push(c.path().join("berth").join(name));
    }
    out.extend(
        groups
            .iter()
            .filter(|g| g.exists())
            .map(|g| format!("cgroup {}", g.display())),
    );
    let own = [
        format!("{}/instances/{name}/", state.display()),
        format!("{}/containers/{name}/", state.display()),
    ];
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    out.extend(
        mounts
            .lines()
            .filter(|l| own.iter().any(|o| l.contains(o.as_str())))
            .map(|l| format!("mount {l}")),
    );
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if own.iter().any(|o| cmd.contains(o.as_str())) {
            out.push(format!(
                "process {}: {cmd}",
                p.file_name().to_string_lossy()
            ));
        }
    }
    let (veth, _) = berth_net::veth_names(&format!("{}/{name}", state.display()));
    if Path::new("/sys/class/net").join(&veth).exists() {
        out.push(format!("veth {veth}"));
    }
    out
}

/// The instance named NAME in `list --json`, if any.
fn listed(state: &Path, name: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&run_ok(state, &["list", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
}

/// Start `berth ARGS`, end it with SIGNAL after DELAY, then check what a later berth sees:
/// nothing, or an instance that `delete --force` clears to nothing.
fn cut_short(state: &Path, name: &str, args: &[&str], delay: Duration, signal: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_DIR", state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let seen = match listed(state, name) {
        None => "nothing".to_string(),
        Some(i) => {
            let st = i["state"]["state"].as_str().unwrap_or("?").to_string();
            run_ok(state, &["delete", "--force", name]);
            st
        }
    };
    let left = leftovers(state, name);
    assert!(
        left.is_empty(),
        "{signal} after {delay:?} ({}): left behind after delete --force:\n{}",
        if sent.success() {
            "sent"
        } else {
            "command had ended"
        },
        left.join("\n")
    );
    seen
}

/// 20 moments with SIGKILL and 5 with SIGTERM, dense where a launch makes its files and starts
/// its processes, sparse while it waits for the guest.
fn moments() -> Vec<(Duration, &'static str)> {
    let ms = [
        0, 5, 10, 20, 30, 45, 60, 80, 100, 130, 160, 200, 250, 300, 400, 500, 700, 1000, 1500, 3000,
    ];
    let mut v: Vec<(Duration, &str)> = ms
        .iter()
        .map(|&m| (Duration::from_millis(m), "KILL"))
        .collect();
    v.extend(
        [15, 90, 280, 600, 2000]
            .iter()
            .map(|&m| (Duration::from_millis(m), "TERM")),
    );
    v
}

fn killed_at_every_moment(kind: &[&str], tag: &str) {
    e2e_image();
    let state = e2e_dir();
    let name = format!("cut-{tag}-{}", std::process::id());
    let mut args = vec!["launch", "debian-12", name.as_str()];
    args.extend_from_slice(kind);
    let mut seen = Vec::new();
    for (delay, signal) in moments() {
        seen.push(format!(
            "{signal}@{}ms: {}",
            delay.as_millis(),
            cut_short(&state, &name, &args, delay, signal)
        ));
    }
    eprintln!("{tag}: {}", seen.join(", "));
    // The name works again, all the way.
    let mut again = args.clone();
    again.push("--no-wait");
    run_ok(&state, &again);
    assert!(listed(&state, &name).is_some());
    run_ok(&state, &["delete", "--force", &name]);
    assert_eq!(leftovers(&state, &name), Vec::<String>::new());
}

#[test]
fn a_vm_launch_killed_at_any_moment_is_cleared_by_delete_force() {
    killed_at_every_moment(&[], "vm");
}

#[test]
fn a_container_launch_killed_at_any_moment_is_cleared_by_delete_force() {
    killed_at_every_moment(&["--container"], "ct");
}

#[test]
fn a_vm_and_a_container_racing_for_one_name_make_one_instance() {
    e2e_image();
    let state = e2e_dir();
    for round in 0..4 {
        let name = format!("race-{}-{round}", std::process::id());
        let spawn = |extra: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["launch", "debian-12", &name, "--no-wait"])
                .args(extra)
                .env("BERTH_DIR", &state)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let vm = spawn(&[]);
        let ct = spawn(&["--container"]);
        let outs = [
            vm.wait_with_output().unwrap(),
            ct.wait_with_output().unwrap(),
        ];
        let won: Vec<bool> = outs.iter().map(|o| o.status.success()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one create wins: {:?}",
            outs.iter()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .collect::<Vec<_>>()
        );
        let lost = &outs[won.iter().position(|w| !w).unwrap()];
        let why = String::from_utf8_lossy(&lost.stderr);
        assert_eq!(lost.status.code(), Some(125), "{why}");
        assert!(
            why.contains("already exists") || why.contains("is busy"),
            "the loser is told of the conflict: {why}"
        );
        let i = listed(&state, &name).expect("the winner is listed");
        assert_eq!(i["type"], if won[0] { "vm" } else { "container" });
        let audit = run_ok(&state, &["machine-id", "audit", "--json"]);
        let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
        let ids = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name.as_str())
            .count();
        assert_eq!(ids, 1, "one machine-id for {name}");
        run_ok(&state, &["delete", "--force", &name]);
        assert_eq!(leftovers(&state, &name), Vec::<String>::new());
        let o = run(&state, &["info", &name]);
        assert_eq!(o.status.code(), Some(125));
    }
}

/// The machine-ids registered to NAME.
fn registered(state: &Path, name: &str) -> Vec<String> {
    let audit: serde_json::Value =
        serde_json::from_str(&run_ok(state, &["machine-id", "audit", "--json"])).unwrap();
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == name && e["kind"] == "container")
        .filter_map(|e| e["machine_id"].as_str().map(String::from))
        .collect()
}

#[test]
fn every_berth_run_container_has_its_own_registered_machine_id() {
    e2e_image();
    let state = e2e_dir();
    // Two throwaway containers: each a valid id of its own, released when they go.
    let ids: Vec<String> = (0..2)
        .map(|i| {
            let name = format!("mid-rm-{}-{i}", std::process::id());
            let out = run_ok(
                &state,
                &[
                    "run",
                    "--rm",
                    "--name",
                    &name,
                    "debian-12",
                    "--",
                    "cat",
                    "/etc/machine-id",
                ],
            );
            assert!(registered(&state, &name).is_empty(), "released with --rm");
            out.trim().to_string()
        })
        .collect();
    for id in &ids {
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id:?}"
        );
    }
    assert_ne!(ids[0], ids[1]);
    // A kept one holds its id until it is deleted.
    let name = format!("mid-kept-{}", std::process::id());
    let out = run_ok(
        &state,
        &[
            "run",
            "--name",
            &name,
            "debian-12",
            "--",
            "cat",
            "/etc/machine-id",
        ],
    );
    assert_eq!(registered(&state, &name), vec![out.trim().to_string()]);
    let info: serde_json::Value =
        serde_json::from_str(&run_ok(&state, &["info", "--json", &name])).unwrap();
    assert_eq!(info["machine_id"], out.trim());
    run_ok(&state, &["delete", &name]);
    assert!(registered(&state, &name).is_empty());
    assert_eq!(leftovers(&state, &name), Vec::<String>::new());
}

#[test]
fn a_launch_whose_reader_goes_away_still_makes_its_instance() {
    e2e_image();
    let state = e2e_dir();
    // `berth image build` and `berth launch` with both pipes closed before they write.
    let gone = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_DIR", &state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(c.stdout.take());
        drop(c.stderr.take());
        c.wait().unwrap()
    };
    assert!(gone(&["image", "build", "debian-12"]).success());
    let name = format!("gone-{}", std::process::id());
    let st = gone(&["launch", "debian-12", &name, "--container", "--no-wait"]);
    assert!(st.success(), "{st}");
    let i = listed(&state, &name).expect("listed");
    assert_eq!(i["state"]["state"], "running", "{i}");
    run_ok(&state, &["delete", "--force", &name]);
    assert_eq!(leftovers(&state, &name), Vec::<String>::new());
}
