//! `berth daemon` end to end, as root on this machine: the instance requests over its unix
//! socket, with the CLI working on the same instances in-process beside it, and a daemon killed
//! with SIGKILL while its guests run.

mod common;

use common::{e2e_dir, e2e_image, run_ok, Daemon, Instance};
use serde_json::Value;

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
    let (s, v) = d.call("POST", "/1.0/instances", Some(&create));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["state"]["state"], "running", "{v}");
    // A second create of the name is a conflict.
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

    let (s, v) = d.call(
        "PATCH",
        &format!("/1.0/instances/{name}"),
        Some(r#"{"limits":["memory=300M"]}"#),
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = d.call("GET", &format!("/1.0/instances/{name}"), None);
    assert_eq!(v["metadata"]["limits"]["memory"], "300M", "{v}");

    // A daemon killed while its guest runs: the guest goes on, and a new daemon finds it.
    d.kill();
    let info: Value = serde_json::from_str(&run_ok(&state, &["info", "--json", &name])).unwrap();
    assert_eq!(info["state"]["state"], "running", "{info}");
    let d = Daemon::start(&state);
    assert_eq!(state_of(&d, &name), "running");

    let (s, v) = d.call(
        "PUT",
        &format!("/1.0/instances/{name}/state"),
        Some(r#"{"action":"stop","timeout_seconds":60}"#),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(state_of(&d, &name), "stopped");
    let (s, v) = d.call("DELETE", &format!("/1.0/instances/{name}"), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        d.call("GET", &format!("/1.0/instances/{name}"), None).0,
        404
    );
}
