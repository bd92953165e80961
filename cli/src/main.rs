//! The `bakare` command. `main` maps errors to exit codes: 0 success, 1 error (or problems
//! found by verify), 2 usage, 3 a backup finished but some files could not be read, 4 a
//! restore finished but some requested files were not restored completely, 75 a
//! backup stopped resumably (the repository's storage failed; `bakare resume` continues),
//! 130 and 143 a backup interrupted by SIGINT or SIGTERM (it continues where it stopped).

/// `println!` that returns the write error (a closed pipe ends the command quietly).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)
    }};
}

/// `eprintln!` that never panics: a message that cannot be written (stderr closed, a full
/// disk, a reader gone) is dropped rather than taking the command down.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

/// `println!` for the last words of a command: never panics.
macro_rules! last_out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

mod args;
mod commands;
mod config;
mod context;
mod interrupt;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, DebugCommand, KeyCommand};
use crate::context::Context;

/// A backup stopped for a reason that `bakare resume` can get past (exit code 75).
#[derive(Debug)]
pub struct Resumable(pub String);

impl std::fmt::Display for Resumable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (nothing committed is damaged; run `bakare resume` to continue once this is fixed)", self.0)
    }
}

impl std::error::Error for Resumable {}

/// How a command ended, when it did not fail outright.
pub enum Outcome {
    Success,
    /// Done, but some files could not be backed up.
    Partial,
    /// A check found problems (or repair could not undo all of them).
    Problems,
    /// A restore wrote everything it could, but not all that was asked (exit 4).
    Incomplete,
}

fn main() -> ExitCode {
    let argv = match config::apply(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            say!("bakare: error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(hint) = restic_hint(&e) {
                say!("bakare: {hint}");
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    if let Err(e) = cli.global.fill_from_env() {
        say!("bakare: error: {e}");
        return ExitCode::from(2);
    }
    let json = cli.global.json;
    // A mount namespace is per thread: it is entered before any thread starts.
    let wants_mounts = match &cli.command {
        // Any backup as root also deletes the snapshots a killed one left.
        Command::Backup(a) => {
            a.fs_snapshot != "off"
                || (rustix::process::geteuid().is_root() && bakare_planner::fs_snapshot::records_exist())
        }
        // Resuming a backup that read a filesystem snapshot reads a new one.
        Command::Resume(_) => rustix::process::geteuid().is_root(),
        _ => false,
    };
    if wants_mounts {
        match bakare_planner::fs_snapshot::private_mount_namespace() {
            Ok(()) => PRIVATE_MOUNTS.store(true, std::sync::atomic::Ordering::Relaxed),
            Err(e) if matches!(&cli.command, Command::Backup(a) if a.fs_snapshot != "off") => {
                say!("bakare: error: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => {}
        }
    }
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
    let threads = cli.global.threads.unwrap_or((cores * 4).clamp(1, 256));
    tune_malloc(cli.global.memory_limit, cores);
    private_files();
    raise_open_files();
    quiet_cache_panics();
    // Only fails if a global pool exists already, and then that one serves.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    // The ssh master connections an SFTP repository starts daemonize themselves; as their
    // subreaper this process can end them when it ends, so none outlives the run.
    let sftp = cli.global.repo.as_ref().is_some_and(|r| r.to_string_lossy().starts_with("sftp://"));
    if sftp {
        become_subreaper();
    }
    let ctx = Context::new(cli.global);
    let result = match cli.command {
        Command::Init(a) => commands::init::run(&ctx, &a),
        Command::Backup(a) => commands::backup::run(&ctx, &a),
        Command::Resume(a) => commands::resume::run(&ctx, &a),
        Command::Snapshots(a) => commands::snapshots::run(&ctx, &a),
        Command::Ls(a) => commands::ls::run(&ctx, &a),
        Command::Restore(a) => commands::restore::run(&ctx, &a),
        Command::Verify(a) => commands::verify::run(&ctx, &a),
        Command::Find(a) => commands::find::find(&ctx, &a),
        Command::History(a) => commands::find::history(&ctx, &a),
        Command::Diff(a) => commands::find::run_diff(&ctx, &a),
        Command::Forget(a) => commands::forget::run(&ctx, &a),
        Command::Prune(a) => commands::prune::run(&ctx, &a),
        Command::Tag(a) => commands::tag::run(&ctx, &a),
        Command::Dump(a) => commands::dump::run(&ctx, &a),
        Command::Cat { what, id } => commands::cat::run(&ctx, &what, id.as_deref()),
        Command::Stats(a) => commands::stats::run(&ctx, &a),
        Command::Cache(a) => commands::cache::run(&ctx, &a),
        Command::Copy(a) => commands::copy::run(&ctx, &a),
        Command::Mount(a) => commands::mount::run(&ctx, &a),
        Command::Watch(a) => commands::watch::run(&ctx, &a),
        Command::Key(KeyCommand::Export(a)) => commands::key::export(&ctx, &a),
        Command::Key(KeyCommand::List) => commands::key::list(&ctx),
        Command::Key(KeyCommand::Add(a)) => commands::key::add(&ctx, &a, false),
        Command::Key(KeyCommand::Passwd(a)) => commands::key::add(&ctx, &a, true),
        Command::Key(KeyCommand::Remove { id }) => commands::key::remove(&ctx, &id),
        Command::Completions { shell } => commands::docs::completions(shell),
        Command::Man { dir } => commands::docs::man(&ctx, &dir),
        Command::Debug(DebugCommand::StatWalk { path }) => commands::debug::stat_walk(&ctx, &path),
        Command::Debug(DebugCommand::CheckState { path }) => commands::debug::check_state(&ctx, &path),
    };
    if sftp {
        end_children();
    }
    let code = exit_code(result.as_ref());
    match result {
        Ok(_) => {}
        Err(e) if is_broken_pipe(&e) => {}
        Err(e) if e.downcast_ref::<interrupt::Interrupted>().is_some() => {
            if json {
                last_out!(
                    "{}",
                    serde_json::json!({ "type": "error", "interrupted": true, "message": format!("{e:#}") })
                );
            }
            say!("bakare: {e:#}");
        }
        Err(e) if e.downcast_ref::<Resumable>().is_some() => {
            if json {
                last_out!("{}", serde_json::json!({ "type": "error", "resumable": true, "message": format!("{e:#}") }));
            }
            say!("bakare: error: {e:#}");
        }
        Err(e) => {
            if json {
                last_out!("{}", serde_json::json!({ "type": "error", "message": format!("{e:#}") }));
            }
            say!("bakare: error: {e:#}");
        }
    }
    ExitCode::from(code)
}

/// What a restic user who typed a command bakare does not have should know.
fn restic_hint(e: &clap::Error) -> Option<&'static str> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::InvalidSubcommand {
        return None;
    }
    let Some(ContextValue::String(command)) = e.get(ContextKind::InvalidSubcommand) else { return None };
    Some(match command.as_str() {
        "check" => {
            "restic's `check` is `bakare verify` here (`--read-data` reads every pack, `--repair` fixes what it can)"
        }
        "unlock" => {
            "nothing in bakare takes a lock (backups, prunes and restores run side by side), so there is nothing to unlock"
        }
        "rebuild-index" | "repair" => {
            "`bakare verify --repair` rebuilds a lost index and repairs what redundancy allows"
        }
        "list" => "`bakare snapshots` lists snapshots, `bakare key list` the keys, `bakare cat` prints any object",
        "migrate" => "nothing to migrate: every bakare reads every older repository format",
        _ => return None,
    })
}

/// This process entered a mount namespace of its own at start (for `--fs-snapshot`): the
/// namespace is process state, set once before any thread starts.
pub static PRIVATE_MOUNTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The exit code of a command's result.
pub fn exit_code(result: Result<&Outcome, &anyhow::Error>) -> u8 {
    match result {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::Partial) => 3,
        Ok(Outcome::Problems) => 1,
        Ok(Outcome::Incomplete) => 4,
        Err(e) if is_broken_pipe(e) => 0,
        Err(e) if e.downcast_ref::<interrupt::Interrupted>().is_some() => {
            e.downcast_ref::<interrupt::Interrupted>().map_or(130, interrupt::Interrupted::exit_code)
        }
        Err(e) if e.downcast_ref::<Resumable>().is_some() => 75,
        Err(_) => 1,
    }
}

/// glibc's allocator keeps one arena per thread that allocates at once (up to 8 per core),
/// each holding on to what it freed: a first backup's peak RSS was 1.7 times that with
/// one arena per core. One arena per 64 MiB of the budget, at most one per core. (A fixed
/// low mmap threshold as well cost 10 % in page faults for no lower peak.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc(limit: u64, cores: usize) {
    let arenas = i32::try_from((limit >> 26).clamp(1, cores.max(1) as u64)).unwrap_or(1);
    // SAFETY: mallopt only sets allocator parameters (it takes the allocator's lock); it is
    // called first thing in main, before this process starts threads of its own.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Makes this process the reaper of its orphaned descendants (ssh masters that fork away).
#[allow(unsafe_code)]
fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Ends every child still running (the ssh masters of an SFTP repository): SIGTERM, then
/// SIGKILL after a second, reaping each.
#[allow(unsafe_code)]
fn end_children() {
    let me = std::process::id();
    let children = || -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // The fields after the command name: state, then the parent's pid.
                let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
                ppid == Some(me)
            })
            .collect()
    };
    for (round, signal) in [(0, libc::SIGTERM), (1, libc::SIGKILL)] {
        let pids = children();
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            // SAFETY: kill and waitpid on a child of this process; no memory is shared.
            unsafe {
                libc::kill(*pid, signal);
            }
        }
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(if round == 0 { 1000 } else { 200 });
        while std::time::Instant::now() < deadline {
            let mut status = 0;
            // SAFETY: as above; WNOHANG never blocks.
            let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if reaped <= 0 && children().is_empty() {
                break;
            }
            if reaped <= 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// redb panics on some damaged files instead of returning an error; every call into it is
/// made where such a panic is caught and the file set aside and rebuilt (a local cache
/// costs speed, never correctness). Those panics get one line, not a backtrace; every
/// other panic is reported as usual.
fn quiet_cache_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_redb = info.location().is_some_and(|l| l.file().contains("/redb-"));
        if in_redb {
            say!("bakare: warning: a local cache file is damaged (redb could not read it); it is rebuilt");
        } else {
            default(info);
        }
    }));
}

/// The walk keeps a folder open per level on every worker (two with a filesystem snapshot:
/// the snapshot's and the live one): the soft limit on open files (1024 by default) goes up
/// to the hard one, as Go programs do.
fn raise_open_files() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Everything bakare creates is its user's alone: local caches (the memo holds file names),
/// spool files and local repositories are made 0600 in 0700 folders, as restic does.
/// Restored files get their recorded modes explicitly, so the mask does not touch them.
#[allow(unsafe_code)]
fn private_files() {
    // SAFETY: umask only sets this process's file-creation mask; it cannot fail.
    let user = unsafe { libc::umask(0o077) };
    // Hooks are the user's commands: they create files with the user's mask.
    commands::hooks::USER_UMASK.store(user, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc(_limit: u64, _cores: usize) {}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<std::io::Error>()).any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
