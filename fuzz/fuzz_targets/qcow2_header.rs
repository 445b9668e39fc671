//! Fuzz the qcow2 header and extension parser: any bytes, any claimed file length.
#![no_main]

use berth_disk::qcow2::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let claimed = u64::from_le_bytes(data[..8].try_into().unwrap());
    let body = &data[8..];
    let _ = Header::parse(body, claimed);
    if let Ok(h) = Header::parse(body, body.len() as u64) {
        // What parses must serialise without panicking.
        let _ = h.serialize();
    }
});
