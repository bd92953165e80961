//! Remote repositories on real servers on loopback: moto's S3 server and OpenSSH's SFTP.
//!
//! - The round trip every local repository gets (backup, dedup, restore byte-identical,
//!   kill -9 then `resume`, `verify --read-data`) against both.
//! - A backup of a few hundred MB through [`FaultProxy`] injecting resets, stalls,
//!   truncated answers and dropped connections: it completes (or stops with 75 and resumes),
//!   verify reads every byte clean, the restore is byte-identical.
//! - A 100 % loss window mid-backup: exit 75 within the retry budget, then `resume`.
//! - Permanent failures (a missing bucket, a key the server refuses) fail fast and say so.
//! - Random packet loss in the kernel is `loss.rs`'s.
//!
//! `.ci/run` installs moto and openssh-server; see `bakare_corruption_tests::remote`.
//! `REMOTE_FAULT_MIB` sizes the fault test's tree (256 by default).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use bakare_corruption_tests::remote::{FaultProxy, Faults, Moto, Sshd, skip};
use bakare_corruption_tests::{Cli, Rng, contents, gen_tree, mutate_tree, ok};

/// Restores the newest snapshot of `src` and checks it is byte-identical to `src` now.
fn assert_restores(cli: &Cli, src: &Path, expected: &BTreeMap<String, blake3::Hash>, what: &str) {
    let got = cli.restored(&format!("latest:{}", src.display()));
    if &got != expected {
        let differ: Vec<_> =
            expected.keys().chain(got.keys()).filter(|k| got.get(*k) != expected.get(*k)).take(5).collect();
        panic!("{what}: {} files restored, {} expected; differing: {differ:?}", got.len(), expected.len());
    }
}

fn json_summary(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.contains("\"summary\"")).unwrap_or_else(|| panic!("no summary in {text}"));
    serde_json::from_str(line).unwrap()
}

/// Writes `mib` MiB of incompressible data in files of `file_mib` MiB under `dir`.
fn random_files(dir: &Path, mib: u64, file_mib: u64, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..mib.div_ceil(file_mib) {
        let mut bytes = Vec::with_capacity((file_mib << 20) as usize);
        while bytes.len() < (file_mib << 20) as usize {
            bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        fs::write(dir.join(format!("big-{i:03}.bin")), bytes).unwrap();
    }
}

/// Waits (bounded) until `pid` is stopped by a failpoint; false if it exited first.
fn wait_stopped(child: &mut std::process::Child) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the backup neither stopped at its failpoint nor ended within 120 s");
}

/// The round trip of a local repository, on `cli`'s remote one.
fn round_trip(cli: &Cli, work: &Path) {
    cli.init();
    let src = work.join("src");
    gen_tree(&src, 300, 24, 7);
    random_files(&src.join("media"), 6, 3, 1);
    let src_arg = src.to_str().unwrap();
    let first = cli.run(&["backup", "--json", src_arg]);
    ok(&first, "first backup");
    let added = json_summary(&first)["bytes_added"].as_u64().unwrap();
    assert!(added > 6 << 20, "first backup added {added} bytes");
    assert_restores(cli, &src, &contents(&src), "restore after the first backup");

    // Dedup: the same files under another path, read again (no memo), add almost nothing.
    let copy = work.join("copy");
    fs::create_dir_all(&copy).unwrap();
    let status = std::process::Command::new("cp").arg("-a").arg(&src).arg(copy.join("src")).status().unwrap();
    assert!(status.success());
    let second = cli.run(&["--no-cache", "backup", "--json", copy.to_str().unwrap()]);
    ok(&second, "backup of a copy");
    let again = json_summary(&second)["bytes_added"].as_u64().unwrap();
    assert!(again < added / 20, "a copy of the tree added {again} bytes of {added}");

    // Kill -9 mid-backup at its first checkpoint, then resume.
    mutate_tree(&src, 30, 3);
    random_files(&src.join("media2"), 8, 2, 2);
    let mut child = cli.cmd(&["backup", "-q", src_arg]).env("BAKARE_FAILPOINT", "after-checkpoint").spawn().unwrap();
    assert!(wait_stopped(&mut child), "the backup ended before its first checkpoint");
    child.kill().unwrap();
    child.wait().unwrap();
    ok(&cli.run(&["verify"]), "verify after the kill");
    let resumed = cli.run(&["resume"]);
    ok(&resumed, "resume");
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming backup"), "{resumed:?}");
    assert_restores(cli, &src, &contents(&src), "restore after resume");

    let verify = cli.run(&["verify", "--read-data"]);
    ok(&verify, "verify --read-data");
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(said.contains("3 snapshots") && said.contains("no problems"), "{said}");

    // Retention and garbage collection on the remote store (listing with times, marks).
    // Per host and paths: one of the tree, one of its copy.
    ok(&cli.run(&["forget", "--keep-last", "1", "--prune"]), "forget --prune");
    ok(&cli.run(&["prune"]), "prune");
    let verify = cli.run(&["verify"]);
    ok(&verify, "verify after prune");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("2 snapshots"), "{verify:?}");
    assert_restores(cli, &src, &contents(&src), "restore after prune");
}

#[test]
fn s3_round_trip_dedup_resume_and_verify() {
    let Some(moto) = Moto::start() else { return skip("moto_server is not installed") };
    let tmp = tempfile::tempdir().unwrap();
    let cli = Cli::remote(tmp.path().join("c"), "s3://bakare/round-trip", Moto::env(&moto.endpoint()));
    round_trip(&cli, tmp.path());
}

#[test]
fn sftp_round_trip_dedup_resume_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = Sshd::start(&tmp.path().join("sshd")) else { return skip("sshd is not installed") };
    let cli = Cli::remote(tmp.path().join("c"), &sshd.url(sshd.port, "repo"), sshd.env());
    round_trip(&cli, tmp.path());
    // The same layout as a local folder: the files the SFTP server holds are a repository
    // the local backend reads. Uploads the kill cut short stay as `.tmp-` files (never
    // under a final name) until a prune after the session expiry removes them: made 8 days
    // old here.
    let local = Cli::new(tmp.path().join("local"));
    let direct = std::process::Command::new(&local.bin)
        .args(["--repo", sshd.root.join("repo").to_str().unwrap(), "--no-cache", "verify"])
        .env("BAKARE_PASSPHRASE", "pw")
        .output()
        .unwrap();
    ok(&direct, "verify of the SFTP folder as a local repository");
    let temporaries = || {
        let mut found = Vec::new();
        let mut stack = vec![sshd.root.join("repo")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    found.push(e.path());
                }
            }
        }
        found
    };
    let long_ago = filetime::FileTime::from_unix_time(filetime::FileTime::now().unix_seconds() - 8 * 86_400, 0);
    for t in temporaries() {
        filetime::set_file_mtime(&t, long_ago).unwrap();
    }
    ok(&cli.run(&["prune"]), "prune");
    assert_eq!(temporaries(), Vec::<std::path::PathBuf>::new(), "left over after prune");
}

/// The fault mix of the proxy tests: about one connection in four is broken somehow.
fn faults() -> Faults {
    Faults {
        reset: 8,
        stall_pct: 4,
        stall: Duration::from_secs(3),
        truncate: 7,
        drop: 6,
        status_pct: 5,
        status: 503,
        within: 3 << 20,
        ..Faults::default()
    }
}

/// Runs `backup` (then `resume` after each exit 75, at most `tries` times) to completion.
fn backup_to_completion(cli: &Cli, args: &[&str], tries: usize) -> usize {
    let mut stops = 0;
    let mut out = cli.run(args);
    while out.status.code() == Some(75) && stops < tries {
        stops += 1;
        out = cli.run(&["--retry-budget", "60s", "--stall-timeout", "1s", "resume", "-q"]);
    }
    ok(&out, "backup (and resumes) through the faulty proxy");
    stops
}

#[test]
fn s3_backup_through_resets_stalls_truncations_and_drops() {
    let Some(moto) = Moto::start() else { return skip("moto_server is not installed") };
    let tmp = tempfile::tempdir().unwrap();
    let mib: u64 = std::env::var("REMOTE_FAULT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let src = tmp.path().join("src");
    gen_tree(&src, 400, 16, 5);
    random_files(&src.join("big"), mib, 8, 9);
    let expected = contents(&src);
    // A clean init, then every later request through the proxy.
    let proxy = FaultProxy::start(moto.port, Faults::default(), 0xFA17);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let cli = Cli::remote(tmp.path().join("c"), "s3://bakare/faults", Moto::env(&endpoint));
    cli.init();
    proxy.set_faults(faults());
    let t = Instant::now();
    let stops = backup_to_completion(
        &cli,
        &[
            "--retry-budget",
            "60s",
            "--stall-timeout",
            "1s",
            "--connections",
            "4",
            "backup",
            "-q",
            src.to_str().unwrap(),
        ],
        5,
    );
    eprintln!("backup of {mib} MiB through the proxy: {:?}, {stops} resumes; {}", t.elapsed(), proxy.stats().summary());
    assert!(proxy.stats().faults() >= 10, "too few faults injected: {}", proxy.stats().summary());
    // Reading back through the same faults.
    let before = proxy.stats().faults();
    let verify = cli.run(&["--stall-timeout", "1s", "verify", "--read-data"]);
    ok(&verify, "verify --read-data through the faulty proxy");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("no problems"), "{verify:?}");
    assert_restores(&cli, &src, &expected, "restore through the faulty proxy");
    eprintln!("verify and restore through the proxy: {} more faults", proxy.stats().faults() - before);
    assert!(proxy.stats().faults() > before, "no faults while reading: {}", proxy.stats().summary());
}

#[test]
fn sftp_backup_through_resets_and_drops() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = Sshd::start(&tmp.path().join("sshd")) else { return skip("sshd is not installed") };
    let src = tmp.path().join("src");
    gen_tree(&src, 200, 16, 6);
    random_files(&src.join("big"), 48, 4, 10);
    let expected = contents(&src);
    let proxy = FaultProxy::start(sshd.port, Faults::default(), 0x5F7);
    let cli = Cli::remote(tmp.path().join("c"), &sshd.url(proxy.port, "repo"), sshd.env());
    cli.init();
    // An ssh connection carries many requests: fewer, later faults than for S3.
    proxy.set_faults(Faults { reset: 30, drop: 20, within: 8 << 20, ..Faults::default() });
    let stops = backup_to_completion(
        &cli,
        &["--retry-budget", "60s", "--stall-timeout", "5s", "backup", "-q", src.to_str().unwrap()],
        5,
    );
    eprintln!("SFTP backup through the proxy: {stops} resumes; {}", proxy.stats().summary());
    assert!(proxy.stats().faults() >= 1, "too few faults injected: {}", proxy.stats().summary());
    proxy.set_faults(Faults::default());
    ok(&cli.run(&["verify", "--read-data"]), "verify --read-data");
    assert_restores(&cli, &src, &expected, "restore");
}

/// Starts `backup --json src` with `flags`; once 8 MiB (a few packs) went through `proxy`,
/// the link goes dead (a black hole, until the caller ends it).
fn backup_then_cut(cli: &Cli, proxy: &FaultProxy, src: &Path, flags: &[&str]) -> std::process::Child {
    let mut args = flags.to_vec();
    args.extend(["backup", "--json", src.to_str().unwrap()]);
    let child = cli.cmd(&args).spawn().unwrap();
    let t = Instant::now();
    while proxy.stats().bytes.load(std::sync::atomic::Ordering::Relaxed) < 8 << 20 {
        assert!(t.elapsed() < Duration::from_secs(60), "the backup sent nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.set_blackhole(true);
    child
}

#[test]
fn a_loss_window_longer_than_the_budget_stops_with_75_and_resume_finishes() {
    let Some(moto) = Moto::start() else { return skip("moto_server is not installed") };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    random_files(&src, 96, 4, 3);
    let expected = contents(&src);
    let proxy = FaultProxy::start(moto.port, Faults::default(), 1);
    let cli =
        Cli::remote(tmp.path().join("c"), "s3://bakare/window", Moto::env(&format!("http://127.0.0.1:{}", proxy.port)));
    cli.init();
    let child = backup_then_cut(&cli, &proxy, &src, &["--retry-budget", "4s", "--stall-timeout", "1s"]);
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    eprintln!("stopped {took:?} after the link went dead (budget 4 s, stall timeout 1 s)");
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(took < Duration::from_secs(40), "gave up after {took:?} with a 4 s budget");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no progress") && err.contains("bakare resume"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"resumable\":true"), "{out:?}");
    proxy.set_blackhole(false);
    ok(&cli.run(&["verify"]), "verify after the stop");
    ok(&cli.run(&["resume", "-q"]), "resume once the link is back");
    ok(&cli.run(&["verify", "--read-data"]), "verify --read-data");
    assert_restores(&cli, &src, &expected, "restore after resume");
}

/// SFTP through a 100 % loss window shorter than the budget: every request in flight, on the
/// one ssh connection they share, stalls past the stall timeout. The backup must ride it
/// out and finish by itself, whatever state the stalled connection is left in.
#[test]
fn sftp_rides_out_a_loss_window_shorter_than_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = Sshd::start(&tmp.path().join("sshd")) else { return skip("sshd is not installed") };
    let src = tmp.path().join("src");
    random_files(&src, 48, 4, 12);
    let expected = contents(&src);
    let proxy = FaultProxy::start(sshd.port, Faults::default(), 3);
    let cli = Cli::remote(tmp.path().join("c"), &sshd.url(proxy.port, "repo"), sshd.env());
    cli.init();
    let child = backup_then_cut(&cli, &proxy, &src, &["--retry-budget", "60s", "--stall-timeout", "2s"]);
    std::thread::sleep(Duration::from_secs(6));
    proxy.set_blackhole(false);
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    eprintln!("finished {:?} after a 6 s loss window; {}", t.elapsed(), proxy.stats().summary());
    ok(&out, "backup through a loss window");
    // The connections the stall replaced were ended with the run (none holds its stdout).
    let left = std::process::Command::new("pgrep").arg("-f").arg(&sshd.key).output().unwrap();
    assert!(left.stdout.is_empty(), "ssh processes outlived the run: {}", String::from_utf8_lossy(&left.stdout));
    ok(&cli.run(&["verify", "--read-data"]), "verify --read-data");
    assert_restores(&cli, &src, &expected, "restore after the loss window");
}

#[test]
fn permanent_failures_fail_fast_and_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    if let Some(moto) = Moto::start() {
        let cli = Cli::remote(tmp.path().join("s3"), "s3://no-such-bucket/x", Moto::env(&moto.endpoint()));
        fs::create_dir_all(&cli.dir).unwrap();
        for args in [&["init", "--kdf-memory-kib", "64"][..], &["snapshots"][..]] {
            let t = Instant::now();
            let out = cli.run(args);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
            assert!(t.elapsed() < Duration::from_secs(20), "{args:?} took {:?}", t.elapsed());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("bucket") && err.contains("does not exist"), "{args:?}: {err}");
        }
    } else {
        skip("moto_server is not installed");
    }
    if let Some(moto) = Moto::start() {
        // Every answer a refusal (a wrong secret on a store that checks it).
        let proxy = FaultProxy::start(moto.port, Faults { status_pct: 100, status: 403, ..Faults::default() }, 4);
        let cli = Cli::remote(
            tmp.path().join("s3-403"),
            "s3://bakare/refused",
            Moto::env(&format!("http://127.0.0.1:{}", proxy.port)),
        );
        fs::create_dir_all(&cli.dir).unwrap();
        let t = Instant::now();
        let out = cli.run(&["snapshots"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("permission denied") && err.contains("credentials"), "{err}");
        // The config, then its mirror: each asked once, not retried.
        let asked = proxy.stats().connections.load(std::sync::atomic::Ordering::Relaxed);
        assert!(asked <= 2, "a refusal was retried: {asked} requests");
    }
    if let Some(sshd) = Sshd::start(&tmp.path().join("sshd")) {
        // A key the server does not know.
        let other = tmp.path().join("other-key");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other)
            .status()
            .unwrap();
        assert!(made.success());
        let mut env = sshd.env();
        env[0].1 = other.to_string_lossy().into_owned();
        let cli = Cli::remote(tmp.path().join("sftp"), &sshd.url(sshd.port, "repo"), env);
        fs::create_dir_all(&cli.dir).unwrap();
        let t = Instant::now();
        let out = cli.run(&["init", "--kdf-memory-kib", "64"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ermission denied"), "{err}");
    } else {
        skip("sshd is not installed");
    }
}

#[test]
fn trees_are_downloaded_once_then_read_from_the_local_cache() {
    let Some(moto) = Moto::start() else { return skip("moto_server is not installed") };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 2000, 1, 8);
    let proxy = FaultProxy::start(moto.port, Faults::default(), 2);
    let cli =
        Cli::remote(tmp.path().join("c"), "s3://bakare/cache", Moto::env(&format!("http://127.0.0.1:{}", proxy.port)));
    cli.init();
    ok(&cli.run(&["backup", "-q", src.to_str().unwrap()]), "backup");
    let bytes = || proxy.stats().bytes.load(std::sync::atomic::Ordering::Relaxed);
    let listed = |what: &str| {
        let before = bytes();
        let out = cli.run(&["ls", "-R", "latest"]);
        ok(&out, what);
        assert!(String::from_utf8_lossy(&out.stdout).lines().count() > 2000, "{what}: {out:?}");
        bytes() - before
    };
    let cold = listed("ls, trees downloaded");
    let warm = listed("ls, trees from the cache");
    eprintln!("ls through the proxy: {cold} bytes cold, {warm} bytes warm");
    assert!(warm * 3 < cold, "the second ls moved {warm} bytes, the first {cold}");
    // A damaged cache file is started anew: the same listing, trees downloaded again.
    let cache = fs::read_dir(tmp.path().join("c/cache-default"))
        .unwrap()
        .map(|e| e.unwrap().path().join("trees.redb"))
        .find(|p| p.exists())
        .expect("trees.redb in the cache folder");
    fs::write(&cache, vec![0x5a; 8192]).unwrap();
    let again = listed("ls with a damaged tree cache");
    assert!(again * 3 > cold, "after damage: {again} bytes, cold {cold}");
    // Snapshot objects are cached too: a second `snapshots` lists them and reads none.
    for _ in 0..15 {
        ok(&cli.run(&["backup", "-q", src.to_str().unwrap()]), "another backup");
    }
    fs::remove_file(&cache).unwrap();
    let snapshots = |what: &str| {
        let before = bytes();
        let out = cli.run(&["--json", "snapshots"]);
        ok(&out, what);
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed.len(), 16, "{what}");
        bytes() - before
    };
    let cold = snapshots("snapshots, downloaded");
    let warm = snapshots("snapshots, from the cache");
    eprintln!("snapshots through the proxy: {cold} bytes cold, {warm} bytes warm");
    // Both list the folders (most of `warm`); the first also reads 16 objects, each a
    // signed request and an answer of well over 600 bytes.
    assert!(cold.saturating_sub(warm) >= 16 * 600, "the second listing moved {warm} bytes, the first {cold}");
}

/// No process an SFTP run starts outlives it: its output pipe closes when bakare exits (a
/// script reading it does not hang), and no ssh master is left running.
#[test]
fn an_sftp_run_leaves_no_process_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = Sshd::start(&tmp.path().join("sshd")) else { return skip("sshd is not installed") };
    let cli = Cli::remote(tmp.path().join("c"), &sshd.url(sshd.port, "repo"), sshd.env());
    cli.init();
    let src = tmp.path().join("src");
    gen_tree(&src, 40, 4, 9);
    ok(&cli.run(&["backup", "-q", src.to_str().unwrap()]), "backup");
    for args in [&["snapshots"][..], &["ls", "latest"], &["verify"]] {
        let mut child = cli.cmd(args).spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
            let _ = tx.send(out);
        });
        let status = child.wait().unwrap();
        assert!(status.success(), "{args:?}");
        let read = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert!(read.is_ok(), "{args:?}: stdout still open 20 s after bakare exited (an ssh master holds it)");
        let left = std::process::Command::new("pgrep").arg("-f").arg(&sshd.key).output().unwrap();
        assert!(left.stdout.is_empty(), "{args:?}: processes left: {}", String::from_utf8_lossy(&left.stdout));
    }
}
