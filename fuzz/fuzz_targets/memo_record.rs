#![no_main]
//! Values of the local memo (`state.redb`), files' and folders' records: first byte = key
//! length, then key, then value.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let Some((key, value)) = rest.split_at_checked(usize::from(n).min(rest.len())) else { return };
    if let Some(r) = bakare_planner::MemoRecord::decode(key, value) {
        let again = r.encode();
        assert_eq!(
            bakare_planner::MemoRecord::decode(key, &again).as_ref(),
            Some(&r),
            "an encoded record decodes to itself"
        );
        // A record of the version written today encodes back to the same bytes; an older
        // one (version 3, without xattrs) is written anew in today's version.
        if again.first() == value.first() {
            assert_eq!(again, value, "what decodes must encode back to the same bytes");
        }
    }
    if let Some(r) = bakare_planner::DirRecord::decode(key, value) {
        let again = r.encode();
        assert_eq!(bakare_planner::DirRecord::decode(key, &again).as_ref(), Some(&r), "a folder's record too");
        if again.first() == value.first() {
            assert_eq!(again, value, "a folder's record encodes back to the same bytes");
        }
    }
});
