//! Garbage collection in two phases, with no lock (see "Concurrency, suspend and garbage
//! collection" in DESIGN.md and docs/FORMAT.md).
//!
//! **Mark.** A pack none of whose blobs is reachable from a snapshot or from a checkpoint of
//! a live session, and older than the minimum age, becomes a candidate. If any candidate is
//! indexed, the index is rewritten without the candidates first (new segments, then every
//! segment read deleted), so no backup that loads the index from then on deduplicates
//! against them; then a `gc/<id>` record lists them with the time of the mark. A backup that
//! loaded the index earlier sees one of its segments gone and checks its work again before
//! committing (the commit fence, in the planner); one whose own unindexed pack was marked
//! finds it so when it indexes it ([`Repository::flush`]).
//!
//! **Sweep** (a later run). A record's candidates are deleted only when the record is older
//! than the grace period and every session that started before the mark has committed or
//! expired. A candidate that is referenced again (by a snapshot committed since), or that an
//! index segment lists again, is put back in the index instead of deleted.
//!
//! Each step is safe to interrupt: a crash before the record is written leaves the
//! candidates unindexed and unreferenced, so the next run marks them again; deletes are
//! idempotent; restored packs are indexed before their record is removed.

use std::collections::{HashMap, HashSet};

use crate::format::index::IndexSegment;
pub use crate::format::marks::{GcRecord, Records, marked_packs, records};
use crate::format::object::{get_named, id_of_path};
use crate::format::pack::{PackEntry, read_pack_table};
use crate::format::session::{Checkpoint, Session};
use crate::format::tree::{Node, Tree};
use crate::ids::{BlobId, PackId};
use crate::repo::{Repository, pack_path};
use crate::{BlobLocation, Result, StoreError, clock};

const SECOND: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * SECOND;
const DAY: i64 = 24 * HOUR;
/// Clocks of different hosts may disagree by this much.
pub const CLOCK_SKEW_NS: i64 = 10 * 60 * SECOND;
/// A prune refuses to run when this host's clock and the storage's differ by more.
pub const MAX_SKEW_NS: i64 = 5 * 60 * SECOND;
/// A session renewed within this long (three heartbeats of a minute) counts as running.
pub const RUNNING_NS: i64 = 3 * 60 * SECOND;
/// Blobs per rewritten index segment.
const SEGMENT_BLOBS: usize = 100_000;

/// The times garbage collection waits.
#[derive(Clone, Copy, Debug)]
pub struct GcPolicy {
    /// A pack younger than this is never marked: it may belong to a backup still running.
    pub min_pack_age_ns: i64,
    /// A mark is swept no sooner than this after it was made.
    pub grace_ns: i64,
    /// A session whose heartbeat is older than this has expired: it no longer holds a sweep
    /// back, and its checkpoints stop keeping data.
    pub session_expiry_ns: i64,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Repack partly used data packs until the space they waste is at most this share of
    /// all packs (restic's `--max-unused`, 5 % by default).
    pub max_unused_percent: f64,
    /// Copy at most this many bytes of used blobs out of partly used packs in one prune.
    pub max_repack_bytes: u64,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            min_pack_age_ns: DAY,
            grace_ns: DAY,
            session_expiry_ns: 7 * DAY,
            dry_run: false,
            max_unused_percent: 5.0,
            max_repack_bytes: u64::MAX,
        }
    }
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub snapshots: usize,
    pub live_sessions: usize,
    pub referenced_blobs: usize,
    pub packs: usize,
    /// Packs deleted by the sweep, and their bytes.
    pub deleted_packs: usize,
    pub deleted_bytes: u64,
    /// Candidates referenced or indexed again, put back instead of deleted.
    pub restored_packs: usize,
    /// Packs marked now, and their bytes: deleted by a later prune.
    pub marked_packs: usize,
    pub marked_bytes: u64,
    /// Marks not swept yet, and why.
    pub deferred: Vec<String>,
    /// Unreferenced packs too young to mark.
    pub young_packs: usize,
    /// Packs that no segment listed but that hold referenced blobs, indexed now.
    pub indexed_packs: usize,
    pub expired_sessions: usize,
    pub removed_checkpoints: usize,
    /// Temporary files of killed writers (older than the session expiry) removed.
    pub removed_temporaries: usize,
    /// Index segments replaced by the rewrite.
    pub replaced_segments: usize,
    /// Partly used data packs whose used blobs were copied to new packs; they are marked
    /// (among `marked_packs`) and their unused bytes come back with the sweep.
    pub repacked_packs: usize,
    /// Bytes of used blobs copied, and bytes the repacked packs hold that nothing uses.
    pub repacked_bytes: u64,
    pub repack_unused_bytes: u64,
    /// Unused bytes left in partly used packs after this prune (within `max_unused_percent`).
    pub unused_bytes_left: u64,
    /// When the space marked now can come back at the earliest: the mark plus the grace period.
    pub marked_space_back_ns: i64,
    pub problems: Vec<String>,
}

/// Runs the sweep of old marks and a new mark. `repo` must hold the master key (trees are
/// read). `own_session` is the prune's own session record, which holds nothing back.
pub fn prune(repo: &Repository, host: &str, own_session: Option<&Session>, policy: &GcPolicy) -> Result<PruneReport> {
    repo.access().master()?;
    let mut report = PruneReport::default();
    let now = clock::now_ns();
    let key = &repo.access().write_key().index_key;
    let backend = repo.backend().as_ref();
    // Ages are judged by this host's clock against the storage's times: refuse when they
    // disagree (the prune's session record was just written, so its time is "now" there).
    if let Some(own) = own_session {
        let stored = backend.stat(&own.path())?.modified_ns;
        let skew = now.saturating_sub(stored);
        if skew.saturating_abs() > MAX_SKEW_NS {
            return Err(StoreError::ClockSkew { skew_secs: skew / SECOND });
        }
    }

    // Sessions first: a backup that commits after this listing is visible to the snapshot
    // listing below.
    let (sessions, session_problems) = repo.sessions()?;
    let sessions: Vec<Session> =
        sessions.into_iter().filter(|s| own_session.is_none_or(|own| own.id != s.id)).collect();
    let (live, expired): (Vec<Session>, Vec<Session>) =
        sessions.into_iter().partition(|s| now.saturating_sub(s.heartbeat_ns) <= policy.session_expiry_ns);
    report.live_sessions = live.len();
    if !session_problems.is_empty() {
        return Err(refuse(&session_problems));
    }
    // One prune at a time: two that read a little apart could settle the same mark two ways
    // (one indexing a pack again, the other deleting it). A prune running (renewed within
    // three heartbeats) that started first goes on; this one does nothing.
    if let Some(own) = own_session {
        let first = live.iter().find(|s| {
            s.paths.is_empty()
                && !s.interrupted
                && now.saturating_sub(s.heartbeat_ns) <= RUNNING_NS
                && (s.started_ns, s.id) < (own.started_ns, own.id)
        });
        if let Some(other) = first {
            report.deferred.push(format!(
                "another prune is running ({} on {}): this one changed nothing; run it again when that one is done",
                other.id_hex(),
                other.host
            ));
            return Ok(report);
        }
    }
    let (records, record_problems) = records(backend, key)?;
    report.problems.extend(
        record_problems.iter().map(|(_, p)| format!("{p} (verify --repair removes it; its packs are marked again)")),
    );

    // The index as the segments list it.
    let mut indexed: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    let segment_paths = backend.list("index")?;
    for path in &segment_paths {
        let seg = get_named(backend, path)
            .and_then(|b| IndexSegment::decode(path, &b, key))
            .map_err(|e| refuse(&[e.to_string()]))?;
        for (pack, entries) in seg.packs {
            indexed.entry(pack).or_insert(entries);
        }
    }

    let pack_stats = backend.list_stat("packs")?;
    report.packs = pack_stats.len();
    let marked: HashSet<PackId> = records.iter().flat_map(|(_, r)| r.candidates.iter().copied()).collect();
    // Tables of old unindexed packs: marked ones, and those nothing indexed yet.
    let mut tables: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    let mut sizes: HashMap<PackId, u64> = HashMap::new();
    for (path, st) in &pack_stats {
        let Some(id) = id_of_path(path).map(PackId) else { continue };
        let old = now.saturating_sub(st.modified_ns) >= policy.min_pack_age_ns;
        if !indexed.contains_key(&id) && (old || marked.contains(&id)) {
            match read_pack_table(backend, path, key) {
                Ok(t) => {
                    tables.insert(id, t.entries);
                }
                Err(e) => report.problems.push(format!("{e} (left for verify --repair)")),
            }
        }
        sizes.insert(id, st.size);
    }

    // Everything reachable from snapshots and from checkpoints of live sessions.
    let live_ids: HashSet<[u8; 16]> = live.iter().map(|s| s.id).collect();
    let expired_ids: HashSet<[u8; 16]> = expired.iter().map(|s| s.id).collect();
    let mut roots: Vec<BlobId> = Vec::new();
    let list = repo.snapshots()?;
    if !list.problems.is_empty() {
        return Err(refuse(&list.problems));
    }
    report.snapshots = list.snapshots.len();
    roots.extend(list.snapshots.iter().map(|(_, s)| s.root));
    let mut stale_checkpoints = Vec::new();
    let mut checkpoint_blobs = Vec::new();
    for (path, st) in backend.list_stat("checkpoints")? {
        let refs = get_named(backend, &path)
            .and_then(|b| Checkpoint::decode_refs(&path, &b, key))
            .map_err(|e| refuse(&[e.to_string()]))?;
        let ownerless =
            !live_ids.contains(&refs.session) && now.saturating_sub(st.modified_ns) > policy.session_expiry_ns;
        if expired_ids.contains(&refs.session) || ownerless {
            stale_checkpoints.push(path);
        } else {
            checkpoint_blobs.extend(refs.blobs);
        }
    }
    // Where each tree is, from the segments read above and the unindexed packs' tables.
    let trees: HashMap<BlobId, BlobLocation> = indexed
        .iter()
        .chain(&tables)
        .flat_map(|(pack, entries)| {
            entries
                .iter()
                .filter(|e| e.kind == crate::BlobKind::Tree)
                .map(|e| (e.id, BlobLocation { pack: *pack, entry: *e }))
        })
        .collect();
    let referenced = reachable(repo, roots, checkpoint_blobs, &trees)?;
    report.referenced_blobs = referenced.len();
    let uses = |entries: &[PackEntry]| entries.iter().any(|e| referenced.contains(&e.id));
    // An unindexed pack is needed only for a referenced blob the index has nowhere else: a
    // backup that walked again after a mark stored fresh copies of what it found marked.
    let indexed_blobs: HashSet<BlobId> = indexed.values().flatten().map(|e| e.id).collect();
    let needed =
        |entries: &[PackEntry]| entries.iter().any(|e| referenced.contains(&e.id) && !indexed_blobs.contains(&e.id));

    // Sweep.
    let mut restore: Vec<(PackId, Vec<PackEntry>)> = Vec::new();
    let mut deletions: Vec<PackId> = Vec::new();
    let mut swept_records = Vec::new();
    let mut still_marked: HashSet<PackId> = HashSet::new();
    for (path, record) in &records {
        let age = now.saturating_sub(record.mark_ns);
        // An interrupted backup holds nothing back: it runs no more, and when it is
        // continued, the new walk reads the index afresh (its checkpoints keep their data).
        let holders: Vec<&Session> = live
            .iter()
            .filter(|s| !s.interrupted && s.started_ns < record.mark_ns.saturating_add(CLOCK_SKEW_NS))
            .collect();
        if age < policy.grace_ns || !holders.is_empty() {
            let why = if age < policy.grace_ns {
                format!("{path}: marked {} ago, grace period not over", duration(age))
            } else {
                let names: Vec<String> = holders
                    .iter()
                    .map(|s| {
                        format!(
                            "{} on {} (last heartbeat {} ago)",
                            s.id_hex(),
                            s.host,
                            duration(now.saturating_sub(s.heartbeat_ns))
                        )
                    })
                    .collect();
                format!("{path}: waiting for sessions that started before the mark: {}", names.join(", "))
            };
            report.deferred.push(why);
            still_marked.extend(record.candidates.iter().copied());
            continue;
        }
        for pack in &record.candidates {
            if indexed.contains_key(pack) {
                report.restored_packs += 1;
            } else if let Some(entries) = tables.get(pack) {
                if needed(entries) {
                    report.restored_packs += 1;
                    restore.push((*pack, entries.clone()));
                } else {
                    deletions.push(*pack);
                }
            } else if sizes.contains_key(pack) {
                // Its table could not be read: leave the pack to verify --repair.
                report.restored_packs += 1;
            }
        }
        swept_records.push(path.clone());
    }
    let deleted: HashSet<PackId> = deletions.iter().copied().collect();

    // Mark.
    let mut candidates = Vec::new();
    let mut partly: Vec<PartlyUsed> = Vec::new();
    for (path, st) in &pack_stats {
        let Some(id) = id_of_path(path).map(PackId) else { continue };
        if still_marked.contains(&id) || deleted.contains(&id) || restore.iter().any(|(p, _)| *p == id) {
            continue;
        }
        let old = now.saturating_sub(st.modified_ns) >= policy.min_pack_age_ns;
        if let Some(entries) = indexed.get(&id) {
            if uses(entries) {
                if old && let Some(p) = PartlyUsed::of(id, st.size, entries, &referenced) {
                    partly.push(p);
                }
                continue;
            }
            if old {
                candidates.push(id);
            } else {
                report.young_packs += 1;
            }
        } else if let Some(entries) = tables.get(&id) {
            if needed(entries) {
                report.indexed_packs += 1;
                restore.push((id, entries.clone()));
            } else {
                candidates.push(id);
            }
        } else if !old {
            report.young_packs += 1;
        }
    }
    let unreferenced: HashSet<PackId> = candidates.iter().copied().collect();
    let live_bytes: u64 = pack_stats
        .iter()
        .filter_map(|(path, st)| id_of_path(path).map(|id| (PackId(id), st.size)))
        .filter(|(id, _)| !deleted.contains(id) && !unreferenced.contains(id) && !still_marked.contains(id))
        .map(|(_, size)| size)
        .sum();
    let repack = plan_repack(partly, live_bytes, policy);
    report.repacked_packs = repack.packs.len();
    report.repacked_bytes = repack.packs.iter().map(|p| p.used).sum();
    report.repack_unused_bytes = repack.packs.iter().map(PartlyUsed::unused).sum();
    report.unused_bytes_left = repack.unused_left;
    report.marked_packs = candidates.len() + repack.packs.len();
    report.marked_bytes =
        candidates.iter().filter_map(|p| sizes.get(p)).sum::<u64>() + repack.packs.iter().map(|p| p.size).sum::<u64>();
    report.marked_space_back_ns = now.saturating_add(policy.grace_ns);
    report.deleted_packs = deletions.len();
    report.deleted_bytes = deletions.iter().filter_map(|p| sizes.get(p)).sum();
    report.expired_sessions = expired.len();
    report.removed_checkpoints = stale_checkpoints.len();
    if policy.dry_run {
        return Ok(report);
    }

    // Writes, each step safe to interrupt. Each batch first checks that no other prune ran
    // since this one read the repository (it may have slept, frozen, past its session's
    // expiry): what this one decided would then list or delete packs on stale knowledge.
    let read_marks: HashSet<String> =
        records.iter().map(|(p, _)| p.clone()).chain(record_problems.iter().map(|(p, _)| p.clone())).collect();
    let fence = |swept: &[String]| {
        // Paused this long, its session may have expired and other prunes have run: what it
        // read is too old to act on, whatever the listings say.
        if clock::now_ns().saturating_sub(now) > policy.session_expiry_ns / 2 {
            return Err(StoreError::Raced(
                "this prune was paused for days after it read the repository; it stopped before writing: run it again"
                    .into(),
            ));
        }
        unchanged_since(repo, &segment_paths, &read_marks, swept)
    };
    fence(&[])?;
    // Put back what is referenced again first.
    write_segments(repo, restore)?;
    for pack in &deletions {
        backend.delete(&pack_path(pack))?;
        backend.delete(&crate::format::parity::parity_path(pack))?;
    }
    for path in &swept_records {
        backend.delete(path)?;
    }
    // Repack: the used blobs of partly used packs go to new packs, indexed before the old
    // packs leave the index below; the old packs are then marked like unreferenced ones
    // (deleted by a later sweep, once no backup that started before the mark can use them).
    for pack in copy_used_blobs(repo, &repack.packs, &indexed, &referenced, &mut report)? {
        candidates.push(pack);
    }
    // Copying can take long: check again before the index is rewritten and the mark written.
    crate::failpoint::hit("prune-before-rewrite");
    fence(&swept_records)?;
    let candidate_set: HashSet<PackId> = candidates.iter().copied().collect();
    let indexed_candidates: Vec<&PackId> = candidates.iter().filter(|p| indexed.contains_key(p)).collect();
    if !indexed_candidates.is_empty() {
        let keep: Vec<(PackId, Vec<PackEntry>)> =
            indexed.into_iter().filter(|(p, _)| !candidate_set.contains(p)).collect();
        write_segments(repo, keep)?;
        for path in &segment_paths {
            backend.delete(path)?;
        }
        report.replaced_segments = segment_paths.len();
    }
    if !candidates.is_empty() {
        let record = GcRecord { mark_ns: clock::now_ns(), host: host.to_string(), candidates };
        let (id, bytes) = record.encode(key)?;
        backend.put(&format!("gc/{id}"), &bytes)?;
    }
    for path in &stale_checkpoints {
        backend.delete(path)?;
    }
    for s in &expired {
        repo.remove_session(s)?;
    }
    // Older than a session's expiry: a writer frozen that long has had its session
    // expired too (its work is void), and a live one writes a temporary file for seconds.
    let cutoff = now.saturating_sub(policy.session_expiry_ns.max(86_400 * SECOND));
    report.removed_temporaries = backend.sweep_temporaries(cutoff)?;
    Ok(report)
}

/// Errs when the repository's index segments or GC marks are not what this prune read (less
/// the marks it swept itself): another prune ran in between.
fn unchanged_since(repo: &Repository, segments: &[String], marks: &HashSet<String>, swept: &[String]) -> Result<()> {
    let now_segments: HashSet<String> = repo.backend().list("index")?.into_iter().collect();
    let now_marks: HashSet<String> = repo.backend().list("gc")?.into_iter().collect();
    let expected_marks: HashSet<&String> = marks.iter().filter(|m| !swept.contains(m)).collect();
    let segments_gone = segments.iter().any(|s| !now_segments.contains(s));
    let marks_changed = now_marks.iter().collect::<HashSet<_>>() != expected_marks;
    if segments_gone || marks_changed {
        return Err(StoreError::Raced(
            "another prune changed the index or the marks while this one ran (it was paused or slow); \
             this one stopped before writing on what it had read: run prune again"
                .into(),
        ));
    }
    Ok(())
}

/// A data pack some of whose blobs are referenced: its size and the bytes those take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartlyUsed {
    pub pack: PackId,
    pub size: u64,
    pub used: u64,
}

impl PartlyUsed {
    /// `None` for a pack with nothing unused.
    fn of(pack: PackId, size: u64, entries: &[PackEntry], referenced: &HashSet<BlobId>) -> Option<Self> {
        // What the unreferenced blobs take, with their rows of the blob table: the header and
        // the rest of the table are the price of any pack, not waste.
        let unused: u64 = entries
            .iter()
            .filter(|e| !referenced.contains(&e.id))
            .map(|e| u64::from(e.length) + crate::format::pack::ENTRY_LEN as u64)
            .sum();
        (unused > 0).then_some(Self { pack, size, used: size.saturating_sub(unused) })
    }

    fn unused(&self) -> u64 {
        self.size - self.used
    }
}

/// Which partly used packs to repack.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepackPlan {
    pub packs: Vec<PartlyUsed>,
    /// Unused bytes in partly used packs once these are repacked.
    pub unused_left: u64,
}

/// The packs wasting the largest share first, until the unused bytes left are at most
/// `max_unused_percent` of `live_bytes` (all packs that stay), copying at most
/// `max_repack_bytes`. A pack that is mostly unused costs little to repack and frees much.
pub fn plan_repack(mut partly: Vec<PartlyUsed>, live_bytes: u64, policy: &GcPolicy) -> RepackPlan {
    let allowed = (live_bytes as f64 * policy.max_unused_percent.clamp(0.0, 100.0) / 100.0) as u64;
    partly.sort_by(|a, b| (b.unused() * a.size).cmp(&(a.unused() * b.size)).then(a.pack.0.0.cmp(&b.pack.0.0)));
    let mut unused_left: u64 = partly.iter().map(PartlyUsed::unused).sum();
    let mut copied = 0u64;
    let mut packs = Vec::new();
    for p in partly {
        if unused_left <= allowed {
            break;
        }
        if copied.saturating_add(p.used) > policy.max_repack_bytes {
            continue;
        }
        copied += p.used;
        unused_left -= p.unused();
        packs.push(p);
    }
    RepackPlan { packs, unused_left }
}

/// Copies the referenced blobs of each pack to new packs and indexes them; returns the packs
/// whose every used blob was copied (a pack with an unreadable blob is left, for verify).
fn copy_used_blobs(
    repo: &Repository,
    packs: &[PartlyUsed],
    indexed: &HashMap<PackId, Vec<PackEntry>>,
    referenced: &HashSet<BlobId>,
    report: &mut PruneReport,
) -> Result<Vec<PackId>> {
    let mut done = Vec::new();
    // A tree's copy goes to the trees' pool, or to the mirrors' when this prune already
    // copied that tree once (its other pack is repacked too): two copies in two packs.
    let mut trees_copied: HashSet<BlobId> = HashSet::new();
    for p in packs {
        let entries = indexed.get(&p.pack).map(Vec::as_slice).unwrap_or_default();
        let mut ok = true;
        for e in entries.iter().filter(|e| referenced.contains(&e.id)) {
            match repo.load_blob_at(&BlobLocation { pack: p.pack, entry: *e }) {
                Ok(data) if e.kind == crate::BlobKind::Tree => {
                    let again = !trees_copied.insert(e.id);
                    repo.save_tree_copy(e.id, &data, again)?;
                }
                Ok(data) => {
                    repo.save_blob_again(e.kind, e.id, &data)?;
                }
                Err(err) => {
                    report
                        .problems
                        .push(format!("{}: not repacked: {err} (left for verify --repair)", pack_path(&p.pack)));
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            done.push(p.pack);
        }
    }
    if !packs.is_empty() {
        repo.flush()?;
    }
    report.repacked_packs = done.len();
    Ok(done)
}

/// Writes `packs` as index segments of at most [`SEGMENT_BLOBS`] blobs each.
fn write_segments(repo: &Repository, packs: Vec<(PackId, Vec<PackEntry>)>) -> Result<()> {
    let key = &repo.access().write_key().index_key;
    let mut batch = Vec::new();
    let mut blobs = 0;
    let write = |batch: Vec<(PackId, Vec<PackEntry>)>| -> Result<()> {
        let (id, bytes) = IndexSegment { packs: batch }.encode(key)?;
        Ok(repo.backend().put(&format!("index/{id}"), &bytes)?)
    };
    for (pack, entries) in packs {
        blobs += entries.len();
        batch.push((pack, entries));
        if blobs >= SEGMENT_BLOBS {
            write(std::mem::take(&mut batch))?;
            blobs = 0;
        }
    }
    if !batch.is_empty() {
        write(batch)?;
    }
    Ok(())
}

/// Every blob reachable from the root trees and the checkpoint blobs (trees among them are
/// followed), `trees` locating every tree. A tree that cannot be read stops the prune: what
/// it names is unknown.
fn reachable(
    repo: &Repository,
    roots: Vec<BlobId>,
    checkpoint_blobs: Vec<BlobId>,
    trees_at: &HashMap<BlobId, BlobLocation>,
) -> Result<HashSet<BlobId>> {
    let mut seen: HashSet<BlobId> = HashSet::new();
    let mut trees: Vec<BlobId> = Vec::new();
    for id in roots {
        if seen.insert(id) {
            trees.push(id);
        }
    }
    for id in checkpoint_blobs {
        // A checkpoint names file chunks and folder trees alike; trees are followed.
        if seen.insert(id) && trees_at.contains_key(&id) {
            trees.push(id);
        }
    }
    while let Some(id) = trees.pop() {
        let loc = trees_at.get(&id).ok_or_else(|| refuse(&[format!("tree {} is in no pack", id.short())]))?;
        let tree = repo
            .load_blob_at(loc)
            .and_then(|b| Tree::decode(&format!("tree {}", id.short()), &b))
            .map_err(|e| refuse(&[e.to_string()]))?;
        for entry in tree.entries {
            match entry.node {
                Node::File { chunks, .. } => seen.extend(chunks),
                Node::Dir { tree } if seen.insert(tree) => trees.push(tree),
                _ => {}
            }
        }
    }
    Ok(seen)
}

fn refuse(problems: &[String]) -> StoreError {
    StoreError::corrupt(
        "repository",
        format!(
            "prune needs every snapshot, tree and index segment readable; run `bakare verify --repair` first: {}",
            problems.join("; ")
        ),
    )
}

fn duration(ns: i64) -> String {
    let secs = ns.max(0) / SECOND;
    match secs {
        s if s >= 2 * 86400 => format!("{} days", s / 86400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakare_crypto::{Digest, checksum};

    #[test]
    fn record_round_trips_and_refuses_tampering() {
        let m = bakare_crypto::MasterKey::generate().unwrap();
        let key = &m.write.index_key;
        let r = GcRecord { mark_ns: 5, host: "h".into(), candidates: vec![PackId(Digest([1; 32]))] };
        let (id, bytes) = r.encode(key).unwrap();
        assert_eq!(id, checksum(&bytes));
        assert_eq!(GcRecord::decode("gc/x", &bytes, key).unwrap(), r);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(GcRecord::decode("gc/x", &b, key).is_err(), "flip at {i}");
        }
    }

    fn partly(n: u8, size: u64, used: u64) -> PartlyUsed {
        PartlyUsed { pack: PackId(Digest([n; 32])), size, used }
    }

    #[test]
    fn repack_takes_the_most_wasteful_packs_until_the_waste_is_within_bounds() {
        let policy = GcPolicy { max_unused_percent: 5.0, ..GcPolicy::default() };
        let packs = vec![partly(1, 100, 90), partly(2, 100, 10), partly(3, 100, 50)];
        // 1000 bytes of packs stay; 150 unused; 50 allowed.
        let plan = plan_repack(packs.clone(), 1000, &policy);
        assert_eq!(plan.packs.iter().map(|p| p.pack.0.0[0]).collect::<Vec<_>>(), vec![2, 3], "most waste first");
        assert_eq!(plan.unused_left, 10);
        assert!(plan_repack(packs.clone(), 1000, &GcPolicy { max_unused_percent: 100.0, ..policy }).packs.is_empty());
        let capped = plan_repack(packs.clone(), 1000, &GcPolicy { max_repack_bytes: 40, ..policy });
        assert_eq!(capped.packs.iter().map(|p| p.pack.0.0[0]).collect::<Vec<_>>(), vec![2], "at most 40 bytes copied");
        assert_eq!(plan_repack(packs, 1_000_000, &policy).packs, vec![], "waste already within 5 %");
    }
}
