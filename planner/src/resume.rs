//! Continuing interrupted backups: choose the session, adopt the packs it left unindexed,
//! and bring its checkpoints into the memo (for when this machine's memo was lost), so that
//! the continued backup reads only what was not finished.

use bakare_store::{Repository, Session, SnapshotId, clock};

use crate::error::PlanError;
use crate::memo::{DirRecord, Memo, MemoRecord};

/// A session whose heartbeat is older than this many beats is dead.
const DEAD_AFTER_BEATS: i64 = 3;

/// The backup session `resume` continues: the one whose id starts with `prefix`, or (see
/// below) the newest one of `host`.
pub fn find_session(
    repo: &Repository,
    host: &str,
    prefix: Option<&str>,
    heartbeat_secs: u64,
) -> Result<Option<Session>, PlanError> {
    let (sessions, _) = repo.sessions()?;
    // A session with no paths is a prune's, not a backup's.
    let mut backups = sessions.into_iter().rev().filter(|s| !s.paths.is_empty());
    if let Some(p) = prefix {
        return Ok(backups.find(|s| s.id_hex().starts_with(&p.to_ascii_lowercase())));
    }
    // Without a name: this host's newest stopped backup, else its newest (the user says it
    // is not running: a kill -9 leaves a fresh heartbeat), else the stopped backup of a
    // backup made here under another `--host` name (when only one host has any).
    let now = clock::now_ns();
    let all: Vec<Session> = backups.collect();
    let is_stopped = |s: &Session| stopped(s, now, heartbeat_secs);
    let own = || all.iter().filter(|s| s.host == host);
    if let Some(s) = own().find(|s| is_stopped(s)).or_else(|| own().next()) {
        return Ok(Some(s.clone()));
    }
    let stopped: Vec<&Session> = all.iter().filter(|s| is_stopped(s)).collect();
    let hosts: std::collections::BTreeSet<&str> = stopped.iter().map(|s| s.host.as_str()).collect();
    Ok(if hosts.len() == 1 { stopped.first().map(|s| (*s).clone()) } else { None })
}

/// A dead session of `host` that backed up exactly `paths`: a plain backup takes it over.
pub fn interrupted_session(
    repo: &Repository,
    host: &str,
    paths: &[Vec<u8>],
    heartbeat_secs: u64,
) -> Result<Option<Session>, PlanError> {
    let (sessions, _) = repo.sessions()?;
    let now = clock::now_ns();
    Ok(sessions.into_iter().rev().find(|s| s.host == host && s.paths == paths && stopped(s, now, heartbeat_secs)))
}

/// Whether a session runs no more: it says so (interrupted, or failed), or its heartbeat
/// is more than [`DEAD_AFTER_BEATS`] beats old.
fn stopped(s: &Session, now: i64, heartbeat_secs: u64) -> bool {
    let beat = i64::try_from(heartbeat_secs).unwrap_or(i64::MAX).saturating_mul(1_000_000_000);
    s.interrupted || now.saturating_sub(s.heartbeat_ns) > beat.saturating_mul(DEAD_AFTER_BEATS)
}

/// Tidies up after a backup killed once its snapshot was written but before its session
/// record was removed: the snapshot stands, so the checkpoints and the record go. The
/// snapshot's id, or `None` when the session had not committed (resume it).
pub fn finish_committed(repo: &Repository, session: &Session) -> Result<Option<SnapshotId>, PlanError> {
    let Some(id) = session.committing else { return Ok(None) };
    if !repo.snapshot_exists(&id)? {
        return Ok(None);
    }
    // Killed while it took back a snapshot written under a session a prune had declared
    // expired: that snapshot may name swept data, so it goes and the backup is resumed.
    if !repo.session_standing(&session.id)? {
        repo.remove_snapshot(&id)?;
        return Ok(None);
    }
    for (path, _) in repo.checkpoints(&session.id)? {
        repo.backend().delete(&path).map_err(bakare_store::StoreError::from)?;
    }
    repo.remove_session(session)?;
    Ok(Some(id))
}

/// What preparing a resume did.
#[derive(Debug, Default)]
pub struct Prepared {
    pub adopted_packs: usize,
    pub imported_files: usize,
}

/// Adopts unindexed packs and imports the session's checkpoints into `memo`.
pub fn prepare_resume(repo: &Repository, memo: &Memo, session: &Session) -> Result<Prepared, PlanError> {
    // Adopted under the session: if a prune declared it expired meanwhile, the segment is
    // taken back (a sweep may have deleted what it lists) and the walk starts anew.
    // The record says first that the session runs again: an interrupted one holds no mark
    // back, and the packs about to be adopted must not be swept while it adopts them.
    repo.put_session(&Session { interrupted: false, heartbeat_ns: clock::now_ns(), ..session.clone() })?;
    repo.write_for_session(session.id);
    let adopted_packs = bakare_store::maintenance::orphans::adopt(repo)?;
    let mut records = Vec::new();
    let mut dirs = Vec::new();
    // The memo will trust these without reading the index, so each blob they name is checked
    // against it here: a checkpoint must not outlive the data it names.
    let present = |id: &bakare_store::BlobId| repo.contains_blob(id).unwrap_or(false);
    for (_, checkpoint) in repo.checkpoints(&session.id)? {
        for (key, value) in &checkpoint.entries {
            if let Some(r) = MemoRecord::decode(key, value) {
                if r.chunks.iter().all(&present) {
                    records.push(r);
                }
            } else if let Some(d) = DirRecord::decode(key, value)
                && present(&d.tree)
            {
                dirs.push(d);
            }
        }
    }
    let imported_files = records.len();
    if imported_files > 0 || !dirs.is_empty() {
        // Each was just checked against the index: the trust of any backup set stands.
        memo.write(&records, &dirs, &[], crate::memo::Trust::Keep)
            .map_err(|e| PlanError::Fatal(format!("local memo: {e}")))?;
    }
    Ok(Prepared { adopted_packs, imported_files })
}
