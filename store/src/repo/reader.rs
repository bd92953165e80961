//! The blob reader of a handle: a blob read by its location, authenticated with its pack's
//! key (or the key copy in the pack's table when the pack's first bytes are damaged),
//! decompressed and re-hashed; trees read from their second copy when the first fails; and,
//! for remote repositories, the local cache of tree blobs.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bakare_crypto::{EphemeralPublic, SymmetricKey};

use super::index::BlobIndex;
use super::runs::{SPAN, Spans};
use super::{Core, lock, pack_path};
use crate::format::index::BlobLocation;
use crate::format::object::id_of_path;
use crate::format::pack::{
    FRAME_AAD, MAX_FRAME_LEN, PACK_PREFIX_LEN, PACK_PURPOSE, PackEntry, PackTable, pack_ephemeral, read_pack_table,
};
use crate::format::tree::Tree;
use crate::ids::{BlobId, BlobKind, PackId};
use crate::local::trees::TreeCache;
use crate::{Result, StoreError};

/// The reading half of a handle.
#[derive(Default)]
pub(crate) struct BlobReader {
    pack_keys: Mutex<HashMap<PackId, SymmetricKey>>,
    /// The key from each pack's blob table, read when the prefix's key failed (`None`: the
    /// table gave none).
    table_keys: Mutex<HashMap<PackId, Option<SymmetricKey>>>,
    /// This machine's cache of tree blobs (remote repositories).
    pub(crate) tree_cache: OnceLock<TreeCache>,
    /// Every indexed copy of each tree, read from the segments the first time a tree's
    /// indexed copy fails (the index offers one location per blob; trees have two).
    tree_copies: OnceLock<HashMap<BlobId, Vec<BlobLocation>>>,
    /// Trees read from their second copy because the first failed (for the caller's report).
    tree_fallbacks: Mutex<Vec<String>>,
    /// Recent spans of tree packs (remote repositories with a tree cache): trees missing
    /// from the cache are read a span at a time, since the trees a walk reads next were
    /// saved next to this one; a request per tree costs a round trip each.
    tree_spans: OnceLock<Spans>,
    /// Frames opened lately, by pack and offset: the small files of one folder usually share
    /// a frame, and each would otherwise decompress it whole again.
    frames: Mutex<FrameCache>,
    /// Signalled when a frame being read is ready (or failed).
    frame_read: std::sync::Condvar,
}

type FrameKey = (String, u32, u32);

/// The plaintexts of the last [`FRAMES_KEPT`] frames opened, newest last, and the frames
/// being read: the restoring threads often want the same frame at once (its files are
/// restored side by side), and it is read once.
#[derive(Default)]
struct FrameCache {
    ready: std::collections::VecDeque<(FrameKey, std::sync::Arc<Vec<u8>>)>,
    reading: std::collections::HashSet<FrameKey>,
}

/// Frames kept open (each at most [`MAX_FRAME_LEN`], usually ~600 KiB).
const FRAMES_KEPT: usize = 8;

impl FrameCache {
    /// A kept frame, made the newest (the least recently used goes first).
    fn get(&mut self, key: &FrameKey) -> Option<std::sync::Arc<Vec<u8>>> {
        let at = self.ready.iter().rposition(|(k, _)| k == key)?;
        let found = self.ready.remove(at)?;
        let plain = found.1.clone();
        self.ready.push_back(found);
        Some(plain)
    }

    fn put(&mut self, key: FrameKey, plain: std::sync::Arc<Vec<u8>>) {
        if self.get(&key).is_none() {
            self.ready.push_back((key, plain));
            while self.ready.len() > FRAMES_KEPT {
                self.ready.pop_front();
            }
        }
    }
}

fn frame_key(path: &str, entry: &PackEntry) -> FrameKey {
    (path.to_string(), entry.offset, entry.length)
}

/// Spans of tree packs kept in memory (of [`SPAN`] bytes each).
const TREE_SPANS: usize = 4;

/// A framed blob's bytes, cut from its frame's plaintext and checked against its id.
fn blob_in_frame(core: &Core, path: &str, entry: &PackEntry, frame: &[u8]) -> Result<Vec<u8>> {
    let at = entry.frame_at.unwrap_or_default() as usize;
    let data = frame.get(at..at + entry.raw_len as usize).ok_or_else(|| {
        StoreError::corrupt(format!("blob {} in {path}", entry.id.short()), "lies past its frame's end")
    })?;
    if core.blob_id(data) != entry.id {
        return Err(StoreError::corrupt(
            format!("blob {} in {path}", entry.id.short()),
            "content does not match its id",
        ));
    }
    Ok(data.to_vec())
}

/// A blob's sealed bytes within bytes of its pack held in memory, which start at `base`
/// in the pack (0: the whole pack).
fn sealed_in<'a>(path: &str, entry: &PackEntry, pack_bytes: &'a [u8], base: u32) -> Result<&'a [u8]> {
    let past = || StoreError::corrupt(path, format!("blob {} lies past the end", entry.id.short()));
    let start = entry.offset.checked_sub(base).ok_or_else(past)? as usize;
    pack_bytes.get(start..start.saturating_add(entry.length as usize)).ok_or_else(past)
}

impl BlobReader {
    /// Reads, authenticates, decompresses and re-hashes one blob.
    pub(crate) fn load_blob(&self, core: &Core, index: &BlobIndex, id: &BlobId) -> Result<Vec<u8>> {
        core.access.master()?;
        let loc = index.location(core, id).ok_or_else(|| StoreError::UnknownBlob(id.to_hex()))?;
        let Some(cache) = self.tree_cache.get().filter(|_| loc.entry.kind == BlobKind::Tree) else {
            return self.load_blob_at(core, &loc);
        };
        let path = pack_path(&loc.pack);
        let key = crate::local::trees::key(&loc.pack, loc.entry.offset);
        // A cached copy is checked like a download; one that fails is read again.
        if let Some(sealed) = cache.get(&key)
            && let Ok(plain) = self.open_blob(core, &path, &loc.entry, &sealed)
        {
            return Ok(plain);
        }
        let (offset, len) = (u64::from(loc.entry.offset), u64::from(loc.entry.length));
        let sealed = if len <= SPAN / 4 {
            self.tree_spans.get_or_init(Spans::default).read(core, TREE_SPANS, &loc.pack, offset, len)?
        } else {
            core.backend.get_range(&path, offset, len)?
        };
        let plain = self.open_blob(core, &path, &loc.entry, &sealed)?;
        cache.put(key, &sealed);
        Ok(plain)
    }

    /// Reads one blob at a given location (verify and repair try every known copy).
    pub(crate) fn load_blob_at(&self, core: &Core, loc: &BlobLocation) -> Result<Vec<u8>> {
        core.access.master()?;
        let path = pack_path(&loc.pack);
        if loc.entry.frame_at.is_none() {
            let sealed = core.backend.get_range(&path, u64::from(loc.entry.offset), u64::from(loc.entry.length))?;
            return self.open_blob(core, &path, &loc.entry, &sealed);
        }
        // A frame another thread is reading is waited for, not read twice.
        let key = frame_key(&path, &loc.entry);
        let mut frames = lock(&self.frames);
        loop {
            if let Some(frame) = frames.get(&key) {
                drop(frames);
                return blob_in_frame(core, &path, &loc.entry, &frame);
            }
            if frames.reading.insert(key.clone()) {
                break;
            }
            frames = self.frame_read.wait(frames).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(frames);
        // Whatever happens (an error, a panic), the waiters are let go.
        struct Done<'a>(&'a BlobReader, FrameKey);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                lock(&self.0.frames).reading.remove(&self.1);
                self.0.frame_read.notify_all();
            }
        }
        let _done = Done(self, key);
        // Opening it puts the frame among the ready ones.
        core.backend
            .get_range(&path, u64::from(loc.entry.offset), u64::from(loc.entry.length))
            .map_err(StoreError::from)
            .and_then(|sealed| self.open_blob(core, &path, &loc.entry, &sealed))
    }

    /// Reads one blob at a location, and if the pack's key fails, tries the key derived from
    /// `alternate` (the blob table's copy of the ephemeral key, for when the pack's first
    /// bytes are damaged).
    pub(crate) fn load_blob_trying(
        &self,
        core: &Core,
        loc: &BlobLocation,
        alternate: Option<&PackTable>,
    ) -> Result<Vec<u8>> {
        core.access.master()?;
        let path = pack_path(&loc.pack);
        let sealed = core.backend.get_range(&path, u64::from(loc.entry.offset), u64::from(loc.entry.length))?;
        self.open_trying(core, &path, &loc.entry, &sealed, alternate)
    }

    /// Opens a blob from a pack's bytes already in memory, starting at `base` in the pack
    /// (0: the whole pack, as verify reads it; a run's first offset for restore's runs). The
    /// blob is opened under its place in the pack (frames are kept by it).
    pub(crate) fn open_blob_in(
        &self,
        core: &Core,
        pack: &PackId,
        entry: &PackEntry,
        pack_bytes: &[u8],
        base: u32,
    ) -> Result<Vec<u8>> {
        let path = pack_path(pack);
        self.open_blob(core, &path, entry, sealed_in(&path, entry, pack_bytes, base)?)
    }

    /// As [`Repository::open_blob_in`], trying the table's key copy when the pack's fails.
    pub(crate) fn open_blob_in_trying(
        &self,
        core: &Core,
        pack: &PackId,
        entry: &PackEntry,
        bytes: &[u8],
        alternate: Option<&PackTable>,
    ) -> Result<Vec<u8>> {
        let path = pack_path(pack);
        self.open_trying(core, &path, entry, sealed_in(&path, entry, bytes, 0)?, alternate)
    }

    fn open_trying(
        &self,
        core: &Core,
        path: &str,
        entry: &PackEntry,
        sealed: &[u8],
        alternate: Option<&PackTable>,
    ) -> Result<Vec<u8>> {
        let first = self.open_blob(core, path, entry, sealed);
        match alternate {
            Some(table) if first.is_err() => {
                let key = self.derive_pack_key(core, path, &table.ephemeral)?;
                self.open_sealed(core, path, &key, entry, sealed).or(first)
            }
            _ => first,
        }
    }

    fn open_blob(&self, core: &Core, path: &str, entry: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>> {
        let pack = id_of_path(path).map(PackId).ok_or_else(|| StoreError::corrupt(path, "bad pack name"))?;
        let first = self.pack_key(core, &pack).and_then(|key| self.open_sealed(core, path, &key, entry, sealed));
        if first.is_ok() {
            return first;
        }
        // The pack's first bytes may be damaged: its blob table holds a copy of the
        // ephemeral key. It is read once per pack (other threads wait for it) and tried on
        // every blob the prefix's key fails on; a blob that is itself damaged stays an error.
        let table_key = {
            let mut keys = lock(&self.table_keys);
            match keys.get(&pack) {
                Some(k) => k.clone(),
                None => {
                    let k = read_pack_table(core.backend.as_ref(), path, &core.access.write_key().index_key)
                        .and_then(|table| self.derive_pack_key(core, path, &table.ephemeral))
                        .ok();
                    keys.insert(pack, k.clone());
                    k
                }
            }
        };
        match table_key.and_then(|key| self.open_sealed(core, path, &key, entry, sealed).ok().map(|plain| (key, plain)))
        {
            Some((key, plain)) => {
                lock(&self.pack_keys).insert(pack, key);
                Ok(plain)
            }
            None => first,
        }
    }

    fn open_sealed(
        &self,
        core: &Core,
        path: &str,
        key: &SymmetricKey,
        entry: &PackEntry,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let name = || format!("blob {} in {path}", entry.id.short());
        if entry.frame_at.is_some() {
            let cache_key = frame_key(path, entry);
            if let Some(frame) = lock(&self.frames).get(&cache_key) {
                return blob_in_frame(core, path, entry, &frame);
            }
            let frame_name = || format!("frame at {} in {path} (holding blob {})", entry.offset, entry.id.short());
            let plain = key.open(FRAME_AAD, sealed).map_err(|e| StoreError::crypto(frame_name(), e))?;
            // A frame says its length (zstd's header), within the frame limit.
            let len = zstd::zstd_safe::get_frame_content_size(&plain)
                .ok()
                .flatten()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= MAX_FRAME_LEN)
                .ok_or_else(|| StoreError::corrupt(frame_name(), "no length within the frame limit"))?;
            let frame =
                zstd::bulk::decompress(&plain, len).map_err(|e| StoreError::corrupt(frame_name(), e.to_string()))?;
            if frame.len() != len {
                return Err(StoreError::corrupt(frame_name(), "shorter than its header says"));
            }
            let frame = std::sync::Arc::new(frame);
            let found = blob_in_frame(core, path, entry, &frame);
            lock(&self.frames).put(cache_key, frame);
            return found;
        }
        let plain = key.open(&entry.aad(), sealed).map_err(|e| StoreError::crypto(name(), e))?;
        let data = if entry.compressed {
            zstd::bulk::decompress(&plain, entry.raw_len as usize)
                .map_err(|e| StoreError::corrupt(name(), e.to_string()))?
        } else {
            plain
        };
        if data.len() != entry.raw_len as usize || core.blob_id(&data) != entry.id {
            return Err(StoreError::corrupt(name(), "content does not match its id"));
        }
        Ok(data)
    }

    fn pack_key(&self, core: &Core, pack: &PackId) -> Result<SymmetricKey> {
        if let Some(k) = lock(&self.pack_keys).get(pack) {
            return Ok(k.clone());
        }
        let path = pack_path(pack);
        let prefix = core.backend.get_range(&path, 0, PACK_PREFIX_LEN as u64)?;
        let key = self.derive_pack_key(core, &path, &pack_ephemeral(&path, &prefix)?)?;
        lock(&self.pack_keys).insert(*pack, key.clone());
        Ok(key)
    }

    fn derive_pack_key(&self, core: &Core, path: &str, eph: &EphemeralPublic) -> Result<SymmetricKey> {
        core.access.master()?.data_secret.recover(eph, PACK_PURPOSE).map_err(|e| StoreError::crypto(path, e))
    }

    /// Reads `len` bytes of a pack at `offset` (several adjacent blobs at once).
    /// A pack's size in bytes, as the storage says.
    pub(crate) fn pack_size(&self, core: &Core, pack: &PackId) -> Result<u64> {
        Ok(core.backend.size(&pack_path(pack))?)
    }

    pub(crate) fn read_pack_range(&self, core: &Core, pack: &PackId, offset: u64, len: u64) -> Result<Vec<u8>> {
        core.access.master()?;
        Ok(core.backend.get_range(&pack_path(pack), offset, len)?)
    }

    /// Loads a tree; when its indexed copy is damaged or missing, from its other copy (every
    /// tree is written to two packs), so that readers ride over what repair would fix.
    pub(crate) fn load_tree(&self, core: &Core, index: &BlobIndex, id: &BlobId) -> Result<Tree> {
        let name = format!("tree {}", id.short());
        let first = match self.load_blob(core, index, id).and_then(|b| Tree::decode(&name, &b)) {
            Ok(tree) => return Ok(tree),
            Err(StoreError::NeedsMasterKey) => return Err(StoreError::NeedsMasterKey),
            Err(e) => e,
        };
        let tried = index.location(core, id).map(|l| l.pack);
        let copies = self.tree_copies(core).get(id).cloned().unwrap_or_default();
        for loc in copies.iter().filter(|l| Some(l.pack) != tried) {
            if let Ok(tree) = self.load_blob_at(core, loc).and_then(|b| Tree::decode(&name, &b)) {
                lock(&self.tree_fallbacks).push(format!(
                    "{name}: read from its second copy in {} ({first}); `bakare verify --repair` restores the first",
                    pack_path(&loc.pack)
                ));
                return Ok(tree);
            }
        }
        Err(first)
    }

    /// What [`Repository::load_tree`] read from a second copy, taken (each said once).
    pub(crate) fn take_tree_fallbacks(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.tree_fallbacks))
    }

    fn tree_copies(&self, core: &Core) -> &HashMap<BlobId, Vec<BlobLocation>> {
        self.tree_copies.get_or_init(|| {
            let mut copies: HashMap<BlobId, Vec<BlobLocation>> = HashMap::new();
            for path in core.backend.list("index").unwrap_or_default() {
                let Ok(seg) = BlobIndex::read_segment(core, &path) else { continue };
                for (pack, entries) in seg.packs {
                    for e in entries.into_iter().filter(|e| e.kind == BlobKind::Tree) {
                        copies.entry(e.id).or_default().push(BlobLocation { pack, entry: e });
                    }
                }
            }
            copies
        })
    }

    /// Keeps tree blobs read from the repository in `path` (a file of this machine's cache
    /// folder), for repositories on remote storage. Not for `verify`, which always reads the
    /// repository.
    pub(crate) fn use_tree_cache(&self, path: &std::path::Path, cache_bytes: usize) -> std::result::Result<(), String> {
        let cache = TreeCache::open(path, cache_bytes).map_err(|e| e.to_string())?;
        let _ = self.tree_cache.set(cache);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache keeps the frames used last: one read again stays while older ones go.
    #[test]
    fn the_frame_cache_forgets_the_least_recently_used() {
        let key = |n: u32| ("packs/p".to_string(), n, 100);
        let mut cache = FrameCache::default();
        for n in 0..FRAMES_KEPT as u32 {
            cache.put(key(n), std::sync::Arc::new(vec![n as u8]));
        }
        assert_eq!(cache.get(&key(0)).as_deref(), Some(&vec![0u8]));
        cache.put(key(100), std::sync::Arc::new(vec![1]));
        assert!(cache.get(&key(0)).is_some(), "used lately: kept");
        assert!(cache.get(&key(1)).is_none(), "the least recently used went");
        assert_eq!(cache.ready.len(), FRAMES_KEPT);
    }
}
