//! Restore under damage and interruption, through the real binary: one damaged blob (or
//! frame of small blobs) costs only the files that use it (each named, exit code 4,
//! `--keep-damaged` writes the rest with holes); a restore killed with SIGKILL leaves no partly written file under its own name,
//! and the same restore run again (`--overwrite`) continues, keeping what was finished.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bakare_corruption_tests::{Cli, contents, ok};
use bakare_store::backend::LocalBackend;
use bakare_store::{BlobId, Node, Repository};

/// Every file of a snapshot's tree below `id`: path (relative) -> chunks.
fn files(repo: &Repository, id: &BlobId, at: &Path, out: &mut BTreeMap<PathBuf, Vec<BlobId>>) {
    for e in repo.load_tree(id).unwrap().entries {
        let path = at.join(std::ffi::OsStr::from_bytes(&e.name));
        match e.node {
            Node::Dir { tree } => files(repo, &tree, &path, out),
            Node::File { chunks, .. } => {
                out.insert(path, chunks);
            }
            _ => {}
        }
    }
}

fn open(cli: &Cli) -> Repository {
    Repository::open_with_passphrase(Arc::new(LocalBackend::new(cli.dir.join("repo"))), b"pw").unwrap()
}

/// The source folder's tree in the newest snapshot, and its files.
fn source_files(repo: &Repository, src: &Path) -> BTreeMap<PathBuf, Vec<BlobId>> {
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let bakare_planner::Start::Tree(id) = bakare_planner::find_node(repo, snap.root, &src.to_string_lossy()).unwrap()
    else {
        panic!("a folder")
    };
    let mut out = BTreeMap::new();
    files(repo, &id, Path::new(""), &mut out);
    out
}

fn partials(root: &Path) -> Vec<String> {
    contents(root)
        .into_keys()
        .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with(".bakare-partial-")))
        .collect()
}

/// A repository with one sealed object of data damaged, and what that costs.
struct Damage {
    cli: Cli,
    src: PathBuf,
    /// A file whose first chunk was damaged.
    victim: PathBuf,
    /// Every file with a chunk in the damaged object: per chunk, its length and whether lost.
    lost: BTreeMap<PathBuf, Vec<(usize, bool)>>,
    /// The distinct chunks lost.
    chunks: usize,
}

/// A tree backed up with small chunks, and one sealed object damaged: that of the first chunk
/// of a file no other file shares it with. Uncompressed (`framed` false), that object is the
/// chunk alone; compressed, small chunks share frames, and the damage costs the whole frame.
fn damaged_repository(tmp: &Path, framed: bool) -> Damage {
    let src = tmp.join("src");
    bakare_testkit::create(&src, &bakare_testkit::TreeSpec::new(60).mean_kib(64.0).seed(21).extras(false)).unwrap();
    let src = fs::canonicalize(&src).unwrap();
    let cli = Cli::new(tmp.join("w"));
    cli.init_with(&["--chunk-kib", "16"]);
    let compression = if framed { "default" } else { "off" };
    ok(&cli.run(&["backup", "-q", "--compression", compression, src.to_str().unwrap()]), "backup");
    let repo = open(&cli);
    let all = source_files(&repo, &src);
    let (victim, chunks) = all
        .iter()
        .find(|(_, c)| c.len() > 1 && all.values().filter(|o| o.contains(&c[0])).count() == 1)
        .map(|(p, c)| (p.clone(), c.clone()))
        .unwrap();
    let loc = repo.blob_location(&chunks[0]).unwrap();
    assert_eq!(loc.entry.frame_at.is_some(), framed, "framed only when compressed");
    let pack = cli.dir.join("repo").join(bakare_store::pack_path(&loc.pack));
    let mut bytes = fs::read(&pack).unwrap();
    bytes[(loc.entry.offset + loc.entry.length - 20) as usize] ^= 0x40;
    fs::write(&pack, bytes).unwrap();
    let mut lost = BTreeMap::new();
    let mut gone = std::collections::HashSet::new();
    for (path, chunks) in &all {
        let per: Vec<(usize, bool)> = chunks
            .iter()
            .map(|c| {
                let l = repo.blob_location(c).unwrap();
                let hit = l.pack == loc.pack && l.entry.offset == loc.entry.offset;
                if hit {
                    gone.insert(*c);
                }
                (l.entry.raw_len as usize, hit)
            })
            .collect();
        if per.iter().any(|&(_, hit)| hit) {
            lost.insert(path.clone(), per);
        }
    }
    assert!(!framed || lost.len() > 1, "a frame holds the chunks of several files");
    Damage { cli, src, victim, lost, chunks: gone.len() }
}

/// What one damaged object costs a restore: exactly the files with a chunk in it, each
/// named (exit code 4); every other file restored identical; `--keep-damaged` writes them
/// with the lost chunks as holes.
fn damage_costs_only_the_files_that_use_it(framed: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let Damage { cli, src, lost, .. } = damaged_repository(tmp.path(), framed);
    let expected = contents(&src);
    let target = tmp.path().join("out");
    let spec = format!("latest:{}", src.display());
    let out = cli.run(&["restore", &spec, "--target", target.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    for path in lost.keys() {
        assert!(stderr.contains(&format!("not restored completely: {}", target.join(path).display())), "{stderr}");
    }
    let count = if lost.len() == 1 { "1 entry".to_string() } else { format!("{} entries", lost.len()) };
    assert!(stderr.contains(&format!("{count} not restored completely (listed above)")), "{stderr}");
    let got = contents(&target);
    assert!(partials(&target).is_empty());
    let mut want = expected.clone();
    for path in lost.keys() {
        let path = path.to_string_lossy().into_owned();
        assert!(!got.contains_key(&path), "no partly written file under its own name");
        want.remove(&path);
    }
    assert_eq!(got, want, "every other file restored identical");

    // --keep-damaged: the readable bytes, the lost chunks as holes.
    let kept = tmp.path().join("kept");
    let out = cli.run(&["restore", &spec, "--keep-damaged", "--target", kept.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("written with the lost ranges as holes"));
    for (path, chunks) in &lost {
        let original = fs::read(src.join(path)).unwrap();
        let partial = fs::read(kept.join(path)).unwrap();
        assert_eq!(partial.len(), original.len());
        let mut at = 0;
        for &(len, hit) in chunks {
            let (got, want) = (&partial[at..at + len], &original[at..at + len]);
            if hit {
                assert!(got.iter().all(|&b| b == 0), "{}: a lost chunk is zeros", path.display());
            } else {
                assert_eq!(got, want, "{}: the rest is the file's", path.display());
            }
            at += len;
        }
    }
}

#[test]
fn one_damaged_blob_costs_only_the_files_that_use_it() {
    damage_costs_only_the_files_that_use_it(false);
}

#[test]
fn a_damaged_frame_costs_only_the_files_with_chunks_in_it() {
    damage_costs_only_the_files_that_use_it(true);
}

#[test]
fn a_killed_restore_leaves_only_complete_files_and_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    bakare_testkit::create(&src, &bakare_testkit::TreeSpec::new(400).mean_kib(48.0).seed(22).big(1)).unwrap();
    let src = fs::canonicalize(&src).unwrap();
    let cli = Cli::new(tmp.path().join("w"));
    cli.init();
    ok(&cli.run(&["backup", "-q", "--compression", "off", src.to_str().unwrap()]), "backup");
    let expected = contents(&src);
    let target = tmp.path().join("out");
    let spec = format!("latest:{}", src.display());
    let mut killed_mid_file = false;
    for attempt in 0..5u64 {
        let _ = fs::remove_dir_all(&target);
        let mut child =
            cli.cmd(&["--threads", "1", "restore", "-q", &spec, "--target", target.to_str().unwrap()]).spawn().unwrap();
        // Kill it once the big file is being written.
        let big = target.join("big");
        let t = std::time::Instant::now();
        while t.elapsed().as_secs() < 30 && child.try_wait().unwrap().is_none() {
            let partial = fs::read_dir(&big).ok().and_then(|d| {
                d.filter_map(|e| e.ok()).find(|e| e.file_name().to_string_lossy().starts_with(".bakare-partial-"))
            });
            if partial.is_some_and(|p| p.metadata().is_ok_and(|m| m.len() > (8 << 20) + attempt * (4 << 20))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        if !running {
            continue;
        }
        killed_mid_file = true;
        // Every file under its own name is whole; the one being written is under a temporary name.
        let got = contents(&target);
        for (path, hash) in &got {
            if !path.rsplit('/').next().is_some_and(|n| n.starts_with(".bakare-partial-")) {
                assert_eq!(Some(hash), expected.get(path), "{path}: a file under its own name is complete");
            }
        }
        assert!(!partials(&target).is_empty(), "the file being written is under a temporary name");
        // The same restore again continues, keeping what was done.
        let again = cli.run(&["restore", &spec, "--overwrite", "--target", target.to_str().unwrap()]);
        ok(&again, "restore again");
        let said = String::from_utf8_lossy(&again.stdout);
        assert!(said.contains("already there, kept"), "{said}");
        assert_eq!(contents(&target), expected, "the continued restore is identical");
        break;
    }
    assert!(killed_mid_file, "no kill landed while the big file was written");
}

/// `verify --repair` without `--source` marks the damaged file lost but keeps what a later
/// `--source` needs: that later repair recovers it, and the restore is whole again. The
/// restore in between says the data was lost in the repository, not at backup time.
#[test]
fn a_repair_without_source_never_prevents_a_later_one_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let Damage { cli, src, victim, .. } = damaged_repository(tmp.path(), false);
    let expected = contents(&src);
    let first = cli.run(&["verify", "--read-data", "--repair"]);
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(said.contains("`bakare verify --repair --source PATH` recovers them"), "{said}");
    let spec = format!("latest:{}", src.display());
    let between = tmp.path().join("between");
    let out = cli.run(&["restore", &spec, "--target", between.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("content lost in the repository after the backup"), "{stderr}");
    assert!(!stderr.contains("at backup time"), "{stderr}");
    // A plain verify now knows the loss: not a failure, but a note saying how to heal it.
    let plain = cli.run(&["verify"]);
    ok(&plain, "verify after the loss was marked");
    assert!(String::from_utf8_lossy(&plain.stdout).contains("marked lost by an earlier repair"));
    // The source still has the file: the second repair recovers it.
    let second = cli.run(&["verify", "--read-data", "--repair", "--source", src.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(said.contains("re-read 1 lost chunks") || said.contains("lost chunks from files under"), "{said}");
    ok(&cli.run(&["verify", "--read-data"]), "verify after the second repair");
    let after = tmp.path().join("after");
    ok(&cli.run(&["restore", "-q", &spec, "--target", after.to_str().unwrap()]), "restore after healing");
    assert_eq!(contents(&after), expected, "{} is whole again", victim.display());
}

/// `verify --repair --json` lists as lost only what stays lost: the files `--source`
/// recovered (every file with a chunk in a damaged frame) are among what was found
/// (`lost_found`), not among the losses.
#[test]
fn verify_json_lists_as_lost_only_what_stays_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let Damage { cli, src, lost, chunks, .. } = damaged_repository(tmp.path(), true);
    let out = cli.run(&["--json", "verify", "--read-data", "--repair", "--source", src.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let found: Vec<PathBuf> = v["lost_found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Path::new(f["path"].as_str().unwrap()).strip_prefix(&src).unwrap().to_path_buf())
        .collect();
    assert_eq!(found, lost.keys().cloned().collect::<Vec<_>>(), "{v}");
    assert_eq!(v["lost"].as_array().unwrap().len(), 0, "recovered from the source: {v}");
    assert_eq!(v["recovered_chunks"], chunks);
    ok(&cli.run(&["verify", "--read-data"]), "verify after the repair");
    let after = tmp.path().join("after");
    let spec = format!("latest:{}", src.display());
    ok(&cli.run(&["restore", "-q", &spec, "--target", after.to_str().unwrap()]), "restore after the repair");
    assert_eq!(contents(&after), contents(&src), "every file whole again");
}
