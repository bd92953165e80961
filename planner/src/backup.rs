//! A backup run: walk and plan, read what changed, build trees, write the snapshot last.
//!
//! Folders are walked depth-first with rayon (siblings in parallel). Each folder is listed
//! and `lstat`ed in name order and merge-joined with the memo's records for it. A file whose
//! content fingerprint matches a trustworthy record is resolved from the memo without being
//! opened. If every child resolves, the folder becomes a tree at once (trees are
//! content-addressed: an unchanged folder yields the same id, and a remembered id is not
//! stored again). Otherwise the folder is the changed working set of its own short-lived salsa
//! database: a [`SourceDir`] input whose pending children are [`SourceFile`] inputs;
//! `file_content` runs for them from top-level rayon tasks, each on a database clone, then
//! `dir_tree` builds the folder's tree and the database is dropped. Subfolders are resolved
//! before their parent, so live salsa state is bounded by the folders in flight, not by the
//! tree. Every so many files read, a checkpoint flushes packs and an index segment and
//! commits the memo records whose chunks are now durable; the snapshot comes last.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt as _;

use bakare_store::{Extra, Xattr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bakare_store::{
    BlobId, BlobKind, Checkpoint, CheckpointRefs, Entry, Node, Repository, Session, SessionOptions, Snapshot,
    SnapshotId, SnapshotStats, Tree, clock,
};
use rayon::prelude::*;

use crate::counters::Counters;
use crate::db::{PlanDb, RunContext};
use crate::error::PlanError;
use crate::exclude::Excludes;
use crate::fs_snapshot::Live;
use crate::inputs::{Child, ChildKind, Listing, SourceDir, SourceFile, StatFingerprint};
use crate::memo::{DirRecord, DirStat, Memo, MemoRecord, Totals, Trust, chunk_list_digest};
use crate::meta::{extra_of, metadata_of, special_node};
use crate::queries::{TreeResult, dir_tree, file_content};
use crate::watch::client::{DirtySet, WatchPlan};

/// What a backup is told beyond its paths.
pub struct BackupOptions {
    pub excludes: Excludes,
    pub host: String,
    pub user: String,
    pub tags: Vec<String>,
    /// Read every file, trusting nothing in the memo.
    pub force_rehash: bool,
    /// What the session record keeps, so that `resume` can run the same backup.
    pub session_options: SessionOptions,
    /// Continue this interrupted session instead of starting one.
    pub resume: Option<Session>,
    pub checkpoints: CheckpointPolicy,
    /// Set nonzero (by a signal handler) to stop the backup: it writes a checkpoint, marks
    /// its session interrupted and returns [`PlanError::Interrupted`].
    pub interrupt: Arc<std::sync::atomic::AtomicUsize>,
    /// Devices recorded as others (a filesystem snapshot's as its live filesystem's).
    pub devices: crate::Devices,
    /// The live folders behind filesystem snapshots: what has not changed since a snapshot
    /// was taken has its metadata read there (see [`crate::fs_snapshot::LiveViews`]).
    pub live: crate::fs_snapshot::LiveViews,
    /// Lines for the snapshot's log before the walk's own (hooks' output, the filesystem
    /// snapshots read).
    pub log: Vec<String>,
    /// The time to record for the snapshot instead of now (`--time`).
    pub time_ns: Option<i64>,
    /// The socket of a `bakare watch` daemon to ask which folders changed.
    pub watch: Option<PathBuf>,
    /// List every folder even when the watcher says which changed, and report the folders
    /// found changed that it did not name (`--walk-all`: the verification walk).
    pub walk_all: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            excludes: Excludes::none(),
            host: String::new(),
            user: String::new(),
            tags: Vec::new(),
            force_rehash: false,
            session_options: SessionOptions::default(),
            resume: None,
            checkpoints: CheckpointPolicy::default(),
            interrupt: Arc::default(),
            devices: crate::Devices::default(),
            live: Default::default(),
            log: Vec::new(),
            time_ns: None,
            watch: None,
            walk_all: false,
        }
    }
}

/// File errors a snapshot's log names one by one; more are counted.
const LOGGED_ERRORS: usize = 1000;

/// The snapshot's log: `before` (hooks, filesystem snapshots), then the files that could not
/// be read, the first [`LOGGED_ERRORS`] by name.
fn snapshot_log(before: &[String], errors: &[(PathBuf, String)]) -> Vec<String> {
    let mut log = before.to_vec();
    for (path, why) in errors.iter().take(LOGGED_ERRORS) {
        log.push(format!("error: {}: {why}", path.display()));
    }
    if errors.len() > LOGGED_ERRORS {
        log.push(format!("error: {} more files could not be read", errors.len() - LOGGED_ERRORS));
    }
    log
}

/// When a checkpoint is written: whichever limit is reached first.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    pub files: usize,
    pub bytes: u64,
    pub seconds: u64,
    /// How often the session's heartbeat is renewed.
    pub heartbeat_seconds: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self { files: 20_000, bytes: 1 << 30, seconds: 300, heartbeat_seconds: 60 }
    }
}

/// What a finished backup produced.
#[derive(Debug)]
pub struct BackupReport {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    /// Every path that could not be backed up in full, with the reason.
    pub errors: Vec<(PathBuf, String)>,
    /// Problems with the local memo (it was rebuilt or could not be updated).
    pub memo_warnings: Vec<String>,
    /// Walks over the sources: more than one when garbage collection marked data under
    /// the backup (the commit fence).
    pub passes: u32,
    /// Whether only changed folders were listed, and if not, why.
    pub walk: WalkReport,
}

/// How a backup found what changed.
#[derive(Clone, Debug, Default)]
pub struct WalkReport {
    /// Folders a watcher reported changed, when only those (and the folders above them)
    /// were listed; `None` after a full walk.
    pub changed_folders: Option<usize>,
    /// Why the whole tree was walked (when a watcher was asked).
    pub why_full: Option<String>,
    /// After `--walk-all`: the folders found changed that the watcher did not name (the
    /// deepest of them), which a walk of changed folders only would have missed.
    pub misses: Vec<PathBuf>,
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

/// A folder after the walk: its tree, the error that kept it from being listed, and what
/// its subtree holds.
struct Resolved(BlobId, Option<String>, Totals);

/// A child as the walk classifies it, before any salsa database exists: most folders have
/// nothing to read and never need one.
struct Planned {
    name: Vec<u8>,
    meta: bakare_store::Metadata,
    extra: Extra,
    kind: PlannedKind,
    /// For a folder, what its subtree holds (files count themselves).
    totals: Totals,
}

enum PlannedKind {
    Resolved {
        node: Node,
        error: Option<String>,
    },
    /// A file to read: (path, fingerprint, hash of the memo's chunk list if any, its
    /// extended attributes if read).
    Read(PathBuf, StatFingerprint, Option<bakare_store::Digest>, Option<Vec<Xattr>>),
}

struct Walk<'a> {
    repo: &'a Repository,
    live: &'a crate::fs_snapshot::LiveViews,
    memo: &'a Memo,
    run: Arc<RunContext>,
    force: bool,
    /// Every index segment the memo was written against still exists, so every blob it names
    /// does too (only GC deletes, and it removes the segments of what it deletes).
    trusted: bool,
    /// Those segments, when trusted: the commit fence checks they still exist.
    relied_memo: Vec<bakare_store::Digest>,
    set: bakare_store::Digest,
    /// A segment this walk relied on was removed: it must not commit.
    broken: std::sync::atomic::AtomicBool,
    /// Trees of folders whose id differs from the memo's, to remember.
    dirs: Mutex<Vec<DirRecord>>,
    /// Memo keys of names that are no longer regular files.
    stale: Mutex<Vec<Vec<u8>>>,
    errors: Mutex<Vec<(PathBuf, String)>>,
    /// Held by the thread writing a checkpoint; its state.
    checkpointing: Mutex<CheckpointState>,
    policy: CheckpointPolicy,
    session: [u8; 16],
    memo_warnings: Mutex<Vec<String>>,
    /// Extended attributes are read (not `--no-xattrs`).
    xattrs: bool,
    /// Inodes with more than one link already counted in the run's total bytes.
    linked: Mutex<std::collections::HashSet<(u64, u64)>>,
    /// When a watcher said what changed: only these folders (and those above them) are
    /// listed.
    dirty: Option<&'a DirtySet>,
    /// Why this walk of changed folders cannot stand for a full one (a file with other names
    /// changed: their folders hold it too).
    fallback: Mutex<Option<String>>,
    /// In a verification walk: what the watcher said changed, and the folders found changed
    /// that it did not name.
    predicted: Option<&'a DirtySet>,
    misses: Mutex<Vec<PathBuf>>,
}

/// When and how far the last checkpoint went.
struct CheckpointState {
    seq: u32,
    at: Instant,
    bytes_read: u64,
    written: Vec<String>,
}

/// Renews a session's heartbeat from a thread until dropped.
pub struct Heartbeat {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(repo: Arc<Repository>, mut session: Session, every: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (lock, cvar) = &*flag;
            let mut stopped = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            while !*stopped {
                let (guard, timeout) =
                    cvar.wait_timeout(stopped, every).unwrap_or_else(std::sync::PoisonError::into_inner);
                stopped = guard;
                if timeout.timed_out() && !*stopped {
                    // A record that is gone is not written again (a prune declared the
                    // session expired, or a `resume` took it over): the backup finds out at
                    // its next check. A failed renewal is retried at the next beat; the
                    // backup itself reports repository errors.
                    match repo.session_standing(&session.id) {
                        Ok(true) => {
                            session.heartbeat_ns = clock::now_ns();
                            let _ = repo.put_session(&session);
                        }
                        Ok(false) => break,
                        Err(_) => {}
                    }
                }
            }
        });
        Self { stop, handle: Some(handle) }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        cvar.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The message of the stop a file query returns once the run is interrupted.
pub(crate) const INTERRUPTED: &str = "interrupted";

/// When a walk writes a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checkpointing {
    /// After a folder, if the policy says one is due: to the repository and the memo.
    IfDue,
    /// At the end of a complete walk: to the memo only (the snapshot follows).
    Final,
    /// The user stopped the walk: everything finished, to the repository and the memo.
    Interrupted,
}

/// Garbage collection marking under a running backup makes it walk again; after this many
/// walks it stops, resumable.
const MAX_PASSES: u32 = 3;

/// A commit takes a moment: one that took longer slept (suspended, frozen) between its last
/// check and its snapshot, and its snapshot is taken back and made again.
const COMMIT_SLEEP_NS: i64 = 3_600 * 1_000_000_000;

/// What one walk over the sources produced.
struct PassOutcome {
    root: BlobId,
    errors: Vec<(PathBuf, String)>,
    memo_warnings: Vec<String>,
    /// Checkpoint objects written, removed once the snapshot is.
    checkpoints: Vec<String>,
    /// No index segment the walk relied on was removed: nothing it deduplicated against was
    /// marked for deletion, and it may commit.
    intact: bool,
    /// Why a walk of changed folders only must be done again in full.
    fallback: Option<String>,
    misses: Vec<PathBuf>,
}

/// Backs up `paths` into `repo` and writes a snapshot.
///
/// The commit fence: before the snapshot is written, the walk checks that every index
/// segment it relied on (read, written, or trusted through the memo) still exists, and that
/// no pack it wrote was marked before it was indexed ([`Repository::is_poisoned`]). Garbage
/// collection removes the segments it read whenever it marks an indexed pack, so if one is
/// gone, the backup walks again on a fresh handle whose index no longer offers marked blobs,
/// checking every memo record against it: files whose chunks were marked are read again.
pub fn backup(
    repo: Arc<Repository>,
    memo: &Memo,
    paths: &[PathBuf],
    opts: &BackupOptions,
    counters: Arc<Counters>,
) -> Result<BackupReport, PlanError> {
    let started = Instant::now();
    let time_ns = clock::now_ns();
    let mut sources = Sources::default();
    let mut abs_paths = Vec::new();
    for p in paths {
        let abs = fs::canonicalize(p).map_err(|cause| PlanError::Source { path: p.clone(), cause })?;
        sources.insert(&abs);
        abs_paths.push(abs.as_os_str().as_bytes().to_vec());
    }
    abs_paths.sort();
    abs_paths.dedup();
    let mut stored_before = repo.stats().bytes_stored.load(std::sync::atomic::Ordering::Relaxed);
    let mut added = 0;
    let mut session = match &opts.resume {
        Some(s) => Session { heartbeat_ns: time_ns, interrupted: false, committing: None, ..s.clone() },
        None => Session {
            id: Session::new_id()?,
            host: opts.host.clone(),
            started_ns: time_ns,
            heartbeat_ns: time_ns,
            paths: abs_paths.clone(),
            options: opts.session_options.clone(),
            checkpoints: 0,
            interrupted: false,
            committing: None,
        },
    };
    repo.put_session(&session)?;
    repo.write_for_session(session.id);
    let beat = Duration::from_secs(opts.checkpoints.heartbeat_seconds.max(1));
    let mut heartbeat = Some(Heartbeat::start(repo.clone(), session.clone(), beat));
    let set = backup_set_id(&abs_paths, &opts.session_options);
    let present: std::collections::HashSet<_> = repo.index_segments()?.into_iter().collect();
    let mut relied_memo = match memo.trusted_segments(&set) {
        Some(segs) if !opts.force_rehash && segs.iter().all(|s| present.contains(s)) => Some(segs),
        _ => None,
    };
    let trusted_memo = relied_memo.clone();
    let (mut changed, coverage, mut walk_report) = watch_plan(opts, memo, &set, &abs_paths, trusted_memo.is_some());
    // A verification walk lists everything, and compares with what the watcher said.
    let predicted = if opts.walk_all { changed.take() } else { None };
    if changed.is_some() {
        memo.stop_prefetch();
    }
    if predicted.is_some() {
        walk_report = WalkReport { changed_folders: None, why_full: Some("--walk-all".into()), misses: Vec::new() };
    }
    // Sessions this backup gave up (a prune declared them expired): their checkpoints go
    // with the ones of the session that commits.
    let mut given_up: Vec<Session> = Vec::new();
    let mut repo = repo;
    let mut checkpoints = Vec::new();
    let mut seq = session.checkpoints;
    let mut passes = 0;
    let (id, snapshot, errors, memo_warnings) = loop {
        passes += 1;
        let pass = Pass {
            sources: &sources,
            opts,
            session: &session,
            set,
            relied_memo: relied_memo.take(),
            dirty: changed.as_ref(),
            predicted: predicted.as_ref().filter(|_| passes == 1),
        };
        let out = match pass.run(&repo, memo, &counters, &mut seq) {
            Ok(out) => out,
            // Stopped, by the user or by a failure (a full or unreachable storage: exit 75):
            // the session says it runs no more, so a plain `resume` continues it at once and
            // it holds no prune back. (The heartbeat thread writes the record: it stops first.)
            Err(e) => {
                drop(heartbeat);
                let ended =
                    Session { interrupted: true, heartbeat_ns: clock::now_ns(), checkpoints: seq, ..session.clone() };
                let marked = repo.put_session(&ended);
                if matches!(e, PlanError::Interrupted) {
                    marked?;
                }
                return Err(e);
            }
        };
        // (A pass garbage collection broke walks again anyway, in full.)
        if out.intact
            && let Some(why) = out.fallback.clone()
        {
            // Folders the watcher did not name changed too: the same pass again, in full
            // (what it read is in the memo now).
            for path in &out.checkpoints {
                repo.backend().delete(path).map_err(bakare_store::StoreError::from)?;
            }
            changed = None;
            walk_report = WalkReport { changed_folders: None, why_full: Some(why), misses: Vec::new() };
            relied_memo = trusted_memo.clone();
            passes -= 1;
            counters.restart_pass();
            continue;
        }
        walk_report.misses = out.misses.clone();
        if out.intact {
            let stats = snapshot_stats(&counters, started, &out, added, &repo, stored_before);
            let snapshot = Snapshot {
                time_ns: opts.time_ns.unwrap_or(time_ns),
                host: opts.host.clone(),
                user: opts.user.clone(),
                paths: abs_paths.clone(),
                tags: opts.tags.clone(),
                root: out.root,
                parent: None,
                stats,
                program: format!("bakare {}", env!("CARGO_PKG_VERSION")),
                log: snapshot_log(&opts.log, &out.errors),
            };
            // The session says which snapshot it commits before the snapshot is written:
            // killed between that and removing the session, it is finished, not resumed
            // into a second one. (The heartbeat thread writes the session record too: it
            // stops first.)
            heartbeat = None;
            if let Some(id) = commit(&repo, &session, &snapshot)? {
                checkpoints.extend(out.checkpoints.iter().cloned());
                break (id, snapshot, out.errors, out.memo_warnings);
            }
        }
        // A broken pass's checkpoints may name data a collector has swept since: they go
        // before anything else can stop this backup (resume would check them, but verify
        // rightly calls such a checkpoint a problem).
        for path in &out.checkpoints {
            repo.backend().delete(path).map_err(bakare_store::StoreError::from)?;
        }
        if passes >= MAX_PASSES {
            drop(heartbeat);
            return Err(PlanError::Resumable(format!(
                "garbage collection marked data under this backup {passes} times; run `bakare resume` to continue"
            )));
        }
        // Walk again on a fresh handle, checking every memo record against its index.
        let fresh = Arc::new(repo.reopen());
        fresh.load_index()?;
        if !repo.session_standing(&session.id)? {
            // Declared expired: whatever this session writes is void from now on, so the
            // walk goes on under a new one (which holds back only marks made after it).
            heartbeat = None;
            let next = renewed(&fresh, &session)?;
            let old = std::mem::replace(&mut session, next);
            seq = 0;
            given_up.push(old);
        }
        fresh.write_for_session(session.id);
        if heartbeat.is_none() {
            heartbeat = Some(Heartbeat::start(fresh.clone(), session.clone(), beat));
        }
        added += repo.stats().bytes_stored.load(std::sync::atomic::Ordering::Relaxed) - stored_before;
        stored_before = 0;
        repo = fresh;
        counters.restart_pass();
        changed = None;
    };
    // The next run of this set may list only what changed after this one began (a failure
    // to record that costs the next run a full walk). Without a watcher, nothing to forget
    // is usual: no write then.
    if opts.watch.is_some() && (coverage.is_some() || memo.coverage(&set).is_some()) {
        let _ = memo.set_coverage(&set, coverage);
    }
    if passes > 1 {
        walk_report.changed_folders = None;
    }
    // A folder that changed while the walk ran is no miss: the watcher names it now.
    if !walk_report.misses.is_empty()
        && let (Some(socket), Some(now)) = (&opts.watch, coverage)
    {
        walk_report.misses = match crate::watch::client::plan(socket, &abs_paths, Some(now)) {
            WatchPlan::Changed { dirty, .. } => {
                walk_report.misses.into_iter().filter(|m| !dirty.must_list(m)).collect()
            }
            WatchPlan::Walk { .. } => Vec::new(),
        };
    }
    bakare_store::failpoint::hit("after-snapshot");
    // Only an estimate for the next run's progress: a failure to store it costs nothing.
    let _ = memo.set_totals(&set, snapshot.stats.files(), snapshot.stats.total_bytes);
    // The snapshot now keeps everything reachable: the session and its checkpoints go.
    let mut leftovers = checkpoints;
    if opts.resume.is_some() {
        leftovers.extend(repo.checkpoints(&session.id)?.into_iter().map(|(p, _)| p));
    }
    for old in &given_up {
        leftovers.extend(repo.checkpoints(&old.id)?.into_iter().map(|(p, _)| p));
    }
    for path in leftovers {
        repo.backend().delete(&path).map_err(bakare_store::StoreError::from)?;
    }
    repo.remove_session(&session)?;
    Ok(BackupReport { id, snapshot, errors, memo_warnings, passes, walk: walk_report })
}

/// Asks the watcher, if one is configured, which folders changed since the set's last
/// snapshot: the folders to list (`None`: all), the coverage this run's snapshot will have,
/// and what to report.
fn watch_plan(
    opts: &BackupOptions,
    memo: &Memo,
    set: &bakare_store::Digest,
    paths: &[Vec<u8>],
    trusted: bool,
) -> (Option<DirtySet>, Option<crate::watch::client::Coverage>, WalkReport) {
    let Some(socket) = &opts.watch else { return (None, None, WalkReport::default()) };
    if !memo.is_enabled() || !opts.live.is_empty() {
        let why = if memo.is_enabled() { "folders are read from a filesystem snapshot" } else { "no local memo" };
        return (None, None, WalkReport { why_full: Some(why.into()), ..WalkReport::default() });
    }
    let full = |why: &str, now| (None, now, WalkReport { why_full: Some(why.to_string()), ..WalkReport::default() });
    match crate::watch::client::plan(socket, paths, memo.coverage(set)) {
        WatchPlan::Walk { why, now } => full(&why, now),
        WatchPlan::Changed { now, .. } if opts.resume.is_some() => {
            full("it continues an interrupted backup", Some(now))
        }
        WatchPlan::Changed { now, .. } if opts.force_rehash => full("--force-rehash reads every file", Some(now)),
        WatchPlan::Changed { now, .. } if !trusted => {
            full("the local memo does not vouch for the last snapshot's data", Some(now))
        }
        WatchPlan::Changed { dirty, now } => {
            let n = dirty.len();
            (Some(*dirty), Some(now), WalkReport { changed_folders: Some(n), ..WalkReport::default() })
        }
    }
}

/// Writes the snapshot of an intact pass, if the session stands before and after: its id,
/// or `None` when the snapshot was not written or was taken back (the pass is then void).
pub(crate) fn commit(
    repo: &Repository,
    session: &Session,
    snapshot: &Snapshot,
) -> Result<Option<SnapshotId>, PlanError> {
    bakare_store::failpoint::hit("after-fence");
    // The commit writes the session record again: never one that is gone (a prune declared
    // it expired, or a `resume` took the session over and finished it), which would make the
    // session stand again.
    let checked = clock::now_ns();
    if !repo.session_standing(&session.id)? {
        return Ok(None);
    }
    let id = repo.save_snapshot_after(snapshot, |id| {
        repo.put_session(&Session { committing: Some(*id), heartbeat_ns: clock::now_ns(), ..session.clone() })
    })?;
    // Frozen between the fence and here past its session's expiry, the backup wrote a
    // snapshot a sweep that no longer waited for it may have taken data from: a prune
    // declares the session expired before any sweep relies on that, so the snapshot stands
    // if the declaration is not there now, and if no long sleep came between the check
    // above and the snapshot.
    let slept = clock::now_ns().saturating_sub(checked) > COMMIT_SLEEP_NS;
    if !slept && repo.session_standing(&session.id)? {
        return Ok(Some(id));
    }
    repo.remove_snapshot(&id)?;
    Ok(None)
}

/// A new session for the same backup, registered in place of `old` (which a prune declared
/// expired): it holds back only marks made after it started.
fn renewed(repo: &Repository, old: &Session) -> Result<Session, PlanError> {
    let now = clock::now_ns();
    let session = Session {
        id: Session::new_id()?,
        started_ns: now,
        heartbeat_ns: now,
        checkpoints: 0,
        interrupted: false,
        committing: None,
        ..old.clone()
    };
    repo.put_session(&session)?;
    repo.remove_session(old)?;
    Ok(session)
}

/// The statistics of the snapshot a complete pass makes: the run's counters, and the bytes
/// stored over all its passes.
fn snapshot_stats(
    c: &Counters,
    started: Instant,
    out: &PassOutcome,
    added: u64,
    repo: &Repository,
    stored_before: u64,
) -> SnapshotStats {
    SnapshotStats {
        files_new: Counters::get(&c.files_new),
        files_changed: Counters::get(&c.files_changed),
        files_unchanged: Counters::get(&c.files_unchanged),
        files_read: Counters::get(&c.files),
        files_reused: Counters::get(&c.files_memo),
        dirs: Counters::get(&c.dirs),
        errors: out.errors.len() as u64,
        bytes_read: Counters::get(&c.bytes_read),
        bytes_added: added + repo.stats().bytes_stored.load(std::sync::atomic::Ordering::Relaxed) - stored_before,
        total_bytes: Counters::get(&c.bytes_total),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// Files and bytes of the last complete backup of these paths with these options, as this
/// machine's memo remembers them: what a progress display expects this run to cover.
pub fn expected_totals(memo: &Memo, paths: &[PathBuf], options: &SessionOptions) -> Option<(u64, u64)> {
    let mut abs: Vec<Vec<u8>> =
        paths.iter().filter_map(|p| fs::canonicalize(p).ok()).map(|p| p.as_os_str().as_bytes().to_vec()).collect();
    abs.sort();
    abs.dedup();
    memo.totals(&backup_set_id(&abs, options))
}

/// The id of a backup set: its paths and the options that decide what is in it. The memo's
/// trust is kept per set (see [`crate::memo`]).
fn backup_set_id(paths: &[Vec<u8>], options: &SessionOptions) -> bakare_store::Digest {
    let mut h = blake3::Hasher::new();
    for p in paths {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    for e in &options.excludes {
        h.update(b"\x01");
        h.update(&(e.len() as u64).to_le_bytes());
        h.update(e.as_bytes());
    }
    for f in &options.exclude_files {
        h.update(b"\x02");
        h.update(&(f.len() as u64).to_le_bytes());
        h.update(f);
    }
    h.update(&[u8::from(options.git_ignore)]);
    for e in &options.iexcludes {
        h.update(b"\x04");
        h.update(&(e.len() as u64).to_le_bytes());
        h.update(e.as_bytes());
    }
    // Only when set, so that the sets of backups without them keep their ids (and memos).
    let s = &options.selection;
    if !s.is_empty() {
        h.update(&[3, u8::from(s.one_file_system)]);
        for t in &s.exclude_if_present {
            h.update(&(t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        h.update(&s.exclude_larger_than.map_or([0xff; 8], u64::to_le_bytes));
        h.update(&[u8::from(s.no_xattrs)]);
    }
    bakare_store::Digest(*h.finalize().as_bytes())
}

/// One walk over the sources.
struct Pass<'a> {
    dirty: Option<&'a DirtySet>,
    predicted: Option<&'a DirtySet>,
    sources: &'a Sources,
    opts: &'a BackupOptions,
    session: &'a Session,
    set: bakare_store::Digest,
    /// The memo's segments for this set, when the memo is trusted.
    relied_memo: Option<Vec<bakare_store::Digest>>,
}

impl Pass<'_> {
    fn run(
        self,
        repo: &Arc<Repository>,
        memo: &Memo,
        counters: &Arc<Counters>,
        seq: &mut u32,
    ) -> Result<PassOutcome, PlanError> {
        let run = Arc::new(RunContext {
            repo: repo.clone(),
            chunker: repo.chunker(),
            counters: counters.clone(),
            fresh: Mutex::default(),
            errors: Mutex::default(),
            stopped: Mutex::default(),
            interrupt: self.opts.interrupt.clone(),
            devices: self.opts.devices.clone(),
            zero_chunk: Mutex::default(),
        });
        let opts = self.opts;
        let walk = Walk {
            repo,
            live: &opts.live,
            memo,
            run: run.clone(),
            force: opts.force_rehash,
            trusted: self.relied_memo.is_some(),
            relied_memo: self.relied_memo.unwrap_or_default(),
            set: self.set,
            broken: std::sync::atomic::AtomicBool::new(false),
            dirs: Mutex::default(),
            stale: Mutex::default(),
            errors: Mutex::default(),
            checkpointing: Mutex::new(CheckpointState {
                seq: *seq,
                at: Instant::now(),
                bytes_read: 0,
                written: Vec::new(),
            }),
            policy: opts.checkpoints,
            session: self.session.id,
            memo_warnings: Mutex::new(memo.warnings.clone()),
            xattrs: !opts.session_options.selection.no_xattrs,
            linked: Mutex::default(),
            dirty: self.dirty,
            fallback: Mutex::default(),
            predicted: self.predicted,
            misses: Mutex::default(),
        };
        let resolved = if self.sources.whole {
            let root = Path::new("/");
            let ex = match fs::symlink_metadata(root) {
                Ok(m) => opts.excludes.enter(root).on_device(run.devices.normal(m.dev())),
                Err(_) => opts.excludes.enter(root),
            };
            match walk.dir(root, &ex, None, None) {
                Ok(Some(r)) => Ok(r),
                // The whole file system, left out by a tag in `/`: an empty root.
                Ok(None) => walk.finish(root, Vec::new(), None, &crate::memo::FolderMemo::default(), None),
                Err(e) => Err(e),
            }
        } else {
            walk.virtual_dir(self.sources, Path::new("/"), &opts.excludes)
        };
        let Resolved(root, ..) = match resolved {
            // Only the interruption's own stop: any other error is reported as itself.
            Err(PlanError::Interrupted) => {
                // What was finished is kept: the files read go into a checkpoint, so that
                // the same command (or `resume`) continues from here.
                walk.checkpoint(Checkpointing::Interrupted)?;
                *seq = walk.checkpointing.lock().map(|c| c.seq).unwrap_or(*seq);
                return Err(PlanError::Interrupted);
            }
            r => r?,
        };
        walk.checkpoint(Checkpointing::Final)?;
        bakare_store::failpoint::hit("before-commit");
        // The fence: the last checkpoint checked, but a collector may have marked since.
        walk.check_relied()?;
        let memo_warnings = take(&walk.memo_warnings);
        let mut errors = take(&walk.errors);
        errors.extend(take(&run.errors));
        errors.sort();
        let state = walk.checkpointing.lock().map(|c| (c.seq, c.written.clone())).unwrap_or_default();
        *seq = state.0;
        Ok(PassOutcome {
            root,
            errors,
            memo_warnings,
            checkpoints: state.1,
            intact: !walk.broken.load(std::sync::atomic::Ordering::Relaxed),
            fallback: walk.fallback.lock().ok().and_then(|mut f| f.take()),
            misses: deepest(take(&walk.misses)),
        })
    }
}

/// The paths none of the others lies below.
fn deepest(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    let mut out: Vec<PathBuf> = Vec::new();
    // Sorted, a folder's descendants come right after it (before any sibling).
    for p in paths.into_iter().rev() {
        if !out.last().is_some_and(|d| d.starts_with(&p)) {
            out.push(p);
        }
    }
    out.reverse();
    out
}

fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

impl Walk<'_> {
    fn record_error(&self, path: &Path, msg: String) {
        Counters::add(&self.run.counters.errors, 1);
        if let Ok(mut e) = self.errors.lock() {
            e.push((path.to_path_buf(), msg));
        }
    }

    /// Writes memo records whose blobs are durable, and a checkpoint object naming them:
    /// flushes packs and an index segment first. Runs when a limit of the policy is reached
    /// (or at the end, `all`); one thread at a time.
    fn checkpoint(&self, mode: Checkpointing) -> Result<(), PlanError> {
        let all = mode != Checkpointing::IfDue;
        let records = self.run.fresh.lock().map(|f| f.len()).unwrap_or(0);
        let guard = if all { self.checkpointing.lock().ok() } else { self.checkpointing.try_lock().ok() };
        let Some(mut state) = guard else { return Ok(()) };
        let read = Counters::get(&self.run.counters.bytes_read);
        let due = records >= self.policy.files
            || read.saturating_sub(state.bytes_read) >= self.policy.bytes
            || state.at.elapsed() >= Duration::from_secs(self.policy.seconds);
        if !(all || (due && records > 0)) {
            return Ok(());
        }
        self.repo.flush()?;
        let records = take(&self.run.fresh);
        let dirs = take(&self.dirs);
        // Chunks of files read while the flush ran may be in open packs, or in packs written
        // since, that no index segment lists yet: their records wait for the next checkpoint.
        let unindexed = self.repo.not_yet_indexed();
        let durable = |id: &BlobId| self.repo.is_durable(id, &unindexed);
        let (ready, later): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.chunks.iter().all(durable));
        let (dirs_ready, dirs_later): (Vec<_>, Vec<_>) = dirs.into_iter().partition(|d| durable(&d.tree));
        if let Ok(mut f) = self.run.fresh.lock() {
            f.extend(later);
        }
        if let Ok(mut d) = self.dirs.lock() {
            d.extend(dirs_later);
        }
        let broken = || self.broken.load(std::sync::atomic::Ordering::Relaxed);
        let write = mode != Checkpointing::Final && (!ready.is_empty() || !dirs_ready.is_empty());
        if write {
            // Once garbage collection has marked data this pass relied on, what it saved is
            // void: no checkpoint may name it.
            self.check_relied()?;
        }
        if write && !broken() {
            // In the repository too, so that resume works without this machine's memo.
            state.seq += 1;
            let entries = ready
                .iter()
                .map(|r| (r.key.clone(), r.encode()))
                .chain(dirs_ready.iter().map(|d| (d.key.clone(), d.encode())))
                .collect();
            let blobs =
                ready.iter().flat_map(|r| r.chunks.iter().copied()).chain(dirs_ready.iter().map(|d| d.tree)).collect();
            let refs = CheckpointRefs { session: self.session, seq: state.seq, blobs };
            let path = self.repo.save_checkpoint(&Checkpoint { refs, entries })?;
            state.written.push(path);
        }
        let stale = if mode == Checkpointing::Final { take(&self.stale) } else { Vec::new() };
        // Checked again: a mark may have come while the checkpoint was written.
        let present = self.check_relied()?;
        if broken() {
            for path in std::mem::take(&mut state.written) {
                self.repo.backend().delete(&path).map_err(bakare_store::StoreError::from)?;
            }
        }
        let trust = if broken() {
            Trust::RevokeAll
        } else if self.trusted || mode == Checkpointing::Final {
            Trust::Grant(&self.set, &present)
        } else {
            Trust::Revoke(&self.set)
        };
        if let Err(e) = self.memo.write(&ready, &dirs_ready, &stale, trust)
            && let Ok(mut w) = self.memo_warnings.lock()
        {
            w.push(format!("could not update the local memo: {e}"));
        }
        state.at = Instant::now();
        state.bytes_read = read;
        if mode == Checkpointing::IfDue {
            bakare_store::failpoint::hit("after-checkpoint");
        }
        Ok(())
    }

    /// Whether every index segment this walk relied on still exists and its session was not
    /// declared expired (else it is marked broken); returns the segments that exist.
    fn check_relied(&self) -> Result<Vec<bakare_store::Digest>, PlanError> {
        let present: std::collections::HashSet<_> = self.repo.index_segments()?.into_iter().collect();
        // A session a prune declared expired holds nothing back any more: what it saved may
        // be swept under it.
        let intact = !self.repo.is_poisoned()
            && self.repo.segments_used().iter().chain(&self.relied_memo).all(|s| present.contains(s))
            && self.repo.session_standing(&self.session)?;
        if !intact {
            self.broken.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(present.into_iter().collect())
    }

    /// A folder on the way to a source: only the source-bearing children are listed.
    fn virtual_dir(&self, node: &Sources, path: &Path, ex: &Excludes) -> Result<Resolved, PlanError> {
        let folder = self.memo.folder(path);
        let children = node
            .children
            .par_iter()
            .map(|(name, child)| {
                let child_path = path.join(name);
                let meta = fs::symlink_metadata(&child_path)
                    .map_err(|cause| PlanError::Source { path: child_path.clone(), cause })?;
                if child.whole {
                    self.child(&child_path, name.as_bytes(), &meta, ex, &folder.files, None)
                } else {
                    Counters::add(&self.run.counters.dirs, 1);
                    let Resolved(tree, error, totals) = self.virtual_dir(child, &child_path, ex)?;
                    let kind = PlannedKind::Resolved { node: Node::Dir { tree }, error };
                    let extra = extra_of(&meta, self.xattrs_of(&child_path), &self.run.devices);
                    Ok(Some(Planned { name: name.as_bytes().to_vec(), meta: metadata_of(&meta), extra, kind, totals }))
                }
            })
            .filter_map(Result::transpose)
            .collect::<Result<Vec<_>, _>>()?;
        self.finish(path, children, None, &folder, None)
    }

    /// A folder's tree; `None` when a tag file in it leaves it out. `live`: the live folder
    /// behind it when it is read from a filesystem snapshot; `own`: its entry in its parent.
    fn dir(
        &self,
        path: &Path,
        ex: &Excludes,
        live: Option<Live>,
        own: Option<DirStat>,
    ) -> Result<Option<Resolved>, PlanError> {
        if self.run.interrupted() {
            return Err(PlanError::Interrupted);
        }
        // A snapshot's root or a filesystem bound live starts its own view.
        let live = self.live.at(path).unwrap_or(live);
        let listing = match list_dir(path, ex) {
            Ok(l) => l,
            Err(e) => {
                Counters::add(&self.run.counters.dirs, 1);
                let msg = format!("cannot list folder: {e}");
                self.record_error(path, msg.clone());
                return self.finish(path, Vec::new(), Some(msg), &crate::memo::FolderMemo::default(), None).map(Some);
            }
        };
        if ex.tagged(path, listing.iter().map(|(name, ..)| name.as_os_str())) {
            return Ok(None);
        }
        Counters::add(&self.run.counters.dirs, 1);
        let folder = self.memo.folder(path);
        let memo = &folder.files;
        // Under a watcher, in a folder where only some entries changed: the names to ask the
        // filesystem about (the rest are as the memo has them).
        let only = match (&live, self.dirty) {
            (None, Some(dirty)) => dirty.only(path),
            _ => None,
        };
        let live = live.and_then(|l| l.listing());
        let children: Vec<Planned> = listing
            .into_par_iter()
            .map(|(name, child_path, entry)| {
                if let Some(named) = only
                    && !named.contains(name.as_bytes())
                    && let Some(p) = self.unchanged(&child_path, name.as_bytes(), &entry, memo, ex)
                {
                    return Ok(Some(p));
                }
                // Unchanged since the snapshot: its live metadata (no new inode for it).
                let seen = live.as_ref().and_then(|l| l.unchanged(&name, std::os::unix::fs::DirEntryExt::ino(&entry)));
                let meta = match seen {
                    Some(meta) => meta,
                    None => match entry.metadata() {
                        Ok(meta) => meta,
                        Err(e) => {
                            self.record_error(&child_path, format!("vanished or unreadable: {e}"));
                            return Ok(None);
                        }
                    },
                };
                let inner = live.as_ref().filter(|_| meta.is_dir()).and_then(|l| l.live().enter(&name, meta.ino()));
                self.child(&child_path, name.as_bytes(), &meta, ex, memo, inner)
            })
            .filter_map(Result::transpose)
            .collect::<Result<_, PlanError>>()?;
        let gone: Vec<&MemoRecord> = memo
            .iter()
            .filter(|r| {
                children
                    .binary_search_by(|c| c.name.as_slice().cmp(r.name()))
                    .map_or(true, |i| !children.get(i).is_some_and(|c| is_file(&c.kind)))
            })
            .collect();
        if self.dirty.is_some()
            && let Some(r) = gone.iter().find(|r| r.fp.linked)
        {
            self.fall_back(path, r.name());
        }
        let stale: Vec<Vec<u8>> = gone.into_iter().map(|r| r.key.clone()).collect();
        if !stale.is_empty()
            && let Ok(mut s) = self.stale.lock()
        {
            s.extend(stale);
        }
        let resolved = self.finish(path, children, None, &folder, own)?;
        // A folder found changed in a verification walk that the watcher did not name.
        if folder.tree.is_some_and(|r| r != resolved.0)
            && self.predicted.is_some_and(|p| !p.must_list(path))
            && let Ok(mut m) = self.misses.lock()
        {
            m.push(path.to_path_buf());
        }
        Ok(Some(resolved))
    }

    /// Notes that a file with other names changed in `folder`: a walk of changed folders
    /// only does not see the folders holding its other names.
    fn fall_back(&self, folder: &Path, name: &[u8]) {
        if let Ok(mut f) = self.fallback.lock()
            && f.is_none()
        {
            let path = folder.join(std::ffi::OsStr::from_bytes(name));
            *f = Some(format!("{} has hard links that changed", path.display()));
        }
    }

    /// The folder's tree. With no pending child it is built directly (and, when its id is the
    /// memo's and the memo is trusted, known to be stored); otherwise the folder's database
    /// reads its pending files in parallel and `dir_tree` builds it.
    fn finish(
        &self,
        path: &Path,
        children: Vec<Planned>,
        error: Option<String>,
        memo: &crate::memo::FolderMemo,
        own: Option<DirStat>,
    ) -> Result<Resolved, PlanError> {
        let remembered = memo.tree;
        let mut totals = Totals { dirs: 1, ..Totals::default() };
        for c in &children {
            match &c.kind {
                PlannedKind::Read(_, fp, ..) => totals.add(Totals { files: 1, bytes: fp.size, dirs: 0 }),
                PlannedKind::Resolved { node: Node::File { size, .. }, .. } => {
                    totals.add(Totals { files: 1, bytes: *size, dirs: 0 });
                }
                PlannedKind::Resolved { .. } => totals.add(c.totals),
            }
        }
        // A folder that could not be listed is never taken from the memo: listing it again
        // is what finds out whether it still cannot be.
        let record = error.is_none()
            && (remembered.is_none() || memo.totals != Some(totals) || (own.is_some() && memo.entry != own));
        let id = if children.iter().all(|c| matches!(c.kind, PlannedKind::Resolved { .. })) {
            let entries = children
                .into_iter()
                .filter_map(|c| match c.kind {
                    PlannedKind::Resolved { node, error } => {
                        Some(Entry { name: c.name, node, meta: c.meta, error, extra: c.extra })
                    }
                    PlannedKind::Read(..) => None,
                })
                .collect();
            let bytes = Tree { entries }.encode()?;
            let id = self.repo.blob_id(&bytes);
            if self.trusted && remembered == Some(id) && !record {
                return Ok(Resolved(id, error, totals));
            }
            self.repo.save_blob_with_id(BlobKind::Tree, id, &bytes)?;
            id
        } else {
            self.read_and_build(path, children, error.clone())?
        };
        if error.is_some() {
            if remembered.is_some()
                && let Ok(mut s) = self.stale.lock()
            {
                s.push(DirRecord::new(path, id, totals, None).key);
            }
        } else if (remembered != Some(id) || record)
            && let Ok(mut d) = self.dirs.lock()
        {
            d.push(DirRecord::new(path, id, totals, own));
        }
        self.checkpoint(Checkpointing::IfDue)?;
        Ok(Resolved(id, error, totals))
    }

    /// A folder with files to read: its own database, `file_content` for the pending files
    /// from top-level rayon tasks (no query runs on this thread here), then `dir_tree`.
    fn read_and_build(&self, path: &Path, children: Vec<Planned>, error: Option<String>) -> Result<BlobId, PlanError> {
        let db = PlanDb::with_context(self.run.clone());
        let mut pending = Vec::new();
        let children: Vec<Child> = children
            .into_iter()
            .map(|c| {
                let kind = match c.kind {
                    PlannedKind::Resolved { node, error } => ChildKind::Resolved { node, error },
                    PlannedKind::Read(p, fp, previous, xattrs) => {
                        let f = SourceFile::new(&db, p, fp, previous, xattrs);
                        pending.push(f);
                        ChildKind::File(f)
                    }
                };
                Child { name: c.name, meta: c.meta, extra: c.extra, kind }
            })
            .collect();
        // What each read gave is applied here, outside the queries (their bodies keep no
        // state of the run), once per file.
        pending.par_iter().for_each_with(db.clone(), |db, f| {
            file_content(db, *f).apply(&self.run, f.path(db));
        });
        let dir = SourceDir::new(&db, path.to_path_buf(), Listing { children, error });
        match dir_tree(&db, dir) {
            TreeResult::Saved(id) => Ok(*id),
            TreeResult::Fatal(stop) if stop.resumable && stop.message == INTERRUPTED && self.run.interrupted() => {
                Err(PlanError::Interrupted)
            }
            TreeResult::Fatal(stop) if stop.resumable => Err(PlanError::Resumable(stop.message.clone())),
            TreeResult::Fatal(stop) => Err(PlanError::Fatal(stop.message.clone())),
        }
    }

    /// One entry of a folder; `live`: for a folder read from a filesystem snapshot, the
    /// live folder behind it.
    fn child(
        &self,
        path: &Path,
        name: &[u8],
        meta: &fs::Metadata,
        ex: &Excludes,
        memo: &[MemoRecord],
        live: Option<Live>,
    ) -> Result<Option<Planned>, PlanError> {
        let ft = meta.file_type();
        let dev = self.run.devices.normal(meta.dev());
        let mut totals = Totals::default();
        // A folder's extended attributes are read before it is listed: its memo record keeps
        // them with its entry.
        let xattrs = if ft.is_dir() { Some(self.xattrs_of(path)) } else { None };
        let own = || xattrs.as_ref().map(|x| DirStat::of(meta, self.xattrs.then(|| x.clone())));
        let kind = if ft.is_dir() && ex.crosses(dev) {
            // A mount point under --one-file-system: kept, empty, so a restore has it.
            Counters::add(&self.run.counters.dirs, 1);
            let Resolved(tree, error, t) =
                self.finish(path, Vec::new(), None, &crate::memo::FolderMemo::default(), own())?;
            totals = t;
            PlannedKind::Resolved { node: Node::Dir { tree }, error }
        } else if ft.is_dir()
            && let Some(dirty) = self.dirty
            && !dirty.must_list(path)
            && let Some(DirRecord { tree, totals: Some(t), entry, .. }) = self.memo.dir_record(path)
        {
            // No event below it since the last snapshot: its tree then is its tree now. Its
            // own entry may have changed (an event named it): the record keeps the new one.
            let own = own();
            if own.is_some()
                && entry != own
                && let Ok(mut d) = self.dirs.lock()
            {
                d.push(DirRecord::new(path, tree, t, own));
            }
            self.reused(t);
            totals = t;
            PlannedKind::Resolved { node: Node::Dir { tree }, error: None }
        } else if ft.is_dir() {
            let Some(Resolved(tree, error, t)) = self.dir(path, &ex.enter(path).on_device(dev), live, own())? else {
                return Ok(None);
            };
            totals = t;
            PlannedKind::Resolved { node: Node::Dir { tree }, error }
        } else if ft.is_file() && ex.too_large(meta.len()) {
            return Ok(None);
        } else if ft.is_file() {
            let (kind, xattrs) = self.file(path, name, meta, memo);
            let extra = extra_of(meta, xattrs, &self.run.devices);
            return Ok(Some(Planned { name: name.to_vec(), meta: metadata_of(meta), extra, kind, totals }));
        } else if ft.is_symlink() {
            match fs::read_link(path) {
                Ok(t) => PlannedKind::Resolved {
                    node: Node::Symlink { target: t.as_os_str().as_bytes().to_vec() },
                    error: None,
                },
                Err(e) => {
                    let msg = format!("cannot read symlink: {e}");
                    self.record_error(path, msg.clone());
                    PlannedKind::Resolved { node: Node::Symlink { target: Vec::new() }, error: Some(msg) }
                }
            }
        } else {
            PlannedKind::Resolved { node: special_node(meta), error: None }
        };
        let xattrs = xattrs.unwrap_or_else(|| self.xattrs_of(path));
        let extra = extra_of(meta, xattrs, &self.run.devices);
        Ok(Some(Planned { name: name.to_vec(), meta: metadata_of(meta), extra, kind, totals }))
    }

    /// An entry of a changed folder that no event named since the last snapshot, written as
    /// the memo has it (no `lstat`), when the memo holds all of it: a file with its content
    /// and owner, or a folder with no change below it and its own entry. `None`: ask the
    /// filesystem.
    fn unchanged(
        &self,
        path: &Path,
        name: &[u8],
        entry: &fs::DirEntry,
        memo: &[MemoRecord],
        ex: &Excludes,
    ) -> Option<Planned> {
        let dirty = self.dirty?;
        let ft = entry.file_type().ok()?;
        if self.force || !self.trusted {
            return None;
        }
        if ft.is_dir() {
            if dirty.must_list(path) {
                return None;
            }
            let DirRecord { tree, totals: Some(t), entry: Some(own), .. } = self.memo.dir_record(path)? else {
                return None;
            };
            let xattrs = if self.xattrs { own.xattrs? } else { Vec::new() };
            self.reused(t);
            let (meta, extra) = own.owner.entry(own.mtime_ns, own.ctime_ns, xattrs);
            let kind = PlannedKind::Resolved { node: Node::Dir { tree }, error: None };
            return Some(Planned { name: name.to_vec(), meta, extra, kind, totals: t });
        }
        if !ft.is_file() {
            return None;
        }
        let r = memo.binary_search_by(|r| r.name().cmp(name)).ok().and_then(|i| memo.get(i))?;
        let o = r.fp.owner?;
        if r.racy || r.fp.linked || ex.too_large(r.fp.size) {
            return None;
        }
        let xattrs = if self.xattrs { r.xattrs.clone()? } else { Vec::new() };
        self.reused(Totals { files: 1, bytes: r.fp.size, dirs: 0 });
        let (meta, extra) = o.entry(r.fp.mtime_ns, r.fp.ctime_ns, xattrs);
        let kind =
            PlannedKind::Resolved { node: Node::File { size: r.fp.size, chunks: r.chunks.clone() }, error: None };
        Some(Planned { name: name.to_vec(), meta, extra, kind, totals: Totals::default() })
    }

    /// Counts what a run takes from the memo unread: a folder's subtree, or one file.
    fn reused(&self, t: Totals) {
        let c = &self.run.counters;
        Counters::add(&c.dirs, t.dirs);
        Counters::add(&c.files_unchanged, t.files);
        Counters::add(&c.files_memo, t.files);
        Counters::add(&c.bytes_total, t.bytes);
        Counters::add(&c.bytes_reused, t.bytes);
    }

    /// The extended attributes of `path` (none with `--no-xattrs`); one that cannot be read
    /// is recorded as the entry's error and the rest backed up.
    fn xattrs_of(&self, path: &Path) -> Vec<Xattr> {
        if !self.xattrs {
            return Vec::new();
        }
        crate::xattrs::read(path).unwrap_or_else(|e| {
            self.record_error(path, e);
            Vec::new()
        })
    }

    /// A file: from the memo when its content is known unchanged, else to be read; with its
    /// extended attributes, taken from the memo too while its ctime has not moved (any
    /// change to them moves it), so that a no-change run asks the file system nothing more.
    fn file(&self, path: &Path, name: &[u8], meta: &fs::Metadata, memo: &[MemoRecord]) -> (PlannedKind, Vec<Xattr>) {
        let fp = StatFingerprint::of(meta).on(&self.run.devices);
        let first_link = meta.nlink() < 2 || self.linked.lock().is_ok_and(|mut l| l.insert((fp.dev, fp.ino)));
        if first_link {
            Counters::add(&self.run.counters.bytes_total, fp.size);
        }
        let record = memo.binary_search_by(|r| r.name().cmp(name)).ok().and_then(|i| memo.get(i));
        // A file with other names (or that had them) changed: the folders of those names
        // changed too, and no event named them.
        if self.dirty.is_some()
            && (fp.linked || record.is_some_and(|r| r.fp.linked))
            && record.is_none_or(|r| r.fp.ctime_ns != fp.ctime_ns || r.fp.linked != fp.linked)
        {
            self.fall_back(path.parent().unwrap_or(path), name);
        }
        // The record still stands for the file's metadata: its extended attributes are
        // remembered (any change to them moves the ctime), and its link count is known.
        let same = |r: &MemoRecord| r.fp.ctime_ns == fp.ctime_ns && r.fp.linked == fp.linked && r.fp.owner == fp.owner;
        let remembered = |r: &MemoRecord| match &r.xattrs {
            Some(x) if same(r) => Some(x.clone()),
            None if !self.xattrs && same(r) => Some(Vec::new()),
            _ => None,
        };
        if let Some(r) = record
            && !self.force
            && !r.racy
            && r.fp.same_content(&fp)
            && (self.trusted || r.chunks.iter().all(|c| self.repo.contains_blob(c).unwrap_or(false)))
        {
            Counters::add(&self.run.counters.files_memo, 1);
            Counters::add(&self.run.counters.files_unchanged, 1);
            Counters::add(&self.run.counters.bytes_reused, fp.size);
            let xattrs = match remembered(r) {
                Some(x) if self.xattrs => x,
                Some(_) => Vec::new(),
                None => {
                    // Metadata moved (or the record predates xattrs): read them, and
                    // remember them with the new ctime (and link count).
                    let x = self.xattrs_of(path);
                    let kept = self.xattrs.then(|| x.clone());
                    let fresh = MemoRecord::new(path, fp, false, r.chunks.clone(), kept);
                    if let Ok(mut f) = self.run.fresh.lock() {
                        f.push(fresh);
                    }
                    x
                }
            };
            let node = Node::File { size: fp.size, chunks: r.chunks.clone() };
            return (PlannedKind::Resolved { node, error: None }, xattrs);
        }
        let previous = record.map(|r| chunk_list_digest(&r.chunks));
        let xattrs = self.xattrs.then(|| self.xattrs_of(path));
        (PlannedKind::Read(path.to_path_buf(), fp, previous, xattrs.clone()), xattrs.unwrap_or_default())
    }
}

fn is_file(k: &PlannedKind) -> bool {
    matches!(k, PlannedKind::Read(..) | PlannedKind::Resolved { node: Node::File { .. }, .. })
}

/// A folder's children that are not excluded, sorted by name bytes.
/// A folder's children that are not excluded, sorted by name bytes. The entries stay open on
/// the folder, so their `lstat` is an `fstatat` relative to it, not a walk of the full path.
fn list_dir(path: &Path, ex: &Excludes) -> std::io::Result<Vec<(OsString, PathBuf, fs::DirEntry)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let child = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !ex.is_excluded(&child, is_dir) {
            out.push((entry.file_name(), child, entry));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// What a backup would read: files and bytes new, changed and unchanged by the memo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DryRun {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    /// Bytes of the new and changed files: what the backup would read.
    pub bytes_to_read: u64,
    pub dirs: u64,
}

impl DryRun {
    fn add(self, o: Self) -> Self {
        Self {
            files_new: self.files_new + o.files_new,
            files_changed: self.files_changed + o.files_changed,
            files_unchanged: self.files_unchanged + o.files_unchanged,
            bytes_to_read: self.bytes_to_read + o.bytes_to_read,
            dirs: self.dirs + o.dirs,
        }
    }
}

/// `backup --dry-run`: walks `paths` as a backup would (global exclude rules, no
/// `.gitignore` files, no selection) and compares each file with the memo, reading no file
/// and writing nothing. A file the memo vouches for (same size, mtime, inode and device, not
/// changed within its clock tick) is unchanged; one it has another record of is changed;
/// others are new. `on_file` hears of each new or changed one. An estimate: the backup also
/// checks that the memo's chunks are still in the repository.
pub fn dry_run(
    memo: &Memo,
    paths: &[PathBuf],
    excludes: &Excludes,
    on_file: &(dyn Fn(crate::FileChange, &Path, u64) + Sync),
) -> DryRun {
    fn file(
        memo: &[MemoRecord],
        path: &Path,
        m: &fs::Metadata,
        on_file: &(dyn Fn(crate::FileChange, &Path, u64) + Sync),
    ) -> DryRun {
        let fp = StatFingerprint::of(m);
        let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let record = memo.binary_search_by(|r| r.name().cmp(name)).ok().and_then(|i| memo.get(i));
        let change = match record {
            Some(r) if !r.racy && r.fp.same_content(&fp) => crate::FileChange::Unchanged,
            Some(_) => crate::FileChange::Changed,
            None => crate::FileChange::New,
        };
        let mut d = DryRun::default();
        match change {
            crate::FileChange::Unchanged => d.files_unchanged = 1,
            crate::FileChange::Changed => d.files_changed = 1,
            crate::FileChange::New => d.files_new = 1,
        }
        if change != crate::FileChange::Unchanged {
            d.bytes_to_read = fp.size;
            on_file(change, path, fp.size);
        }
        d
    }
    fn dir(
        memo: &Memo,
        path: &Path,
        ex: &Excludes,
        on_file: &(dyn Fn(crate::FileChange, &Path, u64) + Sync),
    ) -> DryRun {
        let Ok(listing) = list_dir(path, &ex.enter(path)) else { return DryRun { dirs: 1, ..DryRun::default() } };
        let records = memo.folder(path).files;
        listing
            .into_par_iter()
            .map(|(_, child, entry)| match entry.metadata() {
                Ok(m) if m.is_dir() => dir(memo, &child, ex, on_file),
                Ok(m) if m.is_file() => file(&records, &child, &m, on_file),
                _ => DryRun::default(),
            })
            .reduce(DryRun::default, DryRun::add)
            .add(DryRun { dirs: 1, ..DryRun::default() })
    }
    paths
        .iter()
        .map(|p| {
            let p = fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => dir(memo, &p, excludes, on_file),
                Ok(m) if m.is_file() => {
                    let records = p.parent().map(|parent| memo.folder(parent).files).unwrap_or_default();
                    file(&records, &p, &m, on_file)
                }
                _ => DryRun::default(),
            }
        })
        .fold(DryRun::default(), DryRun::add)
}

/// A bare parallel `lstat` walk of `root` in the same way the backup walks (name-sorted
/// listings, siblings in parallel), touching no repository and no memo: the reference cost
/// a no-change backup is measured against. Returns (folders, other entries).
pub fn stat_walk(root: &Path) -> std::io::Result<(u64, u64)> {
    let listing = list_dir(root, &Excludes::none())?;
    let counts = listing
        .into_par_iter()
        .map(|(_, child, entry)| match entry.metadata() {
            Ok(m) if m.is_dir() => Ok(stat_walk(&child).unwrap_or((1, 0))),
            Ok(_) => Ok((0, 1)),
            Err(_) => Ok((0, 0)),
        })
        .collect::<std::io::Result<Vec<(u64, u64)>>>()?;
    Ok(counts.into_iter().fold((1, 0), |(d, f), (d2, f2)| (d + d2, f + f2)))
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn only_the_deepest_misses_are_named() {
        let p = |s: &str| PathBuf::from(s);
        let got = deepest(vec![p("/a"), p("/a/b/c"), p("/a/b"), p("/a/c"), p("/z"), p("/a/bc")]);
        assert_eq!(got, vec![p("/a/b/c"), p("/a/bc"), p("/a/c"), p("/z")]);
    }
}
