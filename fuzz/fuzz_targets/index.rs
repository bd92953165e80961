#![no_main]
//! Index segments, sealed and as plaintext.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = bakare_fuzz::key();
    let _ = bakare_store::IndexSegment::decode("index", data, &key.write.index_key);
    let _ = bakare_store::IndexSegment::decode_plaintext("index", data);
});
