//! Searching snapshots: every version of every path (`find`, `history`) and the difference
//! between two trees (`diff`).
//!
//! Trees are content-addressed, so a walk over many snapshots reads each distinct tree once
//! (a cache keyed by tree id), and `diff` skips every subtree whose id is the same on both
//! sides without reading it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bakare_store::crypto::Digest;
use bakare_store::{BlobId, Entry, Node, Repository, Snapshot, SnapshotId, Tree};
use nucleo_matcher::pattern::{CaseMatching, Normalization, Pattern};
use nucleo_matcher::{Config, Matcher, Utf32Str};

use crate::error::PlanError;
use crate::memo::chunk_list_digest;

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

fn content_of(node: &Node) -> Option<Digest> {
    match node {
        Node::File { chunks, .. } => Some(chunk_list_digest(chunks)),
        Node::Symlink { target } => Some(bakare_store::crypto::checksum(target)),
        _ => None,
    }
}

fn size_of(node: &Node) -> u64 {
    match node {
        Node::File { size, .. } => *size,
        _ => 0,
    }
}

/// Every non-folder path of the snapshots with its versions, oldest snapshot first. Paths
/// are absolute, as backed up.
pub struct Catalog {
    pub paths: BTreeMap<String, Vec<Version>>,
}

impl Catalog {
    pub fn build(repo: &Repository, snapshots: &[(SnapshotId, Snapshot)]) -> Result<Self, PlanError> {
        let mut trees = Trees { repo, cache: HashMap::new() };
        let mut paths: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        let mut ordered: Vec<&(SnapshotId, Snapshot)> = snapshots.iter().collect();
        ordered.sort_by_key(|(id, s)| (s.time_ns, *id));
        for (id, snap) in ordered {
            let mut stack = vec![(String::new(), snap.root)];
            while let Some((prefix, tree_id)) = stack.pop() {
                let tree = trees.get(&tree_id)?;
                for e in &tree.entries {
                    let path = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
                    match &e.node {
                        Node::Dir { tree } => stack.push((path, *tree)),
                        node => {
                            let versions = paths.entry(path).or_default();
                            let content = content_of(node).map(|d| d.to_hex());
                            let changed = versions.last().map(|v: &Version| v.content != content);
                            versions.push(Version {
                                snapshot: id.to_hex(),
                                time_ns: snap.time_ns,
                                kind: node.kind_name(),
                                size: size_of(node),
                                mtime_ns: e.meta.mtime_ns,
                                content,
                                changed,
                            });
                        }
                    }
                }
            }
        }
        Ok(Self { paths })
    }

    /// Paths matching `query`, best first: fuzzy (fzf-like, smart case) over the whole path
    /// and, weighted higher, over the file name; a name within one or two typos of the query
    /// (a swapped pair counts as one) matches too.
    pub fn find(&self, query: &str, limit: usize) -> Vec<(&str, u32)> {
        let mut matcher = Matcher::new(Config::DEFAULT.match_paths());
        let pattern = Pattern::parse(query, CaseMatching::Smart, Normalization::Smart);
        let q = query.to_lowercase();
        let mut buf = Vec::new();
        let mut out: Vec<(&str, u32)> = self
            .paths
            .keys()
            .filter_map(|path| {
                let name = path.rsplit('/').next().unwrap_or(path);
                let whole = pattern.score(Utf32Str::new(path, &mut buf), &mut matcher);
                let in_name = pattern.score(Utf32Str::new(name, &mut buf), &mut matcher).map(|s| s * 2);
                let exact = (name.to_lowercase() == q).then_some(10_000);
                let typo = if whole.is_none() { typo_score(&q, &name.to_lowercase()) } else { None };
                let best = [whole, in_name, exact, typo].into_iter().flatten().max()?;
                Some((path.as_str(), best))
            })
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.len().cmp(&b.0.len())).then(a.0.cmp(b.0)));
        out.truncate(limit);
        out
    }

    /// The versions of `path`, and where its content went when it disappeared from a
    /// snapshot that has the same content under another path.
    pub fn history(&self, path: &str, snapshots: &[(SnapshotId, Snapshot)]) -> Option<History> {
        let versions = self.paths.get(path)?.clone();
        let mut moved_to = Vec::new();
        if let Some(last) = versions.last()
            && let Some(content) = &last.content
        {
            // Snapshots after the last one holding the path.
            let later: Vec<String> =
                snapshots.iter().filter(|(_, s)| s.time_ns > last.time_ns).map(|(id, _)| id.to_hex()).collect();
            for snap in &later {
                let found = self.paths.iter().find(|(p, vs)| {
                    p.as_str() != path && vs.iter().any(|v| &v.snapshot == snap && v.content.as_ref() == Some(content))
                });
                if let Some((p, _)) = found {
                    moved_to.push((snap.clone(), p.clone()));
                    break;
                }
            }
        }
        Some(History { path: path.to_string(), versions, moved_to })
    }
}

/// How close a file name comes to the query with typos: the best Damerau-Levenshtein
/// distance between the query and any part of the name of about its length, allowed 1 edit
/// per 4 characters (at least 1). Scores below every fuzzy match of the same length.
fn typo_score(query: &str, name: &str) -> Option<u32> {
    let q: Vec<char> = query.chars().collect();
    if q.len() < 3 {
        return None;
    }
    let allowed = (q.len() / 4).max(1);
    let n: Vec<char> = name.chars().collect();
    let mut best: Option<usize> = None;
    for len in q.len().saturating_sub(1)..=q.len() + 1 {
        for start in 0..=n.len().saturating_sub(len) {
            let Some(window) = n.get(start..start + len) else { continue };
            let w: String = window.iter().collect();
            let d = strsim::damerau_levenshtein(query, &w);
            if d <= allowed && best.is_none_or(|b| d < b) {
                best = Some(d);
            }
        }
    }
    best.map(|d| (q.len() as u32 * 8).saturating_sub(d as u32 * 12).max(1))
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
                            if x.meta != y.meta {
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
                        _ if x.meta != y.meta => out.push(Change { what: 'm', path }),
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
    let chunker = crate::chunker::Chunker::new(repo.config().chunker, repo.access().write_key().chunker_seed.0);
    let mut out = Vec::new();
    diff_live(&mut trees, &chunker, Some(tree), dir, &mut out)?;
    Ok(out)
}

fn diff_live(
    trees: &mut Trees<'_>,
    chunker: &crate::chunker::Chunker,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_within_the_allowance_match() {
        assert!(typo_score("bakrae", "bakare.toml").is_some(), "a swapped pair");
        assert!(typo_score("bakae", "bakare.toml").is_some(), "a missing letter");
        assert!(typo_score("bakare", "bakare.toml") > typo_score("bakrae", "bakare.toml"));
        assert!(typo_score("zzzzzz", "bakare.toml").is_none());
        assert!(typo_score("ab", "ab").is_none(), "too short to guess at");
    }
}
