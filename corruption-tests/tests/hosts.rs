//! Two hosts back up overlapping trees while a third forgets and prunes in a loop, with
//! random kills and freezes of any of them (reliability.md T4), all real processes. Time
//! moves two days a round (and nine more when a process was frozen), so every grace period
//! passes. After each round `verify` is clean and every snapshot still listed restores to
//! exactly what its source held when it was taken.
//!
//! `GC_ROUNDS` sets the number of rounds (8 in CI; more for a soak), `GC_SEED` the seed of
//! the kills and freezes (0 in CI; others for a soak that tries other moments).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use bakare_corruption_tests::{Cli, Rng, contents, gen_tree, mutate_tree, ok, signal};

const DAY: i64 = 86_400;

fn at(mut c: Command, days: i64) -> Command {
    c.env("BAKARE_CLOCK_OFFSET_SECS", (days * DAY).to_string());
    c
}

/// The snapshot id in a backup's `--json` summary, if it committed.
fn committed(out: &std::process::Output) -> Option<String> {
    if !out.status.success() && out.status.code() != Some(3) {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .and_then(|v| v["snapshot"].as_str().map(str::to_string))
}

#[test]
fn two_hosts_and_a_prune_loop_with_kills_and_freezes() {
    let rounds: u64 = std::env::var("GC_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let seed: u64 = std::env::var("GC_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let tmp = tempfile::tempdir().unwrap();
    let srcs = [tmp.path().join("a"), tmp.path().join("b")];
    // The same seed: both trees start identical, so the hosts share chunks.
    for s in &srcs {
        gen_tree(s, 300, 32, 21);
    }
    let cli = Cli::new(tmp.path().join("hosts"));
    cli.init();
    let mut model: HashMap<String, (String, BTreeMap<String, blake3::Hash>)> = HashMap::new();
    let mut day = 0;
    let mut events: BTreeMap<&str, u32> = BTreeMap::new();
    let mut restores = 0;
    for round in 0..rounds {
        let mut rng = Rng::new(0x5EED + round + seed.wrapping_mul(1_000_003));
        day += 2;
        for (i, s) in srcs.iter().enumerate() {
            mutate_tree(s, 30, round * 2 + i as u64);
        }
        let expected: Vec<_> = srcs.iter().map(|s| contents(s)).collect();
        let hosts = ["a", "b"];
        let mut backups: Vec<Child> = srcs
            .iter()
            .zip(hosts)
            .map(|(s, h)| {
                let args = ["--json", "backup", "--compression", "max", "--host", h, s.to_str().unwrap()];
                at(cli.cmd_as(h, &args), day).spawn().unwrap()
            })
            .collect();
        let forget = ["-q", "forget", "--keep-last", "2", "--prune"];
        let mut pruner = at(cli.cmd_as("c", &forget), day).spawn().unwrap();
        // One of the three is killed or frozen at a random moment, or none is.
        let victim = rng.below(4);
        let freeze = rng.below(2) == 0;
        std::thread::sleep(Duration::from_millis(20 + rng.below(200) as u64));
        let mut target: Option<&mut Child> = match victim {
            0 | 1 => backups.get_mut(victim),
            2 => Some(&mut pruner),
            _ => None,
        };
        let mut frozen = None;
        if target.as_mut().is_some_and(|t| t.try_wait().unwrap().is_some()) {
            target = None;
            *events.entry("finished before the moment").or_default() += 1;
        }
        if let Some(t) = target {
            if freeze {
                // A child that has just exited cannot be frozen; the round goes on.
                let _ = signal(t, "-STOP");
                frozen = Some(victim);
                *events.entry("froze").or_default() += 1;
            } else {
                let _ = t.kill();
                *events.entry("killed").or_default() += 1;
            }
        } else if victim == 3 {
            *events.entry("undisturbed").or_default() += 1;
        }
        if let Some(v) = frozen {
            // While it sleeps, the others finish and prunes run a week and more later.
            for (i, b) in backups.iter_mut().enumerate() {
                if i != v {
                    let _ = b.wait();
                }
            }
            if v != 2 {
                let _ = pruner.wait();
            }
            for extra in [2, 11] {
                let out = at(cli.cmd_as("d", &["--json", "prune"]), day + extra).output().unwrap();
                ok(&out, "prune during a freeze");
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                *events.entry("packs repacked under a freeze").or_default() +=
                    report["repacked_packs"].as_u64().unwrap_or(0) as u32;
            }
            day += 11;
            let child = if v == 2 { &pruner } else { &backups[v] };
            let _ = signal(child, "-CONT");
        }
        let pruned = pruner.wait_with_output().unwrap();
        if victim != 2 {
            ok(&pruned, "forget --prune");
        } else if !pruned.status.success() {
            // Killed, perhaps between a snapshot's mirror and the snapshot (which verify
            // rightly reports): the user runs the interrupted command again.
            let again = at(cli.cmd_as("c", &forget), day).output().unwrap();
            ok(&again, "forget --prune, run again after the kill");
        }
        for ((b, expected), (src, host)) in backups.into_iter().zip(&expected).zip(srcs.iter().zip(hosts)) {
            let out = b.wait_with_output().unwrap();
            match committed(&out) {
                Some(id) => {
                    *events.entry("committed").or_default() += 1;
                    model.insert(id, (src.to_str().unwrap().to_string(), expected.clone()));
                }
                None => {
                    let code = out.status.code();
                    assert!(
                        code.is_none() || code == Some(75),
                        "host {host}: a backup failed other than resumably ({code:?}): {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    *events.entry("not committed").or_default() += 1;
                }
            }
        }
        ok(&cli.run(&["verify"]), &format!("verify after round {round}"));
        let listed = cli.run(&["--json", "snapshots"]);
        ok(&listed, "snapshots");
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
        for s in &listed {
            let id = s["id"].as_str().unwrap();
            let (src, expected) = model.get(id).unwrap_or_else(|| panic!("snapshot {id} was never committed"));
            assert_eq!(&cli.restored(&format!("{id}:{src}")), expected, "round {round}: snapshot {id} of {src}");
            restores += 1;
        }
        model.retain(|id, _| listed.iter().any(|s| s["id"] == id.as_str()));
    }
    // Last, everything reclaimable at once (nothing runs any more): repacked, swept, and every
    // snapshot still whole.
    let out = at(cli.cmd_as("d", &["--json", "prune", "--now"]), day + 1).output().unwrap();
    ok(&out, "prune --now at the end");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    *events.entry("packs repacked by the last prune --now").or_default() +=
        report["repacked_packs"].as_u64().unwrap_or(0) as u32;
    ok(&cli.run(&["verify", "--read-data"]), "verify --read-data at the end");
    let listed = cli.run(&["--json", "snapshots"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    for s in &listed {
        let id = s["id"].as_str().unwrap();
        let (src, expected) = &model[id];
        assert_eq!(&cli.restored(&format!("{id}:{src}")), expected, "after prune --now: snapshot {id} of {src}");
        restores += 1;
    }
    assert!(Path::new(&cli.dir.join("repo/packs")).exists());
    println!(
        "\n{rounds} rounds of two hosts + forget/prune (time pushed {day} days): {events:?}; {restores} snapshot restores identical; verify clean after every round"
    );
}
