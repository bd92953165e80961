//! Optional Reed-Solomon parity for packs (`bakare backup --parity N`), so that repair can
//! rebuild damaged pack bytes instead of salvaging around them.
//!
//! A pack's bytes are cut into [`DATA_SHARDS`] equal shards (the last padded with zeros);
//! `parity/<pack id>` holds N recovery shards over them and a short hash of every shard.
//! Repair hashes the damaged pack's shards, treats those that differ (or are cut off) as
//! lost, rebuilds them from the others and the recovery shards, and keeps the result only
//! if it hashes to the pack's id. Up to N damaged shards (each 1/64 of the pack) are
//! rebuilt. Parity is computed over the sealed bytes, so it reveals nothing the pack does not.
//!
//! Layout (kind 10, not content-addressed: it is named by its pack and carries a checksum):
//! `header | pack length u64 | data shards u16 | recovery shards u16 | shard bytes u32 |
//! shard hashes (16 bytes each, data then recovery) | recovery shards | BLAKE3 of all before (32)`.

use bakare_crypto::checksum;

use crate::format::object::{HEADER_LEN, ObjectKind, check_header, header};
use crate::ids::PackId;
use crate::{Result, StoreError};

/// Data shards per pack.
pub const DATA_SHARDS: usize = 64;
/// Recovery shards at most (a quarter again of the pack).
pub const MAX_RECOVERY: u16 = 16;
const HASH: usize = 16;
const FIXED: usize = 8 + 2 + 2 + 4;

/// The object path of a pack's parity.
pub fn parity_path(pack: &PackId) -> String {
    format!("parity/{}", pack.to_hex())
}

fn shard_hash(bytes: &[u8]) -> [u8; HASH] {
    let mut out = [0u8; HASH];
    out.copy_from_slice(&checksum(bytes).as_bytes()[..HASH]);
    out
}

/// Shard size for a pack of `len` bytes: a multiple of 64 (what the coder needs), at least 64.
fn shard_bytes(len: usize) -> usize {
    len.div_ceil(DATA_SHARDS).div_ceil(64).max(1) * 64
}

fn data_shards(pack: &[u8], size: usize) -> Vec<Vec<u8>> {
    (0..DATA_SHARDS)
        .map(|i| {
            let mut s = pack.get(i * size..((i + 1) * size).min(pack.len())).unwrap_or_default().to_vec();
            s.resize(size, 0);
            s
        })
        .collect()
}

/// The parity object of `pack` with `recovery` recovery shards.
pub fn encode(pack: &[u8], recovery: u16) -> Result<Vec<u8>> {
    let recovery = recovery.clamp(1, MAX_RECOVERY);
    let size = shard_bytes(pack.len());
    let shards = data_shards(pack, size);
    let coded = reed_solomon_simd::encode(DATA_SHARDS, usize::from(recovery), &shards)
        .map_err(|e| StoreError::corrupt("parity", e.to_string()))?;
    let mut out = header(ObjectKind::Parity).to_vec();
    out.extend_from_slice(&(pack.len() as u64).to_le_bytes());
    out.extend_from_slice(&(DATA_SHARDS as u16).to_le_bytes());
    out.extend_from_slice(&recovery.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(size).map_err(|_| StoreError::corrupt("parity", "pack too large"))?.to_le_bytes(),
    );
    for s in shards.iter().chain(&coded) {
        out.extend_from_slice(&shard_hash(s));
    }
    for s in &coded {
        out.extend_from_slice(s);
    }
    let sum = checksum(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// A parsed, checked parity object.
pub struct Parity<'a> {
    pub pack_len: usize,
    shard_size: usize,
    data_hashes: Vec<&'a [u8]>,
    /// The recovery shards whose hashes hold, with their index.
    recovery: Vec<(usize, &'a [u8])>,
    recovery_total: usize,
}

/// How many recovery shards a damaged parity object of a `pack_len`-byte pack was made
/// with, read from its header when the object's length agrees with that count: what a
/// repair writes it anew with. `None` when that cannot be told.
pub fn recovery_count_of(bytes: &[u8], pack_len: u64) -> Option<u16> {
    let field = bytes.get(HEADER_LEN + 10..HEADER_LEN + 12)?;
    let recovery = u16::from_le_bytes(field.try_into().ok()?);
    if recovery == 0 || recovery > MAX_RECOVERY {
        return None;
    }
    let r = usize::from(recovery);
    let size = shard_bytes(usize::try_from(pack_len).ok()?);
    let expected = HEADER_LEN + FIXED + (DATA_SHARDS + r) * HASH + r * size + 32;
    (bytes.len() == expected).then_some(recovery)
}

impl<'a> Parity<'a> {
    /// Checks and parses a parity object named `name`.
    pub fn decode(name: &str, bytes: &'a [u8]) -> Result<Self> {
        check_header(name, ObjectKind::Parity, bytes)?;
        let bad = |why: &str| StoreError::corrupt(name, why.to_string());
        let (body, sum) = bytes
            .split_at_checked(bytes.len().checked_sub(32).ok_or_else(|| bad("too short"))?)
            .ok_or_else(|| bad("too short"))?;
        if checksum(body).as_bytes().as_slice() != sum {
            return Err(bad("checksum mismatch"));
        }
        let fixed = body.get(HEADER_LEN..HEADER_LEN + FIXED).ok_or_else(|| bad("too short"))?;
        let u = |at: usize, n: usize| fixed.get(at..at + n).ok_or_else(|| bad("too short"));
        let pack_len = u64::from_le_bytes(u(0, 8)?.try_into().map_err(|_| bad("length"))?);
        let data = u16::from_le_bytes(u(8, 2)?.try_into().map_err(|_| bad("count"))?);
        let recovery = u16::from_le_bytes(u(10, 2)?.try_into().map_err(|_| bad("count"))?);
        let size = u32::from_le_bytes(u(12, 4)?.try_into().map_err(|_| bad("size"))?) as usize;
        let pack_len = usize::try_from(pack_len).map_err(|_| bad("pack length"))?;
        if usize::from(data) != DATA_SHARDS || recovery == 0 || recovery > MAX_RECOVERY || size != shard_bytes(pack_len)
        {
            return Err(bad("unsupported shard layout"));
        }
        let r = usize::from(recovery);
        let hashes_at = HEADER_LEN + FIXED;
        let shards_at = hashes_at + (DATA_SHARDS + r) * HASH;
        if body.len() != shards_at + r * size {
            return Err(bad("length does not match its shard layout"));
        }
        let hashes: Vec<&[u8]> =
            body.get(hashes_at..shards_at).ok_or_else(|| bad("short"))?.chunks_exact(HASH).collect();
        let (data_hashes, recovery_hashes) = hashes.split_at(DATA_SHARDS);
        let recovery = body
            .get(shards_at..)
            .ok_or_else(|| bad("short"))?
            .chunks_exact(size)
            .enumerate()
            .filter(|(i, s)| recovery_hashes.get(*i).is_some_and(|h| shard_hash(s).as_slice() == *h))
            .collect();
        Ok(Self { pack_len, shard_size: size, data_hashes: data_hashes.to_vec(), recovery, recovery_total: r })
    }

    /// Whether this is the parity of `pack` as it stands: its length and every data shard's
    /// hash agree.
    pub fn matches(&self, pack: &[u8]) -> bool {
        pack.len() == self.pack_len
            && data_shards(pack, self.shard_size)
                .iter()
                .zip(&self.data_hashes)
                .all(|(s, h)| shard_hash(s).as_slice() == *h)
    }

    /// How many recovery shards the object was made with.
    pub fn recovery_count(&self) -> u16 {
        u16::try_from(self.recovery_total).unwrap_or(MAX_RECOVERY)
    }

    /// Rebuilds `pack` (its damaged or cut-short bytes) if few enough shards are damaged and
    /// the result hashes to `id`; `None` otherwise.
    pub fn recover(&self, id: &PackId, damaged: &[u8]) -> Option<Vec<u8>> {
        let mut padded = damaged.get(..self.pack_len.min(damaged.len()))?.to_vec();
        let whole = padded.len() == self.pack_len;
        padded.resize(self.pack_len, 0);
        let shards = data_shards(&padded, self.shard_size);
        let cut_at = if whole { DATA_SHARDS } else { damaged.len() / self.shard_size };
        let good: Vec<(usize, &Vec<u8>)> = shards
            .iter()
            .enumerate()
            .filter(|(i, s)| *i < cut_at && self.data_hashes.get(*i).is_some_and(|h| shard_hash(s).as_slice() == *h))
            .collect();
        if good.len() == DATA_SHARDS {
            return (checksum(&padded) == id.0).then_some(padded);
        }
        let restored = reed_solomon_simd::decode(
            DATA_SHARDS,
            // The count the shards were made with, not how many survived.
            self.recovery_total,
            good.iter().map(|(i, s)| (*i, s.as_slice())),
            self.recovery.iter().copied(),
        )
        .ok()?;
        let mut out = Vec::with_capacity(DATA_SHARDS * self.shard_size);
        for (i, s) in shards.iter().enumerate() {
            out.extend_from_slice(restored.get(&i).map_or(s.as_slice(), Vec::as_slice));
        }
        out.truncate(self.pack_len);
        (checksum(&out) == id.0).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(len: usize) -> (PackId, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8 ^ (i >> 9) as u8).collect();
        (PackId(checksum(&bytes)), bytes)
    }

    #[test]
    fn rebuilds_up_to_n_damaged_shards() {
        let (id, bytes) = pack(1_000_003);
        let parity = encode(&bytes, 3).unwrap();
        let p = Parity::decode("parity/x", &parity).unwrap();
        let size = shard_bytes(bytes.len());
        assert_eq!(p.recover(&id, &bytes).unwrap(), bytes, "an intact pack");
        let mut damaged = bytes.clone();
        for shard in [0, 17, 63] {
            damaged[shard * size + 5.min(bytes.len() - 1 - shard * size)] ^= 0x40;
        }
        assert_eq!(p.recover(&id, &damaged).unwrap(), bytes, "three damaged shards");
        damaged[30 * size] ^= 1;
        assert!(p.recover(&id, &damaged).is_none(), "four are too many");
        let cut = &bytes[..bytes.len() - size];
        assert_eq!(p.recover(&id, cut).unwrap(), bytes, "cut short by a shard");
    }

    #[test]
    fn a_damaged_parity_object_is_refused_or_ignored() {
        let (id, bytes) = pack(70_000);
        let parity = encode(&bytes, 2).unwrap();
        for i in (0..parity.len()).step_by(97) {
            let mut bad = parity.clone();
            bad[i] ^= 1;
            assert!(Parity::decode("parity/x", &bad).is_err(), "flip at {i}");
        }
        for cut in [0, 8, 20, parity.len() - 1] {
            assert!(Parity::decode("parity/x", &parity[..cut]).is_err());
        }
        let p = Parity::decode("parity/x", &parity).unwrap();
        let mut damaged = bytes.clone();
        damaged[100] ^= 1;
        assert_eq!(p.recover(&id, &damaged).unwrap(), bytes);
        // Tiny packs too.
        let (id, small) = pack(10);
        let p2 = encode(&small, 1).unwrap();
        let mut d = small.clone();
        d[3] = 0;
        assert_eq!(Parity::decode("parity/y", &p2).unwrap().recover(&id, &d).unwrap(), small);
    }

    #[test]
    fn a_damaged_objects_recovery_count_is_read_back_when_its_length_agrees() {
        let pack = vec![7u8; 100_000];
        let mut bytes = encode(&pack, 4).unwrap();
        let last = bytes.len() - 40;
        bytes[last] ^= 1;
        assert!(Parity::decode("p", &bytes).is_err(), "damaged");
        assert_eq!(recovery_count_of(&bytes, pack.len() as u64), Some(4));
        bytes.truncate(bytes.len() - 10);
        assert_eq!(recovery_count_of(&bytes, pack.len() as u64), None, "cut short: unknown");
    }
}
