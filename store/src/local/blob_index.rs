//! Where each blob is: the repository's index segments, held in memory or, so that memory
//! does not grow with the repository, in a local redb file with a bounded cache.
//!
//! The local file (`<cache>/<repository id>/index.redb`) mirrors the index segments it has
//! read (table `segments`), so a run reads only the segments written since. If any segment
//! it read is gone (garbage collection or repair rewrote the index), it is emptied and filled
//! again from the segments that exist: it never offers a blob that the repository's index
//! does not list. Packs this handle writes are kept in memory until their segment is written,
//! then moved to the file in the same transaction that records the segment. Every value
//! carries a checksum over its key, so damage makes a lookup miss (the blob is stored again),
//! never find a blob that is not there.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::Arc;

use bakare_crypto::Digest;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::format::index::BlobLocation;
use crate::format::pack::PackEntry;
use crate::ids::{BlobId, BlobKind, PackId};
use crate::local::db;

/// Blob ids are uniformly random (keyed BLAKE3), so their first 8 bytes are a good hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

/// Where a blob is, compactly: 24 bytes beside its 32-byte id.
#[derive(Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    length: u32,
    raw_len: u32,
    /// Where a framed blob starts in its frame; `u32::MAX`: not framed.
    frame_at: u32,
    kind: BlobKind,
    compressed: bool,
}

impl Slot {
    fn of(pack: u32, e: &PackEntry) -> Self {
        Self {
            pack,
            offset: e.offset,
            length: e.length,
            raw_len: e.raw_len,
            frame_at: e.frame_at.unwrap_or(u32::MAX),
            kind: e.kind,
            compressed: e.compressed,
        }
    }
}

/// The in-memory blob index: ids to slots, and the packs slots point into.
#[derive(Default)]
pub(crate) struct MemoryIndex {
    blobs: HashMap<BlobId, Slot, BuildHasherDefault<IdHasher>>,
    packs: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
}

impl MemoryIndex {
    pub(crate) fn insert(&mut self, pack: PackId, e: &PackEntry) {
        let next = u32::try_from(self.packs.len()).unwrap_or(u32::MAX);
        let number = *self.pack_numbers.entry(pack).or_insert(next);
        if number == next {
            self.packs.push(pack);
        }
        self.blobs.insert(e.id, Slot::of(number, e));
    }

    pub(crate) fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        let s = self.blobs.get(id)?;
        let pack = *self.packs.get(s.pack as usize)?;
        Some(BlobLocation { pack, entry: entry_of(id, s) })
    }

    fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    fn remove_pack(&mut self, pack: &PackId) {
        if let Some(n) = self.pack_numbers.get(pack).copied() {
            self.blobs.retain(|_, s| s.pack != n);
        }
    }

    fn locations(&self) -> Vec<BlobLocation> {
        self.blobs.keys().filter_map(|id| self.get(id)).collect()
    }
}

fn entry_of(id: &BlobId, s: &Slot) -> PackEntry {
    PackEntry {
        id: *id,
        kind: s.kind,
        compressed: s.compressed,
        offset: s.offset,
        length: s.length,
        raw_len: s.raw_len,
        frame_at: (s.frame_at != u32::MAX).then_some(s.frame_at),
    }
}

const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const PACKS: TableDefinition<u32, &[u8]> = TableDefinition::new("packs");
const PACK_NUMBERS: TableDefinition<&[u8], u32> = TableDefinition::new("pack_numbers");
const SEGMENTS: TableDefinition<&[u8], u64> = TableDefinition::new("segments");
/// Layout 3: slots carry a framed blob's place in its frame (layout 2 had none; layout 1
/// had 8-byte checksums).
const LAYOUT: db::Layout = db::Layout { kind: "bakare blob index", version: 3 };

fn encode_slot(id: &BlobId, s: &Slot) -> Vec<u8> {
    let mut v = Vec::with_capacity(22 + db::SUM);
    for n in [s.pack, s.offset, s.length, s.raw_len, s.frame_at] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    v.push(s.kind.to_byte());
    v.push(u8::from(s.compressed));
    db::seal_value(id.0.as_bytes(), v)
}

fn decode_slot(id: &BlobId, v: &[u8]) -> Option<Slot> {
    let body = db::open_value(id.0.as_bytes(), v).filter(|b| b.len() == 22)?;
    let u = |i: usize| body.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    Some(Slot {
        pack: u(0)?,
        offset: u(4)?,
        length: u(8)?,
        raw_len: u(12)?,
        frame_at: u(16)?,
        kind: BlobKind::from_byte(*body.get(20)?)?,
        compressed: match body.get(21)? {
            0 => false,
            1 => true,
            _ => return None,
        },
    })
}

fn pack_value(number: u32, pack: &PackId) -> Vec<u8> {
    db::seal_value(&number.to_le_bytes(), pack.0.as_bytes().to_vec())
}

fn decode_pack(number: u32, v: &[u8]) -> Option<PackId> {
    let body = db::open_value(&number.to_le_bytes(), v)?;
    Some(PackId(Digest(body.try_into().ok()?)))
}

/// One index segment's packs and their blobs.
pub(crate) type SegmentPacks<'a> = &'a [(PackId, Vec<PackEntry>)];

/// The blob index in a local redb file, plus this handle's packs not yet in it.
pub(crate) struct DiskIndex {
    db: Arc<Database>,
    pending: MemoryIndex,
    path: std::path::PathBuf,
}

impl DiskIndex {
    /// Opens (or creates) the file under the local files' convention ([`db`]): one that is
    /// damaged, of another layout or written under another key is started anew.
    pub(crate) fn open(path: &Path, cache_bytes: usize, key_check: &Digest) -> Result<Self, db::OpenError> {
        let opts = db::Options { cache_bytes, key: Some(key_check.0), ..db::Options::default() };
        let opened = db::open(path, LAYOUT, &opts)?;
        Ok(Self { db: Arc::new(opened.db), pending: MemoryIndex::default(), path: path.to_path_buf() })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The same file for a fresh handle, with nothing of this handle's pending.
    pub(crate) fn share(&self) -> Self {
        Self { db: self.db.clone(), pending: MemoryIndex::default(), path: self.path.clone() }
    }

    /// The segments the file holds.
    pub(crate) fn segments(&self) -> Result<HashSet<Digest>, redb::Error> {
        with_table(&self.db, SEGMENTS, |table| {
            let mut out = HashSet::new();
            for row in table.iter()? {
                let (k, _) = row?;
                if let Ok(d) = <[u8; 32]>::try_from(k.value()) {
                    out.insert(Digest(d));
                }
            }
            Ok(out)
        })
    }

    /// Empties the file.
    pub(crate) fn clear(&self) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        clear(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Adds segments (id and packs) in one transaction, and forgets the pending entries of
    /// their packs.
    pub(crate) fn add_segments(&mut self, segments: &[(Digest, SegmentPacks<'_>)]) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut blobs = txn.open_table(BLOBS)?;
            let mut packs = txn.open_table(PACKS)?;
            let mut numbers = txn.open_table(PACK_NUMBERS)?;
            let mut segs = txn.open_table(SEGMENTS)?;
            let mut next = u32::try_from(packs.len()?).unwrap_or(u32::MAX);
            for (seg, seg_packs) in segments {
                for (pack, entries) in *seg_packs {
                    let existing = numbers.get(pack.0.as_bytes().as_slice())?.map(|v| v.value());
                    let number = match existing {
                        Some(n) => n,
                        None => {
                            let n = next;
                            next = next.saturating_add(1);
                            numbers.insert(pack.0.as_bytes().as_slice(), n)?;
                            packs.insert(n, pack_value(n, pack).as_slice())?;
                            n
                        }
                    };
                    for e in entries {
                        let slot = Slot::of(number, e);
                        blobs.insert(e.id.0.as_bytes().as_slice(), encode_slot(&e.id, &slot).as_slice())?;
                    }
                    self.pending.remove_pack(pack);
                }
                segs.insert(seg.as_bytes().as_slice(), seg_packs.len() as u64)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn insert_pending(&mut self, pack: PackId, e: &PackEntry) {
        self.pending.insert(pack, e);
    }

    fn slot(txn: &redb::ReadTransaction, id: &BlobId) -> Option<Slot> {
        let v = txn.open_table(BLOBS).ok()?.get(id.0.as_bytes().as_slice()).ok()??;
        decode_slot(id, v.value())
    }

    fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        if let Some(l) = self.pending.get(id) {
            return Some(l);
        }
        // One read transaction for the blob and its pack.
        let txn = self.db.begin_read().ok()?;
        let s = Self::slot(&txn, id)?;
        let pack = decode_pack(s.pack, txn.open_table(PACKS).ok()?.get(s.pack).ok()??.value())?;
        Some(BlobLocation { pack, entry: entry_of(id, &s) })
    }

    fn contains(&self, id: &BlobId) -> bool {
        self.pending.contains(id) || self.db.begin_read().ok().and_then(|txn| Self::slot(&txn, id)).is_some()
    }

    fn packs(&self) -> HashSet<PackId> {
        let mut out: HashSet<PackId> = self.pending.pack_numbers.keys().copied().collect();
        let read = with_table(&self.db, PACKS, |table| {
            let mut v = Vec::new();
            for row in table.iter()? {
                let (k, val) = row?;
                v.extend(decode_pack(k.value(), val.value()));
            }
            Ok(v)
        });
        out.extend(read.unwrap_or_default());
        out
    }

    fn len(&self) -> usize {
        let n = with_table(&self.db, BLOBS, |t| Ok(t.len()?));
        n.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)) + self.pending.blobs.len()
    }
}

/// Runs `read` on a table in a read transaction; a table never written reads as empty.
fn with_table<K: redb::Key + 'static, V: redb::Value + 'static, T: Default>(
    db: &Database,
    def: TableDefinition<K, V>,
    read: impl FnOnce(&redb::ReadOnlyTable<K, V>) -> Result<T, redb::Error>,
) -> Result<T, redb::Error> {
    let txn = db.begin_read()?;
    match txn.open_table(def) {
        Ok(table) => read(&table),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(T::default()),
        Err(e) => Err(e.into()),
    }
}

fn clear(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(BLOBS)?.retain(|_, _| false)?;
    txn.open_table(PACKS)?.retain(|_, _| false)?;
    txn.open_table(PACK_NUMBERS)?.retain(|_, _| false)?;
    txn.open_table(SEGMENTS)?.retain(|_, _| false)?;
    Ok(())
}

/// The blob index of a handle: in memory, or in a local file.
pub(crate) enum Blobs {
    Memory(MemoryIndex),
    Disk(DiskIndex),
}

impl Default for Blobs {
    fn default() -> Self {
        Blobs::Memory(MemoryIndex::default())
    }
}

impl Blobs {
    /// Where a blob is. A lookup in the local file that panics inside redb (a damaged file)
    /// finds nothing; the reader then falls back to the repository's segments.
    pub(crate) fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        match self {
            Blobs::Memory(m) => m.get(id),
            Blobs::Disk(d) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.get(id))).ok().flatten(),
        }
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        match self {
            Blobs::Memory(m) => m.contains(id),
            // A damaged file that finds nothing only makes the blob be stored again.
            Blobs::Disk(d) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.contains(id))).unwrap_or(false)
            }
        }
    }

    /// The local file behind this index, if it is one.
    pub(crate) fn disk_path(&self) -> Option<&Path> {
        match self {
            Blobs::Memory(_) => None,
            Blobs::Disk(d) => Some(&d.path),
        }
    }

    /// A blob of a pack this handle wrote (not yet in an index segment).
    pub(crate) fn insert(&mut self, pack: PackId, e: &PackEntry) {
        match self {
            Blobs::Memory(m) => m.insert(pack, e),
            Blobs::Disk(d) => d.insert_pending(pack, e),
        }
    }

    pub(crate) fn packs(&self) -> HashSet<PackId> {
        match self {
            Blobs::Memory(m) => m.pack_numbers.keys().copied().collect(),
            Blobs::Disk(d) => d.packs(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Blobs::Memory(m) => m.blobs.len(),
            Blobs::Disk(d) => d.len(),
        }
    }

    /// This handle's own blobs not yet in an index segment: what a reload must keep.
    pub(crate) fn pending(&self) -> Vec<BlobLocation> {
        match self {
            Blobs::Memory(m) => m.locations(),
            Blobs::Disk(d) => d.pending.locations(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> PackEntry {
        PackEntry {
            id: BlobId(Digest([n; 32])),
            kind: BlobKind::Data,
            compressed: n.is_multiple_of(2),
            offset: u32::from(n) * 100,
            length: 90,
            raw_len: 120,
            // Every third is framed: its place in the frame survives the file.
            frame_at: n.is_multiple_of(3).then_some(u32::from(n) * 7),
        }
    }

    #[test]
    fn segments_in_the_file_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let key = Digest([7; 32]);
        let pack = PackId(Digest([9; 32]));
        {
            let mut d = DiskIndex::open(&path, 1 << 20, &key).unwrap();
            d.insert_pending(pack, &entry(1));
            assert!(d.contains(&entry(1).id), "pending");
            let packs = vec![(pack, vec![entry(1), entry(2), entry(6)])];
            d.add_segments(&[(Digest([1; 32]), &packs)]).unwrap();
            assert!(d.pending.blobs.is_empty(), "moved to the file");
            let loc = d.get(&entry(2).id).unwrap();
            assert_eq!((loc.pack, loc.entry), (pack, entry(2)));
            let loc = d.get(&entry(6).id).unwrap();
            assert_eq!((loc.pack, loc.entry), (pack, entry(6)), "a framed blob's place");
            assert_eq!(d.len(), 3);
            assert_eq!(d.segments().unwrap(), HashSet::from([Digest([1; 32])]));
        }
        // Another key: emptied.
        let d = DiskIndex::open(&path, 1 << 20, &Digest([8; 32])).unwrap();
        assert!(!d.contains(&entry(1).id));
        drop(d);
        // A value that fails its checksum is a miss.
        let mut d = DiskIndex::open(&path, 1 << 20, &key).unwrap();
        let packs = vec![(pack, vec![entry(3)])];
        d.add_segments(&[(Digest([2; 32]), &packs)]).unwrap();
        let txn = d.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BLOBS).unwrap();
            let slot = Slot {
                pack: 0,
                offset: 1,
                length: 2,
                raw_len: 3,
                frame_at: u32::MAX,
                kind: BlobKind::Data,
                compressed: false,
            };
            let good = encode_slot(&entry(3).id, &slot);
            let mut bad = good.clone();
            bad[5] ^= 1;
            t.insert(entry(3).id.0.as_bytes().as_slice(), bad.as_slice()).unwrap();
            // A good value under another key fails too.
            t.insert(entry(4).id.0.as_bytes().as_slice(), good.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        assert!(!d.contains(&entry(3).id));
        assert!(!d.contains(&entry(4).id));
    }
}
