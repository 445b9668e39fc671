//! Fuzz the unpacking of a tree another host sends (a container's writable layer in `berth
//! copy` and `berth move`): any bytes as a tar, beneath a root inside a folder that also holds
//! a file of its own. No panic, and nothing outside the root is ever made or changed, whatever
//! the archive's names, links and symlinks say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(d.path().join("outside"), "o").unwrap();
    let limits = berth_tree::Limits {
        bytes: 1 << 20,
        entries: 1000,
    };
    let shift = berth_tree::IdShift {
        base: 1_000_000,
        len: 65536,
    };
    let mut u = berth_tree::Unpacker::new(&root, Path::new("upper"), Some(shift), false, limits)
        .unwrap();
    let mut a = tar::Archive::new(data);
    if let Ok(entries) = a.entries() {
        for e in entries {
            let Ok(mut e) = e else { break };
            if u.take(&mut e).is_err() {
                break;
            }
        }
    }
    let _ = u.finish();
    let mut names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["outside", "root"]);
    assert_eq!(std::fs::read_to_string(d.path().join("outside")).unwrap(), "o");
});
