//! `bakare snapshots`: list snapshots, oldest first.

use anyhow::Result;

use crate::Outcome;
use crate::context::Context;
use crate::output::{bytes, time};

pub fn run(ctx: &Context) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let list = repo.snapshots()?;
    let (snaps, problems) = (&list.snapshots, &list.problems);
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
    out!("{:<9} {:<19} {:<16} {:>10}  paths", "id", "time (UTC)", "host", "size")?;
    for (id, s) in snaps {
        let paths: Vec<_> = s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        out!(
            "{:<9} {:<19} {:<16} {:>10}  {}",
            id.short(),
            time(s.time_ns),
            s.host,
            bytes(s.stats.total_bytes),
            paths.join(" ")
        )?;
    }
    out!("{}", crate::output::count(snaps.len() as u64, "snapshot", "snapshots"))?;
    Ok(Outcome::Success)
}
