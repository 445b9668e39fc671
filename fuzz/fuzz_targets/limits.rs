//! Fuzz the container limit parser (`--memory`, `berth set NAME KEY=VALUE`, ...) and mountinfo
//! parsing: no panic, and whatever parses turns into cgroup file values for v1 and v2.
#![no_main]

use berth_cgroups::{files, Hierarchy, Limits, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut l = Limits::default();
    for a in text.split('\n') {
        let _ = l.set(a);
    }
    let io: Vec<_> = l.io_max.iter().map(|s| s.caps.clone()).collect();
    for v in [Version::V1, Version::V2] {
        let _ = files::writes(v, &l, &io);
        let _ = files::resets(v, &l, &Limits::default(), &io, &[], "0");
    }
    let _ = Hierarchy::from_mountinfo(text);
});
