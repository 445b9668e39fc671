//! Completions and man pages come from the clap tree: every shell's script is produced and
//! bash can load its own; a page exists for every visible subcommand, nested ones included.

mod common;

use std::process::Command;

#[test]
fn completions_are_made_for_each_shell_and_bash_loads_its_own() {
    let d = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = common::run_ok(d.path(), &["completion", shell]);
        assert!(out.contains("launch") && out.contains("remote"), "{shell}");
    }
    let script = d.path().join("berth.bash");
    std::fs::write(&script, common::run_ok(d.path(), &["completion", "bash"])).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p berth", script.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_berth"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = common::run(d.path(), &["completion", "tcsh"]);
    assert!(!bad.status.success());
}

#[test]
fn man_pages_cover_every_visible_subcommand() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man");
    common::run_ok(d.path(), &["man", dir.to_str().unwrap()]);
    for page in [
        "berth",
        "berth-launch",
        "berth-remote-add",
        "berth-disk-snapshot-create",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{page}.1")))
            .unwrap_or_else(|e| panic!("{page}.1: {e}"));
        assert!(text.contains(".TH"), "{page}.1 is not a man page");
    }
    // Internal commands have none.
    assert!(!dir.join("berth-daemon-worker.1").exists());
    assert!(!dir.join("berth-help.1").exists());
}
