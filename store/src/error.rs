//! The store's errors: each names the object and what was wrong with it.

use crate::backend::BackendError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// An object's bytes do not hash to its name, or its structure is invalid.
    #[error("{object} is corrupt: {reason}")]
    Corrupt { object: String, reason: String },
    /// Decryption or authentication failed for a named object.
    /// Decryption or authentication failed for a named object (the cause is in the
    /// message, not chained, so that it is printed once).
    #[error("{object}: {cause}")]
    Crypto { object: String, cause: bakare_crypto::CryptoError },
    #[error("{path} is not a bakare repository (no config found)")]
    NotARepository { path: String },
    #[error("a repository already exists at {path}")]
    AlreadyExists { path: String },
    #[error("repository format version {found} is newer than this bakare supports ({supported}); upgrade bakare")]
    NewerFormat { found: u8, supported: u8 },
    #[error("wrong passphrase (no key file in the repository opens with it)")]
    WrongPassphrase,
    #[error("this operation reads backup contents and needs the master key; a put-only key can only add backups")]
    NeedsMasterKey,
    #[error("the key does not belong to this repository (repository key fingerprint {expected}, key {found})")]
    KeyMismatch { expected: String, found: String },
    #[error("blob {0} is not in the index")]
    UnknownBlob(String),
    #[error("no snapshot matches {0:?}")]
    NoSuchSnapshot(String),
    #[error("snapshot name {spec:?} is ambiguous: it matches {count} snapshots")]
    AmbiguousSnapshot { spec: String, count: usize },
    #[error("the repository has no snapshots")]
    NoSnapshots,
    #[error("{path} is the last key file that opens the repository: without it nothing can be read")]
    LastKey { path: String },
    /// `latest` or `latest~N` names none of the snapshots that fit: `why` says which fit.
    #[error("{spec}: {why}")]
    NoFittingSnapshot { spec: String, why: String },
    #[error(
        "this machine's clock differs from the storage's by {skew_secs} s; garbage collection judges ages by both, so it does not run (set the clock right)"
    )]
    ClockSkew { skew_secs: i64 },
    /// Garbage collection found the repository changed under it by another prune.
    #[error("{0}")]
    Raced(String),
    #[error("{0}")]
    Crypt(#[from] bakare_crypto::CryptoError),
}

impl StoreError {
    pub(crate) fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Corrupt { object: object.into(), reason: reason.into() }
    }

    pub(crate) fn crypto(object: impl Into<String>, source: bakare_crypto::CryptoError) -> Self {
        Self::Crypto { object: object.into(), cause: source }
    }
}
