//! Fuzz the two archives another host sends (`berth image copy`, `berth copy` and `berth move`)
//! as the receiving daemon reads them: any bytes, received into a fresh folder. No panic; a
//! refused archive leaves no folder behind, and one that is taken holds only the members its
//! form allows (a VM's: its metadata, its disk and maybe its key, the key at mode 0600).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("in");
    match berth_host::images::archive::receive(&mut &data[..], &dir, 1 << 20) {
        Ok(_) => assert!(dir.is_dir()),
        Err(e) => {
            assert!(e.field.is_some(), "{e:?}");
            assert!(!dir.exists());
        }
    }
    let dir = d.path().join("vm");
    match berth_host::vms::transfer::receive(&mut &data[..], &dir, 1 << 20, &|_| Ok(())) {
        Ok(a) => {
            assert!(a.check().is_ok());
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            let key = dir.join("id_ed25519");
            if key.exists() {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
                assert_eq!(names, ["disk.qcow2", "id_ed25519", "instance.json"]);
            } else {
                assert_eq!(names, ["disk.qcow2", "instance.json"]);
            }
        }
        Err(_) => assert!(!dir.exists()),
    }
});
