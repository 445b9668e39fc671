//! Fuzz the daemon's request bodies: any bytes, read as each request type by the parser every
//! route uses (`berth_daemon::body::parse`), then checked as the executor checks them. No panic,
//! and every refusal names a field.
#![no_main]

use berth_api::{
    InstanceCreate, InstanceDelete, InstanceExec, InstanceRun, InstanceSet, InstanceStateChange,
    JoinToken, StreamControl, TrustAdd,
};
use berth_daemon::body::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse::<InstanceCreate>(data, None) {
        Ok(r) => {
            if let Err(e) = r.check() {
                assert!(e.field.is_some(), "{e:?}");
            }
        }
        Err(e) => assert!(e.field.is_some(), "{e:?}"),
    }
    if let Ok(r) = parse::<InstanceRun>(data, None) {
        let _ = r.check();
    }
    let _ = parse::<InstanceStateChange>(data, None);
    let _ = parse::<InstanceSet>(data, None);
    let _ = parse::<InstanceExec>(data, None);
    // The exec websocket's control messages (its first one is a start).
    let _ = parse::<StreamControl>(data, None);
    let _ = parse::<TrustAdd>(data, None);
    // A join token as a user pastes it.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = JoinToken::decode(text) {
            assert_eq!(e.field.as_deref(), Some("token"), "{e:?}");
        }
    }
    let _ = parse::<InstanceDelete>(data, Some(InstanceDelete::default()));
});
