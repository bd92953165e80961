//! `bakare prune [--dry-run]`: garbage collection in two phases, with no lock. Sweeps the
//! marks of earlier prunes whose grace period is over and that no running backup could
//! still use, then marks what nothing references now (deleted by a later prune).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use bakare_planner::Heartbeat;
use bakare_store::gc::{GcPolicy, prune};
use bakare_store::{Repository, Session, SessionOptions, clock};

use crate::Outcome;
use crate::args::GcArgs;
use crate::commands::backup::this_host;
use crate::context::Context;
use crate::output::bytes;

pub fn run(ctx: &Context, a: &GcArgs) -> Result<Outcome> {
    let (repo, _) = ctx.open_master()?;
    run_on(ctx, Arc::new(repo), a)
}

pub fn run_on(ctx: &Context, repo: Arc<Repository>, a: &GcArgs) -> Result<Outcome> {
    let hour = 3_600_000_000_000i64;
    let policy = GcPolicy {
        min_pack_age_ns: hours(a.min_pack_age_hours, hour),
        grace_ns: hours(a.grace_hours, hour),
        session_expiry_ns: hours(a.session_expiry_hours, hour),
        dry_run: a.dry_run,
    };
    let host = this_host();
    // A session of its own: a sweep elsewhere waits for this prune as for a backup, so that
    // an index segment it writes late never lists a pack that sweep deletes.
    let now = clock::now_ns();
    let session = Session {
        id: Session::new_id()?,
        host: host.clone(),
        started_ns: now,
        heartbeat_ns: now,
        paths: Vec::new(),
        options: SessionOptions::default(),
        checkpoints: 0,
        interrupted: false,
        committing: None,
    };
    let heartbeat = if a.dry_run {
        None
    } else {
        repo.put_session(&session).context("registering the prune's session")?;
        Some(Heartbeat::start(repo.clone(), session.clone(), std::time::Duration::from_secs(60)))
    };
    let own = heartbeat.as_ref().map(|_| &session);
    let result = prune(&repo, &host, own, &policy);
    if let Some(h) = heartbeat {
        drop(h);
        repo.remove_session(&session)?;
    }
    let r = result?;
    if ctx.global.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), "prune".into());
            o.insert("dry_run".into(), a.dry_run.into());
        }
        out!("{v}")?;
    } else if !ctx.global.quiet {
        let would = if a.dry_run { "would be " } else { "" };
        use crate::output::count;
        out!(
            "{}, {}, {} in {}",
            count(r.snapshots as u64, "snapshot", "snapshots"),
            count(r.live_sessions as u64, "running session", "running sessions"),
            count(r.referenced_blobs as u64, "referenced blob", "referenced blobs"),
            count(r.packs as u64, "pack", "packs")
        )?;
        out!("{would}deleted: {} packs ({}), marked earlier", r.deleted_packs, bytes(r.deleted_bytes))?;
        if r.restored_packs > 0 {
            out!("{would}kept: {} marked packs that are used again", r.restored_packs)?;
        }
        out!(
            "{would}marked: {} unreferenced packs ({}), deleted by a prune after the grace period",
            r.marked_packs,
            bytes(r.marked_bytes)
        )?;
        if r.young_packs > 0 {
            out!("kept: {} unreferenced packs younger than the minimum age", r.young_packs)?;
        }
        if r.indexed_packs > 0 {
            out!("{would}indexed: {} packs no index segment listed", r.indexed_packs)?;
        }
        if r.expired_sessions > 0 || r.removed_checkpoints > 0 {
            out!("{would}removed: {} expired sessions, {} checkpoints", r.expired_sessions, r.removed_checkpoints)?;
        }
        if r.removed_temporaries > 0 {
            out!("removed: {} temporary files that killed writers left", r.removed_temporaries)?;
        }
        for d in &r.deferred {
            out!("deferred: {d}")?;
        }
    }
    for p in &r.problems {
        say!("bakare: warning: {p}");
    }
    Ok(Outcome::Success)
}

fn hours(h: f64, hour: i64) -> i64 {
    (h * hour as f64) as i64
}
