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
    if !a.continuous {
        bakare_planner::watch::daemon::run(opts).context("bakare watch")?;
        return Ok(Outcome::Success);
    }
    let socket = opts.folder.join(bakare_planner::watch::SOCKET);
    let stop = opts.stop.clone();
    let daemon = std::thread::spawn(move || bakare_planner::watch::daemon::run(opts));
    let result = continuous(ctx, a, &socket, &stop, &daemon);
    stop.store(true, Ordering::Relaxed);
    match daemon.join() {
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context("bakare watch")),
        Err(_) => bail!("bakare watch: the watching thread failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// Backs `a.paths` up whenever changes under them settle, until `stop`.
fn continuous(
    ctx: &Context,
    a: &WatchArgs,
    socket: &std::path::Path,
    stop: &AtomicBool,
    daemon: &std::thread::JoinHandle<std::io::Result<()>>,
) -> Result<Outcome> {
    use std::os::unix::ffi::OsStrExt;
    use std::time::Instant;
    let backup_args = |extra: &[&str]| -> Result<crate::args::BackupArgs> {
        let mut argv: Vec<std::ffi::OsString> = vec!["bakare".into(), "backup".into()];
        argv.extend(extra.iter().map(std::ffi::OsString::from));
        argv.extend(a.paths.iter().map(|p| p.as_os_str().to_owned()));
        match <crate::args::Cli as clap::Parser>::try_parse_from(argv)?.command {
            crate::args::Command::Backup(b) => Ok(b),
            _ => bail!("bakare watch --continuous: no backup arguments"),
        }
    };
    let (backup, verification) = (backup_args(&[])?, backup_args(&["--walk-all"])?);
    let mut verified = Instant::now();
    let mut paths = Vec::new();
    for p in &a.paths {
        paths.push(std::fs::canonicalize(p)?.as_os_str().as_bytes().to_vec());
    }
    // Changes of this process's own files (a local repository or the cache under a watched
    // folder) do not call for a backup: each backup would call for the next.
    let own: Vec<Vec<u8>> = ctx.writable_folders().iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect();
    let max_wait = a.debounce * 6;
    // (epoch, generation) when the last backup began; the first backup runs at once.
    let mut backed: Option<([u8; 16], u64)> = None;
    let mut last_generation = 0;
    let mut settled_since = Instant::now();
    let mut pending_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if daemon.is_finished() {
            return Ok(Outcome::Success);
        }
        let since = backed.map_or(0, |(_, g)| g);
        let Ok(reply) = bakare_planner::watch::client::changed_since(socket, &paths, since) else { continue };
        if reply.generation != last_generation {
            last_generation = reply.generation;
            settled_since = Instant::now();
        }
        let changed = reply
            .folders
            .iter()
            .chain(reply.named.iter().map(|(f, _)| f))
            .chain(&reply.subtrees)
            .any(|f| !own.iter().any(|o| bakare_planner::watch::is_under(f, o)));
        let verify = verified.elapsed() >= a.verify_every;
        let due = match backed {
            None => true,
            Some(_) if verify => true,
            // Events may have been lost: a backup walks everything and finds out.
            Some((epoch, _)) if epoch != reply.epoch => true,
            Some(_) => changed,
        };
        if !due {
            pending_since = None;
            continue;
        }
        let first = *pending_since.get_or_insert_with(Instant::now);
        if backed.is_some() && !verify && settled_since.elapsed() < a.debounce && first.elapsed() < max_wait {
            continue;
        }
        match crate::commands::backup::run(ctx, if verify { &verification } else { &backup }) {
            Ok(_) => {
                if verify {
                    verified = Instant::now();
                }
                backed = Some((reply.epoch, reply.generation));
                pending_since = None;
            }
            Err(e) if e.downcast_ref::<crate::interrupt::Interrupted>().is_some() => return Err(e),
            // Tried again when the next change settles (or after the longest wait).
            Err(e) => {
                say!("bakare: error: continuous backup: {e:#}");
                pending_since = Some(Instant::now());
                settled_since = Instant::now();
            }
        }
    }
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
                "last_backup_ns": s.last_backup_ns,
            })
        )?;
    } else {
        out!("watcher:  running (pid {}), {}", s.pid, s.source)?;
        out!("watching: {}", roots.join(", "))?;
        out!("no event lost since {} (boot {})", crate::output::local_time(s.epoch_since_ns), s.boot_id)?;
        out!("folders changed since then: {} ({} events)", s.dirty, s.events)?;
        match s.last_backup_ns {
            0 => out!("no backup has asked it yet")?,
            t => out!("last backup asked: {}", crate::output::local_time(t))?,
        }
        for b in &s.breaks {
            out!("earlier: {b}")?;
        }
    }
    Ok(Outcome::Success)
}
