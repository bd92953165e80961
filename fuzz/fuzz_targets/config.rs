#![no_main]
//! `config` / `config.mirror`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = bakare_store::Config::decode("config", data) {
        // What decodes must encode back to the same bytes.
        assert_eq!(c.encode().ok().as_deref(), Some(data));
    }
});
