//! The keys of the planner's name index (`names.redb`), handed over as an opaque sealer:
//! the index's rows are keyed by a keyed hash of their folder's path and sealed
//! (XChaCha20-Poly1305) with a key derived from the data secret, so the file reveals no
//! names to anyone without the master key. The planner sees only this type.

use bakare_crypto::{IdKey, MasterKey, SymmetricKey};

use crate::{Result, StoreError};

/// Seals and opens the rows of a name index, and names them.
pub struct NameSealer {
    rows: IdKey,
    seal: SymmetricKey,
}

impl NameSealer {
    pub(crate) fn new(master: &MasterKey) -> Self {
        let rows = master.data_secret.derive_id_key("bakare name index rows v1");
        let seal = rows.derive("bakare name index seal v1");
        Self { rows, seal }
    }

    /// The key of a folder's row: 16 bytes of a keyed hash of its path.
    pub fn row_key(&self, folder: &[u8]) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.rows.id(folder).0[..16]);
        k
    }

    /// What a local file sealed with these keys is bound to (see [`super::db::Options::key`]).
    pub fn key_check(&self) -> [u8; 32] {
        self.rows.id(b"bakare name index file").0
    }

    /// Seals `plain` bound to `aad` (the row's key, or the name of a value).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        self.seal.seal(aad, plain).map_err(|e| StoreError::crypto("name index row", e))
    }

    /// Opens what [`NameSealer::seal`] sealed with the same `aad`; damage is an error.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        self.seal.open(aad, sealed).map_err(|e| StoreError::crypto("name index row", e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rows_open_only_with_their_key_and_aad() {
        let master = MasterKey::generate().unwrap();
        let s = NameSealer::new(&master);
        let sealed = s.seal(b"row", b"names").unwrap();
        assert_eq!(s.open(b"row", &sealed).unwrap(), b"names");
        assert!(s.open(b"other row", &sealed).is_err());
        let other = NameSealer::new(&MasterKey::generate().unwrap());
        assert!(other.open(b"row", &sealed).is_err());
        assert_ne!(s.row_key(b"/a"), other.row_key(b"/a"));
        assert_ne!(s.key_check(), other.key_check());
    }
}
