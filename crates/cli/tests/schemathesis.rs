//! schemathesis (PyPI) against a live `berth daemon --listen` on loopback, with the document the
//! daemon itself serves at /1.0/openapi.json: over a thousand generated requests on every
//! operation, and none may answer 5xx, a status or content type the document does not list, or
//! a body that does not match its schema. The daemon's data dir is empty (no images), so no
//! request can make a guest.

mod common;

use std::process::Command;

const SCHEMATHESIS: &str = "/var/cache/berth-tools/venv/bin/schemathesis";

#[test]
fn the_live_daemon_matches_its_openapi_document() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["daemon", "--listen", &address])
        .env("BERTH_DIR", data.path())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !data.path().join("https.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let token = common::run_ok(data.path(), &["remote", "token", "schemathesis"]);
    let c = common::Client::new();
    c.run_ok(&["remote", "add", "d", token.trim()]);
    let (crt, key) = (
        c.conf_dir().join("client.crt"),
        c.conf_dir().join("client.key"),
    );
    let doc = data.path().join("openapi.json");
    let got = Command::new("curl")
        .args(["-sk", "--fail", "--cert"])
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .arg("-o")
        .arg(&doc)
        .arg(format!("https://{address}/1.0/openapi.json"))
        .status()
        .unwrap();
    assert!(got.success(), "the daemon did not serve its document");
    let out = Command::new(SCHEMATHESIS)
        .arg("run")
        .arg(&doc)
        .args([
            "--url",
            &format!("https://{address}"),
            "--tls-verify",
            "false",
        ])
        .arg("--request-cert")
        .arg(&crt)
        .arg("--request-cert-key")
        .arg(&key)
        .args([
            "--max-examples",
            "30",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs (scripts/setup.sh installs it)");
    let _ = daemon.kill();
    let _ = daemon.wait();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    // Nothing was made.
    let listed = common::run_ok(data.path(), &["list", "--json"]);
    assert_eq!(listed.trim(), "[]");
}
