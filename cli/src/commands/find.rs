//! `bakare find QUERY`, `bakare history PATH` and `bakare diff A B`: where files are across
//! snapshots, every version of one, and what changed between two snapshots.

use std::os::unix::ffi::OsStrExt;

use anyhow::{Context as _, Result, bail};
use bakare_planner::{NameIndex, Version, diff, index_path};
use bakare_store::{BlobId, Repository, Snapshot, SnapshotId};

use crate::Outcome;
use crate::args::{DiffArgs, FindArgs, HistoryArgs};
use crate::context::Context;
use crate::output::{bytes, time};

/// The snapshots a search covers.
fn chosen(repo: &Repository, specs: &[String], host: Option<&str>) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let list = repo.snapshots()?;
    for p in &list.problems {
        say!("bakare: warning: unreadable snapshot: {p}");
    }
    let mut out: Vec<(SnapshotId, Snapshot)> = if specs.is_empty() {
        list.snapshots
    } else {
        specs.iter().map(|s| repo.find_snapshot(s)).collect::<Result<_, _>>()?
    };
    out.retain(|(_, s)| host.is_none_or(|h| s.host == h));
    Ok(out)
}

/// One line per version, a run of versions with the same content folded into one line
/// (`first … last, N snapshots, same content`): 20 hits over 26 snapshots are 20 short
/// groups, not 540 lines.
fn print_versions(versions: &[Version]) -> std::io::Result<()> {
    let mut i = 0;
    while i < versions.len() {
        let Some(v) = versions.get(i) else { break };
        // The versions after `v` with its content.
        let same = versions.get(i + 1..).unwrap_or_default().iter().take_while(|w| w.changed == Some(false)).count();
        let change = match v.changed {
            None => "first seen",
            Some(true) => "changed",
            Some(false) => "same content",
        };
        let short = |s: &str| s.get(..8).unwrap_or(s).to_string();
        if same > 0
            && let Some(last) = versions.get(i + same)
        {
            out!(
                "  {} … {}  {} … {}  {:>10}  {:<8} modified {}  {change}, the same in {same} more {}",
                time(v.time_ns),
                time(last.time_ns),
                short(&v.snapshot),
                short(&last.snapshot),
                bytes(v.size),
                v.kind,
                time(v.mtime_ns),
                if same == 1 { "snapshot" } else { "snapshots" },
            )?;
        } else {
            out!(
                "  {}  {}  {:>10}  {:<8} modified {}  {change}",
                time(v.time_ns),
                short(&v.snapshot),
                bytes(v.size),
                v.kind,
                time(v.mtime_ns)
            )?;
        }
        i += same + 1;
    }
    Ok(())
}

/// The name index of the repository, brought up to date; a note on stderr when it was
/// rebuilt.
fn name_index(ctx: &Context, repo: &Repository) -> Result<NameIndex> {
    let all = repo.snapshots()?.snapshots;
    let path = ctx.cache_folder(repo.config())?.map(|f| index_path(&f));
    // Damage redb panics on is damage like any other: the file is built again.
    let _shown = crate::progress::show_steps(
        repo.progress().clone(),
        ctx.global.json || ctx.global.quiet,
        "indexing names",
        "snapshots",
    );
    let open =
        || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| NameIndex::open(path.as_deref(), repo, &all)));
    let idx = match open() {
        Ok(idx) => idx?,
        Err(_) => {
            remove_index(ctx, repo, "it made redb panic")?;
            open().map_err(|_| anyhow::anyhow!("the local name index could not be built (redb panicked twice)"))??
        }
    };
    if idx.report.rebuilt && !ctx.global.quiet {
        say!("bakare: the local name index was damaged or outdated and has been built again");
    }
    Ok(idx)
}

/// Deletes the local name index file (the next open builds it again).
fn remove_index(ctx: &Context, repo: &Repository, why: &str) -> Result<()> {
    if let Some(path) = ctx.cache_folder(repo.config())?.map(|f| index_path(&f)) {
        if !ctx.global.quiet {
            say!("bakare: the local name index is damaged ({why}); building it again");
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs a query on the name index; when the index turns out damaged on the way (a row that
/// does not open, a panic inside redb), builds it again and runs the query once more, so
/// that a damaged cache costs one slower run, never a failure.
fn query<T>(
    ctx: &Context,
    repo: &Repository,
    f: impl Fn(&NameIndex) -> Result<T, bakare_planner::PlanError>,
) -> Result<(NameIndex, T)> {
    let idx = name_index(ctx, repo)?;
    let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&idx))) {
        Ok(Ok(v)) => return Ok((idx, v)),
        Ok(Err(bakare_planner::PlanError::NameIndexDamaged(why))) => why,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => "a query made redb panic".to_string(),
    };
    drop(idx);
    remove_index(ctx, repo, &why)?;
    let idx = name_index(ctx, repo)?;
    let v = f(&idx)?;
    Ok((idx, v))
}

pub fn find(ctx: &Context, a: &FindArgs) -> Result<Outcome> {
    let (repo, _) = ctx.open_master()?;
    let snaps = chosen(&repo, &a.snapshot, a.host.as_deref())?;
    let started = std::time::Instant::now();
    let prefix = a.path.as_ref().map(|p| p.to_string_lossy().into_owned());
    let (idx, hits) = query(ctx, &repo, |idx| idx.find(&a.query, &snaps, prefix.as_deref(), a.limit))?;
    let query_ms = started.elapsed().as_millis() as u64;
    if ctx.global.json {
        for h in &hits {
            out!("{}", serde_json::json!({"type": "match", "path": h.path, "score": h.score, "versions": h.versions}))?;
        }
        out!(
            "{}",
            serde_json::json!({"type": "summary", "matches": hits.len(), "snapshots": snaps.len(), "index": idx.report, "query_ms": query_ms})
        )?;
    } else {
        for h in &hits {
            out!("{}", h.path)?;
            print_versions(&h.versions)?;
        }
        if hits.is_empty() && !ctx.global.quiet {
            out!(
                "no path in {} matches {:?}",
                crate::output::count(snaps.len() as u64, "snapshot", "snapshots"),
                a.query
            )?;
        }
    }
    Ok(Outcome::Success)
}

pub fn history(ctx: &Context, a: &HistoryArgs) -> Result<Outcome> {
    let (repo, _) = ctx.open_master()?;
    let snaps = chosen(&repo, &[], a.host.as_deref())?;
    let path = std::path::absolute(&a.path).unwrap_or_else(|_| a.path.clone());
    let mut bytes = path.as_os_str().as_bytes();
    while bytes.len() > 1 && bytes.ends_with(b"/") {
        bytes = &bytes[..bytes.len() - 1];
    }
    let (_, found) = query(ctx, &repo, |idx| idx.history(bytes, &snaps))?;
    let Some(h) = found else {
        // A folder: its versions are its trees, read from each snapshot that holds it.
        return folder_history(ctx, &repo, &snaps, &String::from_utf8_lossy(bytes));
    };
    if ctx.global.json {
        out!(
            "{}",
            serde_json::json!({"type": "history", "path": h.path, "versions": h.versions, "moved_to": h.moved_to})
        )?;
    } else {
        out!("{}", h.path)?;
        print_versions(&h.versions)?;
        for (snap, to) in &h.moved_to {
            out!("  then in {}: the same content at {to}", snap.get(..8).unwrap_or(snap))?;
        }
    }
    Ok(Outcome::Success)
}

pub fn run_diff(ctx: &Context, a: &DiffArgs) -> Result<Outcome> {
    let (repo, _) = ctx.open_master()?;
    let filter = bakare_store::SnapshotFilter { hosts: a.host.clone(), paths: Vec::new(), tags: a.tag.clone() };
    // With --local --path, `latest` is the newest snapshot that holds the folder.
    let local = match (&a.path, a.local) {
        (Some(p), true) => std::fs::canonicalize(p).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        _ => String::new(),
    };
    let (ida, sa) = repo.find_snapshot_for(&a.a, &filter, &local)?;
    let (b_name, changes) = match &a.b {
        Some(b) => {
            let (idb, sb) = repo.find_snapshot_for(b, &filter, "")?;
            (idb.to_hex(), diff(&repo, sa.root, sb.root)?)
        }
        None => {
            let dir = match &a.path {
                Some(p) => std::fs::canonicalize(p).with_context(|| format!("folder {}", p.display()))?,
                None => match sa.paths.as_slice() {
                    [one] => std::path::PathBuf::from(std::ffi::OsStr::from_bytes(one)),
                    _ => bail!("the snapshot has {} paths: name the folder to compare with --path", sa.paths.len()),
                },
            };
            let start = bakare_planner::find_node(&repo, sa.root, &dir.to_string_lossy())?;
            let bakare_planner::Start::Tree(tree) = start else {
                bail!("{} is not a folder in the snapshot", dir.display());
            };
            ("local".to_string(), bakare_planner::diff_local(&repo, tree, &dir)?)
        }
    };
    if ctx.global.json {
        out!(
            "{}",
            serde_json::json!({"type": "diff", "a": ida.to_hex(), "b": b_name, "changes": changes.iter().map(|c| serde_json::json!({"change": c.what.to_string(), "path": c.path})).collect::<Vec<_>>()})
        )?;
        return Ok(Outcome::Success);
    }
    for c in &changes {
        out!("{} {}", c.what, c.path)?;
    }
    if !ctx.global.quiet {
        let count = |w: char| changes.iter().filter(|c| c.what == w).count();
        out!(
            "{} added, {} removed, {} modified, {} metadata only, {} changed type",
            count('+'),
            count('-'),
            count('M'),
            count('m'),
            count('T')
        )?;
    }
    Ok(Outcome::Success)
}

/// One snapshot's version of a folder: snapshot, its time, the folder's tree, (added,
/// removed, changed) names from the version before (none for the first), entries.
type FolderVersion = (SnapshotId, i64, BlobId, Option<(usize, usize, usize)>, usize);

/// `history` of a folder: each snapshot that holds it, and what changed in it from the one
/// before (names added, removed, changed; a subfolder changed when anything below it did).
/// Runs of snapshots in which it stayed the same are folded into one line.
fn folder_history(ctx: &Context, repo: &Repository, snaps: &[(SnapshotId, Snapshot)], path: &str) -> Result<Outcome> {
    let mut rows: Vec<FolderVersion> = Vec::new();
    let mut previous: Option<(BlobId, Vec<bakare_store::Entry>)> = None;
    let mut in_order: Vec<&(SnapshotId, Snapshot)> = snaps.iter().collect();
    in_order.sort_by_key(|(_, s)| s.time_ns);
    for (id, s) in in_order {
        let Ok(bakare_planner::Start::Tree(tree_id)) = bakare_planner::find_node(repo, s.root, path) else { continue };
        let tree = repo.load_tree(&tree_id)?;
        let change = match &previous {
            None => None,
            Some((prev_id, _)) if *prev_id == tree_id => Some((0, 0, 0)),
            Some((_, before)) => {
                let old: std::collections::HashMap<&[u8], &bakare_store::Entry> =
                    before.iter().map(|e| (e.name.as_slice(), e)).collect();
                let new: std::collections::HashSet<&[u8]> = tree.entries.iter().map(|e| e.name.as_slice()).collect();
                let added = tree.entries.iter().filter(|e| !old.contains_key(e.name.as_slice())).count();
                let removed = before.iter().filter(|e| !new.contains(e.name.as_slice())).count();
                let changed =
                    tree.entries.iter().filter(|e| old.get(e.name.as_slice()).is_some_and(|o| **o != **e)).count();
                Some((added, removed, changed))
            }
        };
        rows.push((*id, s.time_ns, tree_id, change, tree.entries.len()));
        previous = Some((tree_id, tree.entries));
    }
    if rows.is_empty() {
        bail!("no snapshot holds {path}");
    }
    if ctx.global.json {
        let versions: Vec<_> = rows
            .iter()
            .map(|(id, t, tree, change, n)| {
                serde_json::json!({"snapshot": id.to_hex(), "time_ns": t, "tree": tree.to_hex(), "entries": n,
                    "added": change.map(|c| c.0), "removed": change.map(|c| c.1), "changed": change.map(|c| c.2)})
            })
            .collect();
        out!("{}", serde_json::json!({"type": "history", "path": path, "kind": "dir", "versions": versions}))?;
        return Ok(Outcome::Success);
    }
    out!("{path}/  (folder)")?;
    let mut i = 0;
    while let Some((id, t, _, change, n)) = rows.get(i) {
        let same = rows.get(i + 1..).unwrap_or_default().iter().take_while(|r| r.3 == Some((0, 0, 0))).count();
        let what = match change {
            None => "first seen".to_string(),
            Some((0, 0, 0)) => "same content".to_string(),
            Some((a, r, c)) => format!("{a} added, {r} removed, {c} changed"),
        };
        let entries = crate::output::count(*n as u64, "entry", "entries");
        match rows.get(i + same) {
            Some((last, lt, ..)) if same > 0 => out!(
                "  {} … {}  {} … {}  {entries:>12}  {what}, the same in {same} more {}",
                time(*t),
                time(*lt),
                id.short(),
                last.short(),
                if same == 1 { "snapshot" } else { "snapshots" }
            )?,
            _ => out!("  {}  {}  {entries:>12}  {what}", time(*t), id.short())?,
        }
        i += same + 1;
    }
    Ok(Outcome::Success)
}
