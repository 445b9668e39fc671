//! Fuzz the authorized_keys parser and the ssh-copy-id merge.
#![no_main]

use berth_identity::authorized_keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(keys) = authorized_keys::parse(text) {
        let _ = authorized_keys::merge(text, &keys);
        for k in keys {
            let _ = authorized_keys::parse_line(&k.public_line(), 1);
        }
    }
});
