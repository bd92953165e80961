//! Repositories written by bakare in each format (`tests/fixtures/format-vN`: the
//! repository and the tree it backed up, passphrase "golden") must stay readable by every
//! later bakare: opened, listed and restored byte for byte, with its modes and times; and a
//! new backup into each must read back beside the old snapshot. Format 2's also holds an
//! extended attribute, a hard link and a snapshot log (a pre-hook's output).

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bakare_planner::{Counters, Memo, RestoreOptions, Start, backup, find_node, restore};
use bakare_store::Repository;
use bakare_store::backend::LocalBackend;

use crate::engine::{describe, opts};

fn fixture(version: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-v{version}"))
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&src, &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Contents and symlink targets only (git keeps neither modes nor times of the fixture).
fn contents(root: &Path) -> Vec<(PathBuf, String)> {
    describe(root).into_iter().map(|(p, d)| (p, d.split(" mode=").next().unwrap_or_default().to_string())).collect()
}

#[test]
fn a_format_1_repository_still_reads_and_takes_new_backups() {
    let (_tmp, _, snap, _) = golden(1);
    assert!(snap.log.is_empty());
}

#[test]
fn a_format_2_repository_still_reads_and_takes_new_backups() {
    let (_tmp, repo, snap, out) = golden(2);
    assert_eq!(snap.log.len(), 2, "{:?}", snap.log);
    assert!(snap.log[0].starts_with("pre-hook `echo golden`: exit 0 after"), "{:?}", snap.log);
    assert_eq!(snap.log[1], "pre-hook: golden");
    let (a, hard) = (fs::metadata(out.join("a.txt")).unwrap(), fs::metadata(out.join("sub/hard.txt")).unwrap());
    assert_eq!((a.ino(), a.nlink()), (hard.ino(), 2), "a hard-link group restores as one inode");
    let Start::Tree(tree) = find_node(&repo, snap.root, "/tmp/golden/src").unwrap() else { panic!("not a folder") };
    let tree = repo.load_tree(&tree).unwrap();
    let entry = tree.entries.iter().find(|e| e.name == b"a.txt").unwrap();
    assert_eq!(entry.extra.xattrs.len(), 1);
    assert_eq!(
        (entry.extra.xattrs[0].name.as_slice(), entry.extra.xattrs[0].value.as_slice()),
        (&b"user.golden"[..], &b"v2"[..])
    );
}

/// Opens, restores and backs up into the golden repository of `version`; returns it, its
/// old snapshot and where that was restored.
fn golden(version: u8) -> (tempfile::TempDir, Arc<Repository>, bakare_store::Snapshot, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = || self::fixture(version);
    let dir = tmp.path().join("repo");
    copy_tree(&fixture().join("repo"), &dir);
    let repo = Arc::new(Repository::open_with_passphrase(Arc::new(LocalBackend::new(&dir)), b"golden").unwrap());
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    assert_eq!((snap.host.as_str(), snap.tags.as_slice()), ("golden", [format!("v{version}")].as_slice()));
    assert_eq!(snap.paths, [b"/tmp/golden/src".to_vec()]);
    let Start::Tree(tree) = find_node(&repo, snap.root, "/tmp/golden/src").unwrap() else { panic!("not a folder") };
    let out = tmp.path().join("out");
    restore(&repo, Start::Tree(tree), &out, RestoreOptions::default(), &Counters::default()).unwrap();
    let expected = contents(&fixture().join("src"));
    assert_eq!(contents(&out), expected);
    let a = fs::symlink_metadata(out.join("a.txt")).unwrap();
    assert_eq!((a.mode() & 0o7777, a.mtime()), (0o640, 1_577_934_245), "mode and mtime as backed up");
    // A backup by this bakare into the old repository, then both snapshots restore.
    let src = tmp.path().join("new-src");
    copy_tree(&fixture().join("src"), &src);
    fs::write(src.join("new.txt"), b"written by a newer bakare").unwrap();
    let report = backup(repo.clone(), &Memo::disabled(), std::slice::from_ref(&src), &opts(), Arc::default()).unwrap();
    let reopened = Repository::open_with_passphrase(Arc::new(LocalBackend::new(&dir)), b"golden").unwrap();
    assert_eq!(reopened.snapshots().unwrap().snapshots.len(), 2);
    let start = find_node(&reopened, report.snapshot.root, &src.canonicalize().unwrap().to_string_lossy()).unwrap();
    let out2 = tmp.path().join("out2");
    restore(&reopened, start, &out2, RestoreOptions::default(), &Counters::default()).unwrap();
    assert_eq!(contents(&out2), contents(&src));
    let Start::Tree(old) = find_node(&reopened, snap.root, "/tmp/golden/src").unwrap() else { panic!() };
    let out3 = tmp.path().join("out3");
    restore(&reopened, Start::Tree(old), &out3, RestoreOptions::default(), &Counters::default()).unwrap();
    assert_eq!(contents(&out3), expected);
    (tmp, reopened.into(), snap, out)
}
