//! What the walk leaves out beyond exclude patterns: `--one-file-system`,
//! `--exclude-if-present` (and `--exclude-caches`), `--exclude-larger-than`, on real files
//! and, as root, a real tmpfs mounted inside the source.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bakare_planner::{BackupOptions, Excludes, Memo, backup};
use bakare_store::{CACHEDIR_TAG, Selection};

use crate::engine::{describe, new_repo, opts, restore_folder, small_chunks};

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// Backs `src` up with `selection` and restores it; the restored relative paths.
fn backed_up(tmp: &Path, src: &Path, selection: &Selection) -> Vec<String> {
    let repo = new_repo(&tmp.join(format!("repo-{}", fs::read_dir(tmp).unwrap().count())), small_chunks());
    let excludes = Excludes::new(&[], &[], false).unwrap().with_selection(selection);
    let o = BackupOptions { excludes, ..opts() };
    let report = backup(repo.clone(), &Memo::disabled(), &[src.to_path_buf()], &o, Arc::default()).unwrap();
    let out = tmp.join(format!("out-{}", fs::read_dir(tmp).unwrap().count()));
    restore_folder(&repo, &report, src, &out);
    describe(&out).into_keys().map(|p| p.to_string_lossy().into_owned()).collect()
}

#[test]
fn tagged_folders_and_large_files_are_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src, "keep.txt", b"k");
    write(&src, "big.bin", &[1; 5000]);
    write(&src, "edge.bin", &[2; 4096]);
    write(&src, "cache/CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55\n# made by a tool\n");
    write(&src, "cache/sub/blob", b"c");
    write(&src, "not-cache/CACHEDIR.TAG", b"Signature: something else");
    write(&src, "mail/.nobackup", b"");
    write(&src, "mail/inbox", b"m");
    write(&src, "deep/a/b/.nobackup", b"");
    write(&src, "deep/a/kept", b"a");
    let everything = backed_up(tmp.path(), &src, &Selection::default());
    assert!(everything.contains(&"cache/sub/blob".to_string()), "{everything:?}");
    let selection = Selection {
        one_file_system: false,
        exclude_if_present: vec![CACHEDIR_TAG.into(), ".nobackup".into()],
        exclude_larger_than: Some(4096),
        no_xattrs: false,
    };
    let names = backed_up(tmp.path(), &src, &selection);
    assert_eq!(
        names,
        ["deep", "deep/a", "deep/a/kept", "edge.bin", "keep.txt", "not-cache", "not-cache/CACHEDIR.TAG"],
        "a tag leaves out its folder and all in it; a wrong signature does not; 4096 bytes is not larger than 4K"
    );
}

/// Mounts a tmpfs at `at` for the life of the value (root only).
struct Tmpfs<'a>(&'a Path);

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn one_file_system_keeps_mount_points_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src, "home.txt", b"h");
    let mnt = src.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(&mnt).output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: cannot mount a tmpfs here (needs root): {mounted:?}");
        return;
    }
    let _guard = Tmpfs(&mnt);
    write(&mnt, "other-fs.txt", b"o");
    let crossing = backed_up(tmp.path(), &src, &Selection::default());
    assert_eq!(crossing, ["home.txt", "mnt", "mnt/other-fs.txt"]);
    let one = Selection { one_file_system: true, ..Selection::default() };
    assert_eq!(backed_up(tmp.path(), &src, &one), ["home.txt", "mnt"], "the mount point is kept, empty");
    // A source that is itself on the other file system is backed up: the rule is about
    // crossing from a source, not about where it lives.
    let inner = backed_up(tmp.path(), &mnt, &one);
    assert_eq!(inner, ["other-fs.txt"]);
}
