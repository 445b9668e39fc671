//! Fuzz a whole qcow2 file through berth's metadata layer: open (header, L1, refcount
//! table), snapshot table, the overlap check, L2 lookups, and the full consistency check.
#![no_main]

use berth_disk::qcow2::check::{check, Repair};
use berth_disk::qcow2::Qcow2File;
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(data).unwrap();
    let Ok(q) = Qcow2File::from_file(f) else {
        return;
    };
    let _ = q.snapshots();
    let _ = berth_disk::qcow2::overlap::verify(&q);
    for gc in 0..16 {
        let _ = q.l2_entry(gc);
    }
    let _ = check(q, "fuzz", Repair::None);
});
