//! Errors of this crate: each says which check failed, never what a secret was.

/// A cryptographic operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication of sealed bytes failed: wrong key, or the bytes were altered.
    #[error("authentication failed (wrong key or damaged data)")]
    Authentication,
    /// Sealed bytes are shorter than a nonce and a tag.
    #[error("sealed data is truncated ({len} bytes)")]
    Truncated { len: usize },
    /// The passphrase does not open the key file.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// A key file is malformed.
    #[error("malformed key file: {0}")]
    MalformedKeyFile(&'static str),
    /// A key file has a format version this build does not know.
    #[error("key file format version {found} is newer than this bakare supports ({supported})")]
    UnsupportedKeyFileVersion { found: u8, supported: u8 },
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// Key derivation parameters are out of range.
    #[error("invalid key derivation parameters: {0}")]
    KdfParams(String),
    /// An X25519 exchange with a low-order point (a crafted or damaged public key).
    #[error("non-contributory key exchange (damaged or malicious public key)")]
    WeakKeyExchange,
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(out)
}
