//! The blob writer of a handle: deduplication against the index and the blobs in flight,
//! zstd (kept only if it shrinks), sealing into a bounded pool of open packs (one per
//! concurrent writer, each with its own ephemeral key), writing full packs, and the flush
//! that writes one index segment for the packs written since the last one.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use super::index::BlobIndex;
use super::{Core, SaveOutcome, WriteStats, lock, now_ns, pack_path};
use crate::backend::{BackendError, in_parallel};
use crate::format::index::IndexSegment;
use crate::format::pack::{FRAMED_BELOW, MAX_BLOB_LEN, PackBuilder, PackBytes, PackEntry};
use crate::ids::{BlobId, BlobKind, PackId};
use crate::{Result, StoreError};

/// One blob on its way into a pack: what [`PackBuilder::add`] needs.
#[derive(Clone, Copy)]
struct Sealing<'a> {
    kind: BlobKind,
    id: BlobId,
    raw_len: u32,
    compressed: bool,
    /// The bytes to seal: compressed if `compressed`.
    payload: &'a [u8],
    /// Gathered with other small blobs into a frame (`payload` is then the blob itself).
    framed: bool,
}

/// The zstd level of new blobs unless told otherwise. Level 2: with small files compressed
/// together in frames, it made repositories of real trees 3-6 % smaller than level 1 and
/// first backups 2.5-4 % slower than level 1 did before frames (a single large compressible
/// file: 6 % smaller, 6.5 % slower); level 3 was 6-9 % smaller and 10-30 % slower.
pub const DEFAULT_COMPRESSION: i32 = 2;

/// The writing half of a handle.
#[derive(Default)]
pub(crate) struct BlobWriter {
    /// Blobs sealed into open packs, not yet in the index.
    pending: Mutex<HashSet<BlobId>>,
    /// Open packs: data, trees, and the mirror copies of trees.
    pools: [PackPool; 3],
    /// Packs written since the last index segment.
    unindexed: Mutex<Vec<(PackId, Vec<PackEntry>)>>,
    /// A pack this handle wrote was marked or deleted by garbage collection before it could
    /// be indexed (the process slept past its session's expiry): nothing it saved may be
    /// committed.
    poisoned: AtomicBool,
    /// The backup session this handle writes for: each index segment is checked against
    /// its standing once written.
    pub(crate) session: Mutex<Option<[u8; 16]>>,
    /// zstd level for new blobs; 0 stores them uncompressed.
    pub(crate) compression_level: i32,
    /// Recovery shards written with each pack (0: none).
    pub(crate) parity: u16,
    /// Where open packs are spooled (asked of the storage once).
    spool: OnceLock<Option<std::path::PathBuf>>,
    pub(crate) stats: WriteStats,
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

impl BlobWriter {
    pub(crate) fn new(compression_level: i32) -> Self {
        Self { compression_level, ..Self::default() }
    }

    /// A writer with the same settings and nothing pending.
    pub(crate) fn fresh(&self) -> Self {
        Self { compression_level: self.compression_level, parity: self.parity, ..Self::default() }
    }

    /// Whether garbage collection took a pack from under this handle (see [`BlobWriter::flush`]).
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Whether a blob is sealed into an open pack of this handle.
    pub(crate) fn is_pending(&self, id: &BlobId) -> bool {
        lock(&self.pending).contains(id)
    }

    /// Blobs this handle saved that no written index segment lists yet (sealed into open
    /// packs, or in packs written since the last flush).
    pub(crate) fn not_yet_indexed(&self) -> HashSet<BlobId> {
        let mut out: HashSet<BlobId> = lock(&self.pending).iter().copied().collect();
        for (_, entries) in lock(&self.unindexed).iter() {
            out.extend(entries.iter().map(|e| e.id));
        }
        out
    }

    /// As [`Repository::save_blob`], with the id already computed by the caller.
    pub(crate) fn save_blob_with_id(
        &self,
        core: &Core,
        index: &BlobIndex,
        kind: BlobKind,
        id: BlobId,
        data: &[u8],
    ) -> Result<SaveOutcome> {
        let raw_len = u32::try_from(data.len()).ok().filter(|&l| l <= MAX_BLOB_LEN).ok_or_else(|| {
            StoreError::corrupt(format!("blob {}", id.short()), format!("{} bytes exceed the blob limit", data.len()))
        })?;
        // A tree is small: storing one twice costs less than reading the whole index to find
        // out (a backup in which nothing changed still writes the trees of the folders above
        // its sources, whose mtimes change). Trees use the index only once it is loaded.
        if kind == BlobKind::Data {
            index.load(core)?;
        }
        let known = index.contains(&id);
        if known || !lock(&self.pending).insert(id) {
            self.stats.blobs_deduped.fetch_add(1, Ordering::Relaxed);
            return Ok(SaveOutcome { id, stored: 0 });
        }
        let result = self.seal_into_pack(core, index, kind, id, raw_len, data);
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
    pub(crate) fn save_blob_again(
        &self,
        core: &Core,
        index: &BlobIndex,
        kind: BlobKind,
        id: BlobId,
        data: &[u8],
    ) -> Result<SaveOutcome> {
        let raw_len = self.checked_raw_len(core, id, data)?;
        lock(&self.pending).insert(id);
        let stored = self.seal_into_pack(core, index, kind, id, raw_len, data)?;
        self.stats.bytes_stored.fetch_add(stored, Ordering::Relaxed);
        Ok(SaveOutcome { id, stored })
    }

    /// Stores one more copy of a tree, in the trees' pool or (`mirror`) the mirrors' pool
    /// only: a repack replaces the copy of one pack, and the tree's other copy stays where
    /// it is (each tree keeps two copies, in two packs).
    pub(crate) fn save_tree_copy(
        &self,
        core: &Core,
        index: &BlobIndex,
        id: BlobId,
        data: &[u8],
        mirror: bool,
    ) -> Result<SaveOutcome> {
        let raw_len = self.checked_raw_len(core, id, data)?;
        lock(&self.pending).insert(id);
        let compressed = compress(self.compression_level, data);
        let payload = compressed.as_deref().unwrap_or(data);
        let pool = self.pools.get(if mirror { 2 } else { 1 }).ok_or_else(|| StoreError::corrupt("pools", "missing"))?;
        let stored = self.seal_into(
            core,
            index,
            pool,
            &Sealing { kind: BlobKind::Tree, id, raw_len, compressed: compressed.is_some(), payload, framed: false },
        )?;
        self.stats.bytes_stored.fetch_add(stored, Ordering::Relaxed);
        Ok(SaveOutcome { id, stored })
    }

    fn seal_into_pack(
        &self,
        core: &Core,
        index: &BlobIndex,
        kind: BlobKind,
        id: BlobId,
        raw_len: u32,
        data: &[u8],
    ) -> Result<u64> {
        // Small data blobs are compressed together, in frames (a small file alone compresses
        // poorly: it has little context of its own).
        let framed = kind == BlobKind::Data && self.compression_level != 0 && raw_len < FRAMED_BELOW;
        let compressed = if framed { None } else { compress(self.compression_level, data) };
        let payload = compressed.as_deref().unwrap_or(data);
        let mut stored = 0;
        for pool in self.pools_for(kind) {
            stored += self.seal_into(
                core,
                index,
                pool,
                &Sealing { kind, id, raw_len, compressed: compressed.is_some(), payload, framed },
            )?;
        }
        Ok(stored)
    }

    fn seal_into(&self, core: &Core, index: &BlobIndex, pool: &PackPool, blob: &Sealing<'_>) -> Result<u64> {
        let Sealing { kind, id, raw_len, compressed, payload, framed } = *blob;
        let target = core.config.pack_size as usize;
        let limit = if self.spool_dir(core).is_some() {
            core.backend.parallel_writes().max(MAX_SPOOLED_PACKS)
        } else {
            MAX_OPEN_PACKS
        };
        let mut builder = pool.take(limit, || self.new_pack(core, target + target / 8))?;
        builder.last_writer = Some(std::thread::current().id());
        let added = if framed {
            builder.add_framed(id, self.compression_level, payload)
        } else {
            builder.add(id, kind, compressed, raw_len, payload)
        };
        let stored = match added {
            Ok(s) => s,
            Err(e) => {
                pool.give_back(builder);
                return Err(e);
            }
        };
        let mut stored = u64::from(stored);
        if builder.len() >= target {
            let written = self.write_pack(core, index, builder);
            pool.release_slot();
            stored += written?;
        } else {
            pool.give_back(builder);
        }
        Ok(stored)
    }

    /// A new open pack: spooled to a file where the storage offers a folder for it, so that
    /// open packs cost no memory, else in memory.
    fn new_pack(&self, core: &Core, capacity: usize) -> Result<PackBuilder> {
        let key = core.access.write_key();
        match self.spool_dir(core) {
            Some(dir) => {
                static N: AtomicU64 = AtomicU64::new(0);
                let name =
                    format!(".tmp-spool-{}-{}-{}", std::process::id(), now_ns(), N.fetch_add(1, Ordering::Relaxed));
                PackBuilder::spooled(key, dir, &name)
            }
            None => PackBuilder::new(key, capacity),
        }
    }

    /// Writes a pack; returns the bytes its open frame added when sealed (not yet counted).
    fn write_pack(&self, core: &Core, index: &BlobIndex, mut builder: PackBuilder) -> Result<u64> {
        let last_frame = u64::from(builder.seal_frame()?);
        let (id, bytes, entries) = builder.finish(&core.access.write_key().index_key)?;
        let parity = match (&bytes, self.parity) {
            (_, 0) => None,
            (PackBytes::Memory(b), n) => Some(crate::format::parity::encode(b, n)?),
            (PackBytes::File(p), n) => {
                let whole = std::fs::read(p).map_err(|e| StoreError::Backend(BackendError::io(pack_path(&id), e)))?;
                Some(crate::format::parity::encode(&whole, n)?)
            }
        };
        match bytes {
            PackBytes::Memory(b) => core.backend.put(&pack_path(&id), &b)?,
            PackBytes::File(p) => core.backend.put_file(&pack_path(&id), &p)?,
        }
        if let Some(parity) = parity {
            // After the pack: a crash between the two leaves a pack without parity, no harm.
            core.backend.put(&crate::format::parity::parity_path(&id), &parity)?;
        }
        crate::failpoint::hit("after-pack");
        self.stats.packs.fetch_add(1, Ordering::Relaxed);
        // Listed as unindexed before it leaves `pending`, so that no reader of
        // `not_yet_indexed` ever sees it in neither.
        lock(&self.unindexed).push((id, entries.clone()));
        let mut blobs = index.write();
        let mut pending = lock(&self.pending);
        for e in &entries {
            blobs.insert(id, e);
            pending.remove(&e.id);
        }
        Ok(last_frame)
    }

    /// Writes every open pack, then one index segment for all packs written since the last
    /// flush. After this returns, every blob saved so far is durable and findable.
    pub(crate) fn flush(&self, core: &Core, index: &BlobIndex) -> Result<()> {
        // The open packs of every pool at once: each upload is a round trip or more.
        let open: Vec<PackBuilder> =
            self.pools.iter().flat_map(|pool| pool.drain()).filter(|b| !b.is_empty()).collect();
        let width = crate::backend::request_width(core.backend.as_ref());
        let frames =
            in_parallel(open, width, |b| self.write_pack(core, index, b)).into_iter().collect::<Result<Vec<u64>>>()?;
        self.stats.bytes_stored.fetch_add(frames.iter().sum(), Ordering::Relaxed);
        // The packs stay listed as unindexed until their segment is written.
        let packs = lock(&self.unindexed).clone();
        if packs.is_empty() {
            return Ok(());
        }
        // A pack garbage collection marked (or already deleted) while it was unindexed is
        // never indexed: a sweep may have decided to delete it. This happens only to a
        // process that slept past its session's expiry; what it saved is then void.
        let marked = crate::format::marks::marked_packs(core.backend.as_ref(), &core.access.write_key().index_key)?;
        let present = in_parallel(packs.iter().map(|(id, _)| *id).collect(), width, |id| {
            !marked.contains(&id) && core.backend.size(&pack_path(&id)).is_ok()
        });
        let (packs, lost): (Vec<_>, Vec<_>) = packs.into_iter().zip(present).partition(|(_, here)| *here);
        let packs: Vec<_> = packs.into_iter().map(|(p, _)| p).collect();
        if !lost.is_empty() {
            self.poisoned.store(true, Ordering::Relaxed);
            let gone: HashSet<PackId> = lost.iter().map(|((id, _), _)| *id).collect();
            lock(&self.unindexed).retain(|(pack, _)| !gone.contains(pack));
        }
        if packs.is_empty() {
            return Ok(());
        }
        let written: HashSet<PackId> = packs.iter().map(|(id, _)| *id).collect();
        crate::failpoint::hit("before-index");
        let segment = index.write_segment_of_known(core, &IndexSegment { packs })?;
        // Frozen between the check above and the segment past its session's expiry, the
        // process may have listed packs a sweep deleted meanwhile.
        self.take_back_unless_standing(core, segment)?;
        lock(&self.unindexed).retain(|(pack, _)| !written.contains(pack));
        Ok(())
    }

    /// After an index segment this handle wrote for a backup session: a prune declares a
    /// session expired before a sweep relies on that, so the segment stands if the
    /// declaration is not there now. Else it goes, and the handle's work is void (poisoned).
    pub(crate) fn take_back_unless_standing(&self, core: &Core, segment: crate::Digest) -> Result<()> {
        let session = *lock(&self.session);
        // A check that fails counts as a declaration: the handle is poisoned first, so that
        // a failed deletion leaves nothing this handle may commit.
        if let Some(id) = session
            && !super::catalog::session_standing(core, &id).unwrap_or(false)
        {
            self.poisoned.store(true, Ordering::Relaxed);
            core.backend.delete(&format!("index/{segment}"))?;
        }
        Ok(())
    }

    /// The length of a blob given with its id, once checked that it is that blob's and not
    /// over the limit.
    fn checked_raw_len(&self, core: &Core, id: BlobId, data: &[u8]) -> Result<u32> {
        if core.blob_id(data) != id {
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

    /// Where open packs are spooled, asked of the storage once.
    fn spool_dir(&self, core: &Core) -> Option<&std::path::Path> {
        self.spool.get_or_init(|| core.backend.spool_dir()).as_deref()
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
