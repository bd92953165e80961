//! `bakare cache [--cleanup]`: this machine's cache folders, one per repository used here.
//!
//! A folder's last use is the time of its `last-used` file, touched by every command that
//! uses the folder (else its newest file). Nothing in a cache folder is needed: removing one
//! costs the next command on that repository a slower start (the memo, the blob index and the
//! name index are built again).

use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;

use crate::Outcome;
use crate::args::CacheArgs;
use crate::context::Context;
use crate::output::bytes;

/// The file whose time says when a cache folder was last used.
pub const LAST_USED: &str = "last-used";

/// One repository's cache folder.
struct Folder {
    name: String,
    path: std::path::PathBuf,
    bytes: u64,
    last_used: SystemTime,
}

/// The cache folders under `base` (named by a repository id: 32 hex digits), each sized
/// only when `sized` says so of its last use (the end-of-backup hint sizes the old ones
/// alone: this repository's own cache may be large).
fn folders(base: &Path, sized: impl Fn(SystemTime) -> bool) -> Vec<Folder> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.len() != 32 || !name.bytes().all(|b| b.is_ascii_hexdigit()) || !path.is_dir() {
            continue;
        }
        let marked = std::fs::metadata(path.join(LAST_USED)).and_then(|m| m.modified()).ok();
        if marked.is_some_and(|t| !sized(t)) {
            out.push(Folder { name, path, bytes: 0, last_used: marked.unwrap_or(SystemTime::UNIX_EPOCH) });
            continue;
        }
        let mut bytes = 0;
        let mut newest = SystemTime::UNIX_EPOCH;
        let mut stack = vec![path.clone()];
        while let Some(dir) = stack.pop() {
            for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(m) = f.metadata() else { continue };
                if m.is_dir() {
                    stack.push(f.path());
                } else {
                    bytes += m.len();
                    newest = newest.max(m.modified().unwrap_or(SystemTime::UNIX_EPOCH));
                }
            }
        }
        out.push(Folder { name, path, bytes, last_used: marked.unwrap_or(newest) });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.last_used));
    out
}

fn age_days(t: SystemTime) -> u64 {
    SystemTime::now().duration_since(t).map_or(0, |d| d.as_secs() / 86_400)
}

pub fn run(ctx: &Context, a: &CacheArgs) -> Result<Outcome> {
    let Some(base) = ctx.cache_base()? else {
        anyhow::bail!("--no-cache: there is no cache folder");
    };
    let all = folders(&base, |_| true);
    let cutoff = SystemTime::now().checked_sub(a.max_unused).unwrap_or(SystemTime::UNIX_EPOCH);
    if ctx.global.json {
        let list: Vec<_> = all
            .iter()
            .map(|f| {
                let unused = f.last_used < cutoff;
                serde_json::json!({"repository": f.name, "path": f.path, "bytes": f.bytes,
                    "days_unused": age_days(f.last_used), "old": unused,
                    "removed": a.cleanup && unused})
            })
            .collect();
        if a.cleanup {
            remove_old(&all, cutoff)?;
        }
        out!("{}", serde_json::Value::Array(list))?;
        return Ok(Outcome::Success);
    }
    if !a.cleanup {
        out!("{}", base.display())?;
        for f in &all {
            let old = if f.last_used < cutoff { "  (old: --cleanup removes it)" } else { "" };
            out!("  {}  {:>10}  last used {} days ago{old}", f.name, bytes(f.bytes), age_days(f.last_used))?;
        }
        out!("{}", crate::output::count(all.len() as u64, "cache folder", "cache folders"))?;
        return Ok(Outcome::Success);
    }
    let (n, freed) = remove_old(&all, cutoff)?;
    out!(
        "removed {} ({}) unused for {} days or more",
        crate::output::count(n, "cache folder", "cache folders"),
        bytes(freed),
        a.max_unused.as_secs() / 86_400
    )?;
    Ok(Outcome::Success)
}

/// Removes the folders last used before `cutoff`; returns how many and their bytes.
fn remove_old(all: &[Folder], cutoff: SystemTime) -> Result<(u64, u64)> {
    let (mut n, mut freed) = (0, 0);
    for f in all.iter().filter(|f| f.last_used < cutoff) {
        std::fs::remove_dir_all(&f.path).map_err(|e| anyhow::anyhow!("removing {}: {e}", f.path.display()))?;
        n += 1;
        freed += f.bytes;
    }
    Ok((n, freed))
}

/// A line for the end of a backup when old cache folders take room, as restic says it.
pub fn hint(ctx: &Context) -> Option<String> {
    let base = ctx.cache_base().ok()??;
    let cutoff = SystemTime::now().checked_sub(std::time::Duration::from_secs(30 * 86_400))?;
    let old: Vec<Folder> = folders(&base, |t| t < cutoff).into_iter().filter(|f| f.last_used < cutoff).collect();
    if old.is_empty() {
        return None;
    }
    let total: u64 = old.iter().map(|f| f.bytes).sum();
    Some(format!(
        "{} of repositories not used for 30 days take {} here: `bakare cache --cleanup` removes them",
        crate::output::count(old.len() as u64, "cache folder", "cache folders"),
        bytes(total)
    ))
}
