//! Incremental backups through the memo in `state.redb`: what is read, what is trusted, and
//! that no damage to the memo can give a wrong snapshot.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bakare_planner::{BackupOptions, BackupReport, Memo, Start, backup, find_node};
use bakare_store::{BlobId, ChunkerParams, Repository};

use crate::engine::{describe, new_repo, opts, restore_folder};

struct Setup {
    tmp: tempfile::TempDir,
    src: PathBuf,
    repo: Arc<Repository>,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let repo = new_repo(&tmp.path().join("repo"), ChunkerParams { min: 4096, avg: 16384, max: 65536 });
        Self { tmp, src, repo }
    }

    fn memo_path(&self) -> PathBuf {
        self.tmp.path().join("cache/state.redb")
    }

    fn backup_with(&self, o: &BackupOptions) -> BackupReport {
        let memo = Memo::open(&self.memo_path(), &bakare_store::Budget::default());
        backup(self.repo.clone(), &memo, std::slice::from_ref(&self.src), o, Arc::default()).unwrap()
    }

    fn backup(&self) -> BackupReport {
        self.backup_with(&opts())
    }

    /// The tree id of the source folder in a snapshot. (The root also records the folders
    /// above it, `/tmp` among them, whose mtimes change whenever anything makes a temp file.)
    fn src_tree(&self, report: &BackupReport) -> BlobId {
        match find_node(&self.repo, report.snapshot.root, &self.src.canonicalize().unwrap().to_string_lossy()).unwrap()
        {
            Start::Tree(id) => id,
            Start::Entry(_) => panic!("the source is a folder"),
        }
    }

    fn check_restore(&self, report: &BackupReport) {
        let out = self.tmp.path().join(format!("out-{}", report.id.short()));
        restore_folder(&self.repo, report, &self.src, &out);
        assert_eq!(describe(&self.src), describe(&out), "restore differs from the source");
    }
}

fn gen_tree(dir: &Path, files: u64, seed: u64) {
    bakare_testkit::create(dir, &bakare_testkit::TreeSpec::new(files).mean_kib(4.0).seed(seed)).unwrap();
}

/// Moves every mtime an hour back, so no file counts as modified "just now" (racy).
fn age(root: &Path) {
    for (path, _) in stat_files(root) {
        let m = fs::symlink_metadata(&path).unwrap();
        let t = filetime::FileTime::from_unix_time(m.mtime() - 3600, m.mtime_nsec() as u32);
        filetime::set_symlink_file_times(&path, t, t).unwrap();
    }
}

/// path -> (size, mtime ns, inode) of every regular file.
fn stat_files(root: &Path) -> BTreeMap<PathBuf, (u64, i64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.insert(p, (m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ino()));
            }
        }
    }
    out
}

#[test]
fn after_a_mutation_only_the_changed_files_are_read() {
    let s = Setup::new();
    gen_tree(&s.src, 400, 3);
    age(&s.src);
    let first = s.backup();
    assert_eq!(first.snapshot.stats.files_reused, 0);
    let before = stat_files(&s.src);

    let unchanged = s.backup();
    assert_eq!(unchanged.snapshot.stats.files_read, 0, "nothing changed, nothing read");
    assert_eq!(unchanged.snapshot.stats.bytes_read, 0);
    assert_eq!(unchanged.snapshot.stats.files_reused, before.len() as u64);
    assert_eq!(s.src_tree(&unchanged), s.src_tree(&first), "same tree, same id");

    bakare_testkit::mutate(&s.src, 5, 4, true).unwrap();
    let after = stat_files(&s.src);
    let changed: Vec<_> = after.iter().filter(|(p, st)| before.get(*p) != Some(st)).collect();
    assert!(changed.len() >= 10, "the mutation changed {} files", changed.len());
    let changed_bytes: u64 = changed.iter().map(|(_, st)| st.0).sum();

    let second = s.backup();
    let stats = &second.snapshot.stats;
    assert_eq!(stats.files_read, changed.len() as u64);
    assert_eq!(stats.bytes_read, changed_bytes, "bytes read equal the changed files' sizes");
    assert_eq!(stats.files_reused, (after.len() - changed.len()) as u64);
    assert!(stats.files_changed + stats.files_new > 0);
    s.check_restore(&second);
}

#[test]
fn an_edit_in_the_same_tick_as_the_backup_is_caught() {
    let s = Setup::new();
    let f = s.src.join("f");
    fs::write(&f, "aaaa").unwrap();
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    s.backup();
    // Same size, and the mtime set back to what it was: a write within the timestamp
    // granularity of the previous backup.
    fs::write(&f, "bbbb").unwrap();
    fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
    let second = s.backup();
    assert_eq!(second.snapshot.stats.files_read, 1, "a file modified just before its backup is not trusted");
    s.check_restore(&second);
}

#[test]
fn a_replaced_file_with_the_same_size_and_mtime_is_caught() {
    let s = Setup::new();
    let f = s.src.join("f");
    fs::write(&f, "original").unwrap();
    age(&s.src);
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    s.backup();
    let tmp = s.src.join(".new");
    fs::write(&tmp, "replaced").unwrap();
    fs::File::options().write(true).open(&tmp).unwrap().set_modified(mtime).unwrap();
    fs::rename(&tmp, &f).unwrap();
    let second = s.backup();
    assert_eq!(second.snapshot.stats.files_read, 1);
    assert_eq!(second.snapshot.stats.files_changed, 1);
    s.check_restore(&second);
}

#[test]
fn a_metadata_only_change_is_recorded_without_reading() {
    let s = Setup::new();
    let f = s.src.join("f");
    fs::write(&f, "content").unwrap();
    age(&s.src);
    let first = s.backup();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let second = s.backup();
    assert_eq!(second.snapshot.stats.files_read, 0, "a chmod does not re-read content");
    assert_ne!(s.src_tree(&second), s.src_tree(&first), "the new mode is recorded");
    s.check_restore(&second);
    let forced = s.backup_with(&BackupOptions { force_rehash: true, ..opts() });
    assert_eq!(forced.snapshot.stats.files_read, 1, "--force-rehash reads everything");
    assert_eq!(forced.snapshot.stats.files_unchanged, 1);
}

#[test]
fn a_lost_or_damaged_memo_costs_one_slower_run_never_a_wrong_snapshot() {
    let s = Setup::new();
    gen_tree(&s.src, 150, 5);
    age(&s.src);
    let first = s.backup();
    let n = stat_files(&s.src).len() as u64;
    let len = fs::metadata(s.memo_path()).unwrap().len() as usize;
    type Damage = Box<dyn Fn(&Path)>;
    let damage: Vec<(&str, Damage)> = vec![
        ("deleted", Box::new(|p: &Path| fs::remove_file(p).unwrap())),
        (
            "truncated",
            Box::new(move |p: &Path| fs::File::options().write(true).open(p).unwrap().set_len(len as u64 / 2).unwrap()),
        ),
        (
            "zeroed",
            Box::new(move |p: &Path| {
                let mut b = fs::read(p).unwrap();
                b[len / 3..len / 2].fill(0);
                fs::write(p, b).unwrap();
            }),
        ),
        ("garbage", Box::new(|p: &Path| fs::write(p, vec![0xA5; 8192]).unwrap())),
    ];
    for (what, damage) in damage {
        let before = s.backup();
        assert_eq!(before.snapshot.stats.files_reused, n, "{what}: the memo worked before the damage");
        damage(&s.memo_path());
        let after = s.backup();
        assert_eq!(s.src_tree(&after), s.src_tree(&first), "{what}: the snapshot is the same");
        let again = s.backup();
        assert_eq!(again.snapshot.stats.files_reused, n, "{what}: the memo is rebuilt by one run");
        assert_eq!(s.src_tree(&again), s.src_tree(&first));
    }
    s.check_restore(&first);
}

#[test]
fn after_garbage_collection_remembered_chunks_are_checked_again() {
    let s = Setup::new();
    gen_tree(&s.src, 60, 6);
    age(&s.src);
    s.backup();
    assert_eq!(s.backup().snapshot.stats.files_read, 0);
    // What a prune that deleted everything leaves: no packs, no index segments.
    for dir in ["packs", "index"] {
        fs::remove_dir_all(s.tmp.path().join("repo").join(dir)).unwrap();
    }
    let repo = Arc::new(
        Repository::open_with_passphrase(
            Arc::new(bakare_store::backend::LocalBackend::new(s.tmp.path().join("repo"))),
            b"pw",
        )
        .unwrap(),
    );
    let s = Setup { repo, ..s };
    let after = s.backup();
    assert_eq!(after.snapshot.stats.files_read, stat_files(&s.src).len() as u64, "every file is read again");
    s.check_restore(&after);
}
