//! `bakare restore SNAPSHOT[:PATH] --target DIR`

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use bakare_planner::{Counters, RestoreOptions, find_node};

use crate::Outcome;
use crate::args::RestoreArgs;
use crate::commands::ls::split_target;
use crate::context::Context;
use crate::output::bytes;
use crate::progress::{Expected, Ticker};

pub fn run(ctx: &Context, a: &RestoreArgs) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let (spec, path) = split_target(&a.snapshot);
    let (id, snap) = repo.find_snapshot(spec)?;
    let start = find_node(&repo, snap.root, path)?;
    let counters = Arc::new(Counters::default());
    let began = Instant::now();
    let report = {
        // The snapshot's totals, when all of it is restored.
        let whole = path.is_empty() || path == "/";
        let expected = whole.then(|| Expected { files: snap.stats.files(), bytes: snap.stats.total_bytes });
        let _ticker = Ticker::start(counters.clone(), ctx.global.json, ctx.global.quiet, "restore", expected);
        bakare_planner::restore(&repo, start, &a.target, RestoreOptions { overwrite: a.overwrite }, &counters)?
    };
    crate::context::warn_index(&repo);
    let files = Counters::get(&counters.files);
    let written = Counters::get(&counters.bytes_written);
    let secs = began.elapsed().as_secs_f64();
    if ctx.global.json {
        for (p, why) in &report.skipped {
            out!("{}", serde_json::json!({"type": "skipped", "path": p, "message": why}))?;
        }
        out!(
            "{}",
            serde_json::json!({"type": "summary", "snapshot": id.to_hex(), "files": files,
                "dirs": Counters::get(&counters.dirs), "bytes": written, "seconds": secs, "skipped": report.skipped.len()})
        )?;
    } else {
        for (p, why) in &report.skipped {
            eprintln!("bakare: warning: {}: {why}", p.display());
        }
        if !ctx.global.quiet {
            out!(
                "restored snapshot {} to {}: {files} files, {} in {secs:.2} s",
                id.short(),
                a.target.display(),
                bytes(written)
            )?;
        }
    }
    Ok(Outcome::Success)
}
