//! A second host over HTTPS, end to end as root on this machine: a `berth daemon --listen` in a
//! network namespace of its own with a data dir of its own, joined from this host with a token;
//! a system container and a VM launched and worked on there through the remote; untrusted
//! clients and a client pinning the wrong fingerprint refused on every endpoint; the daemon
//! killed with SIGKILL and started again with its guests still running.

mod common;

use common::{Client, SecondHost};
use serde_json::Value;

/// `curl -k` to the second host with no client certificate: the HTTP status and the answer.
fn curl(h: &SecondHost, method: &str, path: &str) -> (u16, Value) {
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg(format!("https://{}{path}", h.address))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or(Value::Null),
    )
}

/// Every endpoint but server info and the token exchange, as an untrusted client asks them.
const GUARDED: &[(&str, &str)] = &[
    ("GET", "/1.0/instances"),
    ("POST", "/1.0/instances"),
    ("GET", "/1.0/instances/web"),
    ("PATCH", "/1.0/instances/web"),
    ("DELETE", "/1.0/instances/web"),
    ("PUT", "/1.0/instances/web/state"),
    ("PUT", "/1.0/instances/web"),
    ("GET", "/1.0/instances/web/export"),
    ("GET", "/1.0/instances/web/logs"),
    ("GET", "/1.0/instances/web/exec"),
    ("GET", "/1.0/instances/web/console"),
    ("GET", "/1.0/run"),
    ("GET", "/1.0/images"),
    ("POST", "/1.0/images"),
    ("GET", "/1.0/images/debian-12"),
    ("PUT", "/1.0/images/debian-12"),
    ("DELETE", "/1.0/images/debian-12"),
    ("GET", "/1.0/images/debian-12/export"),
    ("GET", "/1.0/operations"),
    ("GET", "/1.0/operations/x/wait"),
    ("DELETE", "/1.0/operations/x"),
    ("GET", "/1.0/certificates"),
    ("GET", "/1.0/metrics"),
    ("DELETE", "/1.0/certificates/laptop"),
    ("GET", "/1.0/nothing"),
];

/// A small disk of its own (an ext4 file system with a kernel, initrd and os-release), to import
/// as an image unlike the guest image.
fn tiny_image_disk() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    for (p, text) in [
        ("boot/vmlinuz-6.1.0-1-amd64", "kernel"),
        ("boot/initrd.img-6.1.0-1-amd64", "initrd"),
        ("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
    ] {
        std::fs::create_dir_all(tree.join(p).parent().unwrap()).unwrap();
        std::fs::write(tree.join(p), text).unwrap();
    }
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "rootfs", "-d"])
        .arg(&tree)
        .arg(d.path().join("disk.raw"))
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    d
}

#[test]
fn a_second_host_is_joined_and_its_guests_managed_over_https() {
    let mut h = SecondHost::start();
    let pid = std::process::id();
    let (ct, vm) = (format!("h2-ct-{pid}"), format!("h2-vm-{pid}"));

    // Untrusted: server info (saying so) and nothing else.
    let (s, v) = curl(&h, "GET", "/1.0");
    assert_eq!(
        (s, v["metadata"]["auth"].as_str()),
        (200, Some("untrusted")),
        "{v}"
    );
    for (method, path) in GUARDED {
        let (s, v) = curl(&h, method, path);
        assert_eq!(s, 403, "{method} {path} answered an untrusted client: {v}");
        assert_eq!(v["error"]["kind"], "forbidden");
    }

    // Join with a token; a token works once.
    let token = h.run_ok(&["remote", "token", "laptop"]);
    let c = Client::new();
    let out = c.run_ok(&["remote", "add", "h2", token.trim()]);
    assert!(out.contains(&format!("https://{}", h.address)), "{out}");
    let again = Client::new().run(&["remote", "add", "h2", token.trim()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("join token"));
    let trusted: Value = serde_json::from_str(&h.run_ok(&["trust", "list", "--json"])).unwrap();
    assert_eq!(trusted[0]["name"], "laptop", "{trusted}");

    // The image, sent there: the disk goes over the TLS connection, the kernel is read out of
    // it on the second host, and the fingerprint tells the copy from another image.
    let disk = common::e2e_dir().join("images/debian-12/disk.qcow2");
    let disk = disk.to_str().unwrap();
    let out = c.run_ok(&["image", "import", disk, "--name", "h2:debian-12"]);
    assert!(out.contains("as image debian-12"), "{out}");
    let again = c.run(&["image", "import", disk, "--name", "h2:debian-12"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already has an image"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let images: Value =
        serde_json::from_str(&c.run_ok(&["image", "list", "h2:", "--json"])).unwrap();
    assert_eq!(images[0]["name"], "debian-12", "{images}");
    assert_eq!(images[0]["source"]["kind"], "imported", "{images}");
    assert_eq!(images[0]["source"]["from"], disk, "{images}");
    assert!(
        images[0]["kernel"].as_str().unwrap().contains("amd64"),
        "{images}"
    );
    let listed = h.run_ok(&["image", "list", "--json"]);
    assert!(listed.contains("\"debian-12\""), "{listed}");
    assert!(
        std::fs::read_dir(h.dir.path().join("images"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "the upload left a work folder"
    );

    // `image copy`, both ways: from there to here (the export streamed down), then, the
    // image removed there, from here back (streamed up); the fingerprint and the metadata
    // travel with it, and an image the target already holds is not sent again.
    let fingerprint = images[0]["fingerprint"].as_str().unwrap().to_string();
    let out = c.run_ok(&["image", "copy", "h2:debian-12", "local:"]);
    assert!(out.contains("Copied image debian-12 to local:"), "{out}");
    let here: Value = serde_json::from_str(&c.run_ok(&["image", "list", "--json"])).unwrap();
    assert_eq!(here[0]["fingerprint"], fingerprint.as_str(), "{here}");
    assert_eq!(here[0]["source"]["from"], disk, "{here}");
    let out = c.run_ok(&["image", "copy", "debian-12", "local:again"]);
    assert!(
        out.contains("already on local: as debian-12 (fingerprint") && out.contains("nothing sent"),
        "{out}"
    );
    c.run_ok(&["image", "rm", "h2:debian-12"]);
    let copied: Value =
        serde_json::from_str(&c.run_ok(&["image", "copy", "debian-12", "h2:", "--json"])).unwrap();
    assert_eq!(
        (copied["name"].as_str(), copied["fingerprint"].as_str()),
        (Some("debian-12"), Some(fingerprint.as_str())),
        "{copied}"
    );
    let out = c.run_ok(&["image", "copy", "debian-12", "h2:"]);
    assert!(
        out.contains("already on h2: as debian-12 (fingerprint") && out.contains("nothing sent"),
        "{out}"
    );
    // A name taken there by another image is refused before anything is sent.
    let tiny = tiny_image_disk();
    c.run_ok(&[
        "image",
        "import",
        tiny.path().join("disk.raw").to_str().unwrap(),
        "--name",
        "tiny",
    ]);
    let refused = c.run(&["image", "copy", "tiny", "h2:debian-12"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("already has an image named \"debian-12\", another one"),
        "{err}"
    );
    c.run_ok(&["image", "copy", "tiny", "h2:"]);
    c.run_ok(&["image", "rm", "h2:tiny"]);
    assert!(
        std::fs::read_dir(h.dir.path().join("images"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "the copy left a work folder"
    );

    // A system container there.
    let t = format!("h2:{ct}");
    c.run_ok(&["launch", "debian-12", &t, "--container"]);
    let out = c.run_input(
        &["exec", &t, "--", "sh", "-c", "cat; exit 3"],
        b"over https\n",
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over https\n");
    common::console_answers_with(c.command(), &t);
    common::shell_has_a_pty(c.command(), &t);
    c.run_ok(&["set", &t, "memory=200M"]);
    let info: Value = serde_json::from_str(&c.run_ok(&["info", "--json", &t])).unwrap();
    assert_eq!(info["limits"]["memory"], "200M", "{info}");
    // It is on the second host, not here.
    let here: Value = serde_json::from_str(&c.run_ok(&["list", "--json"])).unwrap();
    assert_eq!(here, serde_json::json!([]));
    let there: Value = serde_json::from_str(&h.run_ok(&["list", "--json"])).unwrap();
    assert!(there
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == ct.as_str()));

    // A VM there.
    let tv = format!("h2:{vm}");
    c.run_ok(&["launch", "debian-12", &tv]);
    assert_eq!(
        c.run_ok(&["exec", &tv, "--", "hostname"]).trim(),
        vm.as_str()
    );
    let out = c.run_input(&["exec", &tv, "--", "cat"], b"to the vm\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to the vm\n");
    common::shell_has_a_pty(c.command(), &tv);

    // Metrics, as the trusted client reads them (its own certificate), pass promtool's check
    // and show both guests running and using CPU and memory.
    let conf = c.conf_dir();
    let out = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "30", "--fail", "--cert"])
        .arg(conf.join("client.crt"))
        .arg("--key")
        .arg(conf.join("client.key"))
        .arg(format!("https://{}/1.0/metrics", h.address))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            use std::io::Write;
            p.stdin.take().unwrap().write_all(metrics.as_bytes())?;
            p.wait_with_output()
        })
        .expect("promtool runs");
    assert!(
        check.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    for (n, ty) in [(&ct, "container"), (&vm, "vm")] {
        let labels = format!("{{name=\"{n}\",type=\"{ty}\"");
        assert!(
            metrics.contains(&format!(
                "berth_instance_state{labels},state=\"running\"}} 1"
            )),
            "{metrics}"
        );
        for family in [
            "berth_instance_cpu_seconds_total",
            "berth_instance_memory_bytes",
        ] {
            let line = metrics
                .lines()
                .find(|l| l.starts_with(&format!("{family}{labels}}}")))
                .unwrap_or_else(|| panic!("no {family} for {n}: {metrics}"));
            let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(v > 0.0, "{line}");
        }
    }
    // The VM's NIC, counted by its relay to passt: its DHCP lease and the SSH sessions above.
    let labels = format!("{{name=\"{vm}\",type=\"vm\"}}");
    for family in [
        "berth_instance_network_receive_bytes_total",
        "berth_instance_network_transmit_bytes_total",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{family}{labels}")))
            .unwrap_or_else(|| panic!("no {family} for {vm}: {metrics}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v > 1000.0, "{line}");
    }

    // A client pinning another fingerprint is refused, whatever it asks.
    let wrong = Client::new();
    wrong.run_ok(&[
        "remote",
        "add",
        "h2",
        h.run_ok(&["remote", "token", "other"]).trim(),
    ]);
    let conf = wrong.conf_dir().join("remotes.json");
    let text = std::fs::read_to_string(&conf).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let pinned = v["remotes"]["h2"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped: String = pinned.chars().rev().collect();
    std::fs::write(&conf, text.replace(&pinned, &flipped)).unwrap();
    for args in [
        vec!["list", "h2:"],
        vec!["info", &t],
        vec!["exec", &t, "--", "true"],
        vec!["delete", "--force", &t],
    ] {
        let out = wrong.run(&args);
        assert!(!out.status.success(), "{args:?} went through");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not the one trusted"), "{args:?}: {err}");
    }
    // A client that is no longer trusted is refused too.
    h.run_ok(&["trust", "remove", "other"]);
    std::fs::write(&conf, text).unwrap();
    let out = wrong.run(&["list", "h2:"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not trusted"));

    // The daemon killed while its guests run: they go on, and a new daemon lists them.
    h.kill_daemon();
    h.start_daemon();
    let listed: Value = serde_json::from_str(&c.run_ok(&["list", "h2:", "--json"])).unwrap();
    for n in [&ct, &vm] {
        let i = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n.as_str())
            .unwrap_or_else(|| panic!("{n} is not listed after the restart: {listed}"));
        assert_eq!(i["state"]["state"], "running", "{i}");
    }

    // `copy`, both ways, of the stopped VM: from there to here (its image is here already,
    // so only the overlay travels), booted here with an identity of its own; and back there
    // under another name (the PUT route), stopped. The source is left as it was.
    let probe = "hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; \
                 cat /etc/ssh/ssh_host_ed25519_key.pub";
    let before = c.run_ok(&["exec", &tv, "--", "sh", "-c", probe]);
    c.run_ok(&["stop", &tv]);
    let copy = format!("copy-{pid}");
    let out = c.run_ok(&["copy", &tv, &format!("local:{copy}")]);
    assert!(
        out.contains(&format!("Copied {vm} to local: as {copy}")),
        "{out}"
    );
    let local: Value = serde_json::from_str(&c.run_ok(&["info", "--json", &copy])).unwrap();
    assert_eq!(local["state"]["state"], "stopped", "{local}");
    assert_eq!(
        local["state"]["reason"],
        format!("copied from {vm}"),
        "{local}"
    );
    c.run_ok(&["start", &copy]);
    let after = c.run_ok(&["exec", &copy, "--", "sh", "-c", probe]);
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    assert_eq!(
        (b[0], a[0]),
        (vm.as_str(), copy.as_str()),
        "hostnames: {before} / {after}"
    );
    assert_eq!(a[1], local["machine_id"].as_str().unwrap(), "{after}");
    for (i, what) in [(1, "machine-id"), (2, "MAC"), (3, "SSH host key")] {
        assert_ne!(
            a[i], b[i],
            "the copy has the source's {what}: {before} / {after}"
        );
    }
    let audit = c.run(&["machine-id", "audit"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
    c.run_ok(&["stop", &copy]);
    let back = format!("h2:back-{pid}");
    c.run_ok(&["copy", &copy, &back]);
    let there: Value = serde_json::from_str(&c.run_ok(&["info", "--json", &back])).unwrap();
    assert_eq!(there["state"]["state"], "stopped", "{there}");
    let ids = [&there["machine_id"], &local["machine_id"]];
    assert_ne!(ids[0], ids[1]);
    // A name taken there is refused before anything is sent; so is a running source.
    let out = c.run(&["copy", &copy, &back]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has an instance"));
    c.run_ok(&["start", &tv]);
    let out = c.run(&["copy", &tv, "local:again"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{out:?}"
    );
    c.run_ok(&["delete", &back]);
    c.run_ok(&["delete", &copy]);
    assert!(
        std::fs::read_dir(h.dir.path().join("instances"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "the copy left a work folder"
    );

    // The image is kept while guests are made from it.
    let out = c.run(&["image", "rm", "h2:debian-12"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by"));
    c.run_ok(&["stop", &t]);
    c.run_ok(&["delete", &t]);
    c.run_ok(&["delete", "--force", &tv]);
    let there: Value = serde_json::from_str(&h.run_ok(&["list", "--json"])).unwrap();
    assert_eq!(there, serde_json::json!([]), "{there}");
    c.run_ok(&["image", "rm", "h2:debian-12"]);
    let images: Value =
        serde_json::from_str(&c.run_ok(&["image", "list", "h2:", "--json"])).unwrap();
    assert_eq!(images, serde_json::json!([]));
}
