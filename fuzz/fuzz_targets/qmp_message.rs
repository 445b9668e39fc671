//! Fuzz the parser of QMP messages (what a QEMU, or something pretending to be one, sends).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = berth_qmp::parse_message(line);
    }
});
