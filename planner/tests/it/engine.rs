//! Engine tests on real files: round trips of random trees and deduplication figures.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bakare_planner::{BackupOptions, Counters, Excludes, Memo, RestoreOptions, Start, backup, find_node, restore};
use bakare_store::KdfParams;
use bakare_store::backend::LocalBackend;
use bakare_store::{ChunkerParams, Repository};
use proptest::prelude::*;

pub(crate) const FAST_KDF: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

pub(crate) fn new_repo(dir: &Path, chunker: ChunkerParams) -> Arc<Repository> {
    Arc::new(Repository::init(Arc::new(LocalBackend::new(dir)), b"pw", FAST_KDF, chunker).unwrap())
}

pub(crate) fn small_chunks() -> ChunkerParams {
    ChunkerParams { min: 2048, avg: 8192, max: 32768 }
}

pub(crate) fn opts() -> BackupOptions {
    BackupOptions { host: "test".into(), user: "u".into(), ..BackupOptions::default() }
}

pub(crate) fn run_backup(repo: &Arc<Repository>, src: &Path) -> bakare_planner::BackupReport {
    backup(repo.clone(), &Memo::disabled(), &[src.to_path_buf()], &opts(), Arc::default()).unwrap()
}

/// Restores the folder `src` (as it was backed up) of the newest snapshot into `out`.
pub(crate) fn restore_folder(repo: &Repository, report: &bakare_planner::BackupReport, src: &Path, out: &Path) {
    let path = src.canonicalize().unwrap();
    let start = find_node(repo, report.snapshot.root, &path.to_string_lossy()).unwrap();
    assert!(matches!(start, Start::Tree(_)));
    restore(repo, start, out, RestoreOptions::default(), &Counters::default()).unwrap();
}

/// Everything a restore must reproduce, keyed by relative path.
pub(crate) fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.is_symlink() {
                format!("link->{:?}", fs::read_link(&p).unwrap())
            } else {
                format!("file {}", blake3::hash(&fs::read(&p).unwrap()))
            };
            let mode = if m.is_symlink() { 0 } else { m.mode() & 0o7777 };
            let desc =
                format!("{what} mode={mode:o} mtime={}.{} uid={} gid={}", m.mtime(), m.mtime_nsec(), m.uid(), m.gid());
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), desc);
        }
    }
    out
}

#[derive(Debug, Clone)]
pub(crate) enum Item {
    File { size: usize, seed: u8, mode: u32 },
    Dir,
    Link(String),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        Just("é日本語".to_string()),
        Just("with space".to_string()),
        Just("new\nline".to_string()),
        Just(".hidden".to_string()),
        Just("-dash".to_string()),
        Just("x".repeat(200)),
        Just("emoji🎉".to_string()),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (prop_oneof![Just(0usize), 1usize..100, 100usize..70_000, 1_000_000usize..3_000_000], any::<u8>(),
              prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o400)])
            .prop_map(|(size, seed, mode)| Item::File { size, seed, mode }),
        2 => Just(Item::Dir),
        1 => "[a-z./]{1,20}".prop_map(Item::Link),
    ]
}

fn tree() -> impl Strategy<Value = Vec<(Vec<String>, Item, i64)>> {
    prop::collection::vec((prop::collection::vec(name(), 1..4), item(), 0i64..2_000_000_000), 1..25)
}

fn content(size: usize, seed: u8) -> Vec<u8> {
    // Half compressible text, half pseudo-random: both paths of the store are taken.
    let mut x = u64::from(seed) | 1;
    (0..size)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                b"backup chunk index "[i % 19]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

pub(crate) fn materialize(root: &Path, items: &[(Vec<String>, Item, i64)]) {
    fs::create_dir_all(root).unwrap();
    for (parts, item, mtime) in items {
        let mut path = root.to_path_buf();
        for p in &parts[..parts.len() - 1] {
            path.push(p);
            if path.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                return;
            }
            fs::create_dir_all(&path).unwrap();
        }
        path.push(parts.last().unwrap());
        if path.symlink_metadata().is_ok() {
            continue;
        }
        match item {
            Item::File { size, seed, mode } => {
                fs::write(&path, content(*size, *seed)).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Item::Dir => fs::create_dir(&path).unwrap(),
            Item::Link(target) => symlink(target, &path).unwrap(),
        }
        let t = filetime::FileTime::from_unix_time(*mtime, (*mtime % 1_000_000_000) as u32);
        filetime::set_symlink_file_times(&path, t, t).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn backup_then_restore_is_identical(items in tree()) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        materialize(&src, &items);
        let repo = new_repo(&tmp.path().join("repo"), small_chunks());
        let report = run_backup(&repo, &src);
        prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
        let out = tmp.path().join("out");
        restore_folder(&repo, &report, &src, &out);
        prop_assert_eq!(describe(&src), describe(&out));
    }
}

#[test]
fn a_second_repository_handle_reads_what_the_first_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    materialize(&src, &[(vec!["a".into()], Item::File { size: 100_000, seed: 1, mode: 0o644 }, 5)]);
    let report = run_backup(&new_repo(&tmp.path().join("repo"), small_chunks()), &src);
    let repo = Arc::new(
        Repository::open_with_passphrase(Arc::new(LocalBackend::new(tmp.path().join("repo"))), b"pw").unwrap(),
    );
    repo.load_index().unwrap();
    assert_eq!(repo.find_snapshot("latest").unwrap().0, report.id);
    let out = tmp.path().join("out");
    restore_folder(&repo, &report, &src, &out);
    assert_eq!(describe(&src), describe(&out));
}

pub(crate) fn repo_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() { stack.push(e.path()) } else { total += m.len() }
        }
    }
    total
}

#[test]
fn same_tree_twice_or_copied_adds_under_one_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let items: Vec<_> = (0..200)
        .map(|i| {
            (
                vec![format!("d{}", i % 7), format!("f{i}")],
                Item::File { size: 1000 + i * 997, seed: i as u8, mode: 0o644 },
                7,
            )
        })
        .collect();
    materialize(&src, &items);
    let repo_dir = tmp.path().join("repo");
    let repo = new_repo(&repo_dir, ChunkerParams::default());
    run_backup(&repo, &src);
    let first = repo_bytes(&repo_dir);
    run_backup(&repo, &src);
    let second = repo_bytes(&repo_dir);
    let copy = tmp.path().join("copy of src");
    materialize(&copy, &items);
    run_backup(&repo, &copy);
    let third = repo_bytes(&repo_dir);
    eprintln!("repository: {first} B, then {second} B, then {third} B");
    assert!((second - first) * 100 < first, "same tree again added {} B to {first} B", second - first);
    assert!((third - second) * 100 < first, "a copy added {} B to {first} B", third - second);
}

#[test]
fn inserting_100_bytes_into_64_mib_adds_a_few_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut data = vec![0u8; 64 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(src.join("big"), &data).unwrap();
    let repo = new_repo(&tmp.path().join("repo"), ChunkerParams::default());
    run_backup(&repo, &src);
    let before = repo.stats().data_blobs_new.load(std::sync::atomic::Ordering::Relaxed);
    data.splice(32 << 20..32 << 20, [0xAB; 100]);
    fs::write(src.join("big"), &data).unwrap();
    let report = run_backup(&repo, &src);
    let new_data_blobs = repo.stats().data_blobs_new.load(std::sync::atomic::Ordering::Relaxed) - before;
    eprintln!("new chunks after the insertion: {new_data_blobs}, bytes added {}", report.snapshot.stats.bytes_added);
    assert!(new_data_blobs <= 3, "{new_data_blobs} new chunks");
    assert!(report.snapshot.stats.bytes_added < 20 << 20);
}

#[test]
fn excluded_paths_are_not_backed_up() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for p in ["keep.txt", "skip.tmp", "sub/skip.tmp", "sub/keep.rs", "target/x", "sub/.gitignore"] {
        let path = src.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, p).unwrap();
    }
    fs::write(src.join("sub/.gitignore"), "keep.rs\n").unwrap();
    let repo = new_repo(&tmp.path().join("repo"), small_chunks());
    let excludes = Excludes::new(&["*.tmp".into(), "target/".into()], &[], true).unwrap();
    let o = BackupOptions { excludes, ..opts() };
    let report = backup(repo.clone(), &Memo::disabled(), std::slice::from_ref(&src), &o, Arc::default()).unwrap();
    let out = tmp.path().join("out");
    restore_folder(&repo, &report, &src, &out);
    let names: Vec<_> = describe(&out).into_keys().map(|p| p.to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["keep.txt", "sub", "sub/.gitignore"]);
}

#[test]
fn sparse_files_stay_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"middle", 20 << 20).unwrap();
    drop(f);
    let repo = new_repo(&tmp.path().join("repo"), ChunkerParams::default());
    let report = run_backup(&repo, &src);
    let out = tmp.path().join("out");
    restore_folder(&repo, &report, &src, &out);
    let restored = fs::metadata(out.join("sparse")).unwrap();
    assert_eq!(restored.len(), 64 << 20);
    assert!(restored.blocks() * 512 < 1 << 20, "restored file uses {} bytes on disk", restored.blocks() * 512);
    assert_eq!(describe(&src), describe(&out));
}
