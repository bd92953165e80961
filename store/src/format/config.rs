//! The repository's `config` and `config.mirror`: plaintext public parameters.
//!
//! Layout: header (kind 1) | postcard(`Config`) | BLAKE3 of all preceding bytes (32).

use bakare_crypto::{DataPublicKey, checksum};

use crate::format::object::{ObjectKind, check_header, header};
use crate::{Result, StoreError};

/// Content-defined chunking parameters, fixed at init for the life of the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self { min: 512 * 1024, avg: 1024 * 1024, max: 8 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    /// The ranges fastcdc accepts (it only debug-asserts them).
    pub fn check(&self) -> Result<(), String> {
        let ok = (64..=1 << 20).contains(&self.min)
            && (256..=4 << 20).contains(&self.avg)
            && (1024..=16 << 20).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max
            && [self.min, self.avg, self.max].iter().all(|v| v % 2 == 0);
        if ok { Ok(()) } else { Err(format!("chunker parameters out of range: {self:?}")) }
    }
}

/// Public, unencrypted repository parameters.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Random id of the repository, shown as 32 hex digits.
    pub id: [u8; 16],
    pub chunker: ChunkerParams,
    /// The X25519 public key data is sealed to.
    pub data_public: [u8; 32],
    /// Target size of packs in bytes.
    pub pack_size: u32,
    /// When the repository was created, ns since the Unix epoch.
    pub created_ns: i64,
}

impl Config {
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn data_public(&self) -> DataPublicKey {
        DataPublicKey(self.data_public)
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = header(ObjectKind::Config).to_vec();
        postcard::to_io(self, &mut out).map_err(|e| StoreError::corrupt("config", e.to_string()))?;
        let sum = checksum(&out);
        out.extend_from_slice(&sum.0);
        Ok(out)
    }

    pub fn decode(name: &str, bytes: &[u8]) -> Result<Self> {
        let body_len = bytes.len().checked_sub(32).ok_or_else(|| StoreError::corrupt(name, "truncated"))?;
        let (body, sum) = bytes.split_at(body_len);
        // The version check comes first so that a newer format is reported as such.
        let rest = check_header(name, ObjectKind::Config, body)?;
        if checksum(body).0[..] != *sum {
            return Err(StoreError::corrupt(name, "checksum mismatch"));
        }
        let config: Self = crate::format::object::decode_exact(name, rest)?;
        config.chunker.check().map_err(|e| StoreError::corrupt(name, e))?;
        if config.pack_size < 1024 {
            return Err(StoreError::corrupt(name, "pack size too small"));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            id: [7; 16],
            chunker: ChunkerParams::default(),
            data_public: [1; 32],
            pack_size: 16 << 20,
            created_ns: 1,
        }
    }

    #[test]
    fn round_trip_and_every_flip_detected() {
        let bytes = sample().encode().unwrap();
        assert_eq!(Config::decode("config", &bytes).unwrap(), sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Config::decode("config", &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn trailing_bytes_are_refused_even_with_a_valid_checksum() {
        // Found by the `config` fuzz target: a body with bytes after the config and a
        // matching checksum decoded, and re-encoded differently.
        let found = include_bytes!("../../tests/data/config-trailing-bytes.bin");
        assert!(matches!(Config::decode("config", found), Err(StoreError::Corrupt { .. })));
        let mut bytes = sample().encode().unwrap();
        bytes.truncate(bytes.len() - 32);
        bytes.extend_from_slice(b"extra");
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum.0);
        assert!(Config::decode("config", &bytes).is_err());
    }

    #[test]
    fn newer_version_is_reported() {
        let mut bytes = sample().encode().unwrap();
        let newer = crate::FORMAT_VERSION + 1;
        bytes[7] = newer;
        assert!(
            matches!(Config::decode("config", &bytes), Err(StoreError::NewerFormat { found, .. }) if found == newer)
        );
    }

    #[test]
    fn a_format_1_config_still_reads() {
        let mut bytes = sample().encode().unwrap();
        assert_eq!(bytes[7], crate::FORMAT_VERSION);
        bytes.truncate(bytes.len() - 32);
        bytes[7] = 1;
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum.0);
        assert_eq!(Config::decode("config", &bytes).unwrap(), sample());
        bytes[7] = 0;
        assert!(matches!(Config::decode("config", &bytes), Err(StoreError::Corrupt { .. })));
    }
}
