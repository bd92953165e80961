#![no_main]
//! Session records (`sessions/<id>`), checkpoints (`checkpoints/<id>`) and GC mark records
//! (`gc/<id>`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = bakare_fuzz::key();
    let _ = bakare_store::Session::decode("sessions/03030303030303030303030303030303", data, &key.write.index_key);
    let _ = bakare_store::Checkpoint::decode_refs("checkpoint", data, &key.write.index_key);
    let _ = bakare_store::Checkpoint::decode("checkpoint", data, &key.write);
    let _ = bakare_store::gc::GcRecord::decode("gc/x", data, &key.write.index_key);
});
