//! `bakare backup PATH...`

use std::sync::Arc;

use anyhow::{Context as _, Result};
use bakare_planner::{BackupOptions, BackupReport, Counters, Excludes};

use crate::Outcome;
use crate::args::BackupArgs;
use crate::context::Context;
use crate::output::bytes;
use crate::progress::Ticker;

pub fn run(ctx: &Context, a: &BackupArgs) -> Result<Outcome> {
    // Check the sources before creating or unlocking anything.
    for p in &a.paths {
        std::fs::symlink_metadata(p).with_context(|| format!("source path {}", p.display()))?;
    }
    let excludes = Excludes::new(&a.exclude, &a.exclude_file, a.git_ignore)?;
    let (mut repo, created) = ctx.open_or_init()?;
    let memo = ctx.memo(&repo)?;
    if created {
        super::init::report(ctx, &repo, &ctx.repo_path()?)?;
    }
    repo.set_compression_level(match a.compression.as_str() {
        "off" => 0,
        "fast" => 1,
        "max" => 19,
        _ => 3,
    });
    let opts = BackupOptions {
        excludes,
        host: a.host.clone().unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()),
        user: std::env::var("USER").unwrap_or_default(),
        tags: a.tag.clone(),
        force_rehash: a.force_rehash,
    };
    let repo = Arc::new(repo);
    let counters = Arc::new(Counters::default());
    let report = {
        let _ticker = Ticker::start(counters.clone(), ctx.global.json, ctx.global.quiet, "backup");
        bakare_planner::backup(repo.clone(), &memo, &a.paths, &opts, counters.clone())?
    };
    crate::context::warn_index(&repo);
    print_report(ctx, &report)?;
    Ok(if report.errors.is_empty() { Outcome::Success } else { Outcome::Partial })
}

fn print_report(ctx: &Context, r: &BackupReport) -> std::io::Result<()> {
    let s = &r.snapshot.stats;
    if ctx.global.json {
        for (path, msg) in &r.errors {
            out!("{}", serde_json::json!({"type": "file_error", "path": path, "message": msg}))?;
        }
        out!(
            "{}",
            serde_json::json!({
                "type": "summary", "snapshot": r.id.to_hex(), "files_new": s.files_new,
                "files_changed": s.files_changed, "files_unchanged": s.files_unchanged,
                "files_read": s.files_read, "files_reused": s.files_reused, "dirs": s.dirs,
                "errors": s.errors, "bytes_read": s.bytes_read, "bytes_added": s.bytes_added,
                "duration_ms": s.duration_ms,
            })
        )?;
        return Ok(());
    }
    for (path, msg) in &r.errors {
        eprintln!("bakare: error: {}: {msg}", path.display());
    }
    for w in &r.memo_warnings {
        eprintln!("bakare: warning: {w}");
    }
    if ctx.global.quiet {
        return Ok(());
    }
    out!("snapshot {} saved", r.id.short())?;
    out!(
        "files:    {} new, {} changed, {} unchanged, {} errors",
        s.files_new,
        s.files_changed,
        s.files_unchanged,
        s.errors
    )?;
    out!("folders:  {}", s.dirs)?;
    out!(
        "read:     {} from {} files ({} files reused from the local memo without reading)",
        bytes(s.bytes_read),
        s.files_read,
        s.files_reused
    )?;
    out!("added:    {} (after deduplication and compression)", bytes(s.bytes_added))?;
    out!("duration: {:.2} s", s.duration_ms as f64 / 1000.0)
}
