//! `bakare debug ...`: hidden tools for benchmarks and diagnosis.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::Outcome;
use crate::context::Context;

/// Times a bare parallel lstat walk of `path`.
pub fn stat_walk(ctx: &Context, path: &Path) -> Result<Outcome> {
    let started = Instant::now();
    let (dirs, others) = bakare_planner::stat_walk(path).with_context(|| format!("walking {}", path.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if ctx.global.json {
        out!("{}", serde_json::json!({"type": "stat_walk", "dirs": dirs, "entries": others, "seconds": secs}))?;
    } else {
        out!("{dirs} folders, {others} other entries, {secs:.3} s")?;
    }
    Ok(Outcome::Success)
}

/// Opens a local state file with redb's integrity check (run by backups in a child process).
pub fn check_state(ctx: &Context, path: &Path) -> Result<Outcome> {
    bakare_planner::Memo::check_file(path, &ctx.budget).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Outcome::Success)
}
