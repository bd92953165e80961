//! `bakare restore SNAPSHOT[:PATH] --target DIR`

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use bakare_planner::{Counters, RestoreOptions, RestoreSelect, find_node};

use crate::Outcome;
use crate::args::RestoreArgs;
use crate::commands::ls::split_target;
use crate::context::Context;
use crate::output::bytes;
use crate::progress::{Expected, Ticker};

pub fn run(ctx: &Context, a: &RestoreArgs) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let (spec, path) = split_target(&a.snapshot);
    let (id, snap) = repo.find_snapshot_for(spec, &a.filter.filter(), path)?;
    let start = find_node(&repo, snap.root, path).map_err(|e| crate::commands::ls::in_snapshot(e, &id, &snap))?;
    let counters = Arc::new(Counters::default());
    let began = Instant::now();
    let select = RestoreSelect::new(&a.include, &a.iinclude, &a.exclude, &a.iexclude)?;
    let report = {
        // The snapshot's totals, when all of it is restored.
        let whole = (path.is_empty() || path == "/") && select.takes_all();
        let expected = whole.then(|| Expected { files: snap.stats.files(), bytes: snap.stats.total_bytes });
        let _ticker =
            Ticker::start(counters.clone(), ctx.global.json, ctx.global.quiet, false, "restore", expected, None);
        let opts = RestoreOptions { overwrite: a.overwrite, keep_damaged: a.keep_damaged };
        bakare_planner::restore_selected(&repo, start, path, &a.target, opts, &select, &counters)?
    };
    crate::context::warn_index(&repo);
    let files = Counters::get(&counters.files);
    let written = Counters::get(&counters.bytes_written);
    let secs = began.elapsed().as_secs_f64();
    if ctx.global.json {
        for (p, why) in &report.skipped {
            out!("{}", serde_json::json!({"type": "skipped", "path": p, "message": why}))?;
        }
        for (p, why) in &report.incomplete {
            out!("{}", serde_json::json!({"type": "incomplete", "path": p, "message": why}))?;
        }
        for w in &report.fallbacks {
            out!("{}", serde_json::json!({"type": "warning", "message": w}))?;
        }
        out!(
            "{}",
            serde_json::json!({"type": "summary", "snapshot": id.to_hex(), "files": files,
                "dirs": Counters::get(&counters.dirs), "bytes": written, "seconds": secs,
                "skipped": report.skipped.len(), "incomplete": report.incomplete.len(), "kept": report.kept})
        )?;
    } else {
        for (p, why) in &report.skipped {
            say!("bakare: warning: {}: {why}", p.display());
        }
        for w in &report.fallbacks {
            say!("bakare: warning: {w}");
        }
        for (p, why) in &report.incomplete {
            say!("bakare: not restored completely: {}: {why}", p.display());
        }
        if !ctx.global.quiet {
            let kept = if report.kept > 0 { format!(" ({} already there, kept)", report.kept) } else { String::new() };
            out!(
                "restored snapshot {} to {}: {files} files{kept}, {} in {secs:.2} s",
                id.short(),
                a.target.display(),
                bytes(written)
            )?;
        }
    }
    if !report.selected_any {
        let what = if select.narrows() { "matched --include" } else { "was left by --exclude" };
        say!("bakare: warning: nothing in snapshot {} {what}", id.short());
    }
    if !report.incomplete.is_empty() {
        say!(
            "bakare: {} not restored completely (listed above); everything else was restored",
            crate::output::count(report.incomplete.len() as u64, "entry", "entries")
        );
        return Ok(Outcome::Incomplete);
    }
    Ok(Outcome::Success)
}
