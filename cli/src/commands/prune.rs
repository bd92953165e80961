//! `bakare prune [--dry-run]`: garbage collection in two phases, with no lock. Sweeps the
//! marks of earlier prunes whose grace period is over and that no running backup could
//! still use, then marks what nothing references now (deleted by a later prune).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use bakare_planner::Heartbeat;
use bakare_store::gc::GcPolicy;
use bakare_store::prune::prune;
use bakare_store::{Repository, Session, SessionOptions, clock};

use crate::Outcome;
use crate::args::GcArgs;
use crate::commands::backup::this_host;
use crate::context::Context;
use crate::output::{bytes, count};

pub fn run(ctx: &Context, a: &GcArgs) -> Result<Outcome> {
    let (repo, _) = ctx.open_master()?;
    run_on(ctx, Arc::new(repo), a)
}

pub fn run_on(ctx: &Context, repo: Arc<Repository>, a: &GcArgs) -> Result<Outcome> {
    let hour = 3_600_000_000_000i64;
    let max_unused_percent = parse_percent(&a.max_unused)?;
    let mut policy = GcPolicy {
        min_pack_age_ns: hours(a.min_pack_age_hours, hour),
        grace_ns: hours(a.grace_hours, hour),
        session_expiry_ns: hours(a.session_expiry_hours, hour),
        dry_run: a.dry_run,
        max_unused_percent,
        max_repack_bytes: a.max_repack_size.unwrap_or(u64::MAX),
    };
    if a.now {
        refuse_while_running(&repo, bakare_store::gc::RUNNING_NS)?;
        policy.min_pack_age_ns = 0;
        policy.grace_ns = 0;
    }
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
    // A dry run computes the plan and shows it; nothing is written. With --now: mark, then
    // at once sweep, until a round marks nothing more.
    let mut steps = Vec::new();
    let result = if a.dry_run {
        bakare_store::prune::plan(&repo, &host, own, &policy).map(|plan| {
            steps = plan.steps();
            plan.report
        })
    } else {
        let _shown = crate::progress::show_steps(
            repo.progress().clone(),
            ctx.global.json || ctx.global.quiet,
            "prune: repacking",
            "packs",
        );
        prune_rounds(&repo, &host, own, &policy, a.now)
    };
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
            if a.dry_run {
                o.insert("steps".into(), steps.clone().into());
            }
        }
        out!("{v}")?;
    } else if !ctx.global.quiet {
        print_report(&r, a.dry_run)?;
        if a.dry_run && !steps.is_empty() {
            out!("the plan, in order:")?;
            for (i, step) in steps.iter().enumerate() {
                out!("  {}. {step}", i + 1)?;
            }
        }
    }
    for p in &r.problems {
        say!("bakare: warning: {p}");
    }
    Ok(Outcome::Success)
}

/// One prune, or with `--now` rounds of mark and sweep until a round marks nothing more
/// and declares no session expired (the sweep of one round's repack may leave packs that
/// the next round marks; marks that a declared session held back are settled by the next).
fn prune_rounds(
    repo: &Repository,
    host: &str,
    own: Option<&Session>,
    policy: &GcPolicy,
    now: bool,
) -> bakare_store::Result<bakare_store::prune::PruneReport> {
    prune(repo, host, own, policy).and_then(|mut total| {
        for _ in 0..4 {
            // A round that declared sessions expired may have left marks they held back:
            // the next round settles them.
            if !now || (total.marked_packs == 0 && total.expired_sessions == 0) {
                break;
            }
            let next = prune(repo, host, own, policy)?;
            total = bakare_store::prune::PruneReport {
                deleted_packs: total.deleted_packs + next.deleted_packs,
                deleted_bytes: total.deleted_bytes + next.deleted_bytes,
                repacked_packs: total.repacked_packs + next.repacked_packs,
                repacked_bytes: total.repacked_bytes + next.repacked_bytes,
                repack_unused_bytes: total.repack_unused_bytes + next.repack_unused_bytes,
                ..next
            };
        }
        Ok(total)
    })
}

/// The report as lines for a person.
fn print_report(r: &bakare_store::prune::PruneReport, dry_run: bool) -> Result<()> {
    let would = if dry_run { "would be " } else { "" };
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
    if r.repacked_packs > 0 {
        out!(
            "{would}repacked: {} partly used packs: {} copied to new packs, {} unused in them",
            r.repacked_packs,
            bytes(r.repacked_bytes),
            bytes(r.repack_unused_bytes)
        )?;
    }
    if r.marked_packs > 0 {
        out!(
            "{would}marked: {} ({}), deleted by a prune run after {} UTC at the earliest (and once the \
                 backups running now have finished); `prune --now` deletes at once when nothing else runs",
            count(r.marked_packs as u64, "pack", "packs"),
            bytes(r.marked_bytes),
            crate::output::time(r.marked_space_back_ns)
        )?;
    } else {
        out!("{would}marked: nothing")?;
    }
    if r.unused_bytes_left > 0 {
        out!("unused: {} left in partly used packs (within --max-unused)", bytes(r.unused_bytes_left))?;
    }
    if r.young_packs > 0 {
        out!("kept: {} unreferenced packs younger than the minimum age", r.young_packs)?;
    }
    if r.indexed_packs > 0 {
        out!("{would}indexed: {} packs no index segment listed", r.indexed_packs)?;
    }
    if r.expired_sessions > 0 || r.removed_checkpoints > 0 {
        out!(
            "{would}declared expired: {} (marks they held back are settled by the next prune); removed: {}",
            crate::output::count(r.expired_sessions as u64, "session", "sessions"),
            crate::output::count(r.removed_checkpoints as u64, "checkpoint", "checkpoints")
        )?;
    }
    if r.removed_temporaries > 0 {
        out!("removed: {} temporary files that killed writers left", r.removed_temporaries)?;
    }
    for d in &r.deferred {
        out!("deferred: {d}")?;
    }
    Ok(())
}

/// `--max-unused`: "5%" or "5".
fn parse_percent(s: &str) -> Result<f64> {
    let t = s.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => anyhow::bail!("--max-unused {s:?}: give a percentage from 0 to 100 (like 5%)"),
    }
}

/// `--now` deletes without the waits that protect running backups: only when none runs.
fn refuse_while_running(repo: &Repository, silent_ns: i64) -> Result<()> {
    let (sessions, _) = repo.sessions()?;
    let now = clock::now_ns();
    let running: Vec<String> = sessions
        .iter()
        .filter(|s| !s.interrupted && now.saturating_sub(s.heartbeat_ns) <= silent_ns)
        .map(|s| format!("{} on {}", s.id_hex().get(..8).unwrap_or_default(), s.host))
        .collect();
    if !running.is_empty() {
        anyhow::bail!(
            "prune --now refused: {} running ({}); run a plain `bakare prune`, which waits for them",
            crate::output::count(running.len() as u64, "backup or prune is", "backups or prunes are"),
            running.join(", ")
        );
    }
    Ok(())
}

fn hours(h: f64, hour: i64) -> i64 {
    (h * hour as f64) as i64
}
