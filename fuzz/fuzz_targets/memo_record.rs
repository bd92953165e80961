#![no_main]
//! Values of the local memo (`state.redb`): first byte = key length, then key, then value.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let Some((key, value)) = rest.split_at_checked(usize::from(n).min(rest.len())) else { return };
    if let Some(r) = bakare_planner::MemoRecord::decode(key, value) {
        assert_eq!(r.encode(), value, "what decodes must encode back to the same bytes");
    }
});
