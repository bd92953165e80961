//! Kill -9 at seeded points of a real backup process, then `verify`, `resume`, `verify
//! --read-data` and a restore compared with the source. Every third resume runs without the
//! local cache (from the repository's checkpoints alone). Resume may upload at most the data
//! that had not reached the repository plus what open packs held (3 packs).
//!
//! `KILL_ITERATIONS` sets the number of kill points (20 in CI; more for a soak).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::time::Instant;

use bakare_corruption_tests::{Cli, Rng, contents, gen_tree, ok};

const PACK: u64 = 1 << 20;

#[test]
fn kill_at_seeded_points_then_resume() {
    let n: u64 = std::env::var("KILL_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 1200, 16, 11);
    let expected = contents(&src);
    let src_arg = src.to_str().unwrap();
    // The uninterrupted run: how long it takes and how much it writes.
    let base = Cli::new(tmp.path().join("base"));
    base.init();
    let t = Instant::now();
    ok(&base.run(&["backup", "-q", "--compression", "max", src_arg]), "uninterrupted backup");
    let full = t.elapsed();
    let full_bytes = base.packs_bytes();
    let (mut killed, mut finished, mut without_cache, mut worst) = (0, 0, 0, 0f64);
    for i in 0..n {
        let mut rng = Rng::new(0xC0FFEE + i);
        let run = Cli::new(tmp.path().join(format!("kill{i}")));
        run.init();
        let mut child = run.cmd(&["backup", "-q", "--compression", "max", src_arg]).spawn().unwrap();
        let at = full.mul_f64(0.03 + 0.57 * (rng.below(1000) as f64 / 1000.0));
        std::thread::sleep(at);
        let was_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let verify = run.run(&["verify"]);
        ok(&verify, &format!("verify after a kill at {at:?}"));
        if !was_running {
            finished += 1;
            let _ = fs::remove_dir_all(&run.dir);
            continue;
        }
        killed += 1;
        let at_kill = run.packs_bytes();
        if i % 3 == 2 {
            fs::remove_dir_all(run.dir.join("cache-default")).unwrap();
            without_cache += 1;
        }
        ok(&run.run(&["resume", "-q"]), "resume");
        let uploaded = run.packs_bytes().saturating_sub(at_kill);
        let unsent = full_bytes.saturating_sub(at_kill);
        assert!(
            uploaded <= unsent + 3 * PACK,
            "kill #{i} at {at:?}: resume uploaded {uploaded} B; unsent {unsent} B, bound {} B",
            unsent + 3 * PACK
        );
        if unsent > 0 {
            worst = worst.max(uploaded as f64 / unsent as f64);
        }
        ok(&run.run(&["verify", "--read-data"]), "verify --read-data after resume");
        let out = run.dir.join("out");
        ok(&run.run(&["restore", "-q", &format!("latest:{src_arg}"), "--target", out.to_str().unwrap()]), "restore");
        assert_eq!(contents(&out), expected, "kill #{i}: the resumed snapshot differs from the source");
        let sessions = fs::read_dir(run.dir.join("repo/sessions")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(sessions, 0, "the finished session was removed");
        let _ = fs::remove_dir_all(&run.dir);
    }
    println!(
        "\nkill -9 at {n} seeded points of a {full:?} backup ({} MiB written): {killed} killed mid-run and resumed \
         ({without_cache} without the local cache), {finished} had finished; verify clean after every kill; every \
         resumed snapshot restored identical; resume uploaded at most {:.2}x the unsent data (+ 3 packs allowed)",
        full_bytes >> 20,
        worst
    );
    assert!(killed >= n / 2, "too few kills landed mid-run ({killed} of {n})");
}

/// Ctrl-C (SIGINT) and SIGTERM: the backup says how to continue, exits 128 + the signal,
/// and the same command run again at once continues it (no 3-heartbeat wait), reading only
/// what the interrupted run had not finished; the result restores identical.
#[test]
fn an_interrupted_backup_says_so_and_the_same_command_continues_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 1500, 24, 12);
    let expected = contents(&src);
    let src_arg = src.to_str().unwrap();
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let run = Cli::new(tmp.path().join(format!("int{sig}")));
        run.init();
        let child = run.cmd(&["backup", "--compression", "max", "--threads", "1", src_arg]).spawn().unwrap();
        // Once some packs are in the repository, the run is well under way.
        let t = Instant::now();
        while run.packs_bytes() < 3 * PACK && t.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(bakare_corruption_tests::signal(&child, sig));
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{sig}: {stderr}");
        assert!(stderr.contains("interrupted: run the same command or `bakare resume` to continue"), "{sig}: {stderr}");
        let sessions = fs::read_dir(run.dir.join("repo/sessions")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(sessions, 1, "the session stays, marked interrupted");
        assert!(fs::read_dir(run.dir.join("repo/checkpoints")).unwrap().count() > 0, "a checkpoint was written");
        // At once, not after three heartbeats.
        let again = run.run(&["backup", src_arg]);
        ok(&again, "the same backup again");
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(stderr.contains("continuing interrupted backup"), "{stderr}");
        // "read:     X from N files (M files reused from the local memo without reading)"
        let stdout = String::from_utf8_lossy(&again.stdout);
        let line = stdout.lines().find(|l| l.starts_with("read:")).unwrap();
        let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
        let (read, reused) = (numbers[numbers.len() - 2], numbers[numbers.len() - 1]);
        assert!(reused > 0 && read < 1500, "{sig}: {read} files read again, {reused} reused from the checkpoint");
        ok(&run.run(&["verify", "--read-data"]), "verify --read-data");
        let out = run.dir.join("out");
        ok(&run.run(&["restore", "-q", &format!("latest:{src_arg}"), "--target", out.to_str().unwrap()]), "restore");
        assert_eq!(contents(&out), expected, "{sig}: the continued snapshot differs from the source");
        assert_eq!(fs::read_dir(run.dir.join("repo/sessions")).map(|d| d.count()).unwrap_or(0), 0);
    }
}

/// Killed after its snapshot was written but before its session record was removed: the
/// backup is finished. `resume` says so and writes no second snapshot; a plain backup of
/// the same paths starts afresh instead of taking the session over.
#[test]
fn a_backup_killed_after_its_snapshot_is_finished_not_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 200, 8, 13);
    let src_arg = src.to_str().unwrap();
    let run = Cli::new(tmp.path().join("w"));
    run.init();
    let mut child = run.cmd(&["backup", "-q", src_arg]).env("BAKARE_FAILPOINT", "after-snapshot").spawn().unwrap();
    bakare_corruption_tests::wait_stopped(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let count = |dir: &str| fs::read_dir(run.dir.join("repo").join(dir)).map(|d| d.count()).unwrap_or(0);
    assert_eq!((count("snapshots"), count("sessions")), (1, 1), "killed between the snapshot and the cleanup");
    let out = run.run(&["resume"]);
    ok(&out, "resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("had already committed snapshot"), "{stderr}");
    assert_eq!((count("snapshots"), count("sessions"), count("checkpoints")), (1, 0, 0), "no second snapshot");
    ok(&run.run(&["verify"]), "verify");
    let again = run.run(&["resume"]);
    ok(&again, "resume with nothing to resume");
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to resume"));
}

/// A backup made with `--host H` and stopped (SIGTERM here; exit 75 marks its session the
/// same way) is continued by a plain `bakare resume`, as the exit-75 message says. Killed
/// with SIGKILL it may look alive: plain `resume` names it and `resume ID` continues it.
#[test]
fn a_stopped_backup_with_another_host_name_is_resumed_by_plain_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 300, 16, 14);
    let expected = contents(&src);
    let src_arg = src.to_str().unwrap();
    for sig in ["-TERM", "-KILL"] {
        let run = Cli::new(tmp.path().join(format!("w{sig}")));
        run.init();
        let mut child = run
            .cmd(&["backup", "-q", "--host", "nas-job", src_arg])
            .env("BAKARE_FAILPOINT", "after-checkpoint")
            .spawn()
            .unwrap();
        bakare_corruption_tests::wait_stopped(&mut child);
        assert!(bakare_corruption_tests::signal(&child, sig));
        assert!(bakare_corruption_tests::signal(&child, "-CONT"));
        child.wait().unwrap();
        let out = run.run(&["resume"]);
        if sig == "-KILL" {
            assert_eq!(out.status.code(), Some(1));
            let said = String::from_utf8_lossy(&out.stderr);
            let id = said.split("`bakare resume ").nth(1).and_then(|r| r.split('`').next()).unwrap().to_string();
            assert!(said.contains("may still be running"), "{said}");
            ok(&run.run(&["resume", &id]), "resume ID");
        } else {
            ok(&out, "plain resume");
        }
        let snaps: serde_json::Value = serde_json::from_slice(&run.run(&["--json", "snapshots"]).stdout).unwrap();
        assert_eq!(snaps.as_array().unwrap().len(), 1, "{sig}");
        assert_eq!(snaps[0]["host"], "nas-job");
        let out_dir = run.dir.join("out");
        ok(
            &run.run(&["restore", "-q", &format!("latest:{src_arg}"), "--target", out_dir.to_str().unwrap()]),
            "restore",
        );
        assert_eq!(contents(&out_dir), expected, "{sig}");
    }
}

/// What a backup was told to leave out (`--exclude-caches`, `--exclude-if-present`,
/// `--exclude-larger-than`) it still leaves out when stopped and continued by `resume`,
/// which knows only the session record.
#[test]
fn resume_leaves_out_what_the_backup_was_told_to() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 300, 16, 15);
    std::fs::create_dir_all(src.join("cache")).unwrap();
    std::fs::write(src.join("cache/CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n").unwrap();
    std::fs::write(src.join("cache/blob"), "cached").unwrap();
    std::fs::create_dir_all(src.join("fake-cache")).unwrap();
    std::fs::write(src.join("fake-cache/CACHEDIR.TAG"), "not the signature").unwrap();
    std::fs::create_dir_all(src.join("private/deep")).unwrap();
    std::fs::write(src.join("private/.nobackup"), "").unwrap();
    std::fs::write(src.join("private/deep/secret"), "s").unwrap();
    std::fs::write(src.join("big.bin"), vec![7u8; 300 << 10]).unwrap();
    // Files over 100 KiB, by the names `contents` gives them (lossy for non-UTF-8 names).
    let mut large = std::collections::BTreeSet::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && m.len() > 100 << 10 {
                large.insert(p.strip_prefix(&src).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(large.contains("big.bin"));
    let expected: std::collections::BTreeMap<_, _> = contents(&src)
        .into_iter()
        .filter(|(rel, _)| !rel.starts_with("cache/") && !rel.starts_with("private/") && !large.contains(rel))
        .collect();
    assert!(expected.contains_key("fake-cache/CACHEDIR.TAG"));
    let src_arg = src.to_str().unwrap();
    let run = Cli::new(tmp.path().join("w"));
    run.init();
    let flags = ["--exclude-caches", "--exclude-if-present", ".nobackup", "--exclude-larger-than", "100K"];
    let mut args = vec!["backup", "-q"];
    args.extend(flags);
    args.push(src_arg);
    let mut child = run.cmd(&args).env("BAKARE_FAILPOINT", "after-checkpoint").spawn().unwrap();
    bakare_corruption_tests::wait_stopped(&mut child);
    assert!(bakare_corruption_tests::signal(&child, "-TERM"));
    assert!(bakare_corruption_tests::signal(&child, "-CONT"));
    child.wait().unwrap();
    ok(&run.run(&["resume"]), "resume");
    let out_dir = run.dir.join("out");
    ok(&run.run(&["restore", "-q", &format!("latest:{src_arg}"), "--target", out_dir.to_str().unwrap()]), "restore");
    let restored = contents(&out_dir);
    let extra: Vec<_> = restored.keys().filter(|k| !expected.contains_key(*k)).collect();
    let missing: Vec<_> = expected.keys().filter(|k| !restored.contains_key(*k)).collect();
    assert!(extra.is_empty() && missing.is_empty(), "restored but left out: {extra:?}; missing: {missing:?}");
    assert!(restored == expected, "a restored file differs");
}
