//! A backup into a repository whose file system fills up: exit code 75 with a clear error,
//! nothing committed damaged, and `bakare resume` finishes once space is freed. Uses a real
//! tmpfs (mounting needs root; the test says so and passes when it cannot mount).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use bakare_corruption_tests::{bakare_binary, contents, gen_tree};

fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_backup_resumably() {
    let tmp = tempfile::tempdir().unwrap();
    let fs_dir = tmp.path().join("fs");
    std::fs::create_dir(&fs_dir).unwrap();
    if !mount_tmpfs(&fs_dir, "12m") {
        println!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Unmount(&fs_dir);
    let src = tmp.path().join("src");
    gen_tree(&src, 600, 48, 12);
    let bin = bakare_binary();
    let repo = fs_dir.join("repo");
    let run = |args: &[&str]| -> Output {
        Command::new(&bin)
            .args(["--repo", repo.to_str().unwrap()])
            .args(args)
            .env("BAKARE_PASSPHRASE", "pw")
            .env("BAKARE_CACHE_DIR", tmp.path().join("cache"))
            .env("BAKARE_CHECKPOINT_MIB", "1")
            .output()
            .unwrap()
    };
    let init = run(&["init", "-q", "--kdf-memory-kib", "64", "--kdf-passes", "1", "--pack-mib", "1"]);
    assert!(init.status.success());
    let full = run(&["backup", "-q", "--compression", "off", src.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(75), "a full disk is resumable: {stderr}");
    assert!(stderr.contains("No space left on device") && stderr.contains("bakare resume"), "{stderr}");
    assert!(run(&["verify"]).status.success(), "nothing committed is damaged");
    let grown = Command::new("mount").args(["-o", "remount,size=256m", fs_dir.to_str().unwrap()]).status().unwrap();
    assert!(grown.success());
    let resumed = run(&["resume", "-q"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let verify = run(&["verify", "--read-data"]);
    assert!(
        verify.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let out = tmp.path().join("out");
    let restored = run(&["restore", "-q", &format!("latest:{}", src.display()), "--target", out.to_str().unwrap()]);
    assert!(restored.status.success());
    assert_eq!(contents(&out), contents(&src));
    println!("disk full: exit 75 with a clear error; verify clean; resumed after space was freed; restore identical");
}
