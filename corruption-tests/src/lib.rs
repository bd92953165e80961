//! Shared machinery of the corruption tests: a small real repository with two snapshots, a
//! pristine copy to reset it from, seeded mutations of one file of a given kind, and the
//! classification of what verify, repair and restore made of each.
//!
//! Run by `cargo test -p bakare-corruption-tests` (200 mutations per kind; set
//! `CORRUPTION_ITERATIONS` for a longer soak).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod remote;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bakare_planner::{
    BackupOptions, CheckOptions, Counters, Memo, MemoRecord, RestoreOptions, Start, StatFingerprint, backup, check,
    find_node, restore,
};
use bakare_store::KdfParams;
use bakare_store::backend::LocalBackend;
use bakare_store::verify::ReadData;
use bakare_store::{
    Access, BlobId, BlobKind, Checkpoint, CheckpointRefs, ChunkerParams, Node, Repository, Session, SessionOptions,
    parse_blob_table, read_pack_table,
};

/// The `bakare` binary of this build, built first if this package's tests run alone.
pub fn bakare_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("bakare");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo).args(["build", "-q", "-p", "bakare-cli"]).status().unwrap();
        assert!(status.success(), "building bakare failed");
    }
    bin
}

/// A repository driven through the real `bakare` binary, as a user would: one folder holding
/// the repository and the local caches of any number of hosts.
pub struct Cli {
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// `--repo`: `dir/repo`, or a remote URL.
    pub repo: String,
    /// More environment for every command (a remote store's credentials).
    pub env: Vec<(String, String)>,
}

impl Cli {
    pub fn new(dir: PathBuf) -> Self {
        let repo = dir.join("repo").to_string_lossy().into_owned();
        Self { dir, bin: bakare_binary(), repo, env: Vec::new() }
    }

    /// A repository at a remote URL, with this environment; local caches in `dir`.
    pub fn remote(dir: PathBuf, repo: &str, env: Vec<(String, String)>) -> Self {
        Self { dir, bin: bakare_binary(), repo: repo.to_string(), env }
    }

    /// A command on the repository, as host `default` with its own cache folder.
    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        self.cmd_as("default", args)
    }

    /// A command as `host` (its own cache folder; backups record it as their host).
    pub fn cmd_as(&self, host: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.bin);
        c.args(["--repo", &self.repo])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("BAKARE_PASSPHRASE", "pw")
            // No configuration file of the machine's user (an empty one).
            .env("BAKARE_CONFIG", "/dev/null")
            .env("BAKARE_CACHE_DIR", self.dir.join(format!("cache-{host}")))
            .env("BAKARE_CHECKPOINT_MIB", "1")
            .env("BAKARE_THREADS", "4")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().unwrap()
    }

    /// Creates the folder and the repository (fast key derivation, 1 MiB packs).
    pub fn init(&self) {
        self.init_with(&[]);
    }

    /// As [`Cli::init`], with more `init` arguments (`--chunk-kib 16`, say).
    pub fn init_with(&self, more: &[&str]) {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(&self.dir).unwrap();
        let mut args = vec!["init", "-q", "--kdf-memory-kib", "64", "--kdf-passes", "1", "--pack-mib", "1"];
        args.extend_from_slice(more);
        let out = self.run(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Bytes of all packs in the repository.
    pub fn packs_bytes(&self) -> u64 {
        let mut total = 0;
        let mut stack = vec![self.dir.join("repo/packs")];
        while let Some(d) = stack.pop() {
            // A running backup renames and deletes temporary packs under us: an entry gone
            // between the listing and its stat is skipped, not a failure.
            for e in fs::read_dir(d).into_iter().flatten().flatten() {
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    stack.push(e.path());
                } else if !e.file_name().to_string_lossy().starts_with(".tmp") {
                    total += m.len();
                }
            }
        }
        total
    }

    /// Restores `spec` into a new folder and returns its contents.
    pub fn restored(&self, spec: &str) -> BTreeMap<String, blake3::Hash> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let out = self.dir.join(format!("restore-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&out);
        ok(&self.run(&["restore", "-q", spec, "--target", out.to_str().unwrap()]), &format!("restore {spec}"));
        let c = contents(&out);
        let _ = fs::remove_dir_all(&out);
        c
    }
}

/// Sends a real signal (`-STOP`, `-CONT`, ...) to a child process; whether it was delivered.
pub fn signal(child: &std::process::Child, sig: &str) -> bool {
    std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().is_ok_and(|s| s.success())
}

/// Waits until `child` is stopped (state `T` in /proc), at most a minute.
pub fn wait_stopped(child: &mut std::process::Child) {
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backup ended ({status}) before reaching its failpoint");
        }
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state follows the command name in parentheses.
        if s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T')) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the backup never stopped at its failpoint");
}

/// Asserts a command succeeded, showing its output if not.
pub fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a deterministic source tree like a user's (the project's own generator, with
/// symlinks, empty folders and odd names).
pub fn gen_tree(dir: &Path, files: u32, mean_kib: u32, seed: u32) {
    let spec = bakare_testkit::TreeSpec::new(u64::from(files)).mean_kib(f64::from(mean_kib)).seed(u64::from(seed));
    bakare_testkit::create(dir, &spec).unwrap();
}

/// Changes `percent` of the files under `dir` as a user would.
pub fn mutate_tree(dir: &Path, percent: u32, seed: u64) {
    bakare_testkit::mutate(dir, percent, seed, true).unwrap();
}

/// A small deterministic generator (xorshift), so every run mutates the same bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

/// The kinds of repository file mutated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Config,
    ConfigMirror,
    KeyFile,
    IndexSegment,
    Snapshot,
    SnapshotMirror,
    PackBlobTable,
    PackData,
    TreeBlob,
    Session,
    Checkpoint,
    GcMark,
    /// Parity objects (only in a fixture made with parity).
    Parity,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Config,
        Kind::ConfigMirror,
        Kind::KeyFile,
        Kind::IndexSegment,
        Kind::Snapshot,
        Kind::SnapshotMirror,
        Kind::PackBlobTable,
        Kind::PackData,
        Kind::TreeBlob,
        Kind::Session,
        Kind::Checkpoint,
        Kind::GcMark,
    ];

    /// Whether the kind holds only metadata, which redundancy must repair in full.
    pub fn metadata_only(&self) -> bool {
        !matches!(self, Kind::PackData)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutation {
    BitFlip,
    Overwrite,
    ZeroRun,
    Truncate,
    StaleCopy,
}

impl Mutation {
    pub const ALL: [Mutation; 5] =
        [Mutation::BitFlip, Mutation::Overwrite, Mutation::ZeroRun, Mutation::Truncate, Mutation::StaleCopy];
}

/// What came of one mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The mutation left the bytes as they were.
    NoOp,
    /// Detected, and after repair every snapshot restores byte-identical.
    Repaired,
    /// Detected; the files that lost data are reported and everything else restores identical.
    ReportedLoss,
    /// Not detected (must never happen).
    Undetected,
    /// A restore gave bytes that differ from what was backed up (must never happen).
    WrongData,
    /// Repair left problems behind, or a panic (must never happen).
    Failed,
}

/// A repository with two snapshots of a source tree, and what each should restore to.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub source: PathBuf,
    pub pristine: BTreeMap<PathBuf, Vec<u8>>,
    /// Snapshot time -> relative path -> content hash, per snapshot.
    pub expected: BTreeMap<i64, BTreeMap<String, blake3::Hash>>,
    pub access: Access,
}

fn write_tree(root: &Path, generation: u8) {
    for i in 0..24u32 {
        let dir = root.join(format!("d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        let len = 300 + (i as usize * 7919) % 40_000;
        let mut x = u64::from(i) * 31 + u64::from(if i % 3 == 0 { generation } else { 0 }) + 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 3 == 0 { b'a' + (x % 7) as u8 } else { x as u8 }
            })
            .collect();
        let path = dir.join(format!("f{i}"));
        fs::write(&path, bytes).unwrap();
        // Old enough that the memo trusts it (a file written just now is "racy").
        let t = filetime::FileTime::from_unix_time(1_600_000_000 + i64::from(i) + i64::from(generation) * 100, 0);
        filetime::set_file_mtime(&path, t).unwrap();
    }
    fs::write(root.join("empty"), b"").unwrap();
    filetime::set_file_mtime(root.join("empty"), filetime::FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
}

/// A prune's mark: a backup of other files, forgotten, its packs marked.
fn leave_gc_mark(repo: &Arc<Repository>, extra: &Path) {
    write_tree(extra, 9);
    let opts = BackupOptions { host: "h".into(), ..BackupOptions::default() };
    let r = backup(repo.clone(), &Memo::disabled(), &[extra.to_path_buf()], &opts, Arc::default()).unwrap();
    bakare_store::forget::remove_snapshot(repo, &r.id).unwrap();
    let policy = bakare_store::gc::GcPolicy { min_pack_age_ns: 0, ..bakare_store::gc::GcPolicy::default() };
    let report = bakare_store::prune::prune(repo, "h", None, &policy).unwrap();
    assert!(report.marked_packs > 0, "the fixture has a mark");
}

/// Content hash of every file below `root`, by relative path.
pub fn contents(root: &Path) -> BTreeMap<String, blake3::Hash> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_symlink() {
                let target = fs::read_link(&p).unwrap();
                out.insert(rel, blake3::hash(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())));
            } else {
                out.insert(rel, blake3::hash(&fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn snapshot_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_parity(0)
    }

    /// As [`Fixture::new`], with `parity` recovery shards written with every pack.
    pub fn with_parity(parity: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        let repo_dir = dir.path().join("repo");
        let kdf = KdfParams { m_kib: 64, t: 1, p: 1 };
        let chunker = ChunkerParams { min: 1024, avg: 4096, max: 16384 };
        let mut repo = Repository::init(Arc::new(LocalBackend::new(&repo_dir)), b"pw", kdf, chunker).unwrap();
        repo.set_parity(parity);
        let repo = Arc::new(repo);
        let opts = BackupOptions { host: "h".into(), user: "u".into(), ..BackupOptions::default() };
        let mut expected = BTreeMap::new();
        for generation in [1, 2] {
            write_tree(&source, generation);
            let r =
                backup(repo.clone(), &Memo::disabled(), std::slice::from_ref(&source), &opts, Arc::default()).unwrap();
            expected.insert(r.snapshot.time_ns, contents(&source));
        }
        leave_interrupted_backup(&repo, &source);
        leave_gc_mark(&repo, &dir.path().join("extra"));
        let access = repo.access().clone();
        let pristine = snapshot_files(&repo_dir);
        Self { dir, source, pristine, expected, access }
    }

    pub fn repo_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Puts the repository back as it was after the two backups.
    pub fn reset(&self) {
        let root = self.repo_dir();
        fs::remove_dir_all(&root).unwrap();
        for (rel, bytes) in &self.pristine {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
    }

    /// The repository's files under `prefix` (relative paths), as the fixture left them.
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        self.files(prefix)
    }

    /// Whether plain `verify` (no repair, no data read) reports a problem.
    pub fn verify_finds_a_problem(&self) -> Result<bool, String> {
        let repo = self.repo();
        bakare_store::verify::verify(&repo, ReadData::No).map(|s| !s.is_clean()).map_err(|e| e.to_string())
    }

    fn files(&self, prefix: &str) -> Vec<PathBuf> {
        self.pristine.keys().filter(|p| p.starts_with(prefix)).cloned().collect()
    }

    /// A handle on the repository, for backups in tests.
    pub fn open_repo(&self) -> Arc<Repository> {
        Arc::new(self.repo())
    }

    fn repo(&self) -> Repository {
        Repository::open_with_key(Arc::new(LocalBackend::new(self.repo_dir())), self.access.clone()).unwrap()
    }

    /// Picks the file and byte range a mutation of `kind` may touch.
    fn target(&self, kind: Kind, rng: &mut Rng) -> (PathBuf, std::ops::Range<usize>) {
        let pick = |files: Vec<PathBuf>, rng: &mut Rng| files[rng.below(files.len())].clone();
        let whole = |p: PathBuf| {
            let len = self.pristine[&p].len();
            (p, 0..len)
        };
        match kind {
            Kind::Config => whole("config".into()),
            Kind::ConfigMirror => whole("config.mirror".into()),
            Kind::KeyFile => whole(pick(self.files("keys"), rng)),
            Kind::IndexSegment => whole(pick(self.files("index"), rng)),
            Kind::Snapshot => whole(pick(self.files("snapshots/"), rng)),
            Kind::SnapshotMirror => whole(pick(self.files("snapshots.mirror"), rng)),
            Kind::Session => whole(pick(self.files("sessions"), rng)),
            Kind::Checkpoint => whole(pick(self.files("checkpoints"), rng)),
            Kind::GcMark => whole(pick(self.files("gc"), rng)),
            Kind::Parity => whole(pick(self.files("parity"), rng)),
            Kind::PackBlobTable => {
                let p = pick(self.files("packs"), rng);
                let bytes = &self.pristine[&p];
                let n = bytes.len();
                let table = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
                (p, n - 8 - table..n)
            }
            Kind::PackData | Kind::TreeBlob => {
                let want = if kind == Kind::PackData { BlobKind::Data } else { BlobKind::Tree };
                let repo = self.repo();
                let key = &self.access.write_key().index_key;
                let mut candidates = Vec::new();
                for p in self.files("packs") {
                    let t = read_pack_table(repo.backend().as_ref(), &p.to_string_lossy(), key).unwrap();
                    for e in t.entries.iter().filter(|e| e.kind == want) {
                        candidates.push((p.clone(), e.offset as usize..(e.offset + e.length) as usize));
                    }
                }
                candidates[rng.below(candidates.len())].clone()
            }
        }
    }

    /// Mutates one file of `kind`; returns whether its bytes changed, and the blobs of the
    /// pack it mutated (empty for other files): the most that may be lost.
    pub fn mutate(&self, kind: Kind, m: Mutation, rng: &mut Rng) -> (bool, HashSet<BlobId>) {
        let (rel, range) = self.target(kind, rng);
        let at_risk: HashSet<BlobId> = if rel.starts_with("packs") {
            let key = &self.access.write_key().index_key;
            parse_blob_table("pack", &self.pristine[&rel], key).unwrap().entries.iter().map(|e| e.id).collect()
        } else {
            HashSet::new()
        };
        let path = self.repo_dir().join(&rel);
        let original = self.pristine[&rel].clone();
        let mut bytes = original.clone();
        let at = range.start + rng.below(range.len());
        match m {
            Mutation::BitFlip => bytes[at] ^= 1 << rng.below(8),
            Mutation::Overwrite => {
                for b in bytes.iter_mut().skip(at).take(1 + rng.below(16)) {
                    *b = rng.next_u64() as u8;
                }
            }
            Mutation::ZeroRun => {
                for b in bytes.iter_mut().skip(at).take(1 + rng.below(512)) {
                    *b = 0;
                }
            }
            Mutation::Truncate => bytes.truncate(at),
            Mutation::StaleCopy => {
                // Another object of the same kind in its place (for the config, its mirror of
                // another repository): what a restore from an old backup of the disk leaves.
                let others: Vec<_> = match kind {
                    Kind::Config | Kind::ConfigMirror => vec![foreign_config()],
                    // Another pack's table and trailer in place of this one's.
                    Kind::PackBlobTable => self
                        .files("packs")
                        .into_iter()
                        .filter(|p| *p != rel)
                        .map(|p| {
                            let other = &self.pristine[&p];
                            let n = other.len();
                            let table = u32::from_le_bytes(other[n - 8..n - 4].try_into().unwrap()) as usize;
                            let mut spliced = original[..range.start].to_vec();
                            spliced.extend_from_slice(&other[n - 8 - table..]);
                            spliced
                        })
                        .collect(),
                    _ => {
                        let dir = rel.parent().and_then(|p| p.components().next()).unwrap().as_os_str().to_owned();
                        self.files(&dir.to_string_lossy())
                            .into_iter()
                            .filter(|p| *p != rel)
                            .map(|p| self.pristine[&p].clone())
                            .collect()
                    }
                };
                if others.is_empty() {
                    bytes.truncate(at);
                } else {
                    bytes = others[rng.below(others.len())].clone();
                }
            }
        }
        fs::write(&path, &bytes).unwrap();
        (bytes != original, at_risk)
    }

    /// Repairs (with the source for lost data), then restores every snapshot and compares.
    pub fn judge(&self, at_risk: &HashSet<BlobId>) -> (Outcome, String) {
        let opts = CheckOptions {
            read_data: ReadData::All,
            repair: true,
            source: Some(self.source.clone()),
            passphrase: Some(b"pw".to_vec()),
            progress: None,
        };
        let backend = Arc::new(LocalBackend::new(self.repo_dir()));
        let out = match std::panic::catch_unwind(|| check(backend, self.access.clone(), &opts)) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return (Outcome::Failed, format!("check failed: {e}")),
            Err(_) => return (Outcome::Failed, "panic".into()),
        };
        if out.before.is_clean() {
            return (Outcome::Undetected, "verify found nothing".into());
        }
        if let Some(l) = out.before.lost.iter().find(|l| l.lost_chunks.iter().any(|c| !at_risk.contains(c))) {
            return (Outcome::Failed, format!("{} reported lost though none of its data was damaged", l.path));
        }
        let after = out.after.as_ref().unwrap();
        if !after.is_clean() {
            return (Outcome::Failed, format!("left after repair: {:?}", after.problems));
        }
        let repo = self.repo();
        let snaps = repo.snapshots().unwrap().snapshots;
        if snaps.len() != self.expected.len() {
            return (Outcome::Failed, format!("{} snapshots after repair", snaps.len()));
        }
        let mut lost = 0;
        for (id, snap) in &snaps {
            let target = self.dir.path().join(format!("restore-{}", id.short()));
            let _ = fs::remove_dir_all(&target);
            let start = find_node(&repo, snap.root, &self.source.to_string_lossy());
            let restored = start.and_then(|s| match s {
                Start::Tree(_) => restore(&repo, s, &target, RestoreOptions::default(), &Counters::default()),
                Start::Entry(_) => Err(bakare_planner::PlanError::NoSuchPath("source".into())),
            });
            let report = match restored {
                Ok(r) => r,
                Err(e) => return (Outcome::Failed, format!("restore of {}: {e}", id.short())),
            };
            let got = contents(&target);
            let want = &self.expected[&snap.time_ns];
            for (path, hash) in &got {
                if want.get(path) != Some(hash) {
                    return (Outcome::WrongData, format!("{path} in {} differs", id.short()));
                }
            }
            let missing: Vec<_> = want.keys().filter(|p| !got.contains_key(*p)).collect();
            if missing.len() != report.incomplete.len() {
                return (
                    Outcome::Failed,
                    format!("{} files missing but {} reported", missing.len(), report.incomplete.len()),
                );
            }
            lost += missing.len();
            let _ = fs::remove_dir_all(&target);
        }
        if lost > 0 {
            (Outcome::ReportedLoss, format!("{lost} files lost"))
        } else {
            (Outcome::Repaired, String::new())
        }
    }
}

impl Fixture {
    /// Restores every snapshot with no repair first (readers must ride over damage to
    /// metadata, which has a second copy): `Ok` when each is identical to what was backed up,
    /// else why not.
    pub fn restore_without_repair(&self) -> Result<(), String> {
        let repo = self.repo();
        let snaps = repo.snapshots().map_err(|e| e.to_string())?.snapshots;
        for (id, snap) in &snaps {
            let target = self.dir.path().join(format!("plain-restore-{}", id.short()));
            let _ = fs::remove_dir_all(&target);
            let start = find_node(&repo, snap.root, &self.source.to_string_lossy()).map_err(|e| e.to_string())?;
            let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                restore(&repo, start, &target, RestoreOptions::default(), &Counters::default())
            }))
            .map_err(|_| "restore panicked".to_string())?
            .map_err(|e| format!("restore of {}: {e}", id.short()))?;
            if !report.incomplete.is_empty() {
                return Err(format!("restore of {}: incomplete: {:?}", id.short(), report.incomplete));
            }
            if contents(&target) != self.expected[&snap.time_ns] {
                return Err(format!("restore of {} differs", id.short()));
            }
            let _ = fs::remove_dir_all(&target);
        }
        Ok(())
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// What an interrupted backup leaves: a session record and a checkpoint whose memo entries
/// name real blobs (the files of the first folder of the newest snapshot).
fn leave_interrupted_backup(repo: &Repository, source: &Path) {
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let Start::Tree(src) = find_node(repo, snap.root, &source.to_string_lossy()).unwrap() else { panic!("a folder") };
    let tree = repo.load_tree(&src).unwrap();
    let first = tree.entries.iter().find_map(|e| match &e.node {
        Node::Dir { tree } => Some((source.join(String::from_utf8_lossy(&e.name).as_ref()), *tree)),
        _ => None,
    });
    let (dir, id) = first.unwrap();
    let mut entries = Vec::new();
    let mut blobs = Vec::new();
    for e in repo.load_tree(&id).unwrap().entries {
        if let Node::File { chunks, .. } = e.node {
            let path = dir.join(String::from_utf8_lossy(&e.name).as_ref());
            let fp = StatFingerprint::of(&fs::symlink_metadata(&path).unwrap());
            let record = MemoRecord::new(&path, fp, false, chunks.clone(), None);
            entries.push((record.key.clone(), record.encode()));
            blobs.extend(chunks);
        }
    }
    let now = bakare_store::clock::now_ns();
    let session = Session {
        id: Session::new_id().unwrap(),
        host: "h".into(),
        started_ns: now,
        heartbeat_ns: now,
        paths: vec![source.to_string_lossy().as_bytes().to_vec()],
        options: SessionOptions::default(),
        checkpoints: 1,
        interrupted: false,
        committing: None,
    };
    repo.put_session(&session).unwrap();
    let refs = CheckpointRefs { session: session.id, seq: 1, blobs };
    repo.save_checkpoint(&Checkpoint { refs, entries }).unwrap();
}

/// A valid config of another repository.
fn foreign_config() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let kdf = KdfParams { m_kib: 64, t: 1, p: 1 };
    Repository::init(Arc::new(LocalBackend::new(dir.path())), b"other", kdf, ChunkerParams::default()).unwrap();
    fs::read(dir.path().join("config")).unwrap()
}

/// Whether `tool` is on the PATH.
pub fn on_path(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a command, which must succeed.
pub fn run(args: &[&str]) {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A file system of `kind` on a loop device over a sparse image, mounted at `mnt` until
/// dropped.
pub struct LoopFs {
    pub mnt: PathBuf,
    pub dev: String,
}

impl LoopFs {
    pub fn make(kind: &str, dir: &Path) -> Option<Self> {
        Self::make_sized(kind, dir, 400)
    }

    /// As [`LoopFs::make`], on an image of `mib` MiB.
    pub fn make_sized(kind: &str, dir: &Path, mib: u64) -> Option<Self> {
        let mkfs = format!("mkfs.{kind}");
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
        if !root || !on_path("losetup") || !on_path(&mkfs) {
            eprintln!("skipping {kind}: needs root, losetup and {mkfs}");
            return None;
        }
        let image = dir.join(format!("{kind}.img"));
        std::fs::File::create(&image).unwrap().set_len(mib << 20).unwrap();
        let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(&image).output().unwrap();
        if !out.status.success() {
            eprintln!("skipping {kind}: no loop device: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mnt = dir.join(format!("mnt-{kind}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let fs = Self { mnt, dev };
        let quiet = if kind == "xfs" || kind == "btrfs" { "-q" } else { "-qF" };
        run(&[&mkfs, quiet, &fs.dev]);
        run(&["mount", &fs.dev, fs.mnt.to_str().unwrap()]);
        Some(fs)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = std::process::Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
