//! Random packet loss in the kernel: S3 (moto) and SFTP (sshd) servers and bakare inside a
//! network namespace of the test's own whose loopback drops packets at random
//! ([`LossyNet`]: iptables' statistic match), at 10 % and 30 %, and through a 100 % burst
//! longer than the stall timeout. Every backup completes without stopping (no exit 75);
//! `verify --read-data` is clean; the restore is byte-identical. In the bursts requests
//! fail (counted from `BAKARE_TRACE_REQUESTS`) and are tried again; with
//! `LOSS_RETRY_BUDGET=0` (no retries) the tests fail. One more runs S3 over a long, narrow
//! link (40 ms round trip, 20 Mbit/s through `tc tbf`, 1 % loss) and checks that the backup
//! keeps `--connections` uploads in flight.
//!
//! Without root, `ip` or iptables each test says so and passes, except where CI requires
//! the remote tests (`BAKARE_REMOTE_TESTS=require`: `.ci/run` installs iptables).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bakare_corruption_tests::remote::{FaultProxy, Faults, LossyNet, Moto, Sshd, skip};
use bakare_corruption_tests::{Cli, Rng, contents, gen_tree, ok};

/// The stall timeout the loss tests run with: short, so that a burst outlasts it.
const STALL: &str = "3s";

/// A tree of small sources and a few MiB of incompressible files (so that packs span many
/// TCP segments), written outside the namespace's reach (it shares the file system).
fn source(dir: &Path) {
    gen_tree(dir, 200, 12, 11);
    let mut rng = Rng::new(5);
    for i in 0..3 {
        let mut bytes = Vec::with_capacity(1 << 20);
        while bytes.len() < 1 << 20 {
            bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        std::fs::write(dir.join(format!("media-{i}.bin")), bytes).unwrap();
    }
}

/// Which server the repository is on.
#[derive(Clone, Copy, Debug)]
enum Store {
    S3,
    Sftp,
}

/// Runs `body` with a `Cli` on a fresh repository of `store` inside `net` (the server
/// started inside it too); `false` if the server is not installed (said so).
fn with_store(net: &LossyNet, store: Store, work: &Path, body: impl FnOnce(&Cli) + Send) -> bool {
    net.inside(|| match store {
        Store::S3 => {
            let Some(moto) = Moto::start() else {
                skip("moto_server is not installed");
                return false;
            };
            let cli = Cli::remote(work.join("c"), "s3://bakare/loss", Moto::env(&moto.endpoint()));
            body(&cli);
            true
        }
        Store::Sftp => {
            let Some(sshd) = Sshd::start(&work.join("sshd")) else {
                skip("sshd is not installed");
                return false;
            };
            let cli = Cli::remote(work.join("c"), &sshd.url(sshd.port, "repo"), sshd.env());
            body(&cli);
            true
        }
    })
}

/// Flags every command of a loss test gets: the short stall timeout, and a retry budget
/// that random loss never spends but a dead link would. `LOSS_RETRY_BUDGET=0` turns retries
/// off (the first failed request stops the command), to check that the tests need them.
fn flags(args: &[&str]) -> Vec<String> {
    let budget = std::env::var("LOSS_RETRY_BUDGET").unwrap_or_else(|_| "120s".into());
    ["--stall-timeout", STALL, "--retry-budget", &budget].iter().chain(args).map(|s| s.to_string()).collect()
}

thread_local! {
    /// Failed requests (tried again, or not) of the commands this thread ran, from their
    /// request traces.
    static FAILED_REQUESTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The most uploads one command of this thread had in flight at once.
    static MOST_PUTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The quickest request of this thread's commands, in ms.
    static QUICKEST_MS: std::cell::Cell<f64> = const { std::cell::Cell::new(f64::INFINITY) };
}

/// The quickest request in a command's request trace, in ms.
fn quickest_ms(stderr: &str) -> f64 {
    stderr
        .lines()
        .filter(|l| l.starts_with("request "))
        .filter_map(|l| l.split_whitespace().nth(5)?.parse::<f64>().ok())
        .fold(f64::INFINITY, f64::min)
}

/// The most requests of kind `op` in flight at once in a command's request trace (lines
/// `request <start> s <op> <object> <duration> ms <outcome>`).
fn most_at_once(stderr: &str, op: &str) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for line in stderr.lines().filter(|l| l.starts_with("request ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(start), Some(&kind), Some(ms)) = (words.get(1), words.get(3), words.get(5)) else { continue };
        let (Ok(start), Ok(ms)) = (start.parse::<f64>(), ms.parse::<f64>()) else { continue };
        if kind == op {
            // The trace rounds the start to a millisecond and the length to a whole one, so
            // a computed end may lie up to 1.5 ms after the next request on the freed
            // connection started: ends are taken 2 ms early (requests here last 40 ms or more).
            edges.push((start, 1));
            edges.push((start + (ms - 2.0).max(0.0) / 1e3, -1));
        }
    }
    // Ends sort before starts at the same instant: back-to-back is not at once.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

fn run(cli: &Cli, args: &[&str]) -> std::process::Output {
    let all = flags(args);
    let all: Vec<_> = all.iter().map(String::as_str).collect();
    let out = cli.cmd(&all).env("BAKARE_TRACE_REQUESTS", "1").output().unwrap();
    let failed = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("request ") && l.ends_with("(temporary)"))
        .count();
    FAILED_REQUESTS.set(FAILED_REQUESTS.get() + failed);
    let trace = String::from_utf8_lossy(&out.stderr);
    MOST_PUTS.set(MOST_PUTS.get().max(most_at_once(&trace, "put")));
    QUICKEST_MS.set(QUICKEST_MS.get().min(quickest_ms(&trace)));
    out
}

/// `backup`, then `resume` after each exit 75 (at most 5), to completion; the stops.
fn backup_to_completion(cli: &Cli, src: &Path) -> usize {
    let mut stops = 0;
    let mut out = run(cli, &["backup", "-q", src.to_str().unwrap()]);
    while out.status.code() == Some(75) && stops < 5 {
        stops += 1;
        out = run(cli, &["resume", "-q"]);
    }
    ok(&out, "backup (and resumes) through packet loss");
    stops
}

/// init, backup, `verify --read-data` and restore of `src` on `cli`'s repository, the
/// loss as it is set; what it took, for the log.
fn round_trip(cli: &Cli, src: &Path) -> String {
    let t = Instant::now();
    std::fs::create_dir_all(&cli.dir).unwrap();
    let init = ["init", "-q", "--kdf-memory-kib", "64", "--kdf-passes", "1", "--pack-mib", "1"];
    ok(&run(cli, &init), "init through packet loss");
    let stops = backup_to_completion(cli, src);
    // Random loss, and bursts the retry budget outlasts, never stop a run.
    assert_eq!(stops, 0, "the backup stopped with exit 75 {stops} times");
    let backed_up = t.elapsed();
    let verify = run(cli, &["verify", "--read-data"]);
    ok(&verify, "verify --read-data through packet loss");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("no problems"), "{verify:?}");
    let target = cli.dir.join("restored");
    let _ = std::fs::remove_dir_all(&target);
    ok(&run(cli, &["restore", "-q", "latest", "--target", target.to_str().unwrap()]), "restore through packet loss");
    let restored = contents(&target.join(src.strip_prefix("/").unwrap()));
    assert!(restored == contents(src), "the restore through packet loss differs from the source");
    format!(
        "backed up in {:.1} s ({stops} resumes), all in {:.1} s",
        backed_up.as_secs_f64(),
        t.elapsed().as_secs_f64()
    )
}

fn through_loss(store: Store, percent: u32) {
    let Some(net) = LossyNet::for_test() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let ran = with_store(&net, store, tmp.path(), |cli| {
        net.set_loss(f64::from(percent) / 100.0).unwrap();
        let said = round_trip(cli, &src);
        eprintln!("{store:?} at {percent} % loss: {said}; {} packets dropped", net.dropped());
        assert!(net.dropped() > 0, "the loss rule dropped nothing");
    });
    if ran {
        eprintln!("{store:?}: {} MiB over the lossy loopback", net.bytes_sent() >> 20);
    }
}

#[test]
fn s3_through_10_percent_loss() {
    through_loss(Store::S3, 10);
}

#[test]
fn s3_through_30_percent_loss() {
    through_loss(Store::S3, 30);
}

#[test]
fn sftp_through_10_percent_loss() {
    through_loss(Store::Sftp, 10);
}

#[test]
fn sftp_through_30_percent_loss() {
    through_loss(Store::Sftp, 30);
}

/// 10 % loss with 100 % bursts of twice the stall timeout while the backup runs: every
/// request caught in one stalls, times out and is tried again.
fn through_bursts(store: Store) {
    let Some(net) = LossyNet::for_test() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    with_store(&net, store, tmp.path(), |cli| {
        net.set_loss(0.10).unwrap();
        let done = AtomicBool::new(false);
        let bursts = std::thread::scope(|s| {
            let flapper = s.spawn(|| {
                let mut n = 0;
                // Bounded: at most 12 bursts, then the loss stays at 10 %.
                for _ in 0..12 {
                    std::thread::sleep(Duration::from_secs(2));
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    net.set_loss(1.0).unwrap();
                    std::thread::sleep(Duration::from_secs(6));
                    net.set_loss(0.10).unwrap();
                    n += 1;
                }
                n
            });
            let said = round_trip(cli, &src);
            done.store(true, Ordering::Relaxed);
            eprintln!("{store:?} through bursts: {said}");
            flapper.join().unwrap()
        });
        assert!(bursts > 0, "the run ended before the first burst");
        let failed = FAILED_REQUESTS.get();
        assert!(failed > 0, "no request failed in the bursts: they tested nothing");
        eprintln!("{store:?}: {failed} failed requests, each tried again");
        eprintln!("{store:?}: {bursts} bursts of 6 s at 100 % loss");
    });
}

#[test]
fn s3_through_loss_bursts_longer_than_the_stall_timeout() {
    through_bursts(Store::S3);
}

#[test]
fn sftp_through_loss_bursts_longer_than_the_stall_timeout() {
    through_bursts(Store::Sftp);
}

/// A long, narrow link: a 40 ms round trip (the proxy holds every byte 20 ms each way; this
/// kernel has no netem) through 20 Mbit/s (`tc tbf`) with 1 % loss. The backup keeps its
/// `--connections` uploads in flight, never more (at this round trip one connection at a
/// time would leave the link idle most of the time), and the round trip completes.
#[test]
fn s3_over_a_long_narrow_link_uses_every_connection() {
    let Some(net) = LossyNet::for_test() else { return };
    if let Err(why) = net.set_rate(20) {
        skip(&format!("no tc tbf bandwidth limit here: {why}"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    net.inside(|| {
        let Some(moto) = Moto::start() else {
            skip("moto_server is not installed");
            return;
        };
        let proxy = FaultProxy::start(moto.port, Faults { delay: Duration::from_millis(20), ..Faults::default() }, 40);
        let mut env = Moto::env(&format!("http://127.0.0.1:{}", proxy.port));
        env.push(("BAKARE_CONNECTIONS".into(), "4".into()));
        let cli = Cli::remote(tmp.path().join("c"), "s3://bakare/rtt", env);
        net.set_loss(0.01).unwrap();
        let said = round_trip(&cli, &src);
        let (most, quickest) = (MOST_PUTS.get(), QUICKEST_MS.get());
        eprintln!(
            "S3 at 40 ms, 20 Mbit/s, 1 % loss: {said}; at most {most} uploads at once; quickest request {quickest:.0} ms; {}",
            proxy.stats().summary()
        );
        assert!(quickest >= 39.0, "a request took {quickest:.0} ms: the link's round trip is not 40 ms");
        assert!(most >= 3, "at most {most} uploads were in flight at once with --connections 4");
        assert!(most <= 4, "{most} uploads were in flight at once with --connections 4");
    });
}

/// A namespace left by a test process killed before its drop ran (with a server still
/// running in it) is deleted, and the server ended, when the next loss test makes its own.
#[test]
fn a_killed_tests_namespace_is_cleaned_up_by_the_next() {
    let Some(mine) = LossyNet::for_test() else { return };
    // A process id that ran and is gone.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let stale = format!("bakare-loss-{pid}-0");
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output().unwrap();
    assert!(ip(&["netns", "add", &stale]).status.success());
    let mut server = std::process::Command::new("ip").args(["netns", "exec", &stale, "sleep", "300"]).spawn().unwrap();
    let listed = |name: &str| String::from_utf8_lossy(&ip(&["netns", "list"]).stdout).contains(name);
    let t = Instant::now();
    while String::from_utf8_lossy(&ip(&["netns", "pids", &stale]).stdout).trim().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "the server never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let next = LossyNet::new().unwrap();
    let ended = listed(&stale);
    let _ = ip(&["netns", "del", &stale]);
    let _ = server.kill();
    assert!(!ended, "the stale namespace is still there");
    assert!(server.wait().unwrap().code().is_none(), "the server in it was killed");
    assert!(listed(mine.name()) && listed(next.name()), "a live process's namespaces are kept");
}
