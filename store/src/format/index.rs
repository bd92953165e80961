//! Index segments: which blob lives in which pack. Derived data, rebuildable from packs.
//!
//! Layout: header (kind 4) | sealed with the index key (AAD = header) of
//! `pack count u32 | per pack: pack id (32) | blob count u32 | entries (48 bytes each)`.

use bakare_crypto::{Digest, SymmetricKey};

use crate::format::object::{ObjectKind, open_object, seal_object};
use crate::format::pack::{ENTRY_LEN, PackEntry, decode_entries, le_u32};
use crate::ids::{BlobId, PackId};
use crate::{Result, StoreError};

/// A blob's place: its pack and its entry there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub entry: PackEntry,
}

/// One index segment's content: packs and their blob tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSegment {
    pub packs: Vec<(PackId, Vec<PackEntry>)>,
}

impl IndexSegment {
    /// Encodes and seals the segment; returns its id (hash of the bytes) and the bytes.
    pub fn encode(&self, index_key: &SymmetricKey) -> Result<(Digest, Vec<u8>)> {
        let mut plain = Vec::new();
        let too_many = || StoreError::corrupt("index segment", "too many entries");
        plain.extend_from_slice(&u32::try_from(self.packs.len()).map_err(|_| too_many())?.to_le_bytes());
        for (pack, entries) in &self.packs {
            plain.extend_from_slice(pack.0.as_bytes());
            plain.extend_from_slice(&u32::try_from(entries.len()).map_err(|_| too_many())?.to_le_bytes());
            for e in entries {
                e.encode(&mut plain);
            }
        }
        seal_object(ObjectKind::Index, &plain, index_key)
    }

    /// Authenticates and parses a segment (its name was checked by the caller).
    pub fn decode(name: &str, bytes: &[u8], index_key: &SymmetricKey) -> Result<Self> {
        Self::decode_plaintext(name, &open_object(name, ObjectKind::Index, bytes, index_key)?)
    }

    /// Parses an authenticated segment's plaintext.
    pub fn decode_plaintext(name: &str, plain: &[u8]) -> Result<Self> {
        let count = le_u32(plain, 0).ok_or_else(|| StoreError::corrupt(name, "empty"))? as usize;
        let mut at = 4usize;
        let mut packs = Vec::with_capacity(count.min(plain.len() / 36));
        for _ in 0..count {
            let id: [u8; 32] = plain
                .get(at..at + 32)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| StoreError::corrupt(name, "truncated pack id"))?;
            let n = le_u32(plain, at + 32).ok_or_else(|| StoreError::corrupt(name, "truncated count"))? as usize;
            let len = n.checked_mul(ENTRY_LEN).and_then(|l| l.checked_add(4));
            let table = len
                .and_then(|l| plain.get(at + 32..at + 32 + l))
                .ok_or_else(|| StoreError::corrupt(name, "truncated blob table"))?;
            packs.push((PackId(Digest(id)), decode_entries(name, table, u32::MAX as usize)?));
            at += 32 + table.len();
        }
        if at != plain.len() {
            return Err(StoreError::corrupt(name, "trailing bytes"));
        }
        Ok(Self { packs })
    }

    pub fn locations(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        self.packs
            .iter()
            .flat_map(|(pack, entries)| entries.iter().map(move |e| (e.id, BlobLocation { pack: *pack, entry: *e })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlobKind;
    use bakare_crypto::{MasterKey, checksum};

    #[test]
    fn round_trip_and_tamper() {
        let m = MasterKey::generate().unwrap();
        let entry = PackEntry {
            id: BlobId(checksum(b"x")),
            kind: BlobKind::Tree,
            compressed: true,
            offset: 40,
            length: 100,
            raw_len: 300,
            frame_at: None,
        };
        // Three blobs of one frame, after the tree: their places follow from their order.
        let framed = |n: u8, at: u32| PackEntry {
            id: BlobId(checksum(&[n])),
            kind: BlobKind::Data,
            compressed: true,
            offset: 140,
            length: 60,
            raw_len: 10 + u32::from(n),
            frame_at: Some(at),
        };
        let seg = IndexSegment {
            packs: vec![(PackId(checksum(b"p")), vec![entry, entry, framed(1, 0), framed(2, 11), framed(3, 23)])],
        };
        let (_, bytes) = seg.encode(&m.write.index_key).unwrap();
        assert_eq!(IndexSegment::decode("i", &bytes, &m.write.index_key).unwrap(), seg);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x80;
            assert!(IndexSegment::decode("i", &bad, &m.write.index_key).is_err());
        }
    }
}
