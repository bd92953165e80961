//! Power loss of the local state (reliability.md T5): `state.redb` as a crash could leave it,
//! with writes that never reached the disk. The file is rebuilt from two real versions
//! (before and after a backup) page by page, at random, then cut short or with pages
//! zeroed; a backup of a changed tree runs on it. The snapshot must restore byte-identical
//! to the tree every time: the memo may be lost, never wrong.
//!
//! `TORN_ITERATIONS` sets the number of torn files (24 in CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use bakare_corruption_tests::{Cli, Rng, contents, gen_tree, mutate_tree, ok};

const PAGE: usize = 4096;

/// The state file of host `default` (there is one repository, so one folder in the cache).
fn state_file(cli: &Cli) -> std::path::PathBuf {
    let cache = cli.dir.join("cache-default");
    let repo_dir = fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    repo_dir.join("state.redb")
}

#[test]
fn torn_state_never_gives_a_wrong_snapshot() {
    let n: u64 = std::env::var("TORN_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 200, 8, 31);
    let cli = Cli::new(tmp.path().join("torn"));
    cli.init();
    let src_arg = src.to_str().unwrap();
    ok(&cli.run(&["backup", "-q", src_arg]), "first backup");
    let before = fs::read(state_file(&cli)).unwrap();
    mutate_tree(&src, 20, 1);
    ok(&cli.run(&["backup", "-q", src_arg]), "second backup");
    let after = fs::read(state_file(&cli)).unwrap();
    let (mut lost, mut used) = (0, 0);
    for i in 0..n {
        let mut rng = Rng::new(0x70A2 + i);
        // Four ways a crash tears a file: pages from both versions at random; the newer
        // version with one page still old (a write that never landed); the newer version
        // cut short; the newer version with one page zeroed.
        let pages = after.len().div_ceil(PAGE);
        let torn = match i % 4 {
            0 => {
                let len = if rng.below(2) == 0 { before.len() } else { after.len() };
                let mut torn = Vec::with_capacity(len);
                for page in 0..len.div_ceil(PAGE) {
                    let from = if rng.below(2) == 0 { &before } else { &after };
                    let (start, end) = (page * PAGE, ((page + 1) * PAGE).min(len));
                    let mut bytes = from.get(start..end.min(from.len())).unwrap_or_default().to_vec();
                    bytes.resize(end - start, 0);
                    torn.extend_from_slice(&bytes);
                }
                torn
            }
            1 => {
                let mut torn = after.clone();
                let page = rng.below(pages);
                let (start, end) = (page * PAGE, ((page + 1) * PAGE).min(after.len()).min(before.len()));
                if start < end {
                    torn[start..end].copy_from_slice(&before[start..end]);
                }
                torn
            }
            2 => after[..rng.below(pages) * PAGE].to_vec(),
            _ => {
                let mut torn = after.clone();
                let page = rng.below(pages);
                let end = ((page + 1) * PAGE).min(after.len());
                torn[page * PAGE..end].fill(0);
                torn
            }
        };
        fs::write(state_file(&cli), &torn).unwrap();
        mutate_tree(&src, 5, 100 + i);
        let out = cli.cmd(&["--json", "backup", src_arg]).output().unwrap();
        ok(&out, &format!("backup on torn state #{i}"));
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("\"files_reused\":0,") {
            lost += 1;
        } else {
            used += 1;
        }
        assert_eq!(cli.restored(&format!("latest:{src_arg}")), contents(&src), "torn state #{i}: wrong snapshot");
        // Back to the torn file's sources for the next round.
        fs::write(state_file(&cli), &after).unwrap();
    }
    ok(&cli.run(&["verify", "--read-data"]), "verify --read-data");
    println!(
        "\n{n} torn state files: {used} still served part of the memo, {lost} were lost entirely; every snapshot \
         restored identical"
    );
}
