#![no_main]
//! Pack trailers and blob tables, sealed and as plaintext; parity objects, and rebuilding a
//! pack from one (which must never return bytes that do not hash to the pack's id).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = bakare_fuzz::key();
    let _ = bakare_store::parse_blob_table("pack", data, &key.write.index_key);
    if let Ok(p) = bakare_store::parity::Parity::decode("parity/x", data) {
        let id = bakare_store::PackId(bakare_store::checksum(b"some pack"));
        if p.pack_len <= 1 << 20 {
            assert!(p.recover(&id, b"some other bytes").is_none());
        }
    }
    if let Ok(entries) = bakare_store::decode_blob_table("table", data, 1 << 20) {
        for e in entries {
            assert!(e.offset >= 40 && (e.offset as usize + e.length as usize) <= 1 << 20);
        }
    }
});
