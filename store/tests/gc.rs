//! Garbage collection on an in-memory repository: what is marked, when it is swept, what
//! holds a sweep back, and what is put back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bakare_store::KdfParams;
use bakare_store::backend::{Backend, MemoryBackend};
use bakare_store::gc::GcPolicy;
use bakare_store::prune::{PruneReport, prune};
use bakare_store::{
    BlobKind, ChunkerParams, Entry, Metadata, Node, Repository, Session, SessionOptions, Snapshot, SnapshotId,
    SnapshotStats, StoreError, Tree, clock,
};

const DAY: i64 = 86_400_000_000_000;

fn repo() -> (Arc<MemoryBackend>, Repository) {
    let backend = Arc::new(MemoryBackend::new());
    let kdf = KdfParams { m_kib: 64, t: 1, p: 1 };
    let repo = Repository::init_with_pack_size(backend.clone(), b"pw", kdf, ChunkerParams::default(), 4096).unwrap();
    (backend, repo)
}

/// A snapshot of one file with `chunks` distinct chunks of content `seed`.
fn snapshot(repo: &Repository, seed: u8, chunks: usize) -> (SnapshotId, Vec<bakare_store::BlobId>) {
    let ids: Vec<_> = (0..chunks)
        .map(|i| repo.save_blob(BlobKind::Data, &vec![seed.wrapping_add(i as u8); 3000 + i]).unwrap().id)
        .collect();
    let meta = Metadata { mode: 0o644, uid: 0, gid: 0, mtime_ns: 0 };
    let node = Node::File { size: 0, chunks: ids.clone() };
    let tree =
        Tree { entries: vec![Entry { name: vec![b'f', seed], node, meta, error: None, extra: Default::default() }] };
    let root = repo.save_tree(&tree).unwrap().id;
    repo.flush().unwrap();
    let snap = Snapshot {
        time_ns: clock::now_ns(),
        host: "h".into(),
        user: String::new(),
        paths: vec![b"/d".to_vec()],
        tags: Vec::new(),
        root,
        parent: None,
        stats: SnapshotStats::default(),
        program: String::new(),
        log: Vec::new(),
    };
    (repo.save_snapshot(&snap).unwrap(), ids)
}

/// Ages every object by `by` nanoseconds, as if that much time had passed.
fn age(backend: &MemoryBackend, by: i64) {
    for prefix in ["packs", "index", "snapshots", "snapshots.mirror", "sessions", "checkpoints", "gc"] {
        for (path, st) in backend.list_stat(prefix).unwrap() {
            backend.set_modified_ns(&path, st.modified_ns - by);
        }
    }
}

fn run(repo: &Repository, policy: GcPolicy) -> PruneReport {
    prune(repo, "gc-host", None, &policy).unwrap()
}

/// A repository with a kept snapshot and a forgotten one, whose packs are garbage.
fn with_forgotten_snapshot() -> (Arc<MemoryBackend>, Repository) {
    let (backend, repo) = repo();
    snapshot(&repo, 1, 2);
    let (gone, _) = snapshot(&repo, 50, 2);
    bakare_store::forget::remove_snapshot(&repo, &gone).unwrap();
    (backend, repo)
}

fn immediate() -> GcPolicy {
    GcPolicy { min_pack_age_ns: 0, grace_ns: 0, ..GcPolicy::default() }
}

fn session(started_ns: i64, heartbeat_ns: i64) -> Session {
    Session {
        id: Session::new_id().unwrap(),
        host: "laptop".into(),
        started_ns,
        heartbeat_ns,
        paths: vec![b"/d".to_vec()],
        options: SessionOptions::default(),
        checkpoints: 0,
        interrupted: false,
        committing: None,
    }
}

#[test]
fn marks_then_sweeps_what_no_snapshot_uses() {
    let (backend, repo) = repo();
    let (_, kept) = snapshot(&repo, 1, 4);
    let (gone, dropped) = snapshot(&repo, 100, 4);
    bakare_store::forget::remove_snapshot(&repo, &gone).unwrap();
    let packs_before = backend.list("packs").unwrap().len();

    let young = run(&repo, GcPolicy::default());
    assert_eq!((young.marked_packs, young.deleted_packs), (0, 0), "young packs are not marked: {young:?}");
    assert!(young.young_packs > 0);

    let mark = run(&repo, immediate());
    assert!(mark.marked_packs > 0, "{mark:?}");
    assert_eq!(mark.deleted_packs, 0, "marking deletes nothing");
    assert_eq!(backend.list("gc").unwrap().len(), 1);
    assert_eq!(backend.list("packs").unwrap().len(), packs_before);
    let fresh = repo.reopen();
    assert!(dropped.iter().all(|id| !fresh.contains_blob(id).unwrap()), "the index no longer offers them");
    assert!(kept.iter().all(|id| fresh.contains_blob(id).unwrap()));

    let sweep = run(&repo, immediate());
    assert_eq!(sweep.deleted_packs, mark.marked_packs, "{sweep:?}");
    assert!(backend.list("gc").unwrap().is_empty());
    assert_eq!(backend.list("packs").unwrap().len(), packs_before - mark.marked_packs);
    let fresh = repo.reopen();
    for id in &kept {
        fresh.load_blob(id).unwrap();
    }
}

#[test]
fn a_live_session_older_than_the_mark_holds_the_sweep_back() {
    let (backend, repo) = with_forgotten_snapshot();
    let now = clock::now_ns();
    let laptop = session(now - DAY, now);
    repo.put_session(&laptop).unwrap();
    let mark = run(&repo, immediate());
    assert!(mark.marked_packs > 0);
    let held = run(&repo, immediate());
    assert_eq!(held.deleted_packs, 0, "{held:?}");
    assert!(held.deferred.iter().any(|d| d.contains("laptop")), "{held:?}");
    // Its heartbeat stops for longer than the expiry: the next prune declares it expired and
    // still waits (a write of the backup from before the declaration must be seen first);
    // the one after that no longer waits for it.
    let expired = session(now - 9 * DAY, now - 8 * DAY);
    repo.put_session(&expired).unwrap();
    repo.remove_session(&laptop).unwrap();
    let declared = run(&repo, immediate());
    assert_eq!(declared.deleted_packs, 0, "{declared:?}");
    assert_eq!(declared.expired_sessions, 1);
    assert!(declared.deferred.iter().any(|d| d.contains("this prune declares it")), "{declared:?}");
    assert!(backend.list("sessions").unwrap().is_empty());
    assert_eq!(backend.list("sessions.expired").unwrap().len(), 1);
    assert!(!repo.session_standing(&expired.id).unwrap(), "a declared session no longer stands");
    let swept = run(&repo, immediate());
    assert_eq!(swept.deleted_packs, mark.marked_packs, "{swept:?}");
    assert_eq!(swept.expired_sessions, 0);
}

/// A session declared expired whose heartbeat writes its record again (the process woke)
/// holds marks back again as a live one, and still does not stand: its backup takes back
/// what it writes.
#[test]
fn a_declared_session_that_wakes_holds_back_but_does_not_stand() {
    let (backend, repo) = with_forgotten_snapshot();
    let now = clock::now_ns();
    let sleeper = session(now - 9 * DAY, now - 8 * DAY);
    repo.put_session(&sleeper).unwrap();
    assert!(repo.session_standing(&sleeper.id).unwrap());
    let mark = run(&repo, immediate());
    assert!(mark.marked_packs > 0);
    assert_eq!(mark.expired_sessions, 1, "declared in the same prune: {mark:?}");
    assert!(!repo.session_standing(&sleeper.id).unwrap());
    // It wakes: its heartbeat writes its record again.
    repo.put_session(&bakare_store::Session { heartbeat_ns: now, ..sleeper.clone() }).unwrap();
    let held = run(&repo, immediate());
    assert_eq!(held.deleted_packs, 0, "a live session that started before the mark holds it back: {held:?}");
    assert!(!repo.session_standing(&sleeper.id).unwrap(), "the declaration stays");
    repo.remove_session(&sleeper).unwrap();
    let swept = run(&repo, immediate());
    assert_eq!(swept.deleted_packs, mark.marked_packs, "{swept:?}");
    assert_eq!(backend.list("sessions.expired").unwrap().len(), 1, "kept for 28 days");
}

#[test]
fn an_interrupted_session_holds_no_sweep_back_but_keeps_its_checkpoints_data() {
    let (_, repo) = with_forgotten_snapshot();
    let now = clock::now_ns();
    let stopped = Session { interrupted: true, ..session(now - DAY, now) };
    repo.put_session(&stopped).unwrap();
    let mark = run(&repo, immediate());
    assert!(mark.marked_packs > 0);
    let swept = run(&repo, immediate());
    assert_eq!(swept.deleted_packs, mark.marked_packs, "Ctrl-C must not hold prune back for a week: {swept:?}");
    assert_eq!(swept.live_sessions, 1, "the session stays, for resume");
}

#[test]
fn a_mark_used_again_is_put_back() {
    let (backend, repo) = repo();
    snapshot(&repo, 1, 2);
    let (gone, ids) = snapshot(&repo, 70, 3);
    let old = repo.find_snapshot(&gone.to_hex()).unwrap().1;
    bakare_store::forget::remove_snapshot(&repo, &gone).unwrap();
    let mark = run(&repo, immediate());
    assert!(mark.marked_packs > 0);
    // A backup that read the index before the mark commits a snapshot using those blobs.
    let mut again = old.clone();
    again.time_ns += 1;
    repo.save_snapshot(&again).unwrap();
    let sweep = run(&repo, immediate());
    assert_eq!(sweep.deleted_packs, 0, "{sweep:?}");
    assert_eq!(sweep.restored_packs, mark.marked_packs);
    assert!(backend.list("gc").unwrap().is_empty());
    let fresh = repo.reopen();
    for id in &ids {
        fresh.load_blob(id).unwrap();
    }
    assert!(bakare_store::verify::verify(&fresh, bakare_store::verify::ReadData::All).unwrap().is_clean());
}

#[test]
fn grace_and_age_are_judged_by_time() {
    let (backend, repo) = repo();
    snapshot(&repo, 1, 2);
    let (gone, _) = snapshot(&repo, 9, 2);
    bakare_store::forget::remove_snapshot(&repo, &gone).unwrap();
    age(&backend, 2 * DAY);
    let mark = run(&repo, GcPolicy::default());
    assert!(mark.marked_packs > 0, "two days old: {mark:?}");
    let early = run(&repo, GcPolicy::default());
    assert_eq!(early.deleted_packs, 0);
    assert!(early.deferred.iter().any(|d| d.contains("grace period")), "{early:?}");
}

#[test]
fn refuses_with_a_skewed_clock_or_an_unreadable_snapshot() {
    let (backend, repo) = repo();
    let (id, _) = snapshot(&repo, 1, 2);
    let own = session(clock::now_ns(), clock::now_ns());
    repo.put_session(&own).unwrap();
    backend.set_modified_ns(&own.path(), clock::now_ns() - DAY / 24);
    let skewed = prune(&repo, "h", Some(&own), &immediate());
    assert!(matches!(skewed, Err(StoreError::ClockSkew { .. })), "{skewed:?}");
    repo.remove_session(&own).unwrap();

    let packs = backend.list("packs").unwrap();
    for dir in ["snapshots", "snapshots.mirror"] {
        backend.tamper(&format!("{dir}/{id}"), b"rot".to_vec());
    }
    let refused = prune(&repo, "h", None, &immediate()).unwrap_err();
    assert!(refused.to_string().contains("verify --repair"), "{refused}");
    assert_eq!(backend.list("packs").unwrap(), packs, "nothing was deleted");
}

/// Every object's path, for comparing the repository before and after.
fn listing(backend: &MemoryBackend) -> Vec<String> {
    let mut all = Vec::new();
    for prefix in ["packs", "index", "snapshots", "snapshots.mirror", "sessions", "checkpoints", "gc", "keys"] {
        all.extend(backend.list(prefix).unwrap());
    }
    all
}

#[test]
fn a_plan_writes_nothing_and_its_execution_does_what_its_steps_say() {
    let (backend, repo) = repo();
    snapshot(&repo, 1, 4);
    let (gone, _) = snapshot(&repo, 100, 4);
    bakare_store::forget::remove_snapshot(&repo, &gone).unwrap();
    let before = listing(&backend);

    let plan = bakare_store::prune::plan(&repo, "gc-host", None, &immediate()).unwrap();
    assert_eq!(listing(&backend), before, "planning writes nothing");
    assert!(!plan.is_empty());
    let steps = plan.steps();
    assert!(steps.iter().any(|s| s.starts_with("mark ") && s.contains("packs/")), "{steps:?}");
    assert!(steps.iter().any(|s| s.starts_with("rewrite the index")), "{steps:?}");
    assert!(!steps.iter().any(|s| s.starts_with("delete ")), "nothing was marked before: {steps:?}");
    let planned = plan.report.marked_packs;
    assert!(planned > 0);
    let done = bakare_store::prune::execute(&repo, plan, &immediate()).unwrap();
    assert_eq!(done.marked_packs, planned, "the execution marks what the plan said");
    assert_eq!(backend.list("gc").unwrap().len(), 1);

    // The next plan sweeps that mark, and says so.
    let sweep = bakare_store::prune::plan(&repo, "gc-host", None, &immediate()).unwrap();
    let steps = sweep.steps();
    assert!(steps.iter().any(|s| s.starts_with(&format!("delete {planned} packs marked earlier"))), "{steps:?}");
    assert!(steps.iter().any(|s| s.starts_with("remove 1 settled marks")), "{steps:?}");
    let swept = bakare_store::prune::execute(&repo, sweep, &immediate()).unwrap();
    assert_eq!(swept.deleted_packs, planned);
    assert!(bakare_store::prune::plan(&repo, "gc-host", None, &immediate()).unwrap().is_empty(), "nothing left to do");
}
