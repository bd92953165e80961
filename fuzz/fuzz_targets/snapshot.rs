#![no_main]
//! Snapshots: the whole object, its index-key part, and its details' plaintext.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = bakare_fuzz::key();
    let _ = bakare_store::Snapshot::decode("snapshot", data, &key);
    let _ = bakare_store::Snapshot::decode_refs("snapshot", data, &key.write.index_key);
    let _ = bakare_store::Snapshot::decode_details("snapshot", 1, data);
    let _ = bakare_store::Snapshot::decode_details("snapshot", 2, data);
});
