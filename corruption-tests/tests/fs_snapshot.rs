//! `--fs-snapshot btrfs` on a real btrfs file system made by the test on a loop device: a
//! subvolume with a nested subvolume and another file system (tmpfs) mounted inside it.
//!
//! - The backup reads one instant: a file rewritten after the snapshot was taken (the
//!   backup stopped with SIGSTOP at its `after-fs-snapshot` failpoint) is restored as it
//!   was; the same rewrite without `--fs-snapshot` is restored rewritten (the check can fail).
//! - A snapshot run after a live one reads no file and saves the same root tree; so does a
//!   live one after a snapshot run (the memo records the snapshot's device as the live one).
//! - Nested subvolumes and the tmpfs below the source are in the snapshot.
//! - After kill -9 mid-backup the snapshots stay; the next backup deletes them.
//! - No mount is left in the test's namespace; `btrfs` on a tmpfs source is refused.
//! - A repository and cache inside the source stay writable; an excluded nested subvolume
//!   is not snapshotted.
//!
//! Needs root, `losetup`, `mkfs.btrfs` and `btrfs`; skipped with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use bakare_corruption_tests::{Cli, LoopFs, ok, on_path, run, signal, wait_stopped};

fn summary(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn root_of(cli: &Cli, snapshot: &str) -> String {
    let out = cli.run(&["cat", "snapshot", snapshot]);
    ok(&out, "cat snapshot");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["root"].as_str().unwrap().to_string()
}

/// Snapshots bakare left on the filesystem whose top-level subvolume is mounted at `top`.
fn left(top: &Path) -> Vec<String> {
    std::fs::read_dir(top.join(".bakare-fs-snapshots"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn mounts_mentioning(what: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(what)).count()
}

#[test]
fn a_backup_reads_one_instant_of_a_btrfs_subvolume() {
    let tmp = tempfile::tempdir().unwrap();
    if !on_path("btrfs") {
        eprintln!("skipping: no btrfs tool");
        return;
    }
    let Some(fs) = LoopFs::make_sized("btrfs", tmp.path(), 300) else { return };
    let vol = fs.mnt.join("vol");
    run(&["btrfs", "subvolume", "create", vol.to_str().unwrap()]);
    run(&["btrfs", "subvolume", "create", vol.join("nested").to_str().unwrap()]);
    std::fs::create_dir_all(vol.join("docs")).unwrap();
    std::fs::write(vol.join("docs/a.txt"), b"alpha").unwrap();
    std::fs::set_permissions(vol.join("docs/a.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(vol.join("nested/n.txt"), b"nested").unwrap();
    std::os::unix::fs::symlink("a.txt", vol.join("docs/link")).unwrap();
    std::fs::write(vol.join("big"), vec![b'a'; 8 << 20]).unwrap();
    std::fs::create_dir_all(vol.join("tmp")).unwrap();
    run(&["mount", "-t", "tmpfs", "tmpfs", vol.join("tmp").to_str().unwrap()]);
    std::fs::write(vol.join("tmp/t.txt"), b"tmpfs").unwrap();
    let _unmount = Unmount(vol.join("tmp"));
    // Old enough that the memo trusts them (a file changed within the last moments is read
    // again: a change in the same clock tick would not show).
    run(&["sh", "-c", &format!("find {} -type f -exec touch -m -d '1 hour ago' {{}} +", vol.display())]);

    let cli = Cli::new(tmp.path().join("r"));
    cli.init();
    let src = vol.to_str().unwrap();
    // The first snapshot run makes the (kept, empty) snapshot folder in the filesystem's
    // top-level subvolume, which here is the folder above the source (recorded on the way
    // to it), so that folder's times change once.
    ok(&cli.run(&["backup", "--fs-snapshot", "btrfs", src]), "first snapshot backup");
    let live = cli.run(&["--json", "backup", src]);
    ok(&live, "live backup");
    let live_root = root_of(&cli, summary(&live)["snapshot"].as_str().unwrap());

    // From a fresh snapshot: nothing read, the same trees.
    let snap = cli.run(&["--json", "backup", "--fs-snapshot", "btrfs", src]);
    ok(&snap, "snapshot backup");
    let s = summary(&snap);
    assert_eq!(s["files_read"], 0, "a no-change backup from a snapshot read files: {s}");
    assert_eq!(root_of(&cli, s["snapshot"].as_str().unwrap()), live_root);
    let again = cli.run(&["--json", "backup", src]);
    ok(&again, "live backup after a snapshot one");
    assert_eq!(summary(&again)["files_read"], 0);
    assert!(left(&fs.mnt).is_empty(), "snapshots left: {:?}", left(&fs.mnt));

    // Changed after the snapshot was taken: restored as it was. The walk takes the metadata
    // of what did not change from the live tree, so each kind of change is tried: data,
    // mode, a new name, a renamed one (in the nested subvolume).
    // Older than the walk's margin (a second before the snapshot), so that what is
    // unchanged is taken live and only the changes from the snapshot.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let rewrite = |fs_snapshot: &str| {
        let mut child = cli.cmd(&["--json", "backup", "--fs-snapshot", fs_snapshot, src]);
        let mut child = child.env("BAKARE_FAILPOINT", "after-fs-snapshot").spawn().unwrap();
        wait_stopped(&mut child);
        let mut f = std::fs::OpenOptions::new().write(true).open(vol.join("big")).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&vec![b'b'; 4 << 20]).unwrap();
        f.sync_all().unwrap();
        std::fs::set_permissions(vol.join("docs/a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(vol.join("docs/new.txt"), b"new").unwrap();
        std::fs::rename(vol.join("nested/n.txt"), vol.join("nested/m.txt")).unwrap();
        std::fs::remove_file(vol.join("docs/link")).unwrap();
        std::os::unix::fs::symlink("new.txt", vol.join("docs/link")).unwrap();
        let _ = std::process::Command::new("setfattr")
            .args(["-n", "user.late", "-v", "1"])
            .arg(vol.join("docs/a.txt"))
            .status();
        assert!(signal(&child, "-CONT"));
        let out = child.wait_with_output().unwrap();
        ok(&out, "backup");
        std::fs::write(vol.join("big"), vec![b'a'; 8 << 20]).unwrap();
        std::fs::set_permissions(vol.join("docs/a.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(vol.join("docs/new.txt")).unwrap();
        std::fs::rename(vol.join("nested/m.txt"), vol.join("nested/n.txt")).unwrap();
        std::fs::remove_file(vol.join("docs/link")).unwrap();
        std::os::unix::fs::symlink("a.txt", vol.join("docs/link")).unwrap();
        let _ = std::process::Command::new("setfattr").args(["-x", "user.late"]).arg(vol.join("docs/a.txt")).status();
        let id = summary(&out)["snapshot"].as_str().unwrap().to_string();
        let target = tmp.path().join(format!("restored-{fs_snapshot}"));
        ok(&cli.run(&["restore", "-q", &id, "--target", target.to_str().unwrap()]), "restore");
        let inside = target.join(src.trim_start_matches('/'));
        let big = std::fs::read(inside.join("big")).unwrap();
        let bs = big.iter().filter(|&&b| b == b'b').count();
        (bs, inside)
    };
    let (bs, inside) = rewrite("btrfs");
    assert_eq!(bs, 0, "a file rewritten after the snapshot was taken came back rewritten");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&inside.join("docs/a.txt")), 0o644, "a mode changed after the snapshot");
    assert!(!inside.join("docs/new.txt").exists(), "a file made after the snapshot");
    assert!(!inside.join("nested/m.txt").exists(), "a name given after the snapshot");
    assert_eq!(std::fs::read_link(inside.join("docs/link")).unwrap(), Path::new("a.txt"), "a link swapped after it");
    let late = std::process::Command::new("getfattr").args(["-n", "user.late"]).arg(inside.join("docs/a.txt")).output();
    assert!(late.is_err() || !late.unwrap().status.success(), "an extended attribute set after the snapshot");
    assert_eq!(std::fs::read(inside.join("nested/n.txt")).unwrap(), b"nested");
    assert_eq!(std::fs::read(inside.join("tmp/t.txt")).unwrap(), b"tmpfs");
    assert_eq!(std::fs::read(inside.join("docs/a.txt")).unwrap(), b"alpha");
    assert!(!inside.join(".bakare-fs-snapshots").exists() && !vol.join(".bakare-fs-snapshots").exists());
    let (bs, inside) = rewrite("off");
    assert_eq!(bs, 4 << 20, "without a snapshot the rewrite is read");
    assert_eq!(mode(&inside.join("docs/a.txt")), 0o600, "without a snapshot the new mode is read");
    assert!(inside.join("docs/new.txt").exists() && inside.join("nested/m.txt").exists());
    assert_eq!(std::fs::read_link(inside.join("docs/link")).unwrap(), Path::new("new.txt"));

    // Killed with its snapshots taken: the next backup deletes them.
    let mut child = cli.cmd(&["backup", "--fs-snapshot", "btrfs", src]);
    let mut child = child.env("BAKARE_FAILPOINT", "before-commit").spawn().unwrap();
    wait_stopped(&mut child);
    assert_eq!(left(&fs.mnt).len(), 2, "the subvolume's and the nested one's");
    assert!(signal(&child, "-KILL"));
    child.wait().unwrap();
    let next = cli.run(&["backup", vol.join("docs").to_str().unwrap()]);
    ok(&next, "the backup after a kill");
    let said = String::from_utf8_lossy(&next.stderr);
    assert!(said.contains("deleted the filesystem snapshot"), "{said}");
    assert!(left(&fs.mnt).is_empty(), "snapshots left: {:?}", left(&fs.mnt));
    assert_eq!(mounts_mentioning(".bakare-fs-snapshots"), 0, "a snapshot mount leaked into this namespace");

    // A repository and cache inside the source stay writable (bound live over the
    // snapshot); an excluded nested subvolume is not snapshotted.
    let inner = Cli::new(vol.join("bk"));
    inner.init();
    let out = inner.run(&["backup", "--fs-snapshot", "btrfs", "--exclude", "nested", src]);
    ok(&out, "a backup into a repository inside its source");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("bk/repo read live (bakare writes there)") && !said.contains("nested read from"), "{said}");
    std::fs::remove_dir_all(vol.join("bk")).unwrap();

    // A source btrfs cannot snapshot: refused with `btrfs`, read live with `auto`.
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    run(&["mount", "-t", "tmpfs", "tmpfs", plain.to_str().unwrap()]);
    let _unmount_plain = Unmount(plain.clone());
    std::fs::write(plain.join("p"), b"p").unwrap();
    let refused = cli.run(&["backup", "--fs-snapshot", "btrfs", plain.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not on a btrfs filesystem"));
    let auto = cli.run(&["backup", "--fs-snapshot", "auto", plain.to_str().unwrap()]);
    ok(&auto, "auto on tmpfs");
    assert!(String::from_utf8_lossy(&auto.stderr).contains("read live (not on btrfs)"));
}

/// Unmounts a folder when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
