//! `find` ranks a name a typo away from the query above loose fuzzy matches, on a tree like
//! a man-page folder: thousands of long, similar names whose letters hold most queries as a
//! scattered subsequence.

use std::fs;

use bakare_planner::NameIndex;

use crate::engine::{new_repo, run_backup, small_chunks};

const TARGETS: [&str; 4] = ["copyright", "bakare.toml", "changelog.Debian.gz", "README.source"];

#[test]
fn a_typo_of_a_name_ranks_it_first_among_long_similar_names() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("usr-share");
    let words = [
        "cups",
        "snmp",
        "copy",
        "right",
        "tech",
        "helper",
        "config",
        "backend",
        "archive",
        "translate",
        "bakery",
        "module",
        "toolkit",
        "changes",
        "debian",
        "resource",
        "gzip",
        "log",
        "ignore",
        "source",
    ];
    for i in 0..3000usize {
        let dir = src.join(format!("man{}", i % 9));
        fs::create_dir_all(&dir).unwrap();
        let mut name = String::new();
        for k in 0..6 {
            name.push_str(words[(i * 7 + k * 13 + i / 17) % words.len()]);
            name.push(if k % 2 == 0 { '-' } else { '_' });
        }
        fs::write(dir.join(format!("{name}{i}.1.gz")), b"").unwrap();
    }
    for (i, t) in TARGETS.iter().enumerate() {
        let dir = src.join(format!("doc/pkg{i}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(t), b"x").unwrap();
    }
    let repo = new_repo(&tmp.path().join("repo"), small_chunks());
    run_backup(&repo, &src);
    let all = repo.snapshots().unwrap().snapshots;
    let idx = NameIndex::open(None, &repo, &all).unwrap();
    for (query, target) in [
        ("copyrigth", "copyright"),  // a swapped pair
        ("copyrght", "copyright"),   // a missing letter
        ("copyrighte", "copyright"), // an extra letter
        ("bakrae", "bakare.toml"),   // the README's example
        ("changlog", "changelog.Debian.gz"),
        ("readme.sorce", "README.source"),
    ] {
        let hits = idx.find(query, &all, None, 20).unwrap();
        let first = hits.first().map(|h| h.path.rsplit('/').next().unwrap_or_default().to_string());
        assert_eq!(
            first.as_deref(),
            Some(target),
            "{query:?}: {:?}",
            hits.iter().take(5).map(|h| (&h.path, h.score)).collect::<Vec<_>>()
        );
    }
    // An exact name still comes first, and a plain fuzzy query still finds.
    assert!(idx.find("copyright", &all, None, 5).unwrap()[0].path.ends_with("/copyright"));
    assert_eq!(idx.find("trnslt", &all, None, 5).unwrap().len(), 5, "letters in order still match");
}
