//! Where each blob is, for one handle: the index segments read lazily (in memory or through
//! the local file, [`crate::local::blob_index`]), the segments this handle relied on, and
//! the fallback to the repository's segments when the local file misses a blob.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bakare_crypto::Digest;

use super::Core;
use super::lock;
use crate::format::index::{BlobLocation, IndexSegment};
use crate::format::object::{get_named, id_of_path};
use crate::ids::{BlobId, PackId};
use crate::local::blob_index::{Blobs, DiskIndex, SegmentPacks};
use crate::local::db;
use crate::{Result, StoreError};

/// The blob index of one handle.
#[derive(Default)]
pub(crate) struct BlobIndex {
    blobs: RwLock<Blobs>,
    /// Set once the index segments have been read (lazily: a backup in which nothing
    /// changed never needs them).
    loaded: OnceLock<Result<(), String>>,
    /// Held while the index is read from the segments in place of a local file that missed a
    /// blob (once per handle; `true` once done).
    fallback: Mutex<bool>,
    warnings: Mutex<Vec<String>>,
    /// Index segments this handle read or wrote: if garbage collection removes one, what
    /// this handle deduplicated against may be marked for deletion.
    segments_used: Mutex<HashSet<Digest>>,
}

impl BlobIndex {
    /// A fresh index for a new handle on the same local file (nothing loaded or pending).
    pub(crate) fn share(&self) -> Self {
        let fresh = Self::default();
        if let Ok(index) = self.blobs.read()
            && let Blobs::Disk(disk) = &*index
        {
            // The same local file, brought up to date when the fresh handle loads its index.
            *fresh.write() = Blobs::Disk(disk.share());
        }
        fresh
    }

    pub(crate) fn read(&self) -> Option<RwLockReadGuard<'_, Blobs>> {
        self.blobs.read().ok()
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Blobs> {
        self.blobs.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn warn(&self, message: String) {
        lock(&self.warnings).push(message);
    }

    pub(crate) fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).clone()
    }

    pub(crate) fn segments_used(&self) -> HashSet<Digest> {
        lock(&self.segments_used).clone()
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.read().is_some_and(|m| m.contains(id))
    }

    pub(crate) fn len(&self) -> usize {
        self.read().map_or(0, |m| m.len())
    }

    pub(crate) fn packs(&self) -> HashSet<PackId> {
        self.read().map(|m| m.packs()).unwrap_or_default()
    }

    /// Loads every index segment (once; later calls return the first outcome).
    pub(crate) fn load(&self, core: &Core) -> Result<()> {
        self.loaded
            .get_or_init(|| self.read_index(core).map_err(|e| e.to_string()))
            .clone()
            .map_err(|reason| StoreError::Corrupt { object: "index".into(), reason })
    }

    /// Writes `segment` as a new index segment and adds it to this index (and the local
    /// file): what the adoption of orphan packs ends with.
    pub(crate) fn write_segment(&self, core: &Core, segment: &IndexSegment) -> Result<Digest> {
        {
            let mut index = self.write();
            for (pack, entries) in &segment.packs {
                for e in entries {
                    index.insert(*pack, e);
                }
            }
        }
        self.write_segment_of_known(core, segment)
    }

    /// Writes `segment`, whose blobs this index holds already (a flush: each pack's blobs
    /// entered it when the pack was written), and moves them to the local file.
    pub(crate) fn write_segment_of_known(&self, core: &Core, segment: &IndexSegment) -> Result<Digest> {
        let (id, bytes) = segment.encode(&core.access.write_key().index_key)?;
        core.backend.put(&format!("index/{id}"), &bytes)?;
        lock(&self.segments_used).insert(id);
        self.add_to_local_file(id, segment);
        Ok(id)
    }

    /// Where a blob is, if the (loaded) index has it. A blob the local index file does not
    /// find may be the file's damage, not the repository's: the index is then read from the
    /// repository's segments into memory (once per handle), the file removed (the next run
    /// builds it again), and the blob looked up there.
    pub(crate) fn location(&self, core: &Core, id: &BlobId) -> Option<BlobLocation> {
        self.load(core).ok()?;
        let found = self.read().and_then(|m| m.get(id));
        if found.is_some() || !self.reload_from_segments(core, id) {
            return found;
        }
        self.read().and_then(|m| m.get(id))
    }

    /// Reads and authenticates the index segment at `path`.
    pub(crate) fn read_segment(core: &Core, path: &str) -> Result<IndexSegment> {
        get_named(core.backend.as_ref(), path)
            .and_then(|b| IndexSegment::decode(path, &b, &core.access.write_key().index_key))
    }

    /// The index the segments at `paths` make, in memory; each segment read is recorded as
    /// used, each unreadable one as a warning.
    fn memory_index(&self, core: &Core, paths: &[String]) -> Blobs {
        let mut index = Blobs::default();
        for path in paths {
            match Self::read_segment(core, path) {
                Ok(seg) => {
                    if let Some(id) = id_of_path(path) {
                        lock(&self.segments_used).insert(id);
                    }
                    for (pack, entries) in &seg.packs {
                        for e in entries {
                            index.insert(*pack, e);
                        }
                    }
                }
                Err(e) => self.warn(e.to_string()),
            }
        }
        index
    }

    fn read_index(&self, core: &Core) -> Result<()> {
        let paths = core.backend.list("index")?;
        let mut current = self.write();
        if let Blobs::Disk(disk) = &mut *current {
            // A damaged file can make redb panic: that is one more way for it to fail.
            let synced = db::guard(|| self.sync_disk_index(core, disk, &paths))
                .unwrap_or_else(|| Err(redb::Error::Corrupted(format!("{} made redb panic", disk.path().display()))));
            if synced.is_err() {
                // Large, and always read again from the segments: not kept.
                let _ = std::fs::remove_file(disk.path());
            }
            match synced {
                Ok(()) => return Ok(()),
                // The local file failed: this run reads the index into memory (below, with
                // this handle's pending blobs carried over as for any handle).
                Err(e) => self.warn(format!("local index file unusable ({e}); reading the index into memory")),
            }
        }
        let mut index = self.memory_index(core, &paths);
        // Packs this handle wrote before the load are already in; keep them.
        for loc in current.pending() {
            index.insert(loc.pack, &loc.entry);
        }
        *current = index;
        Ok(())
    }

    /// Brings the local index file up to date with the segments at `paths`: reads only the
    /// new ones, or all of them again if one it holds is gone.
    fn sync_disk_index(
        &self,
        core: &Core,
        disk: &mut DiskIndex,
        paths: &[String],
    ) -> std::result::Result<(), redb::Error> {
        let listed: HashMap<Digest, &String> = paths.iter().filter_map(|p| id_of_path(p).map(|id| (id, p))).collect();
        let mut held = disk.segments()?;
        if held.iter().any(|s| !listed.contains_key(s)) {
            disk.clear()?;
            held.clear();
        }
        let mut batch: Vec<(Digest, IndexSegment)> = Vec::new();
        let flush = |disk: &mut DiskIndex, batch: &mut Vec<(Digest, IndexSegment)>| {
            let refs: Vec<(Digest, SegmentPacks<'_>)> =
                batch.iter().map(|(id, seg)| (*id, seg.packs.as_slice())).collect();
            let r = disk.add_segments(&refs);
            batch.clear();
            r
        };
        for (id, path) in &listed {
            if held.contains(id) {
                continue;
            }
            match Self::read_segment(core, path) {
                Ok(seg) => {
                    held.insert(*id);
                    batch.push((*id, seg));
                }
                Err(e) => {
                    self.warn(e.to_string());
                    continue;
                }
            }
            // A transaction per few hundred segments bounds what redb holds uncommitted.
            if batch.len() >= 256 {
                flush(disk, &mut batch)?;
            }
        }
        flush(disk, &mut batch)?;
        // Every segment the file now holds is listed: this handle relies on all of them.
        lock(&self.segments_used).extend(held);
        Ok(())
    }

    /// Keeps the index in the local file at `path` (see [`crate::Repository::use_local_index`]).
    pub(crate) fn use_local_file(
        &self,
        core: &Core,
        path: &std::path::Path,
        cache_bytes: usize,
    ) -> std::result::Result<(), String> {
        let check = core.access.write_key().id_key.id(b"bakare local blob index v1");
        let disk = match DiskIndex::open(path, cache_bytes, &check) {
            Ok(d) => d,
            Err(db::OpenError::Busy(_)) => return Err("in use by another bakare process".into()),
            Err(e) => return Err(e.to_string()),
        };
        let mut current = self.write();
        let mut swapped = Blobs::Disk(disk);
        for loc in current.pending() {
            swapped.insert(loc.pack, &loc.entry);
        }
        *current = swapped;
        Ok(())
    }

    /// Replaces a local index file by the index read into memory; whether it did (`false`
    /// when the index is in memory already, or reading it failed). The file is removed only
    /// if the repository's index has `missed`, which the file did not find.
    fn reload_from_segments(&self, core: &Core, missed: &BlobId) -> bool {
        // One thread reads the segments; the others wait and look again.
        let mut done = lock(&self.fallback);
        if *done {
            return true;
        }
        *done = true;
        let path = match self.read() {
            Some(i) => match i.disk_path() {
                Some(p) => p.to_path_buf(),
                None => return false,
            },
            None => return false,
        };
        let Ok(paths) = core.backend.list("index") else { return false };
        let mut index = self.memory_index(core, &paths);
        let mut current = self.write();
        for loc in current.pending() {
            index.insert(loc.pack, &loc.entry);
        }
        let file_was_wrong = index.contains(missed);
        *current = index;
        if !file_was_wrong {
            return true;
        }
        let _ = std::fs::remove_file(&path);
        self.warn(format!(
            "the local index file {} missed a blob the repository has: read the index from the repository instead \
             (the file is built again next time)",
            path.display()
        ));
        true
    }

    /// Moves a segment this handle wrote into the local index file, so that its blobs no
    /// longer take memory. If that fails they stay in memory: still correct.
    fn add_to_local_file(&self, id: Digest, segment: &IndexSegment) {
        let mut index = self.write();
        if let Blobs::Disk(disk) = &mut *index {
            let added = db::guard(|| disk.add_segments(&[(id, segment.packs.as_slice())]).map_err(|e| e.to_string()))
                .unwrap_or_else(|| Err("redb panicked writing it".into()));
            if let Err(e) = added {
                drop(index);
                self.warn(format!("local index file: {e}"));
            }
        }
    }
}
