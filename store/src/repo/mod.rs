//! The repository handle: what a backup, a restore and maintenance hold. It is made of
//! parts with one job each, and its methods hand each call to the part that does it:
//!
//! - [`open`]: creating and opening (keys, `config`), giving a [`Core`]: the storage, the
//!   config and the key, which every part reads.
//! - [`index`]: where each blob is ([`BlobIndex`](index::BlobIndex)), read lazily from the
//!   index segments, in memory or through the local file.
//! - [`writer`]: saving blobs ([`BlobWriter`](writer::BlobWriter)): dedup → zstd → sealed
//!   into a bounded pool of open packs → a full pack written, then its blobs enter the index.
//!   [`Repository::flush`] writes the open packs and then one index segment covering every
//!   pack written since the last flush; only then may a snapshot that references them be
//!   written.
//! - [`reader`]: loading blobs ([`BlobReader`](reader::BlobReader)): authenticated,
//!   decompressed, re-hashed; trees from their second copy when the first fails.
//! - [`catalog`]: snapshots, session records and checkpoints.

mod catalog;
mod index;
mod open;
mod reader;
mod runs;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use bakare_crypto::{Digest, MasterKey, WriteKey};

use crate::backend::Backend;
use crate::budget::Budget;
use crate::format::config::Config;
use crate::format::index::{BlobLocation, IndexSegment};
use crate::format::pack::{PackEntry, PackTable};
use crate::format::snapshot::Snapshot;
use crate::format::tree::Tree;
use crate::ids::{BlobId, BlobKind, PackId, SnapshotId};
use crate::{Result, StoreError};
pub use catalog::{SnapshotFilter, holds};
use index::BlobIndex;
pub use open::KeyFileInfo;
use reader::BlobReader;
pub use runs::{SPAN, adjacent_run};
use writer::BlobWriter;
pub use writer::DEFAULT_COMPRESSION;

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

/// What every part of a handle reads: the storage, the repository's config and the key.
pub(crate) struct Core {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Config,
    pub(crate) access: Access,
}

impl Core {
    pub(crate) fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId(self.access.write_key().id_key.id(data))
    }
}

/// An open repository.
pub struct Repository {
    core: Core,
    index: BlobIndex,
    writer: BlobWriter,
    reader: BlobReader,
    /// Recent spans of packs a restore read (remote storage; see [`runs`]).
    spans: std::sync::OnceLock<runs::Spans>,
    /// The run's memory budget (the CLI hands down the one `--memory-limit` made).
    budget: Budget,
    /// How far a long maintenance run on this handle has come.
    progress: Arc<crate::progress::Progress>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    fn assemble(core: Core) -> Self {
        let writer = BlobWriter::new(DEFAULT_COMPRESSION);
        Self {
            core,
            index: BlobIndex::default(),
            writer,
            reader: BlobReader::default(),
            spans: std::sync::OnceLock::new(),
            budget: Budget::default(),
            progress: Arc::default(),
        }
    }

    /// A new handle on the same repository, with the same key and settings and nothing
    /// loaded or pending: what a backup continues with after garbage collection ran under it.
    pub fn reopen(&self) -> Self {
        let core = Core {
            backend: self.core.backend.clone(),
            config: self.core.config.clone(),
            access: self.core.access.clone(),
        };
        Self {
            core,
            index: self.index.share(),
            writer: self.writer.fresh(),
            reader: BlobReader::default(),
            spans: std::sync::OnceLock::new(),
            budget: self.budget.clone(),
            progress: self.progress.clone(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.core.config
    }

    pub fn access(&self) -> &Access {
        &self.core.access
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.core.backend
    }

    /// The memory budget this handle's reads and local files keep to.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Where long maintenance runs on this handle count their progress.
    pub fn progress(&self) -> &Arc<crate::progress::Progress> {
        &self.progress
    }

    /// Counts progress into `progress` (shared with whoever shows it).
    pub fn set_progress(&mut self, progress: Arc<crate::progress::Progress>) {
        self.progress = progress;
    }

    /// Sets the memory budget (before the index or any cache is used).
    pub fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    /// The content-defined chunker of this repository (its parameters and the seed derived
    /// from the key).
    pub fn chunker(&self) -> crate::Chunker {
        crate::Chunker::new(self.core.config.chunker, self.core.access.write_key().chunker_seed.0)
    }

    /// The keys of this machine's name index of the repository (needs the master key).
    pub fn name_sealer(&self) -> Result<crate::local::names::NameSealer> {
        Ok(crate::local::names::NameSealer::new(self.core.access.master()?))
    }

    /// Counters of what this handle wrote.
    pub fn stats(&self) -> &WriteStats {
        &self.writer.stats
    }

    /// zstd level for new blobs; 0 stores them uncompressed.
    pub fn set_compression_level(&mut self, level: i32) {
        self.writer.compression_level = level;
    }

    /// Writes Reed-Solomon parity with every pack from now on: `recovery` shards of 1/64 of
    /// the pack each (see [`crate::parity`]); 0 for none.
    pub fn set_parity(&mut self, recovery: u16) {
        self.writer.parity = recovery.min(crate::format::parity::MAX_RECOVERY);
    }

    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        self.core.blob_id(data)
    }

    // The index.

    /// Loads every index segment (once; later calls return the first outcome). A damaged
    /// segment is skipped and reported in [`Repository::index_warnings`]: its blobs are then
    /// saved again if needed. Everything that needs the index loads it on first use.
    pub fn load_index(&self) -> Result<()> {
        self.index.load(&self.core)
    }

    /// Keeps the blob index in a local redb file at `path` (its cache a share of the
    /// budget) instead of memory. Call before anything reads the index; if the file cannot
    /// be opened (another process has it), the index stays in memory and the reason is
    /// returned; a damaged one is started anew.
    pub fn use_local_index(&self, path: &std::path::Path) -> std::result::Result<(), String> {
        self.index.use_local_file(&self.core, path, self.budget.local_cache_bytes())
    }

    /// The ids of the index segments in the repository, without reading them.
    pub fn index_segments(&self) -> Result<Vec<Digest>> {
        Ok(self.core.backend.list("index")?.iter().filter_map(|p| crate::format::object::id_of_path(p)).collect())
    }

    /// The index segments this handle read or wrote.
    pub fn segments_used(&self) -> HashSet<Digest> {
        self.index.segments_used()
    }

    pub fn index_warnings(&self) -> Vec<String> {
        self.index.warnings()
    }

    /// Number of blobs in the loaded index.
    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Where a blob is, if the (loaded) index has it (see [`index::BlobIndex::location`]).
    pub fn blob_location(&self, id: &BlobId) -> Option<BlobLocation> {
        self.index.location(&self.core, id)
    }

    /// The packs the loaded index lists.
    pub(crate) fn index_packs(&self) -> HashSet<PackId> {
        self.index.packs()
    }

    /// Writes a new index segment and adds it to this handle's index.
    pub(crate) fn write_index_segment(&self, segment: &IndexSegment) -> Result<Digest> {
        let id = self.index.write_segment(&self.core, segment)?;
        self.writer.take_back_unless_standing(&self.core, id)?;
        Ok(id)
    }

    // Writing.

    /// Blobs this handle saved that no written index segment lists yet (sealed into open
    /// packs, or in packs written since the last flush).
    pub fn not_yet_indexed(&self) -> HashSet<BlobId> {
        self.writer.not_yet_indexed()
    }

    /// Whether a blob is in a written pack that a written index segment lists: what may be
    /// remembered across runs. `unindexed` is [`Repository::not_yet_indexed`].
    pub fn is_durable(&self, id: &BlobId, unindexed: &HashSet<BlobId>) -> bool {
        !unindexed.contains(id) && self.index.contains(id)
    }

    /// Whether the repository has the blob (loading the index if needed).
    pub fn contains_blob(&self, id: &BlobId) -> Result<bool> {
        self.index.load(&self.core)?;
        Ok(self.index.contains(id) || self.writer.is_pending(id))
    }

    /// Stores a blob unless the repository already has it.
    pub fn save_blob(&self, kind: BlobKind, data: &[u8]) -> Result<SaveOutcome> {
        self.save_blob_with_id(kind, self.blob_id(data), data)
    }

    /// As [`Repository::save_blob`], with the id already computed by the caller.
    pub fn save_blob_with_id(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<SaveOutcome> {
        self.writer.save_blob_with_id(&self.core, &self.index, kind, id, data)
    }

    /// Stores a blob even if the index says the repository has it (repair: the indexed copy
    /// is damaged).
    pub fn save_blob_again(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<SaveOutcome> {
        self.writer.save_blob_again(&self.core, &self.index, kind, id, data)
    }

    /// Stores one more copy of a tree, in the trees' pool or (`mirror`) the mirrors' pool
    /// only: a repack replaces the copy of one pack, and the tree's other copy stays where
    /// it is (each tree keeps two copies, in two packs).
    pub fn save_tree_copy(&self, id: BlobId, data: &[u8], mirror: bool) -> Result<SaveOutcome> {
        self.writer.save_tree_copy(&self.core, &self.index, id, data, mirror)
    }

    pub fn save_tree(&self, tree: &Tree) -> Result<SaveOutcome> {
        self.save_blob(BlobKind::Tree, &tree.encode()?)
    }

    /// Writes every open pack, then one index segment for all packs written since the last
    /// flush. After this returns, every blob saved so far is durable and findable.
    pub fn flush(&self) -> Result<()> {
        self.writer.flush(&self.core, &self.index)
    }

    /// Says that this handle writes for the backup session `id`: each index segment it writes
    /// is then checked against the session's standing ([`Repository::session_standing`]),
    /// and taken back, the handle poisoned, if a prune declared the session expired.
    pub fn write_for_session(&self, id: [u8; 16]) {
        *lock(&self.writer.session) = Some(id);
    }

    /// Whether garbage collection took a pack from under this handle (see [`Repository::flush`]).
    pub fn is_poisoned(&self) -> bool {
        self.writer.is_poisoned()
    }

    // Reading.

    /// Reads, authenticates, decompresses and re-hashes one blob.
    pub fn load_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        self.reader.load_blob(&self.core, &self.index, id)
    }

    /// Reads one blob at a given location (verify and repair try every known copy).
    pub fn load_blob_at(&self, loc: &BlobLocation) -> Result<Vec<u8>> {
        self.reader.load_blob_at(&self.core, loc)
    }

    /// Reads one blob at a location, and if the pack's key fails, tries the key derived from
    /// `alternate` (the blob table's copy of the ephemeral key, for when the pack's first
    /// bytes are damaged).
    pub fn load_blob_trying(&self, loc: &BlobLocation, alternate: Option<&PackTable>) -> Result<Vec<u8>> {
        self.reader.load_blob_trying(&self.core, loc, alternate)
    }

    /// Opens a blob from a pack's bytes already in memory (whole-pack reads of verify).
    pub fn open_blob_in(&self, pack: &PackId, entry: &PackEntry, pack_bytes: &[u8]) -> Result<Vec<u8>> {
        self.reader.open_blob_in(&self.core, pack, entry, pack_bytes, 0)
    }

    /// As [`Repository::open_blob_in`], trying the table's key copy when the pack's fails.
    pub fn open_blob_in_trying(
        &self,
        pack: &PackId,
        entry: &PackEntry,
        bytes: &[u8],
        alternate: Option<&PackTable>,
    ) -> Result<Vec<u8>> {
        self.reader.open_blob_in_trying(&self.core, pack, entry, bytes, alternate)
    }

    /// A pack's size in bytes, as the storage says.
    pub fn pack_size(&self, pack: &PackId) -> Result<u64> {
        self.reader.pack_size(&self.core, pack)
    }

    /// Reads `len` bytes of a pack at `offset` (several adjacent blobs at once).
    pub fn read_pack_range(&self, pack: &PackId, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.reader.read_pack_range(&self.core, pack, offset, len)
    }

    /// Loads a tree; when its indexed copy is damaged or missing, from its other copy (every
    /// tree is written to two packs), so that readers ride over what repair would fix.
    pub fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        self.reader.load_tree(&self.core, &self.index, id)
    }

    /// What [`Repository::load_tree`] read from a second copy, taken (each said once).
    pub fn take_tree_fallbacks(&self) -> Vec<String> {
        self.reader.take_tree_fallbacks()
    }

    /// Keeps tree blobs read from the repository in `path` (a file of this machine's cache
    /// folder), for repositories on remote storage. Not for `verify`, which always reads the
    /// repository.
    pub fn use_tree_cache(&self, path: &std::path::Path) -> std::result::Result<(), String> {
        self.reader.use_tree_cache(path, self.budget.local_cache_bytes())
    }

    /// Reads a run of blobs that lie one after another in one pack ([`adjacent_run`]) with
    /// one request (through recent spans of packs when the storage is remote), each
    /// authenticated, decompressed and re-hashed.
    pub fn load_run(&self, run: &[BlobLocation]) -> Result<Vec<Vec<u8>>> {
        runs::load_run(&self.reader, &self.spans, &self.core, &self.budget, run)
    }
}
