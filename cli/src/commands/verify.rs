//! `bakare verify [--read-data | --read-data-subset N/M] [--repair [--source PATH]]`

use anyhow::Result;
use bakare_planner::{CheckOptions, check};
use bakare_store::verify::{ReadData, Survey};

use crate::Outcome;
use crate::args::VerifyArgs;
use crate::context::Context;
use crate::output::{bytes, count};

pub fn run(ctx: &Context, a: &VerifyArgs) -> Result<Outcome> {
    let (repo, pass) = ctx.open_master()?;
    let read_data = match (a.read_data, a.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some((n, m))) => ReadData::Subset { n, m },
        (false, None) => ReadData::No,
    };
    let progress = std::sync::Arc::new(bakare_store::progress::Progress::default());
    let opts = CheckOptions {
        read_data,
        repair: a.repair,
        source: a.source.clone(),
        passphrase: Some(pass.into_bytes()),
        progress: Some(progress.clone()),
    };
    let out = {
        let _shown = crate::progress::show_packs(progress, ctx.global.json || ctx.global.quiet, "verify");
        check(repo.backend().clone(), repo.access().clone(), &opts)?
    };
    let last = out.after.as_ref().unwrap_or(&out.before);
    // Files an earlier repair marked lost are known: no longer a failure of this run.
    let lost_any = !out.rewritten.is_empty() || last.unmarked_lost().next().is_some();
    if ctx.global.json {
        out!(
            "{}",
            serde_json::json!({
                "type": "verify",
                "problems": out.before.problems,
                // What is still lost at the end (parity and --source may have recovered some
                // of what was found lost), and what was found before repair.
                "lost": last.lost,
                "lost_found": out.before.lost,
                "actions": out.actions,
                "recovered_chunks": out.recovered,
                "rewritten_snapshots": out.rewritten.iter().map(|(o, n)| [o.to_hex(), n.to_hex()]).collect::<Vec<_>>(),
                "problems_after": out.after.as_ref().map(|s| &s.problems),
                "clean": last.is_clean() && !lost_any,
                "snapshots": out.before.snapshots.len(), "packs": out.before.packs.len(),
                "trees": out.before.trees_checked, "blobs_read": out.before.blobs_read, "bytes_read": out.before.bytes_read,
            })
        )?;
    } else {
        print_survey(ctx, &out.before, "")?;
        for action in &out.actions {
            out!("repair: {action}")?;
        }
        if let Some(after) = &out.after {
            print_survey(ctx, after, "after repair: ")?;
        }
    }
    Ok(if last.is_clean() && !lost_any { Outcome::Success } else { Outcome::Problems })
}

fn print_survey(ctx: &Context, s: &Survey, prefix: &str) -> std::io::Result<()> {
    for p in &s.problems {
        let how = if p.repairable { "repairable" } else { "not repairable" };
        out!("{prefix}{}: {} ({how})", p.object, p.problem)?;
    }
    if s.unmarked_lost().next().is_some() {
        out!("{prefix}files with lost data (snapshot, path, bytes):")?;
        for l in s.unmarked_lost() {
            out!("  {} {} {}", l.snapshot.get(..8).unwrap_or(&l.snapshot), l.path, bytes(l.lost_bytes))?;
        }
    }
    for n in &s.notes {
        out!("{prefix}note: {n}")?;
    }
    if !ctx.global.quiet {
        out!(
            "{prefix}{}, {}, {} checked, {} read ({}): {}",
            count(s.snapshots.len() as u64, "snapshot", "snapshots"),
            count(s.packs.len() as u64, "pack", "packs"),
            count(s.trees_checked, "tree", "trees"),
            count(s.blobs_read, "blob", "blobs"),
            bytes(s.bytes_read),
            if s.is_clean() {
                "no problems".to_string()
            } else {
                count(s.problems.len() as u64, "problem", "problems")
            }
        )?;
    }
    Ok(())
}
