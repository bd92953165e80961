//! Repository keys: the master key and its put-only half.
//!
//! | part          | master | write (put-only) | used for                                     |
//! |---------------|--------|------------------|----------------------------------------------|
//! | data secret   | yes    | no               | opening blobs and snapshot details           |
//! | data public   | yes    | yes              | sealing blobs and snapshot details           |
//! | id key        | yes    | yes              | keyed BLAKE3 content ids (dedup)             |
//! | index key     | yes    | yes              | index segments, pack blob tables, references |
//! | chunker seed  | yes    | yes              | the gear table of content-defined chunking   |

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::digest::Digest;
use crate::error::{CryptoError, random_bytes};
use crate::seal::{EphemeralPublic, SymmetricKey};

const SEALED_BOX_CONTEXT: &str = "bakare 2026-11 sealed-box v1";

/// The public X25519 key to which data is sealed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataPublicKey(pub [u8; 32]);

/// The secret X25519 key that opens data. No `Debug`; zeroized on drop by x25519-dalek.
#[derive(Clone)]
pub struct DataSecretKey(StaticSecret);

/// Key for keyed BLAKE3 content ids.
#[derive(Clone)]
pub struct IdKey(Zeroizing<[u8; 32]>);

/// Seed of the chunker's gear table, so chunk boundaries do not leak content.
#[derive(Clone, Copy)]
pub struct ChunkerSeed(pub u64);

impl DataPublicKey {
    /// A fresh ephemeral key agreement: the public half to store, and the symmetric key that
    /// only this writer and the holder of the data secret can derive. `purpose` separates uses.
    pub fn ephemeral(&self, purpose: &[u8]) -> Result<(EphemeralPublic, SymmetricKey), CryptoError> {
        let eph = StaticSecret::from(random_bytes::<32>()?);
        let eph_pub = PublicKey::from(&eph);
        let shared = eph.diffie_hellman(&PublicKey::from(self.0));
        if !shared.was_contributory() {
            return Err(CryptoError::WeakKeyExchange);
        }
        let key = derive(shared.as_bytes(), eph_pub.as_bytes(), &self.0, purpose);
        Ok((EphemeralPublic(*eph_pub.as_bytes()), key))
    }

    /// A short fingerprint users can compare: 16 hex digits of BLAKE3 of the public key.
    pub fn fingerprint(&self) -> String {
        let mut hex = crate::digest::checksum(&self.0).to_hex();
        hex.truncate(16);
        hex
    }
}

impl DataSecretKey {
    /// Derives again the key a writer got from [`DataPublicKey::ephemeral`].
    pub fn recover(&self, eph: &EphemeralPublic, purpose: &[u8]) -> Result<SymmetricKey, CryptoError> {
        let shared = self.0.diffie_hellman(&PublicKey::from(eph.0));
        if !shared.was_contributory() {
            return Err(CryptoError::WeakKeyExchange);
        }
        let public = PublicKey::from(&self.0);
        Ok(derive(shared.as_bytes(), &eph.0, public.as_bytes(), purpose))
    }

    pub fn public(&self) -> DataPublicKey {
        DataPublicKey(*PublicKey::from(&self.0).as_bytes())
    }

    /// A key for `context` that only a holder of the master key derives: for local state
    /// that holds what only the master key may read (the name index).
    pub fn derive_id_key(&self, context: &str) -> IdKey {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(self.0.as_bytes());
        IdKey(Zeroizing::new(*h.finalize().as_bytes()))
    }
}

fn derive(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32], purpose: &[u8]) -> SymmetricKey {
    let mut h = blake3::Hasher::new_derive_key(SEALED_BOX_CONTEXT);
    h.update(shared).update(eph).update(recipient).update(purpose);
    SymmetricKey::from_bytes(*h.finalize().as_bytes())
}

impl IdKey {
    /// A symmetric key for `context`, derived from the id key: readable by every holder of a
    /// write key, not by a holder of the index key alone.
    pub fn derive(&self, context: &str) -> SymmetricKey {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(&self.0[..]);
        SymmetricKey::from_bytes(*h.finalize().as_bytes())
    }

    /// The keyed BLAKE3 id of `data`.
    pub fn id(&self, data: &[u8]) -> Digest {
        Digest(*blake3::keyed_hash(&self.0, data).as_bytes())
    }
}

/// Everything a machine needs to add backups, but nothing that opens them.
#[derive(Clone)]
pub struct WriteKey {
    pub data_public: DataPublicKey,
    pub id_key: IdKey,
    pub index_key: SymmetricKey,
    pub chunker_seed: ChunkerSeed,
}

/// The whole secret of a repository.
#[derive(Clone)]
pub struct MasterKey {
    pub data_secret: DataSecretKey,
    pub write: WriteKey,
}

/// Fixed layout of the secret parts: data secret, id key, index key (32 each), seed (u64 LE).
pub(crate) const SECRETS_LEN: usize = 32 * 3 + 8;
/// Fixed layout of a write key: data public, id key, index key (32 each), seed (u64 LE).
pub(crate) const WRITE_KEY_LEN: usize = 32 * 3 + 8;

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Result<Self, CryptoError> {
        let data_secret = DataSecretKey(StaticSecret::from(random_bytes::<32>()?));
        let write = WriteKey {
            data_public: data_secret.public(),
            id_key: IdKey(Zeroizing::new(random_bytes()?)),
            index_key: SymmetricKey::random()?,
            chunker_seed: ChunkerSeed(u64::from_le_bytes(random_bytes()?)),
        };
        Ok(Self { data_secret, write })
    }

    pub(crate) fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(SECRETS_LEN));
        out.extend_from_slice(self.data_secret.0.as_bytes());
        out.extend_from_slice(&self.write.id_key.0[..]);
        out.extend_from_slice(self.write.index_key.expose());
        out.extend_from_slice(&self.write.chunker_seed.0.to_le_bytes());
        out
    }

    /// A master key from its 104-byte secret layout (data secret, id key, index key, seed).
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let [a, b, c, seed] = split(bytes, SECRETS_LEN)?;
        let data_secret = DataSecretKey(StaticSecret::from(a));
        let write = WriteKey {
            data_public: data_secret.public(),
            id_key: IdKey(Zeroizing::new(b)),
            index_key: SymmetricKey::from_bytes(c),
            chunker_seed: ChunkerSeed(u64::from_le_bytes(seed_bytes(seed))),
        };
        Ok(Self { data_secret, write })
    }
}

impl WriteKey {
    pub(crate) fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(WRITE_KEY_LEN));
        out.extend_from_slice(&self.data_public.0);
        out.extend_from_slice(&self.id_key.0[..]);
        out.extend_from_slice(self.index_key.expose());
        out.extend_from_slice(&self.chunker_seed.0.to_le_bytes());
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let [a, b, c, seed] = split(bytes, WRITE_KEY_LEN)?;
        Ok(Self {
            data_public: DataPublicKey(a),
            id_key: IdKey(Zeroizing::new(b)),
            index_key: SymmetricKey::from_bytes(c),
            chunker_seed: ChunkerSeed(u64::from_le_bytes(seed_bytes(seed))),
        })
    }
}

/// Splits a fixed key layout into three 32-byte keys and the 32-byte slot holding the seed.
fn split(bytes: &[u8], len: usize) -> Result<[[u8; 32]; 4], CryptoError> {
    if bytes.len() != len {
        return Err(CryptoError::MalformedKeyFile("wrong key length"));
    }
    let mut out = [[0u8; 32]; 4];
    for (slot, part) in out.iter_mut().zip(bytes.chunks(32)) {
        if let Some(dst) = slot.get_mut(..part.len()) {
            dst.copy_from_slice(part);
        }
    }
    Ok(out)
}

fn seed_bytes(slot: [u8; 32]) -> [u8; 8] {
    let mut s = [0u8; 8];
    s.copy_from_slice(&slot[..8]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_box_only_opens_with_the_secret() {
        let master = MasterKey::generate().unwrap();
        let (eph, key) = master.write.data_public.ephemeral(b"pack").unwrap();
        let sealed = key.seal(b"", b"secret").unwrap();
        let again = master.data_secret.recover(&eph, b"pack").unwrap();
        assert_eq!(again.open(b"", &sealed).unwrap(), b"secret");
        let other_purpose = master.data_secret.recover(&eph, b"snapshot").unwrap();
        assert!(other_purpose.open(b"", &sealed).is_err());
        let stranger = MasterKey::generate().unwrap();
        let wrong = stranger.data_secret.recover(&eph, b"pack").unwrap();
        assert!(wrong.open(b"", &sealed).is_err());
    }

    #[test]
    fn key_bytes_round_trip() {
        let m = MasterKey::generate().unwrap();
        let again = MasterKey::from_secret_bytes(&m.to_secret_bytes()).unwrap();
        assert_eq!(again.write.data_public, m.write.data_public);
        assert_eq!(again.write.id_key.id(b"x"), m.write.id_key.id(b"x"));
        assert_eq!(again.write.chunker_seed.0, m.write.chunker_seed.0);
        let w = WriteKey::from_bytes(&m.write.to_bytes()).unwrap();
        assert_eq!(w.data_public, m.write.data_public);
        assert!(WriteKey::from_bytes(&[0u8; 10]).is_err());
    }
}
