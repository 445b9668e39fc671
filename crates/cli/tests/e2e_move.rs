//! `berth move` of a stopped VM between two hosts, end to end as root on this machine: a second
//! host (a `berth daemon --listen` in a network namespace of its own) and this client's own data
//! dir. The VM moves there-to-here with its image sent first, is cut short on the way (the
//! client killed) and finished by running the move again, boots here as the same guest (its
//! hostname, machine-id, MAC, SSH host key, forwarded port and a file written before the move),
//! then goes back: its target's daemon killed, its link cut and the move cut short and undone
//! on the way, each leaving it here whole and nothing there, then moved for good.

mod common;

use common::{Client, SecondHost};
use serde_json::Value;
use std::time::{Duration, Instant};

fn info(c: &Client, target: &str) -> Value {
    serde_json::from_str(&c.run_ok(&["info", "--json", target])).unwrap()
}

/// `berth move NAME h2:` begun: returned once `NAME` here shows as moving.
fn moving_away(c: &Client, name: &str) -> std::process::Child {
    let child = c
        .command()
        .args(["move", name, "h2:"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while info(c, name)["state"]["state"] != "moving" {
        assert!(Instant::now() < deadline, "{name} never moved");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Start `berth move ARGS` and kill it once `source` shows as moving: a move cut short.
fn cut_short(c: &Client, args: &[&str], source: &str) {
    let mut child = c
        .command()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "berth {args:?} ended ({:?}) before it could be cut short: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = c.run(&["info", "--json", source]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["state"]["state"] == "moving" {
            break;
        }
        assert!(Instant::now() < deadline, "{source} never moved: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_stopped_vm_moves_between_hosts_whole_even_when_cut_short() {
    let mut h = SecondHost::start();
    let pid = std::process::id();
    let vm = format!("mv-{pid}");
    let there = format!("h2:{vm}");
    let port = (20000 + pid % 10000) as u16;
    let c = Client::new();
    c.run_ok(&[
        "remote",
        "add",
        "h2",
        h.run_ok(&["remote", "token", "laptop"]).trim(),
    ]);
    let disk = common::e2e_dir().join("images/debian-12/disk.qcow2");
    c.run_ok(&[
        "image",
        "import",
        disk.to_str().unwrap(),
        "--name",
        "h2:debian-12",
    ]);
    c.run_ok(&[
        "launch",
        "debian-12",
        &there,
        "--forward",
        &format!("{port}:80"),
    ]);
    let probe = "hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; \
                 cat /etc/ssh/ssh_host_ed25519_key.pub; cat marker";
    c.run_ok(&[
        "exec",
        &there,
        "--",
        "sh",
        "-c",
        "echo written-before-the-move > marker && sync",
    ]);
    let before = c.run_ok(&["exec", &there, "--", "sh", "-c", probe]);
    let id = info(&c, &there)["machine_id"].as_str().unwrap().to_string();
    // A running VM is refused before anything travels.
    let out = c.run(&["move", &there, "local:"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{out:?}"
    );
    c.run_ok(&["stop", &there]);

    // Cut short (its image went first; the VM was on its way), it cannot start there, and it
    // is not here; the move again finishes it.
    cut_short(&c, &["move", &there, "local:"], &there);
    let i = info(&c, &there);
    assert_eq!(i["state"]["reason"], "moving to local:", "{i}");
    let out = c.run(&["start", &there]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is moving"),
        "{out:?}"
    );
    let out = c.run(&["move", &there, "local:"]);
    let said = common::stdout_of(&["move", &there, "local:"], out);
    assert!(
        said.contains(&format!("Moved {vm} from h2: to local: as {vm}")),
        "{said}"
    );

    // Here, whole and the same guest; gone there, its machine-id with it.
    let here = info(&c, &vm);
    assert_eq!(
        (
            here["state"]["state"].as_str(),
            here["state"]["reason"].as_str()
        ),
        (Some("stopped"), Some("moved here from h2:")),
        "{here}"
    );
    assert_eq!(here["machine_id"], id.as_str(), "{here}");
    let listed: Value = serde_json::from_str(&h.run_ok(&["list", "--json"])).unwrap();
    assert_eq!(listed, serde_json::json!([]), "{listed}");
    assert!(!h.run_ok(&["machine-id", "audit"]).contains(&id));
    assert!(c.run_ok(&["machine-id", "audit"]).contains(&id));
    let forwards = here["forwards"].to_string();
    assert!(forwards.contains(&port.to_string()), "{here}");
    c.run_ok(&["start", &vm]);
    let after = c.run_ok(&["exec", &vm, "--", "sh", "-c", probe]);
    assert_eq!(before, after, "the moved guest is not the same");
    for folder in [
        h.dir.path().join("instances"),
        c.data_dir().join("instances"),
    ] {
        if let Ok(entries) = std::fs::read_dir(&folder) {
            for e in entries {
                let n = e.unwrap().file_name();
                assert!(
                    !n.to_string_lossy().starts_with('.'),
                    "{n:?} left in {folder:?}"
                );
            }
        }
    }

    // Back, over a link slowed to 100 Mbit/s, so that each failure below strikes while the
    // overlay travels. Each leaves the VM here, stopped and whole, and nothing of it there.
    c.run_ok(&["stop", &vm]);
    let shaped = [
        "qdisc",
        "add",
        "dev",
        h.link.as_str(),
        "root",
        "tbf",
        "rate",
        "100mbit",
    ];
    let tc = |args: &[&str]| {
        let st = std::process::Command::new("tc")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "tc {args:?}");
    };
    tc(&[&shaped[..], &["burst", "256kb", "latency", "50ms"]].concat());
    let nothing_there = |h: &SecondHost| {
        let listed: Value = serde_json::from_str(&h.run_ok(&["list", "--json"])).unwrap();
        assert_eq!(listed, serde_json::json!([]), "{listed}");
        assert!(!h.run_ok(&["machine-id", "audit"]).contains(&id));
    };
    let stays = |out: &std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("{vm} stays on local:")),
            "{:?} {err} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        let i = info(&c, &vm);
        assert_eq!(i["state"]["state"], "stopped", "{i}");
    };
    // The target's daemon killed on the way.
    let child = moving_away(&c, &vm);
    h.kill_daemon();
    stays(&child.wait_with_output().unwrap());
    h.start_daemon();
    nothing_there(&h);
    // The link cut on the way: each end gives the connection up (berth's link timeout), the
    // target removes what it had taken.
    let child = moving_away(&c, &vm);
    let link = |state: &str| {
        let st = std::process::Command::new("ip")
            .args(["link", "set", &h.link, state])
            .status()
            .unwrap();
        assert!(st.success());
    };
    link("down");
    let cut = Instant::now();
    let out = child.wait_with_output().unwrap();
    let gave_up = cut.elapsed();
    link("up");
    stays(&out);
    assert!(gave_up < Duration::from_secs(120), "{gave_up:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(h.dir.path().join("instances"))
        .unwrap()
        .any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".receive-")
        })
    {
        assert!(
            Instant::now() < deadline,
            "the cut receipt was not given up there"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    nothing_there(&h);

    // Cut short and undone, it is here as it was and nothing of it is there; then moved.
    cut_short(&c, &["move", &vm, "h2:"], &vm);
    let out = c.run_ok(&["move", "--undo", &vm, "h2:"]);
    assert!(out.contains(&format!("{vm} stays on local:")), "{out}");
    assert_eq!(info(&c, &vm)["state"]["state"], "stopped");
    let listed: Value = serde_json::from_str(&h.run_ok(&["list", "--json"])).unwrap();
    assert_eq!(listed, serde_json::json!([]), "{listed}");
    assert!(!h.run_ok(&["machine-id", "audit"]).contains(&id));
    tc(&["qdisc", "del", "dev", &h.link, "root"]);
    let out = c.run_ok(&["move", &vm, "h2:"]);
    assert!(out.contains(&format!("to h2: as {vm}")), "{out}");
    for e in std::fs::read_dir(h.dir.path().join("instances")).unwrap() {
        let n = e.unwrap().file_name();
        assert!(!n.to_string_lossy().starts_with('.'), "{n:?} left there");
    }
    let back = info(&c, &there);
    assert_eq!(back["state"]["state"], "stopped", "{back}");
    assert_eq!(back["machine_id"], id.as_str(), "{back}");
    let out = c.run(&["info", &vm]);
    assert!(!out.status.success());
    assert!(!c.run_ok(&["machine-id", "audit"]).contains(&id));
    c.run_ok(&["delete", &there]);
}
