//! `bakare backup PATH...`

use std::sync::Arc;

use anyhow::{Context as _, Result};
use std::os::unix::ffi::OsStrExt;

use bakare_planner::{
    BackupOptions, BackupReport, CheckpointPolicy, Counters, Excludes, interrupted_session, prepare_resume,
};
use bakare_store::{Selection, SessionOptions, SourceOptions};

use super::hooks::Hooks;

use crate::Outcome;
use crate::args::{BackupArgs, CheckpointArgs};
use crate::context::Context;
use crate::output::{bytes, count};
use crate::progress::{Expected, Ticker};

pub fn run(ctx: &Context, a: &BackupArgs) -> Result<Outcome> {
    if a.dry_run {
        return dry_run(ctx, a);
    }
    let hooks = Hooks::from_args(&a.hooks);
    // Installed before the pre-hook, so that Ctrl-C stops a hook too (and the post-hook
    // hears of it).
    let interrupt = crate::interrupt::install();
    // The pre-hook runs first: it may be what makes the sources or the repository ready.
    let result = pre_hook(ctx, &hooks, &a.paths, &interrupt).and_then(|log| backup(ctx, a, log, interrupt.clone()));
    post_hook(ctx, &hooks, result, &interrupt)
}

fn backup(
    ctx: &Context,
    a: &BackupArgs,
    log: Vec<String>,
    interrupt: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<Finished> {
    if a.stdin {
        return stdin(ctx, a, log);
    }
    // Check the sources before creating or unlocking anything.
    let mut paths = Vec::new();
    for p in a.paths.iter().chain(&super::files_from::read(a)?) {
        std::fs::symlink_metadata(p).with_context(|| format!("source path {}", p.display()))?;
        paths.push(std::fs::canonicalize(p).with_context(|| format!("source path {}", p.display()))?);
    }
    if paths.is_empty() {
        anyhow::bail!("no paths to back up: the --files-from lists are empty");
    }
    let mut exclude_if_present = a.exclude_if_present.clone();
    if a.exclude_caches {
        exclude_if_present.push(bakare_store::CACHEDIR_TAG.to_string());
    }
    for rule in &exclude_if_present {
        if rule.split(':').next().is_none_or(|name| name.is_empty() || name.contains('/')) {
            anyhow::bail!("--exclude-if-present {rule:?}: NAME must be a file name (NAME or NAME:HEADER)");
        }
    }
    let selection = Selection {
        one_file_system: a.one_file_system,
        exclude_if_present,
        exclude_larger_than: a.exclude_larger_than,
        no_xattrs: a.no_xattrs,
    };
    let excludes = Excludes::new(&a.exclude, &a.exclude_file, a.git_ignore)?
        .with_iexcludes(&a.iexclude)?
        .with_selection(&selection);
    // Opening the memo (redb's integrity check) runs while the key is unlocked (argon2id).
    let early = ctx.read_config(ctx.backend()?.as_ref()).ok().map(|config| {
        std::thread::scope(|s| {
            let memo = s.spawn(move || ctx.memo_of(&config));
            let opened = ctx.open_or_init();
            (memo.join(), opened)
        })
    });
    let (memo, opened) = match early {
        Some((memo, opened)) => (Some(memo.map_err(|_| anyhow::anyhow!("opening the local memo panicked"))?), opened),
        None => (None, ctx.open_or_init()),
    };
    let (mut repo, created) = opened?;
    if created {
        super::init::report(ctx, &repo, &repo.backend().location())?;
    }
    // zstd level: see bakare_store::DEFAULT_COMPRESSION for the default's reasons.
    repo.set_compression_level(a.compression);
    repo.set_parity(a.parity);
    let memo = match memo {
        Some(m) => m?,
        None => ctx.memo(&repo)?,
    };
    let host = a.host.clone().unwrap_or_else(this_host);
    let user = std::env::var("USER").unwrap_or_default();
    let mut opts = BackupOptions {
        excludes,
        host: host.clone(),
        user: user.clone(),
        tags: a.tag.clone(),
        force_rehash: a.force_rehash,
        session_options: SessionOptions {
            excludes: a.exclude.clone(),
            exclude_files: a.exclude_file.iter().map(|f| f.as_os_str().as_bytes().to_vec()).collect(),
            git_ignore: a.git_ignore,
            tags: a.tag.clone(),
            user,
            compression: a.compression,
            parity: a.parity,
            selection,
            source: SourceOptions { fs_snapshot: a.fs_snapshot.clone() },
            iexcludes: a.iexclude.clone(),
        },
        resume: None,
        checkpoints: policy(&a.checkpoint),
        interrupt,
        devices: Default::default(),
        live: Default::default(),
        log,
        time_ns: a.time,
        watch: crate::commands::watch::folder(ctx)?.map(|f| f.join(bakare_planner::watch::SOCKET)),
        walk_all: a.walk_all,
    };
    // An interrupted backup of the same paths from this host is taken over, not redone.
    if let Some(session) = interrupted_session(&repo, &host, &sorted_bytes(&paths), a.checkpoint.heartbeat_secs)?
        && bakare_planner::finish_committed(&repo, &session)?.is_none()
    {
        let prepared = prepare_resume(&repo, &memo, &session)?;
        if !ctx.global.quiet && !ctx.global.json {
            say!(
                "bakare: continuing interrupted backup {} ({} packs adopted, {} files from its checkpoints)",
                session.id_hex().get(..8).unwrap_or_default(),
                prepared.adopted_packs,
                prepared.imported_files
            );
        }
        opts.resume = Some(session);
    }
    run_backup(ctx, Arc::new(repo), memo, &paths, opts)
}

/// `backup --stdin`: standard input as the file `/NAME` of a snapshot of its own.
fn stdin(ctx: &Context, a: &BackupArgs, log: Vec<String>) -> Result<Finished> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!(
            "--stdin reads standard input, which is a terminal here: pipe something in (pg_dump db | bakare backup --stdin)"
        );
    }
    let (mut repo, created) = ctx.open_or_init()?;
    if created {
        super::init::report(ctx, &repo, &repo.backend().location())?;
    }
    repo.set_compression_level(a.compression);
    let host = a.host.clone().unwrap_or_else(this_host);
    let opts = BackupOptions {
        host,
        user: std::env::var("USER").unwrap_or_default(),
        tags: a.tag.clone(),
        log,
        time_ns: a.time,
        ..BackupOptions::default()
    };
    let counters = Arc::new(Counters::default());
    let report = {
        let _ticker = Ticker::start(counters.clone(), ctx.global.json, ctx.global.quiet, false, "backup", None, None);
        bakare_planner::backup_stream(
            Arc::new(repo),
            &a.stdin_filename,
            std::io::stdin().lock(),
            &opts,
            counters.clone(),
        )
        .map_err(resumable)?
    };
    print_report(ctx, &report)?;
    Ok(Finished { outcome: Outcome::Success, snapshot: report.id })
}

/// `backup --dry-run`: what would be read, from the memo; no hook runs, nothing is read or
/// written (the repository's config is read to find its memo).
fn dry_run(ctx: &Context, a: &BackupArgs) -> Result<Outcome> {
    let mut paths = Vec::new();
    for p in a.paths.iter().chain(&super::files_from::read(a)?) {
        paths.push(std::fs::canonicalize(p).with_context(|| format!("source path {}", p.display()))?);
    }
    let excludes = Excludes::new(&a.exclude, &a.exclude_file, a.git_ignore)?.with_iexcludes(&a.iexclude)?;
    let memo = match ctx.read_config(ctx.backend()?.as_ref()) {
        Ok(config) => ctx.memo_of(&config)?,
        // No repository yet: everything would be new.
        Err(bakare_store::StoreError::NotARepository { .. }) => bakare_planner::Memo::disabled(),
        Err(e) => return Err(e.into()),
    };
    let (json, verbose) = (ctx.global.json, ctx.global.verbose);
    let on_file = |change: bakare_planner::FileChange, path: &std::path::Path, size: u64| {
        if verbose {
            let _ = out!("{}", crate::progress::change_line(change, path, Some(size), json));
        }
    };
    let d = bakare_planner::dry_run(&memo, &paths, &excludes, &on_file);
    memo.close();
    if json {
        out!(
            "{}",
            serde_json::json!({"type": "dry_run", "files_new": d.files_new, "files_changed": d.files_changed,
                "files_unchanged": d.files_unchanged, "bytes_to_read": d.bytes_to_read, "dirs": d.dirs})
        )?;
    } else if !ctx.global.quiet {
        out!("dry run: nothing was read or written")?;
        out!(
            "would read: {} from {} ({} new, {} changed)",
            bytes(d.bytes_to_read),
            count(d.files_new + d.files_changed, "file", "files"),
            d.files_new,
            d.files_changed
        )?;
        out!("unchanged:  {} (the local memo vouches for them)", count(d.files_unchanged, "file", "files"))?;
        out!("folders:    {}", d.dirs)?;
    }
    Ok(Outcome::Success)
}

/// How a backup that ran to its end ended.
pub struct Finished {
    pub outcome: Outcome,
    pub snapshot: bakare_store::SnapshotId,
}

/// Runs the pre-hook, if any; returns the lines for the snapshot's log. A required one that
/// fails stops the backup, and so does an interrupt while it runs.
pub fn pre_hook(
    ctx: &Context,
    hooks: &Hooks,
    paths: &[std::path::PathBuf],
    interrupt: &std::sync::atomic::AtomicUsize,
) -> Result<Vec<String>> {
    let Some(hook) = &hooks.pre else { return Ok(Vec::new()) };
    let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let env = [("BAKARE_HOOK", "pre".to_string()), ("BAKARE_PATHS", paths.join("\n")), repo_env(ctx)];
    let run = super::hooks::run(hook, &env, interrupt);
    let lines = run.lines("pre", hook);
    if !ctx.global.quiet || !run.ok {
        for l in &lines {
            say!("bakare: {l}");
        }
    }
    if interrupt.load(std::sync::atomic::Ordering::Relaxed) != 0 {
        return Err(crate::interrupt::Interrupted::from_flag(interrupt).into());
    }
    if !run.ok && hook.required {
        anyhow::bail!(
            "the pre-hook `{}` failed ({}): backup not started (it is --pre-hook-required)",
            hook.command,
            run.status
        );
    }
    Ok(lines)
}

/// Runs the post-hook, if any, telling it how the backup ended; returns the backup's result.
pub fn post_hook(
    ctx: &Context,
    hooks: &Hooks,
    result: Result<Finished>,
    interrupt: &std::sync::atomic::AtomicUsize,
) -> Result<Outcome> {
    if let Some(hook) = &hooks.post {
        let (outcome, snapshot, error) = match &result {
            Ok(f) => (
                if matches!(f.outcome, Outcome::Partial) { "partial" } else { "success" },
                f.snapshot.to_hex(),
                String::new(),
            ),
            Err(e) if e.downcast_ref::<crate::interrupt::Interrupted>().is_some() => {
                ("interrupted", String::new(), format!("{e:#}"))
            }
            Err(e) if e.downcast_ref::<crate::Resumable>().is_some() => ("resumable", String::new(), format!("{e:#}")),
            Err(e) => ("failed", String::new(), format!("{e:#}")),
        };
        let code = crate::exit_code(result.as_ref().map(|f| &f.outcome));
        let env = [
            ("BAKARE_HOOK", "post".to_string()),
            ("BAKARE_OUTCOME", outcome.to_string()),
            ("BAKARE_EXIT_CODE", code.to_string()),
            ("BAKARE_SNAPSHOT_ID", snapshot),
            ("BAKARE_ERROR", error),
            repo_env(ctx),
        ];
        // A post-hook after an interrupt still runs (it may undo what the pre-hook did); a
        // second Ctrl-C ends the process.
        let calm = std::sync::atomic::AtomicUsize::new(0);
        let flag = if interrupt.load(std::sync::atomic::Ordering::Relaxed) != 0 { &calm } else { interrupt };
        let run = super::hooks::run(hook, &env, flag);
        if !ctx.global.quiet || !run.ok {
            for l in run.lines("post", hook) {
                say!("bakare: {l}");
            }
        }
    }
    result.map(|f| f.outcome)
}

/// `BAKARE_REPOSITORY` for a hook: the repository as given.
fn repo_env(ctx: &Context) -> (&'static str, String) {
    ("BAKARE_REPOSITORY", ctx.global.repo.as_ref().map(|r| r.display().to_string()).unwrap_or_default())
}

/// Files read by one backup after which the memo is compacted.
const COMPACT_AFTER_FILES: u64 = 20_000;

/// Runs a backup with progress, prints its report, and maps its outcome.
pub fn run_backup(
    ctx: &Context,
    repo: Arc<bakare_store::Repository>,
    memo: bakare_planner::Memo,
    paths: &[std::path::PathBuf],
    mut opts: BackupOptions,
) -> Result<Finished> {
    use bakare_planner::fs_snapshot::{FsSnapshots, Mode, TakeOptions, clean_stale};
    let private = crate::PRIVATE_MOUNTS.load(std::sync::atomic::Ordering::Relaxed);
    // Snapshots a killed backup left behind go first, whatever this backup reads from.
    if private {
        for line in clean_stale() {
            say!("bakare: {line}");
        }
    }
    let mode = Mode::parse(&opts.session_options.source.fs_snapshot)?;
    if mode != Mode::Off && !private {
        anyhow::bail!(
            "--fs-snapshot: this process has no mount namespace of its own (it could not enter one at start: \
             run as root)"
        );
    }
    let excluded = |p: &std::path::Path| opts.excludes.excludes_folder(p);
    let keep_live = ctx.writable_folders();
    let take = TakeOptions {
        mode,
        one_file_system: opts.session_options.selection.one_file_system,
        excluded: &excluded,
        keep_live: &keep_live,
    };
    let snapshots = FsSnapshots::take(paths, &take)?;
    bakare_store::failpoint::hit("after-fs-snapshot");
    opts.devices = snapshots.devices.clone();
    opts.live = snapshots.live.clone();
    opts.log.extend(snapshots.log.iter().cloned());
    if !ctx.global.quiet && !ctx.global.json {
        for line in &snapshots.log {
            say!("bakare: {line}");
        }
    }
    let result = walk_and_commit(ctx, repo, memo, paths, &opts);
    for problem in snapshots.release() {
        say!("bakare: warning: {problem} (the next backup tries again)");
    }
    result
}

fn walk_and_commit(
    ctx: &Context,
    repo: Arc<bakare_store::Repository>,
    mut memo: bakare_planner::Memo,
    paths: &[std::path::PathBuf],
    opts: &BackupOptions,
) -> Result<Finished> {
    let counters = Arc::new(Counters::default());
    let report = {
        let expected = bakare_planner::expected_totals(&memo, paths, &opts.session_options)
            .map(|(files, bytes)| Expected { files, bytes });
        // A first backup (nothing remembered) counts its sources in parallel while it runs,
        // for a bar with an ETA at a terminal, as restic's scanner does.
        let at_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let later = (expected.is_none() && at_terminal && !ctx.global.quiet && !ctx.global.json).then(|| {
            let later = crate::progress::Later::default();
            let (set, paths, excludes) = (later.clone(), paths.to_vec(), opts.excludes.clone());
            std::thread::spawn(move || {
                // A pool of its own: queued behind the backup's work in the shared one, the
                // count would end with the backup.
                // Against no memo, every file is one to read: the dry run counts them all.
                let none = bakare_planner::Memo::disabled();
                let count = || bakare_planner::dry_run(&none, &paths, &excludes, &|_, _, _| {});
                let all = match rayon::ThreadPoolBuilder::new().num_threads(4).build() {
                    Ok(pool) => pool.install(count),
                    Err(_) => count(),
                };
                let _ = set.set(Expected { files: all.files_new, bytes: all.bytes_to_read });
            });
            later
        });
        let _ticker = Ticker::start(
            counters.clone(),
            ctx.global.json,
            ctx.global.quiet,
            ctx.global.verbose,
            "backup",
            expected,
            later,
        );
        match bakare_planner::backup(repo.clone(), &memo, paths, opts, counters.clone()) {
            Ok(r) => r,
            Err(bakare_planner::PlanError::Interrupted) => {
                memo.close();
                return Err(crate::interrupt::Interrupted::from_flag(&opts.interrupt).into());
            }
            Err(e) => return Err(resumable(e)),
        }
    };
    // Many new records leave the file's pages half full; compacting it makes the next
    // backups read fewer pages (a no-change backup reads every record).
    if report.snapshot.stats.files_read >= COMPACT_AFTER_FILES
        && let Err(e) = memo.compact()
    {
        say!("bakare: warning: could not compact the local memo: {e}");
    }
    memo.close();
    crate::context::warn_index(&repo);
    print_report(ctx, &report)?;
    if !ctx.global.quiet
        && !ctx.global.json
        && let Some(line) = super::cache::hint(ctx)
    {
        say!("bakare: {line}");
    }
    let outcome = if report.errors.is_empty() { Outcome::Success } else { Outcome::Partial };
    Ok(Finished { outcome, snapshot: report.id })
}

/// A backup that stopped because the repository's storage failed can be continued.
fn resumable(e: bakare_planner::PlanError) -> anyhow::Error {
    if e.is_resumable() { anyhow::Error::new(crate::Resumable(e.to_string())) } else { e.into() }
}

pub fn this_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub fn policy(a: &CheckpointArgs) -> CheckpointPolicy {
    CheckpointPolicy {
        files: a.checkpoint_files.max(1),
        bytes: a.checkpoint_mib.max(1) << 20,
        seconds: a.checkpoint_secs.max(1),
        heartbeat_seconds: a.heartbeat_secs.max(1),
    }
}

fn sorted_bytes(paths: &[std::path::PathBuf]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = paths.iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect();
    v.sort();
    v.dedup();
    v
}

fn print_report(ctx: &Context, r: &BackupReport) -> std::io::Result<()> {
    let s = &r.snapshot.stats;
    if ctx.global.json {
        for (path, msg) in &r.errors {
            out!("{}", serde_json::json!({"type": "file_error", "path": path, "message": msg}))?;
        }
        out!(
            "{}",
            serde_json::json!({
                "type": "summary", "snapshot": r.id.to_hex(), "files_new": s.files_new,
                "files_changed": s.files_changed, "files_unchanged": s.files_unchanged,
                "files_read": s.files_read, "files_reused": s.files_reused, "dirs": s.dirs,
                "errors": s.errors, "bytes_read": s.bytes_read, "bytes_added": s.bytes_added,
                "duration_ms": s.duration_ms, "passes": r.passes, "tree": r.snapshot.root.to_hex(),
                "changed_folders": r.walk.changed_folders, "full_walk_because": r.walk.why_full,
                "watcher_misses": r.walk.misses,
            })
        )?;
        return Ok(());
    }
    for (path, msg) in &r.errors {
        say!("bakare: error: {}: {msg}", path.display());
    }
    for w in &r.memo_warnings {
        say!("bakare: warning: {w}");
    }
    for m in &r.walk.misses {
        say!(
            "bakare: warning: the watcher missed a change in {} (a write through mmap, or a network \
             filesystem?); this walk of every folder backed it up",
            m.display()
        );
    }
    if ctx.global.quiet {
        return Ok(());
    }
    out!("snapshot {} saved", r.id.short())?;
    out!(
        "files:    {} new, {} changed, {} unchanged, {} errors",
        s.files_new,
        s.files_changed,
        s.files_unchanged,
        s.errors
    )?;
    out!("folders:  {}", s.dirs)?;
    out!(
        "read:     {} from {} ({} reused from the local memo without reading)",
        bytes(s.bytes_read),
        count(s.files_read, "file", "files"),
        count(s.files_reused, "file", "files")
    )?;
    out!("added:    {} (after deduplication and compression)", bytes(s.bytes_added))?;
    match (&r.walk.changed_folders, &r.walk.why_full) {
        (Some(n), _) => {
            out!("walk:     {} the watcher saw change, and those above them", count(*n as u64, "folder", "folders"))?;
        }
        // Said only when a watcher runs: without one a full walk is the usual way.
        (None, Some(why)) if !why.starts_with("no watcher") => out!("walk:     every folder, because {why}")?,
        _ => {}
    }
    if r.passes > 1 {
        out!("walks:    {} (a prune marked data this backup had used; it was checked and stored again)", r.passes)?;
    }
    out!("duration: {:.2} s", s.duration_ms as f64 / 1000.0)
}
