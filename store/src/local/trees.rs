//! This machine's cache of what is read from a remote repository and never changes under
//! its name (`trees.redb` in the cache folder), so that `ls`, `find`, `diff`, `snapshots`,
//! restores and incremental backups do not download it again:
//!
//! - tree blobs, as the repository stores them: sealed, so the file reveals nothing without
//!   the key, and every hit is opened and checked against its id like a download. Keys are
//!   the pack id and the offset in the pack (a blob stored twice has two sealed forms).
//! - snapshot objects, by path: sealed too, and named by the hash of their bytes, so every
//!   hit is checked against its name like a download.
//!
//! An entry that fails its check is read from the repository again and replaced. `verify`
//! never reads through the cache. New entries are written in batches.

use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::ids::PackId;
use crate::local::db;

const LAYOUT: db::Layout = db::Layout { kind: "bakare tree cache", version: 1 };

const SEALED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sealed_trees");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("named_objects");
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
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    trees: Vec<(Key, Vec<u8>)>,
    objects: Vec<(String, Vec<u8>)>,
}

impl Pending {
    fn len(&self) -> usize {
        self.trees.len() + self.objects.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TreeCache {
    /// Opens the file under the local files' convention ([`db`]), starting it anew if it is
    /// damaged or larger than 4 GiB.
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Self, db::OpenError> {
        Self::open_capped(path, cache_bytes, MAX_BYTES)
    }

    fn open_capped(path: &Path, cache_bytes: usize, max_bytes: u64) -> Result<Self, db::OpenError> {
        let opts = db::Options { cache_bytes, max_bytes: Some(max_bytes), ..db::Options::default() };
        let db = db::open(path, LAYOUT, &opts)?.db;
        Ok(Self { db, pending: Mutex::new(Pending::default()) })
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Vec<u8>> {
        // Every hit is checked by the caller; a lookup that panics is a miss.
        db::guard(|| self.get_unguarded(key)).flatten()
    }

    fn get_unguarded(&self, key: &Key) -> Option<Vec<u8>> {
        let tx = self.db.begin_read().ok()?;
        let table = tx.open_table(SEALED).ok()?;
        let v = table.get(&key[..]).ok()??;
        Some(v.value().to_vec())
    }

    pub(crate) fn put(&self, key: Key, sealed: &[u8]) {
        self.add(|p| p.trees.push((key, sealed.to_vec())));
    }

    /// The bytes of the object at `path`, if cached.
    pub(crate) fn get_object(&self, path: &str) -> Option<Vec<u8>> {
        db::guard(|| self.get_object_unguarded(path)).flatten()
    }

    fn get_object_unguarded(&self, path: &str) -> Option<Vec<u8>> {
        let tx = self.db.begin_read().ok()?;
        let table = tx.open_table(OBJECTS).ok()?;
        let v = table.get(path).ok()??;
        Some(v.value().to_vec())
    }

    pub(crate) fn put_object(&self, path: &str, bytes: &[u8]) {
        self.add(|p| p.objects.push((path.to_string(), bytes.to_vec())));
    }

    fn add(&self, f: impl FnOnce(&mut Pending)) {
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut p);
            if p.len() < BATCH {
                return;
            }
            std::mem::take(&mut *p)
        };
        self.write(batch);
    }

    /// Writes what is pending (a failure, a panic inside redb included, only loses cache
    /// entries).
    fn write(&self, batch: Pending) {
        let _ = db::guard(|| self.write_unguarded(batch));
    }

    fn write_unguarded(&self, batch: Pending) {
        if batch.is_empty() {
            return;
        }
        let Ok(tx) = self.db.begin_write() else { return };
        {
            let Ok(mut table) = tx.open_table(SEALED) else { return };
            for (k, v) in &batch.trees {
                if table.insert(&k[..], v.as_slice()).is_err() {
                    return;
                }
            }
            let Ok(mut table) = tx.open_table(OBJECTS) else { return };
            for (k, v) in &batch.objects {
                if table.insert(k.as_str(), v.as_slice()).is_err() {
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
        let cache = TreeCache::open(path, 1 << 20).unwrap();
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
        let cache = TreeCache::open(&path, 1 << 20).unwrap();
        assert!(keys.iter().all(|k| cache.get(k).as_deref() == Some(&[1u8; 1024][..])));
    }

    #[test]
    fn objects_are_kept_by_path_beside_the_trees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trees.redb");
        {
            let cache = TreeCache::open(&path, 1 << 20).unwrap();
            cache.put_object("snapshots/ab", b"one");
            cache.put_object("snapshots.mirror/ab", b"two");
            cache.put(key(&PackId(bakare_crypto::Digest([1; 32])), 5), b"tree");
        }
        let cache = TreeCache::open(&path, 1 << 20).unwrap();
        assert_eq!(cache.get_object("snapshots/ab").as_deref(), Some(&b"one"[..]));
        assert_eq!(cache.get_object("snapshots.mirror/ab").as_deref(), Some(&b"two"[..]));
        assert_eq!(cache.get_object("snapshots/cd"), None);
        assert_eq!(cache.get(&key(&PackId(bakare_crypto::Digest([1; 32])), 5)).as_deref(), Some(&b"tree"[..]));
    }

    #[test]
    fn a_file_over_the_cap_is_started_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trees.redb");
        let keys = filled(&path);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(TreeCache::open_capped(&path, 1 << 20, size).unwrap().get(&keys[0]).is_some(), "at the cap it stays");
        let cache = TreeCache::open_capped(&path, 1 << 20, size - 1).unwrap();
        assert!(keys.iter().all(|k| cache.get(k).is_none()));
        assert!(std::fs::metadata(&path).unwrap().len() < size);
    }

    #[test]
    fn a_damaged_file_is_started_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trees.redb");
        std::fs::write(&path, b"not a redb file at all").unwrap();
        let cache = TreeCache::open(&path, 1 << 20).unwrap();
        assert!(cache.get(&key(&PackId(bakare_crypto::Digest([0; 32])), 0)).is_none());
    }
}
