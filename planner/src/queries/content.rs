//! `file_content`: read one changed file, cut it into chunks, store them; its chunk list.
//!
//! The query's value carries what the run keeps of the read (which counter it moves, the
//! memo record, the error): [`Content::apply`] applies it, outside the query, once per
//! file. So a database that lives long (`watch`) may run the query again safely. What the
//! body still does besides returning its value is idempotent or only observed: blobs are
//! saved (by content: a second run stores nothing new), and the live bytes-read counter and
//! the current path feed the progress display.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bakare_store::{BlobId, BlobKind, StoreError};

use crate::counters::Counters;
use crate::db::{Db, RunContext};
use crate::inputs::{SourceFile, StatFingerprint};
use crate::memo::{MemoRecord, chunk_list_digest};

/// Timestamps are trusted only this far behind the moment a file was read: a write in the
/// same tick as the recorded mtime would not change it (racy-git).
const RACY_NS: i64 = 2_000_000_000;

/// What reading a file gave. Two values are equal when the file's folder sees the same
/// thing (size and chunks, or the error, or the stop): a file read again with the same
/// content is then backdated and its folder's tree not built again, although its memo
/// record (a new ctime) differs. The value returned is always this run's own.
#[derive(Clone, Debug)]
pub enum Content {
    Read {
        size: u64,
        chunks: Vec<BlobId>,
        change: FileChange,
        /// What the memo remembers of the file; `None` if it changed while it was read.
        record: Option<MemoRecord>,
    },
    /// The file could not be read; the run goes on.
    Unreadable(String),
    /// The repository failed: the run stops.
    Fatal(Stop),
}

impl PartialEq for Content {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Content::Read { size: a, chunks: x, .. }, Content::Read { size: b, chunks: y, .. }) => a == b && x == y,
            (Content::Unreadable(a), Content::Unreadable(b)) => a == b,
            (Content::Fatal(a), Content::Fatal(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Content {}

/// How a file read compares with its previous backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChange {
    New,
    Changed,
    Unchanged,
}

impl Content {
    /// Applies what the read gave to the run: counters, the memo record, the error, the
    /// stop. Call once per file, outside any query.
    pub fn apply(&self, run: &RunContext, path: &Path) {
        match self {
            Content::Read { change, record, .. } => {
                Counters::add(&run.counters.files, 1);
                let counter = match change {
                    FileChange::New => &run.counters.files_new,
                    FileChange::Changed => &run.counters.files_changed,
                    FileChange::Unchanged => &run.counters.files_unchanged,
                };
                Counters::add(counter, 1);
                if *change != FileChange::Unchanged
                    && let Ok(mut changes) = run.counters.changes.lock()
                    && let Some(list) = changes.as_mut()
                {
                    list.push((*change, path.to_path_buf()));
                }
                if let Some(record) = record
                    && let Ok(mut fresh) = run.fresh.lock()
                {
                    fresh.push(record.clone());
                }
            }
            Content::Unreadable(msg) => {
                Counters::add(&run.counters.files, 1);
                Counters::add(&run.counters.errors, 1);
                if let Ok(mut errors) = run.errors.lock() {
                    errors.push((path.to_path_buf(), msg.clone()));
                }
            }
            Content::Fatal(stop) => {
                if stop.message != crate::backup::INTERRUPTED
                    && let Ok(mut stopped) = run.stopped.lock()
                {
                    stopped.get_or_insert_with(|| stop.clone());
                }
            }
        }
    }
}

/// Why a run stopped inside a query, kept as a value salsa can compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    pub message: String,
    /// The repository's storage failed (full, unreachable): `resume` can continue.
    pub resumable: bool,
}

impl From<&StoreError> for Stop {
    fn from(e: &StoreError) -> Self {
        // A refusal no retry can fix (credentials, a missing bucket) is not resumable.
        Self { message: e.to_string(), resumable: matches!(e, StoreError::Backend(b) if !b.is_permanent()) }
    }
}

#[salsa::tracked(returns(ref))]
pub fn file_content(db: &dyn Db, file: SourceFile) -> Content {
    let path = file.path(db);
    db.log(format!("file_content {}", path.display()));
    let run = db.run();
    if let Some(stop) = run.stopped.lock().ok().and_then(|s| s.clone()) {
        return Content::Fatal(stop);
    }
    if run.interrupted() {
        return Content::Fatal(Stop { message: crate::backup::INTERRUPTED.into(), resumable: true });
    }
    run.counters.set_current(path);
    let read_ns = now_ns();
    match read_chunks(run, path, file.fp(db).size) {
        Ok((size, chunks, after)) => {
            let fp = file.fp(db);
            let digest = chunk_list_digest(&chunks);
            let change = match file.previous(db) {
                None => FileChange::New,
                Some(prev) if prev == digest => FileChange::Unchanged,
                Some(_) => FileChange::Changed,
            };
            // Remember the content only if the file did not change while it was read.
            let record = (after.same_content(&fp) && size == fp.size).then(|| {
                let racy = fp.mtime_ns > read_ns - RACY_NS;
                MemoRecord::new(path, fp, racy, chunks.clone(), file.xattrs(db).clone())
            });
            Content::Read { size, chunks, change, record }
        }
        Err(ReadError::Io(e)) => Content::Unreadable(format!("cannot read file: {e}")),
        Err(ReadError::Store(e)) => Content::Fatal(Stop::from(&e)),
    }
}

enum ReadError {
    Io(std::io::Error),
    Store(StoreError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Reads and stores a file's chunks; returns its size, chunk ids and its fingerprint after
/// reading (to detect a change during the read).
fn read_chunks(
    run: &RunContext,
    path: &Path,
    size_hint: u64,
) -> Result<(u64, Vec<BlobId>, StatFingerprint), ReadError> {
    let file = open_no_follow(path)?;
    // A large file's buffer waits for its share of the memory budget.
    let _permit = (size_hint >= bakare_store::SMALL_READ)
        .then(|| run.repo.budget().read_permit(size_hint.saturating_add(1).min(run.chunker.buffer_len() as u64)));
    let mut chunks = Vec::new();
    let store = |batch: &[&[u8]]| {
        chunks.extend(store_batch(run, batch)?);
        Ok::<_, ReadError>(())
    };
    let meta = file.metadata()?;
    let size = if crate::sparse::SparseReader::worth_it(meta.len(), std::os::unix::fs::MetadataExt::blocks(&meta)) {
        run.chunker.stream(crate::sparse::SparseReader::new(&file), size_hint, store)?
    } else {
        run.chunker.stream(&file, size_hint, store)?
    };
    Ok((size, chunks, StatFingerprint::of(&file.metadata()?).on(&run.devices)))
}

/// Hashes, compresses, seals and stores a batch of chunks, spreading a batch of several
/// chunks (a large file) over scoped threads.
fn store_batch(run: &RunContext, batch: &[&[u8]]) -> Result<Vec<BlobId>, StoreError> {
    let save = |c: &&[u8]| {
        Counters::add(&run.counters.bytes_read, c.len() as u64);
        // A run of zeros (a sparse file's holes) is cut into equal chunks of zeros: the first
        // is hashed and stored, the others take its id.
        let zeros = c.len() >= run.chunker.min_len() && bakare_store::all_zero(c);
        if zeros && let Some(id) = run.zero_chunk.lock().ok().and_then(|z| z.filter(|(len, _)| *len == c.len())) {
            return Ok(id.1);
        }
        let id = run.repo.save_blob(BlobKind::Data, c).map(|o| o.id)?;
        if zeros && let Ok(mut z) = run.zero_chunk.lock() {
            *z = Some((c.len(), id));
        }
        Ok(id)
    };
    if batch.len() <= 1 {
        return batch.iter().map(save).collect();
    }
    let workers = cores().min(batch.len());
    let per = batch.len().div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = batch
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(save).collect::<Result<Vec<_>, _>>()))
            .collect();
        let mut out = Vec::with_capacity(batch.len());
        for h in handles {
            match h.join() {
                Ok(ids) => out.extend(ids?),
                Err(_) => {
                    return Err(StoreError::Corrupt {
                        object: "chunk worker".into(),
                        reason: "a worker thread panicked".into(),
                    });
                }
            }
        }
        Ok(out)
    })
}

/// The number of cores, asked once: `available_parallelism` reads cgroup files every call.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(usize::from).unwrap_or(2))
}

fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME).open(path).or_else(|e| {
        // O_NOATIME is refused (EPERM) on files the caller does not own.
        if e.raw_os_error() == Some(libc::EPERM) {
            OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
        } else {
            Err(e)
        }
    })
}
