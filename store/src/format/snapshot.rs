//! Snapshots: a finished backup. Written last, with an identical mirror.
//!
//! Layout: header (kind 5) | refs length u32 LE | refs sealed with the index key (AAD = header)
//! | ephemeral public key (32) | details sealed to the data key (purpose "snapshot", AAD = header).
//! The refs part (root tree and time) lets index-key holders (prune, structural verify) walk
//! reachability; names, paths and hosts stay sealed to the data key.

use bakare_crypto::{Digest, EphemeralPublic, MasterKey, SymmetricKey, WriteKey, checksum};

use crate::format::object::{ObjectKind, check_header_version, header};
use crate::format::pack::le_u32;
use crate::ids::{BlobId, SnapshotId};
use crate::{Result, StoreError};

const PURPOSE: &[u8] = b"snapshot";

/// Counters of one backup run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotStats {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    /// Files opened and read.
    pub files_read: u64,
    /// Files whose content came from the local memo without being opened.
    pub files_reused: u64,
    pub dirs: u64,
    pub errors: u64,
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub total_bytes: u64,
    pub duration_ms: u64,
}

impl SnapshotStats {
    /// Files in the snapshot: new, changed and unchanged.
    pub fn files(&self) -> u64 {
        self.files_new + self.files_changed + self.files_unchanged
    }
}

/// A finished backup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub time_ns: i64,
    pub host: String,
    pub user: String,
    /// The backed-up paths, absolute, as raw bytes.
    pub paths: Vec<Vec<u8>>,
    pub tags: Vec<String>,
    pub root: BlobId,
    pub parent: Option<SnapshotId>,
    pub stats: SnapshotStats,
    pub program: String,
    /// What happened during the backup besides the counts, one message a line: the hooks'
    /// output, the filesystem snapshot read, the files that could not be read (format 2;
    /// empty in format 1 snapshots).
    pub log: Vec<String>,
}

/// [`Snapshot`] as format 1 wrote it (read, never written).
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotV1 {
    time_ns: i64,
    host: String,
    user: String,
    paths: Vec<Vec<u8>>,
    tags: Vec<String>,
    root: BlobId,
    parent: Option<SnapshotId>,
    stats: SnapshotStats,
    program: String,
}

impl From<SnapshotV1> for Snapshot {
    fn from(v: SnapshotV1) -> Self {
        let SnapshotV1 { time_ns, host, user, paths, tags, root, parent, stats, program } = v;
        Self { time_ns, host, user, paths, tags, root, parent, stats, program, log: Vec::new() }
    }
}

/// The part of a snapshot readable with the index key alone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRefs {
    pub root: BlobId,
    pub time_ns: i64,
}

impl Snapshot {
    pub fn encode(&self, key: &WriteKey) -> Result<(SnapshotId, Vec<u8>)> {
        let head = header(ObjectKind::Snapshot);
        let enc = |e: postcard::Error| StoreError::corrupt("snapshot", e.to_string());
        let refs = postcard::to_stdvec(&SnapshotRefs { root: self.root, time_ns: self.time_ns }).map_err(enc)?;
        let sealed_refs = key.index_key.seal(&head, &refs)?;
        let mut out = head.to_vec();
        let refs_len =
            u32::try_from(sealed_refs.len()).map_err(|_| StoreError::corrupt("snapshot", "refs too long"))?;
        out.extend_from_slice(&refs_len.to_le_bytes());
        out.extend_from_slice(&sealed_refs);
        let (eph, data_key) = key.data_public.ephemeral(PURPOSE)?;
        out.extend_from_slice(&eph.0);
        data_key.seal_into(&head, &postcard::to_stdvec(self).map_err(enc)?, &mut out)?;
        Ok((SnapshotId(checksum(&out)), out))
    }

    /// Opens a snapshot file with the master key (its name was checked by the caller).
    pub fn decode(name: &str, bytes: &[u8], key: &MasterKey) -> Result<Self> {
        let parts = split(name, bytes)?;
        let data_key = key.data_secret.recover(&parts.eph, PURPOSE).map_err(|e| StoreError::crypto(name, e))?;
        let plain = data_key.open(parts.head, parts.details).map_err(|e| StoreError::crypto(name, e))?;
        let snap = Self::decode_details(name, parts.version, &plain)?;
        let refs = decode_refs_of(name, &parts, &key.write.index_key)?;
        if refs.root != snap.root || refs.time_ns != snap.time_ns {
            return Err(StoreError::corrupt(name, "its two parts disagree"));
        }
        Ok(snap)
    }

    /// Parses the authenticated details part of a snapshot of format `version`.
    pub fn decode_details(name: &str, version: u8, plain: &[u8]) -> Result<Self> {
        if version < 2 {
            return crate::format::object::decode_exact::<SnapshotV1>(name, plain).map(Self::from);
        }
        crate::format::object::decode_exact(name, plain)
    }

    /// Reads only the index-key part.
    pub fn decode_refs(name: &str, bytes: &[u8], index_key: &SymmetricKey) -> Result<SnapshotRefs> {
        decode_refs_of(name, &split(name, bytes)?, index_key)
    }
}

struct Parts<'a> {
    version: u8,
    head: &'a [u8],
    refs: &'a [u8],
    eph: EphemeralPublic,
    details: &'a [u8],
}

fn split<'a>(name: &str, bytes: &'a [u8]) -> Result<Parts<'a>> {
    let (version, body) = check_header_version(name, ObjectKind::Snapshot, bytes)?;
    let head = bytes.get(..8).unwrap_or_default();
    let refs_len = le_u32(body, 0).ok_or_else(|| StoreError::corrupt(name, "truncated"))? as usize;
    let refs = body.get(4..4 + refs_len).ok_or_else(|| StoreError::corrupt(name, "truncated refs"))?;
    let rest = body.get(4 + refs_len..).unwrap_or_default();
    let eph: [u8; 32] =
        rest.get(..32).and_then(|s| s.try_into().ok()).ok_or_else(|| StoreError::corrupt(name, "truncated key"))?;
    Ok(Parts { version, head, refs, eph: EphemeralPublic(eph), details: rest.get(32..).unwrap_or_default() })
}

fn decode_refs_of(name: &str, parts: &Parts<'_>, index_key: &SymmetricKey) -> Result<SnapshotRefs> {
    let plain = index_key.open(parts.head, parts.refs).map_err(|e| StoreError::crypto(name, e))?;
    crate::format::object::decode_exact(name, &plain)
}

impl SnapshotId {
    pub(crate) fn digest(&self) -> &Digest {
        &self.0
    }
}
