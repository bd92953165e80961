//! Authenticated sealing: XChaCha20-Poly1305 with a fresh random 24-byte nonce per message,
//! and the sealed-box key agreement used for packs and snapshots.
//!
//! Sealed layout: `nonce (24) | ciphertext | tag (16)`.

use std::cell::RefCell;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{CryptoError, random_bytes};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Nonces drawn from one seed before a new one is taken from the system.
const NONCES_PER_SEED: u64 = 1 << 20;

std::thread_local! {
    /// Per thread: a secret seed from the system's generator and a counter.
    static NONCES: RefCell<Option<(Zeroizing<[u8; 32]>, u64)>> = const { RefCell::new(None) };
}

/// A fresh random nonce: keyed BLAKE3 of a counter under a per-thread secret seed (a PRF in
/// counter mode, so as unpredictable as the seed), reseeded from the system every 2^20
/// nonces. One system call per blob cost a first backup of 75,000 blobs 75,000 of them.
fn fresh_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    NONCES.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(_, n)| *n >= NONCES_PER_SEED) {
            *slot = Some((Zeroizing::new(random_bytes()?), 0));
        }
        let (seed, n) = slot.as_mut().ok_or(CryptoError::Authentication)?;
        *n += 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blake3::keyed_hash(seed, &n.to_le_bytes()).as_bytes()[..NONCE_LEN]);
        Ok(nonce)
    })
}

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
        let nonce = fresh_nonce()?;
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
    fn nonces_never_repeat_across_threads_and_reseeds() {
        let per_thread = 3000;
        let all: Vec<[u8; NONCE_LEN]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(move || (0..per_thread).map(|_| fresh_nonce().unwrap()).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        // Past the reseed point the sequence goes on with a new seed, still fresh.
        NONCES.with(|c| {
            if let Some((_, n)) = c.borrow_mut().as_mut() {
                *n = NONCES_PER_SEED;
            }
        });
        let after = fresh_nonce().unwrap();
        assert!(!distinct.contains(&after));
    }

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
