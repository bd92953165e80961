//! `bakare snapshots`: list snapshots, oldest first; filtered (`--host`, `--path`, `--tag`),
//! grouped (`--group-by host,paths,tags`), the newest N of each group (`--latest N`), in
//! local time (UTC with `--utc`).

use anyhow::Result;
use bakare_store::{Snapshot, SnapshotId};

use crate::Outcome;
use crate::args::{GroupBy, SnapshotsArgs};
use crate::context::Context;
use crate::output::{bytes, local_time, time};

/// The key of a snapshot's group: the fields grouped by, the others empty.
fn group_key(g: GroupBy, s: &Snapshot) -> (String, Vec<Vec<u8>>, Vec<String>) {
    let mut tags = if g.tags { s.tags.clone() } else { Vec::new() };
    tags.sort();
    (if g.host { s.host.clone() } else { String::new() }, if g.paths { s.paths.clone() } else { Vec::new() }, tags)
}

pub fn run(ctx: &Context, a: &SnapshotsArgs) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let list = repo.snapshots()?;
    for p in &list.problems {
        say!("bakare: warning: unreadable snapshot: {p}");
    }
    let filter = a.filter.filter();
    let grouping = a.group_by.or(a.latest.map(|_| GroupBy { host: true, paths: true, tags: false }));
    // Groups in the order of their oldest member; members oldest first.
    let mut groups: Vec<(_, Vec<&(SnapshotId, Snapshot)>)> = Vec::new();
    for entry in list.snapshots.iter().filter(|(_, s)| filter.matches(s)) {
        let key = grouping.map(|g| group_key(g, &entry.1));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(entry),
            None => groups.push((key, vec![entry])),
        }
    }
    if let Some(n) = a.latest {
        for (_, members) in &mut groups {
            let drop = members.len().saturating_sub(n);
            members.drain(..drop);
        }
    }
    let when = |ns: i64| if a.utc { time(ns) } else { local_time(ns) };
    if ctx.global.json {
        let json = |members: &[&(SnapshotId, Snapshot)]| -> Vec<serde_json::Value> {
            members
                .iter()
                .map(|(id, s)| {
                    serde_json::json!({
                        "id": id.to_hex(), "time": time(s.time_ns), "time_ns": s.time_ns, "host": s.host,
                        "user": s.user, "tags": s.tags,
                        "paths": s.paths.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>(),
                        "root": s.root.to_hex(), "stats": s.stats, "log": s.log,
                    })
                })
                .collect()
        };
        let value = match grouping {
            None => serde_json::Value::Array(groups.iter().flat_map(|(_, m)| json(m)).collect()),
            Some(_) => serde_json::Value::Array(
                groups
                    .iter()
                    .map(|(key, m)| {
                        let (host, paths, tags) = key.clone().unwrap_or_default();
                        serde_json::json!({"group": {"host": host, "tags": tags,
                            "paths": paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>()},
                            "snapshots": json(m)})
                    })
                    .collect(),
            ),
        };
        out!("{value}")?;
        return Ok(Outcome::Success);
    }
    let all: Vec<_> = groups.iter().flat_map(|(_, m)| m.iter()).collect();
    // A tags column only when some snapshot has tags.
    let tags_width = all.iter().map(|(_, s)| s.tags.join(",").len()).max().unwrap_or(0);
    let tags_col = |t: &str| if tags_width == 0 { String::new() } else { format!(" {t:<w$}", w = tags_width.max(4)) };
    let time_width = all.iter().map(|(_, s)| when(s.time_ns).len()).max().unwrap_or(19).max(4);
    let zone = if a.utc { "time (UTC)" } else { "time" };
    let mut shown = 0u64;
    for (key, members) in &groups {
        if let Some((host, paths, tags)) = key {
            let mut head = Vec::new();
            if grouping.is_some_and(|g| g.host) {
                head.push(format!("host {host}"));
            }
            if grouping.is_some_and(|g| g.paths) {
                let p: Vec<_> = paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
                head.push(format!("paths {}", p.join(" ")));
            }
            if grouping.is_some_and(|g| g.tags) {
                head.push(format!("tags {}", if tags.is_empty() { "(none)".to_string() } else { tags.join(",") }));
            }
            if shown > 0 {
                out!("")?;
            }
            out!("{}:", head.join(", "))?;
        }
        if key.is_some() || shown == 0 {
            out!("{:<9} {zone:<time_width$} {:<16}{} {:>10}  paths", "id", "host", tags_col("tags"), "size")?;
        }
        for (id, s) in members {
            let paths: Vec<_> = s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            out!(
                "{:<9} {:<time_width$} {:<16}{} {:>10}  {}",
                id.short(),
                when(s.time_ns),
                s.host,
                tags_col(&s.tags.join(",")),
                bytes(s.stats.total_bytes),
                paths.join(" ")
            )?;
            if a.log {
                for line in &s.log {
                    out!("    {line}")?;
                }
            }
            shown += 1;
        }
    }
    if shown == 0 {
        out!("{:<9} {zone:<time_width$} {:<16} {:>10}  paths", "id", "host", "size")?;
    }
    out!("{}", crate::output::count(shown, "snapshot", "snapshots"))?;
    Ok(Outcome::Success)
}
