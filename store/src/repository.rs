//! The repository: keys, the blob store with deduplication, index segments and snapshots.
//!
//! Saving a blob: keyed id → dedup check → zstd (kept only if it shrinks) → sealed into one
//! of a pool of open packs (one per concurrent writer, each with its own ephemeral key) →
//! a full pack is written, then its blobs enter the index. [`Repository::flush`] writes the
//! open packs and then one index segment covering every pack written since the last flush;
//! only then may a snapshot that references them be written.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};

use bakare_crypto::{
    Digest, EphemeralPublic, KdfParams, MasterKey, SymmetricKey, WriteKey, open_key_file, seal_key_file,
};

use crate::backend::{Backend, BackendError};
use crate::blobs::{Blobs, DiskIndex, SegmentPacks};
use crate::config::{ChunkerParams, Config};
use crate::ids::{BlobId, BlobKind, PackId, SnapshotId};
use crate::index::{BlobLocation, IndexSegment};
use crate::object::{get_named, get_verified, id_of_path, verify_name};
use crate::pack::{
    MAX_BLOB_LEN, PACK_PREFIX_LEN, PACK_PURPOSE, PackBuilder, PackBytes, PackEntry, PackTable, pack_ephemeral,
    read_pack_table,
};
use crate::session::{Checkpoint, Session};
use crate::snapshot::Snapshot;
use crate::tree::Tree;
use crate::{Result, StoreError};

/// The key a repository was opened with.
#[derive(Clone)]
pub enum Access {
    /// Can read and write.
    Master(MasterKey),
    /// Put-only: can add backups, cannot read any.
    Write(WriteKey),
}

impl Access {
    pub fn write_key(&self) -> &WriteKey {
        match self {
            Access::Master(m) => &m.write,
            Access::Write(w) => w,
        }
    }

    pub fn master(&self) -> Result<&MasterKey> {
        match self {
            Access::Master(m) => Ok(m),
            Access::Write(_) => Err(StoreError::NeedsMasterKey),
        }
    }
}

/// The snapshots of a repository, oldest first, and why any could not be read.
#[derive(Debug, Default)]
pub struct SnapshotList {
    pub snapshots: Vec<(SnapshotId, Snapshot)>,
    pub problems: Vec<String>,
}

/// What [`Repository::save_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaveOutcome {
    pub id: BlobId,
    /// Bytes added to the repository (0 when deduplicated).
    pub stored: u64,
}

/// Counters of what this handle wrote.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub blobs_new: AtomicU64,
    pub data_blobs_new: AtomicU64,
    pub blobs_deduped: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub packs: AtomicU64,
}

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    access: Access,
    index: RwLock<Blobs>,
    /// Set once the index segments have been read (lazily: a backup in which nothing
    /// changed never needs them).
    index_loaded: OnceLock<Result<(), String>>,
    /// Blobs sealed into open packs, not yet in the index.
    pending: Mutex<HashSet<BlobId>>,
    /// Open packs: data, trees, and the mirror copies of trees.
    pools: [PackPool; 3],
    /// Packs written since the last index segment.
    unindexed: Mutex<Vec<(PackId, Vec<PackEntry>)>>,
    pack_keys: Mutex<HashMap<PackId, SymmetricKey>>,
    /// The key from each pack's blob table, read when the prefix's key failed (`None`: the
    /// table gave none).
    table_keys: Mutex<HashMap<PackId, Option<SymmetricKey>>>,
    /// Held while the index is read from the segments in place of a local file that missed a
    /// blob (once per handle; `true` once done).
    index_fallback: Mutex<bool>,
    index_warnings: Mutex<Vec<String>>,
    /// Index segments this handle read or wrote: if garbage collection removes one, what
    /// this handle deduplicated against may be marked for deletion.
    segments_used: Mutex<HashSet<Digest>>,
    /// A pack this handle wrote was marked or deleted by garbage collection before it could
    /// be indexed (the process slept past its session's expiry): nothing it saved may be
    /// committed.
    poisoned: std::sync::atomic::AtomicBool,
    compression_level: i32,
    /// Recovery shards written with each pack (0: none).
    parity: u16,
    /// Where open packs are spooled (asked of the storage once).
    spool: OnceLock<Option<std::path::PathBuf>>,
    /// This machine's cache of tree blobs (remote repositories).
    tree_cache: OnceLock<crate::tree_cache::TreeCache>,
    /// Every indexed copy of each tree, read from the segments the first time a tree's
    /// indexed copy fails (the index offers one location per blob; trees have two).
    tree_copies: OnceLock<HashMap<BlobId, Vec<BlobLocation>>>,
    /// Trees read from their second copy because the first failed (for the caller's report).
    tree_fallbacks: Mutex<Vec<String>>,
    pub stats: WriteStats,
}

/// Open packs of one blob kind. At most [`MAX_OPEN_PACKS`] exist at once (in memory; more
/// when spooled to files, [`MAX_SPOOLED_PACKS`]), so memory for
/// packs stays bounded however many threads save blobs; a writer waits for a free one.
#[derive(Default)]
struct PackPool {
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    free: Vec<PackBuilder>,
    open: usize,
    /// Writers waiting for a pack: only then is the condvar signalled (each signal is a
    /// system call).
    waiting: usize,
}

const MAX_OPEN_PACKS: usize = 2;
/// Spooled packs cost no memory: enough that writers seldom wait while one is written.
const MAX_SPOOLED_PACKS: usize = 4;

impl PackPool {
    /// A free open pack, a new one if fewer than the limit exist, else waits for one.
    fn take(&self, limit: usize, new: impl Fn() -> Result<PackBuilder>) -> Result<PackBuilder> {
        let mut st = lock(&self.state);
        let me = std::thread::current().id();
        loop {
            // The pack this thread filled last, if free: consecutive chunks of one file then
            // lie one after another in one pack, and a restore reads them with one request.
            let mine = st.free.iter().rposition(|b| b.last_writer == Some(me));
            if let Some(b) = mine.map(|i| st.free.swap_remove(i)).or_else(|| st.free.pop()) {
                return Ok(b);
            }
            if st.open < limit {
                st.open += 1;
                drop(st);
                let made = new();
                if made.is_err() {
                    self.release_slot();
                }
                return made;
            }
            st.waiting += 1;
            st = self.freed.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
            st.waiting -= 1;
        }
    }

    fn give_back(&self, b: PackBuilder) {
        let mut st = lock(&self.state);
        st.free.push(b);
        let wake = st.waiting > 0;
        drop(st);
        if wake {
            self.freed.notify_one();
        }
    }

    /// A pack was finished (or failed): its slot is free for a new one.
    fn release_slot(&self) {
        let mut st = lock(&self.state);
        st.open = st.open.saturating_sub(1);
        let wake = st.waiting > 0;
        drop(st);
        if wake {
            self.freed.notify_one();
        }
    }

    /// Takes every free open pack (call when no writer is active).
    fn drain(&self) -> Vec<PackBuilder> {
        let mut st = lock(&self.state);
        let out = std::mem::take(&mut st.free);
        st.open = st.open.saturating_sub(out.len());
        drop(st);
        self.freed.notify_all();
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A blob's sealed bytes within a whole pack held in memory.
fn sealed_in<'a>(path: &str, entry: &PackEntry, pack_bytes: &'a [u8]) -> Result<&'a [u8]> {
    let start = entry.offset as usize;
    pack_bytes
        .get(start..start.saturating_add(entry.length as usize))
        .ok_or_else(|| StoreError::corrupt(path, format!("blob {} lies past the end", entry.id.short())))
}

/// The object path of a pack.
pub fn pack_path(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{}", hex.get(..2).unwrap_or("00"), hex)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Repository {
    /// Creates a repository: a new master key sealed under `passphrase`, then `config.mirror`
    /// and `config` (written last: its presence is what makes the folder a repository).
    pub fn init(backend: Arc<dyn Backend>, passphrase: &[u8], kdf: KdfParams, chunker: ChunkerParams) -> Result<Self> {
        Self::init_with_pack_size(backend, passphrase, kdf, chunker, 16 << 20)
    }

    /// As [`Repository::init`], with a target pack size in bytes (small packs are for tests).
    pub fn init_with_pack_size(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        kdf: KdfParams,
        chunker: ChunkerParams,
        pack_size: u32,
    ) -> Result<Self> {
        if backend.get("config").is_ok() || backend.get("config.mirror").is_ok() {
            return Err(StoreError::AlreadyExists { path: backend.location() });
        }
        chunker.check().map_err(|e| StoreError::corrupt("config", e))?;
        let master = MasterKey::generate()?;
        // Two independently sealed key files (own salt and nonce): one rotted key file must
        // not lock the owner out.
        for _ in 0..2 {
            let key_file = seal_key_file(&master, passphrase, kdf)?;
            backend.put(&format!("keys/{}", bakare_crypto::checksum(&key_file)), &key_file)?;
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| bakare_crypto::CryptoError::Random(e.to_string()))?;
        let config = Config {
            id,
            chunker,
            data_public: master.write.data_public.0,
            pack_size: pack_size.max(64 << 10),
            created_ns: now_ns(),
        };
        let bytes = config.encode()?;
        backend.put("config.mirror", &bytes)?;
        backend.put("config", &bytes)?;
        Ok(Self::new(backend, config, Access::Master(master)))
    }

    /// Reads `config`, falling back to `config.mirror` if it is missing or damaged.
    pub fn read_config(backend: &dyn Backend) -> Result<Config> {
        let primary = backend.get("config").map_err(StoreError::from).and_then(|b| Config::decode("config", &b));
        match primary {
            Ok(c) => Ok(c),
            Err(e @ StoreError::NewerFormat { .. }) => Err(e),
            Err(first) => match backend.get("config.mirror") {
                Ok(b) => Config::decode("config.mirror", &b),
                Err(e) if e.is_not_found() && matches!(first, StoreError::Backend(ref b) if b.is_not_found()) => {
                    Err(StoreError::NotARepository { path: backend.location() })
                }
                Err(_) => Err(first),
            },
        }
    }

    /// Opens with a passphrase, trying each key file.
    pub fn open_with_passphrase(backend: Arc<dyn Backend>, passphrase: &[u8]) -> Result<Self> {
        let config = Self::read_config(backend.as_ref())?;
        let mut last = StoreError::WrongPassphrase;
        for path in backend.list("keys")? {
            let Some(name) = id_of_path(&path) else { continue };
            let bytes = match get_verified(backend.as_ref(), &path, &name) {
                Ok(b) => b,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match open_key_file(&bytes, passphrase) {
                Ok(master) => return Self::with_key(backend, config, Access::Master(master)),
                Err(bakare_crypto::CryptoError::WrongPassphrase) => {}
                Err(e) => last = StoreError::crypto(path, e),
            }
        }
        Err(last)
    }

    /// Opens with a key already in hand (master or put-only).
    pub fn open_with_key(backend: Arc<dyn Backend>, access: Access) -> Result<Self> {
        let config = Self::read_config(backend.as_ref())?;
        Self::with_key(backend, config, access)
    }

    fn with_key(backend: Arc<dyn Backend>, config: Config, access: Access) -> Result<Self> {
        let key_public = access.write_key().data_public;
        // A stale or foreign `config` that still decodes: the mirror may be the right one.
        let config = if key_public == config.data_public() {
            config
        } else {
            match backend.get("config.mirror").map(|b| Config::decode("config.mirror", &b)) {
                Ok(Ok(mirror)) if mirror.data_public() == key_public => mirror,
                _ => config,
            }
        };
        if key_public != config.data_public() {
            return Err(StoreError::KeyMismatch {
                expected: config.data_public().fingerprint(),
                found: key_public.fingerprint(),
            });
        }
        Ok(Self::new(backend, config, access))
    }

    fn new(backend: Arc<dyn Backend>, config: Config, access: Access) -> Self {
        Self {
            backend,
            config,
            access,
            index: RwLock::default(),
            index_loaded: OnceLock::new(),
            pending: Mutex::default(),
            pools: [PackPool::default(), PackPool::default(), PackPool::default()],
            unindexed: Mutex::default(),
            pack_keys: Mutex::default(),
            index_warnings: Mutex::default(),
            segments_used: Mutex::default(),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            compression_level: 1,
            parity: 0,
            spool: OnceLock::new(),
            tree_cache: OnceLock::new(),
            tree_copies: OnceLock::new(),
            table_keys: Mutex::default(),
            index_fallback: Mutex::new(false),
            tree_fallbacks: Mutex::default(),
            stats: WriteStats::default(),
        }
    }

    /// A new handle on the same repository, with the same key and settings and nothing
    /// loaded or pending: what a backup continues with after garbage collection ran under it.
    pub fn reopen(&self) -> Self {
        let mut fresh = Self::new(self.backend.clone(), self.config.clone(), self.access.clone());
        fresh.compression_level = self.compression_level;
        fresh.parity = self.parity;
        if let Ok(index) = self.index.read()
            && let Blobs::Disk(disk) = &*index
        {
            // The same local file, brought up to date when the fresh handle loads its index.
            fresh.index = RwLock::new(Blobs::Disk(disk.share()));
        }
        fresh
    }

    /// The index segments this handle read or wrote.
    pub fn segments_used(&self) -> HashSet<Digest> {
        lock(&self.segments_used).clone()
    }

    /// Whether garbage collection took a pack from under this handle (see [`Repository::flush`]).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static PROBE: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// Whether a large chunk looks incompressible: three 8 KiB samples (start, middle, end)
/// compressed at zstd's fastest level shrink by less than 3 %. Costs about 1/40 of
/// compressing the chunk, which random or already-compressed data would not repay.
fn looks_incompressible(data: &[u8]) -> bool {
    const PART: usize = 8 << 10;
    if data.len() < 16 * PART {
        return false;
    }
    let mid = data.len() / 2;
    let mut sample = Vec::with_capacity(3 * PART);
    for start in [0, mid - PART / 2, data.len() - PART] {
        sample.extend_from_slice(data.get(start..start + PART).unwrap_or_default());
    }
    PROBE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(1).ok();
        }
        let Some(c) = slot.as_mut() else { return false };
        c.compress(&sample).is_ok_and(|out| out.len() * 100 >= sample.len() * 97)
    })
}

/// zstd-compresses `data`; `None` when that does not make it smaller (or a sample says it
/// would not).
fn compress(level: i32, data: &[u8]) -> Option<Vec<u8>> {
    if level == 0 || data.len() < 64 || looks_incompressible(data) {
        return None;
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        let (_, c) = slot.as_mut()?;
        let out = c.compress(data).ok()?;
        (out.len() + 16 < data.len()).then_some(out)
    })
}

impl Repository {
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// zstd level for new blobs; 0 stores them uncompressed.
    pub fn set_compression_level(&mut self, level: i32) {
        self.compression_level = level;
    }

    /// Writes Reed-Solomon parity with every pack from now on: `recovery` shards of 1/64 of
    /// the pack each (see [`crate::parity`]); 0 for none.
    pub fn set_parity(&mut self, recovery: u16) {
        self.parity = recovery.min(crate::parity::MAX_RECOVERY);
    }

    /// Loads every index segment (once; later calls return the first outcome). A damaged
    /// segment is skipped and reported in [`Repository::index_warnings`]: its blobs are then
    /// saved again if needed. Everything that needs the index loads it on first use.
    pub fn load_index(&self) -> Result<()> {
        self.index_loaded
            .get_or_init(|| self.read_index().map_err(|e| e.to_string()))
            .clone()
            .map_err(|reason| StoreError::Corrupt { object: "index".into(), reason })
    }

    /// Reads and authenticates the index segment at `path`.
    fn read_segment(&self, path: &str) -> Result<IndexSegment> {
        get_named(self.backend.as_ref(), path)
            .and_then(|b| IndexSegment::decode(path, &b, &self.access.write_key().index_key))
    }

    /// The index the segments at `paths` make, in memory; each segment read is recorded as
    /// used, each unreadable one as a warning.
    fn memory_index(&self, paths: &[String]) -> Blobs {
        let mut index = Blobs::default();
        for path in paths {
            match self.read_segment(path) {
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
                Err(e) => lock(&self.index_warnings).push(e.to_string()),
            }
        }
        index
    }

    fn read_index(&self) -> Result<()> {
        let paths = self.backend.list("index")?;
        let read = |path: &str| self.read_segment(path);
        let mut current = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Blobs::Disk(disk) = &mut *current {
            // A damaged file can make redb panic: that is one more way for it to fail.
            let synced =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sync_disk_index(disk, &paths, read)))
                    .unwrap_or_else(|_| {
                        Err(redb::Error::Corrupted(format!("{} made redb panic", disk.path().display())))
                    });
            if synced.is_err() {
                let _ = std::fs::remove_file(disk.path());
            }
            match synced {
                Ok(()) => return Ok(()),
                // The local file failed: this run reads the index into memory (below, with
                // this handle's pending blobs carried over as for any handle).
                Err(e) => lock(&self.index_warnings)
                    .push(format!("local index file unusable ({e}); reading the index into memory")),
            }
        }
        let mut index = self.memory_index(&paths);
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
        disk: &mut DiskIndex,
        paths: &[String],
        read: impl Fn(&str) -> Result<IndexSegment>,
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
            match read(path) {
                Ok(seg) => {
                    held.insert(*id);
                    batch.push((*id, seg));
                }
                Err(e) => {
                    lock(&self.index_warnings).push(e.to_string());
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

    /// Keeps the blob index in a local redb file at `path` (with a cache of `cache_bytes`)
    /// instead of memory. Call before anything reads the index; if the file cannot be
    /// opened (another process has it, or it is damaged), the index stays in memory and the
    /// reason is returned.
    pub fn use_local_index(&self, path: &std::path::Path, cache_bytes: usize) -> std::result::Result<(), String> {
        let check = self.access.write_key().id_key.id(b"bakare local blob index v1");
        // A damaged file may make redb panic rather than fail: caught, it is damage too.
        let open = || {
            std::panic::catch_unwind(|| DiskIndex::open(path, cache_bytes, &check))
                .unwrap_or_else(|_| Err(redb::Error::Corrupted(format!("{} made redb panic", path.display()))))
        };
        let disk = match open() {
            Ok(d) => d,
            Err(redb::Error::DatabaseAlreadyOpen) => return Err("in use by another bakare process".into()),
            Err(e) => {
                // Damaged: start it anew.
                let _ = std::fs::remove_file(path);
                open().map_err(|e2| format!("{e}; then {e2}"))?
            }
        };
        let mut current = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut swapped = Blobs::Disk(disk);
        for loc in current.pending() {
            swapped.insert(loc.pack, &loc.entry);
        }
        *current = swapped;
        Ok(())
    }

    /// The ids of the index segments in the repository, without reading them.
    pub fn index_segments(&self) -> Result<Vec<Digest>> {
        Ok(self.backend.list("index")?.iter().filter_map(|p| id_of_path(p)).collect())
    }

    pub fn index_warnings(&self) -> Vec<String> {
        lock(&self.index_warnings).clone()
    }

    /// Number of blobs in the loaded index.
    pub fn index_len(&self) -> usize {
        self.index.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId(self.access.write_key().id_key.id(data))
    }

    /// Blobs this handle saved that no written index segment lists yet (sealed into open
    /// packs, or in packs written since the last flush).
    pub fn not_yet_indexed(&self) -> HashSet<BlobId> {
        let mut out: HashSet<BlobId> = lock(&self.pending).iter().copied().collect();
        for (_, entries) in lock(&self.unindexed).iter() {
            out.extend(entries.iter().map(|e| e.id));
        }
        out
    }

    /// Whether a blob is in a written pack that a written index segment lists: what may be
    /// remembered across runs. `unindexed` is [`Repository::not_yet_indexed`].
    pub fn is_durable(&self, id: &BlobId, unindexed: &HashSet<BlobId>) -> bool {
        !unindexed.contains(id) && self.index.read().map(|m| m.contains(id)).unwrap_or(false)
    }

    /// Whether the repository has the blob (loading the index if needed).
    pub fn contains_blob(&self, id: &BlobId) -> Result<bool> {
        self.load_index()?;
        Ok(self.index.read().map(|m| m.contains(id)).unwrap_or(false) || lock(&self.pending).contains(id))
    }

    /// Stores a blob unless the repository already has it.
    pub fn save_blob(&self, kind: BlobKind, data: &[u8]) -> Result<SaveOutcome> {
        let id = self.blob_id(data);
        self.save_blob_with_id(kind, id, data)
    }

    /// As [`Repository::save_blob`], with the id already computed by the caller.
    pub fn save_blob_with_id(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<SaveOutcome> {
        let raw_len = u32::try_from(data.len()).ok().filter(|&l| l <= MAX_BLOB_LEN).ok_or_else(|| {
            StoreError::corrupt(format!("blob {}", id.short()), format!("{} bytes exceed the blob limit", data.len()))
        })?;
        // A tree is small: storing one twice costs less than reading the whole index to find
        // out (a backup in which nothing changed still writes the trees of the folders above
        // its sources, whose mtimes change). Trees use the index only once it is loaded.
        if kind == BlobKind::Data {
            self.load_index()?;
        }
        let known = self.index.read().map(|m| m.contains(&id)).unwrap_or(false);
        if known || !lock(&self.pending).insert(id) {
            self.stats.blobs_deduped.fetch_add(1, Ordering::Relaxed);
            return Ok(SaveOutcome { id, stored: 0 });
        }
        let result = self.seal_into_pack(kind, id, raw_len, data);
        if result.is_err() {
            lock(&self.pending).remove(&id);
        }
        let stored = result?;
        self.stats.blobs_new.fetch_add(1, Ordering::Relaxed);
        if kind == BlobKind::Data {
            self.stats.data_blobs_new.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.bytes_stored.fetch_add(stored, Ordering::Relaxed);
        Ok(SaveOutcome { id, stored })
    }

    /// Stores a blob even if the index says the repository has it (repair: the indexed copy
    /// is damaged).
    pub fn save_blob_again(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<SaveOutcome> {
        let raw_len = self.checked_raw_len(id, data)?;
        lock(&self.pending).insert(id);
        let stored = self.seal_into_pack(kind, id, raw_len, data)?;
        self.stats.bytes_stored.fetch_add(stored, Ordering::Relaxed);
        Ok(SaveOutcome { id, stored })
    }

    /// Stores one more copy of a tree, in the trees' pool or (`mirror`) the mirrors' pool
    /// only: a repack replaces the copy of one pack, and the tree's other copy stays where
    /// it is (each tree keeps two copies, in two packs).
    pub fn save_tree_copy(&self, id: BlobId, data: &[u8], mirror: bool) -> Result<SaveOutcome> {
        let raw_len = self.checked_raw_len(id, data)?;
        lock(&self.pending).insert(id);
        let compressed = compress(self.compression_level, data);
        let payload = compressed.as_deref().unwrap_or(data);
        let pool = self.pools.get(if mirror { 2 } else { 1 }).ok_or_else(|| StoreError::corrupt("pools", "missing"))?;
        let stored = self.seal_into(pool, BlobKind::Tree, id, raw_len, compressed.is_some(), payload)?;
        self.stats.bytes_stored.fetch_add(stored, Ordering::Relaxed);
        Ok(SaveOutcome { id, stored })
    }

    /// The length of a blob given with its id, once checked that it is that blob's and not
    /// over the limit.
    fn checked_raw_len(&self, id: BlobId, data: &[u8]) -> Result<u32> {
        if self.blob_id(data) != id {
            return Err(StoreError::corrupt(format!("blob {}", id.short()), "content does not match its id"));
        }
        u32::try_from(data.len()).ok().filter(|&l| l <= MAX_BLOB_LEN).ok_or_else(|| {
            StoreError::corrupt(format!("blob {}", id.short()), format!("{} bytes exceed the blob limit", data.len()))
        })
    }

    /// The pools a blob of `kind` is sealed into: trees go into two different packs, so one
    /// damaged pack never loses a folder listing.
    fn pools_for(&self, kind: BlobKind) -> &[PackPool] {
        match kind {
            BlobKind::Data => self.pools.get(..1).unwrap_or_default(),
            BlobKind::Tree => self.pools.get(1..).unwrap_or_default(),
        }
    }

    fn seal_into_pack(&self, kind: BlobKind, id: BlobId, raw_len: u32, data: &[u8]) -> Result<u64> {
        let compressed = compress(self.compression_level, data);
        let payload = compressed.as_deref().unwrap_or(data);
        let mut stored = 0;
        for pool in self.pools_for(kind) {
            stored += self.seal_into(pool, kind, id, raw_len, compressed.is_some(), payload)?;
        }
        Ok(stored)
    }

    fn seal_into(
        &self,
        pool: &PackPool,
        kind: BlobKind,
        id: BlobId,
        raw_len: u32,
        compressed: bool,
        payload: &[u8],
    ) -> Result<u64> {
        let target = self.config.pack_size as usize;
        let limit = if self.spool_dir().is_some() {
            self.backend.parallel_writes().max(MAX_SPOOLED_PACKS)
        } else {
            MAX_OPEN_PACKS
        };
        let mut builder = pool.take(limit, || self.new_pack(target + target / 8))?;
        builder.last_writer = Some(std::thread::current().id());
        let stored = match builder.add(id, kind, compressed, raw_len, payload) {
            Ok(s) => s,
            Err(e) => {
                pool.give_back(builder);
                return Err(e);
            }
        };
        if builder.len() >= target {
            let written = self.write_pack(builder);
            pool.release_slot();
            written?;
        } else {
            pool.give_back(builder);
        }
        Ok(u64::from(stored))
    }

    /// Where open packs are spooled, asked of the storage once.
    fn spool_dir(&self) -> Option<&std::path::Path> {
        self.spool.get_or_init(|| self.backend.spool_dir()).as_deref()
    }

    /// A new open pack: spooled to a file where the storage offers a folder for it, so that
    /// open packs cost no memory, else in memory.
    fn new_pack(&self, capacity: usize) -> Result<PackBuilder> {
        let key = self.access.write_key();
        match self.spool_dir() {
            Some(dir) => {
                static N: AtomicU64 = AtomicU64::new(0);
                let name =
                    format!(".tmp-spool-{}-{}-{}", std::process::id(), now_ns(), N.fetch_add(1, Ordering::Relaxed));
                PackBuilder::spooled(key, dir, &name)
            }
            None => PackBuilder::new(key, capacity),
        }
    }

    fn write_pack(&self, builder: PackBuilder) -> Result<()> {
        let (id, bytes, entries) = builder.finish(&self.access.write_key().index_key)?;
        let parity = match (&bytes, self.parity) {
            (_, 0) => None,
            (PackBytes::Memory(b), n) => Some(crate::parity::encode(b, n)?),
            (PackBytes::File(p), n) => {
                let whole = std::fs::read(p).map_err(|e| StoreError::Backend(BackendError::io(pack_path(&id), e)))?;
                Some(crate::parity::encode(&whole, n)?)
            }
        };
        match bytes {
            PackBytes::Memory(b) => self.backend.put(&pack_path(&id), &b)?,
            PackBytes::File(p) => self.backend.put_file(&pack_path(&id), &p)?,
        }
        if let Some(parity) = parity {
            // After the pack: a crash between the two leaves a pack without parity, no harm.
            self.backend.put(&crate::parity::parity_path(&id), &parity)?;
        }
        crate::failpoint::hit("after-pack");
        self.stats.packs.fetch_add(1, Ordering::Relaxed);
        // Listed as unindexed before it leaves `pending`, so that no reader of
        // `not_yet_indexed` ever sees it in neither.
        lock(&self.unindexed).push((id, entries.clone()));
        let mut index = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pending = lock(&self.pending);
        for e in &entries {
            index.insert(id, e);
            pending.remove(&e.id);
        }
        Ok(())
    }

    /// Writes every open pack, then one index segment for all packs written since the last
    /// flush. After this returns, every blob saved so far is durable and findable.
    pub fn flush(&self) -> Result<()> {
        for pool in &self.pools {
            for b in pool.drain().into_iter().filter(|b| !b.is_empty()) {
                self.write_pack(b)?;
            }
        }
        // The packs stay listed as unindexed until their segment is written.
        let packs = lock(&self.unindexed).clone();
        if packs.is_empty() {
            return Ok(());
        }
        // A pack garbage collection marked (or already deleted) while it was unindexed is
        // never indexed: a sweep may have decided to delete it. This happens only to a
        // process that slept past its session's expiry; what it saved is then void.
        let marked = crate::gc::marked_packs(self)?;
        let (packs, lost): (Vec<_>, Vec<_>) =
            packs.into_iter().partition(|(id, _)| !marked.contains(id) && self.backend.size(&pack_path(id)).is_ok());
        if !lost.is_empty() {
            self.poisoned.store(true, Ordering::Relaxed);
            let gone: HashSet<PackId> = lost.iter().map(|(id, _)| *id).collect();
            lock(&self.unindexed).retain(|(pack, _)| !gone.contains(pack));
        }
        if packs.is_empty() {
            return Ok(());
        }
        let written: HashSet<PackId> = packs.iter().map(|(id, _)| *id).collect();
        let segment = IndexSegment { packs };
        let (id, bytes) = segment.encode(&self.access.write_key().index_key)?;
        self.backend.put(&format!("index/{id}"), &bytes)?;
        lock(&self.segments_used).insert(id);
        lock(&self.unindexed).retain(|(pack, _)| !written.contains(pack));
        self.add_to_local_index(id, &segment);
        Ok(())
    }

    /// Moves a segment this handle wrote into the local index file, so that its blobs no
    /// longer take memory. If that fails they stay in memory: still correct.
    fn add_to_local_index(&self, id: Digest, segment: &IndexSegment) {
        let mut index = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Blobs::Disk(disk) = &mut *index {
            let added = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                disk.add_segments(&[(id, segment.packs.as_slice())]).map_err(|e| e.to_string())
            }))
            .unwrap_or_else(|_| Err("redb panicked writing it".into()));
            if let Err(e) = added {
                lock(&self.index_warnings).push(format!("local index file: {e}"));
            }
        }
    }

    fn pack_key(&self, pack: &PackId) -> Result<SymmetricKey> {
        if let Some(k) = lock(&self.pack_keys).get(pack) {
            return Ok(k.clone());
        }
        let path = pack_path(pack);
        let prefix = self.backend.get_range(&path, 0, PACK_PREFIX_LEN as u64)?;
        let key = self.derive_pack_key(&path, &pack_ephemeral(&path, &prefix)?)?;
        lock(&self.pack_keys).insert(*pack, key.clone());
        Ok(key)
    }

    fn derive_pack_key(&self, path: &str, eph: &EphemeralPublic) -> Result<SymmetricKey> {
        self.access.master()?.data_secret.recover(eph, PACK_PURPOSE).map_err(|e| StoreError::crypto(path, e))
    }

    /// Reads one blob at a location, and if the pack's key fails, tries the key derived from
    /// `alternate` (the blob table's copy of the ephemeral key, for when the pack's first
    /// bytes are damaged).
    pub fn load_blob_trying(&self, loc: &BlobLocation, alternate: Option<&PackTable>) -> Result<Vec<u8>> {
        self.access.master()?;
        let path = pack_path(&loc.pack);
        let sealed = self.backend.get_range(&path, u64::from(loc.entry.offset), u64::from(loc.entry.length))?;
        self.open_trying(&path, &loc.entry, &sealed, alternate)
    }

    /// As [`Repository::open_blob_in`], trying the table's key copy when the pack's fails.
    pub fn open_blob_in_trying(
        &self,
        pack: &PackId,
        entry: &PackEntry,
        bytes: &[u8],
        alternate: Option<&PackTable>,
    ) -> Result<Vec<u8>> {
        let path = pack_path(pack);
        self.open_trying(&path, entry, sealed_in(&path, entry, bytes)?, alternate)
    }

    fn open_trying(
        &self,
        path: &str,
        entry: &PackEntry,
        sealed: &[u8],
        alternate: Option<&PackTable>,
    ) -> Result<Vec<u8>> {
        let first = self.open_blob(path, entry, sealed);
        match alternate {
            Some(table) if first.is_err() => {
                let key = self.derive_pack_key(path, &table.ephemeral)?;
                self.open_sealed(path, &key, entry, sealed).or(first)
            }
            _ => first,
        }
    }

    /// Where a blob is, if the (loaded) index has it. A blob the local index file does not
    /// find may be the file's damage, not the repository's: the index is then read from the
    /// repository's segments into memory (once per handle), the file removed (the next run
    /// builds it again), and the blob looked up there.
    pub fn blob_location(&self, id: &BlobId) -> Option<BlobLocation> {
        self.load_index().ok()?;
        let found = self.index.read().ok().and_then(|m| m.get(id));
        if found.is_some() || !self.index_from_segments(id) {
            return found;
        }
        self.index.read().ok().and_then(|m| m.get(id))
    }

    /// Replaces a local index file by the index read into memory; whether it did (`false`
    /// when the index is in memory already, or reading it failed). The file is removed only
    /// if the repository's index has `missed`, which the file did not find.
    fn index_from_segments(&self, missed: &BlobId) -> bool {
        // One thread reads the segments; the others wait and look again.
        let mut done = lock(&self.index_fallback);
        if *done {
            return true;
        }
        *done = true;
        let path = match self.index.read() {
            Ok(i) => match i.disk_path() {
                Some(p) => p.to_path_buf(),
                None => return false,
            },
            Err(_) => return false,
        };
        let Ok(paths) = self.backend.list("index") else { return false };
        let mut index = self.memory_index(&paths);
        let mut current = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for loc in current.pending() {
            index.insert(loc.pack, &loc.entry);
        }
        let file_was_wrong = index.contains(missed);
        *current = index;
        if !file_was_wrong {
            return true;
        }
        let _ = std::fs::remove_file(&path);
        lock(&self.index_warnings).push(format!(
            "the local index file {} missed a blob the repository has: read the index from the repository instead \
             (the file is built again next time)",
            path.display()
        ));
        true
    }

    /// Reads `len` bytes of a pack at `offset` (several adjacent blobs at once).
    /// A pack's size in bytes, as the storage says.
    pub fn pack_size(&self, pack: &PackId) -> Result<u64> {
        Ok(self.backend.size(&pack_path(pack))?)
    }

    pub fn read_pack_range(&self, pack: &PackId, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.access.master()?;
        Ok(self.backend.get_range(&pack_path(pack), offset, len)?)
    }

    /// Reads, authenticates, decompresses and re-hashes one blob.
    pub fn load_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        self.access.master()?;
        let loc = self.blob_location(id).ok_or_else(|| StoreError::UnknownBlob(id.to_hex()))?;
        let Some(cache) = self.tree_cache.get().filter(|_| loc.entry.kind == BlobKind::Tree) else {
            return self.load_blob_at(&loc);
        };
        let path = pack_path(&loc.pack);
        let key = crate::tree_cache::key(&loc.pack, loc.entry.offset);
        // A cached copy is checked like a download; one that fails is read again.
        if let Some(sealed) = cache.get(&key)
            && let Ok(plain) = self.open_blob(&path, &loc.entry, &sealed)
        {
            return Ok(plain);
        }
        let sealed = self.backend.get_range(&path, u64::from(loc.entry.offset), u64::from(loc.entry.length))?;
        let plain = self.open_blob(&path, &loc.entry, &sealed)?;
        cache.put(key, &sealed);
        Ok(plain)
    }

    /// Keeps tree blobs read from the repository in `path` (a file of this machine's cache
    /// folder), for repositories on remote storage. Not for `verify`, which always reads the
    /// repository.
    pub fn use_tree_cache(&self, path: &std::path::Path) -> std::result::Result<(), String> {
        let cache = crate::tree_cache::TreeCache::open(path).map_err(|e| e.to_string())?;
        let _ = self.tree_cache.set(cache);
        Ok(())
    }

    /// Reads one blob at a given location (verify and repair try every known copy).
    pub fn load_blob_at(&self, loc: &BlobLocation) -> Result<Vec<u8>> {
        self.access.master()?;
        let path = pack_path(&loc.pack);
        let sealed = self.backend.get_range(&path, u64::from(loc.entry.offset), u64::from(loc.entry.length))?;
        self.open_blob(&path, &loc.entry, &sealed)
    }

    /// Opens a blob from a pack's bytes already in memory (whole-pack reads of verify).
    pub fn open_blob_in(&self, pack: &PackId, entry: &PackEntry, pack_bytes: &[u8]) -> Result<Vec<u8>> {
        let path = pack_path(pack);
        self.open_blob(&path, entry, sealed_in(&path, entry, pack_bytes)?)
    }

    fn open_blob(&self, path: &str, entry: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>> {
        let pack = id_of_path(path).map(PackId).ok_or_else(|| StoreError::corrupt(path, "bad pack name"))?;
        let first = self.pack_key(&pack).and_then(|key| self.open_sealed(path, &key, entry, sealed));
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
                    let k = read_pack_table(self.backend.as_ref(), path, &self.access.write_key().index_key)
                        .and_then(|table| self.derive_pack_key(path, &table.ephemeral))
                        .ok();
                    keys.insert(pack, k.clone());
                    k
                }
            }
        };
        match table_key.and_then(|key| self.open_sealed(path, &key, entry, sealed).ok().map(|plain| (key, plain))) {
            Some((key, plain)) => {
                lock(&self.pack_keys).insert(pack, key);
                Ok(plain)
            }
            None => first,
        }
    }

    fn open_sealed(&self, path: &str, key: &SymmetricKey, entry: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>> {
        let name = || format!("blob {} in {path}", entry.id.short());
        let plain = key.open(&entry.aad(), sealed).map_err(|e| StoreError::crypto(name(), e))?;
        let data = if entry.compressed {
            zstd::bulk::decompress(&plain, entry.raw_len as usize)
                .map_err(|e| StoreError::corrupt(name(), e.to_string()))?
        } else {
            plain
        };
        if data.len() != entry.raw_len as usize || self.blob_id(&data) != entry.id {
            return Err(StoreError::corrupt(name(), "content does not match its id"));
        }
        Ok(data)
    }

    pub fn save_tree(&self, tree: &Tree) -> Result<SaveOutcome> {
        self.save_blob(BlobKind::Tree, &tree.encode()?)
    }

    /// Loads a tree; when its indexed copy is damaged or missing, from its other copy (every
    /// tree is written to two packs), so that readers ride over what repair would fix.
    pub fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        let name = format!("tree {}", id.short());
        let first = match self.load_blob(id).and_then(|b| Tree::decode(&name, &b)) {
            Ok(tree) => return Ok(tree),
            Err(StoreError::NeedsMasterKey) => return Err(StoreError::NeedsMasterKey),
            Err(e) => e,
        };
        let tried = self.blob_location(id).map(|l| l.pack);
        let copies = self.tree_copies().get(id).cloned().unwrap_or_default();
        for loc in copies.iter().filter(|l| Some(l.pack) != tried) {
            if let Ok(tree) = self.load_blob_at(loc).and_then(|b| Tree::decode(&name, &b)) {
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
    pub fn take_tree_fallbacks(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.tree_fallbacks))
    }

    fn tree_copies(&self) -> &HashMap<BlobId, Vec<BlobLocation>> {
        self.tree_copies.get_or_init(|| {
            let mut copies: HashMap<BlobId, Vec<BlobLocation>> = HashMap::new();
            for path in self.backend.list("index").unwrap_or_default() {
                let Ok(seg) = self.read_segment(&path) else { continue };
                for (pack, entries) in seg.packs {
                    for e in entries.into_iter().filter(|e| e.kind == BlobKind::Tree) {
                        copies.entry(e.id).or_default().push(BlobLocation { pack, entry: e });
                    }
                }
            }
            copies
        })
    }

    /// Writes a snapshot (its mirror first). Call [`Repository::flush`] before.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId> {
        self.save_snapshot_after(snapshot, |_| Ok(()))
    }

    /// As [`Repository::save_snapshot`], calling `before` with the snapshot's id before
    /// anything is written (a backup records it in its session first).
    pub fn save_snapshot_after(
        &self,
        snapshot: &Snapshot,
        before: impl FnOnce(&SnapshotId) -> Result<()>,
    ) -> Result<SnapshotId> {
        let (id, bytes) = snapshot.encode(self.access.write_key())?;
        before(&id)?;
        self.backend.put(&format!("snapshots.mirror/{id}"), &bytes)?;
        self.backend.put(&format!("snapshots/{id}"), &bytes)?;
        Ok(id)
    }

    /// Whether `snapshots/<id>` or its mirror exists (needs no key).
    pub fn snapshot_exists(&self, id: &SnapshotId) -> Result<bool> {
        for dir in ["snapshots", "snapshots.mirror"] {
            match self.backend.size(&format!("{dir}/{id}")) {
                Ok(_) => return Ok(true),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    /// Every readable snapshot, oldest first, and a message for each that could be read from
    /// neither its file nor its mirror.
    pub fn snapshots(&self) -> Result<SnapshotList> {
        let master = self.access.master()?;
        let mut ids: Vec<SnapshotId> = Vec::new();
        for dir in ["snapshots", "snapshots.mirror"] {
            ids.extend(self.backend.list(dir)?.iter().filter_map(|p| id_of_path(p)).map(SnapshotId));
        }
        ids.sort();
        ids.dedup();
        let mut out = Vec::new();
        let mut problems = Vec::new();
        // Remote storage answers slowly but in parallel: as many readers as connections.
        let readers = if self.backend.is_remote() { self.backend.parallel_writes().clamp(1, 16) } else { 1 };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let read: Vec<Vec<(SnapshotId, Result<Snapshot>)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..readers.min(ids.len()))
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                            mine.push((*id, self.read_snapshot(id, master)));
                        }
                        mine
                    })
                })
                .collect();
            // A reader that panicked takes the listing down with it, as it would on one
            // thread: a snapshot silently left out would look like garbage to a prune.
            workers.into_iter().map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        for (id, r) in read.into_iter().flatten() {
            match r {
                Ok(s) => out.push((id, s)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems.sort();
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        Ok(SnapshotList { snapshots: out, problems })
    }

    fn read_snapshot(&self, id: &SnapshotId, master: &MasterKey) -> Result<Snapshot> {
        let cache = self.tree_cache.get();
        let mut first_err = None;
        for dir in ["snapshots", "snapshots.mirror"] {
            let path = format!("{dir}/{id}");
            // A cached copy is checked like a download; one that fails is read again.
            if let Some(bytes) = cache.and_then(|c| c.get_object(&path))
                && let Ok(s) =
                    verify_name(&path, &bytes, id.digest()).and_then(|()| Snapshot::decode(&path, &bytes, master))
            {
                return Ok(s);
            }
            let read = get_verified(self.backend.as_ref(), &path, id.digest()).and_then(|b| {
                let s = Snapshot::decode(&path, &b, master)?;
                if let Some(c) = cache {
                    c.put_object(&path, &b);
                }
                Ok(s)
            });
            match read {
                Ok(s) => return Ok(s),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| StoreError::NoSuchSnapshot(id.to_hex())))
    }

    /// Resolves `latest`, `latest~N` or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        let mut all = self.snapshots()?.snapshots;
        if let Some(back) = spec.strip_prefix("latest") {
            let n: usize = match back.strip_prefix('~') {
                None if back.is_empty() => 0,
                Some(n) => n.parse().map_err(|_| StoreError::NoSuchSnapshot(spec.into()))?,
                None => return Err(StoreError::NoSuchSnapshot(spec.into())),
            };
            if all.is_empty() {
                return Err(StoreError::NoSnapshots);
            }
            let at = all.len().checked_sub(n + 1).ok_or_else(|| StoreError::NoSuchSnapshot(spec.into()))?;
            return Ok(all.swap_remove(at));
        }
        let spec_lc = spec.to_ascii_lowercase();
        if spec_lc.is_empty() || !spec_lc.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::NoSuchSnapshot(spec.into()));
        }
        let mut matches: Vec<_> = all.into_iter().filter(|(id, _)| id.to_hex().starts_with(&spec_lc)).collect();
        match matches.len() {
            0 => Err(StoreError::NoSuchSnapshot(spec.into())),
            1 => Ok(matches.remove(0)),
            count => Err(StoreError::AmbiguousSnapshot { spec: spec.into(), count }),
        }
    }

    /// Writes (or renews) a session record.
    pub fn put_session(&self, session: &Session) -> Result<()> {
        let bytes = session.encode(&self.access.write_key().index_key)?;
        Ok(self.backend.replace(&session.path(), &bytes)?)
    }

    pub fn remove_session(&self, session: &Session) -> Result<()> {
        Ok(self.backend.delete(&session.path())?)
    }

    /// Every readable session record, oldest first, and why any could not be read.
    pub fn sessions(&self) -> Result<(Vec<Session>, Vec<String>)> {
        let key = &self.access.write_key().index_key;
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for path in self.backend.list("sessions")? {
            match self.backend.get(&path).map_err(StoreError::from).and_then(|b| Session::decode(&path, &b, key)) {
                Ok(s) => out.push(s),
                Err(e) => problems.push(e.to_string()),
            }
        }
        out.sort_by_key(|s| (s.started_ns, s.id));
        Ok((out, problems))
    }

    /// Writes a checkpoint. Call after the flush that made its blobs durable.
    pub fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<String> {
        let (id, bytes) = checkpoint.encode(self.access.write_key())?;
        let path = format!("checkpoints/{id}");
        self.backend.put(&path, &bytes)?;
        Ok(path)
    }

    /// The checkpoints of one session, in order; damaged ones are skipped.
    pub fn checkpoints(&self, session: &[u8; 16]) -> Result<Vec<(String, Checkpoint)>> {
        let key = self.access.write_key();
        let mut out = Vec::new();
        for path in self.backend.list("checkpoints")? {
            let Some(id) = id_of_path(&path) else { continue };
            let Ok(bytes) = get_verified(self.backend.as_ref(), &path, &id) else { continue };
            match Checkpoint::decode_refs(&path, &bytes, &key.index_key) {
                Ok(r) if r.session == *session => {
                    if let Ok(c) = Checkpoint::decode(&path, &bytes, key) {
                        out.push((path, c));
                    }
                }
                _ => {}
            }
        }
        out.sort_by_key(|(_, c)| c.refs.seq);
        Ok(out)
    }

    /// Lists in a new index segment every pack that no segment lists: packs an interrupted
    /// backup wrote before it could index them. Their blobs then deduplicate. Packs that
    /// garbage collection marked stay out: only its sweep may put them back. Returns how many.
    pub fn adopt_orphan_packs(&self) -> Result<usize> {
        self.load_index()?;
        let mut known: HashSet<PackId> = self.index.read().map(|m| m.packs()).unwrap_or_default();
        known.extend(crate::gc::marked_packs(self)?);
        let key = &self.access.write_key().index_key;
        let mut orphans = Vec::new();
        for path in self.backend.list("packs")? {
            let Some(id) = id_of_path(&path).map(PackId) else { continue };
            if known.contains(&id) {
                continue;
            }
            // A pack whose table is damaged stays out; verify reports it.
            if let Ok(t) = read_pack_table(self.backend.as_ref(), &path, key) {
                orphans.push((id, t.entries));
            }
        }
        if orphans.is_empty() {
            return Ok(0);
        }
        let n = orphans.len();
        let segment = IndexSegment { packs: orphans };
        let (id, bytes) = segment.encode(key)?;
        self.backend.put(&format!("index/{id}"), &bytes)?;
        lock(&self.segments_used).insert(id);
        {
            let mut index = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (pack, entries) in &segment.packs {
                for e in entries {
                    index.insert(*pack, e);
                }
            }
        }
        self.add_to_local_index(id, &segment);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes no compressor can shrink: BLAKE3's output stream.
    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; n];
        blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
        out
    }

    #[test]
    fn incompressible_chunks_are_stored_as_they_are() {
        let random = pseudo_random(1 << 20, 5);
        assert!(looks_incompressible(&random));
        assert!(compress(3, &random).is_none());
        let text: Vec<u8> = b"the same words again and again, ".iter().copied().cycle().take(1 << 20).collect();
        assert!(!looks_incompressible(&text));
        assert!(compress(3, &text).is_some_and(|c| c.len() < text.len() / 10));
        // Random with a compressible stretch in the middle: the sample sees it.
        let mut mixed = random.clone();
        mixed[(1 << 19) - 8192..(1 << 19) + 8192].fill(b'a');
        assert!(!looks_incompressible(&mixed));
        // Small chunks are not sampled (compressing them costs little).
        assert!(!looks_incompressible(&random[..100_000]));
    }
}
