//! Restore: write a snapshot's tree (or part of it) back to disk.
//!
//! Folders' children are restored in parallel; every blob is authenticated and re-hashed by
//! the store on the way out. Runs of zero 4 KiB blocks are skipped with a seek, so holes of
//! sparse files stay holes. Metadata is applied after content: owner (when permitted), then
//! mode (chown clears set-id bits), then times, and folders after their children.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bakare_store::{BlobId, Entry, Metadata, Node, PackId, Repository, Xattr};
use filetime::FileTime;
use ignore::gitignore::Gitignore;
use rayon::prelude::*;

use crate::counters::Counters;
use crate::error::{PlanError, io};

const BLOCK: usize = 4096;
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How to restore.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Restore into a target that already has files, replacing what has the same name
    /// (a regular file already there with the snapshot's size and mtime is kept: a restore
    /// run again after an interruption continues where it stopped).
    pub overwrite: bool,
    /// Write what is readable of a damaged file, its lost ranges as holes, under its own
    /// name (it is still reported as not restored completely).
    pub keep_damaged: bool,
}

/// Which entries a restore writes (restic's `--include` / `--exclude`): gitignore-style
/// patterns matched against an entry's path in the snapshot (`/home/me/a.txt`). An excluded
/// entry is left out with all below it. With includes, only what an include matches is
/// written, with all below it, and the folders on the way to it; folders with nothing
/// included below them are not left behind.
#[derive(Default)]
pub struct RestoreSelect {
    include: Vec<Gitignore>,
    exclude: Vec<Gitignore>,
}

impl RestoreSelect {
    /// Rules from patterns, `i` ones matched ignoring case.
    pub fn new(
        include: &[String],
        iinclude: &[String],
        exclude: &[String],
        iexclude: &[String],
    ) -> Result<Self, PlanError> {
        let build = crate::exclude::gitignore;
        Ok(Self {
            include: [build(include, false)?, build(iinclude, true)?].into_iter().flatten().collect(),
            exclude: [build(exclude, false)?, build(iexclude, true)?].into_iter().flatten().collect(),
        })
    }

    /// Whether only what includes match is written.
    pub fn narrows(&self) -> bool {
        !self.include.is_empty()
    }

    /// Whether everything is written (no includes, no excludes).
    pub fn takes_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        self.exclude.iter().any(|g| g.matched(path, is_dir).is_ignore())
    }

    fn included(&self, path: &Path, is_dir: bool) -> bool {
        self.include.is_empty() || self.include.iter().any(|g| g.matched(path, is_dir).is_ignore())
    }

    /// Whether the start of a restore (an absolute path) or a folder above it is excluded.
    fn start_excluded(&self, path: &Path, is_dir: bool) -> bool {
        self.exclude.iter().any(|g| g.matched_path_or_any_parents(path, is_dir).is_ignore())
    }

    /// Whether the start of a restore (an absolute path) or a folder above it is included.
    fn start_included(&self, path: &Path, is_dir: bool) -> bool {
        self.include.is_empty() || self.include.iter().any(|g| g.matched_path_or_any_parents(path, is_dir).is_ignore())
    }
}

/// A folder whose metadata is applied at the end, after everything below it.
struct Folder {
    path: PathBuf,
    meta: Metadata,
    xattrs: Vec<Xattr>,
    /// Made by this restore only on the way to what includes match: removed if nothing
    /// below it was written.
    on_the_way: bool,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Special files, recorded only (FIFOs, sockets, devices): not an incomplete restore.
    pub skipped: Vec<(PathBuf, String)>,
    /// Entries not restored completely, with the reason: damage in the repository (each
    /// named object), errors writing the target, or what could not be read at backup time.
    pub incomplete: Vec<(PathBuf, String)>,
    /// Files already in the target with the snapshot's size and mtime, left as they were.
    pub kept: u64,
    /// Trees read from their second copy (their first is damaged).
    pub fallbacks: Vec<String>,
    /// Whether anything was let through `--include` / `--exclude` (or there were none).
    pub selected_any: bool,
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
    incomplete: Mutex<Vec<(PathBuf, String)>>,
    kept: std::sync::atomic::AtomicU64,
    /// The repository is on remote storage: small files are restored in batches, their
    /// chunks read through the store's spans, and folders' metadata applied at the end.
    remote: bool,
    /// Remote only: small files waiting to be restored in pack order, a batch at a time.
    pending: Mutex<Vec<PendingFile>>,
    /// Folders whose metadata is applied last, children before parents: all of them when
    /// remote (their files come later), and those only on the way to what is included.
    folders: Mutex<Vec<Folder>>,
    /// Which entries are written.
    select: &'a RestoreSelect,
    /// Where `start` is in the snapshot (`/` for a snapshot's root), and where on disk:
    /// an entry's path in the snapshot is found from its path on disk.
    base: PathBuf,
    target: PathBuf,
    /// Whether any entry was let through the selection.
    selected_any: std::sync::atomic::AtomicBool,
    /// Hard-link groups: the first name restored of each.
    links: Mutex<HashMap<u64, PathBuf>>,
    /// The other names of each group, linked to the first at the end.
    link_later: Mutex<Vec<(PathBuf, u64)>>,
}

/// A small file of a remote restore, restored with others of its batch in pack order.
struct PendingFile {
    path: PathBuf,
    size: u64,
    chunks: Vec<BlobId>,
    meta: Metadata,
    xattrs: Vec<Xattr>,
}

/// Small files restored together, sorted by where their chunks lie.
const BATCH_FILES: usize = 20_000;

/// Restores `start` into the folder `target` (created if missing). A tree's contents go
/// directly into `target`; a single entry goes to `target/<its name>`.
pub fn restore(
    repo: &Repository,
    start: Start,
    target: &Path,
    opts: RestoreOptions,
    counters: &Counters,
) -> Result<RestoreReport, PlanError> {
    restore_selected(repo, start, "/", target, opts, &RestoreSelect::default(), counters)
}

/// As [`restore`], writing only what `select` lets through; `at` is where `start` is in the
/// snapshot (`/home/me`, or `/` for its root), against which patterns are matched.
pub fn restore_selected(
    repo: &Repository,
    start: Start,
    at: &str,
    target: &Path,
    opts: RestoreOptions,
    select: &RestoreSelect,
    counters: &Counters,
) -> Result<RestoreReport, PlanError> {
    if !opts.overwrite && target.exists() {
        let mut entries = fs::read_dir(target).map_err(io(target))?;
        if entries.next().is_some() {
            return Err(PlanError::TargetNotEmpty(target.to_path_buf()));
        }
    }
    fs::create_dir_all(target).map_err(io(target))?;
    let remote = repo.backend().is_remote();
    let ctx = Ctx {
        repo,
        opts,
        counters,
        skipped: Mutex::default(),
        incomplete: Mutex::default(),
        kept: Default::default(),
        remote,
        pending: Mutex::default(),
        folders: Mutex::default(),
        links: Mutex::default(),
        link_later: Mutex::default(),
        select,
        // `home//me/` is found as `/home/me`, and matched as that.
        base: Path::new("/").join(at).components().collect(),
        target: target.to_path_buf(),
        selected_any: std::sync::atomic::AtomicBool::new(false),
    };
    let is_dir = matches!(start, Start::Tree(_));
    if !select.start_excluded(&ctx.base, is_dir) {
        let selected = select.start_included(&ctx.base, is_dir);
        if selected {
            ctx.selected_any.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match start {
            Start::Tree(id) => ctx.tree(&id, target, selected)?,
            Start::Entry(e) if selected => {
                let path = target.join(std::ffi::OsStr::from_bytes(&e.name));
                ctx.entry_or_record(&e, &path, true)?;
            }
            Start::Entry(_) => {}
        }
    }
    let rest = std::mem::take(&mut *lock(&ctx.pending));
    ctx.restore_batch(rest)?;
    ctx.make_links()?;
    // Children before their parents: each folder's times are set after its contents.
    for f in std::mem::take(&mut *lock(&ctx.folders)) {
        // Nothing was written below a folder only on the way: it goes (it is empty).
        if f.on_the_way && fs::remove_dir(&f.path).is_ok() {
            continue;
        }
        if f.on_the_way {
            Counters::add(&ctx.counters.dirs, 1);
        }
        if let Err(e) = ctx.apply(&f.path, &f.meta, &f.xattrs, false) {
            ctx.incomplete(&f.path, e)?;
        }
    }
    let mut incomplete = ctx.incomplete.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    incomplete.sort();
    Ok(RestoreReport {
        skipped: ctx.skipped.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner),
        incomplete,
        kept: ctx.kept.into_inner(),
        fallbacks: repo.take_tree_fallbacks(),
        selected_any: ctx.selected_any.into_inner(),
    })
}

/// Whether an error ends the whole restore rather than one file: the storage is gone (no
/// retry helped) or the key cannot read; damage to one object and errors writing one file
/// are the file's alone.
fn ends_the_restore(e: &PlanError) -> bool {
    match e {
        PlanError::Store(bakare_store::StoreError::Backend(b)) => !b.is_not_found(),
        PlanError::Store(bakare_store::StoreError::NeedsMasterKey) => true,
        _ => false,
    }
}

/// Temporary names of files being restored start with this.
const PARTIAL_PREFIX: &str = ".bakare-partial-";

/// The name a file is written under until it is complete (then renamed to its own): short,
/// whatever the length of the file's own name, and unique, so that no entry of the snapshot
/// and no other file being restored can have it.
fn partial_name(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!("{PARTIAL_PREFIX}{}-{n}", std::process::id()))
}

/// Removes what an interrupted restore left in `dir`: its temporary files (`overwrite` only:
/// the folder was restored into before).
fn remove_partials(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

impl Ctx<'_> {
    /// Owner, extended attributes (after the owner: a chown drops file capabilities),
    /// mode and times; an attribute that cannot be set is reported, the rest applied.
    fn apply(&self, path: &Path, meta: &Metadata, xattrs: &[Xattr], is_link: bool) -> Result<(), PlanError> {
        self.apply_as(path, path, meta, xattrs, is_link)
    }

    /// As [`Ctx::apply`], to `path`, reporting a failure as `name`'s (a file is written under
    /// a temporary name until it is complete).
    fn apply_as(
        &self,
        path: &Path,
        name: &Path,
        meta: &Metadata,
        xattrs: &[Xattr],
        is_link: bool,
    ) -> Result<(), PlanError> {
        set_owner(path, meta)?;
        let failed = crate::xattrs::write(path, xattrs);
        if !failed.is_empty() {
            self.skip(name, format!("extended attributes not restored: {}", failed.join("; ")));
        }
        apply_mode_and_times(path, meta, is_link)
    }

    /// Whether a file of hard-link group `link` is to be linked to the group's first name
    /// at the end (true), or is that first name and restored now (false).
    fn linked_later(&self, path: &Path, link: u64) -> bool {
        match lock(&self.links).entry(link) {
            std::collections::hash_map::Entry::Vacant(first) => {
                first.insert(path.to_path_buf());
                false
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                lock(&self.link_later).push((path.to_path_buf(), link));
                true
            }
        }
    }

    /// Makes the other names of each hard-link group, once every first name is written;
    /// the folder they go into keeps its restored mtime.
    fn make_links(&self) -> Result<(), PlanError> {
        let later = std::mem::take(&mut *lock(&self.link_later));
        let links = lock(&self.links).clone();
        for (path, group) in later {
            let Some(first) = links.get(&group) else { continue };
            let parent_time = path
                .parent()
                .and_then(|p| p.symlink_metadata().ok())
                .map(|m| FileTime::from_last_modification_time(&m));
            if self.opts.overwrite && path.symlink_metadata().is_ok() {
                remove_any(&path)?;
            }
            if let Err(e) = fs::hard_link(first, &path) {
                self.incomplete(&path, io(&path)(e))?;
                continue;
            }
            if let (Some(parent), Some(t)) = (path.parent(), parent_time) {
                let _ = filetime::set_symlink_file_times(parent, t, t);
            }
        }
        Ok(())
    }

    fn skip(&self, path: &Path, why: impl Into<String>) {
        if let Ok(mut s) = self.skipped.lock() {
            s.push((path.to_path_buf(), why.into()));
        }
    }

    /// Records that `path` was not restored completely, unless the error ends the restore.
    fn incomplete(&self, path: &Path, e: PlanError) -> Result<(), PlanError> {
        if ends_the_restore(&e) {
            return Err(e);
        }
        lock(&self.incomplete).push((path.to_path_buf(), e.to_string()));
        Ok(())
    }

    /// A folder's entries, each on its own: one that fails is recorded, the others restored.
    /// Restores the tree `id` into `dir`; `selected`: all of it is included (else only what
    /// an include matches below it).
    fn tree(&self, id: &BlobId, dir: &Path, selected: bool) -> Result<(), PlanError> {
        let tree = match self.repo.load_tree(id) {
            Ok(t) => t,
            Err(e) => return self.incomplete(dir, PlanError::from(e)),
        };
        if self.opts.overwrite {
            remove_partials(dir);
        }
        let in_snapshot = self.base.join(dir.strip_prefix(&self.target).unwrap_or(Path::new("")));
        tree.entries.par_iter().try_for_each(|e| {
            let name = std::ffi::OsStr::from_bytes(&e.name);
            let is_dir = matches!(e.node, Node::Dir { .. });
            let at = in_snapshot.join(name);
            if self.select.excluded(&at, is_dir) {
                return Ok(());
            }
            let selected = selected || {
                let included = self.select.included(&at, is_dir);
                if included {
                    self.selected_any.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                included
            };
            self.entry_or_record(e, &dir.join(name), selected)
        })
    }

    fn entry_or_record(&self, e: &Entry, path: &Path, selected: bool) -> Result<(), PlanError> {
        if !selected && !matches!(e.node, Node::Dir { .. }) {
            return Ok(());
        }
        match self.entry(e, path, selected) {
            Ok(()) => Ok(()),
            Err(err) => self.incomplete(path, err),
        }
    }

    /// Restores one entry; `selected` false: a folder on the way to what is included.
    fn entry(&self, e: &Entry, path: &Path, selected: bool) -> Result<(), PlanError> {
        if let Some(err) = &e.error
            && selected
        {
            // A file with chunks and an error was marked lost by a repair: its data was lost
            // in the repository, later. With --keep-damaged what is left of it is written (and
            // the lost ranges reported by `file`).
            let marked_lost = matches!(&e.node, Node::File { chunks, .. } if !chunks.is_empty());
            let partly = self.opts.keep_damaged && marked_lost;
            if !partly {
                let note = match &e.node {
                    _ if marked_lost => format!("not restored: {err}"),
                    Node::Dir { .. } => format!("folder incomplete: its listing failed at backup time or later: {err}"),
                    _ => format!("not in the snapshot: it could not be read at backup time: {err}"),
                };
                lock(&self.incomplete).push((path.to_path_buf(), note));
            }
            if !matches!(e.node, Node::Dir { .. }) && !partly {
                return Ok(());
            }
        }
        match &e.node {
            Node::Dir { tree } => {
                let made = match fs::create_dir(path) {
                    Ok(()) => true,
                    Err(err) if !(self.opts.overwrite && path.is_dir()) => return Err(io(path)(err)),
                    Err(_) => false,
                };
                if selected {
                    Counters::add(&self.counters.dirs, 1);
                }
                self.tree(tree, path, selected)?;
                if !selected && !made {
                    // A folder already there (--overwrite), only on the way: left as it is.
                    return Ok(());
                }
                if self.remote || !selected {
                    let on_the_way = !selected;
                    let folder =
                        Folder { path: path.to_path_buf(), meta: e.meta, xattrs: e.extra.xattrs.clone(), on_the_way };
                    lock(&self.folders).push(folder);
                    return Ok(());
                }
                self.apply(path, &e.meta, &e.extra.xattrs, false)
            }
            Node::File { .. } if e.extra.link != 0 && self.linked_later(path, e.extra.link) => {
                Counters::add(&self.counters.files, 1);
                Ok(())
            }
            Node::File { size, chunks } if self.remote && *size <= bakare_store::SPAN / 4 => {
                Counters::add(&self.counters.files, 1);
                let file = PendingFile {
                    path: path.to_path_buf(),
                    size: *size,
                    chunks: chunks.clone(),
                    meta: e.meta,
                    xattrs: e.extra.xattrs.clone(),
                };
                let batch = {
                    let mut pending = lock(&self.pending);
                    pending.push(file);
                    if pending.len() < BATCH_FILES {
                        return Ok(());
                    }
                    std::mem::take(&mut *pending)
                };
                self.restore_batch(batch)
            }
            Node::File { size, chunks } => {
                Counters::add(&self.counters.files, 1);
                self.counters.set_current(path);
                self.file(path, *size, chunks, &e.meta, &e.extra.xattrs)
            }
            Node::Symlink { target } => {
                if self.opts.overwrite && path.symlink_metadata().is_ok() {
                    remove_any(path)?;
                }
                symlink(std::ffi::OsStr::from_bytes(target), path).map_err(io(path))?;
                self.apply(path, &e.meta, &e.extra.xattrs, true)
            }
            other => {
                self.skip(path, format!("{} not restored (special files are recorded only)", other.kind_name()));
                Ok(())
            }
        }
    }

    /// Restores a batch of small files in the order their chunks lie in the packs, a pack's
    /// files on one thread: each span of a pack is then read about once.
    fn restore_batch(&self, mut batch: Vec<PendingFile>) -> Result<(), PlanError> {
        let first = |f: &PendingFile| {
            f.chunks.first().and_then(|id| self.repo.blob_location(id)).map(|l| (l.pack, l.entry.offset))
        };
        let mut keyed: Vec<(Option<(PackId, u32)>, PendingFile)> = batch.drain(..).map(|f| (first(&f), f)).collect();
        keyed.sort_by_key(|a| a.0);
        let groups: Vec<_> = keyed.chunk_by(|a, b| a.0.map(|k| k.0) == b.0.map(|k| k.0)).collect();
        groups.par_iter().try_for_each(|group| {
            group.iter().try_for_each(|(_, f)| {
                self.counters.set_current(&f.path);
                match self.file(&f.path, f.size, &f.chunks, &f.meta, &f.xattrs) {
                    Ok(()) => Ok(()),
                    Err(e) => self.incomplete(&f.path, e),
                }
            })
        })
    }

    /// Restores one file: written under a temporary name beside its own, its metadata set,
    /// then renamed, so that a file under its own name is always complete. A file already
    /// there with the snapshot's size and mtime is kept (with `overwrite`).
    fn file(
        &self,
        path: &Path,
        size: u64,
        chunks: &[BlobId],
        meta: &Metadata,
        xattrs: &[Xattr],
    ) -> Result<(), PlanError> {
        if self.opts.overwrite
            && let Ok(m) = path.symlink_metadata()
        {
            use std::os::unix::fs::MetadataExt;
            if m.is_file() && m.len() == size && m.mtime() * 1_000_000_000 + m.mtime_nsec() == meta.mtime_ns {
                self.kept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            if !m.is_file() {
                remove_any(path)?;
            }
        }
        let partial = partial_name(path);
        let written = self.write_file(&partial, size, chunks);
        let lost = match written {
            Ok(lost) => lost,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(e);
            }
        };
        if lost.is_empty() || self.opts.keep_damaged {
            self.apply_as(&partial, path, meta, xattrs, false)?;
            if !lost.is_empty() {
                // Not the snapshot's mtime: a restore run again with --overwrite must not
                // take this damaged copy for a finished one.
                let now = FileTime::now();
                filetime::set_file_times(&partial, now, now).map_err(io(&partial))?;
            }
            fs::rename(&partial, path).map_err(io(path))?;
        } else {
            let _ = fs::remove_file(&partial);
        }
        match lost.first() {
            None => Ok(()),
            Some((_, first)) => {
                let bytes: u64 = lost.iter().map(|(r, _)| r.end - r.start).sum();
                let kept = if self.opts.keep_damaged { "; written with the lost ranges as holes" } else { "" };
                lock(&self.incomplete).push((
                    path.to_path_buf(),
                    format!("{bytes} of {size} bytes lost in {} chunks (first: {first}){kept}", lost.len()),
                ));
                Ok(())
            }
        }
    }

    /// Writes a file's chunks to `path`; the byte ranges whose chunks could not be read, with
    /// why (only with `keep_damaged`: else the first damaged chunk is the error).
    fn write_file(
        &self,
        path: &Path,
        size: u64,
        chunks: &[BlobId],
    ) -> Result<Vec<(std::ops::Range<u64>, String)>, PlanError> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(io(path))?;
        let preallocated = preallocate(&f, size);
        let mut written = 0u64;
        let mut lost = Vec::new();
        let locations = chunks
            .iter()
            .map(|id| self.repo.blob_location(id).ok_or_else(|| bakare_store::StoreError::UnknownBlob(id.to_hex())))
            .collect::<Result<Vec<_>, _>>();
        let locations = match locations {
            Ok(l) => l,
            Err(e) if !self.opts.keep_damaged => return Err(e.into()),
            // Some chunk is in no index: without its length the rest cannot be placed, so
            // the whole file is a hole of its size.
            Err(e) => {
                f.set_len(size).map_err(io(path))?;
                return Ok(vec![(0..size, e.to_string())]);
            }
        };
        let mut rest = locations.as_slice();
        while !rest.is_empty() {
            // Chunks that lie one after another in one pack are read with one request.
            let run = bakare_store::adjacent_run(rest);
            let (now, later) = rest.split_at(run.max(1));
            rest = later;
            let blobs: Vec<Result<Vec<u8>, (u64, bakare_store::StoreError)>> =
                match self.repo.load_run(now).map_err(PlanError::from) {
                    Ok(b) => b.into_iter().map(Ok).collect(),
                    Err(e) if self.opts.keep_damaged && !ends_the_restore(&e) => {
                        // One by one, to lose only the damaged chunks.
                        now.iter()
                            .map(|l| self.repo.load_blob_at(l).map_err(|e| (u64::from(l.entry.raw_len), e)))
                            .collect()
                    }
                    Err(e) => return Err(e),
                };
            for data in blobs {
                match data {
                    Ok(data) => {
                        write_sparse(&mut f, &data, preallocated).map_err(io(path))?;
                        written += data.len() as u64;
                        Counters::add(&self.counters.bytes_written, data.len() as u64);
                    }
                    Err((len, e)) => {
                        f.seek(SeekFrom::Current(i64::try_from(len).unwrap_or(i64::MAX))).map_err(io(path))?;
                        lost.push((written..written + len, e.to_string()));
                        written += len;
                    }
                }
            }
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
        Ok(lost)
    }
}

/// Files at least this large get their space reserved before they are written.
const PREALLOCATE: u64 = 1 << 20;

/// Reserves `size` bytes for a file about to be written (fewer fragments); whether it
/// could (some file systems cannot, and a full disk need not stop a restore here).
fn preallocate(f: &File, size: u64) -> bool {
    size >= PREALLOCATE && rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, size).is_ok()
}

/// Writes `data` at the current position. Runs of whole zero blocks become holes: skipped
/// with one seek, and punched out of a preallocated file.
fn write_sparse(f: &mut File, data: &[u8], preallocated: bool) -> std::io::Result<()> {
    let zero_block = |at: usize| data.get(at..at + BLOCK).is_some_and(|b| b.iter().all(|&x| x == 0));
    let mut pending = 0usize;
    let mut at = 0usize;
    while at < data.len() {
        if !zero_block(at) {
            at += BLOCK;
            continue;
        }
        f.write_all(data.get(pending..at).unwrap_or_default())?;
        let mut end = at + BLOCK;
        while zero_block(end) {
            end += BLOCK;
        }
        let len = (end - at) as u64;
        if preallocated {
            let pos = f.stream_position()?;
            let punch = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(&*f, punch, pos, len)?;
        }
        f.seek(SeekFrom::Current(len as i64))?;
        pending = end;
        at = end;
    }
    f.write_all(data.get(pending..).unwrap_or_default())
}

fn remove_any(path: &Path) -> Result<(), PlanError> {
    let meta = path.symlink_metadata().map_err(io(path))?;
    if meta.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) }.map_err(io(path))
}

fn set_owner(path: &Path, m: &Metadata) -> Result<(), PlanError> {
    // Ownership needs privilege; without it the files stay the restoring user's, as with tar.
    if let Err(e) = lchown(path, Some(m.uid), Some(m.gid))
        && e.kind() != std::io::ErrorKind::PermissionDenied
    {
        return Err(io(path)(e));
    }
    Ok(())
}

fn apply_mode_and_times(path: &Path, m: &Metadata, is_link: bool) -> Result<(), PlanError> {
    if !is_link {
        fs::set_permissions(path, fs::Permissions::from_mode(m.mode)).map_err(io(path))?;
    }
    let t = FileTime::from_unix_time(m.mtime_ns.div_euclid(1_000_000_000), m.mtime_ns.rem_euclid(1_000_000_000) as u32);
    filetime::set_symlink_file_times(path, t, t).map_err(io(path))
}
