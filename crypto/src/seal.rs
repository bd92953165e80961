//! Authenticated sealing: XChaCha20-Poly1305 with a fresh random 24-byte nonce per message,
//! and the sealed-box key agreement used for packs and snapshots.
//!
//! Sealed layout: `nonce (24) | ciphertext | tag (16)`.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{CryptoError, random_bytes};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A 256-bit symmetric key. No `Debug`; zeroized on drop.
#[derive(Clone)]
pub struct SymmetricKey(Zeroizing<[u8; 32]>);

impl SymmetricKey {
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub(crate) fn random() -> Result<Self, CryptoError> {
        Ok(Self::from_bytes(random_bytes()?))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.0).into())
    }

    /// Seals `plaintext`, appending `nonce | ciphertext | tag` to `out`.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        out.reserve(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let body = out.get_mut(start..).ok_or(CryptoError::Authentication)?;
        let tag = self
            .cipher()
            .encrypt_inout_detached(&XNonce::from(nonce), aad, body.into())
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(tag.as_slice());
        Ok(())
    }

    /// Seals `plaintext` into a new buffer.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Opens `nonce | ciphertext | tag`; fails on any altered byte or wrong key or `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Truncated { len: sealed.len() });
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Authentication)?;
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| CryptoError::Authentication)?;
        let mut buf = ct.to_vec();
        self.cipher()
            .decrypt_inout_detached(&XNonce::from(nonce), aad, (&mut buf[..]).into(), &Tag::from(tag))
            .map_err(|_| CryptoError::Authentication)?;
        Ok(buf)
    }
}

/// The public half of an ephemeral X25519 key, stored beside what it sealed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EphemeralPublic(pub [u8; 32]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = SymmetricKey::random().unwrap();
        let sealed = k.seal(b"aad", b"hello").unwrap();
        assert_eq!(k.open(b"aad", &sealed).unwrap(), b"hello");
        assert!(k.open(b"other", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(k.open(b"aad", &bad).is_err(), "flip at {i} not detected");
        }
        assert!(matches!(k.open(b"aad", &sealed[..10]), Err(CryptoError::Truncated { .. })));
        let other = SymmetricKey::random().unwrap();
        assert!(other.open(b"aad", &sealed).is_err());
    }
}
