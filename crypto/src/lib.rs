//! bakare's cryptography: keys, sealing and key files.
//!
//! This crate knows nothing of files, repositories or packs. It offers:
//! - [`MasterKey`], the whole secret of a repository, and [`WriteKey`], its put-only half
//!   (can seal new data and compute ids, cannot open any data);
//! - [`SymmetricKey`], XChaCha20-Poly1305 sealing with a fresh random nonce per message;
//! - [`DataPublicKey::ephemeral`] / [`DataSecretKey::recover`], the sealed-box scheme by which a
//!   writer derives a one-off key that only the holder of the data secret can derive again;
//! - [`IdKey`], keyed BLAKE3 for content ids that reveal nothing about content;
//! - key files: the master key sealed under a passphrase (argon2id), and the put-only key file.
//!
//! Secrets have no `Debug`, are zeroized on drop, and decryption returns `Result`.

mod digest;
mod error;
mod keyfile;
mod keys;
mod seal;

pub use digest::{Digest, bound_checksum, checksum};
pub use error::CryptoError;
pub use keyfile::{KdfParams, open_key_file, open_write_key_file, parse_key_file, seal_key_file, write_key_file};
pub use keys::{ChunkerSeed, DataPublicKey, DataSecretKey, IdKey, MasterKey, WriteKey};
pub use seal::{EphemeralPublic, NONCE_LEN, SEAL_OVERHEAD, SymmetricKey, TAG_LEN};
