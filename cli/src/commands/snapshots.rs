//! `bakare snapshots`: list snapshots, oldest first.

use anyhow::Result;

use crate::Outcome;
use crate::args::SnapshotsArgs;
use crate::context::Context;
use crate::output::{bytes, time};

pub fn run(ctx: &Context, a: &SnapshotsArgs) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let list = repo.snapshots()?;
    let filter = a.filter.filter();
    let mut snaps: Vec<_> = list.snapshots.iter().filter(|(_, s)| filter.matches(s)).collect();
    if let Some(n) = a.latest {
        // The newest N of each host and set of paths, still oldest first.
        let mut seen: std::collections::HashMap<(&str, &[Vec<u8>]), usize> = std::collections::HashMap::new();
        let mut keep = vec![false; snaps.len()];
        for (i, (_, s)) in snaps.iter().enumerate().rev() {
            let count = seen.entry((s.host.as_str(), s.paths.as_slice())).or_default();
            if *count < n {
                *count += 1;
                if let Some(k) = keep.get_mut(i) {
                    *k = true;
                }
            }
        }
        let mut flags = keep.into_iter();
        snaps.retain(|_| flags.next().unwrap_or(false));
    }
    let (snaps, problems) = (&snaps, &list.problems);
    for p in problems {
        say!("bakare: warning: unreadable snapshot: {p}");
    }
    if ctx.global.json {
        let list: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id.to_hex(), "time": time(s.time_ns), "time_ns": s.time_ns, "host": s.host,
                    "user": s.user, "tags": s.tags,
                    "paths": s.paths.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>(),
                    "root": s.root.to_hex(), "stats": s.stats,
                })
            })
            .collect();
        out!("{}", serde_json::Value::Array(list))?;
        return Ok(Outcome::Success);
    }
    // A tags column only when some snapshot has tags.
    let tags_width = snaps.iter().map(|(_, s)| s.tags.join(",").len()).max().unwrap_or(0);
    let tags_col = |t: &str| if tags_width == 0 { String::new() } else { format!(" {t:<w$}", w = tags_width.max(4)) };
    out!("{:<9} {:<19} {:<16}{} {:>10}  paths", "id", "time (UTC)", "host", tags_col("tags"), "size")?;
    for (id, s) in snaps {
        let paths: Vec<_> = s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        out!(
            "{:<9} {:<19} {:<16}{} {:>10}  {}",
            id.short(),
            time(s.time_ns),
            s.host,
            tags_col(&s.tags.join(",")),
            bytes(s.stats.total_bytes),
            paths.join(" ")
        )?;
    }
    out!("{}", crate::output::count(snaps.len() as u64, "snapshot", "snapshots"))?;
    Ok(Outcome::Success)
}
