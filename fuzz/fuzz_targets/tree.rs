#![no_main]
//! Tree blobs (their plaintext).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = bakare_store::Tree::decode("tree", data) {
        for e in &tree.entries {
            assert!(!e.name.is_empty() && !e.name.contains(&b'/') && e.name != b".." && e.name != b".");
        }
    }
});
