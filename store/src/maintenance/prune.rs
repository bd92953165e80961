//! `prune`: garbage collection's sweep of old marks and a new mark, as a computed plan
//! ([`plan`], a [`PrunePlan`] that `--dry-run` prints) and its execution ([`execute`]).
//! The phases and why they are safe without a lock are in [`super::gc`].

use std::collections::{HashMap, HashSet};

use super::gc::{CLOCK_SKEW_NS, GcPolicy, MAX_SKEW_NS, RUNNING_NS, SECOND, SEGMENT_BLOBS, duration, refuse};
use crate::backend::ObjectStat;
use crate::format::index::IndexSegment;
use crate::format::marks::{GcRecord, records};
use crate::format::object::{get_named, id_of_path};
use crate::format::pack::{PackEntry, read_pack_table};
use crate::format::session::{Checkpoint, Session};
use crate::format::tree::{Node, Tree};
use crate::ids::{BlobId, PackId};
use crate::repo::{Repository, pack_path};
use crate::{BlobLocation, Result, StoreError, clock};

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
    /// Expired sessions this prune declared expired (or removed, declared earlier).
    pub expired_sessions: usize,
    /// Declarations of expired sessions old enough to go (see [`DECLARATION_KEPT_NS`]).
    pub removed_declarations: usize,
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

/// What a prune read of the repository: everything its decisions rest on.
struct Survey {
    /// When it was read, by this host's clock.
    now: i64,
    live: Vec<Session>,
    expired: Vec<Session>,
    /// Sessions a prune declared expired before this one read the index and snapshots.
    declared: HashSet<[u8; 16]>,
    /// Declarations old enough to remove whose session record is gone.
    old_declarations: Vec<String>,
    records: Vec<(String, GcRecord)>,
    /// Marks that could not be read (paths), left for verify --repair.
    damaged_records: Vec<String>,
    segment_paths: Vec<String>,
    /// The index as the segments list it.
    indexed: HashMap<PackId, Vec<PackEntry>>,
    /// Every pack, with its size and age.
    packs: Vec<(PackId, ObjectStat)>,
    sizes: HashMap<PackId, u64>,
    /// Tables of old unindexed packs: marked ones, and those nothing indexed yet.
    tables: HashMap<PackId, Vec<PackEntry>>,
    snapshots: usize,
    /// Checkpoints of expired or vanished sessions.
    stale_checkpoints: Vec<String>,
    /// Every blob reachable from a snapshot or a live session's checkpoint.
    referenced: HashSet<BlobId>,
}

impl Survey {
    fn size(&self, pack: &PackId) -> Option<u64> {
        self.sizes.get(pack).copied()
    }
}

/// What a prune decided, before it writes anything: a value that `--dry-run` prints and
/// [`execute`] carries out. Each step of the execution is safe to interrupt.
pub struct PrunePlan {
    /// The figures of the plan (what [`execute`] then reports, plus what it counts as it goes).
    pub report: PruneReport,
    host: String,
    survey: Survey,
    /// Marked packs referenced or needed again: indexed again.
    restore: Vec<(PackId, Vec<PackEntry>)>,
    /// Marked packs whose grace is over and that nothing needs: deleted.
    deletions: Vec<PackId>,
    /// Marks settled by this sweep: removed.
    swept_records: Vec<String>,
    /// Unreferenced packs to mark now (the repacked ones join them once copied).
    candidates: Vec<PackId>,
    repack: RepackPlan,
}

impl PrunePlan {
    /// Whether carrying out the plan would change nothing but remove temporary files.
    pub fn is_empty(&self) -> bool {
        self.restore.is_empty()
            && self.deletions.is_empty()
            && self.swept_records.is_empty()
            && self.candidates.is_empty()
            && self.repack.packs.is_empty()
            && self.survey.stale_checkpoints.is_empty()
            && self.survey.expired.is_empty()
    }

    /// The plan's steps, in the order [`execute`] takes them, a line each.
    pub fn steps(&self) -> Vec<String> {
        let some = |names: Vec<String>| -> String {
            let mut shown: Vec<String> = names.iter().take(3).cloned().collect();
            if names.len() > 3 {
                shown.push(format!("and {} more", names.len() - 3));
            }
            shown.join(", ")
        };
        let packs = |ids: &[PackId]| some(ids.iter().map(pack_path).collect());
        let mut out = Vec::new();
        if !self.restore.is_empty() {
            let ids: Vec<PackId> = self.restore.iter().map(|(p, _)| *p).collect();
            out.push(format!("index again {} packs that are used: {}", ids.len(), packs(&ids)));
        }
        if !self.deletions.is_empty() {
            out.push(format!("delete {} packs marked earlier: {}", self.deletions.len(), packs(&self.deletions)));
        }
        if !self.swept_records.is_empty() {
            out.push(format!(
                "remove {} settled marks: {}",
                self.swept_records.len(),
                some(self.swept_records.clone())
            ));
        }
        if !self.repack.packs.is_empty() {
            let ids: Vec<PackId> = self.repack.packs.iter().map(|p| p.pack).collect();
            out.push(format!("copy the used blobs of {} partly used packs to new packs: {}", ids.len(), packs(&ids)));
        }
        let indexed_candidates = self.candidates.iter().filter(|p| self.survey.indexed.contains_key(p)).count();
        if indexed_candidates > 0 || !self.repack.packs.is_empty() {
            out.push(format!(
                "rewrite the index without the marked packs (replacing {} segments)",
                self.survey.segment_paths.len()
            ));
        }
        match (self.candidates.is_empty(), self.repack.packs.is_empty()) {
            (false, repacked) => out.push(format!(
                "mark {} unreferenced packs{}: {}",
                self.candidates.len(),
                if repacked { "" } else { " and the repacked ones" },
                packs(&self.candidates)
            )),
            (true, false) => out.push("mark the repacked packs".into()),
            (true, true) => {}
        }
        if !self.survey.stale_checkpoints.is_empty() || !self.survey.expired.is_empty() {
            out.push(format!(
                "remove {} checkpoints, declare {} sessions expired (their records move to sessions.expired/)",
                self.survey.stale_checkpoints.len(),
                self.survey.expired.len()
            ));
        }
        if !self.survey.old_declarations.is_empty() {
            out.push(format!(
                "remove {} declarations of expiry older than 28 days",
                self.survey.old_declarations.len()
            ));
        }
        out
    }
}

/// Runs the sweep of old marks and a new mark: [`plan`], then (unless `policy.dry_run`)
/// [`execute`]. `repo` must hold the master key (trees are read). `own_session` is the
/// prune's own session record, which holds nothing back.
pub fn prune(repo: &Repository, host: &str, own_session: Option<&Session>, policy: &GcPolicy) -> Result<PruneReport> {
    let plan = plan(repo, host, own_session, policy)?;
    if policy.dry_run {
        return Ok(plan.report);
    }
    execute(repo, plan, policy)
}

/// Reads the repository and decides what a prune does; writes nothing.
pub fn plan(repo: &Repository, host: &str, own_session: Option<&Session>, policy: &GcPolicy) -> Result<PrunePlan> {
    repo.access().master()?;
    let mut report = PruneReport::default();
    let survey = survey(repo, own_session, policy, &mut report)?;
    let mut plan = PrunePlan {
        report,
        host: host.to_string(),
        survey,
        restore: Vec::new(),
        deletions: Vec::new(),
        swept_records: Vec::new(),
        candidates: Vec::new(),
        repack: RepackPlan::default(),
    };
    if !plan.report.deferred.iter().any(|d| d.starts_with(ANOTHER_PRUNE)) {
        let still_marked = plan_sweep(&mut plan, policy);
        plan_mark(&mut plan, &still_marked, policy);
    }
    Ok(plan)
}

/// How long a declaration of a session's expiry is kept once the session's record is gone:
/// a backup frozen longer than this between a write and its next check, whose heartbeat
/// wrote its record again in between, would find neither. (Four times the session expiry.)
pub const DECLARATION_KEPT_NS: i64 = 28 * 86_400 * SECOND;

const ANOTHER_PRUNE: &str = "another prune is running";

/// Reads sessions, marks, the index, the packs, and what is reachable.
fn survey(
    repo: &Repository,
    own_session: Option<&Session>,
    policy: &GcPolicy,
    report: &mut PruneReport,
) -> Result<Survey> {
    let now = clock::now_ns();
    let key = &repo.access().write_key().index_key;
    let backend = repo.backend().as_ref();
    let mut survey = Survey {
        now,
        live: Vec::new(),
        expired: Vec::new(),
        declared: HashSet::new(),
        old_declarations: Vec::new(),
        records: Vec::new(),
        damaged_records: Vec::new(),
        segment_paths: Vec::new(),
        indexed: HashMap::new(),
        packs: Vec::new(),
        sizes: HashMap::new(),
        tables: HashMap::new(),
        snapshots: 0,
        stale_checkpoints: Vec::new(),
        referenced: HashSet::new(),
    };
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
    // Then the declarations: one listed here was written before the index and the
    // snapshots are read below, so what its backup wrote before noticing it is seen there.
    let declarations = repo.expired_declarations()?;
    let recorded: HashSet<[u8; 16]> = sessions.iter().map(|s| s.id).collect();
    for (path, id, st) in declarations {
        survey.declared.insert(id);
        if !recorded.contains(&id) && now.saturating_sub(st.modified_ns) > DECLARATION_KEPT_NS {
            survey.old_declarations.push(path);
        }
    }
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
                "{ANOTHER_PRUNE} ({} on {}): this one changed nothing; run it again when that one is done",
                other.id_hex(),
                other.host
            ));
            survey.live = live;
            return Ok(survey);
        }
    }
    let (records, record_problems) = records(backend, key)?;
    report.problems.extend(
        record_problems.iter().map(|(_, p)| format!("{p} (verify --repair removes it; its packs are marked again)")),
    );
    survey.damaged_records = record_problems.into_iter().map(|(p, _)| p).collect();

    survey.segment_paths = backend.list("index")?;
    for path in &survey.segment_paths {
        let seg = get_named(backend, path)
            .and_then(|b| IndexSegment::decode(path, &b, key))
            .map_err(|e| refuse(&[e.to_string()]))?;
        for (pack, entries) in seg.packs {
            survey.indexed.entry(pack).or_insert(entries);
        }
    }

    let pack_stats = backend.list_stat("packs")?;
    report.packs = pack_stats.len();
    let marked: HashSet<PackId> = records.iter().flat_map(|(_, r)| r.candidates.iter().copied()).collect();
    for (path, st) in pack_stats {
        let Some(id) = id_of_path(&path).map(PackId) else { continue };
        let old = now.saturating_sub(st.modified_ns) >= policy.min_pack_age_ns;
        if !survey.indexed.contains_key(&id) && (old || marked.contains(&id)) {
            match read_pack_table(backend, &path, key) {
                Ok(t) => {
                    survey.tables.insert(id, t.entries);
                }
                Err(e) => report.problems.push(format!("{e} (left for verify --repair)")),
            }
        }
        survey.sizes.insert(id, st.size);
        survey.packs.push((id, st));
    }
    survey.records = records;

    survey.live = live;
    survey.expired = expired;
    find_referenced(repo, &mut survey, policy, report)?;
    Ok(survey)
}

/// Everything reachable from snapshots and from checkpoints of live sessions; checkpoints
/// of expired or vanished sessions are set aside for removal.
fn find_referenced(repo: &Repository, survey: &mut Survey, policy: &GcPolicy, report: &mut PruneReport) -> Result<()> {
    let now = survey.now;
    let key = &repo.access().write_key().index_key;
    let backend = repo.backend().as_ref();
    let live_ids: HashSet<[u8; 16]> = survey.live.iter().map(|s| s.id).collect();
    let expired_ids: HashSet<[u8; 16]> = survey.expired.iter().map(|s| s.id).collect();
    let list = repo.snapshots()?;
    if !list.problems.is_empty() {
        return Err(refuse(&list.problems));
    }
    survey.snapshots = list.snapshots.len();
    report.snapshots = list.snapshots.len();
    let roots: Vec<BlobId> = list.snapshots.iter().map(|(_, s)| s.root).collect();
    let mut checkpoint_blobs = Vec::new();
    for (path, st) in backend.list_stat("checkpoints")? {
        let refs = get_named(backend, &path)
            .and_then(|b| Checkpoint::decode_refs(&path, &b, key))
            .map_err(|e| refuse(&[e.to_string()]))?;
        let ownerless =
            !live_ids.contains(&refs.session) && now.saturating_sub(st.modified_ns) > policy.session_expiry_ns;
        if expired_ids.contains(&refs.session) || ownerless {
            survey.stale_checkpoints.push(path);
        } else {
            checkpoint_blobs.extend(refs.blobs);
        }
    }
    // Where each tree is, from the segments read above and the unindexed packs' tables.
    let trees: HashMap<BlobId, BlobLocation> = survey
        .indexed
        .iter()
        .chain(&survey.tables)
        .flat_map(|(pack, entries)| {
            entries
                .iter()
                .filter(|e| e.kind == crate::BlobKind::Tree)
                .map(|e| (e.id, BlobLocation { pack: *pack, entry: *e }))
        })
        .collect();
    survey.referenced = reachable(repo, roots, checkpoint_blobs, &trees)?;
    report.referenced_blobs = survey.referenced.len();
    Ok(())
}

/// Whether an unindexed pack is needed: for a referenced blob the index has nowhere else (a
/// backup that walked again after a mark stored fresh copies of what it found marked).
fn needed(survey: &Survey, indexed_blobs: &HashSet<BlobId>, entries: &[PackEntry]) -> bool {
    entries.iter().any(|e| survey.referenced.contains(&e.id) && !indexed_blobs.contains(&e.id))
}

/// The sweep: settles each mark whose grace is over and that no session that started
/// before it could still use. Returns the packs of marks left for later.
fn plan_sweep(plan: &mut PrunePlan, policy: &GcPolicy) -> HashSet<PackId> {
    let s = &plan.survey;
    let report = &mut plan.report;
    let indexed_blobs: HashSet<BlobId> = s.indexed.values().flatten().map(|e| e.id).collect();
    let mut still_marked = HashSet::new();
    for (path, record) in &s.records {
        let age = s.now.saturating_sub(record.mark_ns);
        // An interrupted backup holds nothing back: it runs no more, and when it is
        // continued, the new walk reads the index afresh (its checkpoints keep their data).
        // An expired session holds the mark back too until a prune has declared it expired
        // (this one does): a sweep relies on an expiry only once the backup behind it, if it
        // wakes, would find the declaration after anything it writes.
        let holders: Vec<&Session> = s
            .live
            .iter()
            .chain(s.expired.iter().filter(|h| !s.declared.contains(&h.id)))
            .filter(|h| !h.interrupted && h.started_ns < record.mark_ns.saturating_add(CLOCK_SKEW_NS))
            .collect();
        if age < policy.grace_ns || !holders.is_empty() {
            let why = if age < policy.grace_ns {
                format!("{path}: marked {} ago, grace period not over", duration(age))
            } else {
                let names: Vec<String> = holders
                    .iter()
                    .map(|h| {
                        let silent = s.now.saturating_sub(h.heartbeat_ns);
                        let expired = if silent > policy.session_expiry_ns {
                            ", expired: this prune declares it, the next one can settle the mark"
                        } else {
                            ""
                        };
                        format!("{} on {} (last heartbeat {} ago{expired})", h.id_hex(), h.host, duration(silent))
                    })
                    .collect();
                format!("{path}: waiting for sessions that started before the mark: {}", names.join(", "))
            };
            report.deferred.push(why);
            still_marked.extend(record.candidates.iter().copied());
            continue;
        }
        for pack in &record.candidates {
            if s.indexed.contains_key(pack) {
                report.restored_packs += 1;
            } else if let Some(entries) = s.tables.get(pack) {
                if needed(s, &indexed_blobs, entries) {
                    report.restored_packs += 1;
                    plan.restore.push((*pack, entries.clone()));
                } else {
                    plan.deletions.push(*pack);
                }
            } else if s.size(pack).is_some() {
                // Its table could not be read: leave the pack to verify --repair.
                report.restored_packs += 1;
            }
        }
        plan.swept_records.push(path.clone());
    }
    report.deleted_packs = plan.deletions.len();
    report.deleted_bytes = plan.deletions.iter().filter_map(|p| s.size(p)).sum();
    still_marked
}

/// The mark: unreferenced old packs, and the partly used packs worth repacking.
fn plan_mark(plan: &mut PrunePlan, still_marked: &HashSet<PackId>, policy: &GcPolicy) {
    let s = &plan.survey;
    let report = &mut plan.report;
    let indexed_blobs: HashSet<BlobId> = s.indexed.values().flatten().map(|e| e.id).collect();
    let deleted: HashSet<PackId> = plan.deletions.iter().copied().collect();
    let restored: HashSet<PackId> = plan.restore.iter().map(|(p, _)| *p).collect();
    let mut partly: Vec<PartlyUsed> = Vec::new();
    for (id, st) in &s.packs {
        if still_marked.contains(id) || deleted.contains(id) || restored.contains(id) {
            continue;
        }
        let old = s.now.saturating_sub(st.modified_ns) >= policy.min_pack_age_ns;
        if let Some(entries) = s.indexed.get(id) {
            if entries.iter().any(|e| s.referenced.contains(&e.id)) {
                if old && let Some(p) = PartlyUsed::of(*id, st.size, entries, &s.referenced) {
                    partly.push(p);
                }
                continue;
            }
            if old {
                plan.candidates.push(*id);
            } else {
                report.young_packs += 1;
            }
        } else if let Some(entries) = s.tables.get(id) {
            if needed(s, &indexed_blobs, entries) {
                report.indexed_packs += 1;
                plan.restore.push((*id, entries.clone()));
            } else {
                plan.candidates.push(*id);
            }
        } else if !old {
            report.young_packs += 1;
        }
    }
    let unreferenced: HashSet<PackId> = plan.candidates.iter().copied().collect();
    let live_bytes: u64 = s
        .packs
        .iter()
        .filter(|(id, _)| !deleted.contains(id) && !unreferenced.contains(id) && !still_marked.contains(id))
        .map(|(_, st)| st.size)
        .sum();
    plan.repack = plan_repack(partly, live_bytes, policy);
    report.repacked_packs = plan.repack.packs.len();
    report.repacked_bytes = plan.repack.packs.iter().map(|p| p.used).sum();
    report.repack_unused_bytes = plan.repack.packs.iter().map(PartlyUsed::unused).sum();
    report.unused_bytes_left = plan.repack.unused_left;
    report.marked_packs = plan.candidates.len() + plan.repack.packs.len();
    report.marked_bytes = plan.candidates.iter().filter_map(|p| s.size(p)).sum::<u64>()
        + plan.repack.packs.iter().map(|p| p.size).sum::<u64>();
    report.marked_space_back_ns = s.now.saturating_add(policy.grace_ns);
    report.expired_sessions = s.expired.len();
    report.removed_declarations = s.old_declarations.len();
    report.removed_checkpoints = s.stale_checkpoints.len();
}

/// Carries out a plan, each step safe to interrupt. Before each batch of writes it checks
/// that no other prune ran since the plan read the repository (the process may have slept,
/// frozen, past its session's expiry): what the plan decided would then list or delete
/// packs on stale knowledge.
pub fn execute(repo: &Repository, plan: PrunePlan, policy: &GcPolicy) -> Result<PruneReport> {
    let PrunePlan { mut report, host, survey, restore, deletions, swept_records, mut candidates, repack } = plan;
    if policy.dry_run || report.deferred.iter().any(|d| d.starts_with(ANOTHER_PRUNE)) {
        return Ok(report);
    }
    let backend = repo.backend().as_ref();
    let key = &repo.access().write_key().index_key;
    let read_marks: HashSet<String> =
        survey.records.iter().map(|(p, _)| p.clone()).chain(survey.damaged_records.iter().cloned()).collect();
    let fence = |swept: &[String]| {
        // Paused this long, its session may have expired and other prunes have run: what it
        // read is too old to act on, whatever the listings say.
        if clock::now_ns().saturating_sub(survey.now) > policy.session_expiry_ns / 2 {
            return Err(StoreError::Raced(
                "this prune was paused for days after it read the repository; it stopped before writing: run it again"
                    .into(),
            ));
        }
        unchanged_since(repo, &survey.segment_paths, &read_marks, swept)
    };
    fence(&[])?;
    // Expired sessions are declared first, so that a later failure here does not leave them
    // holding marks back for another run.
    for s in &survey.expired {
        if survey.declared.contains(&s.id) {
            repo.remove_session(s)?;
        } else {
            repo.declare_expired(s)?;
        }
    }
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
    candidates.extend(copy_used_blobs(repo, &repack.packs, &survey.indexed, &survey.referenced, &mut report)?);
    // Copying can take long: check again before the index is rewritten and the mark written.
    crate::failpoint::hit("prune-before-rewrite");
    fence(&swept_records)?;
    let candidate_set: HashSet<PackId> = candidates.iter().copied().collect();
    if candidates.iter().any(|p| survey.indexed.contains_key(p)) {
        let keep: Vec<(PackId, Vec<PackEntry>)> =
            survey.indexed.into_iter().filter(|(p, _)| !candidate_set.contains(p)).collect();
        write_segments(repo, keep)?;
        for path in &survey.segment_paths {
            backend.delete(path)?;
        }
        report.replaced_segments = survey.segment_paths.len();
    }
    if !candidates.is_empty() {
        let record = GcRecord { mark_ns: clock::now_ns(), host, candidates };
        let (id, bytes) = record.encode(key)?;
        backend.put(&format!("gc/{id}"), &bytes)?;
    }
    for path in &survey.stale_checkpoints {
        backend.delete(path)?;
    }
    for path in &survey.old_declarations {
        backend.delete(path)?;
    }
    // Older than a session's expiry: a writer frozen that long has had its session
    // expired too (its work is void), and a live one writes a temporary file for seconds.
    let cutoff = survey.now.saturating_sub(policy.session_expiry_ns.max(86_400 * SECOND));
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
        // A framed blob takes its share of its frame, by plaintext length.
        let mut frame_raw: HashMap<(u32, u32), u64> = HashMap::new();
        for e in entries.iter().filter(|e| e.frame_at.is_some()) {
            *frame_raw.entry((e.offset, e.length)).or_default() += u64::from(e.raw_len);
        }
        let takes = |e: &PackEntry| match frame_raw.get(&(e.offset, e.length)).filter(|_| e.frame_at.is_some()) {
            Some(&total) => u64::from(e.length) * u64::from(e.raw_len) / total.max(1),
            None => u64::from(e.length),
        };
        let unused: u64 = entries
            .iter()
            .filter(|e| !referenced.contains(&e.id))
            .map(|e| takes(e) + crate::format::pack::ENTRY_LEN as u64)
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
    let progress = repo.progress().clone();
    progress.start(packs.len() as u64);
    for p in packs {
        progress.step(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use bakare_crypto::Digest;

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
