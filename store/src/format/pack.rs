//! Packs: many sealed blobs in one object, self-describing through a blob table at the end.
//!
//! ```text
//! 0   header "bakare" | 3 | version                          8
//! 8   ephemeral X25519 public key of this pack               32
//! 40  blobs, each: nonce (24) | ciphertext | tag (16)
//!     sealed with the pack key, AAD = blob id (32) | kind (1) | compression (1);
//!     or a frame: small data blobs back to back, compressed together as one zstd frame,
//!     sealed with the pack key, AAD = "bakare frame"
//! T   blob table: nonce | ciphertext | tag, sealed with the index key, AAD = "bakare pack table"
//! end table length u32 LE | "bkpt"                           8
//! ```
//! The table's plaintext starts with a second copy of the ephemeral key, so a damaged
//! prefix does not lose the pack: repair derives the pack key from the table's copy.
//! The pack key is derived from the ephemeral key and the repository's data public key, so
//! only the master key opens blobs; the blob table needs only the index key, so `index/`
//! can be rebuilt without the data secret.

use bakare_crypto::{Digest, EphemeralPublic, SEAL_OVERHEAD, SymmetricKey, WriteKey, checksum};

use crate::backend::Backend;
use crate::format::object::{HEADER_LEN, ObjectKind, check_header, header};
use crate::ids::{BlobId, BlobKind, PackId};
use crate::{Result, StoreError};

pub(crate) const PACK_PREFIX_LEN: usize = HEADER_LEN + 32;
const TRAILER_MAGIC: &[u8; 4] = b"bkpt";
pub(crate) const TRAILER_LEN: usize = 8;
pub(crate) const ENTRY_LEN: usize = 48;
/// No blob plaintext is larger: chunks are at most 16 MiB (fastcdc), a tree at most 64 MiB.
pub const MAX_BLOB_LEN: u32 = 64 << 20;
pub(crate) const PACK_PURPOSE: &[u8] = b"pack";
const TABLE_AAD: &[u8] = b"bakare pack table";
pub(crate) const FRAME_AAD: &[u8] = b"bakare frame";
/// Data blobs smaller than this are gathered into frames (compressed together, so that small
/// files share their compression context); larger ones are sealed alone.
pub const FRAMED_BELOW: u32 = 128 << 10;
/// A frame is sealed once its blobs reach this many bytes: restoring one small file
/// decompresses at most one frame (under `FRAME_TARGET + FRAMED_BELOW` bytes).
pub const FRAME_TARGET: usize = 512 << 10;
/// No frame's plaintext is larger (readers refuse one that claims more).
pub const MAX_FRAME_LEN: usize = 4 << 20;

/// A pack's authenticated blob table and its copy of the pack's ephemeral key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackTable {
    pub ephemeral: EphemeralPublic,
    pub entries: Vec<PackEntry>,
}

/// Where one blob sits in its pack, as listed in the blob table and index segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    pub compressed: bool,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob (nonce, ciphertext and tag).
    pub length: u32,
    /// Length of the plaintext after decompression.
    pub raw_len: u32,
    /// For a blob in a frame (compression 2 in the table): where its bytes start in the
    /// frame's plaintext. `offset` and `length` are then the sealed frame's, shared by every
    /// blob in it. Not stored: the blobs of a frame are listed one after another, in order,
    /// so this is the sum of the lengths of the frame's blobs listed before it.
    pub frame_at: Option<u32>,
}

impl PackEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.0.as_bytes());
        out.push(self.kind.to_byte());
        out.push(if self.frame_at.is_some() { 2 } else { u8::from(self.compressed) });
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }

    pub(crate) fn decode(object: &str, b: &[u8]) -> Result<Self> {
        let bad = |what: &str| StoreError::corrupt(object, format!("blob table entry: {what}"));
        let id: [u8; 32] = b.get(..32).and_then(|s| s.try_into().ok()).ok_or_else(|| bad("short"))?;
        let kind = b.get(32).copied().and_then(BlobKind::from_byte).ok_or_else(|| bad("blob kind"))?;
        // Framed blobs get their place in the frame from the table (decode_entries).
        let (compressed, frame_at) = match b.get(33) {
            Some(0) => (false, None),
            Some(1) => (true, None),
            Some(2) => (true, Some(0)),
            _ => return Err(bad("compression")),
        };
        let entry = Self {
            id: BlobId(Digest(id)),
            kind,
            compressed,
            offset: le_u32(b, 36).ok_or_else(|| bad("short"))?,
            length: le_u32(b, 40).ok_or_else(|| bad("short"))?,
            raw_len: le_u32(b, 44).ok_or_else(|| bad("short"))?,
            frame_at,
        };
        if (entry.length as usize) < SEAL_OVERHEAD || entry.raw_len > MAX_BLOB_LEN {
            return Err(bad("length out of range"));
        }
        if frame_at.is_some() && (kind != BlobKind::Data || entry.raw_len as usize > MAX_FRAME_LEN) {
            return Err(bad("a framed blob that is not small data"));
        }
        Ok(entry)
    }

    pub(crate) fn aad(&self) -> [u8; 34] {
        blob_aad(&self.id, self.kind, self.compressed)
    }

    /// Whether two entries name the same sealed bytes (the blobs of one frame do).
    pub fn same_sealed(&self, other: &PackEntry) -> bool {
        self.offset == other.offset && self.length == other.length
    }
}

fn blob_aad(id: &BlobId, kind: BlobKind, compressed: bool) -> [u8; 34] {
    let mut aad = [0u8; 34];
    aad[..32].copy_from_slice(id.0.as_bytes());
    aad[32] = kind.to_byte();
    aad[33] = u8::from(compressed);
    aad
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)
}

/// Where a pack being filled keeps its bytes: in memory, or in a spool file on the same
/// file system as the repository (so that memory does not hold whole packs).
enum Sink {
    Memory(Vec<u8>),
    File { file: std::io::BufWriter<std::fs::File>, path: std::path::PathBuf, len: usize, hash: Box<blake3::Hasher> },
}

/// A finished pack's bytes.
pub(crate) enum PackBytes {
    Memory(Vec<u8>),
    /// A spool file to move into place ([`crate::backend::Backend::put_file`]).
    File(std::path::PathBuf),
}

/// Small blobs gathered for one frame: their bytes back to back, and their entries (whose
/// `offset` and `length` are set when the frame is sealed).
#[derive(Default)]
struct OpenFrame {
    raw: Vec<u8>,
    entries: Vec<PackEntry>,
    level: i32,
}

/// A pack being filled. Blobs are sealed as they are added; nothing is written to the
/// repository until [`PackBuilder::finish`].
pub(crate) struct PackBuilder {
    key: SymmetricKey,
    eph: EphemeralPublic,
    /// `None` only once finished.
    sink: Option<Sink>,
    /// One sealed blob on its way to a spool file.
    scratch: Vec<u8>,
    entries: Vec<PackEntry>,
    /// Small data blobs waiting to be sealed together as one frame.
    frame: OpenFrame,
    /// The thread that added the last blob (a pool hands a thread its own pack again).
    pub(crate) last_writer: Option<std::thread::ThreadId>,
    /// A write to the spool file failed (a full disk): part of a blob may be in the file
    /// but not in the hash, so this pack must never be finished and named. The error's kind
    /// and text, to fail every later use the same way (a full disk stays resumable).
    broken: Option<(std::io::ErrorKind, String)>,
}

fn spool_err(path: &std::path::Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(crate::backend::BackendError::io(path.display().to_string(), e))
}

impl PackBuilder {
    /// A pack in memory that may grow to `capacity` bytes without reallocating (it starts
    /// small: most packs of trees never fill).
    pub(crate) fn new(write: &WriteKey, capacity: usize) -> Result<Self> {
        let (eph, key) = write.data_public.ephemeral(PACK_PURPOSE)?;
        let mut buf = Vec::with_capacity(capacity.min(1 << 20));
        buf.extend_from_slice(&header(ObjectKind::Pack));
        buf.extend_from_slice(&eph.0);
        Ok(Self {
            key,
            eph,
            sink: Some(Sink::Memory(buf)),
            scratch: Vec::new(),
            entries: Vec::new(),
            frame: OpenFrame::default(),
            last_writer: None,
            broken: None,
        })
    }

    /// A pack spooled to a new file in `dir`.
    pub(crate) fn spooled(write: &WriteKey, dir: &std::path::Path, name: &str) -> Result<Self> {
        let (eph, key) = write.data_public.ephemeral(PACK_PURPOSE)?;
        let path = dir.join(name);
        let f =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| spool_err(&path, e))?;
        let mut file = std::io::BufWriter::with_capacity(256 << 10, f);
        let mut hash = Box::new(blake3::Hasher::new());
        let mut start = header(ObjectKind::Pack).to_vec();
        start.extend_from_slice(&eph.0);
        use std::io::Write as _;
        file.write_all(&start).map_err(|e| spool_err(&path, e))?;
        hash.update(&start);
        Ok(Self {
            key,
            eph,
            sink: Some(Sink::File { file, path, len: start.len(), hash }),
            scratch: Vec::new(),
            entries: Vec::new(),
            frame: OpenFrame::default(),
            last_writer: None,
            broken: None,
        })
    }

    /// The error of a pack whose spool file failed: the same kind as the first failure.
    fn broken_error(&self) -> Option<StoreError> {
        let (kind, why) = self.broken.as_ref()?;
        let path = match &self.sink {
            Some(Sink::File { path, .. }) => path.clone(),
            _ => std::path::PathBuf::from("pack"),
        };
        Some(spool_err(&path, std::io::Error::new(*kind, format!("{why} (earlier, on this pack)"))))
    }

    /// The pack's length so far, counting an open frame's blobs at their full size.
    pub(crate) fn len(&self) -> usize {
        self.sealed_len() + self.frame.raw.len()
    }

    fn sealed_len(&self) -> usize {
        match &self.sink {
            Some(Sink::Memory(b)) => b.len(),
            Some(Sink::File { len, .. }) => *len,
            None => 0,
        }
    }

    /// Whether the pack holds nothing. A broken pack never is: a frame it failed to seal
    /// took blobs that writers were told are saved, and finishing it must fail.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.frame.entries.is_empty() && self.broken.is_none()
    }

    /// Appends sealed bytes made by `seal` (which appends to the buffer it is given).
    fn append(&mut self, seal: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
        if let Some(err) = self.broken_error() {
            return Err(err);
        }
        match &mut self.sink {
            None => Err(StoreError::corrupt("pack", "already finished")),
            Some(Sink::Memory(buf)) => {
                let before = buf.len();
                let sealed = seal(buf);
                if sealed.is_err() {
                    buf.truncate(before);
                }
                sealed
            }
            Some(Sink::File { file, path, len, hash }) => {
                self.scratch.clear();
                seal(&mut self.scratch)?;
                use std::io::Write as _;
                if let Err(e) = file.write_all(&self.scratch) {
                    // Some of the bytes may be in the file or its buffer: the file no longer
                    // matches the hash, so the pack is done for (its blobs go with it; the
                    // failing backup stops, and what it saved is saved again on resume).
                    self.broken = Some((e.kind(), e.to_string()));
                    return Err(spool_err(path, e));
                }
                hash.update(&self.scratch);
                *len += self.scratch.len();
                if self.scratch.capacity() > 1 << 20 {
                    // A large chunk passed through: do not keep its buffer with every open pack.
                    self.scratch = Vec::new();
                }
                Ok(())
            }
        }
    }

    /// Seals one blob into the pack; returns its sealed length.
    pub(crate) fn add(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        compressed: bool,
        raw_len: u32,
        payload: &[u8],
    ) -> Result<u32> {
        let start = self.sealed_len();
        let key = self.key.clone();
        self.append(|buf| Ok(key.seal_into(&blob_aad(&id, kind, compressed), payload, buf)?))?;
        let (offset, length) = self.placed_since(start)?;
        self.entries.push(PackEntry { id, kind, compressed, offset, length, raw_len, frame_at: None });
        Ok(length)
    }

    /// Where the bytes appended since the pack was `start` long lie: offset and length.
    fn placed_since(&self, start: usize) -> Result<(u32, u32)> {
        let too_big = || StoreError::corrupt("pack", "pack grew past 4 GiB");
        let offset = u32::try_from(start).map_err(|_| too_big())?;
        let length = u32::try_from(self.sealed_len() - start).map_err(|_| too_big())?;
        Ok((offset, length))
    }

    /// Adds a small data blob (under [`FRAMED_BELOW`] bytes) to the open frame, sealing the
    /// frame (zstd at `level`) once it holds [`FRAME_TARGET`] bytes; returns the sealed
    /// bytes this call added to the pack (0 while the frame stays open).
    pub(crate) fn add_framed(&mut self, id: BlobId, level: i32, data: &[u8]) -> Result<u32> {
        if let Some(err) = self.broken_error() {
            return Err(err);
        }
        let raw_len = u32::try_from(data.len())
            .ok()
            .filter(|&l| l < FRAMED_BELOW)
            .ok_or_else(|| StoreError::corrupt(format!("blob {}", id.short()), "too large for a frame"))?;
        let at = u32::try_from(self.frame.raw.len()).map_err(|_| StoreError::corrupt("frame", "too large"))?;
        self.frame.raw.extend_from_slice(data);
        self.frame.level = level;
        self.frame.entries.push(PackEntry {
            id,
            kind: BlobKind::Data,
            compressed: true,
            offset: 0,
            length: 0,
            raw_len,
            frame_at: Some(at),
        });
        if self.frame.raw.len() >= FRAME_TARGET { self.seal_frame() } else { Ok(0) }
    }

    /// Compresses and seals the open frame (if any blob waits in it) into the pack; returns
    /// its sealed length.
    pub(crate) fn seal_frame(&mut self) -> Result<u32> {
        if self.frame.entries.is_empty() {
            return Ok(0);
        }
        let frame = std::mem::take(&mut self.frame);
        let start = self.sealed_len();
        let key = self.key.clone();
        let placed = zstd::bulk::compress(&frame.raw, frame.level)
            .map_err(|e| StoreError::corrupt("frame", format!("zstd: {e}")))
            .and_then(|compressed| self.append(|buf| Ok(key.seal_into(FRAME_AAD, &compressed, buf)?)))
            .and_then(|()| self.placed_since(start));
        match placed {
            Ok((offset, length)) => {
                self.entries.extend(frame.entries.into_iter().map(|e| PackEntry { offset, length, ..e }));
                Ok(length)
            }
            Err(e) => {
                // The frame's blobs are gone but their writers were told they are saved:
                // this pack must never be finished (its backup fails and saves them again).
                if self.broken.is_none() {
                    self.broken = Some((std::io::ErrorKind::Other, e.to_string()));
                }
                Err(e)
            }
        }
    }

    /// Seals the blob table, appends the trailer and names the pack by its hash. A spool
    /// file is flushed and synced.
    pub(crate) fn finish(mut self, index_key: &SymmetricKey) -> Result<(PackId, PackBytes, Vec<PackEntry>)> {
        self.seal_frame()?;
        let mut table = Vec::with_capacity(36 + self.entries.len() * ENTRY_LEN);
        table.extend_from_slice(&self.eph.0);
        let count = u32::try_from(self.entries.len()).map_err(|_| StoreError::corrupt("pack", "too many blobs"))?;
        table.extend_from_slice(&count.to_le_bytes());
        for e in &self.entries {
            e.encode(&mut table);
        }
        self.append(|buf| {
            let start = buf.len();
            index_key.seal_into(TABLE_AAD, &table, buf)?;
            let sealed_len =
                u32::try_from(buf.len() - start).map_err(|_| StoreError::corrupt("pack", "table too big"))?;
            buf.extend_from_slice(&sealed_len.to_le_bytes());
            buf.extend_from_slice(TRAILER_MAGIC);
            Ok(())
        })?;
        let entries = std::mem::take(&mut self.entries);
        if let Some(err) = self.broken_error() {
            // Drop removes the spool file.
            return Err(err);
        }
        match self.sink.take() {
            None => Err(StoreError::corrupt("pack", "already finished")),
            Some(Sink::Memory(buf)) => Ok((PackId(checksum(&buf)), PackBytes::Memory(buf), entries)),
            Some(Sink::File { file, path, hash, .. }) => {
                let synced = file.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all());
                if let Err(e) = synced {
                    let _ = std::fs::remove_file(&path);
                    return Err(spool_err(&path, e));
                }
                Ok((PackId(Digest(*hash.finalize().as_bytes())), PackBytes::File(path), entries))
            }
        }
    }
}

impl Drop for PackBuilder {
    /// A pack dropped unfinished (empty, or its backup failed) leaves no spool file.
    fn drop(&mut self) {
        if let Some(Sink::File { file, path, .. }) = self.sink.take() {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The ephemeral public key stored at bytes 8..40 of a pack.
pub(crate) fn pack_ephemeral(name: &str, prefix: &[u8]) -> Result<EphemeralPublic> {
    check_header(name, ObjectKind::Pack, prefix)?;
    let eph: [u8; 32] = prefix
        .get(HEADER_LEN..PACK_PREFIX_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| StoreError::corrupt(name, "truncated before its ephemeral key"))?;
    Ok(EphemeralPublic(eph))
}

/// Parses and authenticates the blob table of a whole pack (`bytes`), checking every entry
/// lies inside the blob area.
pub fn parse_blob_table(name: &str, bytes: &[u8], index_key: &SymmetricKey) -> Result<PackTable> {
    let trailer_at = bytes.len().checked_sub(TRAILER_LEN).ok_or_else(|| StoreError::corrupt(name, "truncated"))?;
    let table_at = table_start(name, bytes.get(trailer_at..).unwrap_or_default(), trailer_at)?;
    let sealed = bytes.get(table_at..trailer_at).unwrap_or_default();
    open_table(name, sealed, table_at, index_key)
}

/// Where the sealed table starts, from the 8-byte trailer at `trailer_at`.
fn table_start(name: &str, trailer: &[u8], trailer_at: usize) -> Result<usize> {
    if trailer.get(4..) != Some(TRAILER_MAGIC.as_slice()) {
        return Err(StoreError::corrupt(name, "bad trailer magic"));
    }
    let table_len = le_u32(trailer, 0).ok_or_else(|| StoreError::corrupt(name, "truncated trailer"))? as usize;
    trailer_at
        .checked_sub(table_len)
        .filter(|&at| at >= PACK_PREFIX_LEN)
        .ok_or_else(|| StoreError::corrupt(name, "blob table length out of range"))
}

fn open_table(name: &str, sealed: &[u8], table_at: usize, key: &SymmetricKey) -> Result<PackTable> {
    let table = key.open(TABLE_AAD, sealed).map_err(|e| StoreError::crypto(format!("{name} (blob table)"), e))?;
    let (eph, rest) = table.split_at_checked(32).ok_or_else(|| StoreError::corrupt(name, "blob table too short"))?;
    let ephemeral = EphemeralPublic(eph.try_into().map_err(|_| StoreError::corrupt(name, "blob table too short"))?);
    Ok(PackTable { ephemeral, entries: decode_entries(name, rest, table_at)? })
}

/// Reads and authenticates a stored pack's blob table with two range reads (trailer, table),
/// without reading its blobs.
pub fn read_pack_table(backend: &dyn Backend, path: &str, index_key: &SymmetricKey) -> Result<PackTable> {
    let size = backend.size(path)?;
    let short = || StoreError::corrupt(path, "too short to be a pack");
    let trailer_at = usize::try_from(size).ok().and_then(|s| s.checked_sub(TRAILER_LEN)).ok_or_else(short)?;
    if trailer_at < PACK_PREFIX_LEN {
        return Err(short());
    }
    let trailer = backend.get_range(path, trailer_at as u64, TRAILER_LEN as u64)?;
    let table_at = table_start(path, &trailer, trailer_at)?;
    let sealed = backend.get_range(path, table_at as u64, (trailer_at - table_at) as u64)?;
    open_table(path, &sealed, table_at, index_key)
}

/// Decodes a blob table's plaintext (`count u32 | entries`), checking every entry lies within
/// the blob area `40..limit` of a pack.
pub fn decode_blob_table(name: &str, table: &[u8], limit: usize) -> Result<Vec<PackEntry>> {
    decode_entries(name, table, limit)
}

/// Decodes `count u32 | entries`, checking each lies within `PACK_PREFIX_LEN..limit`.
pub(crate) fn decode_entries(name: &str, table: &[u8], limit: usize) -> Result<Vec<PackEntry>> {
    let count = le_u32(table, 0).ok_or_else(|| StoreError::corrupt(name, "empty blob table"))? as usize;
    let body = table.get(4..).unwrap_or_default();
    if count.checked_mul(ENTRY_LEN) != Some(body.len()) {
        return Err(StoreError::corrupt(name, "blob table length does not match its count"));
    }
    let mut out: Vec<PackEntry> = Vec::with_capacity(count);
    for raw in body.chunks_exact(ENTRY_LEN) {
        let mut e = PackEntry::decode(name, raw)?;
        if e.frame_at.is_some() {
            // After the frame's blobs listed before it, if the last entry is of this frame.
            let after = out.last().filter(|p| p.frame_at.is_some() && p.same_sealed(&e));
            let at = after.map_or(Some(0), |p| p.frame_at.and_then(|a| a.checked_add(p.raw_len)));
            e.frame_at = Some(
                at.filter(|&a| a as usize + e.raw_len as usize <= MAX_FRAME_LEN)
                    .ok_or_else(|| StoreError::corrupt(name, "a frame's blobs exceed the frame limit"))?,
            );
        }
        let end = (e.offset as usize).checked_add(e.length as usize);
        if (e.offset as usize) < PACK_PREFIX_LEN || end.is_none_or(|end| end > limit) {
            return Err(StoreError::corrupt(name, format!("blob {} lies outside the pack", e.id.short())));
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakare_crypto::MasterKey;

    /// A 256 KiB tmpfs in `dir`, unmounted on drop; `None` (said) where mounting needs root.
    struct Tmpfs(std::path::PathBuf);

    impl Tmpfs {
        fn mount(dir: &std::path::Path) -> Option<Self> {
            let mnt = dir.join("fs");
            std::fs::create_dir(&mnt).unwrap();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
                .arg(&mnt)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !mounted {
                eprintln!("skipping: cannot mount a tmpfs here (needs root)");
                return None;
            }
            Some(Self(mnt))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// A spool file that ran out of space mid-blob is never finished into a pack whose
    /// bytes differ from its name, even after space comes back (a full disk, then a
    /// checkpoint's flush, made such a pack, and resume adopted it as damaged).
    #[test]
    fn a_spool_file_that_failed_is_never_named() {
        let dir = tempfile::tempdir().unwrap();
        let Some(tmpfs) = Tmpfs::mount(dir.path()) else { return };
        let mnt = tmpfs.0.clone();
        let filler = mnt.join("filler");
        std::fs::write(&filler, vec![0u8; 200 << 10]).unwrap();
        let m = MasterKey::generate().unwrap();
        let mut b = PackBuilder::spooled(&m.write, &mnt, "spool").unwrap();
        let blob = vec![7u8; 20 << 10];
        let id = BlobId(m.write.id_key.id(&blob));
        let mut failed = false;
        for _ in 0..64 {
            if b.add(id, BlobKind::Data, false, blob.len() as u32, &blob).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "the file system never filled");
        std::fs::remove_file(&filler).unwrap();
        assert!(b.add(id, BlobKind::Data, false, blob.len() as u32, &blob).is_err(), "a failed pack takes no more");
        assert!(b.finish(&m.write.index_key).is_err(), "a failed pack is not named");
        assert!(!mnt.join("spool").exists(), "its spool file is removed");
    }

    /// A frame whose sealing failed (the spool's file system full) leaves a pack that is not
    /// empty and never finishes, even when the frame held all its blobs: a flush must fail,
    /// not drop the pack as empty and call its blobs saved.
    #[test]
    fn a_frame_that_failed_to_seal_fails_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let Some(tmpfs) = Tmpfs::mount(dir.path()) else { return };
        let mnt = tmpfs.0.clone();
        let m = MasterKey::generate().unwrap();
        let mut b = PackBuilder::spooled(&m.write, &mnt, "spool").unwrap();
        let mut failed = false;
        for n in 0u8..8 {
            // Incompressible: the frame seals at 512 KiB, more than the file system holds.
            let mut blob = vec![0u8; 100 << 10];
            blake3::Hasher::new().update(&[n]).finalize_xof().fill(&mut blob);
            let id = BlobId(m.write.id_key.id(&blob));
            if b.add_framed(id, 1, &blob).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "the frame was sealed into a full file system");
        assert!(!b.is_empty(), "a pack whose frame was lost is not empty");
        assert!(b.finish(&m.write.index_key).is_err(), "and never finishes");
    }

    #[test]
    fn build_parse_and_flips() {
        let m = MasterKey::generate().unwrap();
        let mut b = PackBuilder::new(&m.write, 1024).unwrap();
        let id = BlobId(m.write.id_key.id(b"abc"));
        b.add(id, BlobKind::Data, false, 3, b"abc").unwrap();
        let (pid, bytes, entries) = b.finish(&m.write.index_key).unwrap();
        let PackBytes::Memory(bytes) = bytes else { panic!("in memory") };
        assert_eq!(pid, PackId(checksum(&bytes)));
        let table = parse_blob_table("p", &bytes, &m.write.index_key).unwrap();
        assert_eq!(table.ephemeral, pack_ephemeral("p", &bytes).unwrap());
        let parsed = table.entries;
        assert_eq!(parsed, entries);
        let e = parsed[0];
        let key = m.data_secret.recover(&pack_ephemeral("p", &bytes).unwrap(), PACK_PURPOSE).unwrap();
        let sealed = &bytes[e.offset as usize..(e.offset + e.length) as usize];
        assert_eq!(key.open(&e.aad(), sealed).unwrap(), b"abc");
        let table_start = bytes.len() - 8 - (32 + 4 + 48 + 40);
        for i in table_start..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(parse_blob_table("p", &bad, &m.write.index_key).is_err(), "byte {i}");
        }
        for cut in 0..bytes.len() {
            assert!(parse_blob_table("p", &bytes[..cut], &m.write.index_key).is_err());
        }
    }
}
