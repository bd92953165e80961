//! Running backups: session records and checkpoints.
//!
//! `sessions/<id>` (kind 6), the one object that is rewritten: header | sealed with the index
//! key (AAD = header || id) of postcard(`Session`). A backup writes it at start, renews its
//! heartbeat, and removes it after its snapshot. A session left behind is an interrupted
//! backup: `bakare resume` continues it.
//!
//! `checkpoints/<BLAKE3 of bytes>` (kind 7): header | refs length u32 | refs sealed with the
//! index key (AAD = header): postcard(`CheckpointRefs`), the blob ids it makes reachable (GC
//! roots) | body sealed with a key derived from the id key (AAD = header): postcard of the
//! memo entries (opaque, self-checksummed key/value pairs) committed at that checkpoint.
//! Written after the packs and index segment it names; removed after the session's snapshot.

use bakare_crypto::{Digest, SymmetricKey, WriteKey, checksum};

use crate::format::object::{ObjectKind, check_header, header};
use crate::format::pack::le_u32;
use crate::ids::BlobId;
use crate::{Result, StoreError};

const CHECKPOINT_CONTEXT: &str = "bakare 2026-11 checkpoint body v1";

/// What a backup was asked to do, so that resume can do the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionOptions {
    pub excludes: Vec<String>,
    pub exclude_files: Vec<Vec<u8>>,
    pub git_ignore: bool,
    pub tags: Vec<String>,
    pub user: String,
    /// zstd level (0: none).
    pub compression: i32,
    /// Recovery shards written per pack (0: no parity).
    pub parity: u16,
    /// What the walk leaves out beyond the exclude patterns.
    pub selection: Selection,
    /// Where the sources are read from and what runs around the backup.
    pub source: SourceOptions,
    /// `--iexclude`: exclude patterns matched ignoring case.
    pub iexcludes: Vec<String>,
}

/// How a backup reads its sources (`resume` does the same). Hooks are not kept here: a
/// session record is sealed with the index key, which a put-only key holds, and a command
/// read from it would run as whoever resumes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceOptions {
    /// `--fs-snapshot`: "off", "auto" or "btrfs".
    pub fs_snapshot: String,
}

/// What a backup's walk leaves out beyond its exclude patterns (restic's flags of the same
/// names).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// Folders on another file system than their source are kept as empty folders.
    pub one_file_system: bool,
    /// A folder holding one of these, `NAME` or `NAME:HEADER` (the file begins with
    /// HEADER), is left out with everything in it. `--exclude-caches` adds
    /// [`CACHEDIR_TAG`].
    pub exclude_if_present: Vec<String>,
    /// Files larger than this many bytes are left out.
    pub exclude_larger_than: Option<u64>,
    /// Extended attributes (and so POSIX ACLs) are not read (`--no-xattrs`).
    pub no_xattrs: bool,
}

/// The Cache Directory Tagging Specification's tag (<https://bford.info/cachedir/>), as an
/// `exclude_if_present` rule.
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG:Signature: 8a477f597d28d172789f06886806bc55";

impl Selection {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// [`SessionOptions`] as written before `source` existed (read, never written).
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionOptionsV2 {
    excludes: Vec<String>,
    exclude_files: Vec<Vec<u8>>,
    git_ignore: bool,
    tags: Vec<String>,
    user: String,
    compression: i32,
    parity: u16,
    selection: Selection,
}

impl From<SessionOptionsV2> for SessionOptions {
    fn from(v: SessionOptionsV2) -> Self {
        let SessionOptionsV2 { excludes, exclude_files, git_ignore, tags, user, compression, parity, selection } = v;
        let (source, iexcludes) = Default::default();
        Self { excludes, exclude_files, git_ignore, tags, user, compression, parity, selection, source, iexcludes }
    }
}

/// [`SessionOptions`] as written before `selection` existed (read, never written).
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionOptionsV1 {
    excludes: Vec<String>,
    exclude_files: Vec<Vec<u8>>,
    git_ignore: bool,
    tags: Vec<String>,
    user: String,
    compression: i32,
    parity: u16,
}

impl From<SessionOptionsV1> for SessionOptions {
    fn from(v: SessionOptionsV1) -> Self {
        let SessionOptionsV1 { excludes, exclude_files, git_ignore, tags, user, compression, parity } = v;
        let (selection, source, iexcludes) = Default::default();
        Self { excludes, exclude_files, git_ignore, tags, user, compression, parity, selection, source, iexcludes }
    }
}

/// A running (or interrupted) backup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub id: [u8; 16],
    pub host: String,
    pub started_ns: i64,
    /// Wall-clock time of the last renewal (it does not pause while the machine sleeps).
    pub heartbeat_ns: i64,
    /// The source paths, absolute.
    pub paths: Vec<Vec<u8>>,
    pub options: SessionOptions,
    /// Checkpoints written so far.
    pub checkpoints: u32,
    /// The backup was interrupted (SIGINT, SIGTERM) after writing its last checkpoint: it is
    /// not running, so a re-run continues it at once and it holds no sweep back (a resumed
    /// walk reads the index afresh), while its checkpoints still keep their data until the
    /// session expires.
    pub interrupted: bool,
    /// Written just before the snapshot: the id it is committed under. A session whose
    /// snapshot exists is finished (killed before its record was removed); `resume` then
    /// only tidies up instead of committing a second, identical snapshot.
    pub committing: Option<crate::ids::SnapshotId>,
}

/// The first bytes of a session record's plaintext since `SessionOptions.source`: older
/// records are read as [`SessionV3`] (tag `bksess03`), [`SessionV2`] or [`SessionV1`] (no tag).
const SESSION_V4: &[u8; 8] = b"bksess04";
const SESSION_V3: &[u8; 8] = b"bksess03";

/// A session record as written before `SessionOptions.source` existed (read, never written;
/// tests write it).
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionV3 {
    id: [u8; 16],
    host: String,
    started_ns: i64,
    heartbeat_ns: i64,
    paths: Vec<Vec<u8>>,
    options: SessionOptionsV2,
    checkpoints: u32,
    interrupted: bool,
    committing: Option<crate::ids::SnapshotId>,
}

impl From<SessionV3> for Session {
    fn from(v: SessionV3) -> Self {
        let SessionV3 { id, host, started_ns, heartbeat_ns, paths, options, checkpoints, interrupted, committing } = v;
        let options = options.into();
        Self { id, host, started_ns, heartbeat_ns, paths, options, checkpoints, interrupted, committing }
    }
}

/// A session record as written before `interrupted` existed (read, never written; tests
/// write it).
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionV1 {
    id: [u8; 16],
    host: String,
    started_ns: i64,
    heartbeat_ns: i64,
    paths: Vec<Vec<u8>>,
    options: SessionOptionsV1,
    checkpoints: u32,
}

impl From<SessionV1> for Session {
    fn from(v: SessionV1) -> Self {
        let SessionV1 { id, host, started_ns, heartbeat_ns, paths, options, checkpoints } = v;
        let options = options.into();
        Self { id, host, started_ns, heartbeat_ns, paths, options, checkpoints, interrupted: false, committing: None }
    }
}

/// A session record as written before `SessionOptions.selection` existed (read, never
/// written; tests write it).
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionV2 {
    id: [u8; 16],
    host: String,
    started_ns: i64,
    heartbeat_ns: i64,
    paths: Vec<Vec<u8>>,
    options: SessionOptionsV1,
    checkpoints: u32,
    interrupted: bool,
    committing: Option<crate::ids::SnapshotId>,
}

impl From<SessionV2> for Session {
    fn from(v: SessionV2) -> Self {
        let SessionV2 { id, host, started_ns, heartbeat_ns, paths, options, checkpoints, interrupted, committing } = v;
        let options = options.into();
        Self { id, host, started_ns, heartbeat_ns, paths, options, checkpoints, interrupted, committing }
    }
}

/// Where prunes file the records of sessions they declared expired.
pub const EXPIRED_SESSIONS: &str = "sessions.expired";

/// A session id as its object names carry it: 32 lowercase hex digits.
pub fn id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sessions/<id>`: a session's record.
pub fn record_path(id: &[u8; 16]) -> String {
    format!("sessions/{}", id_hex(id))
}

/// `sessions.expired/<id>`: a prune's declaration that the session expired.
pub fn declaration_path(id: &[u8; 16]) -> String {
    format!("{EXPIRED_SESSIONS}/{}", id_hex(id))
}

/// The session id the last component of a `sessions/` or `sessions.expired/` path names.
pub fn id_of_name(path: &str) -> Option<[u8; 16]> {
    let name = path.rsplit('/').next()?;
    if name.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

impl Session {
    /// A new random session id.
    pub fn new_id() -> Result<[u8; 16]> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| bakare_crypto::CryptoError::Random(e.to_string()))?;
        Ok(id)
    }

    pub fn id_hex(&self) -> String {
        id_hex(&self.id)
    }

    pub fn path(&self) -> String {
        record_path(&self.id)
    }

    pub fn encode(&self, index_key: &SymmetricKey) -> Result<Vec<u8>> {
        let head = header(ObjectKind::Session);
        let mut aad = head.to_vec();
        aad.extend_from_slice(&self.id);
        let plain = postcard::to_extend(self, SESSION_V4.to_vec())
            .map_err(|e| StoreError::corrupt(self.path(), e.to_string()))?;
        let mut out = head.to_vec();
        index_key.seal_into(&aad, &plain, &mut out)?;
        Ok(out)
    }

    /// Decodes `sessions/<id>`; the id inside must be the one in the name.
    pub fn decode(name: &str, bytes: &[u8], index_key: &SymmetricKey) -> Result<Self> {
        let sealed = check_header(name, ObjectKind::Session, bytes)?;
        let id = id_of_name(name).ok_or_else(|| StoreError::corrupt(name, "name is not a session id"))?;
        let mut aad = bytes.get(..8).unwrap_or_default().to_vec();
        aad.extend_from_slice(&id);
        let plain = index_key.open(&aad, sealed).map_err(|e| StoreError::crypto(name, e))?;
        // Records before the tag began with the 16-byte random id: 2^-64 that one looks tagged.
        let s: Self = if let Some(body) = plain.strip_prefix(SESSION_V4.as_slice()) {
            crate::format::object::decode_exact(name, body)?
        } else if let Some(body) = plain.strip_prefix(SESSION_V3.as_slice()) {
            crate::format::object::decode_exact::<SessionV3>(name, body)?.into()
        } else {
            match crate::format::object::decode_exact::<SessionV2>(name, &plain) {
                Ok(s) => s.into(),
                Err(e) => {
                    crate::format::object::decode_exact::<SessionV1>(name, &plain).map(Self::from).map_err(|_| e)?
                }
            }
        };
        if s.id != id {
            return Err(StoreError::corrupt(name, "the session inside is another one"));
        }
        Ok(s)
    }
}

/// The part of a checkpoint readable with the index key: what it keeps reachable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointRefs {
    pub session: [u8; 16],
    pub seq: u32,
    pub blobs: Vec<BlobId>,
}

/// A checkpoint: the memo entries (key, value) committed when it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub refs: CheckpointRefs,
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Checkpoint {
    pub fn encode(&self, key: &WriteKey) -> Result<(Digest, Vec<u8>)> {
        let head = header(ObjectKind::Checkpoint);
        let enc = |e: postcard::Error| StoreError::corrupt("checkpoint", e.to_string());
        let refs = key.index_key.seal(&head, &postcard::to_stdvec(&self.refs).map_err(enc)?)?;
        let mut out = head.to_vec();
        let len = u32::try_from(refs.len()).map_err(|_| StoreError::corrupt("checkpoint", "too large"))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&refs);
        let body_key = key.id_key.derive(CHECKPOINT_CONTEXT);
        body_key.seal_into(&head, &postcard::to_stdvec(&self.entries).map_err(enc)?, &mut out)?;
        Ok((checksum(&out), out))
    }

    fn split<'a>(name: &str, bytes: &'a [u8]) -> Result<(&'a [u8], &'a [u8], &'a [u8])> {
        let body = check_header(name, ObjectKind::Checkpoint, bytes)?;
        let len = le_u32(body, 0).ok_or_else(|| StoreError::corrupt(name, "truncated"))? as usize;
        let refs = body.get(4..4 + len).ok_or_else(|| StoreError::corrupt(name, "truncated refs"))?;
        Ok((bytes.get(..8).unwrap_or_default(), refs, body.get(4 + len..).unwrap_or_default()))
    }

    pub fn decode_refs(name: &str, bytes: &[u8], index_key: &SymmetricKey) -> Result<CheckpointRefs> {
        let (head, refs, _) = Self::split(name, bytes)?;
        let plain = index_key.open(head, refs).map_err(|e| StoreError::crypto(name, e))?;
        crate::format::object::decode_exact(name, &plain)
    }

    pub fn decode(name: &str, bytes: &[u8], key: &WriteKey) -> Result<Self> {
        let refs = Self::decode_refs(name, bytes, &key.index_key)?;
        let (head, _, body) = Self::split(name, bytes)?;
        let plain = key.id_key.derive(CHECKPOINT_CONTEXT).open(head, body).map_err(|e| StoreError::crypto(name, e))?;
        let entries = crate::format::object::decode_exact(name, &plain)?;
        Ok(Self { refs, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakare_crypto::MasterKey;

    #[test]
    fn a_session_written_before_the_interrupted_flag_still_reads() {
        let m = MasterKey::generate().unwrap();
        let old = SessionV1 {
            id: [5; 16],
            host: "h".into(),
            started_ns: 1,
            heartbeat_ns: 2,
            paths: vec![],
            options: SessionOptionsV1 {
                excludes: vec!["*.o".into()],
                exclude_files: vec![],
                git_ignore: true,
                tags: vec![],
                user: "u".into(),
                compression: 1,
                parity: 0,
            },
            checkpoints: 3,
        };
        let head = header(ObjectKind::Session);
        let mut aad = head.to_vec();
        aad.extend_from_slice(&old.id);
        let mut bytes = head.to_vec();
        m.write.index_key.seal_into(&aad, &postcard::to_stdvec(&old).unwrap(), &mut bytes).unwrap();
        let s = Session::decode("sessions/05050505050505050505050505050505", &bytes, &m.write.index_key).unwrap();
        assert_eq!((s.checkpoints, s.interrupted), (3, false));
        assert_eq!(s.options.excludes, ["*.o"]);
    }

    #[test]
    fn a_session_written_before_the_selection_still_reads() {
        let m = MasterKey::generate().unwrap();
        let old = SessionV2 {
            id: [6; 16],
            host: "h".into(),
            started_ns: 1,
            heartbeat_ns: 2,
            paths: vec![b"/a".to_vec()],
            options: SessionOptionsV1 {
                excludes: vec![],
                exclude_files: vec![b"/x".to_vec()],
                git_ignore: false,
                tags: vec!["t".into()],
                user: "u".into(),
                compression: 3,
                parity: 2,
            },
            checkpoints: 4,
            interrupted: true,
            committing: None,
        };
        let head = header(ObjectKind::Session);
        let mut aad = head.to_vec();
        aad.extend_from_slice(&old.id);
        let mut bytes = head.to_vec();
        m.write.index_key.seal_into(&aad, &postcard::to_stdvec(&old).unwrap(), &mut bytes).unwrap();
        let s = Session::decode("sessions/06060606060606060606060606060606", &bytes, &m.write.index_key).unwrap();
        assert_eq!((s.checkpoints, s.interrupted, s.options.parity), (4, true, 2));
        assert_eq!((s.options.tags, s.options.selection), (vec!["t".to_string()], Selection::default()));
    }

    #[test]
    fn a_session_written_before_the_source_options_still_reads() {
        let m = MasterKey::generate().unwrap();
        let selection = Selection { one_file_system: true, ..Selection::default() };
        let old = SessionV3 {
            id: [8; 16],
            host: "h".into(),
            started_ns: 1,
            heartbeat_ns: 2,
            paths: vec![b"/a".to_vec()],
            options: SessionOptionsV2 {
                excludes: vec!["*.o".into()],
                exclude_files: vec![],
                git_ignore: true,
                tags: vec![],
                user: "u".into(),
                compression: 1,
                parity: 0,
                selection: selection.clone(),
            },
            checkpoints: 2,
            interrupted: false,
            committing: None,
        };
        let head = header(ObjectKind::Session);
        let mut aad = head.to_vec();
        aad.extend_from_slice(&old.id);
        let mut bytes = head.to_vec();
        let plain = postcard::to_extend(&old, SESSION_V3.to_vec()).unwrap();
        m.write.index_key.seal_into(&aad, &plain, &mut bytes).unwrap();
        let s = Session::decode("sessions/08080808080808080808080808080808", &bytes, &m.write.index_key).unwrap();
        assert_eq!((s.checkpoints, s.options.selection, s.options.git_ignore), (2, selection, true));
        assert_eq!(s.options.source, SourceOptions::default());
    }

    #[test]
    fn round_trips_and_tampering() {
        let m = MasterKey::generate().unwrap();
        let s = Session {
            id: [3; 16],
            host: "h".into(),
            started_ns: 1,
            heartbeat_ns: 2,
            paths: vec![b"/a".to_vec()],
            options: SessionOptions {
                selection: Selection {
                    one_file_system: true,
                    exclude_if_present: vec![CACHEDIR_TAG.into()],
                    exclude_larger_than: Some(7),
                    no_xattrs: true,
                },
                source: SourceOptions { fs_snapshot: "btrfs".into() },
                iexcludes: vec!["*.JPG".into()],
                ..SessionOptions::default()
            },
            checkpoints: 0,
            interrupted: true,
            committing: Some(crate::ids::SnapshotId(checksum(b"s"))),
        };
        let bytes = s.encode(&m.write.index_key).unwrap();
        assert_eq!(Session::decode(&s.path(), &bytes, &m.write.index_key).unwrap(), s);
        assert!(Session::decode("sessions/04040404040404040404040404040404", &bytes, &m.write.index_key).is_err());
        let c = Checkpoint {
            refs: CheckpointRefs { session: [3; 16], seq: 1, blobs: vec![BlobId(checksum(b"x"))] },
            entries: vec![(b"k".to_vec(), b"v".to_vec())],
        };
        let (_, bytes) = c.encode(&m.write).unwrap();
        assert_eq!(Checkpoint::decode("c", &bytes, &m.write).unwrap(), c);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Checkpoint::decode("c", &bad, &m.write).is_err());
        }
    }
}
