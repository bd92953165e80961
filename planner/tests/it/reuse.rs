//! Salsa reuse, asserted from the log of executed queries as salsa's own tests do: after a
//! change, exactly the affected queries run again.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bakare_planner::{
    Child, ChildKind, Content, Listing, PlanDb, RunContext, SourceDir, SourceFile, StatFingerprint, TreeResult,
    dir_tree, file_content, metadata_of,
};
use bakare_store::{BlobId, Repository};
use salsa::Setter;

use crate::engine::{new_repo, small_chunks};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    db: PlanDb,
    top: SourceDir,
    files: BTreeMap<PathBuf, SourceFile>,
    dirs: BTreeMap<PathBuf, SourceDir>,
}

fn context(repo: Arc<Repository>) -> RunContext {
    RunContext {
        chunker: repo.chunker(),
        repo,
        counters: Arc::default(),
        fresh: Default::default(),
        errors: Default::default(),
        stopped: Default::default(),
        interrupt: Default::default(),
        devices: Default::default(),
        zero_chunk: Default::default(),
    }
}

/// The listing of `dir` as the walker would make it, reusing existing inputs.
fn listing(
    db: &PlanDb,
    dir: &Path,
    files: &mut BTreeMap<PathBuf, SourceFile>,
    dirs: &mut BTreeMap<PathBuf, SourceDir>,
) -> Listing {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let children = names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let meta = fs::symlink_metadata(&path).unwrap();
            let kind = if meta.is_dir() {
                let d = match dirs.get(&path) {
                    Some(d) => *d,
                    None => {
                        let l = listing(db, &path, files, dirs);
                        let d = SourceDir::new(db, path.clone(), l);
                        dirs.insert(path.clone(), d);
                        d
                    }
                };
                ChildKind::Dir(d)
            } else {
                let f = *files
                    .entry(path.clone())
                    .or_insert_with(|| SourceFile::new(db, path.clone(), StatFingerprint::of(&meta), None, None));
                ChildKind::File(f)
            };
            Child { name: name.as_bytes().to_vec(), meta: metadata_of(&meta), extra: Default::default(), kind }
        })
        .collect();
    Listing { children, error: None }
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("src");
        for (p, content) in [("a/f1", "one"), ("a/f2", "two"), ("b/g1", "three"), ("b/c/h1", "four")] {
            fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
            fs::write(root.join(p), content).unwrap();
        }
        let repo = new_repo(&tmp.path().join("repo"), small_chunks());
        let db = PlanDb::with_log(context(repo));
        let (mut files, mut dirs) = (BTreeMap::new(), BTreeMap::new());
        let l = listing(&db, &root, &mut files, &mut dirs);
        let top = SourceDir::new(&db, root.clone(), l);
        dirs.insert(root.clone(), top);
        Self { _tmp: tmp, root, db, top, files, dirs }
    }

    fn tree(&self, dir: &str) -> BlobId {
        match dir_tree(&self.db, self.dirs[&self.root.join(dir)]) {
            TreeResult::Saved(id) => *id,
            TreeResult::Fatal(e) => panic!("{e:?}"),
        }
    }

    fn root_tree(&self) -> BlobId {
        match dir_tree(&self.db, self.top) {
            TreeResult::Saved(id) => *id,
            TreeResult::Fatal(e) => panic!("{e:?}"),
        }
    }

    /// The query bodies that ran since the last call, as `query relative-path`, sorted; checks
    /// that salsa's `WillExecute` events agree in number.
    fn executed(&self) -> Vec<String> {
        let log = self.db.take_log();
        let events = log.iter().filter(|l| l.starts_with("execute ")).count();
        let root = format!("{}", self.root.display());
        let mut bodies: Vec<String> = log
            .iter()
            .filter(|l| !l.starts_with("execute "))
            .map(|l| l.replace(&format!("{root}/"), "").replace(&root, "."))
            .collect();
        assert_eq!(events, bodies.len(), "salsa events and query bodies disagree: {log:#?}");
        bodies.sort();
        bodies
    }

    /// The walker's part of a change: new fingerprints for files, and a new listing for each
    /// folder whose listing differs (inputs are compared before they are set).
    fn rescan(&mut self) {
        for (path, f) in self.files.clone() {
            let fp = StatFingerprint::of(&fs::symlink_metadata(&path).unwrap());
            if f.fp(&self.db) != fp {
                f.set_fp(&mut self.db).to(fp);
            }
        }
        for (path, d) in self.dirs.clone() {
            let (mut files, mut dirs) = (self.files.clone(), self.dirs.clone());
            let l = listing(&self.db, &path, &mut files, &mut dirs);
            if *d.listing(&self.db) != l {
                d.set_listing(&mut self.db).to(l);
            }
        }
    }

    fn content(&self, rel: &str) -> Content {
        file_content(&self.db, self.files[&self.root.join(rel)]).clone()
    }
}

fn set_mtime(path: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_file_times(path, t, t).unwrap();
}

#[test]
fn first_run_executes_everything_then_nothing() {
    let fx = Fixture::new();
    fx.root_tree();
    assert_eq!(
        fx.executed(),
        [
            "dir_tree .",
            "dir_tree a",
            "dir_tree b",
            "dir_tree b/c",
            "file_content a/f1",
            "file_content a/f2",
            "file_content b/c/h1",
            "file_content b/g1",
        ]
    );
    fx.root_tree();
    assert_eq!(fx.executed(), Vec::<String>::new());
}

#[test]
fn a_content_change_reruns_the_file_and_its_ancestors_only() {
    let mut fx = Fixture::new();
    let before = fx.root_tree();
    let b_before = fx.tree("b");
    fx.executed();
    fs::write(fx.root.join("b/c/h1"), "FOUR, changed").unwrap();
    fx.rescan();
    let after = fx.root_tree();
    assert_eq!(fx.executed(), ["dir_tree .", "dir_tree b", "dir_tree b/c", "file_content b/c/h1"]);
    assert_ne!(before, after);
    assert_ne!(b_before, fx.tree("b"));
    assert_eq!(fx.executed(), Vec::<String>::new(), "a's tree was not recomputed");
}

#[test]
fn a_reread_without_change_is_backdated_and_no_tree_changes() {
    let mut fx = Fixture::new();
    let path = fx.root.join("a/f2");
    set_mtime(&path, 1_000_000_000);
    fx.rescan();
    let before = fx.root_tree();
    let content_before = fx.content("a/f2");
    fx.executed();
    // `touch`, then put the mtime back: only ctime changes, so the file is read again (its
    // fingerprint changed) but its listing entry is the same.
    set_mtime(&path, 2_000_000_000);
    set_mtime(&path, 1_000_000_000);
    fx.rescan();
    let after = fx.root_tree();
    assert_eq!(fx.executed(), ["file_content a/f2"], "only the content was read again");
    assert_eq!(before, after, "no tree above it changed id");
    assert_eq!(fx.content("a/f2"), content_before);
}

#[test]
fn a_touch_rereads_content_and_changes_only_the_recorded_mtime() {
    let mut fx = Fixture::new();
    let before = fx.root_tree();
    let (a_before, b_before) = (fx.tree("a"), fx.tree("b"));
    let content_before = fx.content("a/f1");
    fx.executed();
    set_mtime(&fx.root.join("a/f1"), 1_500_000_000);
    fx.rescan();
    let after = fx.root_tree();
    // The content is read again and found equal (backdated); the folder's tree records the
    // new mtime, so it and its ancestors change id, and nothing else runs.
    assert_eq!(fx.executed(), ["dir_tree .", "dir_tree a", "file_content a/f1"]);
    assert_eq!(fx.content("a/f1"), content_before);
    assert_ne!(before, after);
    assert_ne!(a_before, fx.tree("a"));
    assert_eq!(b_before, fx.tree("b"));
}

#[test]
fn a_query_run_again_keeps_no_state_of_the_run_until_its_value_is_applied() {
    let mut fx = Fixture::new();
    let path = fx.root.join("a/f1");
    let run = fx.db.context().clone();
    let first = fx.content("a/f1");
    assert!(matches!(&first, Content::Read { record: Some(_), .. }), "{first:?}");
    // The body ran and saved the file's chunk, but counted and kept nothing.
    assert_eq!(bakare_planner::Counters::get(&run.counters.files), 0);
    assert!(run.fresh.lock().unwrap().is_empty(), "the memo record is in the value, not pushed");
    first.apply(&run, &path);
    assert_eq!(bakare_planner::Counters::get(&run.counters.files), 1);
    assert_eq!(bakare_planner::Counters::get(&run.counters.files_new), 1);
    assert_eq!(run.fresh.lock().unwrap().len(), 1);
    // Run again (a long-lived database re-reads a touched file): the run's state is as
    // before until the new value is applied, and the folder's view is equal (backdated).
    set_mtime(&path, 1_000_000_000);
    fx.rescan();
    let again = fx.content("a/f1");
    assert_eq!(again, first, "same size and chunks");
    assert_eq!(bakare_planner::Counters::get(&run.counters.files), 1);
    assert_eq!(run.fresh.lock().unwrap().len(), 1);
    let Content::Read { record: Some(record), .. } = &again else { panic!("{again:?}") };
    assert_eq!(record.fp.mtime_ns, 1_000_000_000_000_000_000, "the value returned is this run's own");
}
