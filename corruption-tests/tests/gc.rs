//! Garbage collection against backups that sleep (reliability.md T3): real `bakare`
//! processes, a backup frozen with a real SIGSTOP at a failpoint, forget and prune from
//! another host with the clock pushed past every grace period, then SIGCONT. Every snapshot
//! must restore byte-identical and `verify --read-data` must be clean.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Output};

use bakare_corruption_tests::{Cli, contents, gen_tree, ok, signal, wait_stopped};

const DAY: i64 = 86_400;

/// `bakare prune --json` as host `b`, `days` in the future; its report.
fn prune(cli: &Cli, days: i64) -> serde_json::Value {
    let out = cli
        .cmd_as("b", &["--json", "prune"])
        .env("BAKARE_CLOCK_OFFSET_SECS", (days * DAY).to_string())
        .output()
        .unwrap();
    ok(&out, &format!("prune at +{days} days"));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(serde_json::Value::as_u64).unwrap()
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// A repository whose only snapshot of `src` was forgotten: everything in it is garbage
/// for GC, and host `a`'s memo still points at all of it.
fn forgotten_backup(name: &str) -> (tempfile::TempDir, Cli, String) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 300, 24, 5);
    let cli = Cli::new(tmp.path().join(name));
    cli.init();
    let src_arg = src.to_str().unwrap().to_string();
    ok(&cli.cmd_as("a", &["backup", "-q", &src_arg]).output().unwrap(), "first backup");
    ok(&cli.run(&["forget", "-q", "latest"]), "forget");
    (tmp, cli, src_arg)
}

fn check_all(cli: &Cli, src: &str) {
    ok(&cli.run(&["verify", "--read-data"]), "verify --read-data");
    let expected = contents(std::path::Path::new(src));
    assert_eq!(cli.restored(&format!("latest:{src}")), expected, "the snapshot restores byte-identical");
}

/// The backup deduplicates everything against the forgotten snapshot through its memo,
/// freezes before committing, and stays frozen past the session expiry: the sweep deletes
/// what it used. Continued, it must notice and store the data again.
#[test]
fn frozen_past_expiry_the_backup_stores_again_what_the_sweep_deleted() {
    let (_tmp, cli, src) = forgotten_backup("expired");
    let mut a = cli.cmd_as("a", &["--json", "backup", &src]).env("BAKARE_FAILPOINT", "before-commit").spawn().unwrap();
    wait_stopped(&mut a);
    let first = prune(&cli, 2);
    assert!(n(&first, "marked_packs") > 0, "the forgotten data is marked: {first}");
    let second = prune(&cli, 9);
    assert_eq!(n(&second, "expired_sessions"), 1);
    assert_eq!(n(&second, "deleted_packs"), 0, "the expiry is declared first, the sweep waits: {second}");
    let third = prune(&cli, 10);
    assert!(n(&third, "deleted_packs") > 0, "the frozen session was declared expired, so the sweep deleted: {third}");
    assert!(signal(&a, "-CONT"));
    let out = finish(a);
    ok(&out, "the frozen backup, continued");
    let report: serde_json::Value =
        String::from_utf8_lossy(&out.stdout).lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap();
    assert!(n(&report, "files_read") > 0, "the second walk read the files whose data was deleted: {report}");
    check_all(&cli, &src);
    assert_eq!(std::fs::read_dir(cli.dir.join("repo/sessions")).unwrap().count(), 0);
}

/// Frozen but not expired: the sweep waits for it (deferred, not skipped), the backup commits
/// when continued, and a later prune deletes what is garbage.
#[test]
fn a_live_frozen_backup_defers_the_sweep() {
    let (_tmp, cli, src) = forgotten_backup("deferred");
    let mut a = cli.cmd_as("a", &["backup", "-q", &src]).env("BAKARE_FAILPOINT", "before-commit").spawn().unwrap();
    wait_stopped(&mut a);
    let marked = n(&prune(&cli, 2), "marked_packs");
    assert!(marked > 0);
    let waiting = prune(&cli, 4);
    assert_eq!(n(&waiting, "deleted_packs"), 0, "the sweep waits for the frozen session: {waiting}");
    let deferred = waiting.get("deferred").and_then(|d| d.as_array()).unwrap();
    assert!(deferred.iter().any(|d| d.as_str().unwrap().contains("waiting for sessions")), "{waiting}");
    assert!(signal(&a, "-CONT"));
    ok(&finish(a), "the frozen backup, continued");
    let later = prune(&cli, 6);
    assert!(n(&later, "deleted_packs") > 0, "the deferred deletion happens once the backup committed: {later}");
    check_all(&cli, &src);
}

/// Frozen right after its first checkpoint, on a host with no memo (so it reads and
/// deduplicates through the index), past expiry: its checkpoint stops protecting anything.
#[test]
fn frozen_after_a_checkpoint_past_expiry() {
    let (_tmp, cli, src) = forgotten_backup("checkpoint");
    let mut c = cli
        .cmd_as("c", &["backup", "-q", &src])
        .env("BAKARE_FAILPOINT", "after-checkpoint")
        .env("BAKARE_CHECKPOINT_FILES", "40")
        .spawn()
        .unwrap();
    wait_stopped(&mut c);
    prune(&cli, 2);
    let second = prune(&cli, 10);
    assert!(n(&second, "removed_checkpoints") > 0, "{second}");
    let third = prune(&cli, 11);
    assert!(n(&third, "deleted_packs") > 0, "{third}");
    assert!(signal(&c, "-CONT"));
    ok(&finish(c), "the frozen backup, continued");
    check_all(&cli, &src);
}

/// Frozen right after writing its first pack, before indexing it, past expiry: the prunes mark
/// and delete that unindexed pack. Continued, the backup must not index the deleted pack (nor
/// deduplicate against it) but store its data again. (Found by the two-host soak: the pack
/// was indexed after its deletion and a snapshot referenced it.)
#[test]
fn frozen_with_an_unindexed_pack_past_expiry() {
    let (_tmp, cli, src) = forgotten_backup("unindexed");
    // New data, so that packs are written during the walk.
    bakare_corruption_tests::mutate_tree(std::path::Path::new(&src), 40, 9);
    let mut c = cli
        .cmd_as("c", &["--json", "backup", &src])
        .env("BAKARE_FAILPOINT", "after-pack")
        .env("BAKARE_CHECKPOINT_FILES", "100000")
        .env("BAKARE_CHECKPOINT_MIB", "100000")
        .spawn()
        .unwrap();
    wait_stopped(&mut c);
    let unindexed = std::fs::read_dir(cli.dir.join("repo/index")).unwrap().count();
    let first = prune(&cli, 2);
    assert!(n(&first, "marked_packs") > 0, "{first}");
    prune(&cli, 11);
    let third = prune(&cli, 12);
    assert!(n(&third, "deleted_packs") > 0, "{third}");
    assert!(signal(&c, "-CONT"));
    let out = finish(c);
    ok(&out, "the frozen backup, continued");
    let report = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap();
    assert!(n(&report, "passes") > 1, "it walked again: {report}");
    assert!(unindexed > 0);
    check_all(&cli, &src);
}

/// Frozen before its first checkpoint, past expiry, then killed right after the point where
/// that checkpoint is written: the walk deduplicated against data the sweep deleted, so it
/// is broken and must not leave a checkpoint naming that data. (Found by the two-host soak
/// in CI: verify after a round reported "checkpoints/…: names blob … that is not available".)
#[test]
fn a_broken_walk_leaves_no_checkpoint_naming_swept_data() {
    let (_tmp, cli, src) = forgotten_backup("broken-checkpoint");
    bakare_corruption_tests::mutate_tree(std::path::Path::new(&src), 40, 11);
    let mut c = cli
        .cmd_as("c", &["--json", "backup", &src])
        .env("BAKARE_FAILPOINT", "after-pack,after-checkpoint")
        .env("BAKARE_CHECKPOINT_FILES", "40")
        .spawn()
        .unwrap();
    wait_stopped(&mut c);
    assert_eq!(std::fs::read_dir(cli.dir.join("repo/checkpoints")).unwrap().count(), 0, "frozen before a checkpoint");
    prune(&cli, 2);
    prune(&cli, 11);
    let third = prune(&cli, 12);
    assert!(n(&third, "deleted_packs") > 0, "{third}");
    assert!(signal(&c, "-CONT"));
    // Continued, it goes on to its first checkpoint and stops there: killed, as a laptop whose
    // battery ran out.
    wait_stopped(&mut c);
    c.kill().unwrap();
    let _ = c.wait();
    ok(&cli.run(&["verify"]), "verify after the killed broken walk");
    // Its session expired in the sweep: the next backup starts afresh.
    ok(&cli.cmd_as("c", &["backup", "-q", &src]).output().unwrap(), "the next backup");
    check_all(&cli, &src);
}

/// Churn as a user makes it: files edited, deleted, renamed and added over 20 snapshots, all
/// but the last two forgotten. `prune --now` must leave the packs within 10 % of a fresh
/// backup of what the kept snapshots hold, repacking partly used packs (whole unused packs
/// alone would leave far more), and the kept snapshots must restore identical.
#[test]
fn prune_repacks_churn_down_to_what_the_kept_snapshots_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 600, 24, 31);
    let src_arg = src.to_str().unwrap().to_string();
    let cli = Cli::new(tmp.path().join("churn"));
    cli.init();
    let mut kept_states = Vec::new();
    for round in 0..20u64 {
        if round > 0 {
            bakare_corruption_tests::mutate_tree(&src, 4, 200 + round);
        }
        ok(&cli.run(&["backup", "-q", &src_arg]), "backup");
        kept_states.push(contents(&src));
    }
    let before = cli.packs_bytes();
    ok(&cli.run(&["forget", "-q", "--keep-last", "2"]), "forget");
    let pruned = cli.run(&["--json", "prune", "--now"]);
    ok(&pruned, "prune --now");
    let report: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&pruned.stdout).trim()).unwrap();
    assert!(n(&report, "repacked_packs") > 0, "partly used packs were repacked: {report}");
    let after = cli.packs_bytes();
    // A fresh repository holding the same two states.
    let fresh = Cli::new(tmp.path().join("fresh"));
    fresh.init();
    let copy = tmp.path().join("copy");
    for state in [kept_states.len() - 2, kept_states.len() - 1] {
        let _ = std::fs::remove_dir_all(&copy);
        ok(
            &cli.run(&[
                "restore",
                "-q",
                &format!("latest~{}:{src_arg}", kept_states.len() - 1 - state),
                "--target",
                copy.to_str().unwrap(),
            ]),
            "restore",
        );
        assert_eq!(contents(&copy), kept_states[state], "kept snapshot {state} restores identical");
        ok(&fresh.run(&["backup", "-q", copy.to_str().unwrap()]), "fresh backup");
    }
    let reference = fresh.packs_bytes();
    println!(
        "\nchurn: 20 snapshots, packs {} KiB; forget all but 2 and prune --now: {} KiB; a fresh backup of the 2 kept \
         states: {} KiB ({:.1} %)",
        before >> 10,
        after >> 10,
        reference >> 10,
        100.0 * after as f64 / reference as f64
    );
    println!("prune --now: {report}");
    assert!(after * 100 <= reference * 110, "{after} B of packs left, a fresh backup takes {reference} B: {report}");
    ok(&cli.run(&["verify", "--read-data"]), "verify --read-data after the repack");
    assert_eq!(cli.restored(&format!("latest:{src_arg}")), kept_states[kept_states.len() - 1]);
}

/// `prune --now` is refused while another backup runs (its waits are what protect it).
#[test]
fn prune_now_waits_for_nobody_so_it_refuses_while_a_backup_runs() {
    let (_tmp, cli, src) = forgotten_backup("now");
    let mut a = cli.cmd_as("a", &["backup", "-q", &src]).env("BAKARE_FAILPOINT", "before-commit").spawn().unwrap();
    wait_stopped(&mut a);
    let refused = cli.run(&["prune", "--now"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("prune --now refused: 1 backup or prune is running"));
    assert!(signal(&a, "-CONT"));
    ok(&finish(a), "the backup, continued");
    ok(&cli.run(&["prune", "--now"]), "prune --now once nothing runs");
    check_all(&cli, &src);
}

/// A prune frozen after reading the repository, past its session's expiry, while another
/// prune marks and sweeps: continued, it must not rewrite the index from what it read (that
/// would list the packs the other one deleted); it stops and says why.
#[test]
fn a_prune_frozen_while_another_prunes_writes_nothing_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    gen_tree(&a, 150, 16, 51);
    gen_tree(&b, 150, 16, 52);
    let cli = Cli::new(tmp.path().join("frozen-prune"));
    cli.init();
    for src in [&a, &b] {
        ok(&cli.run(&["backup", "-q", src.to_str().unwrap()]), "backup");
    }
    ok(&cli.run(&["forget", "-q", "latest~1"]), "forget the first");
    let at = |args: &[&str], days: i64| {
        let mut c = cli.cmd_as("c", args);
        c.env("BAKARE_CLOCK_OFFSET_SECS", (days * DAY).to_string());
        c
    };
    let mut frozen = at(&["--json", "prune"], 2).env("BAKARE_FAILPOINT", "prune-before-rewrite").spawn().unwrap();
    wait_stopped(&mut frozen);
    ok(&cli.run(&["forget", "-q", "latest"]), "forget the second");
    ok(&at(&["prune"], 4).output().unwrap(), "prune while the first is frozen");
    ok(&at(&["prune"], 13).output().unwrap(), "prune after its session expired");
    assert!(signal(&frozen, "-CONT"));
    let out = finish(frozen);
    ok(&cli.run(&["verify"]), "verify after the frozen prune continued");
    assert_eq!(out.status.code(), Some(1), "the frozen prune stops");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another prune changed the index"), "{out:?}");
}

/// The ids of the session records in the repository.
fn session_ids(cli: &Cli) -> Vec<String> {
    std::fs::read_dir(cli.dir.join("repo/sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The backup's report: the last JSON line it printed.
fn report_of(out: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout).lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap()
}

/// Frozen inside a flush, after it checked its packs against the GC marks and before it
/// wrote their index segment, past expiry, in a repository whose index holds nothing
/// unreferenced (so no prune rewrites the index, and the walk's segments all stay): the
/// prunes mark its unindexed packs and delete them. Continued, the backup must not commit
/// a snapshot whose segment lists the deleted packs, but walk again. (Found by the two-host
/// test in CI: "packs/…: listed in the index but missing", and files of the frozen host's
/// snapshot whose blobs were never stored.)
#[test]
fn frozen_between_the_mark_check_and_the_index_segment_past_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 300, 24, 7);
    let cli = Cli::new(tmp.path().join("flush"));
    cli.init();
    let src = src.to_str().unwrap().to_string();
    ok(&cli.cmd_as("a", &["backup", "-q", &src]).output().unwrap(), "the first backup (kept)");
    bakare_corruption_tests::mutate_tree(std::path::Path::new(&src), 40, 13);
    let mut c = cli
        .cmd_as("c", &["--json", "backup", &src])
        .env("BAKARE_FAILPOINT", "before-index")
        .env("BAKARE_CHECKPOINT_FILES", "100000")
        .env("BAKARE_CHECKPOINT_MIB", "100000")
        .spawn()
        .unwrap();
    wait_stopped(&mut c);
    let first = prune(&cli, 2);
    assert!(n(&first, "marked_packs") > 0, "the frozen backup's unindexed packs are marked: {first}");
    assert_eq!(n(&first, "replaced_segments"), 0, "nothing indexed was garbage: {first}");
    assert_eq!(n(&prune(&cli, 11), "deleted_packs"), 0, "the expiry is declared before a sweep relies on it");
    assert!(n(&prune(&cli, 12), "deleted_packs") > 0, "the frozen session was declared expired: its packs go");
    assert!(signal(&c, "-CONT"));
    let out = finish(c);
    ok(&out, "the frozen backup, continued");
    assert!(n(&report_of(&out), "passes") > 1, "it walked again: {}", report_of(&out));
    check_all(&cli, &src);
}

/// Frozen after the commit fence, just before the snapshot is written, past expiry, with
/// everything it uses deduplicated (through its memo) against a forgotten snapshot: the
/// prunes mark and delete that data while it sleeps. Continued, the snapshot it writes names
/// deleted data: it must notice, take that snapshot back, and store the data again.
#[test]
fn frozen_between_the_fence_and_the_snapshot_past_expiry() {
    let (_tmp, cli, src) = forgotten_backup("after-fence");
    let mut a = cli.cmd_as("a", &["--json", "backup", &src]).env("BAKARE_FAILPOINT", "after-fence").spawn().unwrap();
    wait_stopped(&mut a);
    assert!(n(&prune(&cli, 2), "marked_packs") > 0);
    assert_eq!(n(&prune(&cli, 9), "deleted_packs"), 0, "the expiry is declared before a sweep relies on it");
    assert!(n(&prune(&cli, 10), "deleted_packs") > 0, "the frozen session was declared expired: what it used goes");
    assert!(signal(&a, "-CONT"));
    let out = finish(a);
    ok(&out, "the frozen backup, continued");
    let report = report_of(&out);
    assert!(n(&report, "files_read") > 0, "the second walk read the files whose data was deleted: {report}");
    check_all(&cli, &src);
    let listed = cli.run(&["--json", "snapshots"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 1, "the snapshot taken back is gone: {listed:?}");
}

/// A backup killed after its first pack; `resume` frozen after it listed the unindexed packs
/// to adopt, before indexing them, past its session's expiry, while prunes mark and delete
/// those packs. Continued, the resume must take its segment back (it lists deleted packs)
/// and store the data again.
#[test]
fn a_resume_frozen_before_it_adopts_past_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 300, 24, 17);
    let cli = Cli::new(tmp.path().join("adopt"));
    cli.init();
    let src = src.to_str().unwrap().to_string();
    ok(&cli.cmd_as("a", &["backup", "-q", &src]).output().unwrap(), "the first backup (kept)");
    bakare_corruption_tests::mutate_tree(std::path::Path::new(&src), 40, 19);
    let mut killed = cli
        .cmd_as("c", &["backup", "-q", &src])
        .env("BAKARE_FAILPOINT", "after-pack")
        .env("BAKARE_CHECKPOINT_FILES", "100000")
        .env("BAKARE_CHECKPOINT_MIB", "100000")
        .spawn()
        .unwrap();
    wait_stopped(&mut killed);
    killed.kill().unwrap();
    let _ = killed.wait();
    let sessions = session_ids(&cli);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let mut c =
        cli.cmd_as("c", &["--json", "resume", &sessions[0]]).env("BAKARE_FAILPOINT", "before-adopt").spawn().unwrap();
    wait_stopped(&mut c);
    assert!(n(&prune(&cli, 2), "marked_packs") > 0, "the killed backup's unindexed packs are marked");
    assert_eq!(n(&prune(&cli, 11), "deleted_packs"), 0, "the expiry is declared before a sweep relies on it");
    assert!(n(&prune(&cli, 12), "deleted_packs") > 0, "the declared session's packs go");
    assert!(signal(&c, "-CONT"));
    let out = finish(c);
    ok(&out, "the frozen resume, continued");
    check_all(&cli, &src);
}

/// Frozen after the commit fence (as by Ctrl-Z), its session taken over by `resume ID` on
/// the same host, which finishes (the files changed meanwhile, so the data the frozen one
/// was about to reference is used by nothing) and removes the session; prunes then mark and
/// delete that data, no expiry needed. Continued, the frozen backup must not write its
/// session record again and commit, but walk again. (Found by review.)
#[test]
fn frozen_after_the_fence_while_resume_takes_the_session_over() {
    let (_tmp, cli, src) = forgotten_backup("taken-over");
    let mut a = cli.cmd_as("a", &["--json", "backup", &src]).env("BAKARE_FAILPOINT", "after-fence").spawn().unwrap();
    wait_stopped(&mut a);
    let sessions = session_ids(&cli);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    bakare_corruption_tests::mutate_tree(std::path::Path::new(&src), 300, 23);
    ok(&cli.cmd_as("a", &["-q", "resume", &sessions[0]]).output().unwrap(), "resume of the frozen one's session");
    assert!(n(&prune(&cli, 2), "marked_packs") > 0);
    let deleted = n(&prune(&cli, 4), "deleted_packs");
    assert!(deleted > 0, "nothing holds the mark back: the session is gone");
    assert!(signal(&a, "-CONT"));
    let out = finish(a);
    ok(&out, "the frozen backup, continued");
    assert!(n(&report_of(&out), "passes") > 1, "it walked again: {}", report_of(&out));
    check_all(&cli, &src);
}
