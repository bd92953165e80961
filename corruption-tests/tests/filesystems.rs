//! Everything a file is, round-tripped through a real backup and restore on real file
//! systems: ext4, xfs and btrfs, each made by the test on a loop device. User, trusted and
//! security extended attributes, access and default POSIX ACLs (`setfacl`), a hard-link
//! group across folders (one inode again after the restore), a sparse file (sparse again),
//! names with a newline and invalid UTF-8, modes and nanosecond mtimes; ctime and birth
//! time recorded in the snapshot (`cat tree`).
//!
//! Needs root, `losetup`, the `mkfs.*` of each file system, and `setfacl`; each missing one
//! is said and that part skipped (`.ci/run` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use bakare_corruption_tests::{Cli, LoopFs, ok, on_path, run};

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 64 << 10];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
        out.insert(String::from_utf8_lossy(name).into_owned(), value[..len].to_vec());
    }
    out
}

/// Every entry under `root`: kind, content hash, mode, owner, mtime (ns), extended
/// attributes, and which other entries share its inode.
fn describe(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.is_symlink() {
                format!("link->{:?}", std::fs::read_link(&p).unwrap())
            } else {
                if m.nlink() > 1 {
                    inodes.entry(m.ino()).or_default().push(rel.clone());
                }
                format!("file {}", blake3::hash(&std::fs::read(&p).unwrap()))
            };
            let mode = if m.is_symlink() { 0 } else { m.mode() & 0o7777 };
            let mtime = if m.is_symlink() { 0 } else { m.mtime() * 1_000_000_000 + m.mtime_nsec() };
            let desc =
                format!("{what} mode={mode:o} uid={} gid={} mtime={mtime} xattrs={:?}", m.uid(), m.gid(), xattrs(&p));
            out.insert(rel, desc);
        }
    }
    for group in inodes.values() {
        for name in group {
            if let Some(d) = out.get_mut(name) {
                d.push_str(&format!(
                    " linked-with={:?}",
                    group.iter().map(|n| String::from_utf8_lossy(n)).collect::<Vec<_>>()
                ));
            }
        }
    }
    out
}

fn setfattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
}

/// The tree under `src` every file system gets.
fn populate(src: &Path, acls: bool) {
    std::fs::create_dir_all(src.join("docs/deep")).unwrap();
    std::fs::write(src.join("plain.txt"), b"plain").unwrap();
    let tagged = src.join("tagged.txt");
    std::fs::write(&tagged, b"with attributes").unwrap();
    setfattr(&tagged, "user.color", b"blue");
    setfattr(&tagged, "user.binary", &[0, 1, 2, 255]);
    setfattr(&tagged, "trusted.origin", b"backup test");
    setfattr(&tagged, "security.label", b"secret");
    setfattr(&src.join("docs"), "user.folder", b"yes");
    std::os::unix::fs::symlink("plain.txt", src.join("link")).unwrap();
    // A hard-link group across folders.
    std::fs::write(src.join("shared"), b"one inode, three names").unwrap();
    std::fs::hard_link(src.join("shared"), src.join("docs/shared-2")).unwrap();
    std::fs::hard_link(src.join("shared"), src.join("docs/deep/shared-3")).unwrap();
    // A sparse file: 32 MiB with 5 bytes in the middle.
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(32 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"holes", 16 << 20).unwrap();
    drop(sparse);
    // Names a shell trips on.
    std::fs::write(src.join("new\nline"), b"n").unwrap();
    std::fs::write(src.join(OsStr::from_bytes(b"bad-\xff\xfe-utf8")), b"b").unwrap();
    std::fs::set_permissions(src.join("plain.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(src.join("plain.txt"), Some(1234), Some(5678)).unwrap();
    if acls {
        run(&["setfacl", "-m", "u:nobody:r,g:daemon:rw", src.join("plain.txt").to_str().unwrap()]);
        run(&["setfacl", "-d", "-m", "u:nobody:rx", src.join("docs").to_str().unwrap()]);
    }
    // Nanosecond mtimes in the past (a file changed within the last seconds is read again
    // by the next backup: its mtime may not yet tell a later write), set last, children
    // before their folders.
    let files = ["tagged.txt", "shared", "sparse", "new\nline", "docs/deep/shared-3"];
    for (i, rel) in files.iter().enumerate() {
        let t = filetime::FileTime::from_unix_time(1_500_000_000, i as u32);
        filetime::set_file_times(src.join(rel), t, t).unwrap();
    }
    let bad = src.join(OsStr::from_bytes(b"bad-\xff\xfe-utf8"));
    filetime::set_file_times(bad, filetime::FileTime::zero(), filetime::FileTime::zero()).unwrap();
    for (rel, ns) in [("plain.txt", 123_456_789), ("docs/deep", 5), ("docs", 999_999_999), ("", 42)] {
        let t = filetime::FileTime::from_unix_time(1_600_000_000, ns);
        filetime::set_file_times(src.join(rel), t, t).unwrap();
    }
}

fn round_trip(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = LoopFs::make(kind, tmp.path()) else { return };
    let acls = on_path("setfacl");
    if !acls {
        eprintln!("{kind}: no setfacl here: ACLs not tested");
    }
    let src = fs.mnt.join("src");
    populate(&src, acls);
    let cli = Cli::new(tmp.path().join("work"));
    cli.init();
    ok(&cli.run(&["backup", "-q", src.to_str().unwrap()]), "backup");
    let out = fs.mnt.join("out");
    ok(
        &cli.run(&["restore", "-q", &format!("latest:{}", src.display()), "--target", out.to_str().unwrap()]),
        "restore",
    );
    let (want, got) = (describe(&src), describe(&out));
    for (name, d) in &want {
        assert_eq!(got.get(name), Some(d), "{kind}: {}", String::from_utf8_lossy(name));
    }
    assert_eq!(want.len(), got.len(), "{kind}: {got:#?}");
    assert!(want.values().any(|d| d.contains("system.posix_acl_access")) || !acls, "{kind}: no ACL was set");
    assert!(want.get(&b"shared"[..]).is_some_and(|d| d.contains("linked-with")), "{kind}: no link group");
    let blocks = std::fs::metadata(out.join("sparse")).unwrap().blocks();
    assert!(blocks * 512 < 1 << 20, "{kind}: the sparse file takes {} bytes", blocks * 512);
    // ctime and birth time are recorded as the file system had them.
    let listing = cli.run(&["--json", "ls", &format!("latest:{}/plain.txt", src.display())]);
    ok(&listing, "ls");
    let entry: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let m = std::fs::symlink_metadata(src.join("plain.txt")).unwrap();
    assert_eq!(entry["ctime_ns"], m.ctime() * 1_000_000_000 + m.ctime_nsec(), "{kind}: {entry}");
    let btime = m.created().ok().map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64);
    assert_eq!(entry["btime_ns"].as_i64(), btime, "{kind}: {entry}");
    // A no-change backup reads nothing and keeps the same tree.
    let again = cli.run(&["--json", "backup", src.to_str().unwrap()]);
    ok(&again, "second backup");
    let summary = String::from_utf8_lossy(&again.stdout).lines().last().map(String::from).unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["files_read"], 0, "{kind}: {summary}");
    eprintln!("{kind}: {} entries round-tripped", want.len());
}

#[test]
fn ext4_keeps_everything_a_file_is() {
    round_trip("ext4");
}

#[test]
fn xfs_keeps_everything_a_file_is() {
    round_trip("xfs");
}

#[test]
fn btrfs_keeps_everything_a_file_is() {
    round_trip("btrfs");
}
