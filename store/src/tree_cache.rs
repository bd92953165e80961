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
    /// Opens the file, starting it anew if it is damaged.
    pub(crate) fn open(path: &Path) -> Result<Self, redb::Error> {
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
