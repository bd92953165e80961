//! Key files: the master key sealed under a passphrase, and the unsealed put-only key.
//!
//! Master key file (kind 2), 180 bytes:
//! `"bakare" | 2 | version 1 | m_kib u32 | t u32 | p u32 | salt (16) | nonce (24) | secrets (104) | tag (16)`;
//! the key-encryption key is argon2id(passphrase, salt, m, t, p), the AAD is bytes 0..36.
//!
//! Write key file (kind 8), 144 bytes: `"bakare" | 8 | version 1 | write key (104) | BLAKE3 (32)`
//! where the checksum covers bytes 0..112.

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::digest::checksum;
use crate::error::{CryptoError, random_bytes};
use crate::keys::{MasterKey, SECRETS_LEN, WRITE_KEY_LEN, WriteKey};
use crate::seal::{SEAL_OVERHEAD, SymmetricKey};

const MAGIC: &[u8; 6] = b"bakare";
const KIND_MASTER: u8 = 2;
const KIND_WRITE: u8 = 8;
const VERSION: u8 = 1;
const MASTER_HEADER_LEN: usize = 36;
const MASTER_LEN: usize = MASTER_HEADER_LEN + SECRETS_LEN + SEAL_OVERHEAD;
const WRITE_LEN: usize = 8 + WRITE_KEY_LEN + 32;

/// argon2id cost parameters, stored in the key file so that opening uses what sealing used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about 0.26 s here.
    fn default() -> Self {
        Self { m_kib: 64 * 1024, t: 3, p: 1 }
    }
}

impl KdfParams {
    /// Rejects parameters a damaged or hostile file could use to exhaust memory or time.
    fn check(&self) -> Result<Params, CryptoError> {
        if self.m_kib > 1024 * 1024 || self.t > 64 || self.p > 16 {
            return Err(CryptoError::KdfParams(format!("{self:?} exceed the limits (1 GiB, 64 passes, 16 lanes)")));
        }
        Params::new(self.m_kib, self.t, self.p, Some(32)).map_err(|e| CryptoError::KdfParams(e.to_string()))
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8; 16]) -> Result<SymmetricKey, CryptoError> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.check()?);
        let mut kek = Zeroizing::new([0u8; 32]);
        argon.hash_password_into(passphrase, salt, &mut kek[..]).map_err(|e| CryptoError::KdfParams(e.to_string()))?;
        Ok(SymmetricKey::from_bytes(*kek))
    }
}

/// Seals the master key under a passphrase.
pub fn seal_key_file(key: &MasterKey, passphrase: &[u8], params: KdfParams) -> Result<Vec<u8>, CryptoError> {
    let salt: [u8; 16] = random_bytes()?;
    let mut out = Vec::with_capacity(MASTER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[KIND_MASTER, VERSION]);
    for v in [params.m_kib, params.t, params.p] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&salt);
    let kek = params.derive(passphrase, &salt)?;
    let aad = out.clone();
    kek.seal_into(&aad, &key.to_secret_bytes(), &mut out)?;
    Ok(out)
}

/// Opens a master key file. A wrong passphrase gives [`CryptoError::WrongPassphrase`].
pub fn open_key_file(bytes: &[u8], passphrase: &[u8]) -> Result<MasterKey, CryptoError> {
    let (params, salt) = parse_key_file(bytes)?;
    let (header, sealed) = bytes.split_at(MASTER_HEADER_LEN);
    let kek = params.derive(passphrase, &salt)?;
    let secrets = Zeroizing::new(kek.open(header, sealed).map_err(|_| CryptoError::WrongPassphrase)?);
    MasterKey::from_secret_bytes(&secrets)
}

/// Parses a master key file's header without deriving anything: its (checked) KDF
/// parameters and salt.
pub fn parse_key_file(bytes: &[u8]) -> Result<(KdfParams, [u8; 16]), CryptoError> {
    check_header(bytes, KIND_MASTER, MASTER_LEN)?;
    let params = KdfParams { m_kib: le_u32(bytes, 8)?, t: le_u32(bytes, 12)?, p: le_u32(bytes, 16)? };
    params.check()?;
    let salt: [u8; 16] =
        bytes.get(20..36).and_then(|s| s.try_into().ok()).ok_or(CryptoError::MalformedKeyFile("salt"))?;
    Ok((params, salt))
}

/// The put-only key file: unsealed (it opens nothing), checksummed.
pub fn write_key_file(key: &WriteKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(WRITE_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[KIND_WRITE, VERSION]);
    out.extend_from_slice(&key.to_bytes());
    let sum = checksum(&out);
    out.extend_from_slice(&sum.0);
    out
}

/// Reads a put-only key file, checking its checksum.
pub fn open_write_key_file(bytes: &[u8]) -> Result<WriteKey, CryptoError> {
    check_header(bytes, KIND_WRITE, WRITE_LEN)?;
    let (body, sum) = bytes.split_at(WRITE_LEN - 32);
    if checksum(body).0[..] != *sum {
        return Err(CryptoError::MalformedKeyFile("checksum mismatch"));
    }
    WriteKey::from_bytes(body.get(8..).ok_or(CryptoError::MalformedKeyFile("short"))?)
}

fn check_header(bytes: &[u8], kind: u8, len: usize) -> Result<(), CryptoError> {
    if bytes.get(..6) != Some(MAGIC.as_slice()) {
        return Err(CryptoError::MalformedKeyFile("not a bakare key file"));
    }
    match bytes.get(6) {
        Some(&k) if k == kind => {}
        Some(&KIND_MASTER) => {
            return Err(CryptoError::MalformedKeyFile("this is a master key file, not a put-only key"));
        }
        Some(&KIND_WRITE) => {
            return Err(CryptoError::MalformedKeyFile("this is a put-only key, not a master key file"));
        }
        _ => return Err(CryptoError::MalformedKeyFile("unknown key file kind")),
    }
    match bytes.get(7) {
        Some(&VERSION) => {}
        Some(&found) if found > VERSION => {
            return Err(CryptoError::UnsupportedKeyFileVersion { found, supported: VERSION });
        }
        _ => return Err(CryptoError::MalformedKeyFile("unknown version")),
    }
    if bytes.len() != len {
        return Err(CryptoError::MalformedKeyFile("wrong length"));
    }
    Ok(())
}

fn le_u32(bytes: &[u8], at: usize) -> Result<u32, CryptoError> {
    bytes
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(CryptoError::MalformedKeyFile("short header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

    #[test]
    fn passphrase_round_trip() {
        let m = MasterKey::generate().unwrap();
        let file = seal_key_file(&m, b"pw", FAST).unwrap();
        assert_eq!(file.len(), MASTER_LEN);
        let again = open_key_file(&file, b"pw").unwrap();
        assert_eq!(again.write.data_public, m.write.data_public);
        assert!(matches!(open_key_file(&file, b"nope"), Err(CryptoError::WrongPassphrase)));
    }

    #[test]
    fn a_flipped_bit_in_any_byte_of_a_key_file_is_an_error() {
        let m = MasterKey::generate().unwrap();
        let file = seal_key_file(&m, b"pw", FAST).unwrap();
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 1 << (i % 8);
            assert!(open_key_file(&bad, b"pw").is_err(), "byte {i}");
        }
        let w = write_key_file(&m.write);
        for i in 0..w.len() {
            let mut bad = w.clone();
            bad[i] ^= 0x40;
            assert!(open_write_key_file(&bad).is_err(), "byte {i}");
        }
        assert_eq!(open_write_key_file(&w).unwrap().data_public, m.write.data_public);
    }

    #[test]
    fn hostile_kdf_params_are_refused_before_deriving() {
        let p = KdfParams { m_kib: u32::MAX, t: 1, p: 1 };
        assert!(matches!(p.check(), Err(CryptoError::KdfParams(_))));
    }

    #[test]
    fn newer_version_is_named() {
        let m = MasterKey::generate().unwrap();
        let mut file = seal_key_file(&m, b"pw", FAST).unwrap();
        file[7] = 9;
        assert!(matches!(open_key_file(&file, b"pw"), Err(CryptoError::UnsupportedKeyFileVersion { found: 9, .. })));
    }
}
