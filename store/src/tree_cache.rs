//! This machine's cache of tree blobs read from a remote repository (`trees.redb` in the
//! cache folder), so that `ls`, `find`, `diff`, restores and incremental backups do not
//! download the same trees again.
//!
//! It holds the blobs as the repository stores them: sealed, so the file reveals nothing
//! without the key, and every hit is opened and checked against its id like a download.
//! An entry that fails that check is read from the repository again and replaced. Keys are
//! the pack id and the offset in the pack (a blob stored twice has two sealed forms).
//! `verify` never reads through it. New entries are written in batches.

use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::ids::PackId;

const SEALED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sealed_trees");
/// Entries written per transaction.
const BATCH: usize = 256;
/// A file larger than this is started anew when opened: entries of packs that garbage
/// collection deleted are never read again, and this bounds what they take.
const MAX_BYTES: u64 = 4 << 30;

pub(crate) type Key = [u8; 36];

pub(crate) fn key(pack: &PackId, offset: u32) -> Key {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(&pack.0.0);
    k[32..].copy_from_slice(&offset.to_le_bytes());
    k
}

pub(crate) struct TreeCache {
    db: Database,
    pending: Mutex<Vec<(Key, Vec<u8>)>>,
}

impl TreeCache {
    /// Opens the file, starting it anew if it is damaged or larger than 4 GiB.
    pub(crate) fn open(path: &Path) -> Result<Self, redb::Error> {
        Self::open_capped(path, MAX_BYTES)
    }

    fn open_capped(path: &Path, max_bytes: u64) -> Result<Self, redb::Error> {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > max_bytes) {
            let _ = std::fs::remove_file(path);
        }
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(redb::DatabaseError::DatabaseAlreadyOpen.into());
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
                Database::create(path)?
            }
        };
        Ok(Self { db, pending: Mutex::new(Vec::new()) })
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Vec<u8>> {
        let tx = self.db.begin_read().ok()?;
        let table = tx.open_table(SEALED).ok()?;
        let v = table.get(&key[..]).ok()??;
        Some(v.value().to_vec())
    }

    pub(crate) fn put(&self, key: Key, sealed: &[u8]) {
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            p.push((key, sealed.to_vec()));
            if p.len() < BATCH {
                return;
            }
            std::mem::take(&mut *p)
        };
        self.write(batch);
    }

    /// Writes what is pending (a failure only loses cache entries).
    fn write(&self, batch: Vec<(Key, Vec<u8>)>) {
        if batch.is_empty() {
            return;
        }
        let Ok(tx) = self.db.begin_write() else { return };
        {
            let Ok(mut table) = tx.open_table(SEALED) else { return };
            for (k, v) in &batch {
                if table.insert(&k[..], v.as_slice()).is_err() {
                    return;
                }
            }
        }
        let _ = tx.commit();
    }
}

impl Drop for TreeCache {
    fn drop(&mut self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        self.write(batch);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn filled(path: &Path) -> Vec<Key> {
        let cache = TreeCache::open(path).unwrap();
        let keys: Vec<Key> = (0..BATCH as u32 + 10).map(|i| key(&PackId(bakare_crypto::Digest([7; 32])), i)).collect();
        for k in &keys {
            cache.put(*k, &[1u8; 1024]);
        }
        keys
    }

    #[test]
    fn entries_survive_a_reopen_and_pending_ones_are_written_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trees.redb");
        let keys = filled(&path);
        let cache = TreeCache::open(&path).unwrap();
        assert!(keys.iter().all(|k| cache.get(k).as_deref() == Some(&[1u8; 1024][..])));
    }

    #[test]
    fn a_file_over_the_cap_is_started_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trees.redb");
        let keys = filled(&path);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(TreeCache::open_capped(&path, size).unwrap().get(&keys[0]).is_some(), "at the cap it stays");
        let cache = TreeCache::open_capped(&path, size - 1).unwrap();
        assert!(keys.iter().all(|k| cache.get(k).is_none()));
        assert!(std::fs::metadata(&path).unwrap().len() < size);
    }

    #[test]
    fn a_damaged_file_is_started_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trees.redb");
        std::fs::write(&path, b"not a redb file at all").unwrap();
        let cache = TreeCache::open(&path).unwrap();
        assert!(cache.get(&key(&PackId(bakare_crypto::Digest([0; 32])), 0)).is_none());
    }
}
