//! `find`, `history` and `diff` against the truth on disk: a tree made and mutated by
//! `gen_tree.py` is recorded before each backup, and what the name index and `diff` say of
//! the snapshots is compared with those records, path by path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bakare_corruption_tests::{Cli, gen_tree, mutate_tree, ok};

/// What a path was on disk: kind, size, metadata, content hash (files) or target (symlinks).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    size: u64,
    meta: (u32, u32, u32, i64),
    content: Option<Vec<u8>>,
}

fn record(root: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    // The root itself too: a change right in it (a folder renamed there) moves its mtime.
    let m = fs::symlink_metadata(root).unwrap();
    let meta = (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime() * 1_000_000_000 + m.mtime_nsec());
    out.insert(root.to_string_lossy().into_owned(), Seen { kind: "dir", size: 0, meta, content: None });
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let meta = (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime() * 1_000_000_000 + m.mtime_nsec());
            let (kind, size, content) = if m.is_dir() {
                stack.push(path.clone());
                ("dir", 0, None)
            } else if m.file_type().is_symlink() {
                ("symlink", 0, Some(fs::read_link(&path).unwrap().to_string_lossy().as_bytes().to_vec()))
            } else {
                ("file", m.len(), Some(blake3::hash(&fs::read(&path).unwrap()).as_bytes().to_vec()))
            };
            out.insert(path.to_string_lossy().into_owned(), Seen { kind, size, meta, content });
        }
    }
    out
}

/// The changes `diff` should report between two records.
fn expected_diff(a: &BTreeMap<String, Seen>, b: &BTreeMap<String, Seen>) -> BTreeSet<(char, String)> {
    let mut out = BTreeSet::new();
    for (p, x) in a {
        match b.get(p) {
            None => {
                out.insert(('-', p.clone()));
            }
            Some(y) if (x.kind == "dir") != (y.kind == "dir") => {
                out.insert(('-', p.clone()));
                out.insert(('+', p.clone()));
            }
            Some(y) if x.kind != y.kind => {
                out.insert(('T', p.clone()));
            }
            Some(y) if x.content != y.content => {
                out.insert(('M', p.clone()));
            }
            Some(y) if x.meta != y.meta => {
                out.insert(('m', p.clone()));
            }
            Some(_) => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.insert(('+', p.clone()));
    }
    out
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn diff_of(cli: &Cli, args: &[&str]) -> BTreeSet<(char, String)> {
    let out = cli.run(args);
    ok(&out, "diff");
    let v = json_lines(&out).remove(0);
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["change"].as_str().unwrap().chars().next().unwrap(), c["path"].as_str().unwrap().to_string()))
        .collect()
}

/// Every file path the index knows, with (content changed flags, number of versions).
fn catalog(cli: &Cli, extra: &[&str]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["find", "", "--limit", "1000000"]);
    let out = cli.run(&args);
    ok(&out, "find");
    json_lines(&out)
        .into_iter()
        .filter(|v| v["type"] == "match")
        .map(|v| (v["path"].as_str().unwrap().to_string(), v["versions"].as_array().unwrap().clone()))
        .collect()
}

/// What the index should hold for the non-folder paths of the records, oldest first: the
/// `changed` flag of each version (null for the first).
fn expected_catalog(records: &[BTreeMap<String, Seen>]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let mut last: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for r in records {
        for (p, s) in r.iter().filter(|(_, s)| s.kind != "dir") {
            let changed = match last.get(p) {
                None => serde_json::Value::Null,
                Some(c) => (*c != s.content).into(),
            };
            last.insert(p.clone(), s.content.clone());
            out.entry(p.clone()).or_default().push(changed);
        }
    }
    out
}

fn flags(c: &BTreeMap<String, Vec<serde_json::Value>>) -> BTreeMap<String, Vec<serde_json::Value>> {
    c.iter().map(|(p, vs)| (p.clone(), vs.iter().map(|v| v["changed"].clone()).collect())).collect()
}

/// Asserts two sets of changes are equal, showing only where they differ. The folders above
/// the source (`/tmp`, whose mtime any process may move) are not compared.
fn same(got: BTreeSet<(char, String)>, want: &BTreeSet<(char, String)>, root: &str, what: &str) {
    let inside = |p: &str| p == root || p.starts_with(&format!("{root}/"));
    let got: BTreeSet<(char, String)> = got.into_iter().filter(|(_, p)| inside(p)).collect();
    let extra: Vec<_> = got.difference(want).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: reported but not expected {extra:?}; expected but not reported {missing:?}"
    );
}

#[test]
fn find_and_diff_agree_with_the_tree_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = Cli::new(tmp.path().join("w"));
    cli.init();
    let src = tmp.path().join("src");
    gen_tree(&src, 600, 2, 11);
    let src = fs::canonicalize(&src).unwrap();
    let s = src.to_str().unwrap();
    let mut records = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            mutate_tree(&src, 10, 100 + round);
        }
        records.push(record(&src));
        ok(&cli.run(&["backup", "-q", s]), "backup");
        // The index is brought up to date snapshot by snapshot (rounds 1 and 2 each add one).
        if round > 0 {
            let found = catalog(&cli, &[]);
            assert_eq!(flags(&found), expected_catalog(&records), "round {round}: the index differs from the tree");
            let sizes_ok = found.iter().all(|(p, vs)| {
                let last = vs.last().unwrap();
                records.last().unwrap().get(p).is_none_or(|s| s.size == last["size"].as_u64().unwrap())
            });
            assert!(sizes_ok, "sizes of the newest versions");
        }
    }
    // The same from an index built in one go, in memory.
    assert_eq!(flags(&catalog(&cli, &["--no-cache"])), expected_catalog(&records));

    // diff between snapshots, and between the first snapshot and the live folder.
    let want = expected_diff(&records[1], &records[2]);
    assert!(want.iter().any(|(w, _)| *w == 'M') && want.iter().any(|(w, _)| *w == '+'), "{want:?}");
    same(diff_of(&cli, &["--json", "diff", "latest~1", "latest"]), &want, s, "diff latest~1 latest");
    let want = expected_diff(&records[0], &records[2]);
    same(diff_of(&cli, &["--json", "diff", "latest~2", "latest"]), &want, s, "diff latest~2 latest");
    // `--local --path P` lists what changed below P.
    let below: BTreeSet<_> = want.iter().filter(|(_, p)| p != s).cloned().collect();
    same(diff_of(&cli, &["--json", "diff", "latest~2", "--local", "--path", s]), &below, s, "diff --local");

    // history of a file changed in the last round: its versions and the change.
    let (_, path) =
        want.iter().find(|(w, p)| *w == 'M' && records[1].get(p).is_some_and(|x| x.kind == "file")).unwrap();
    let out = cli.run(&["--json", "history", path]);
    ok(&out, "history");
    let h = json_lines(&out).remove(0);
    let got: Vec<_> = h["versions"].as_array().unwrap().iter().map(|v| v["changed"].clone()).collect();
    assert_eq!(got, expected_catalog(&records)[path.as_str()]);
}
