#![no_main]
//! Master key files (`keys/<id>`) and put-only key files.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bakare_crypto::open_write_key_file(data);
    if let Ok((params, _)) = bakare_crypto::parse_key_file(data) {
        // Derive only with cheap parameters, to keep executions fast.
        if params.m_kib <= 256 && params.t <= 2 && params.p <= 2 {
            let _ = bakare_crypto::open_key_file(data, b"fuzz");
        }
    }
});
