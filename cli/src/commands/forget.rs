//! `bakare forget [SNAPSHOT...] [--keep-last N] [--keep-daily N] ... [--host H] [--path P]
//! [--dry-run] [--prune]`: removes snapshots by a retention policy (grouped by host and
//! paths, as restic does) or by name. Their data goes with the next prunes.

use anyhow::{Result, bail};
use bakare_store::SnapshotId;
use bakare_store::forget::{KeepPolicy, plan, remove_snapshot};

use crate::Outcome;
use crate::args::ForgetArgs;
use crate::context::Context;
use crate::output::time;

pub fn run(ctx: &Context, a: &ForgetArgs) -> Result<Outcome> {
    let policy = KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within,
        tags: a
            .keep_tag
            .iter()
            .map(|list| list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect())
            .filter(|list: &Vec<String>| !list.is_empty())
            .collect(),
    };
    if policy.is_empty() && a.snapshots.is_empty() {
        bail!("nothing to forget: name snapshots or give a --keep-* policy (forget never removes every snapshot)");
    }
    let (repo, _) = ctx.open_master()?;
    let list = repo.snapshots()?;
    for p in &list.problems {
        say!("bakare: warning: {p}");
    }
    let mut remove: Vec<SnapshotId> = Vec::new();
    for spec in &a.snapshots {
        remove.push(repo.find_snapshot(spec)?.0);
    }
    // The same filter, and the same reading of `--path` (a trailing `/` is no part of it), as
    // every other command's.
    let filter =
        crate::args::FilterArgs { host: a.host.iter().cloned().collect(), path: a.path.clone(), tag: a.tag.clone() }
            .filter();
    let matching: Vec<_> = list.snapshots.iter().filter(|(_, s)| filter.matches(s)).cloned().collect();
    let groups = if policy.is_empty() { Vec::new() } else { plan(&matching, &policy) };
    for g in &groups {
        remove.extend(g.decisions.iter().filter(|d| !d.keep).map(|d| d.id));
    }
    remove.sort();
    remove.dedup();
    let by_id: std::collections::HashMap<_, _> = list.snapshots.iter().map(|(id, s)| (*id, s)).collect();
    if ctx.global.json {
        out!(
            "{}",
            serde_json::json!({
                "type": "forget", "dry_run": a.gc.dry_run, "groups": groups,
                "removed": remove.iter().map(SnapshotId::to_hex).collect::<Vec<_>>(),
            })
        )?;
    } else if !ctx.global.quiet {
        for g in &groups {
            out!("host {} paths {}:", g.host, g.paths.join(" "))?;
            for d in &g.decisions {
                let when = by_id.get(&d.id).map(|s| time(s.time_ns)).unwrap_or_default();
                let fate = if d.keep { format!("keep ({})", d.reasons.join(", ")) } else { "remove".into() };
                out!("  {} {when}  {fate}", &d.id.to_hex()[..8])?;
            }
        }
        // Snapshots named on the command line: say which, as the policy's groups do.
        if groups.is_empty() {
            for id in &remove {
                let s = by_id.get(id);
                let when = s.map(|s| time(s.time_ns)).unwrap_or_default();
                let host = s.map(|s| s.host.clone()).unwrap_or_default();
                let paths: Vec<String> = s
                    .map(|s| s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                    .unwrap_or_default();
                out!("  {} {when}  {host}  {}  remove", id.short(), paths.join(" "))?;
            }
        }
        let verb = if a.gc.dry_run { "would remove" } else { "removed" };
        out!("{verb} {}", crate::output::count(remove.len() as u64, "snapshot", "snapshots"))?;
    }
    if !a.gc.dry_run {
        for id in &remove {
            remove_snapshot(&repo, id)?;
        }
    }
    if a.prune {
        return crate::commands::prune::run_on(ctx, std::sync::Arc::new(repo), &a.gc);
    }
    Ok(Outcome::Success)
}
