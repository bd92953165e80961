#![no_main]
//! Messages on `bakare watch`'s socket, as either side reads them: a length prefix and a
//! postcard body. Any bytes give a message or an error, never a panic or a huge allocation.
use bakare_planner::watch::{Request, Status, SyncReply, receive, send};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = receive::<Request>(&mut &data[..]) {
        let mut again = Vec::new();
        send(&mut again, &r).expect("a request that was read is written");
        assert!(receive::<Request>(&mut again.as_slice()).is_ok(), "a written request reads");
    }
    let _ = receive::<SyncReply>(&mut &data[..]);
    let _ = receive::<Status>(&mut &data[..]);
});
