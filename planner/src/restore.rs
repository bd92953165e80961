//! Restore: write a snapshot's tree (or part of it) back to disk.
//!
//! Folders' children are restored in parallel; every blob is authenticated and re-hashed by
//! the store on the way out. Runs of zero 4 KiB blocks are skipped with a seek, so holes of
//! sparse files stay holes. Metadata is applied after content: owner (when permitted), then
//! mode (chown clears set-id bits), then times, and folders after their children.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bakare_store::{BlobId, Entry, Metadata, Node, Repository};
use filetime::FileTime;
use rayon::prelude::*;

use crate::counters::Counters;
use crate::error::{PlanError, io};

const BLOCK: usize = 4096;

/// How to restore.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Restore into a target that already has files, replacing what has the same name.
    pub overwrite: bool,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Entries not restored, with the reason (unreadable at backup time, special files).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Where a restore starts: a whole tree, or one entry.
pub enum Start {
    Tree(BlobId),
    Entry(Box<Entry>),
}

/// Finds `path` (slash-separated, relative to the snapshot root) below `root`.
pub fn find_node(repo: &Repository, root: BlobId, path: &str) -> Result<Start, PlanError> {
    let mut current = Start::Tree(root);
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let Start::Tree(id) = current else {
            return Err(PlanError::NoSuchPath(path.into()));
        };
        let tree = repo.load_tree(&id)?;
        let entry = tree.get(part.as_bytes()).cloned().ok_or_else(|| PlanError::NoSuchPath(path.into()))?;
        current = match entry.node {
            Node::Dir { tree } => Start::Tree(tree),
            _ => Start::Entry(Box::new(entry)),
        };
    }
    Ok(current)
}

struct Ctx<'a> {
    repo: &'a Repository,
    opts: RestoreOptions,
    counters: &'a Counters,
    skipped: Mutex<Vec<(PathBuf, String)>>,
}

/// Restores `start` into the folder `target` (created if missing). A tree's contents go
/// directly into `target`; a single entry goes to `target/<its name>`.
pub fn restore(
    repo: &Repository,
    start: Start,
    target: &Path,
    opts: RestoreOptions,
    counters: &Counters,
) -> Result<RestoreReport, PlanError> {
    if !opts.overwrite && target.exists() {
        let mut entries = fs::read_dir(target).map_err(io(target))?;
        if entries.next().is_some() {
            return Err(PlanError::TargetNotEmpty(target.to_path_buf()));
        }
    }
    fs::create_dir_all(target).map_err(io(target))?;
    let ctx = Ctx { repo, opts, counters, skipped: Mutex::default() };
    match start {
        Start::Tree(id) => ctx.tree(&id, target)?,
        Start::Entry(e) => {
            let path = target.join(std::ffi::OsStr::from_bytes(&e.name));
            ctx.entry(&e, &path)?;
        }
    }
    Ok(RestoreReport { skipped: ctx.skipped.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) })
}

impl Ctx<'_> {
    fn skip(&self, path: &Path, why: impl Into<String>) {
        if let Ok(mut s) = self.skipped.lock() {
            s.push((path.to_path_buf(), why.into()));
        }
    }

    fn tree(&self, id: &BlobId, dir: &Path) -> Result<(), PlanError> {
        let tree = self.repo.load_tree(id)?;
        tree.entries.par_iter().try_for_each(|e| self.entry(e, &dir.join(std::ffi::OsStr::from_bytes(&e.name))))
    }

    fn entry(&self, e: &Entry, path: &Path) -> Result<(), PlanError> {
        if let Some(err) = &e.error
            && !matches!(e.node, Node::Dir { .. })
        {
            self.skip(path, format!("not restored: at backup time: {err}"));
            return Ok(());
        }
        match &e.node {
            Node::Dir { tree } => {
                Counters::add(&self.counters.dirs, 1);
                match fs::create_dir(path) {
                    Err(err) if !(self.opts.overwrite && path.is_dir()) => return Err(io(path)(err)),
                    _ => {}
                }
                self.tree(tree, path)?;
                apply_metadata(path, &e.meta, false)
            }
            Node::File { size, chunks } => {
                Counters::add(&self.counters.files, 1);
                self.counters.set_current(path);
                self.file(path, *size, chunks)?;
                apply_metadata(path, &e.meta, false)
            }
            Node::Symlink { target } => {
                if self.opts.overwrite && path.symlink_metadata().is_ok() {
                    remove_any(path)?;
                }
                symlink(std::ffi::OsStr::from_bytes(target), path).map_err(io(path))?;
                apply_metadata(path, &e.meta, true)
            }
            other => {
                self.skip(path, format!("{} not restored (special files are recorded only)", other.kind_name()));
                Ok(())
            }
        }
    }

    fn file(&self, path: &Path, size: u64, chunks: &[BlobId]) -> Result<(), PlanError> {
        if self.opts.overwrite && path.symlink_metadata().is_ok_and(|m| !m.is_file()) {
            remove_any(path)?;
        }
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(io(path))?;
        let mut written = 0u64;
        for id in chunks {
            let data = self.repo.load_blob(id)?;
            write_sparse(&mut f, &data).map_err(io(path))?;
            written += data.len() as u64;
            Counters::add(&self.counters.bytes_written, data.len() as u64);
        }
        if written != size {
            return Err(bakare_store::StoreError::Corrupt {
                object: path.display().to_string(),
                reason: format!("its chunks hold {written} bytes, the tree says {size}"),
            }
            .into());
        }
        // Trailing holes: extend to the full length without writing.
        f.set_len(size).map_err(io(path))?;
        Ok(())
    }
}

/// Writes `data` at the current position, seeking over whole zero blocks.
fn write_sparse(f: &mut File, data: &[u8]) -> std::io::Result<()> {
    let mut run_start = 0usize;
    let mut at = 0usize;
    while at < data.len() {
        let end = (at + BLOCK).min(data.len());
        let block = data.get(at..end).unwrap_or_default();
        if block.len() == BLOCK && block.iter().all(|&b| b == 0) {
            f.write_all(data.get(run_start..at).unwrap_or_default())?;
            f.seek(SeekFrom::Current(BLOCK as i64))?;
            run_start = end;
        }
        at = end;
    }
    f.write_all(data.get(run_start..).unwrap_or_default())
}

fn remove_any(path: &Path) -> Result<(), PlanError> {
    let meta = path.symlink_metadata().map_err(io(path))?;
    if meta.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) }.map_err(io(path))
}

fn apply_metadata(path: &Path, m: &Metadata, is_link: bool) -> Result<(), PlanError> {
    // Ownership needs privilege; without it the files stay the restoring user's, as with tar.
    if let Err(e) = lchown(path, Some(m.uid), Some(m.gid))
        && e.kind() != std::io::ErrorKind::PermissionDenied
    {
        return Err(io(path)(e));
    }
    if !is_link {
        fs::set_permissions(path, fs::Permissions::from_mode(m.mode)).map_err(io(path))?;
    }
    let t = FileTime::from_unix_time(m.mtime_ns.div_euclid(1_000_000_000), m.mtime_ns.rem_euclid(1_000_000_000) as u32);
    filetime::set_symlink_file_times(path, t, t).map_err(io(path))
}
