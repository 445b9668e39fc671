//! berth's verdict on every cloud-config in tests/corpus matches `cloud-init schema
//! --config-file` (Debian's cloud-init, the reference), and the file name says which it is
//! (`valid-*` / `invalid-*`), so a drift in either shows up here.

use berth_cloudinit::schema::Severity;
use berth_cloudinit::userdata;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn cloud_init_says_valid(p: &Path) -> bool {
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(p)
        .output()
        .expect("cloud-init is installed (scripts/setup.sh)");
    out.status.success()
}

#[test]
fn berth_and_cloud_init_agree_on_the_corpus() {
    let files = corpus();
    assert!(files.len() >= 30, "the corpus has {} files", files.len());
    let results: Vec<(PathBuf, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(files.len().div_ceil(4))
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|p| (p.clone(), cloud_init_says_valid(p)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut disagreements = Vec::new();
    for (p, reference) in results {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let (_, problems) = userdata::validate_bytes(
            &std::fs::read(&p).unwrap(),
            Some(Path::new("/usr/share/zoneinfo")),
        );
        let ours = !problems.iter().any(|x| x.severity == Severity::Error);
        let named = name.starts_with("valid-");
        if ours != reference || named != reference {
            disagreements.push(format!(
                "{name}: cloud-init {reference}, berth {ours}: {problems:?}"
            ));
        }
        if !ours {
            // Every rejection says where.
            assert!(
                problems
                    .iter()
                    .any(|x| x.severity == Severity::Error && x.line >= 1 && x.column >= 1),
                "{name}"
            );
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn warnings_and_notes_match_the_issue() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let check = |name: &str| {
        userdata::validate_bytes(
            &std::fs::read(dir.join(name)).unwrap(),
            Some(Path::new("/usr/share/zoneinfo")),
        )
        .1
    };
    let p = check("valid-unknown-timezone.yaml");
    assert!(
        p.iter()
            .any(|x| x.severity == Severity::Warning && x.path == "timezone" && x.line == 2),
        "{p:?}"
    );
    let p = check("valid-unknown-key.yaml");
    assert!(
        p.iter().any(|x| x.severity == Severity::Warning
            && x.path == "no_such_module"
            && (x.line, x.column) == (3, 1)),
        "{p:?}"
    );
    let p = check("valid-mission.yaml");
    let notes: Vec<_> = p.iter().filter(|x| x.severity == Severity::Note).collect();
    assert_eq!(notes.len(), 2, "{p:?}");
    assert!(
        notes[0].message.contains("package_update") && notes[1].message.contains("package_upgrade")
    );
    assert!(
        !p.iter().any(|x| x.severity == Severity::Warning),
        "Africa/Dar_es_Salaam is a real zone: {p:?}"
    );
    let p = check("invalid-lock-passwd-string.yaml");
    assert!(
        p.iter()
            .any(|x| x.severity == Severity::Error && x.line == 3 && x.path == "users.0"),
        "{p:?}"
    );
}
