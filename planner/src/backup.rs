//! A backup run: source paths → trees of entries → a snapshot, written last.
//!
//! Folders are walked depth-first with rayon (siblings in parallel); each file is read
//! through the [`Chunker`] and each batch of chunks is hashed, compressed and sealed in
//! parallel. A file that cannot be read becomes an entry with an error and the run goes on.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bakare_store::{BlobId, BlobKind, Entry, Node, Repository, Snapshot, SnapshotId, SnapshotStats, Tree};
use rayon::prelude::*;

use crate::chunker::Chunker;
use crate::counters::Counters;
use crate::error::PlanError;
use crate::exclude::Excludes;
use crate::meta::{metadata_of, special_node};

/// What a backup is told beyond its paths.
pub struct BackupOptions {
    pub excludes: Excludes,
    pub host: String,
    pub user: String,
    pub tags: Vec<String>,
}

/// What a finished backup produced.
#[derive(Debug)]
pub struct BackupReport {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    /// Every path that could not be backed up in full, with the reason.
    pub errors: Vec<(PathBuf, String)>,
}

struct Ctx<'a> {
    repo: &'a Repository,
    chunker: Chunker,
    counters: &'a Counters,
    errors: Mutex<Vec<(PathBuf, String)>>,
    files_new: AtomicU64,
    files_unchanged: AtomicU64,
}

/// The source paths arranged as a tree of path components from `/`.
#[derive(Default)]
struct Sources {
    children: BTreeMap<OsString, Sources>,
    /// This component is itself a source: back up everything below it.
    whole: bool,
}

impl Sources {
    fn insert(&mut self, path: &Path) {
        let mut node = self;
        for c in path.components().skip(1) {
            if node.whole {
                return;
            }
            node = node.children.entry(c.as_os_str().to_owned()).or_default();
        }
        node.whole = true;
        node.children.clear();
    }
}

/// Backs up `paths` into `repo` and writes a snapshot.
pub fn backup(
    repo: &Repository,
    paths: &[PathBuf],
    opts: &BackupOptions,
    counters: &Counters,
) -> Result<BackupReport, PlanError> {
    let started = Instant::now();
    let time_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let mut sources = Sources::default();
    let mut abs_paths = Vec::new();
    for p in paths {
        let abs = fs::canonicalize(p).map_err(|source| PlanError::Source { path: p.clone(), source })?;
        fs::symlink_metadata(&abs).map_err(|source| PlanError::Source { path: p.clone(), source })?;
        sources.insert(&abs);
        abs_paths.push(abs.as_os_str().as_bytes().to_vec());
    }
    let cfg = repo.config();
    let ctx = Ctx {
        repo,
        chunker: Chunker::new(cfg.chunker, repo.access().write_key().chunker_seed.0),
        counters,
        errors: Mutex::default(),
        files_new: AtomicU64::new(0),
        files_unchanged: AtomicU64::new(0),
    };
    let stored_before = repo.stats.bytes_stored.load(Ordering::Relaxed);
    let root = if sources.whole {
        ctx.dir_tree(Path::new("/"), &opts.excludes.enter(Path::new("/")))?.0
    } else {
        ctx.virtual_tree(&sources, Path::new("/"), &opts.excludes)?
    };
    repo.flush()?;
    let errors = ctx.errors.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let stats = SnapshotStats {
        files_new: ctx.files_new.load(Ordering::Relaxed),
        files_changed: 0,
        files_unchanged: ctx.files_unchanged.load(Ordering::Relaxed),
        dirs: Counters::get(&counters.dirs),
        errors: errors.len() as u64,
        bytes_read: Counters::get(&counters.bytes_read),
        bytes_added: repo.stats.bytes_stored.load(Ordering::Relaxed) - stored_before,
        total_bytes: Counters::get(&counters.bytes_read),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    abs_paths.sort();
    let snapshot = Snapshot {
        time_ns,
        host: opts.host.clone(),
        user: opts.user.clone(),
        paths: abs_paths,
        tags: opts.tags.clone(),
        root,
        parent: None,
        stats,
        program: format!("bakare {}", env!("CARGO_PKG_VERSION")),
    };
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupReport { id, snapshot, errors })
}

impl Ctx<'_> {
    fn record_error(&self, path: &Path, msg: String) {
        Counters::add(&self.counters.errors, 1);
        if let Ok(mut e) = self.errors.lock() {
            e.push((path.to_path_buf(), msg));
        }
    }

    /// A folder on the way to a source: only the source-bearing children are listed.
    fn virtual_tree(&self, node: &Sources, path: &Path, ex: &Excludes) -> Result<BlobId, PlanError> {
        let entries = node
            .children
            .par_iter()
            .map(|(name, child)| {
                let child_path = path.join(name);
                let meta = fs::symlink_metadata(&child_path)
                    .map_err(|source| PlanError::Source { path: child_path.clone(), source })?;
                if child.whole {
                    self.entry(&child_path, name.as_bytes(), &meta, ex)
                } else {
                    let tree = self.virtual_tree(child, &child_path, ex)?;
                    Counters::add(&self.counters.dirs, 1);
                    Ok(Entry {
                        name: name.as_bytes().to_vec(),
                        node: Node::Dir { tree },
                        meta: metadata_of(&meta),
                        error: None,
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.repo.save_tree(&Tree { entries })?.id)
    }

    /// A folder's tree, and the error that kept it from being listed, if any.
    fn dir_tree(&self, path: &Path, ex: &Excludes) -> Result<(BlobId, Option<String>), PlanError> {
        Counters::add(&self.counters.dirs, 1);
        let listing = match list_dir(path, ex) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("cannot list folder: {e}");
                self.record_error(path, msg.clone());
                return Ok((self.repo.save_tree(&Tree::default())?.id, Some(msg)));
            }
        };
        let entries = listing
            .into_par_iter()
            .filter_map(|(name, child)| match fs::symlink_metadata(&child) {
                Ok(meta) => Some(self.entry(&child, name.as_bytes(), &meta, ex)),
                Err(e) => {
                    self.record_error(&child, format!("vanished or unreadable: {e}"));
                    None
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((self.repo.save_tree(&Tree { entries })?.id, None))
    }

    fn entry(&self, path: &Path, name: &[u8], meta: &fs::Metadata, ex: &Excludes) -> Result<Entry, PlanError> {
        let ft = meta.file_type();
        let mut error = None;
        let node = if ft.is_dir() {
            let (tree, err) = self.dir_tree(path, &ex.enter(path))?;
            error = err;
            Node::Dir { tree }
        } else if ft.is_file() {
            match self.file_chunks(path, meta) {
                Ok((size, chunks)) => Node::File { size, chunks },
                Err(FileError::Io(e)) => {
                    let msg = format!("cannot read file: {e}");
                    self.record_error(path, msg.clone());
                    error = Some(msg);
                    Node::File { size: meta.len(), chunks: Vec::new() }
                }
                Err(FileError::Store(e)) => return Err(e.into()),
            }
        } else if ft.is_symlink() {
            match fs::read_link(path) {
                Ok(t) => Node::Symlink { target: t.as_os_str().as_bytes().to_vec() },
                Err(e) => {
                    let msg = format!("cannot read symlink: {e}");
                    self.record_error(path, msg.clone());
                    error = Some(msg);
                    Node::Symlink { target: Vec::new() }
                }
            }
        } else {
            special_node(meta)
        };
        Ok(Entry { name: name.to_vec(), node, meta: metadata_of(meta), error })
    }

    fn file_chunks(&self, path: &Path, meta: &fs::Metadata) -> Result<(u64, Vec<BlobId>), FileError> {
        Counters::add(&self.counters.files, 1);
        self.counters.set_current(path);
        let file = open_no_follow(path)?;
        let mut chunks = Vec::new();
        let mut stored = 0u64;
        let size = self.chunker.stream(file, meta.len(), |batch: &[&[u8]]| {
            let saved = batch
                .par_iter()
                .map(|c| {
                    let out = self.repo.save_blob(BlobKind::Data, c);
                    Counters::add(&self.counters.bytes_read, c.len() as u64);
                    out
                })
                .collect::<Result<Vec<_>, _>>()?;
            stored += saved.iter().map(|s| s.stored).sum::<u64>();
            chunks.extend(saved.iter().map(|s| s.id));
            Ok::<_, FileError>(())
        })?;
        let counter = if stored > 0 || chunks.is_empty() { &self.files_new } else { &self.files_unchanged };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok((size, chunks))
    }
}

enum FileError {
    Io(std::io::Error),
    Store(bakare_store::StoreError),
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<bakare_store::StoreError> for FileError {
    fn from(e: bakare_store::StoreError) -> Self {
        Self::Store(e)
    }
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

/// A folder's children that are not excluded, sorted by name bytes.
fn list_dir(path: &Path, ex: &Excludes) -> std::io::Result<Vec<(OsString, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let child = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !ex.is_excluded(&child, is_dir) {
            out.push((entry.file_name(), child));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}
