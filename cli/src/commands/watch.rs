//! `bakare watch`: record which folders change, so that backups list only those.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result, bail};

use crate::Outcome;
use crate::args::WatchArgs;
use crate::context::Context;

/// The watcher's folder in this machine's cache: its socket and database.
pub fn folder(ctx: &Context) -> Result<Option<PathBuf>> {
    Ok(ctx.cache_base()?.map(|b| b.join("watch")))
}

pub fn run(ctx: &Context, a: &WatchArgs) -> Result<Outcome> {
    let Some(folder) = folder(ctx)? else {
        bail!("`bakare watch` keeps its state in the cache folder: drop --no-cache")
    };
    if a.status {
        return status(ctx, &folder);
    }
    if a.paths.is_empty() {
        bail!("name the folders to watch: the ones you back up (`bakare watch ~` or `bakare watch /home /etc`)");
    }
    let which = crate::interrupt::install();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        while which.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        flag.store(true, Ordering::Relaxed);
    });
    let quiet = ctx.global.quiet;
    let opts = bakare_planner::watch::daemon::WatchOptions {
        roots: a.paths.clone(),
        folder,
        stop,
        log: Box::new(move |line| {
            if !quiet {
                say!("bakare: {line}");
            }
        }),
    };
    bakare_planner::watch::daemon::run(opts).context("bakare watch")?;
    Ok(Outcome::Success)
}

fn status(ctx: &Context, folder: &std::path::Path) -> Result<Outcome> {
    let socket = folder.join(bakare_planner::watch::SOCKET);
    let s = match bakare_planner::watch::client::status(&socket) {
        Ok(s) => s,
        Err(e) => {
            if ctx.global.json {
                out!("{}", serde_json::json!({"running": false, "message": e.to_string()}))?;
            } else {
                out!("no watcher is running ({}: {e}); backups walk the whole tree", socket.display())?;
            }
            return Ok(Outcome::Problems);
        }
    };
    let roots: Vec<String> = s.roots.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    if ctx.global.json {
        out!(
            "{}",
            serde_json::json!({
                "running": true, "pid": s.pid, "source": s.source, "roots": roots,
                "epoch_since_ns": s.epoch_since_ns, "boot_id": s.boot_id, "generation": s.generation,
                "dirty_folders": s.dirty, "events": s.events, "breaks": s.breaks,
            })
        )?;
    } else {
        out!("watcher:  running (pid {}), {}", s.pid, s.source)?;
        out!("watching: {}", roots.join(", "))?;
        out!("no event lost since {} (boot {})", crate::output::local_time(s.epoch_since_ns), s.boot_id)?;
        out!("folders changed since then: {} ({} events)", s.dirty, s.events)?;
        for b in &s.breaks {
            out!("earlier: {b}")?;
        }
    }
    Ok(Outcome::Success)
}
