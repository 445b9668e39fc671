//! Helpers of the container tests: `berth` on the e2e data dir, `berth run` of a shell script,
//! system containers that are deleted however the test ends, and the firewall's rules.

use super::{e2e_dir, e2e_image};
use berth_cgroups::{Cgroup, Hierarchy};
use std::process::Output;

pub fn berth(args: &[&str]) -> Output {
    super::run(&e2e_dir(), args)
}

/// `berth run --rm debian-12 [FLAGS] -- sh -c SCRIPT`: (exit code, stdout, stderr).
pub fn sh(flags: &[&str], script: &str) -> (i32, String, String) {
    e2e_image();
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["debian-12", "--", "/bin/sh", "-c", script]);
    let out = berth(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn names() -> Vec<String> {
    let out = super::run_ok(&e2e_dir(), &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

pub fn cgroup_of(name: &str) -> Cgroup {
    Cgroup::new(Hierarchy::detect().unwrap(), format!("berth/{name}"))
}

pub fn ok(args: &[&str]) -> String {
    super::run_ok(&e2e_dir(), args)
}

/// `berth launch debian-12 NAME --container FLAGS --timeout 120`, which must succeed.
pub fn launch_ct(name: &str, flags: &[&str]) -> String {
    let mut args = vec!["launch", "debian-12", name, "--container"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--timeout", "120"]);
    ok(&args)
}

pub fn exec(name: &str, script: &str) -> String {
    ok(&["exec", name, "--", "sh", "-c", script])
        .trim()
        .to_string()
}

pub fn info(name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["info", "--json", name])).unwrap()
}

/// Deletes the container when the test ends, however it ends.
pub struct Ct(pub String);

impl Drop for Ct {
    fn drop(&mut self) {
        let out = berth(&["delete", "--force", &self.0]);
        if !out.status.success() {
            eprintln!(
                "deleting {} failed: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// berth's firewall state apart from counters: the host's own rules must come back unchanged.
pub fn ruleset() -> String {
    let out = std::process::Command::new("nft")
        .args(["-s", "list", "ruleset"])
        .output()
        .expect("nft runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `berth run --rm --name NAME FLAGS debian-12 -- CMD` in the background, once CMD has printed
/// `up`.
pub fn run_until_up(name: &str, flags: &[&str], cmd: &[&str]) -> std::process::Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["run", "--rm", "--name", name])
        .args(flags)
        .args(["debian-12", "--"])
        .args(cmd)
        .env("BERTH_DIR", e2e_dir())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"up\n");
    // Kept open: the command may write more.
    child.stdout = Some(out);
    child
}

/// `nft list ruleset` in network namespace `ns`.
pub fn ruleset_in(ns: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
