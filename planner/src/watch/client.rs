//! The backup's side: ask the daemon, and decide whether its answer may be used.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Status, SyncReply, receive, send};

/// Where a backup set stood with a watcher when its last snapshot's walk began: the
/// watcher's epoch and the generation of the last event read before the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coverage {
    pub epoch: [u8; 16],
    pub generation: u64,
}

/// The folders a backup must list; every other folder's tree is its last one.
#[derive(Debug, Default)]
pub struct DirtySet {
    /// Folders where anything may have changed.
    folders: HashSet<PathBuf>,
    /// Folders where only the entries of these names changed.
    named: HashMap<PathBuf, HashSet<Vec<u8>>>,
    /// Folders that appeared: everything below them is listed.
    subtrees: HashSet<PathBuf>,
    /// Every folder above a dirty one: listed, for its changed child's new tree.
    above: HashSet<PathBuf>,
    none: HashSet<Vec<u8>>,
}

impl DirtySet {
    pub fn new(folders: Vec<Vec<u8>>, named: Vec<(Vec<u8>, Vec<Vec<u8>>)>, subtrees: Vec<Vec<u8>>) -> Self {
        let path = |b: Vec<u8>| PathBuf::from(OsStr::from_bytes(&b));
        let folders: HashSet<PathBuf> = folders.into_iter().map(path).collect();
        let named: HashMap<PathBuf, HashSet<Vec<u8>>> =
            named.into_iter().map(|(f, names)| (path(f), names.into_iter().collect())).collect();
        let subtrees: HashSet<PathBuf> = subtrees.into_iter().map(path).collect();
        let mut above = HashSet::new();
        for p in folders.iter().chain(named.keys()).chain(&subtrees) {
            for a in p.ancestors().skip(1) {
                if !above.insert(a.to_path_buf()) {
                    break;
                }
            }
        }
        Self { folders, named, subtrees, above, none: HashSet::new() }
    }

    /// Whether the folder at `path` must be listed (else its last tree stands).
    pub fn must_list(&self, path: &Path) -> bool {
        self.folders.contains(path)
            || self.named.contains_key(path)
            || self.above.contains(path)
            || path.ancestors().any(|a| self.subtrees.contains(a))
    }

    /// For a folder that must be listed, the names of its entries that may have changed,
    /// when only those (and its folders that must be listed) need an `lstat`; `None`: every
    /// entry does.
    pub fn only(&self, path: &Path) -> Option<&HashSet<Vec<u8>>> {
        if self.folders.contains(path) || path.ancestors().any(|a| self.subtrees.contains(a)) {
            return None;
        }
        Some(self.named.get(path).unwrap_or(&self.none))
    }

    pub fn len(&self) -> usize {
        self.folders.len() + self.named.len() + self.subtrees.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the watcher allows a backup.
#[derive(Debug)]
pub enum WatchPlan {
    /// List only these folders.
    Changed { dirty: Box<DirtySet>, now: Coverage },
    /// Walk everything, for this reason; `now`: the coverage the snapshot will have.
    Walk { why: String, now: Option<Coverage> },
}

fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(conn)
}

/// Asks the watcher listening on `socket` what changed under `paths` since `last` (the
/// coverage of the set's last snapshot), after it read every event queued so far.
pub fn plan(socket: &Path, paths: &[Vec<u8>], last: Option<Coverage>) -> WatchPlan {
    let walk = |why: String, now| WatchPlan::Walk { why, now };
    let mut conn = match connect(socket) {
        Ok(c) => c,
        Err(_) => return walk("no watcher is running (`bakare watch` starts one)".into(), None),
    };
    let since = last.map_or(u64::MAX, |c| c.generation);
    let reply = match ask(&mut conn, paths, since, false) {
        Ok(r) => r,
        Err(e) => return walk(format!("the watcher did not answer: {e}"), None),
    };
    if let Some(why) = reply.uncovered {
        return walk(why, None);
    }
    let now = Coverage { epoch: reply.epoch, generation: reply.generation };
    let Some(last) = last else {
        return walk("the first backup of these folders under this watcher".into(), Some(now));
    };
    if last.epoch != reply.epoch {
        return walk(
            "the watcher restarted or may have missed events since the last backup of these folders".into(),
            Some(now),
        );
    }
    if last.generation < reply.floor {
        return walk("too many folders changed since the last backup".into(), Some(now));
    }
    if reply.links > last.generation {
        return walk("files with hard links changed since the last backup".into(), Some(now));
    }
    WatchPlan::Changed { dirty: Box::new(DirtySet::new(reply.folders, reply.named, reply.subtrees)), now }
}

/// The watcher's epoch and generation, and the folders under `paths` changed after
/// generation `since`, once it has read every event queued so far.
pub fn changed_since(socket: &Path, paths: &[Vec<u8>], since: u64) -> std::io::Result<SyncReply> {
    ask(&mut connect(socket)?, paths, since, true)
}

/// One `Sync` request and its answer.
fn ask(conn: &mut UnixStream, paths: &[Vec<u8>], since: u64, probe: bool) -> std::io::Result<SyncReply> {
    send(conn, &Request::Sync { paths: paths.to_vec(), since, probe })?;
    receive(conn)
}

/// The running watcher's status, if one answers on `socket`.
pub fn status(socket: &Path) -> std::io::Result<Status> {
    let mut conn = connect(socket)?;
    send(&mut conn, &Request::Status)?;
    receive(&mut conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_folders_their_ancestors_and_all_below_an_appeared_one_are_listed() {
        let named = vec![(b"/a/n".to_vec(), vec![b"f".to_vec(), b"g".to_vec()])];
        let set = DirtySet::new(vec![b"/a/b/c".to_vec()], named, vec![b"/a/new".to_vec()]);
        for listed in ["/a/b/c", "/a/b", "/a", "/", "/a/new", "/a/new/x/y", "/a/n"] {
            assert!(set.must_list(Path::new(listed)), "{listed}");
        }
        for taken in ["/a/b/c/d", "/a/b/cc", "/a/ne", "/b", "/a/b/other", "/a/n/f"] {
            assert!(!set.must_list(Path::new(taken)), "{taken}");
        }
        // Where every entry needs an lstat, and where only the named ones do.
        for all in ["/a/b/c", "/a/new", "/a/new/x"] {
            assert_eq!(set.only(Path::new(all)), None, "{all}");
        }
        let names = set.only(Path::new("/a/n")).unwrap();
        assert!(names.contains(&b"f".to_vec()) && names.contains(&b"g".to_vec()) && names.len() == 2);
        assert!(set.only(Path::new("/a")).unwrap().is_empty(), "above a change: only its listed folders");
        assert_eq!(set.len(), 3);
        assert!(DirtySet::default().is_empty());
        assert!(!DirtySet::default().must_list(Path::new("/")));
    }

    #[test]
    fn no_watcher_means_a_full_walk() {
        let dir = tempfile::tempdir().unwrap();
        match plan(&dir.path().join("watch.sock"), &[b"/x".to_vec()], None) {
            WatchPlan::Walk { why, now: None } => assert!(why.contains("no watcher"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
