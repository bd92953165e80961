//! The planner's memory across runs: `state.redb`, a cache of what each file held.
//!
//! Table `files`. Key: `parent path bytes || 0x00 || name bytes`, so one range scan per folder
//! yields its children in name order, merge-joined with the sorted listing; the folder's own
//! record has the empty name (`path || 0x00`) and comes first. File value (version 1):
//!
//! ```text
//! version u8 = 5 | flags u8 (bit 0: racy, bit 1: more than one link) | size | mtime_ns | ctime_ns | ino | dev | chunk count
//! (varints, times zigzag) | chunk ids (32 each) | xattrs: 0 (not read) or 1, count, then each
//! name length, name, value length, value (lengths varints) | BLAKE3(key || all preceding
//! value bytes). Version 3 records (the same without the xattrs part) are still read.
//! ```
//!
//! redb does not verify its page checksums on ordinary reads, so the database is opened with
//! its integrity check, and every value carries its own checksum over key and value: a value
//! that fails it is a miss, never a wrong answer. Folder value (version 5): `version u8 = 5 |
//! tree id (32) | files, bytes, folders of its subtree (u64 LE each) | BLAKE3(key || preceding
//! bytes)`; version 4 (without the totals) is still read.
//!
//! Table `watch`. Key: a backup set's id. Value: the `bakare watch` epoch (16 bytes) and
//! generation (u64 LE) at which the set's last snapshot's walk began, then `BLAKE3(key ||
//! value)`.
//!
//! Table `trust`. Key: a backup set's id (BLAKE3 of its paths and exclude options). Value:
//! the index segment ids the repository had when a run of that set last wrote the memo with
//! every record it relies on checked, then `BLAKE3(key || ids)`. Records name only blobs of
//! indexed packs, and garbage collection removes every index segment it read when it marks
//! an indexed pack, so while all of a set's segments still exist, every blob the records
//! under its paths name still exists, and the set's
//! runs trust the memo without reading the index. A run that finds its own segments gone
//! writes records it cannot vouch for and clears the whole table.
//!
//! A database that fails to open is moved
//! aside and started anew: losing the memo costs one slower run, never correctness.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bakare_store::local::db;
use bakare_store::{BlobId, Budget, Xattr};
use bakare_store::{Digest, checksum};
use redb::{Database, TableDefinition};

use crate::inputs::{Owner, StatFingerprint};

const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
const TRUST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("trust");
/// Per backup set: files and bytes of its last complete run (for progress estimates).
const TOTALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("totals");
/// The layout of keys and values below (see [`db`]); a file of another layout is started
/// anew. Layout 3 is the first under the local files' convention.
const LAYOUT: db::Layout = db::Layout { kind: "bakare memo", version: 3 };
/// File records with extended attributes and owner; [`VERSION_NO_OWNER`] and
/// [`VERSION_NO_XATTRS`] ones are still read.
const VERSION: u8 = 6;
const VERSION_NO_OWNER: u8 = 5;
const VERSION_NO_XATTRS: u8 = 3;
/// Folder records with the totals of their subtree and the folder's own entry;
/// [`DIR_VERSION_NO_ENTRY`] and [`DIR_VERSION_NO_TOTALS`] ones are read.
const DIR_VERSION: u8 = 6;
const DIR_VERSION_NO_ENTRY: u8 = 5;
const DIR_VERSION_NO_TOTALS: u8 = 4;
/// Per backup set: where it stood with `bakare watch` when its last snapshot's walk began.
const WATCH: TableDefinition<&[u8], &[u8]> = TableDefinition::new("watch");
/// redb's page cache; its default (1 GiB) would count against the memory limit.
/// Bytes of a folder's key: a keyed hash of its path.
const FOLDER_KEY: usize = 16;

/// A file's content as last read, with the fingerprint it was read under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoRecord {
    pub key: Vec<u8>,
    pub fp: StatFingerprint,
    pub racy: bool,
    pub chunks: Vec<BlobId>,
    /// The file's extended attributes when it had `fp` (None: not read, `--no-xattrs` or a
    /// record from before they were kept).
    pub xattrs: Option<Vec<Xattr>>,
}

impl MemoRecord {
    pub fn new(path: &Path, fp: StatFingerprint, racy: bool, chunks: Vec<BlobId>, xattrs: Option<Vec<Xattr>>) -> Self {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        Self { key: child_key(parent, name), fp, racy, chunks, xattrs }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(2 + 6 * 10 + self.chunks.len() * 32 + db::SUM);
        v.push(VERSION);
        v.push(u8::from(self.racy) | (u8::from(self.fp.linked) << 1));
        let fp = &self.fp;
        for n in [fp.size, zigzag(fp.mtime_ns), zigzag(fp.ctime_ns), fp.ino, fp.dev, self.chunks.len() as u64] {
            put_varint(&mut v, n);
        }
        for c in &self.chunks {
            v.extend_from_slice(c.0.as_bytes());
        }
        put_xattrs(&mut v, self.xattrs.as_deref());
        put_owner(&mut v, fp.owner.as_ref());
        db::seal_value(&self.key, v)
    }

    /// Decodes a value; `None` for anything damaged, of another version, or stored under
    /// another key.
    pub fn decode(key: &[u8], v: &[u8]) -> Option<Self> {
        let body = db::open_value(key, v)?;
        let version = *body.first()?;
        if ![VERSION, VERSION_NO_OWNER, VERSION_NO_XATTRS].contains(&version) || key.len() < FOLDER_KEY {
            return None;
        }
        let flags = *body.get(1)?;
        let racy = flags & 1 == 1;
        let mut at = 2;
        let mut next = || get_varint(body, &mut at);
        let mut fp = StatFingerprint {
            size: next()?,
            mtime_ns: unzigzag(next()?),
            ctime_ns: unzigzag(next()?),
            ino: next()?,
            dev: next()?,
            linked: flags & 2 == 2,
            owner: None,
        };
        let n = usize::try_from(next()?).ok()?;
        let end = at.checked_add(n.checked_mul(32)?)?;
        let ids = body.get(at..end)?;
        let chunks = ids
            .chunks_exact(32)
            .map(|c| c.try_into().ok().map(|a: [u8; 32]| BlobId(Digest(a))))
            .collect::<Option<_>>()?;
        let mut at = end;
        let xattrs = if version == VERSION_NO_XATTRS { None } else { get_xattrs(body, &mut at)? };
        if version == VERSION {
            fp.owner = get_owner(body, &mut at)?;
        }
        if at != body.len() {
            return None;
        }
        Some(Self { key: key.to_vec(), fp, racy, chunks, xattrs })
    }

    /// The child's name (the part of the key after the folder's).
    pub fn name(&self) -> &[u8] {
        self.key.get(FOLDER_KEY..).unwrap_or_default()
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A LEB128 varint at `*at` (at most 10 bytes, no overflow), advancing `at`.
fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        let part = u64::from(b & 0x7f);
        if shift == 63 && part > 1 {
            return None;
        }
        n |= part << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// Extended attributes: `0` (not read), or `1`, a count, then each name and value with
/// their lengths (varints).
fn put_xattrs(v: &mut Vec<u8>, xattrs: Option<&[Xattr]>) {
    match xattrs {
        None => v.push(0),
        Some(xattrs) => {
            v.push(1);
            put_varint(v, xattrs.len() as u64);
            for x in xattrs {
                for part in [&x.name, &x.value] {
                    put_varint(v, part.len() as u64);
                    v.extend_from_slice(part);
                }
            }
        }
    }
}

/// The extended attributes at `*at`: `Some(None)` when they were not read.
fn get_xattrs(body: &[u8], at: &mut usize) -> Option<Option<Vec<Xattr>>> {
    match body.get(*at)? {
        0 => {
            *at += 1;
            Some(None)
        }
        1 => {
            *at += 1;
            let count = get_varint(body, at)?;
            let mut xattrs = Vec::new();
            for _ in 0..count {
                let mut part = || {
                    let len = usize::try_from(get_varint(body, at)?).ok()?;
                    let bytes = body.get(*at..at.checked_add(len)?)?.to_vec();
                    *at += len;
                    Some(bytes)
                };
                let (name, value) = (part()?, part()?);
                xattrs.push(Xattr { name, value });
            }
            Some(Some(xattrs))
        }
        _ => None,
    }
}

/// An entry's owner: `0` (not kept) or `1 | mode | uid | gid` (varints), then `0` or `1 |
/// zigzag btime_ns` (varint).
fn put_owner(v: &mut Vec<u8>, owner: Option<&Owner>) {
    let Some(o) = owner else {
        v.push(0);
        return;
    };
    v.push(1);
    for n in [o.mode, o.uid, o.gid] {
        put_varint(v, u64::from(n));
    }
    match o.btime_ns {
        None => v.push(0),
        Some(t) => {
            v.push(1);
            put_varint(v, zigzag(t));
        }
    }
}

/// The owner at `*at`: `Some(None)` when it was not kept.
fn get_owner(body: &[u8], at: &mut usize) -> Option<Option<Owner>> {
    let kept = *body.get(*at)?;
    *at += 1;
    match kept {
        0 => return Some(None),
        1 => {}
        _ => return None,
    }
    let mut n32 = || get_varint(body, at).and_then(|n| u32::try_from(n).ok());
    let (mode, uid, gid) = (n32()?, n32()?, n32()?);
    let has_btime = *body.get(*at)?;
    *at += 1;
    let btime_ns = match has_btime {
        0 => None,
        1 => Some(unzigzag(get_varint(body, at)?)),
        _ => return None,
    };
    Some(Some(Owner { mode, uid, gid, btime_ns }))
}

/// What a folder's subtree holds, as a snapshot's statistics count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
    /// Folders, the folder itself included.
    pub dirs: u64,
}

impl Totals {
    pub fn add(&mut self, o: Totals) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.dirs += o.dirs;
    }
}

/// A folder's own entry in its parent's tree, as of its record: what a watched backup writes
/// for a folder no event named, without asking the filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirStat {
    pub owner: Owner,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// None: not read (`--no-xattrs`).
    pub xattrs: Option<Vec<Xattr>>,
}

impl DirStat {
    pub fn of(m: &std::fs::Metadata, xattrs: Option<Vec<Xattr>>) -> Self {
        let fp = StatFingerprint::of(m);
        Self { owner: Owner::of(m), mtime_ns: fp.mtime_ns, ctime_ns: fp.ctime_ns, xattrs }
    }
}

/// A folder's tree id as last backed up, with its subtree's totals (`None` in records from
/// before they were kept) and its own entry (`None` for a root, or in older records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirRecord {
    pub key: Vec<u8>,
    pub tree: BlobId,
    pub totals: Option<Totals>,
    pub entry: Option<DirStat>,
}

impl DirRecord {
    pub fn new(path: &Path, tree: BlobId, totals: Totals, entry: Option<DirStat>) -> Self {
        Self { key: folder_key(path).to_vec(), tree, totals: Some(totals), entry }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + db::SUM);
        let Some(t) = self.totals else {
            v.push(DIR_VERSION_NO_TOTALS);
            v.extend_from_slice(self.tree.0.as_bytes());
            return db::seal_value(&self.key, v);
        };
        v.push(DIR_VERSION);
        v.extend_from_slice(self.tree.0.as_bytes());
        for n in [t.files, t.bytes, t.dirs] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        match &self.entry {
            None => v.push(0),
            Some(e) => {
                v.push(1);
                put_owner(&mut v, Some(&e.owner));
                put_varint(&mut v, zigzag(e.mtime_ns));
                put_varint(&mut v, zigzag(e.ctime_ns));
                put_xattrs(&mut v, e.xattrs.as_deref());
            }
        }
        db::seal_value(&self.key, v)
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Option<Self> {
        let body = db::open_value(key, v)?;
        let id: [u8; 32] = body.get(1..33)?.try_into().ok()?;
        let n = |at: usize| body.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let version = *body.first()?;
        let (totals, entry) = match (version, body.len()) {
            (DIR_VERSION_NO_TOTALS, 33) => (None, None),
            (DIR_VERSION_NO_ENTRY, 57) => (Some(Totals { files: n(33)?, bytes: n(41)?, dirs: n(49)? }), None),
            (DIR_VERSION, 58..) => {
                let totals = Totals { files: n(33)?, bytes: n(41)?, dirs: n(49)? };
                let mut at = 57;
                let entry = match body.get(at)? {
                    0 => {
                        at += 1;
                        None
                    }
                    1 => {
                        at += 1;
                        let owner = get_owner(body, &mut at)??;
                        let mtime_ns = unzigzag(get_varint(body, &mut at)?);
                        let ctime_ns = unzigzag(get_varint(body, &mut at)?);
                        let xattrs = get_xattrs(body, &mut at)?;
                        Some(DirStat { owner, mtime_ns, ctime_ns, xattrs })
                    }
                    _ => return None,
                };
                if at != body.len() {
                    return None;
                }
                (Some(totals), entry)
            }
            _ => return None,
        };
        Some(Self { key: key.to_vec(), tree: BlobId(Digest(id)), totals, entry })
    }
}

/// What the memo knows of one folder: its last tree id and its files' records.
#[derive(Debug, Default)]
pub struct FolderMemo {
    pub tree: Option<BlobId>,
    /// The totals kept with the folder's record.
    pub totals: Option<Totals>,
    /// The folder's own entry kept with its record.
    pub entry: Option<DirStat>,
    pub files: Vec<MemoRecord>,
}

/// A folder's key: the first 16 bytes of the BLAKE3 of its path, so that a key's size does
/// not grow with the folder's depth. Its records share it as a prefix.
fn folder_key(path: &Path) -> [u8; FOLDER_KEY] {
    let mut out = [0u8; FOLDER_KEY];
    out.copy_from_slice(&blake3::hash(path.as_os_str().as_bytes()).as_bytes()[..FOLDER_KEY]);
    out
}

/// The key of `name` in folder `parent`.
pub fn child_key(parent: &Path, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(FOLDER_KEY + name.len());
    k.extend_from_slice(&folder_key(parent));
    k.extend_from_slice(name);
    k
}

/// A short digest of a chunk list, to tell a changed file from a touched one.
pub fn chunk_list_digest(chunks: &[BlobId]) -> Digest {
    let mut bytes = Vec::with_capacity(chunks.len() * 32);
    for c in chunks {
        bytes.extend_from_slice(c.0.as_bytes());
    }
    checksum(&bytes)
}

/// The open memo. Without a usable database it answers every lookup with a miss.
pub struct Memo {
    db: Option<Database>,
    /// Serializes write transactions (redb allows one at a time).
    writing: Mutex<()>,
    pub warnings: Vec<String>,
    /// The file, and when redb's full integrity check last passed on it (for the marker
    /// [`Memo::close`] leaves).
    path: Option<PathBuf>,
    checked_ns: i64,
    /// Cleared to stop reading the file ahead.
    prefetching: Arc<AtomicBool>,
}

/// redb's full integrity check runs at least this often even on a file left cleanly.
const RECHECK_NS: i64 = 7 * 86_400 * 1_000_000_000;

fn marker_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.clean", path.display()))
}

/// (length, mtime ns) of a file.
fn file_stamp(path: &Path) -> Option<(u64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), bakare_store::clock::ns_of(m.modified().ok()?)))
}

impl Memo {
    /// A memo that remembers nothing (for `--no-cache` and tests).
    pub fn disabled() -> Self {
        Self {
            db: None,
            writing: Mutex::new(()),
            warnings: Vec::new(),
            path: None,
            checked_ns: 0,
            prefetching: Arc::default(),
        }
    }

    /// Checks `path` (redb's integrity check and the layout) without changing it: what a
    /// child process runs before the backup opens the file, so that damage that aborts the
    /// process (which no `catch_unwind` stops) takes down only the child.
    pub fn check_file(path: &Path, budget: &Budget) -> Result<(), String> {
        db::check(path, &options(budget, true))
    }

    /// Whether `path` needs redb's full integrity check before use: unless the last
    /// [`Memo::close`] left it exactly as it is now (same length and mtime) and the last full
    /// check is less than a week old. A clean close leaves a marker; a crash, another
    /// program, or damage to the marker means a check.
    pub fn needs_check(path: &Path) -> bool {
        let Some(Marker { len, mtime, checked, hash }) = Marker::read(path) else { return true };
        let now = bakare_store::clock::now_ns();
        // Length and mtime say nothing of a byte flipped in place (or a copy with the times
        // kept): the content hash does. Hashing reads the file, which the run reads anyway.
        file_stamp(path) != Some((len, mtime))
            || now.saturating_sub(checked) > RECHECK_NS
            || checked > now
            || content_hash(path) != Some(hash)
    }

    /// Opens a file that [`Memo::needs_check`] says was left cleanly, without the full check
    /// (a panic inside redb is still caught).
    pub fn open_unchecked(path: &Path, budget: &Budget) -> Self {
        let go = Arc::new(AtomicBool::new(true));
        prefetch(path, go.clone());
        let mut memo = Self::open_with(path, false, budget);
        memo.prefetching = go;
        memo.checked_ns = Marker::read(path).map_or(0, |m| m.checked);
        memo
    }

    /// Closes the database and leaves the marker [`Memo::needs_check`] reads.
    pub fn close(mut self) {
        let Some(db) = self.db.take() else { return };
        drop(db);
        if let Some(path) = &self.path
            && let Some((len, mtime)) = file_stamp(path)
            && self.checked_ns > 0
            && let Some(hash) = content_hash(path)
        {
            Marker { len, mtime, checked: self.checked_ns, hash }.write(path);
        }
    }

    /// [`Memo::open`] after a check in another process: a file the check rejected, or that
    /// made it crash (`Err` with the reason), is set aside and started anew.
    pub fn open_after_check(path: &Path, check: Result<(), String>, budget: &Budget) -> Self {
        let _ = std::fs::remove_file(marker_path(path));
        match check {
            // Checked already: redb's own check need not run again here.
            Ok(()) => {
                let mut memo = Self::open_with(path, false, budget);
                memo.checked_ns = bakare_store::clock::now_ns();
                memo
            }
            Err(reason) => {
                db::set_aside(path);
                let mut memo = Self::open(path, budget);
                memo.warnings
                    .insert(0, format!("local state {} is unusable ({reason}); starting a new one", path.display()));
                memo
            }
        }
    }

    /// Opens (or creates) `path`, with redb's integrity check. A file that fails it (or is
    /// of another layout) is set aside as `state.redb.corrupt` and a fresh one is created.
    pub fn open(path: &Path, budget: &Budget) -> Self {
        Self::open_with(path, true, budget)
    }

    fn open_with(path: &Path, check: bool, budget: &Budget) -> Self {
        let mut warnings = Vec::new();
        let db = match db::open(path, LAYOUT, &options(budget, check)) {
            Ok(opened) => {
                match opened.started_anew {
                    Some(db::Anew::Outdated(why)) => warnings.push(format!(
                        "local state {} was written by another version of bakare ({why}); starting a new one \
                         (this backup reads every file once)",
                        path.display()
                    )),
                    Some(why) => {
                        warnings.push(format!("local state {} is unusable ({why}); starting a new one", path.display()))
                    }
                    None => {}
                }
                Some(opened.db)
            }
            Err(db::OpenError::Busy(_)) => {
                warnings.push(format!(
                    "local state {} is in use by another bakare process; backing up without the memo",
                    path.display()
                ));
                None
            }
            Err(e) => {
                warnings.push(format!("cannot open {e}; backing up without the memo"));
                return Self {
                    db: None,
                    writing: Mutex::new(()),
                    warnings,
                    path: None,
                    checked_ns: 0,
                    prefetching: Arc::default(),
                };
            }
        };
        let checked_ns = if check { bakare_store::clock::now_ns() } else { 0 };
        Self {
            db,
            writing: Mutex::new(()),
            warnings,
            path: Some(path.to_path_buf()),
            checked_ns,
            prefetching: Arc::default(),
        }
    }

    /// The folder's own record and its files' records in name order. Damaged values are
    /// left out.
    pub fn folder(&self, path: &Path) -> FolderMemo {
        let Some(db) = &self.db else { return FolderMemo::default() };
        let lo = folder_key(path);
        let scan = || -> Result<FolderMemo, redb::Error> {
            let Some(table) = db::read_table(db, FILES)? else { return Ok(FolderMemo::default()) };
            let mut out = FolderMemo::default();
            for item in table.range(lo.as_slice()..)? {
                let (k, v) = item?;
                let key = k.value();
                if !key.starts_with(&lo) {
                    break;
                }
                if key.len() == FOLDER_KEY {
                    let d = DirRecord::decode(key, v.value());
                    if let Some(d) = d {
                        out.tree = Some(d.tree);
                        out.totals = d.totals;
                        out.entry = d.entry;
                    }
                } else if let Some(r) = MemoRecord::decode(key, v.value()) {
                    out.files.push(r);
                }
            }
            Ok(out)
        };
        scan().unwrap_or_default()
    }

    /// The folder's own record, if any.
    pub fn dir_record(&self, path: &Path) -> Option<DirRecord> {
        let db = self.db.as_ref()?;
        let key = folder_key(path);
        let read = || -> Result<Option<DirRecord>, redb::Error> {
            let Some(table) = db::read_table(db, FILES)? else { return Ok(None) };
            let Some(v) = table.get(key.as_slice())? else { return Ok(None) };
            Ok(DirRecord::decode(&key, v.value()))
        };
        read().ok().flatten()
    }

    /// Where backup set `set` stood with a watcher when its last snapshot's walk began.
    pub fn coverage(&self, set: &Digest) -> Option<crate::watch::client::Coverage> {
        let db = self.db.as_ref()?;
        let read = || -> Result<Option<crate::watch::client::Coverage>, redb::Error> {
            let Some(table) = db::read_table(db, WATCH)? else { return Ok(None) };
            let Some(v) = table.get(set.as_bytes().as_slice())? else { return Ok(None) };
            let Some(body) = db::open_value(set.as_bytes(), v.value()).filter(|b| b.len() == 24) else {
                return Ok(None);
            };
            let epoch = body.get(..16).and_then(|b| b.try_into().ok());
            let generation = body.get(16..).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
            Ok(epoch.zip(generation).map(|(epoch, generation)| crate::watch::client::Coverage { epoch, generation }))
        };
        read().ok().flatten()
    }

    /// Records (or, with `None`, forgets) where set `set` stands with a watcher.
    pub fn set_coverage(
        &self,
        set: &Digest,
        coverage: Option<crate::watch::client::Coverage>,
    ) -> Result<(), redb::Error> {
        let Some(db) = &self.db else { return Ok(()) };
        let _guard = self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(WATCH)?;
            match coverage {
                Some(c) => {
                    let mut v = c.epoch.to_vec();
                    v.extend_from_slice(&c.generation.to_le_bytes());
                    let v = db::seal_value(set.as_bytes(), v);
                    table.insert(set.as_bytes().as_slice(), v.as_slice())?;
                }
                None => {
                    table.remove(set.as_bytes().as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The index segments a run of backup set `set` recorded with [`Trust::Grant`], if any
    /// and if its checksum holds.
    pub fn trusted_segments(&self, set: &Digest) -> Option<Vec<Digest>> {
        let db = self.db.as_ref()?;
        let read = || -> Result<Option<Vec<Digest>>, redb::Error> {
            let Some(table) = db::read_table(db, TRUST)? else { return Ok(None) };
            let Some(v) = table.get(set.as_bytes().as_slice())? else { return Ok(None) };
            Ok(decode_trust(set, v.value()))
        };
        read().ok().flatten()
    }

    /// Files and bytes of the last complete run of backup set `set`, if remembered.
    pub fn totals(&self, set: &Digest) -> Option<(u64, u64)> {
        let db = self.db.as_ref()?;
        let read = || -> Result<Option<(u64, u64)>, redb::Error> {
            let Some(table) = db::read_table(db, TOTALS)? else { return Ok(None) };
            let Some(v) = table.get(set.as_bytes().as_slice())? else { return Ok(None) };
            let Some(body) = db::open_value(set.as_bytes(), v.value()).filter(|b| b.len() == 16) else {
                return Ok(None);
            };
            let half = |r: std::ops::Range<usize>| body.get(r).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
            Ok(half(0..8).zip(half(8..16)))
        };
        read().ok().flatten()
    }

    /// Remembers the files and bytes of a complete run of backup set `set`.
    pub fn set_totals(&self, set: &Digest, files: u64, bytes: u64) -> Result<(), redb::Error> {
        let Some(db) = &self.db else { return Ok(()) };
        let _guard = self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v = files.to_le_bytes().to_vec();
        v.extend_from_slice(&bytes.to_le_bytes());
        let v = db::seal_value(set.as_bytes(), v);
        let txn = db.begin_write()?;
        txn.open_table(TOTALS)?.insert(set.as_bytes().as_slice(), v.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Stores file and folder records, removes keys, and updates the trust table, in one
    /// durable transaction. Call only once the blobs the records name are durable.
    pub fn write(
        &self,
        records: &[MemoRecord],
        dirs: &[DirRecord],
        remove: &[Vec<u8>],
        trust: Trust<'_>,
    ) -> Result<(), redb::Error> {
        let Some(db) = &self.db else { return Ok(()) };
        let _guard = self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(FILES)?;
            for k in remove {
                table.remove(k.as_slice())?;
            }
            let mut sorted: Vec<(&[u8], Vec<u8>)> = records.iter().map(|r| (r.key.as_slice(), r.encode())).collect();
            sorted.extend(dirs.iter().map(|d| (d.key.as_slice(), d.encode())));
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in sorted {
                table.insert(k, v.as_slice())?;
            }
            let mut table = txn.open_table(TRUST)?;
            match trust {
                Trust::Keep => {}
                Trust::Revoke(set) => {
                    table.remove(set.as_bytes().as_slice())?;
                }
                Trust::RevokeAll => table.retain(|_, _| false)?,
                Trust::Grant(set, segments) => {
                    table.insert(set.as_bytes().as_slice(), encode_trust(set, segments).as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Rewrites the database without free space (after a run that wrote many records).
    pub fn compact(&mut self) -> Result<(), String> {
        match &mut self.db {
            Some(db) => db.compact().map(drop).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Stops reading the file ahead: the run will read only a few folders' records.
    pub fn stop_prefetch(&self) {
        self.prefetching.store(false, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.db.is_some()
    }
}

/// Reads the file once, front to back, on a thread of its own: the walk visits folders in an
/// order unrelated to their keys, so with a cold page cache its reads would be scattered;
/// one sequential read ahead of it turns them into cache hits.
/// Stops when `go` is cleared (a backup that lists only changed folders reads few pages).
fn prefetch(path: &Path, go: Arc<AtomicBool>) {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        use std::io::Read;
        let Ok(mut f) = std::fs::File::open(&path) else { return };
        let mut buf = vec![0u8; 1 << 20];
        while go.load(Ordering::Relaxed) && matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    });
}

/// BLAKE3 of a file's bytes, on every core (a memo of a million files is hundreds of MiB,
/// hashed at each open and close).
fn content_hash(path: &Path) -> Option<[u8; 32]> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match f.read(buf.get_mut(filled..)?) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        if filled == 0 {
            break;
        }
        h.update_rayon(buf.get(..filled)?);
        if filled < buf.len() {
            break;
        }
    }
    Some(*h.finalize().as_bytes())
}

/// `state.redb.clean`: the file's length, mtime and content hash at its last clean close,
/// and when redb's full check last passed on it (text: `length mtime_ns checked_ns hash`).
struct Marker {
    len: u64,
    mtime: i64,
    checked: i64,
    hash: [u8; 32],
}

impl Marker {
    fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(marker_path(path)).ok()?;
        let mut fields = text.split_whitespace();
        let len = fields.next()?.parse().ok()?;
        let mtime = fields.next()?.parse().ok()?;
        let checked = fields.next()?.parse().ok()?;
        let hex = fields.next()?;
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self { len, mtime, checked, hash })
    }

    fn write(&self, path: &Path) {
        let hex: String = self.hash.iter().map(|b| format!("{b:02x}")).collect();
        // A marker that is not written only costs a check next time.
        let _ = std::fs::write(marker_path(path), format!("{} {} {} {hex}\n", self.len, self.mtime, self.checked));
    }
}

/// What a [`Memo::write`] does to the trust table.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// Leave it: the records written were checked against the current index.
    Keep,
    /// This set's records are not all checked yet.
    Revoke(&'a Digest),
    /// The records may name blobs garbage collection marked: no set is trusted any more.
    RevokeAll,
    /// Every record this set relies on is checked, and these segments exist now.
    Grant(&'a Digest, &'a [Digest]),
}

fn encode_trust(set: &Digest, segments: &[Digest]) -> Vec<u8> {
    db::seal_value(set.as_bytes(), segments.iter().flat_map(|s| s.0).collect())
}

fn decode_trust(set: &Digest, v: &[u8]) -> Option<Vec<Digest>> {
    let ids = db::open_value(set.as_bytes(), v)?;
    if ids.len() % 32 != 0 {
        return None;
    }
    Some(ids.chunks_exact(32).filter_map(|c| <[u8; 32]>::try_from(c).ok()).map(Digest).collect())
}

/// The options of the memo's file: a share of the budget for its cache.
fn options(budget: &Budget, check_integrity: bool) -> db::Options {
    db::Options { cache_bytes: budget.local_cache_bytes(), check_integrity, ..db::Options::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> MemoRecord {
        let fp = StatFingerprint { size: 3, mtime_ns: 5, ctime_ns: 6, ino: 7, dev: 8, ..Default::default() };
        MemoRecord::new(&Path::new("/a/b").join(name), fp, false, vec![BlobId(checksum(name.as_bytes()))], None)
    }

    #[test]
    fn extreme_fingerprints_round_trip() {
        for (size, t, ino) in [(0, 0, 0), (u64::MAX, i64::MIN, u64::MAX), (1, -1, 1), (1 << 40, i64::MAX, 1 << 63)] {
            let fp = StatFingerprint {
                size,
                mtime_ns: t,
                ctime_ns: t.wrapping_neg(),
                ino,
                dev: ino ^ 5,
                linked: ino % 2 == 0,
                owner: (ino % 3 == 0).then_some(Owner { mode: 0o7777, uid: u32::MAX, gid: 0, btime_ns: Some(t) }),
            };
            let r = MemoRecord::new(Path::new("/x/y"), fp, true, vec![], None);
            assert_eq!(MemoRecord::decode(&r.key, &r.encode()), Some(r));
        }
        // Extended attributes, empty and not, round trip; a record without them reads.
        let owner = Some(Owner { mode: 0o640, uid: 1000, gid: 100, btime_ns: None });
        let fp = StatFingerprint { size: 1, mtime_ns: 2, ctime_ns: 3, ino: 4, dev: 5, linked: true, owner };
        for xattrs in [Some(vec![]), Some(vec![Xattr { name: b"user.x".to_vec(), value: vec![0; 300] }]), None] {
            let r = MemoRecord::new(Path::new("/x/z"), fp, false, vec![BlobId(checksum(b"c"))], xattrs);
            assert_eq!(MemoRecord::decode(&r.key, &r.encode()), Some(r));
        }
        // Versions 5 (without the owner) and 3 (without xattrs too) read as not kept.
        let fp = StatFingerprint { owner: None, ..fp };
        let r = MemoRecord::new(Path::new("/x/z"), fp, false, vec![BlobId(checksum(b"c"))], None);
        let body = db::open_value(&r.key, &r.encode()).unwrap().to_vec();
        assert_eq!(body.last(), Some(&0), "no owner");
        let mut v5 = body[..body.len() - 1].to_vec();
        v5[0] = VERSION_NO_OWNER;
        assert_eq!(MemoRecord::decode(&r.key, &db::seal_value(&r.key, v5)), Some(r.clone()));
        let mut v3 = body[..body.len() - 2].to_vec();
        v3[0] = VERSION_NO_XATTRS;
        assert_eq!(MemoRecord::decode(&r.key, &db::seal_value(&r.key, v3)), Some(r));
        let mut at = 0;
        assert_eq!(get_varint(&[0xff; 11], &mut at), None, "too long");
        let mut at = 0;
        assert_eq!(
            get_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], &mut at),
            None,
            "overflow"
        );
    }

    #[test]
    fn a_clean_close_spares_the_next_check_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        assert!(Memo::needs_check(&path), "no marker");
        Memo::open(&path, &Budget::default()).close();
        assert!(!Memo::needs_check(&path), "left cleanly and checked just now");
        let memo = Memo::open_unchecked(&path, &Budget::default());
        memo.write(&[record("x")], &[], &[], Trust::Keep).unwrap();
        drop(memo);
        assert!(Memo::needs_check(&path), "written but not closed cleanly");
        std::fs::write(marker_path(&path), "garbage").unwrap();
        assert!(Memo::needs_check(&path));
    }

    #[test]
    fn a_byte_flipped_with_length_and_mtime_kept_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let memo = Memo::open(&path, &Budget::default());
        memo.write(&[record("x"), record("y")], &[], &[], Trust::Keep).unwrap();
        memo.close();
        assert!(!Memo::needs_check(&path));
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert!(Memo::needs_check(&path), "same length and mtime, other content: checked");
    }

    #[test]
    fn an_older_layout_is_started_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(FILES).unwrap().insert(b"/a\0b".as_slice(), b"old".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let memo = Memo::open(&path, &Budget::default());
        assert!(memo.is_enabled());
        assert!(memo.warnings[0].contains("older layout"), "{:?}", memo.warnings);
        let busy = Memo::open(&path, &Budget::default());
        assert!(!busy.is_enabled() && busy.warnings[0].contains("in use"), "{:?}", busy.warnings);
        drop((memo, busy));
        let memo = Memo::open(&path, &Budget::default());
        assert!(memo.warnings.is_empty(), "the new one is kept: {:?}", memo.warnings);
    }

    #[test]
    fn values_round_trip_and_every_flip_is_a_miss() {
        let r = record("x");
        let v = r.encode();
        assert_eq!(MemoRecord::decode(&r.key, &v), Some(r.clone()));
        assert_eq!(r.name(), b"x");
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 1;
            assert_eq!(MemoRecord::decode(&r.key, &bad), None, "byte {i}");
        }
        assert_eq!(MemoRecord::decode(&child_key(Path::new("/a/b"), b"y"), &v), None, "a value under another key");
        for cut in 0..v.len() {
            assert_eq!(MemoRecord::decode(&r.key, &v[..cut]), None);
        }
    }

    #[test]
    fn children_are_scoped_to_their_folder() {
        let dir = tempfile::tempdir().unwrap();
        let memo = Memo::open(&dir.path().join("state.redb"), &Budget::default());
        let other = MemoRecord::new(Path::new("/a/bc/z"), StatFingerprint::default(), false, vec![], None);
        let tree = BlobId(checksum(b"tree"));
        let seg = checksum(b"segment");
        let set = checksum(b"set");
        let other_set = checksum(b"other set");
        memo.write(&[], &[], &[], Trust::Grant(&other_set, &[seg])).unwrap();
        memo.write(
            &[record("y"), record("x"), other],
            &[DirRecord::new(Path::new("/a/b"), tree, Totals { files: 2, bytes: 6, dirs: 1 }, None)],
            &[],
            Trust::Grant(&set, &[seg]),
        )
        .unwrap();
        let folder = memo.folder(Path::new("/a/b"));
        let names: Vec<_> = folder.files.iter().map(|r| r.name().to_vec()).collect();
        assert_eq!(names, [b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(folder.tree, Some(tree));
        assert_eq!(folder.totals, Some(Totals { files: 2, bytes: 6, dirs: 1 }));
        assert_eq!(memo.dir_record(Path::new("/a/b")).map(|d| d.tree), Some(tree));
        assert_eq!(memo.dir_record(Path::new("/a/bc")), None);
        assert_eq!(memo.trusted_segments(&set), Some(vec![seg]));
        // Where the set stands with a watcher: kept, and forgotten.
        let c = crate::watch::client::Coverage { epoch: [7; 16], generation: 42 };
        assert_eq!(memo.coverage(&set), None);
        memo.set_coverage(&set, Some(c)).unwrap();
        assert_eq!(memo.coverage(&set), Some(c));
        assert_eq!(memo.coverage(&other_set), None);
        memo.set_coverage(&set, None).unwrap();
        assert_eq!(memo.coverage(&set), None);
        memo.write(&[], &[], &[record("x").key], Trust::Revoke(&set)).unwrap();
        assert_eq!(memo.folder(Path::new("/a/b")).files.len(), 1);
        assert_eq!(memo.trusted_segments(&set), None);
        assert_eq!(memo.trusted_segments(&other_set), Some(vec![seg]));
        memo.write(&[], &[], &[], Trust::RevokeAll).unwrap();
        assert_eq!(memo.trusted_segments(&other_set), None);
    }

    #[test]
    fn folder_values_are_checked() {
        let totals = Totals { files: u64::MAX, bytes: 1 << 40, dirs: 3 };
        let new = DirRecord::new(Path::new("/a"), BlobId(checksum(b"t")), totals, None);
        let own = DirStat {
            owner: Owner { mode: 0o1755, uid: 7, gid: 8, btime_ns: Some(-9) },
            mtime_ns: i64::MIN,
            ctime_ns: 3,
            xattrs: Some(vec![Xattr { name: b"user.a".to_vec(), value: b"b".to_vec() }]),
        };
        let with_entry = DirRecord { entry: Some(own.clone()), ..new.clone() };
        let unread = DirRecord { entry: Some(DirStat { xattrs: None, ..own }), ..new.clone() };
        // Version 4 records, without totals, are still read.
        let old = DirRecord { totals: None, ..new.clone() };
        // Version 5 ones, without the entry, too.
        let mut v5 = db::open_value(&new.key, &new.encode()).unwrap().to_vec();
        assert_eq!(v5.pop(), Some(0), "no entry");
        v5[0] = DIR_VERSION_NO_ENTRY;
        assert_eq!(DirRecord::decode(&new.key, &db::seal_value(&new.key, v5)), Some(new.clone()));
        for d in [new, old, with_entry, unread] {
            let v = d.encode();
            assert_eq!(DirRecord::decode(&d.key, &v), Some(d.clone()));
            for i in 0..v.len() {
                let mut bad = v.clone();
                bad[i] ^= 4;
                assert_eq!(DirRecord::decode(&d.key, &bad), None);
            }
            assert_eq!(MemoRecord::decode(&d.key, &v), None, "a folder value is not a file value");
        }
    }

    #[test]
    fn a_garbage_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        std::fs::write(&path, vec![0x5a; 10_000]).unwrap();
        let memo = Memo::open(&path, &Budget::default());
        assert!(memo.is_enabled());
        assert_eq!(memo.warnings.len(), 1);
        assert!(dir.path().join("state.redb.corrupt").exists());
    }
}
