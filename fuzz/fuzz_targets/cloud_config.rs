//! Fuzz user-data validation: the YAML loader, the schema check, MIME and gzip handling, and
//! the merge with berth's own configuration.
#![no_main]

use berth_cloudinit::{config, userdata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = userdata::validate_bytes(data, None);
    if let Ok(text) = std::str::from_utf8(data) {
        let mut cc = String::from("#cloud-config\n");
        cc.push_str(text);
        let _ = userdata::validate_text(&cc, None);
        let _ = config::merge(&config::GuestConfig::default(), Some(&cc)).map(|m| config::render(&m));
    }
});
