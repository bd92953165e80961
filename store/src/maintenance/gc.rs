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
//! finds it so when it indexes it (`Repository::flush`).
//!
//! **Sweep** (a later run). A record's candidates are deleted only when the record is older
//! than the grace period and every session that started before the mark has committed or
//! expired. A candidate that is referenced again (by a snapshot committed since), or that an
//! index segment lists again, is put back in the index instead of deleted.
//!
//! Each step is safe to interrupt: a crash before the record is written leaves the
//! candidates unindexed and unreferenced, so the next run marks them again; deletes are
//! idempotent; restored packs are indexed before their record is removed.
//!
//! The prune itself, as a plan and its execution, is in the `prune` module beside this one.

use crate::StoreError;
pub use crate::format::marks::{GcRecord, Records, marked_packs, records};

pub(super) const SECOND: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * SECOND;
const DAY: i64 = 24 * HOUR;
/// Clocks of different hosts may disagree by this much.
pub const CLOCK_SKEW_NS: i64 = 10 * 60 * SECOND;
/// A prune refuses to run when this host's clock and the storage's differ by more.
pub const MAX_SKEW_NS: i64 = 5 * 60 * SECOND;
/// A session renewed within this long (three heartbeats of a minute) counts as running.
pub const RUNNING_NS: i64 = 3 * 60 * SECOND;
/// Blobs per rewritten index segment.
pub(super) const SEGMENT_BLOBS: usize = 100_000;

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

pub(super) fn refuse(problems: &[String]) -> StoreError {
    StoreError::corrupt(
        "repository",
        format!(
            "prune needs every snapshot, tree and index segment readable; run `bakare verify --repair` first: {}",
            problems.join("; ")
        ),
    )
}

pub(super) fn duration(ns: i64) -> String {
    let secs = ns.max(0) / SECOND;
    match secs {
        s if s >= 2 * 86400 => format!("{} days", s / 86400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}
