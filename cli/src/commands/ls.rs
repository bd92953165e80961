//! `bakare ls SNAPSHOT[:PATH]`: list a folder of a snapshot, or all of it with -R.

use anyhow::Result;
use bakare_planner::{Start, find_node};
use bakare_store::{BlobId, Entry, Node, Repository, Snapshot, SnapshotId};

use crate::Outcome;
use crate::args::LsArgs;
use crate::context::Context;
use crate::output::time;

pub fn run(ctx: &Context, a: &LsArgs) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let (spec, path) = target_and_path(&a.target, a.dir.as_deref())?;
    let (id, snap) = repo.find_snapshot_for(spec, &a.filter.filter(), path)?;
    let prefix = format!("/{}", path.trim_matches('/'));
    let node = find_node(&repo, snap.root, path).map_err(|e| in_snapshot(e, &id, &snap))?;
    match node {
        Start::Tree(id) => list_tree(ctx, a, &repo, &id, prefix.trim_end_matches('/'))?,
        Start::Entry(e) => print_entry(ctx, a, &prefix, &e)?,
    }
    crate::context::warn_index(&repo);
    Ok(Outcome::Success)
}

/// `SNAPSHOT:PATH` → (`SNAPSHOT`, `PATH`).
pub fn split_target(target: &str) -> (&str, &str) {
    target.split_once(':').unwrap_or((target, ""))
}

/// `SNAPSHOT:PATH`, or restic's `SNAPSHOT PATH` (`dir`): (`SNAPSHOT`, `PATH`).
pub fn target_and_path<'a>(target: &'a str, dir: Option<&'a str>) -> anyhow::Result<(&'a str, &'a str)> {
    match (split_target(target), dir) {
        ((spec, ""), Some(path)) => Ok((spec, path)),
        (_, Some(_)) => anyhow::bail!("give the path once: as SNAPSHOT:PATH or as SNAPSHOT PATH"),
        (both, None) => Ok(both),
    }
}

/// A path missing from a snapshot, said with the snapshot it was looked for in.
pub fn in_snapshot(e: bakare_planner::PlanError, id: &SnapshotId, snap: &Snapshot) -> anyhow::Error {
    match e {
        bakare_planner::PlanError::NoSuchPath(p) => {
            let paths: Vec<_> = snap.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            anyhow::anyhow!(
                "{p:?} is not in snapshot {} (host {}, {}, paths {})",
                id.short(),
                snap.host,
                time(snap.time_ns),
                paths.join(" ")
            )
        }
        other => other.into(),
    }
}

fn list_tree(ctx: &Context, a: &LsArgs, repo: &Repository, id: &BlobId, prefix: &str) -> Result<()> {
    for e in repo.load_tree(id)?.entries {
        let path = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
        print_entry(ctx, a, &path, &e)?;
        if let (true, Node::Dir { tree }) = (a.recursive, &e.node) {
            list_tree(ctx, a, repo, tree, &path)?;
        }
    }
    Ok(())
}

fn print_entry(ctx: &Context, a: &LsArgs, path: &str, e: &Entry) -> std::io::Result<()> {
    let size = match &e.node {
        Node::File { size, .. } => *size,
        _ => 0,
    };
    if ctx.global.json {
        out!(
            "{}",
            serde_json::json!({
                "path": path, "type": e.node.kind_name(), "size": size, "mode": e.meta.mode,
                "uid": e.meta.uid, "gid": e.meta.gid, "mtime_ns": e.meta.mtime_ns, "error": e.error,
                "ctime_ns": (e.extra.ctime_ns != 0).then_some(e.extra.ctime_ns), "btime_ns": e.extra.btime_ns,
                "link": (e.extra.link != 0).then_some(e.extra.link),
                "xattrs": e.extra.xattrs.iter().map(|x| String::from_utf8_lossy(&x.name).into_owned()).collect::<Vec<_>>(),
            })
        )?;
    } else if a.long {
        out!("{:<8} {:04o} {:>12} {} {path}", e.node.kind_name(), e.meta.mode, size, time(e.meta.mtime_ns))?;
    } else {
        out!("{path}")?;
    }
    Ok(())
}
