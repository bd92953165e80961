//! What `find` and `history` show of a path ([`Version`], [`History`]; the index behind them
//! is [`crate::names`]) and the difference between two trees (`diff`, `diff --local`).
//!
//! Trees are content-addressed, so `diff` skips every subtree whose id is the same on both
//! sides without reading it.

use std::collections::HashMap;
use std::sync::Arc;

use bakare_store::{BlobId, Entry, Node, Repository, Tree};

use crate::error::PlanError;

/// One version of a path: in which snapshot, and what it was there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Version {
    pub snapshot: String,
    pub time_ns: i64,
    pub kind: &'static str,
    pub size: u64,
    pub mtime_ns: i64,
    /// Hash of the chunk list (files) or the target (symlinks): equal content, equal id.
    pub content: Option<String>,
    /// The content differs from the previous version listed (`None` for the first).
    pub changed: Option<bool>,
}

/// Every version of one path, oldest first.
#[derive(Clone, Debug, serde::Serialize)]
pub struct History {
    pub path: String,
    pub versions: Vec<Version>,
    /// Where the content went when the path disappeared: (snapshot, other path).
    pub moved_to: Vec<(String, String)>,
}

/// Reads trees, each distinct id once.
struct Trees<'a> {
    repo: &'a Repository,
    cache: HashMap<BlobId, Arc<Tree>>,
}

impl Trees<'_> {
    fn get(&mut self, id: &BlobId) -> Result<Arc<Tree>, PlanError> {
        if let Some(t) = self.cache.get(id) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.repo.load_tree(id)?);
        self.cache.insert(*id, t.clone());
        Ok(t)
    }
}

/// One difference between two trees.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// `+` added, `-` removed, `M` content modified, `m` metadata only, `T` type changed.
    pub what: char,
    pub path: String,
}

/// The differences between two trees, in path order. Subtrees with equal ids are skipped
/// unread.
pub fn diff(repo: &Repository, a: BlobId, b: BlobId) -> Result<Vec<Change>, PlanError> {
    let mut trees = Trees { repo, cache: HashMap::new() };
    let mut out = Vec::new();
    diff_trees(&mut trees, "", Some(a), Some(b), &mut out)?;
    Ok(out)
}

fn diff_trees(
    trees: &mut Trees<'_>,
    prefix: &str,
    a: Option<BlobId>,
    b: Option<BlobId>,
    out: &mut Vec<Change>,
) -> Result<(), PlanError> {
    if a == b {
        return Ok(());
    }
    let ta = match a {
        Some(id) => Some(trees.get(&id)?),
        None => None,
    };
    let tb = match b {
        Some(id) => Some(trees.get(&id)?),
        None => None,
    };
    let empty: Vec<Entry> = Vec::new();
    let ea = ta.as_ref().map_or(&empty, |t| &t.entries);
    let eb = tb.as_ref().map_or(&empty, |t| &t.entries);
    let (mut i, mut j) = (0, 0);
    while i < ea.len() || j < eb.len() {
        let (x, y) = (ea.get(i), eb.get(j));
        let order = match (x, y) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let name = match order {
            std::cmp::Ordering::Greater => y.map(|e| &e.name),
            _ => x.map(|e| &e.name),
        };
        let path = format!("{prefix}/{}", String::from_utf8_lossy(name.map_or(&[][..], |n| n.as_slice())));
        match order {
            std::cmp::Ordering::Less => {
                side(trees, &path, x, '-', out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                side(trees, &path, y, '+', out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if let (Some(x), Some(y)) = (x, y) {
                    match (&x.node, &y.node) {
                        (Node::Dir { tree: ta }, Node::Dir { tree: tb }) => {
                            if meta_differs(x, y) {
                                out.push(Change { what: 'm', path: path.clone() });
                            }
                            diff_trees(trees, &path, Some(*ta), Some(*tb), out)?;
                        }
                        (Node::Dir { .. }, _) | (_, Node::Dir { .. }) => {
                            side(trees, &path, Some(x), '-', out)?;
                            side(trees, &path, Some(y), '+', out)?;
                        }
                        (nx, ny) if std::mem::discriminant(nx) != std::mem::discriminant(ny) => {
                            out.push(Change { what: 'T', path });
                        }
                        (nx, ny) if nx != ny => out.push(Change { what: 'M', path }),
                        _ if meta_differs(x, y) => out.push(Change { what: 'm', path }),
                        _ => {}
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// An entry only on one side: itself, and everything below it if it is a folder.
fn side(
    trees: &mut Trees<'_>,
    path: &str,
    e: Option<&Entry>,
    what: char,
    out: &mut Vec<Change>,
) -> Result<(), PlanError> {
    let Some(e) = e else { return Ok(()) };
    out.push(Change { what, path: path.to_string() });
    if let Node::Dir { tree } = e.node {
        let (a, b) = if what == '-' { (Some(tree), None) } else { (None, Some(tree)) };
        diff_trees(trees, path, a, b, out)?;
    }
    Ok(())
}

/// The differences between a snapshot's folder (`tree`) and the live folder `dir`, writing
/// nothing. A file whose size and mtime match the snapshot's is taken as unchanged (as a
/// backup takes it); one whose size matches but mtime differs is read and chunked, and its
/// chunk ids compared, to tell a content change (`M`) from a touch (`m`).
pub fn diff_local(repo: &Repository, tree: BlobId, dir: &std::path::Path) -> Result<Vec<Change>, PlanError> {
    let mut trees = Trees { repo, cache: HashMap::new() };
    let chunker = repo.chunker();
    let mut out = Vec::new();
    diff_live(&mut trees, &chunker, Some(tree), dir, &mut out)?;
    Ok(out)
}

fn diff_live(
    trees: &mut Trees<'_>,
    chunker: &bakare_store::Chunker,
    tree: Option<BlobId>,
    dir: &std::path::Path,
    out: &mut Vec<Change>,
) -> Result<(), PlanError> {
    use std::os::unix::ffi::OsStrExt;
    let snap: Vec<Entry> = match tree {
        Some(id) => trees.get(&id)?.entries.clone(),
        None => Vec::new(),
    };
    let mut live: Vec<(Vec<u8>, std::fs::Metadata)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok().map(|m| (e.file_name().as_bytes().to_vec(), m)))
            .collect(),
        Err(_) => Vec::new(),
    };
    live.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut i, mut j) = (0, 0);
    while i < snap.len() || j < live.len() {
        let (s, l) = (snap.get(i), live.get(j));
        let order = match (s, l) {
            (Some(s), Some(l)) => s.name.cmp(&l.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let name = match order {
            std::cmp::Ordering::Greater => l.map(|x| x.0.as_slice()),
            _ => s.map(|x| x.name.as_slice()),
        }
        .unwrap_or_default();
        let path = dir.join(std::ffi::OsStr::from_bytes(name));
        let shown = path.to_string_lossy().into_owned();
        match (order, s, l) {
            (std::cmp::Ordering::Less, Some(s), _) => {
                side(trees, &shown, Some(s), '-', out)?;
                i += 1;
            }
            (std::cmp::Ordering::Greater, _, Some((_, m))) => {
                out.push(Change { what: '+', path: shown });
                if m.is_dir() {
                    diff_live(trees, chunker, None, &path, out)?;
                }
                j += 1;
            }
            (_, Some(s), Some((_, m))) => {
                let meta = crate::meta::metadata_of(m);
                let ft = m.file_type();
                match &s.node {
                    Node::Dir { tree } if ft.is_dir() => {
                        if meta != s.meta {
                            out.push(Change { what: 'm', path: shown });
                        }
                        diff_live(trees, chunker, Some(*tree), &path, out)?;
                    }
                    Node::File { size, chunks } if ft.is_file() => {
                        if *size != m.len() {
                            out.push(Change { what: 'M', path: shown });
                        } else if meta.mtime_ns != s.meta.mtime_ns {
                            let same = std::fs::File::open(&path).ok().and_then(|f| {
                                let mut ids = Vec::new();
                                chunker
                                    .stream(f, *size, |batch: &[&[u8]]| {
                                        ids.extend(batch.iter().map(|c| trees.repo.blob_id(c)));
                                        Ok::<_, std::io::Error>(())
                                    })
                                    .ok()
                                    .map(|_| ids == *chunks)
                            });
                            let what = if same == Some(true) { 'm' } else { 'M' };
                            out.push(Change { what, path: shown });
                        } else if meta != s.meta {
                            out.push(Change { what: 'm', path: shown });
                        }
                    }
                    Node::Symlink { target } if ft.is_symlink() => {
                        let now =
                            std::fs::read_link(&path).map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default();
                        if now != *target {
                            out.push(Change { what: 'M', path: shown });
                        } else if meta != s.meta {
                            out.push(Change { what: 'm', path: shown });
                        }
                    }
                    Node::Dir { .. } => {
                        side(trees, &shown, Some(s), '-', out)?;
                        out.push(Change { what: '+', path: path.to_string_lossy().into_owned() });
                    }
                    _ if ft.is_dir() => {
                        out.push(Change { what: '-', path: shown.clone() });
                        out.push(Change { what: '+', path: shown });
                        diff_live(trees, chunker, None, &path, out)?;
                    }
                    _ => out.push(Change { what: 'T', path: shown }),
                }
                i += 1;
                j += 1;
            }
            _ => {
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// Whether two versions of an entry differ in metadata: mode, owner, mtime, and the
/// extended attributes and hard-link grouping when both were recorded (tree format 2; a
/// format 1 tree has no ctime), so that an upgrade alone shows no change.
fn meta_differs(x: &bakare_store::Entry, y: &bakare_store::Entry) -> bool {
    let both = x.extra.ctime_ns != 0 && y.extra.ctime_ns != 0;
    x.meta != y.meta || (both && (x.extra.xattrs != y.extra.xattrs || (x.extra.link != 0) != (y.extra.link != 0)))
}
