//! Command-line arguments (clap derive). Names follow restic where users expect them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Fast, encrypted, deduplicating backups that survive crashes, sleep and bad networks.
#[derive(Parser, Debug)]
#[command(name = "bakare", version, about, long_about = None, disable_help_subcommand = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
#[command(next_display_order = 1000, next_help_heading = "Global options")]
pub struct Global {
    /// Repository: a folder, s3://bucket/prefix (endpoint, region and credentials from the
    /// usual AWS_* variables and ~/.aws files) or sftp://user@host[:port]/path (keys from
    /// ssh-agent or ~/.ssh) [default: the user's data folder, bakare/repo] [env:
    /// BAKARE_REPOSITORY]
    #[arg(long, short = 'r', visible_alias = "repository", global = true, value_name = "REPO")]
    pub repo: Option<PathBuf>,
    /// Read the repository's location from the first line of this file [env:
    /// BAKARE_REPOSITORY_FILE]
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "repo")]
    pub repository_file: Option<PathBuf>,
    /// Read the passphrase from this file (else BAKARE_PASSPHRASE, else a terminal prompt)
    /// [env: BAKARE_PASSPHRASE_FILE]
    #[arg(long, visible_alias = "password-file", global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Take the passphrase from the first line this command prints (run with `sh -c`; a
    /// password manager, say) [env: BAKARE_PASSPHRASE_COMMAND]
    #[arg(
        long,
        visible_alias = "password-command",
        global = true,
        value_name = "COMMAND",
        conflicts_with = "passphrase_file"
    )]
    pub passphrase_command: Option<String>,
    /// Use this put-only key file instead of a passphrase (backup only) [env: BAKARE_KEY_FILE]
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Print machine-readable JSON (JSON lines for progress)
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// List what a backup found new or changed (`new PATH`, `changed PATH`)
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    /// Folder for local state (the backup memo) [default: the user's cache folder, bakare]
    /// [env: BAKARE_CACHE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use no local state: every file is read
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Worker threads for reading, hashing, compressing and writing [default: 4 per core,
    /// so that reads of small files overlap] [env: BAKARE_THREADS]
    #[arg(long, global = true, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Keep memory under about this much (K, M, G suffixes; at least 32M): sizes the read
    /// buffers in flight and the local caches
    #[arg(long, global = true, env = "BAKARE_MEMORY_LIMIT", hide_env_values = true, default_value = "512M", value_name = "SIZE", value_parser = parse_memory_limit)]
    pub memory_limit: u64,
    /// Requests to a remote repository in flight at most (fewer after errors; uploads are
    /// also bounded by --memory-limit)
    #[arg(
        long,
        global = true,
        env = "BAKARE_CONNECTIONS",
        hide_env_values = true,
        default_value_t = 8,
        value_name = "N"
    )]
    pub connections: usize,
    /// Stop resumably (exit 75) when a remote repository made no progress for this long
    /// (s, m, h suffixes)
    #[arg(long, global = true, env = "BAKARE_RETRY_BUDGET", hide_env_values = true, default_value = "15m", value_name = "DURATION", value_parser = parse_duration)]
    pub retry_budget: std::time::Duration,
    /// A remote request that moves no bytes for this long is tried again (s, m suffixes);
    /// after a timeout the next requests get twice as long, up to 8 times, until calm
    #[arg(long, global = true, env = "BAKARE_STALL_TIMEOUT", hide_env_values = true, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub stall_timeout: std::time::Duration,
    /// SFTP host key check: strict (the host must be in ~/.ssh/known_hosts), add (add
    /// unknown hosts) or accept (any key; for tests)
    #[arg(long, global = true, env = "BAKARE_SFTP_KNOWN_HOSTS", hide_env_values = true, default_value = "strict", value_parser = ["strict", "add", "accept"])]
    pub sftp_known_hosts: String,
    /// SFTP private key file [default: ssh's own choice: the agent, ~/.ssh] [env:
    /// BAKARE_SFTP_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    pub sftp_key: Option<PathBuf>,
    /// Configuration file: default options per command, and profiles [default:
    /// ~/.config/bakare/config.toml where it exists] [env: BAKARE_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the options of this profile of the configuration file ([profile.NAME.SECTION]
    /// over [SECTION]) [env: BAKARE_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
}

impl Global {
    /// Options not given on the command line, from their environment variables. (Read here
    /// rather than by clap, whose usage lines list every option an environment variable set,
    /// as if it were required.)
    pub fn fill_from_env(&mut self) -> Result<(), String> {
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        for (field, name) in [
            (&mut self.repo, "BAKARE_REPOSITORY"),
            (&mut self.passphrase_file, "BAKARE_PASSPHRASE_FILE"),
            (&mut self.key_file, "BAKARE_KEY_FILE"),
            (&mut self.cache_dir, "BAKARE_CACHE_DIR"),
            (&mut self.sftp_key, "BAKARE_SFTP_KEY"),
        ] {
            if field.is_none() {
                *field = path(name);
            }
        }
        if self.repository_file.is_none() && self.repo.is_none() {
            self.repository_file = path("BAKARE_REPOSITORY_FILE");
        }
        if let Some(f) = &self.repository_file {
            let text = std::fs::read_to_string(f).map_err(|e| format!("repository file {}: {e}", f.display()))?;
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
            if first.is_empty() {
                return Err(format!("repository file {} names no repository", f.display()));
            }
            self.repo = Some(PathBuf::from(first));
        }
        if self.passphrase_command.is_none() && self.passphrase_file.is_none() {
            self.passphrase_command = std::env::var("BAKARE_PASSPHRASE_COMMAND").ok().filter(|v| !v.is_empty());
        }
        if self.threads.is_none()
            && let Ok(v) = std::env::var("BAKARE_THREADS")
        {
            self.threads = Some(parse_threads(&v).map_err(|e| format!("BAKARE_THREADS: {e}"))?);
        }
        Ok(())
    }
}

/// Worker threads: 1 to 256.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=256) => Ok(n),
        Ok(_) => Err(format!("{s:?}: between 1 and 256 threads")),
        Err(_) => Err(format!("{s:?} is not a number of threads")),
    }
}

/// `--compression`: a name or a zstd level, as the level (0: off).
pub fn parse_compression(s: &str) -> Result<i32, String> {
    match s.trim() {
        "off" => Ok(0),
        "fast" => Ok(-1),
        // restic's name for its default.
        "default" | "auto" => Ok(bakare_store::DEFAULT_COMPRESSION),
        "max" => Ok(19),
        n => match n.parse::<i32>() {
            Ok(level @ 1..=19) => Ok(level),
            _ => Err(format!("{s:?}: off, fast, default (or auto), max or a zstd level from 1 to 19")),
        },
    }
}

/// `--memory-limit`: a size of at least 32 MiB (less cannot hold one pack being written).
pub fn parse_memory_limit(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < 32 << 20 {
        return Err(format!("{s:?} is too little: at least 32M"));
    }
    Ok(n)
}

/// A duration: a number with an optional ms, s, m or h suffix (seconds without one).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (try 30s or 10m)"))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    n.checked_mul(ms).map(std::time::Duration::from_millis).ok_or_else(|| format!("{s:?} is too long"))
}

/// A size in bytes: a number with an optional K, M, G or T suffix (powers of 1024; `KiB`,
/// `MB` and the like read the same).
/// A time as nanoseconds since the epoch: RFC 3339, or a civil date and time in the local
/// time zone.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let ts = match s.parse::<jiff::Timestamp>() {
        Ok(ts) => ts,
        Err(_) => s
            .parse::<jiff::civil::DateTime>()
            .map_err(|e| format!("{s:?}: expected \"YYYY-MM-DD HH:MM[:SS]\" or RFC 3339 ({e})"))?
            .to_zoned(jiff::tz::TimeZone::system())
            .map_err(|e| e.to_string())?
            .timestamp(),
    };
    i64::try_from(ts.as_nanosecond()).map_err(|_| format!("{s:?}: out of range"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (try 128M or 2G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository and its master key
    Init(InitArgs),
    /// Back up files and folders
    Backup(BackupArgs),
    /// Continue the newest interrupted backup of this machine (or a named session)
    Resume(ResumeArgs),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// List the files of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot, or part of one
    Restore(RestoreArgs),
    /// Check the repository, and repair it from its redundancy
    Verify(VerifyArgs),
    /// Find files across all snapshots by fuzzy name, with their versions
    Find(FindArgs),
    /// Every version of one path across snapshots
    History(HistoryArgs),
    /// What changed between two snapshots
    Diff(DiffArgs),
    /// Remove snapshots by a retention policy or by name
    Forget(ForgetArgs),
    /// Delete data no snapshot uses, in two phases that need no lock
    ///
    /// A prune marks what no snapshot uses (packs older than a day; partly used packs are
    /// repacked first, their used blobs copied to new packs, until at most --max-unused of
    /// the space is wasted), and a later prune deletes what was marked: a day after the mark
    /// at the earliest, and once every backup that started before the mark has finished or
    /// been silent for a week. The output says when the marked space comes back. `--now`
    /// does both at once when no other backup or prune is running.
    Prune(GcArgs),
    /// Write a file of a snapshot to standard output, or a folder as a tar archive
    Dump(DumpArgs),
    /// Print a repository object as JSON, for debugging: config, snapshot, tree, pack
    /// (its blob table), index (a segment, or the list of them) or keys
    Cat {
        /// config, snapshot, tree, pack, index or keys
        #[arg(value_parser = ["config", "snapshot", "tree", "pack", "index", "keys"])]
        what: String,
        /// The snapshot (id, prefix, latest), tree (blob id), pack (id) or index segment (id;
        /// without one, the segments are listed)
        id: Option<String>,
    },
    /// Sizes: what a restore would write, the unique data behind it, deduplication and
    /// compression, per snapshot and for the whole repository
    Stats(StatsArgs),
    /// List this machine's cache folders (one per repository), and remove those of
    /// repositories not used for a while
    Cache(CacheArgs),
    /// Copy snapshots from another repository into this one (re-encrypted, deduplicated
    /// against what this one holds; snapshots copied before are skipped)
    Copy(CopyArgs),
    /// Mount the snapshots as a read-only file system (FUSE) until Ctrl-C or umount:
    /// MOUNTPOINT/snapshots/TIME, ids/ID, hosts/HOST/TIME, tags/TAG/TIME
    Mount(MountArgs),
    /// Add, remove or set the tags of snapshots (each is written anew under its new id)
    Tag(TagArgs),
    /// Watch folders for changes, so that backups of them list only the folders that changed
    ///
    /// Runs until Ctrl-C or SIGTERM (as a service: see the README). It needs root (fanotify
    /// filesystem marks: one per filesystem, no limit on folders). A backup asks it which
    /// folders changed since the last backup of the same folders and lists only those,
    /// taking every other folder from that backup; when the watcher cannot vouch for the
    /// whole time since then (it was not running, restarted, or the kernel dropped events),
    /// the backup walks everything and says why.
    Watch(WatchArgs),
    /// Manage keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    ///
    /// bash: `bakare completions bash > ~/.local/share/bash-completion/completions/bakare`;
    /// zsh: into a folder of your $fpath as `_bakare`; fish:
    /// `bakare completions fish > ~/.config/fish/completions/bakare.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (bakare.1 and one per command) into a folder
    Man {
        /// Folder to write them into (created if missing)
        dir: PathBuf,
    },
    /// Tools for benchmarks and diagnosis
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// A bare parallel lstat walk, as the backup walks: the reference for no-change backups
    StatWalk {
        /// Folder to walk
        path: PathBuf,
    },
    /// Open a local state file with its integrity check (backups run this in a child process)
    CheckState {
        /// The state.redb file
        path: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// argon2id memory in KiB for sealing the master key
    #[arg(long, default_value_t = 65536, hide = true)]
    pub kdf_memory_kib: u32,
    /// argon2id passes
    #[arg(long, default_value_t = 3, hide = true)]
    pub kdf_passes: u32,
    /// Average chunk size in KiB (minimum is half, maximum eight times)
    #[arg(long, default_value_t = 1024, hide = true)]
    pub chunk_kib: u32,
    /// Target pack size in MiB
    #[arg(long, default_value_t = 16, hide = true)]
    pub pack_mib: u32,
}

/// When checkpoints are written (small values are for tests).
#[derive(Args, Debug, Clone)]
pub struct CheckpointArgs {
    /// Checkpoint after this many files read
    #[arg(long, default_value_t = 20_000, env = "BAKARE_CHECKPOINT_FILES", hide = true)]
    pub checkpoint_files: usize,
    /// Checkpoint after this many MiB read
    #[arg(long, default_value_t = 1024, env = "BAKARE_CHECKPOINT_MIB", hide = true)]
    pub checkpoint_mib: u64,
    /// Checkpoint after this many seconds
    #[arg(long, default_value_t = 300, env = "BAKARE_CHECKPOINT_SECS", hide = true)]
    pub checkpoint_secs: u64,
    /// Renew the session's heartbeat this often, in seconds
    #[arg(long, default_value_t = 60, env = "BAKARE_HEARTBEAT_SECS", hide = true)]
    pub heartbeat_secs: u64,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// Session id (or a prefix of it) [default: the newest of this host]
    pub session: Option<String>,
    /// Hooks around the continued backup (never taken from the repository: its session
    /// records can be written with a put-only key)
    #[command(flatten)]
    pub hooks: HookArgs,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and folders to back up
    #[arg(
        value_name = "PATH",
        required_unless_present_any = ["files_from", "files_from_verbatim", "files_from_raw", "stdin"],
        conflicts_with = "stdin"
    )]
    pub paths: Vec<PathBuf>,
    /// Read the paths to back up from a file, one per line: blank lines and lines starting
    /// with # are skipped, glob patterns expanded; `-` reads standard input (repeatable)
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Read the paths to back up from a file, one per line, each taken as it is (repeatable)
    #[arg(long, value_name = "FILE")]
    pub files_from_verbatim: Vec<PathBuf>,
    /// Read the paths to back up from a file, separated by NUL bytes, as `find -print0`
    /// writes them (repeatable)
    #[arg(long, value_name = "FILE")]
    pub files_from_raw: Vec<PathBuf>,
    /// Exclude paths matching a gitignore-style pattern (repeatable)
    #[arg(long, short = 'e', value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// As --exclude, ignoring case (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub iexclude: Vec<String>,
    /// Read exclude patterns from a file, one per line (repeatable)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Honour .gitignore files found in the backed-up folders
    #[arg(long)]
    pub git_ignore: bool,
    /// Do not cross file systems: folders mounted inside a source are kept, empty
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Leave out folders holding a CACHEDIR.TAG file with the standard signature
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out folders holding a file of this name; with NAME:HEADER only if the file
    /// begins with HEADER (repeatable)
    #[arg(long, value_name = "NAME[:HEADER]")]
    pub exclude_if_present: Vec<String>,
    /// Leave out files larger than SIZE (K, M, G, T suffixes)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Do not back up extended attributes (nor so POSIX ACLs and SELinux labels)
    #[arg(long)]
    pub no_xattrs: bool,
    /// Tag the snapshot (repeatable)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Host name to record [default: this machine's]
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Time to record for the snapshot instead of now: "2026-12-24 18:00[:00]" in local
    /// time, or RFC 3339 ("2026-12-24T17:00:00Z")
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub time: Option<i64>,
    /// Read every file again, trusting nothing remembered from earlier backups
    #[arg(long)]
    pub force_rehash: bool,
    /// List every folder even when `bakare watch` says which changed, and warn of each folder
    /// found changed that the watcher did not name (writes through mmap, network
    /// filesystems): the verification walk, weekly by the README's timer
    #[arg(long)]
    pub walk_all: bool,
    /// Say what the backup would read (new and changed files, by the local memo; with -v,
    /// which), reading no file and writing nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Back up standard input (a dump piped in) as one file, /NAME of its own snapshot
    #[arg(long, conflicts_with_all = ["files_from", "files_from_verbatim", "files_from_raw", "dry_run", "fs_snapshot"])]
    pub stdin: bool,
    /// The name of the file --stdin stores
    #[arg(long, value_name = "NAME", default_value = "stdin", requires = "stdin")]
    pub stdin_filename: String,
    /// Write Reed-Solomon parity with each pack: N recovery shards of 1/64 of the pack each
    /// (N/64 more space), so that `verify --repair` rebuilds up to N damaged parts of a pack
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=16))]
    pub parity: u16,
    /// Compression: off, fast (zstd -1), default (zstd 2; also auto), max (zstd 19) or a zstd
    /// level from 1 to 19; chunks that do not compress are stored as they are, small files are
    /// compressed together
    #[arg(long, default_value = "default", value_name = "LEVEL", value_parser = parse_compression)]
    pub compression: i32,
    /// Read the sources from a filesystem snapshot taken when the backup starts, so that it
    /// holds one instant of the tree: btrfs (every source must be on btrfs), auto (a btrfs
    /// snapshot where the source is on btrfs, the live tree elsewhere) or off. Needs root;
    /// the snapshot is deleted afterwards (after a kill, by the next backup)
    #[arg(long, value_name = "KIND", default_value = "off", value_parser = ["auto", "btrfs", "off"])]
    pub fs_snapshot: String,
    #[command(flatten)]
    pub hooks: HookArgs,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
}

/// Commands run around a backup.
#[derive(Args, Debug, Clone)]
pub struct HookArgs {
    /// Run COMMAND (with sh -c) before the backup reads anything; its output goes into the
    /// snapshot's log. If it fails the backup goes on, unless --pre-hook-required
    #[arg(long, value_name = "COMMAND")]
    pub pre_hook: Option<String>,
    /// A --pre-hook that fails or times out stops the backup
    #[arg(long, requires = "pre_hook")]
    pub pre_hook_required: bool,
    /// Run COMMAND (with sh -c) after the backup, told how it ended in BAKARE_OUTCOME
    /// (success, partial, failed, interrupted, resumable), BAKARE_EXIT_CODE,
    /// BAKARE_SNAPSHOT_ID and BAKARE_ERROR
    #[arg(long, value_name = "COMMAND")]
    pub post_hook: Option<String>,
    /// Seconds a hook may run before it is killed, with what it started
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub hook_timeout: u64,
}

/// Which snapshots `latest` names (restic's flags): with a path (`latest:/home/me/doc`),
/// `latest` is the newest snapshot that holds it.
#[derive(Args, Debug, Default, Clone)]
pub struct FilterArgs {
    /// Only snapshots of this host (repeatable: any of them)
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// Only snapshots that backed up this path (repeatable: all of them)
    #[arg(long, value_name = "PATH")]
    pub path: Vec<PathBuf>,
    /// Only snapshots with this tag (repeatable: all of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
}

impl FilterArgs {
    pub fn filter(&self) -> bakare_store::SnapshotFilter {
        use std::os::unix::ffi::OsStrExt as _;
        bakare_store::SnapshotFilter {
            hosts: self.host.clone(),
            paths: self
                .path
                .iter()
                .map(|p| {
                    let b = p.as_os_str().as_bytes();
                    let t = b.strip_suffix(b"/").filter(|t| !t.is_empty()).unwrap_or(b);
                    t.to_vec()
                })
                .collect(),
            tags: self.tag.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Snapshots to count (ids, prefixes, latest, latest~N) [default: every snapshot the
    /// filters let through]
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Also a line for each snapshot
    #[arg(long)]
    pub per_snapshot: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// SNAPSHOT:PATH (`latest` is the newest holding PATH); a folder (or the whole
    /// snapshot) is written as a tar archive
    pub target: String,
    /// The path, as restic's `dump SNAPSHOT PATH` takes it
    #[arg(value_name = "PATH")]
    pub dir: Option<String>,
    /// Write a folder as this archive format (only tar)
    #[arg(long, default_value = "tar", value_parser = ["tar"])]
    pub archive: String,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots to change (ids, prefixes, latest, latest~N) [default: every snapshot the
    /// filters let through]
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Add this tag (repeatable)
    #[arg(long, value_name = "TAG", required_unless_present_any = ["remove", "set"])]
    pub add: Vec<String>,
    /// Remove this tag (repeatable)
    #[arg(long, value_name = "TAG")]
    pub remove: Vec<String>,
    /// Replace the tags with these (repeatable; `--set ''` removes them all)
    #[arg(long, value_name = "TAG", conflicts_with_all = ["add", "remove"])]
    pub set: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// What `snapshots --group-by` groups by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

fn parse_group_by(s: &str) -> Result<GroupBy, String> {
    let mut g = GroupBy::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "host" => g.host = true,
            "paths" | "path" => g.paths = true,
            "tags" | "tag" => g.tags = true,
            other => return Err(format!("{other:?}: group by host, paths or tags")),
        }
    }
    Ok(g)
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only the newest N snapshots of each group (see --group-by)
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
    /// Group snapshots by any of host, paths, tags (comma-separated), each group under a
    /// heading [default with --latest: host,paths]
    #[arg(long, value_name = "FIELDS", value_parser = parse_group_by)]
    pub group_by: Option<GroupBy>,
    /// Show times in UTC instead of local time
    #[arg(long)]
    pub utc: bool,
    /// Show each snapshot's log under it: the pre-hook's output, the filesystem snapshots
    /// read, the files that could not be read
    #[arg(long)]
    pub log: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// SNAPSHOT or SNAPSHOT:PATH (`latest` is the newest holding PATH, `latest~N` the N-th
    /// before it)
    pub target: String,
    /// A folder or file in the snapshot (as restic's `ls SNAPSHOT PATH`)
    #[arg(value_name = "PATH")]
    pub dir: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// List recursively
    #[arg(long, short = 'R')]
    pub recursive: bool,
    /// Show mode, size and modification time
    #[arg(long, short = 'l')]
    pub long: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// SNAPSHOT or SNAPSHOT:PATH (`latest` is the newest holding PATH)
    pub snapshot: String,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Folder to restore into
    #[arg(long, short = 't', value_name = "DIR")]
    pub target: PathBuf,
    /// Restore into a folder that already has files, replacing files of the same name; a
    /// file already there with the snapshot's size and mtime is kept, so a restore run
    /// again after an interruption continues where it stopped
    #[arg(long)]
    pub overwrite: bool,
    /// Write what is readable of a damaged file, its lost ranges as holes (it is still
    /// reported, and the exit code is 4)
    #[arg(long)]
    pub keep_damaged: bool,
    /// Restore only what matches this gitignore-style pattern, matched against the path in
    /// the snapshot (`*.pdf`, `/home/me/docs`), with all below it (repeatable)
    #[arg(long, short = 'i', value_name = "PATTERN")]
    pub include: Vec<String>,
    /// As --include, ignoring case (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub iinclude: Vec<String>,
    /// Leave out what matches this gitignore-style pattern, with all below it (repeatable)
    #[arg(long, short = 'e', value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// As --exclude, ignoring case (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub iexclude: Vec<String>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Also read, hash and authenticate every blob of every pack
    #[arg(long)]
    pub read_data: bool,
    /// Read the N-th of M parts of the packs (1/7 on Monday, 2/7 on Tuesday, ...)
    #[arg(long, value_name = "N/M", conflicts_with = "read_data", value_parser = parse_subset)]
    pub read_data_subset: Option<(u32, u32)>,
    /// Repair what redundancy allows, then mark what is lost and verify again
    #[arg(long)]
    pub repair: bool,
    /// With --repair: re-read lost data from files under this path, where they were backed up from
    #[arg(long, value_name = "PATH", requires = "repair")]
    pub source: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// What to look for: fuzzy (letters in order), smart case, typos forgiven in file names
    pub query: String,
    /// Search only these snapshots (repeatable)
    #[arg(long, short = 's', value_name = "SNAPSHOT")]
    pub snapshot: Vec<String>,
    /// Search only snapshots of this host
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Only paths below this folder
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<PathBuf>,
    /// Show at most this many paths
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The path, as it was backed up (relative paths are taken from the current folder)
    pub path: PathBuf,
    /// Only snapshots of this host
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot
    pub a: String,
    /// The newer snapshot (not with --local)
    #[arg(required_unless_present = "local")]
    pub b: Option<String>,
    /// Compare snapshot A with the live files instead, writing nothing
    #[arg(long, conflicts_with = "b")]
    pub local: bool,
    /// With --local: the folder to compare [default: the snapshot's path, if it has one]
    #[arg(requires = "local", value_name = "PATH", long = "path")]
    pub path: Option<std::path::PathBuf>,
    /// `latest` names the newest snapshot of this host (repeatable: any of them)
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// `latest` names the newest snapshot with this tag (repeatable: all of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove (ids or prefixes, latest, latest~N), besides any a policy removes
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_last: usize,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_hourly: usize,
    /// Keep the newest snapshot of each of the last N days that have one (UTC)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_daily: usize,
    /// Keep the newest snapshot of each of the last N weeks that have one (ISO weeks)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_weekly: usize,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_monthly: usize,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_yearly: usize,
    /// Keep every snapshot within this span before the newest of its group (1y6m, 30d,
    /// 2w, 12h: calendar years, months, weeks, days, hours)
    #[arg(long, value_name = "DURATION", value_parser = bakare_store::forget::Within::parse)]
    pub keep_within: Option<bakare_store::forget::Within>,
    /// Keep every snapshot with these tags (comma-separated: all of them; repeatable: any
    /// of the lists)
    #[arg(long, value_name = "TAG[,TAG]")]
    pub keep_tag: Vec<String>,
    /// Apply the policy only to snapshots with this tag (repeatable: all of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Apply the policy only to snapshots of this host
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Apply the policy only to snapshots that include this path (repeatable)
    #[arg(long, value_name = "PATH")]
    pub path: Vec<PathBuf>,
    /// Run prune afterwards
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub gc: GcArgs,
}

/// Garbage collection's waiting times (hours; fractions allowed).
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Mark nothing younger than this: it may belong to a backup still running
    #[arg(long, default_value_t = 24.0, value_name = "HOURS", hide = true)]
    pub min_pack_age_hours: f64,
    /// Sweep a mark no sooner than this after it was made
    #[arg(long, default_value_t = 24.0, value_name = "HOURS", hide = true)]
    pub grace_hours: f64,
    /// A backup whose heartbeat is older than this is dead and holds nothing back
    #[arg(long, default_value_t = 168.0, value_name = "HOURS", hide = true)]
    pub session_expiry_hours: f64,
    /// Show what would be removed, deleted and marked; change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Repack partly used packs until at most this share of the repository's space is
    /// unused (0% to 100%; 100% never repacks)
    #[arg(long, default_value = "5%", value_name = "PERCENT")]
    pub max_unused: String,
    /// Copy at most this much used data out of partly used packs in one prune (K, M, G)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_repack_size: Option<u64>,
    /// Mark and delete at once, without the waits; refused while any other backup or prune
    /// is running (an interrupted backup is not: it reads the index afresh when continued)
    #[arg(long, conflicts_with = "dry_run")]
    pub now: bool,
}

fn parse_subset(s: &str) -> Result<(u32, u32), String> {
    let (n, m) = s.split_once('/').ok_or("expected N/M, for example 1/7")?;
    let n: u32 = n.parse().map_err(|_| "N must be a number")?;
    let m: u32 = m.parse().map_err(|_| "M must be a number")?;
    if n == 0 || m == 0 || n > m {
        return Err("need 1 <= N <= M".into());
    }
    Ok((n, m))
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Export a key to a file
    Export(KeyExportArgs),
    /// List the key files, marking those the passphrase in use opens
    List,
    /// Add a passphrase (two key files, as init writes)
    Add(NewPassphraseArgs),
    /// Change the passphrase in use: add the new one, then remove the old one's key files
    Passwd(NewPassphraseArgs),
    /// Remove a key file (never the last one, nor one the passphrase in use opens)
    Remove {
        /// The key file's id (a prefix is enough), as `key list` shows it
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct NewPassphraseArgs {
    /// Read the new passphrase from this file [default: BAKARE_NEW_PASSPHRASE, else a
    /// terminal prompt]
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KeyExportArgs {
    /// Export the put-only key: it can add backups but read none
    #[arg(long, required = true)]
    pub put_only: bool,
    /// File to write (created with mode 0600; must not exist)
    pub file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::{parse_compression, parse_size};

    #[test]
    fn compression_names_and_levels() {
        assert_eq!(parse_compression("default"), Ok(2));
        assert_eq!(parse_compression("auto"), Ok(2), "restic's name");
        assert_eq!(parse_compression("off"), Ok(0));
        assert_eq!(parse_compression("max"), Ok(19));
        assert_eq!(parse_compression("3"), Ok(3));
        assert!(parse_compression("0").is_err() && parse_compression("20").is_err());
        assert!(parse_compression("zstd").unwrap_err().contains("from 1 to 19"));
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512mb"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 1k "), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err(), "overflow");
    }
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    /// Remove the cache folders of repositories not used on this machine for --max-unused
    #[arg(long)]
    pub cleanup: bool,
    /// How long a cache folder may go unused before --cleanup removes it (s, m, h, d suffixes)
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub max_unused: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Snapshots of the source to copy (ids, prefixes, latest, latest~N) [default: every
    /// snapshot the filters let through]
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// The repository to copy from [env: BAKARE_FROM_REPOSITORY]
    #[arg(long, value_name = "REPO")]
    pub from_repo: Option<PathBuf>,
    /// Read the source repository's passphrase from this file (else
    /// BAKARE_FROM_PASSPHRASE, else a terminal prompt)
    #[arg(long, visible_alias = "from-password-file", value_name = "FILE")]
    pub from_passphrase_file: Option<PathBuf>,
    /// Take the source repository's passphrase from the first line this command prints
    #[arg(
        long,
        visible_alias = "from-password-command",
        value_name = "COMMAND",
        conflicts_with = "from_passphrase_file"
    )]
    pub from_passphrase_command: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Folders to watch (the ones you back up)
    pub paths: Vec<PathBuf>,
    /// Say whether a watcher runs, since when it has seen every change, and how many folders
    /// changed (exit 1 when none runs)
    #[arg(long, conflicts_with = "continuous")]
    pub status: bool,
    /// Also back the folders up (to --repo) whenever changes settle: after --debounce
    /// without a new change, or at most 6 times that after the first. Each backup lists
    /// only what changed. The passphrase must come without a terminal (BAKARE_PASSPHRASE,
    /// --passphrase-file or --passphrase-command)
    #[arg(long)]
    pub continuous: bool,
    /// How long changes must have settled before a continuous backup
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration, requires = "continuous")]
    pub debounce: std::time::Duration,
    /// How often a continuous backup lists every folder anyway (`backup --walk-all`), to
    /// catch what makes no event (writes through mmap, network filesystems) and name it
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = parse_duration, requires = "continuous")]
    pub verify_every: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty folder to mount on
    pub mountpoint: PathBuf,
    /// Show the files' extended attributes and ACLs (each `ls -l` of a file then asks the
    /// mount twice: listings of large folders are slower)
    #[arg(long)]
    pub xattrs: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}
