#![no_main]
//! `config` / `config.mirror`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = bakare_store::Config::decode("config", data) {
        let again = c.encode().ok();
        // An encoded config decodes to itself.
        let back = again.as_deref().and_then(|b| bakare_store::Config::decode("config", b).ok());
        assert_eq!(back.as_ref(), Some(&c), "an encoded config decodes to itself");
        // One of the version written today encodes back to the same bytes; an older one
        // (format 1) is written anew with today's version byte.
        if data.get(7) == Some(&bakare_store::FORMAT_VERSION) {
            assert_eq!(again.as_deref(), Some(data), "what decodes must encode back to the same bytes");
        }
    }
});
