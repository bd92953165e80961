//! The local name index behind `find` and `history`: every file path of every snapshot with
//! its versions, kept in the cache folder, encrypted, and updated incrementally.
//!
//! Layout (redb): one row per folder path ever backed up, keyed by a keyed hash of the path,
//! holding that folder's names, each with its *runs*: "in backup set `s`, from the snapshot
//! at position `from` of the set's lineage to the one at `to` (or to the newest indexed, while
//! open), this name had this version (kind, size, mtime, content id)". A backup set is the
//! snapshots of one host and list of paths, in the order they were indexed.
//!
//! A new snapshot is indexed by comparing its tree with the newest indexed snapshot of its
//! set: subtrees whose ids are equal are neither read nor touched, a changed name closes its
//! open run and opens a new one, so the work is proportional to the folders that changed.
//! Forgetting snapshots needs no work: a run is shown only for the snapshots that still
//! exist. If the newest indexed snapshot of a set was forgotten (its trees may be gone), the
//! next snapshot starts a new lineage for the set.
//!
//! Rows and the state are sealed (XChaCha20-Poly1305) with a key derived from the data
//! secret, so the file reveals no names to anyone without the master key; a row that fails
//! to open means the file is damaged, and it is rebuilt from the repository.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bakare_store::local::db;
use bakare_store::local::names::NameSealer;
use bakare_store::{BlobId, Entry, Node, Repository, Snapshot, SnapshotId};
use bakare_store::{Digest, checksum};
use nucleo_matcher::pattern::{CaseMatching, Normalization, Pattern};
use nucleo_matcher::{Config, Matcher, Utf32Str};
use rayon::prelude::*;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::find::{History, Version};
use crate::memo::chunk_list_digest;

const FOLDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("folders");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Layout of the file (see [`db`]); another one is set aside and rebuilt. Layout 2 is the
/// first under the local files' convention.
const LAYOUT: db::Layout = db::Layout { kind: "bakare name index", version: 2 };
const OPEN: u32 = u32::MAX;
const KINDS: [&str; 7] = ["file", "dir", "symlink", "fifo", "socket", "chardev", "blockdev"];

/// What one name was in a range of one set's snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Ver {
    kind: u8,
    size: u64,
    mtime_ns: i64,
    content: Option<[u8; 16]>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Run {
    set: u32,
    from: u32,
    /// Inclusive; [`OPEN`] while the newest indexed snapshot of the set has this version.
    to: u32,
    ver: Ver,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Name {
    name: Vec<u8>,
    runs: Vec<Run>,
}

/// One folder path's names, sorted by name.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Folder {
    path: Vec<u8>,
    names: Vec<Name>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Set {
    host: String,
    paths: Vec<Vec<u8>>,
    lineage: Vec<SnapshotId>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    sets: Vec<Set>,
}

/// Why the index could not serve: damaged local state (rebuilt) or the repository.
enum Failure {
    Damaged(String),
    Repo(PlanError),
}

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Self {
        Failure::Repo(e)
    }
}

impl From<bakare_store::StoreError> for Failure {
    fn from(e: bakare_store::StoreError) -> Self {
        Failure::Repo(e.into())
    }
}

fn damaged(e: impl std::fmt::Display) -> Failure {
    Failure::Damaged(e.to_string())
}

/// A candidate of a search: score, path, runs.
type Candidate = (u32, String, Vec<Run>);
/// A sealed row: key, value.
type Row = (Vec<u8>, Vec<u8>);

/// One path matching a query, with its versions in the chosen snapshots, oldest first.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    pub path: String,
    pub score: u32,
    pub versions: Vec<Version>,
}

/// What bringing the index up to date did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct IndexReport {
    /// Snapshots added to the index by this call.
    pub snapshots_indexed: usize,
    /// Folder trees read from the repository to do it.
    pub trees_read: u64,
    /// The local file was damaged or of another layout and was built again.
    pub rebuilt: bool,
    pub index_ms: u64,
}

/// The name index of one repository, brought up to date with its snapshots.
pub struct NameIndex {
    db: Database,
    keys: Keys,
    state: State,
    pub report: IndexReport,
}

/// The rows' keys, from the repository: an opaque sealer.
struct Keys {
    sealer: NameSealer,
}

impl Keys {
    fn row(&self, folder: &[u8]) -> [u8; 16] {
        self.sealer.row_key(folder)
    }

    fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, Failure> {
        self.sealer.seal(aad, plain).map_err(damaged)
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Failure> {
        self.sealer.open(aad, sealed).map_err(damaged)
    }

    fn open_folder(&self, key: &[u8], sealed: &[u8]) -> Result<Folder, Failure> {
        let plain = self.open(key, sealed)?;
        postcard::from_bytes(&plain).map_err(|e| damaged(format!("folder row: {e}")))
    }
}

impl NameIndex {
    /// Opens the index at `path` (in memory when `None`) and indexes every snapshot of
    /// `all` not yet in it. A damaged file is deleted and built again; one held by another
    /// process for more than a few seconds is left alone and an index in memory used.
    pub fn open(path: Option<&Path>, repo: &Repository, all: &[(SnapshotId, Snapshot)]) -> Result<Self, PlanError> {
        let started = std::time::Instant::now();
        let mut rebuilt = false;
        for attempt in 0..2 {
            match Self::try_open(path, repo, all) {
                Ok(mut idx) => {
                    idx.report.rebuilt |= rebuilt;
                    idx.report.index_ms = started.elapsed().as_millis() as u64;
                    return Ok(idx);
                }
                Err(Failure::Repo(e)) => return Err(e),
                Err(Failure::Damaged(why)) => {
                    let Some(p) = path else { return Err(PlanError::Fatal(format!("name index in memory: {why}"))) };
                    if attempt == 1 {
                        return Err(PlanError::Fatal(format!("name index {}: {why}", p.display())));
                    }
                    db::set_aside(p);
                    rebuilt = true;
                }
            }
        }
        Err(PlanError::Fatal("name index: could not be built".into()))
    }

    fn try_open(path: Option<&Path>, repo: &Repository, all: &[(SnapshotId, Snapshot)]) -> Result<Self, Failure> {
        let keys = Keys { sealer: repo.name_sealer()? };
        let (db, started_anew) = open_db(path, &keys, repo.budget())?;
        let mut idx = Self { db, keys, state: State::default(), report: IndexReport::default() };
        idx.report.rebuilt = started_anew;
        idx.load_state()?;
        idx.sync(repo, all)?;
        Ok(idx)
    }

    fn load_state(&mut self) -> Result<(), Failure> {
        let Some(table) = db::read_table(&self.db, META).map_err(damaged)? else { return Ok(()) };
        // A new file has no state yet (its layout is written by `db`).
        let Some(sealed) = table.get("state").map_err(damaged)? else { return Ok(()) };
        let plain = self.keys.sealer.open(b"state", sealed.value()).map_err(|e| damaged(format!("state: {e}")))?;
        self.state = postcard::from_bytes(&plain).map_err(|e| damaged(format!("state: {e}")))?;
        Ok(())
    }

    /// Indexes the snapshots of `all` not in the index yet, oldest first, one transaction
    /// each.
    fn sync(&mut self, repo: &Repository, all: &[(SnapshotId, Snapshot)]) -> Result<(), Failure> {
        let indexed: HashSet<SnapshotId> = self.state.sets.iter().flat_map(|s| s.lineage.iter().copied()).collect();
        let roots: HashMap<SnapshotId, BlobId> = all.iter().map(|(id, s)| (*id, s.root)).collect();
        let mut new: Vec<&(SnapshotId, Snapshot)> = all.iter().filter(|(id, _)| !indexed.contains(id)).collect();
        new.sort_by_key(|(id, s)| (s.time_ns, *id));
        let progress = repo.progress();
        progress.start(new.len() as u64);
        for (id, snap) in new {
            progress.step(0);
            let found = self.state.sets.iter().rposition(|s| s.host == snap.host && s.paths == snap.paths);
            // The newest indexed snapshot of the set, if it still exists to compare with.
            let tail = found.and_then(|i| {
                let set = self.state.sets.get(i)?;
                roots.get(set.lineage.last()?).map(|root| (i, *root))
            });
            let (set, old_root) = match tail {
                Some((i, root)) => (i, Some(root)),
                None => {
                    self.state.sets.push(Set { host: snap.host.clone(), paths: snap.paths.clone(), lineage: vec![] });
                    (self.state.sets.len() - 1, None)
                }
            };
            let Some(entry) = self.state.sets.get_mut(set) else { return Err(damaged("set vanished")) };
            let pos = entry.lineage.len() as u32;
            entry.lineage.push(*id);
            let txn = self.db.begin_write().map_err(damaged)?;
            {
                let mut table = txn.open_table(FOLDERS).map_err(damaged)?;
                let mut update =
                    Update { repo, keys: &self.keys, table: &mut table, set: set as u32, pos, trees_read: 0 };
                update.run(old_root, snap.root)?;
                self.report.trees_read += update.trees_read;
                let state = postcard::to_stdvec(&self.state).map_err(damaged)?;
                let sealed = self.keys.seal(b"state", &state)?;
                let mut meta = txn.open_table(META).map_err(damaged)?;
                meta.insert("state", sealed.as_slice()).map_err(damaged)?;
            }
            txn.commit().map_err(damaged)?;
            self.report.snapshots_indexed += 1;
        }
        Ok(())
    }

    /// Paths matching `query` in the `chosen` snapshots (under `prefix` when given), best
    /// first: fuzzy (fzf-like, smart case) over the whole path and, weighted higher, over
    /// the file name, an exact name first of all; a name holding the query with a typo or two
    /// (a swapped pair counts as one) scores as a near-exact name match, above the loose
    /// matches a long name gives to scattered letters (`copyrigth` finds `copyright` first
    /// among thousands of long man-page names).
    pub fn find(
        &self,
        query: &str,
        chosen: &[(SnapshotId, Snapshot)],
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Hit>, PlanError> {
        let view = View::new(&self.state, chosen);
        let rows = self.rows().map_err(fatal)?;
        let pattern = Pattern::parse(query, CaseMatching::Smart, Normalization::Smart);
        let q = query.to_lowercase();
        let under = prefix.map(|p| format!("{}/", p.trim_end_matches('/')));
        // What the query scores against itself as a name. A name that holds the query with
        // a typo is ranked just below that, less a quarter character per edit: below names
        // that hold the query as it is, above names whose letters hold it scattered.
        let perfect = {
            let mut m = Matcher::new(Config::DEFAULT.match_paths());
            let mut buf = Vec::new();
            pattern.score(Utf32Str::new(query, &mut buf), &mut m).unwrap_or(100) * 2
        };
        let typo_rank = |d: usize| {
            let len = q.chars().count().max(1) as u32;
            perfect.saturating_sub(perfect.saturating_mul(d as u32) / (4 * len)).max(1)
        };
        let scan = || -> Result<Vec<Candidate>, PlanError> {
            let found: Result<Vec<Vec<Candidate>>, Failure> = rows
                .par_iter()
                .map_init(
                    || (Matcher::new(Config::DEFAULT.match_paths()), Vec::new()),
                    |(matcher, buf), (key, sealed)| {
                        let folder = self.keys.open_folder(key, sealed)?;
                        let dir = String::from_utf8_lossy(&folder.path);
                        let mut out = Vec::new();
                        for n in folder.names {
                            if !n.runs.iter().any(|r| view.shows(r)) {
                                continue;
                            }
                            let name = String::from_utf8_lossy(&n.name);
                            let path = format!("{dir}/{name}");
                            if under.as_ref().is_some_and(|u| !path.starts_with(u.as_str())) {
                                continue;
                            }
                            let lower = name.to_lowercase();
                            // Most names fail the typo check's cheap tests at once.
                            let typo = typo_distance(&q, &lower).filter(|d| *d > 0).map(typo_rank);
                            let whole = pattern.score(Utf32Str::new(&path, buf), matcher);
                            let in_name = pattern.score(Utf32Str::new(&name, buf), matcher).map(|s| s * 2);
                            let exact = (lower == q).then_some(10_000);
                            let score = [whole, in_name, exact, typo].into_iter().flatten().max();
                            if let Some(s) = score {
                                out.push((s, path, n.runs));
                            }
                        }
                        Ok(out)
                    },
                )
                .collect();
            match found {
                Ok(v) => Ok(v.into_iter().flatten().collect()),
                Err(e) => Err(fatal(e)),
            }
        };
        let mut hits = scan()?;
        hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.len().cmp(&b.1.len())).then(a.1.cmp(&b.1)));
        hits.truncate(limit);
        Ok(hits.into_iter().map(|(score, path, runs)| Hit { path, score, versions: view.versions(&runs) }).collect())
    }

    /// Every version of `path` in the `chosen` snapshots, and where its content went when it
    /// disappeared from a later snapshot that has the same content under another path.
    pub fn history(&self, path: &[u8], chosen: &[(SnapshotId, Snapshot)]) -> Result<Option<History>, PlanError> {
        let view = View::new(&self.state, chosen);
        let (folder, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        let key = self.keys.row(folder);
        let runs = {
            let Some(table) = db::read_table(&self.db, FOLDERS).map_err(|e| fatal(damaged(e)))? else {
                return Ok(None);
            };
            let Some(sealed) = table.get(key.as_slice()).map_err(|e| fatal(damaged(e)))? else { return Ok(None) };
            let f = self.keys.open_folder(&key, sealed.value()).map_err(fatal)?;
            match f.names.into_iter().find(|n| n.name == name) {
                Some(n) => n.runs,
                None => return Ok(None),
            }
        };
        let versions = view.versions(&runs);
        let Some(last) = versions.last() else { return Ok(None) };
        let mut moved_to = Vec::new();
        let later = view.later_than(last.time_ns);
        // The newest version's content id, as stored (compared below without hex).
        let content = runs.iter().filter_map(|r| r.ver.content).find(|c| Some(hex16(*c)) == last.content);
        if let (Some(content), false) = (content, later.is_empty()) {
            let shown = String::from_utf8_lossy(path).into_owned();
            let mut best: Option<(i64, String, String)> = None;
            for (key, sealed) in self.rows().map_err(fatal)? {
                let f = self.keys.open_folder(&key, &sealed).map_err(fatal)?;
                for n in &f.names {
                    for r in &n.runs {
                        if r.ver.content != Some(content) {
                            continue;
                        }
                        for (time, id) in view.covered(r) {
                            if !later.contains(&id) || best.as_ref().is_some_and(|b| b.0 <= time) {
                                continue;
                            }
                            let p =
                                format!("{}/{}", String::from_utf8_lossy(&f.path), String::from_utf8_lossy(&n.name));
                            if p != shown {
                                best = Some((time, id.to_hex(), p));
                            }
                        }
                    }
                }
            }
            if let Some((_, snap, p)) = best {
                moved_to.push((snap, p));
            }
        }
        Ok(Some(History { path: String::from_utf8_lossy(path).into_owned(), versions, moved_to }))
    }

    /// Every sealed folder row.
    fn rows(&self) -> Result<Vec<Row>, Failure> {
        let Some(table) = db::read_table(&self.db, FOLDERS).map_err(damaged)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in table.iter().map_err(damaged)? {
            let (k, v) = row.map_err(damaged)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn fatal(f: Failure) -> PlanError {
    match f {
        Failure::Repo(e) => e,
        Failure::Damaged(why) => PlanError::NameIndexDamaged(why),
    }
}

/// Opens the file under the local files' convention (bound to the sealer's key, waiting a
/// little for another `find` that is bringing it up to date), or an index in memory when
/// there is no file or it stays busy; whether the file was started anew.
fn open_db(path: Option<&Path>, keys: &Keys, budget: &bakare_store::Budget) -> Result<(Database, bool), Failure> {
    let opts = db::Options {
        cache_bytes: budget.local_cache_bytes(),
        key: Some(keys.sealer.key_check()),
        busy_wait: std::time::Duration::from_secs(5),
        ..db::Options::default()
    };
    let in_memory = || db::in_memory(LAYOUT, &opts).map(|d| (d, false)).map_err(damaged);
    let Some(path) = path else { return in_memory() };
    match db::open(path, LAYOUT, &opts) {
        Ok(opened) => Ok((opened.db, opened.started_anew.is_some())),
        Err(db::OpenError::Busy(_)) => in_memory(),
        Err(e) => Err(damaged(e)),
    }
}

/// The default place of the index in a repository's cache folder.
pub fn index_path(cache: &Path) -> PathBuf {
    cache.join("names.redb")
}

fn hex16(b: [u8; 16]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ver_of(node: &Node, mtime_ns: i64) -> Option<Ver> {
    let content = |d: Digest| {
        let mut c = [0u8; 16];
        c.copy_from_slice(&d.0[..16]);
        c
    };
    let (size, content) = match node {
        Node::Dir { .. } => return None,
        Node::File { size, chunks } => (*size, Some(content(chunk_list_digest(chunks)))),
        Node::Symlink { target } => (0, Some(content(checksum(target)))),
        _ => (0, None),
    };
    let kind = KINDS.iter().position(|k| *k == node.kind_name()).unwrap_or(0) as u8;
    Some(Ver { kind, size, mtime_ns, content })
}

fn dir_of(e: Option<&Entry>) -> Option<BlobId> {
    match e.map(|e| &e.node) {
        Some(Node::Dir { tree }) => Some(*tree),
        _ => None,
    }
}

/// Indexing one snapshot against the newest indexed snapshot of its set.
struct Update<'a, 't> {
    repo: &'a Repository,
    keys: &'a Keys,
    table: &'a mut redb::Table<'t, &'static [u8], &'static [u8]>,
    set: u32,
    pos: u32,
    trees_read: u64,
}

impl Update<'_, '_> {
    fn run(&mut self, old: Option<BlobId>, new: BlobId) -> Result<(), Failure> {
        let mut work: Vec<(Vec<u8>, Option<BlobId>, Option<BlobId>)> = vec![(Vec::new(), old, Some(new))];
        while let Some((path, old, new)) = work.pop() {
            if old == new {
                continue;
            }
            let load = |id: Option<BlobId>| -> Result<Vec<Entry>, Failure> {
                match id {
                    Some(id) => Ok(self.repo.load_tree(&id)?.entries),
                    None => Ok(Vec::new()),
                }
            };
            let (a, b) = (load(old)?, load(new)?);
            self.trees_read += u64::from(old.is_some()) + u64::from(new.is_some());
            let key = self.keys.row(&path);
            let mut folder = match self.table.get(key.as_slice()).map_err(damaged)? {
                Some(v) => self.keys.open_folder(&key, v.value())?,
                None => Folder { path: path.clone(), names: Vec::new() },
            };
            let mut changed = false;
            let (mut i, mut j) = (0, 0);
            while i < a.len() || j < b.len() {
                let (x, y) = match (a.get(i), b.get(j)) {
                    (Some(x), Some(y)) => match x.name.cmp(&y.name) {
                        std::cmp::Ordering::Less => (Some(x), None),
                        std::cmp::Ordering::Greater => (None, Some(y)),
                        std::cmp::Ordering::Equal => (Some(x), Some(y)),
                    },
                    other => other,
                };
                i += usize::from(x.is_some());
                j += usize::from(y.is_some());
                let Some(name) = x.or(y).map(|e| e.name.clone()) else { break };
                let xv = x.and_then(|e| ver_of(&e.node, e.meta.mtime_ns));
                let yv = y.and_then(|e| ver_of(&e.node, e.meta.mtime_ns));
                if xv != yv {
                    changed = true;
                    let at = match folder.names.binary_search_by(|n| n.name.as_slice().cmp(&name)) {
                        Ok(at) => at,
                        Err(at) => {
                            folder.names.insert(at, Name { name: name.clone(), runs: Vec::new() });
                            at
                        }
                    };
                    if let Some(n) = folder.names.get_mut(at) {
                        if xv.is_some()
                            && let Some(r) = n.runs.iter_mut().find(|r| r.set == self.set && r.to == OPEN)
                        {
                            r.to = self.pos.saturating_sub(1);
                        }
                        if let Some(ver) = yv {
                            n.runs.push(Run { set: self.set, from: self.pos, to: OPEN, ver });
                        }
                    }
                }
                let (xd, yd) = (dir_of(x), dir_of(y));
                if xd != yd {
                    let mut child = path.clone();
                    child.push(b'/');
                    child.extend_from_slice(&name);
                    work.push((child, xd, yd));
                }
            }
            if changed {
                let plain = postcard::to_stdvec(&folder).map_err(damaged)?;
                let sealed = self.keys.seal(&key, &plain)?;
                self.table.insert(key.as_slice(), sealed.as_slice()).map_err(damaged)?;
            }
        }
        Ok(())
    }
}

/// The chosen snapshots, as positions in the sets' lineages.
struct View {
    /// Per set, per position: the snapshot's id and time when chosen.
    at: Vec<Vec<Option<(SnapshotId, i64)>>>,
    /// Per set: how many positions before each are chosen (one more entry than positions).
    before: Vec<Vec<u32>>,
}

impl View {
    fn new(state: &State, chosen: &[(SnapshotId, Snapshot)]) -> Self {
        let times: HashMap<SnapshotId, i64> = chosen.iter().map(|(id, s)| (*id, s.time_ns)).collect();
        let at: Vec<Vec<Option<(SnapshotId, i64)>>> =
            state.sets.iter().map(|s| s.lineage.iter().map(|id| times.get(id).map(|t| (*id, *t))).collect()).collect();
        let before = at
            .iter()
            .map(|positions| {
                let mut acc = vec![0u32];
                let mut n = 0;
                for p in positions {
                    n += u32::from(p.is_some());
                    acc.push(n);
                }
                acc
            })
            .collect();
        Self { at, before }
    }

    /// The inclusive position range of a run in its set's lineage.
    fn range(&self, r: &Run) -> Option<(usize, usize)> {
        let len = self.at.get(r.set as usize)?.len();
        let to = if r.to == OPEN { len.checked_sub(1)? } else { (r.to as usize).min(len.checked_sub(1)?) };
        (r.from as usize <= to).then_some((r.from as usize, to))
    }

    fn shows(&self, r: &Run) -> bool {
        let Some((from, to)) = self.range(r) else { return false };
        let Some(before) = self.before.get(r.set as usize) else { return false };
        matches!((before.get(to + 1), before.get(from)), (Some(a), Some(b)) if a > b)
    }

    /// The chosen snapshots a run covers, as (time, id).
    fn covered(&self, r: &Run) -> Vec<(i64, SnapshotId)> {
        let Some((from, to)) = self.range(r) else { return Vec::new() };
        let Some(positions) = self.at.get(r.set as usize).and_then(|p| p.get(from..=to)) else { return Vec::new() };
        positions.iter().flatten().map(|(id, t)| (*t, *id)).collect()
    }

    fn later_than(&self, time_ns: i64) -> HashSet<SnapshotId> {
        self.at.iter().flatten().flatten().filter(|(_, t)| *t > time_ns).map(|(id, _)| *id).collect()
    }

    /// The versions the runs give in the chosen snapshots, oldest first, each marked changed
    /// or not against the one before.
    fn versions(&self, runs: &[Run]) -> Vec<Version> {
        let mut out: Vec<Version> = Vec::new();
        for r in runs {
            for (time_ns, id) in self.covered(r) {
                out.push(Version {
                    snapshot: id.to_hex(),
                    time_ns,
                    kind: KINDS.get(r.ver.kind as usize).copied().unwrap_or("file"),
                    size: r.ver.size,
                    mtime_ns: r.ver.mtime_ns,
                    content: r.ver.content.map(hex16),
                    changed: None,
                });
            }
        }
        out.sort_by(|a, b| a.time_ns.cmp(&b.time_ns).then(a.snapshot.cmp(&b.snapshot)));
        for i in 1..out.len() {
            let changed = out.get(i - 1).map(|p| p.content.clone()) != out.get(i).map(|v| v.content.clone());
            if let Some(v) = out.get_mut(i) {
                v.changed = Some(changed);
            }
        }
        out
    }
}

/// How close a file name comes to the query with typos: the best Damerau-Levenshtein
/// distance between the query and any part of the name of about its length, if within 1 edit
/// per 4 characters (at least 1).
fn typo_distance(query: &str, name: &str) -> Option<usize> {
    let q: Vec<char> = query.chars().collect();
    if q.len() < 3 {
        return None;
    }
    let allowed = (q.len() / 4).max(1);
    if query.is_ascii() && name.is_ascii() {
        // Cheapest first: too short, or lacking too many of the query's letters.
        if name.len() + allowed < q.len() {
            return None;
        }
        let mut present = [false; 128];
        for b in name.bytes() {
            if let Some(p) = present.get_mut(usize::from(b)) {
                *p = true;
            }
        }
        let absent = query.bytes().filter(|b| !present.get(usize::from(*b)).copied().unwrap_or(false)).count();
        if absent > allowed {
            return None;
        }
    }
    let n: Vec<char> = name.chars().collect();
    // Cheap first: a name within `allowed` edits holds all but `allowed` of the query's
    // characters.
    let mut left = n.clone();
    let mut missing = 0;
    for c in &q {
        match left.iter().position(|x| x == c) {
            Some(at) => {
                left.swap_remove(at);
            }
            None => missing += 1,
        }
    }
    if missing > allowed {
        return None;
    }
    let d = substring_distance(&q, &n);
    (d <= allowed).then_some(d)
}

/// The fewest edits (insert, delete, substitute, swap two neighbours) that turn `q` into
/// some part of `n`: one pass of the optimal-string-alignment table with a free start and end
/// in `n` (Sellers), O(|q| · |n|).
fn substring_distance(q: &[char], n: &[char]) -> usize {
    // Rows i-2, i-1 and i of the table; column j is "q[..i] ends at n[..j]".
    let width = n.len() + 1;
    let mut two = vec![0usize; width];
    let mut one = vec![0usize; width];
    let mut row = vec![0usize; width];
    for (i, qc) in q.iter().enumerate() {
        row[0] = i + 1;
        for (j, nc) in n.iter().enumerate() {
            let cost = usize::from(qc != nc);
            let mut v = (one[j] + cost).min(one[j + 1] + 1).min(row[j] + 1);
            if i > 0 && j > 0 && q.get(i - 1) == Some(nc) && n.get(j - 1) == Some(qc) {
                v = v.min(two[j - 1] + 1);
            }
            row[j + 1] = v;
        }
        std::mem::swap(&mut two, &mut one);
        std::mem::swap(&mut one, &mut row);
    }
    one.iter().copied().min().unwrap_or(q.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_distance_with_swaps() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(substring_distance(&c("bakare"), &c("x bakare.toml")), 0);
        assert_eq!(substring_distance(&c("bakrae"), &c("bakare.toml")), 1, "a swap is one edit");
        assert_eq!(substring_distance(&c("bakae"), &c("bakare.toml")), 1, "a missing letter");
        assert_eq!(substring_distance(&c("bakxare"), &c("bakare")), 1, "an extra letter");
        assert_eq!(substring_distance(&c("abc"), &c("")), 3);
        assert_eq!(substring_distance(&c("zzz"), &c("bakare")), 3);
        // Same as the windowed definition on every window of these names.
        for (q, n) in [("rpeort", "annual-report-2024.pdf"), ("teh", "the"), ("ab", "ba")] {
            let (q, n) = (c(q), c(n));
            let windowed = (1..=n.len())
                .flat_map(|len| n.windows(len).map(|w| strsim::generic_damerau_levenshtein(&q, w)).collect::<Vec<_>>())
                .min()
                .unwrap()
                .min(q.len());
            assert_eq!(substring_distance(&q, &n), windowed, "{q:?} in {n:?}");
        }
    }

    #[test]
    fn typos_within_the_allowance_match() {
        assert_eq!(typo_distance("bakrae", "bakare.toml"), Some(1), "a swapped pair");
        assert_eq!(typo_distance("bakae", "bakare.toml"), Some(1), "a missing letter");
        assert_eq!(typo_distance("bakare", "bakare.toml"), Some(0));
        assert!(typo_distance("zzzzzz", "bakare.toml").is_none());
        assert!(typo_distance("ab", "ab").is_none(), "too short to guess at");
    }
}
