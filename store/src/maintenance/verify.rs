//! `verify`: check that every object is intact and every reference resolves, and say exactly
//! what is damaged, what redundancy can repair, and which files of which snapshots lost data.
//!
//! The survey reads, in order: `config` and its mirror, key files, index segments, every
//! pack's blob table (by range reads; with `read_data`, the whole pack, its hash and every
//! blob), then every snapshot and its mirror, and walks every snapshot's trees. A blob is
//! *available* if some pack's authenticated table (or, for a pack whose table is damaged, an
//! index segment) lists it and, when data was read, it opened correctly there.

use std::collections::{BTreeMap, HashMap, HashSet};

use bakare_crypto::{Digest, checksum};

use crate::format::index::{BlobLocation, IndexSegment};
use crate::format::object::{get_named, get_verified, id_of_path, verify_name};
use crate::format::pack::{PackEntry, PackTable, read_pack_table};
use crate::format::session::{Checkpoint, Session};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, Tree};
use crate::ids::{BlobId, BlobKind, PackId, SnapshotId};
use crate::repo::{Repository, pack_path};
use crate::{Config, Result};

/// How much data to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadData {
    /// Structure only: tables, snapshots, trees.
    No,
    /// Every pack, whole.
    All,
    /// Packs whose id's first byte is `n - 1` modulo `m` (1-based `n` of `m`).
    Subset { n: u32, m: u32 },
}

impl ReadData {
    fn includes(&self, pack: &PackId) -> bool {
        match *self {
            ReadData::No => false,
            ReadData::All => true,
            ReadData::Subset { n, m } => {
                m > 0 && u32::from(pack.0.as_bytes().first().copied().unwrap_or(0)) % m == n.saturating_sub(1) % m
            }
        }
    }
}

/// One problem, naming the object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub object: String,
    pub problem: String,
    /// Whether redundancy in the repository can repair it without loss.
    pub repairable: bool,
}

/// A file of a snapshot whose content is not all available.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LostFile {
    pub snapshot: String,
    pub path: String,
    /// Bytes of the file in unavailable chunks (0 if unknown).
    pub lost_bytes: u64,
    pub lost_chunks: Vec<BlobId>,
    /// An earlier `verify --repair` marked it lost (and kept its chunk list, so that a
    /// later `--source` can still recover it): known, no longer a problem.
    pub marked: bool,
}

/// What one pack looks like.
#[derive(Clone, Debug, Default)]
pub struct PackState {
    pub table: Option<PackTable>,
    /// Its bytes do not hash to its name (known only when read).
    pub damaged: bool,
    pub read: bool,
    /// Blobs that failed to open (known only when read).
    pub bad_blobs: HashSet<BlobId>,
    /// Read whole and intact, with parity: whether the parity matches it (compared while
    /// the pack was in memory, so that it is read once).
    pub parity_matches: Option<bool>,
}

/// The outcome of a survey.
#[derive(Debug, Default)]
pub struct Survey {
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not damage (packs an interrupted backup left unindexed).
    pub notes: Vec<String>,
    pub lost: Vec<LostFile>,
    pub packs: BTreeMap<PackId, PackState>,
    /// Every known location of every blob (pack tables, then index segments).
    pub locations: HashMap<BlobId, Vec<BlobLocation>>,
    pub segments: Vec<(Digest, bool)>,
    pub snapshots: BTreeMap<SnapshotId, SnapshotCopies>,
    /// Blobs referenced by a snapshot with no available copy.
    pub missing: HashSet<BlobId>,
    pub trees_checked: u64,
    pub blobs_read: u64,
    pub bytes_read: u64,
    /// Packs a GC mark lists.
    pub marked: HashSet<PackId>,
    /// Files an earlier repair marked lost whose chunks are all available again (recovered
    /// from a source): repair clears their mark. (snapshot hex, path)
    pub healed: Vec<(String, String)>,
    /// Every blob some intact index segment lists.
    pub indexed_blobs: HashSet<BlobId>,
    /// Blobs snapshots use that no index segment lists (readers cannot find them, though a
    /// pack holds them: repair rebuilds the index from the pack tables).
    pub unindexed_refs: HashSet<BlobId>,
}

/// The two copies of a snapshot.
#[derive(Debug, Default)]
pub struct SnapshotCopies {
    pub main: Option<Snapshot>,
    pub mirror: Option<Snapshot>,
    pub main_bytes: Option<Vec<u8>>,
    pub mirror_bytes: Option<Vec<u8>>,
}

impl SnapshotCopies {
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.main.as_ref().or(self.mirror.as_ref())
    }

    pub fn good_bytes(&self) -> Option<&Vec<u8>> {
        if self.main.is_some() { self.main_bytes.as_ref() } else { self.mirror_bytes.as_ref() }
    }
}

impl Survey {
    fn problem(&mut self, object: impl Into<String>, problem: impl Into<String>, repairable: bool) {
        self.problems.push(Problem { object: object.into(), problem: problem.into(), repairable });
    }

    /// Whether a blob has a copy that is not known to be bad.
    pub fn available(&self, id: &BlobId) -> bool {
        self.good_locations(id).next().is_some()
    }

    /// Copies of a blob not known to be bad.
    pub fn good_locations<'a>(&'a self, id: &BlobId) -> impl Iterator<Item = &'a BlobLocation> + 'a {
        let id = *id;
        self.locations
            .get(&id)
            .into_iter()
            .flatten()
            .filter(move |loc| self.packs.get(&loc.pack).is_some_and(|p| !p.bad_blobs.contains(&id)))
    }

    /// Files that lost data and that no earlier repair marked lost yet.
    pub fn unmarked_lost(&self) -> impl Iterator<Item = &LostFile> {
        self.lost.iter().filter(|l| !l.marked)
    }

    /// Whether nothing at all is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn add_location(&mut self, pack: PackId, entry: PackEntry) {
        let locs = self.locations.entry(entry.id).or_default();
        if !locs.iter().any(|l| l.pack == pack) {
            locs.push(BlobLocation { pack, entry });
        }
    }
}

/// Surveys the repository. Needs the master key (snapshots and trees are sealed to it).
pub fn verify(repo: &Repository, read_data: ReadData) -> Result<Survey> {
    repo.access().master()?;
    let mut s = Survey::default();
    check_config(repo, &mut s);
    check_keys(repo, &mut s)?;
    let indexed = check_index(repo, &mut s)?;
    s.indexed_blobs = indexed.values().flatten().map(|e| e.id).collect();
    let (marks, damaged_marks) =
        crate::format::marks::records(repo.backend().as_ref(), &repo.access().write_key().index_key)?;
    for (path, problem) in damaged_marks {
        s.problem(path, format!("{problem} (repair removes it: the next prune marks its packs again)"), true);
    }
    s.marked = marks.into_iter().flat_map(|(_, r)| r.candidates).collect();
    check_packs(repo, &mut s, &indexed, read_data)?;
    check_parity(repo, &mut s, read_data)?;
    check_snapshots(repo, &mut s)?;
    check_sessions(repo, &mut s)?;
    walk_snapshots(repo, &mut s);
    Ok(s)
}

/// Parity objects: each must parse and checksum, and belong to a pack that exists. (Whether
/// it matches its pack is checked when repair uses it: a rebuilt pack must hash to its name.)
fn check_parity(repo: &Repository, s: &mut Survey, read_data: ReadData) -> Result<()> {
    let backend = repo.backend();
    for path in backend.list("parity")? {
        let Some(pack) = id_of_path(&path).map(PackId).filter(|p| s.packs.contains_key(p)) else {
            s.problem(&path, "parity of a pack that does not exist (repair removes it)", true);
            continue;
        };
        let bytes = match backend.get(&path) {
            Ok(b) => b,
            Err(e) => {
                s.problem(&path, format!("{e} (repair writes it again from its pack)"), true);
                continue;
            }
        };
        let pack_path = pack_path(&pack);
        let fits = match crate::format::parity::Parity::decode(&path, &bytes) {
            Err(e) => Err(e.to_string()),
            // With --read-data the pack's shards were compared when it was read (if intact).
            Ok(_) if read_data.includes(&pack) => match s.packs.get(&pack).and_then(|st| st.parity_matches) {
                Some(false) => Err("does not match its pack".to_string()),
                _ => Ok(()),
            },
            Ok(p) => match backend.size(&pack_path) {
                Ok(len) if usize::try_from(len).ok() != Some(p.pack_len) => {
                    Err(format!("is for a pack of {} bytes, the pack has {len}", p.pack_len))
                }
                _ => Ok(()),
            },
        };
        if let Err(why) = fits {
            s.problem(&path, format!("{why} (repair writes it again from its pack)"), true);
        }
    }
    Ok(())
}

/// Session records and checkpoints: readable, checkpoints belonging to a session, and every
/// blob a checkpoint names available (resume trusts them). Both only speed up a resume, so
/// repair removes a damaged one.
fn check_sessions(repo: &Repository, s: &mut Survey) -> Result<()> {
    let backend = repo.backend();
    let key = repo.access().write_key();
    let mut sessions = HashSet::new();
    for path in backend.list("sessions")? {
        match backend
            .get(&path)
            .map_err(crate::StoreError::from)
            .and_then(|b| Session::decode(&path, &b, &key.index_key))
        {
            Ok(session) => {
                sessions.insert(session.id);
            }
            Err(e) => s.problem(&path, format!("{e} (repair removes it: that backup is redone, not resumed)"), true),
        }
    }
    for path in backend.list("checkpoints")? {
        let read = get_named(backend.as_ref(), &path).and_then(|b| Checkpoint::decode(&path, &b, key));
        match read {
            Ok(c) => {
                if let Some(b) = c.refs.blobs.iter().find(|b| !s.available(b)) {
                    s.problem(
                        &path,
                        format!("names blob {} that is not available (repair removes it)", b.short()),
                        true,
                    );
                } else if !sessions.contains(&c.refs.session) {
                    s.notes.push(format!("{path}: belongs to no session (left after a snapshot; removed by repair)"));
                }
            }
            Err(e) => s.problem(&path, format!("{e} (repair removes it: resume reads those files again)"), true),
        }
    }
    Ok(())
}

fn check_config(repo: &Repository, s: &mut Survey) {
    let backend = repo.backend();
    let read = |name: &str| backend.get(name).ok().map(|b| (Config::decode(name, &b).ok(), b));
    let main = read("config");
    let mirror = read("config.mirror");
    let good =
        |c: &Option<(Option<Config>, Vec<u8>)>| c.as_ref().and_then(|(cfg, _)| cfg.as_ref()) == Some(repo.config());
    match (good(&main), good(&mirror)) {
        (true, true) => {}
        (true, false) => s.problem("config.mirror", "missing or damaged; config is intact", true),
        (false, true) => s.problem("config", "missing or damaged; config.mirror is intact", true),
        (false, false) => {
            s.problem("config", "config and config.mirror both differ from the configuration in use", false)
        }
    }
}

fn check_keys(repo: &Repository, s: &mut Survey) -> Result<()> {
    let mut good = 0;
    for path in repo.backend().list("keys")? {
        match id_of_path(&path).map(|id| get_verified(repo.backend().as_ref(), &path, &id)) {
            Some(Ok(bytes)) if bakare_crypto::parse_key_file(&bytes).is_ok() => good += 1,
            Some(Err(e)) => s.problem(&path, e.to_string(), true),
            _ => s.problem(&path, "not a key file", true),
        }
    }
    if good < 2 {
        s.problem("keys", format!("{good} intact key files; repair writes a second one"), true);
    }
    Ok(())
}

/// Reads every index segment; returns what they say, per pack.
fn check_index(repo: &Repository, s: &mut Survey) -> Result<HashMap<PackId, Vec<PackEntry>>> {
    let key = &repo.access().write_key().index_key;
    let mut out: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    for path in repo.backend().list("index")? {
        let Some(id) = id_of_path(&path) else {
            s.problem(&path, "name is not an id", true);
            continue;
        };
        let seg = get_verified(repo.backend().as_ref(), &path, &id).and_then(|b| IndexSegment::decode(&path, &b, key));
        match seg {
            Ok(seg) => {
                for (pack, entries) in seg.packs {
                    out.entry(pack).or_default().extend(entries);
                }
                s.segments.push((id, true));
            }
            Err(e) => {
                s.segments.push((id, false));
                s.problem(&path, format!("{e} (derived data: rebuilt from pack tables)"), true);
            }
        }
    }
    Ok(out)
}

fn check_packs(
    repo: &Repository,
    s: &mut Survey,
    indexed: &HashMap<PackId, Vec<PackEntry>>,
    read_data: ReadData,
) -> Result<()> {
    let backend = repo.backend();
    let key = &repo.access().write_key().index_key;
    let mut present = HashSet::new();
    let with_parity: HashSet<PackId> =
        backend.list("parity")?.iter().filter_map(|p| id_of_path(p)).map(PackId).collect();
    let packs = backend.list("packs")?;
    let progress = repo.progress();
    progress.start(packs.len() as u64);
    for path in packs {
        let Some(id) = id_of_path(&path).map(PackId) else {
            s.problem(&path, "name is not an id", false);
            continue;
        };
        present.insert(id);
        let mut state = PackState::default();
        let read_before = s.bytes_read;
        if read_data.includes(&id) {
            read_whole_pack(repo, s, &id, &path, indexed, &mut state, with_parity.contains(&id));
        } else {
            match read_pack_table(backend.as_ref(), &path, key) {
                Ok(t) => state.table = Some(t),
                Err(e) => s.problem(&path, format!("{e} (blobs located through the index)"), true),
            }
            check_table_belongs(repo, s, &path, &state);
        }
        let entries = pack_entries(&state, indexed.get(&id));
        if let (Some(t), Some(listed)) = (&state.table, indexed.get(&id)) {
            let table: HashSet<_> = t.entries.iter().collect();
            if listed.iter().any(|e| !table.contains(e)) {
                s.problem(&path, "index segments disagree with the pack's blob table", true);
            }
        } else if state.table.is_some() && s.marked.contains(&id) {
            s.notes.push(format!("{path}: marked by prune, deleted by a later one unless used again"));
        } else if state.table.is_some() && !indexed.contains_key(&id) {
            s.notes.push(format!(
                "{path}: in no index segment (left by an interrupted backup; resume adopts it, prune removes it)"
            ));
        }
        for e in entries {
            s.add_location(id, e);
        }
        s.packs.insert(id, state);
        progress.step(s.bytes_read.saturating_sub(read_before));
    }
    for pack in indexed.keys().filter(|p| !present.contains(*p)) {
        s.problem(pack_path(pack), "listed in the index but missing", true);
    }
    Ok(())
}

/// Table entries and index entries of a pack, each blob once: a damaged pack may have a
/// table that is not its own, and the index may be what still knows where its blobs are.
fn pack_entries(state: &PackState, indexed: Option<&Vec<PackEntry>>) -> Vec<PackEntry> {
    let mut out: Vec<PackEntry> = state.table.as_ref().map(|t| t.entries.clone()).unwrap_or_default();
    for e in indexed.into_iter().flatten() {
        if !out.contains(e) {
            out.push(*e);
        }
    }
    out
}

/// The table carries a copy of the pack's ephemeral key; a different one means a table that
/// belongs to another pack (or a damaged start of the pack).
fn check_table_belongs(repo: &Repository, s: &mut Survey, path: &str, state: &PackState) {
    let Some(t) = &state.table else { return };
    let prefix = repo.backend().get_range(path, 0, 40).ok();
    if prefix.as_ref().and_then(|p| p.get(8..40)) != Some(t.ephemeral.0.as_slice()) {
        s.problem(path, "the blob table's key copy differs from the pack's: damaged start or foreign table", true);
    }
}

fn read_whole_pack(
    repo: &Repository,
    s: &mut Survey,
    id: &PackId,
    path: &str,
    indexed: &HashMap<PackId, Vec<PackEntry>>,
    state: &mut PackState,
    has_parity: bool,
) {
    let key = &repo.access().write_key().index_key;
    let bytes = match repo.backend().get(path) {
        Ok(b) => b,
        Err(e) => {
            s.problem(path, e.to_string(), false);
            return;
        }
    };
    state.read = true;
    s.bytes_read += bytes.len() as u64;
    if checksum(&bytes) != id.0 {
        state.damaged = true;
    } else if has_parity {
        // Compared now, while the pack is in memory: check_parity need not read it again.
        let parity = crate::format::parity::parity_path(id);
        state.parity_matches = repo
            .backend()
            .get(&parity)
            .ok()
            .and_then(|p| crate::format::parity::Parity::decode(&parity, &p).ok().map(|p| p.matches(&bytes)));
    }
    match crate::format::pack::parse_blob_table(path, &bytes, key) {
        Ok(t) => state.table = Some(t),
        Err(e) => s.problem(path, format!("{e} (blobs located through the index)"), true),
    }
    let entries = pack_entries(state, indexed.get(id));
    let mut failed = Vec::new();
    for e in &entries {
        s.blobs_read += 1;
        if repo.open_blob_in_trying(id, e, &bytes, state.table.as_ref()).is_err() {
            failed.push(e.id);
        }
    }
    state.bad_blobs.extend(failed.iter().copied());
    if state.damaged || !failed.is_empty() {
        let trees = entries.iter().filter(|e| e.kind == BlobKind::Tree && failed.contains(&e.id)).count();
        s.problem(
            path,
            format!(
                "damaged: content does not match its name; {} of {} blobs unreadable ({} trees)",
                failed.len(),
                entries.len(),
                trees
            ),
            true,
        );
    }
}

fn check_snapshots(repo: &Repository, s: &mut Survey) -> Result<()> {
    let backend = repo.backend();
    let master = repo.access().master()?;
    let mut ids = BTreeMap::<SnapshotId, SnapshotCopies>::new();
    for dir in ["snapshots", "snapshots.mirror"] {
        for path in backend.list(dir)? {
            let Some(id) = id_of_path(&path).map(SnapshotId) else {
                s.problem(&path, "name is not an id", false);
                continue;
            };
            let copies = ids.entry(id).or_default();
            // Read once: the bytes of a damaged copy still tell "damaged" from "missing".
            let raw = backend.get(&path);
            let opened = match &raw {
                Ok(b) => verify_name(&path, b, &id.0).and_then(|()| Snapshot::decode(&path, b, master)),
                Err(e) => Err(crate::StoreError::corrupt(&path, e.to_string())),
            };
            let snap = match opened {
                Ok(snap) => Some(snap),
                Err(e) => {
                    s.problem(&path, e.to_string(), true);
                    None
                }
            };
            if dir == "snapshots" {
                copies.main_bytes = raw.ok();
                copies.main = snap;
            } else {
                copies.mirror_bytes = raw.ok();
                copies.mirror = snap;
            }
        }
    }
    for (id, c) in &ids {
        match (c.main.is_some(), c.mirror.is_some(), c.main_bytes.is_some(), c.mirror_bytes.is_some()) {
            (true, true, _, _) => {}
            (true, false, _, false) => s.problem(
                format!("snapshots.mirror/{id}"),
                "missing; snapshots/ copy intact (an interrupted forget leaves this too: run it again)",
                true,
            ),
            (false, true, false, _) => s.problem(format!("snapshots/{id}"), "missing; mirror intact", true),
            (false, false, _, _) => {
                // Both copies damaged or missing (each already reported): mark it unrepairable.
                for p in s.problems.iter_mut().filter(|p| p.object.ends_with(&id.to_hex())) {
                    p.repairable = false;
                }
            }
            _ => {}
        }
    }
    s.snapshots = ids;
    Ok(())
}

/// Loads a tree from any good copy, marking copies that fail as bad.
fn load_tree(repo: &Repository, s: &mut Survey, id: &BlobId) -> Option<Tree> {
    let locs: Vec<BlobLocation> = s.good_locations(id).copied().collect();
    for loc in locs {
        match repo.load_blob_at(&loc).and_then(|b| Tree::decode(&format!("tree {}", id.short()), &b)) {
            Ok(t) => return Some(t),
            Err(_) => {
                s.packs.entry(loc.pack).or_default().bad_blobs.insert(*id);
            }
        }
    }
    None
}

fn walk_snapshots(repo: &Repository, s: &mut Survey) {
    let roots: Vec<(SnapshotId, BlobId)> =
        s.snapshots.iter().filter_map(|(id, c)| c.snapshot().map(|snap| (*id, snap.root))).collect();
    // Trees known to have everything below them available.
    let mut clean: HashSet<BlobId> = HashSet::new();
    for (snap, root) in roots {
        let mut lost = Vec::new();
        walk(repo, s, &mut clean, &root, "", &snap, &mut lost);
        s.lost.extend(lost);
    }
    // Available in a pack but listed by no segment: restore and backups cannot find them.
    let unindexed = s.unindexed_refs.iter().filter(|b| s.available(b)).count();
    if unindexed > 0 {
        s.problem(
            "index",
            format!(
                "{unindexed} blobs that snapshots use are in no index segment, so restores cannot find them \
                 (their packs are intact: repair rebuilds the index from the pack tables)"
            ),
            true,
        );
    }
    let unmarked = s.unmarked_lost().count();
    if unmarked > 0 {
        let missing: HashSet<BlobId> = s.unmarked_lost().flat_map(|l| l.lost_chunks.iter().copied()).collect();
        let trees_lost = missing.iter().filter(|b| !s.locations.contains_key(b)).count();
        let problem = format!(
            "{unmarked} files in snapshots reference {} unavailable blobs ({trees_lost} never stored)",
            missing.len()
        );
        s.problem("snapshots", problem, false);
    }
    let marked = s.lost.len() - unmarked;
    if marked > 0 {
        s.notes.push(format!(
            "{marked} files were marked lost by an earlier repair; their chunk lists are kept: \
             `bakare verify --repair --source PATH` recovers those whose files still exist"
        ));
    }
    if !s.healed.is_empty() {
        let n = s.healed.len();
        s.problem("snapshots", format!("{n} files marked lost are complete again (repair clears the mark)"), true);
    }
}

/// Walks a tree, returning whether everything below it is available.
fn walk(
    repo: &Repository,
    s: &mut Survey,
    clean: &mut HashSet<BlobId>,
    id: &BlobId,
    path: &str,
    snap: &SnapshotId,
    lost: &mut Vec<LostFile>,
) -> bool {
    if clean.contains(id) {
        return true;
    }
    s.trees_checked += 1;
    if !s.indexed_blobs.contains(id) {
        s.unindexed_refs.insert(*id);
    }
    let Some(tree) = load_tree(repo, s, id) else {
        s.missing.insert(*id);
        lost.push(LostFile {
            snapshot: snap.to_hex(),
            path: format!("{path}/"),
            lost_bytes: 0,
            lost_chunks: vec![*id],
            marked: false,
        });
        return false;
    };
    let mut ok = true;
    for e in &tree.entries {
        let child = format!("{path}/{}", String::from_utf8_lossy(&e.name));
        match &e.node {
            Node::Dir { tree } => ok &= walk(repo, s, clean, tree, &child, snap, lost),
            Node::File { chunks, .. } => {
                for c in chunks.iter().filter(|c| !s.indexed_blobs.contains(c)) {
                    s.unindexed_refs.insert(*c);
                }
                let gone: Vec<BlobId> = chunks.iter().filter(|c| !s.available(c)).copied().collect();
                // A file with an error and chunks was marked lost by a repair.
                let marked = e.error.is_some() && !chunks.is_empty();
                if !gone.is_empty() {
                    ok = false;
                    let lost_bytes = gone
                        .iter()
                        .filter_map(|c| s.locations.get(c).and_then(|l| l.first()).map(|l| u64::from(l.entry.raw_len)))
                        .sum();
                    s.missing.extend(gone.iter().copied());
                    lost.push(LostFile { snapshot: snap.to_hex(), path: child, lost_bytes, lost_chunks: gone, marked });
                } else if marked {
                    ok = false;
                    s.healed.push((snap.to_hex(), child));
                }
            }
            _ => {}
        }
    }
    if ok {
        clean.insert(*id);
    }
    ok
}
