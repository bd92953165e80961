//! Shared by the fuzz targets: a fixed key, so that seeds made by `make-seeds` open with it.

use bakare_crypto::MasterKey;

/// The fixed master key of fuzzing (never used for real data).
pub fn key() -> MasterKey {
    match MasterKey::from_secret_bytes(&[7u8; 104]) {
        Ok(k) => k,
        Err(e) => unreachable!("a 104-byte layout always decodes: {e}"),
    }
}
