//! Seeded mutations of every kind of repository file: no panic, no hang, nothing undetected,
//! metadata always repaired in full, data loss limited to the files that used the damaged
//! blobs, reported, and recovered from the source where it still has them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use bakare_corruption_tests::{Fixture, Kind, Mutation, Outcome, Rng};

fn iterations() -> usize {
    std::env::var("CORRUPTION_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

#[test]
fn every_kind_of_file_under_every_mutation() {
    let fx = Fixture::new();
    let n = iterations();
    let mut table: BTreeMap<Kind, BTreeMap<Outcome, usize>> = BTreeMap::new();
    let mut failures = Vec::new();
    for kind in Kind::ALL {
        for i in 0..n {
            let mutation = Mutation::ALL[i % Mutation::ALL.len()];
            let mut rng = Rng::new((kind as u64) << 32 | i as u64);
            fx.reset();
            let (changed, at_risk) = fx.mutate(kind, mutation, &mut rng);
            let outcome = if changed {
                let (outcome, why) = fx.judge(&at_risk);
                let bad = matches!(outcome, Outcome::Undetected | Outcome::WrongData | Outcome::Failed)
                    || (kind.metadata_only() && outcome == Outcome::ReportedLoss);
                if bad {
                    failures.push(format!("{kind:?} #{i} {mutation:?}: {outcome:?} {why}"));
                }
                outcome
            } else {
                Outcome::NoOp
            };
            *table.entry(kind).or_default().entry(outcome).or_default() += 1;
        }
    }
    println!("\n{n} mutations per kind (bit flips, overwrites, zeroed runs, truncations, stale copies):");
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>11} {:>10} {:>7} {:>6}",
        "kind", "detected", "repaired", "loss", "undetected", "wrongdata", "failed", "no-op"
    );
    for (kind, row) in &table {
        let get = |o: Outcome| row.get(&o).copied().unwrap_or(0);
        let detected =
            get(Outcome::Repaired) + get(Outcome::ReportedLoss) + get(Outcome::WrongData) + get(Outcome::Failed);
        println!(
            "{:<16} {:>9} {:>9} {:>9} {:>11} {:>10} {:>7} {:>6}",
            format!("{kind:?}"),
            detected,
            get(Outcome::Repaired),
            get(Outcome::ReportedLoss),
            get(Outcome::Undetected),
            get(Outcome::WrongData),
            get(Outcome::Failed),
            get(Outcome::NoOp)
        );
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Damage to trees (each is in two packs) and to pack tables costs readers nothing: every
/// snapshot restores identical straight away, with no repair in between.
#[test]
fn restore_rides_over_damaged_trees_without_repair() {
    let fx = Fixture::new();
    let n = iterations() / 2;
    let mut table: BTreeMap<Kind, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut failures = Vec::new();
    for kind in [Kind::TreeBlob, Kind::PackBlobTable] {
        for i in 0..n {
            let mutation = Mutation::ALL[i % Mutation::ALL.len()];
            let mut rng = Rng::new(0x7EE5 << 32 | (kind as u64) << 24 | i as u64);
            fx.reset();
            let (changed, _) = fx.mutate(kind, mutation, &mut rng);
            let outcome = match fx.restore_without_repair() {
                Ok(()) if changed => "identical",
                Ok(()) => "no-op",
                Err(why) => {
                    failures.push(format!("{kind:?} #{i} {mutation:?}: {why}"));
                    "failed"
                }
            };
            *table.entry(kind).or_default().entry(outcome).or_default() += 1;
        }
    }
    println!("\nrestore with no repair after {n} mutations per kind: {table:?}");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A lost index segment: the packs are intact, but no reader can find their blobs. Plain
/// verify must notice, repair must rebuild the index from the pack tables, and every
/// snapshot must then restore identical.
#[test]
fn a_deleted_index_segment_is_found_and_rebuilt() {
    let fx = Fixture::new();
    let segments = fx.objects("index");
    assert!(!segments.is_empty());
    let mut rows: BTreeMap<&str, usize> = BTreeMap::new();
    for seg in &segments {
        fx.reset();
        std::fs::remove_file(fx.repo_dir().join(seg)).unwrap();
        assert_eq!(fx.verify_finds_a_problem(), Ok(true), "verify missed the deleted {}", seg.display());
        let (outcome, why) = fx.judge(&std::collections::HashSet::new());
        assert_eq!(outcome, Outcome::Repaired, "{}: {why}", seg.display());
        *rows.entry("found, rebuilt, restores identical").or_default() += 1;
    }
    println!("\ndeleted index segments ({} of them, one at a time): {rows:?}", segments.len());
}

/// A damaged parity object is rewritten with as many recovery shards as it had (4 here), not
/// with a fixed 2.
#[test]
fn a_rewritten_parity_object_keeps_its_recovery_count() {
    let fx = Fixture::with_parity(4);
    for i in 0..6 {
        fx.reset();
        let mutation = [Mutation::BitFlip, Mutation::Overwrite, Mutation::ZeroRun][i % 3];
        let (changed, at_risk) = fx.mutate(Kind::Parity, mutation, &mut Rng::new(0x9A21 + i as u64));
        assert!(changed);
        let (outcome, why) = fx.judge(&at_risk);
        assert_eq!(outcome, Outcome::Repaired, "{why}");
        for p in fx.objects("parity") {
            let bytes = std::fs::read(fx.repo_dir().join(&p)).unwrap();
            let parity = bakare_store::parity::Parity::decode("p", &bytes).unwrap();
            assert_eq!(parity.recovery_count(), 4, "#{i} {mutation:?}: {} rewritten with fewer shards", p.display());
        }
    }
}

/// With parity, damaged packs are rebuilt in place: no data is lost to any mutation that
/// leaves most of a pack (truncation may cut off more than parity covers; a stale copy of
/// another pack leaves nothing of it).
#[test]
fn packs_with_parity_are_rebuilt() {
    let fx = Fixture::with_parity(4);
    let n = iterations() / 2;
    let mut table: BTreeMap<Kind, BTreeMap<Outcome, usize>> = BTreeMap::new();
    let mut failures = Vec::new();
    for kind in [Kind::PackData, Kind::PackBlobTable, Kind::TreeBlob, Kind::Parity] {
        for i in 0..n {
            let mutation = Mutation::ALL[i % Mutation::ALL.len()];
            let mut rng = Rng::new(0xFA11 << 32 | (kind as u64) << 24 | i as u64);
            fx.reset();
            let (changed, at_risk) = fx.mutate(kind, mutation, &mut rng);
            let outcome = if changed { fx.judge(&at_risk).0 } else { Outcome::NoOp };
            let allowed = match outcome {
                Outcome::Repaired | Outcome::NoOp => true,
                // A truncation may cut off more than parity covers; a stale copy replaces all of it.
                Outcome::ReportedLoss => {
                    kind == Kind::PackData && matches!(mutation, Mutation::Truncate | Mutation::StaleCopy)
                }
                _ => false,
            };
            if !allowed {
                failures.push(format!("{kind:?} #{i} {mutation:?}: {outcome:?}"));
            }
            *table.entry(kind).or_default().entry(outcome).or_default() += 1;
        }
    }
    println!(
        "
with parity (4 of 64 shards), {n} mutations per kind: {table:?}"
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// The local memo: any damage to `state.redb` costs speed, never a different snapshot.
#[test]
fn state_redb_under_every_mutation() {
    use std::sync::Arc;

    use bakare_planner::{BackupOptions, Memo, backup};

    let fx = Fixture::new();
    let memo_path = fx.dir.path().join("cache/state.redb");
    let repo = fx.open_repo();
    let opts = BackupOptions { host: "h".into(), user: "u".into(), ..BackupOptions::default() };
    let run = || {
        let memo = Memo::open(&memo_path, &bakare_store::Budget::default());
        let r = backup(repo.clone(), &memo, std::slice::from_ref(&fx.source), &opts, Arc::default()).unwrap();
        // The source folder's tree: the root also records /tmp, whose mtime others change.
        let src = match bakare_planner::find_node(&repo, r.snapshot.root, &fx.source.to_string_lossy()).unwrap() {
            bakare_planner::Start::Tree(id) => id,
            bakare_planner::Start::Entry(_) => panic!("the source is a folder"),
        };
        (src, r.snapshot.stats.files_read, r.memo_warnings.len())
    };
    let (root, _, _) = run();
    let stale = std::fs::read(&memo_path).unwrap();
    let (again, read, _) = run();
    assert_eq!((again, read), (root, 0), "the memo works");
    let pristine = std::fs::read(&memo_path).unwrap();
    let n = iterations();
    let mut rows: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..n {
        let mut rng = Rng::new(0x5eed_0000 + i as u64);
        let mut bytes = pristine.clone();
        let at = rng.below(bytes.len());
        match Mutation::ALL[i % Mutation::ALL.len()] {
            Mutation::BitFlip => bytes[at] ^= 1 << rng.below(8),
            Mutation::Overwrite => {
                bytes.iter_mut().skip(at).take(1 + rng.below(16)).for_each(|b| *b = rng.next_u64() as u8)
            }
            Mutation::ZeroRun => bytes.iter_mut().skip(at).take(1 + rng.below(4096)).for_each(|b| *b = 0),
            Mutation::Truncate => bytes.truncate(at),
            Mutation::StaleCopy => bytes = stale.clone(),
        }
        std::fs::write(&memo_path, &bytes).unwrap();
        let (got, read, warnings) = run();
        assert_eq!(got, root, "#{i}: damage to state.redb changed the snapshot");
        let outcome = if bytes == pristine {
            "no-op"
        } else if warnings > 0 {
            "detected, rebuilt"
        } else if read > 0 {
            "detected, re-read"
        } else {
            "harmless (unused bytes)"
        };
        *rows.entry(outcome).or_default() += 1;
    }
    println!("\nstate.redb, {n} mutations: {rows:?}; wrong snapshots: 0");
}
