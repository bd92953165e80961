//! `bakare tag [SNAPSHOT...] --add T | --remove T | --set T`: change snapshots' tags.
//!
//! A snapshot is named by the hash of its bytes, so a changed one is written anew (mirror
//! first) and the old one removed after: a crash in between leaves both, never neither.

use anyhow::Result;

use crate::Outcome;
use crate::args::TagArgs;
use crate::context::Context;

pub fn run(ctx: &Context, a: &TagArgs) -> Result<Outcome> {
    let (repo, _) = ctx.open_master()?;
    let chosen = super::chosen_snapshots(&repo, &a.snapshots, &a.filter.filter())?;
    let mut changed = 0u64;
    for (old_id, old) in chosen {
        let mut tags = if a.set.is_empty() { old.tags.clone() } else { Vec::new() };
        for t in a.set.iter().chain(&a.add) {
            if !t.is_empty() && !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags.retain(|t| !a.remove.contains(t));
        if tags == old.tags {
            continue;
        }
        let snapshot = bakare_store::Snapshot { tags, ..old };
        let new_id = repo.save_snapshot(&snapshot)?;
        repo.remove_snapshot(&old_id)?;
        changed += 1;
        if ctx.global.json {
            out!(
                "{}",
                serde_json::json!({"type": "tag", "old": old_id.to_hex(), "new": new_id.to_hex(), "tags": snapshot.tags})
            )?;
        } else if !ctx.global.quiet {
            out!("{} -> {}  tags: {}", old_id.short(), new_id.short(), snapshot.tags.join(","))?;
        }
    }
    if !ctx.global.quiet && !ctx.global.json {
        out!("changed {}", crate::output::count(changed, "snapshot", "snapshots"))?;
    }
    Ok(Outcome::Success)
}
