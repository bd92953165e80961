//! `bakare copy --from-repo SRC [SNAPSHOT...]`: snapshots of another repository copied into
//! this one (see `bakare_planner::Copier`).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use bakare_planner::{Copier, Counters, copied_from};

use crate::Outcome;
use crate::args::CopyArgs;
use crate::context::Context;
use crate::output::{bytes, count};
use crate::progress::Ticker;

pub fn run(ctx: &Context, a: &CopyArgs) -> Result<Outcome> {
    let from = a
        .from_repo
        .clone()
        .or_else(|| std::env::var_os("BAKARE_FROM_REPOSITORY").filter(|v| !v.is_empty()).map(Into::into))
        .ok_or_else(|| {
            anyhow!("copy needs the repository to copy from: --from-repo REPO (or BAKARE_FROM_REPOSITORY)")
        })?;
    let source = ctx.source(from, a.from_passphrase_file.clone(), a.from_passphrase_command.clone());
    let (src, _) = source.open_master()?;
    let mut dst = ctx.open(true)?;
    if dst.config().id == src.config().id {
        anyhow::bail!("the source and the target are the same repository");
    }
    dst.set_compression_level(bakare_store::DEFAULT_COMPRESSION);
    let dst = Arc::new(dst);
    let filter = a.filter.filter();
    let mut chosen = if a.snapshots.is_empty() {
        src.snapshots()?.snapshots.into_iter().filter(|(_, s)| filter.matches(s)).collect::<Vec<_>>()
    } else {
        let mut v = Vec::new();
        for spec in &a.snapshots {
            v.push(src.find_snapshot_for(spec, &filter, "")?);
        }
        v
    };
    chosen.sort_by_key(|(_, s)| s.time_ns);
    chosen.dedup_by_key(|(id, _)| *id);
    // Snapshots copied before say so in their log; with a put-only key to the target its
    // snapshots cannot be read, and everything asked is copied.
    let src_repo = src.config().id_hex();
    let done: HashSet<String> = match dst.access().master() {
        Ok(_) => dst.snapshots()?.snapshots.into_iter().flat_map(|(_, s)| s.log).collect(),
        Err(_) => HashSet::new(),
    };
    let host = super::backup::this_host();
    let counters = Arc::new(Counters::default());
    let copier = Copier::new(&src, dst.clone(), counters.clone());
    let (mut copied, mut skipped, mut damaged) = (0u64, 0u64, 0usize);
    for (id, snap) in &chosen {
        if done.contains(&copied_from(id, &src_repo)) {
            skipped += 1;
            if !ctx.global.quiet && !ctx.global.json {
                say!("bakare: snapshot {} was copied before; skipped", id.short());
            }
            continue;
        }
        let stored_before = dst.stats().bytes_stored.load(std::sync::atomic::Ordering::Relaxed);
        let result = {
            let _ticker = Ticker::start(counters.clone(), ctx.global.json, ctx.global.quiet, false, "copy", None, None);
            copier.copy(id, snap, &host)?
        };
        let added = dst.stats().bytes_stored.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(stored_before);
        copied += 1;
        for (path, why) in &result.damaged {
            say!("bakare: error: {path}: {why}");
        }
        damaged += result.damaged.len();
        if ctx.global.json {
            out!(
                "{}",
                serde_json::json!({"type": "copied", "from": id.to_hex(), "snapshot": result.id.to_hex(),
                    "bytes_added": added, "damaged": result.damaged.len()})
            )?;
        } else if !ctx.global.quiet {
            out!(
                "snapshot {} ({}, {}) copied as {}: {} added",
                id.short(),
                snap.host,
                crate::output::time(snap.time_ns),
                result.id.short(),
                bytes(added)
            )?;
        }
    }
    if !ctx.global.quiet && !ctx.global.json {
        out!(
            "{} copied, {} copied before",
            count(copied, "snapshot", "snapshots"),
            count(skipped, "snapshot", "snapshots")
        )?;
    }
    Ok(if damaged > 0 { Outcome::Partial } else { Outcome::Success })
}
