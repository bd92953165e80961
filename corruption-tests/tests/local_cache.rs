//! Damage to this machine's local caches (`state.redb`, `index.redb`, `names.redb`) costs
//! speed, never correctness and never a crash: after each byte flip, overwrite, zeroed tail
//! or truncation (the length and mtime kept where the damage allows), `backup`, `restore`,
//! `find` and `ls` all succeed, and give what they gave before.
//!
//! `LOCAL_CACHE_ITERATIONS` sets the damages per file (8 in CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bakare_corruption_tests::{Cli, Rng, contents, gen_tree, ok};

fn cache_file(cli: &Cli, name: &str) -> PathBuf {
    let base = cli.dir.join("cache-default");
    let folder = fs::read_dir(&base).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    folder.join(name)
}

/// Damages `path` in one of four ways, keeping its length and mtime where the way allows.
fn damage(path: &Path, rng: &mut Rng, how: usize) -> &'static str {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = fs::read(path).unwrap();
    let at = rng.below(bytes.len());
    let what = match how % 4 {
        0 => {
            bytes[at] ^= 1 << rng.below(8);
            "bit flip"
        }
        1 => {
            for b in bytes.iter_mut().skip(at).take(1 + rng.below(64)) {
                *b = rng.next_u64() as u8;
            }
            "overwrite"
        }
        2 => {
            bytes[at..].fill(0);
            "zeroed tail"
        }
        _ => {
            bytes.truncate(at);
            "truncation"
        }
    };
    fs::write(path, &bytes).unwrap();
    fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
    what
}

fn succeeded(out: &std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{what}: a panic reached the user: {stderr}");
    ok(out, what);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn damaged_local_caches_cost_speed_never_correctness() {
    let n: usize = std::env::var("LOCAL_CACHE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, 300, 8, 41);
    let src = fs::canonicalize(&src).unwrap();
    let src_arg = src.to_str().unwrap().to_string();
    let expected = contents(&src);
    let cli = Cli::new(tmp.path().join("w"));
    cli.init();
    ok(&cli.run(&["backup", "-q", &src_arg]), "first backup");
    ok(&cli.run(&["backup", "-q", &src_arg]), "second backup");
    // A file name to look for, and what `find` and `ls` say with healthy caches.
    let name = expected.keys().find(|p| p.ends_with(".rs") && !p.contains('\n')).unwrap().clone();
    let needle = Path::new(&name).file_name().unwrap().to_string_lossy().into_owned();
    let find = |cli: &Cli| succeeded(&cli.run(&["find", "--limit", "3", &needle]), "find");
    let listing = |cli: &Cli| succeeded(&cli.run(&["ls", &format!("latest:{src_arg}")]), "ls");
    let found = find(&cli);
    assert!(found.contains(&needle), "{found}");
    let listed = listing(&cli);
    let files = ["state.redb", "index.redb", "names.redb"];
    let pristine: BTreeMap<&str, Vec<u8>> =
        files.iter().map(|f| (*f, fs::read(cache_file(&cli, f)).unwrap())).collect();
    let mut table: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for file in files {
        for i in 0..n {
            let path = cache_file(&cli, file);
            fs::write(&path, &pristine[file]).unwrap();
            let mut rng = Rng::new(0xCAC4E << 16 | (file.len() as u64) << 8 | i as u64);
            let what = damage(&path, &mut rng, i);
            let ctx = format!("{file} #{i} ({what})");
            succeeded(&cli.run(&["backup", "-q", &src_arg]), &format!("backup after {ctx}"));
            let out = cli.dir.join(format!("out-{file}-{i}"));
            succeeded(
                &cli.run(&["restore", "-q", &format!("latest:{src_arg}"), "--target", out.to_str().unwrap()]),
                &format!("restore after {ctx}"),
            );
            assert_eq!(contents(&out), expected, "{ctx}: the restore differs");
            let _ = fs::remove_dir_all(&out);
            assert_eq!(find(&cli).lines().next(), found.lines().next(), "{ctx}: find");
            assert_eq!(listing(&cli), listed, "{ctx}: ls");
            *table.entry((file, what)).or_default() += 1;
        }
    }
    println!(
        "\nlocal cache damages, each followed by backup, restore, find and ls (all identical, no panic): {table:?}"
    );
}
