//! Fuzz user-data validation: the YAML loader, the schema check, MIME and gzip handling, and
//! the merge with berth's own configuration, and the composition of a guest's user-data from
//! the user's of any kind (whose output must split again).
#![no_main]

use berth_cloudinit::{compose, config, userdata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = userdata::validate_bytes(data, None);
    if let Ok(u) = compose::UserData::split(data) {
        let out = compose::render(&u.merged(&config::GuestConfig::default()), &u.parts);
        let back = compose::UserData::split(out.as_bytes()).expect("berth's own user-data splits");
        let kept = |p: &[compose::Part]| -> Vec<(String, Vec<u8>)> {
            p.iter().map(|p| (p.content_type.clone(), p.body.clone())).collect()
        };
        assert_eq!(kept(&back.parts), kept(&u.parts), "every part passes through unchanged");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let mut cc = String::from("#cloud-config\n");
        cc.push_str(text);
        let _ = userdata::validate_text(&cc, None);
        let _ = config::merge(&config::GuestConfig::default(), Some(&cc)).map(|m| config::render(&m));
    }
});
