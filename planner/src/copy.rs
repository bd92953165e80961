//! `copy`: snapshots from one repository into another.
//!
//! The two repositories have their own keys, so their blob ids differ even for equal bytes,
//! and their own chunkers (the seed comes from the key): every file's content is read from
//! the source, cut again by the target's chunker and stored there, which deduplicates it
//! against everything the target holds, copied or backed up. Trees are written anew with
//! the new chunk lists, everything else in them as it was; the snapshot keeps its time,
//! host, paths, tags and statistics, and its log says where it came from (`copied from
//! snapshot ID of repository ID`), which is how a later copy knows to skip it.
//!
//! The copy writes under a session of its own, like a backup (host `HOST (copy)`, so that
//! no backup or resume takes it over), and commits behind the same fence: if a prune marked
//! data it relied on meanwhile, the snapshot is not written and the copy says to run again.
//!
//! A file whose data is damaged in the source is copied as an entry with an error (its
//! content absent), as a backup records a file it could not read; the copy goes on.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bakare_store::{
    BlobId, Digest, Entry, Node, Repository, Session, SessionOptions, Snapshot, SnapshotId, StoreError, Tree, clock,
};
use rayon::prelude::*;

use crate::backup::{Heartbeat, commit};
use crate::counters::Counters;
use crate::error::PlanError;
use crate::memo::chunk_list_digest;

/// Files and trees remembered across the snapshots of one copy (equal content is cut and
/// stored once); bounded so that memory stays small whatever the repository's size.
const REMEMBERED: usize = 200_000;

/// The line of a copied snapshot's log that names its original.
pub fn copied_from(snapshot: &SnapshotId, repository: &str) -> String {
    format!("copied from snapshot {} of repository {repository}", snapshot.to_hex())
}

/// What one snapshot's copy did.
#[derive(Debug)]
pub struct Copied {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    /// Files whose data could not be read from the source, with why.
    pub damaged: Vec<(String, String)>,
}

/// Copies snapshots from `src` to `dst`, remembering what it copied between them.
pub struct Copier<'a> {
    src: &'a Repository,
    dst: Arc<Repository>,
    counters: Arc<Counters>,
    trees: Mutex<HashMap<BlobId, BlobId>>,
    files: Mutex<HashMap<Digest, Vec<BlobId>>>,
    damaged: Mutex<Vec<(String, String)>>,
}

/// A failure that stops the copy (the storage of either side), as opposed to damage in one
/// file.
fn fatal(e: &StoreError) -> bool {
    match e {
        StoreError::Corrupt { .. } | StoreError::Crypto { .. } | StoreError::UnknownBlob(_) => false,
        StoreError::Backend(b) => !b.is_not_found(),
        _ => true,
    }
}

impl<'a> Copier<'a> {
    pub fn new(src: &'a Repository, dst: Arc<Repository>, counters: Arc<Counters>) -> Self {
        Self { src, dst, counters, trees: Mutex::default(), files: Mutex::default(), damaged: Mutex::default() }
    }

    /// Copies one snapshot (`id` in the source) and writes it in the target as `host`'s copy
    /// session.
    pub fn copy(&self, id: &SnapshotId, snap: &Snapshot, host: &str) -> Result<Copied, PlanError> {
        if let Ok(mut d) = self.damaged.lock() {
            d.clear();
        }
        let src_repo = self.src.config().id_hex();
        let (new_id, copy) = write_snapshot(&self.dst, &format!("{host} (copy)"), snap, "copy", || {
            let root = self.tree(&snap.root, "")?;
            let mut log = snap.log.clone();
            log.push(copied_from(id, &src_repo));
            Ok(Snapshot { root, parent: None, log, ..snap.clone() })
        })?;
        let damaged = self.damaged.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
        Ok(Copied { id: new_id, snapshot: copy, damaged })
    }

    /// The target's id of the source tree `id` at `path`, copying what it holds.
    fn tree(&self, id: &BlobId, path: &str) -> Result<BlobId, PlanError> {
        if let Some(done) = self.trees.lock().ok().and_then(|t| t.get(id).copied()) {
            return Ok(done);
        }
        let tree = self.src.load_tree(id)?;
        Counters::add(&self.counters.dirs, 1);
        let entries =
            tree.entries.into_par_iter().map(|e| self.entry(e, path)).collect::<Result<Vec<Entry>, PlanError>>()?;
        let new = self.dst.save_tree(&Tree { entries })?.id;
        if let Ok(mut t) = self.trees.lock()
            && t.len() < REMEMBERED
        {
            t.insert(*id, new);
        }
        Ok(new)
    }

    fn entry(&self, mut e: Entry, dir: &str) -> Result<Entry, PlanError> {
        let path = format!("{dir}/{}", String::from_utf8_lossy(&e.name));
        match &e.node {
            Node::Dir { tree } => {
                let tree = self.tree(tree, &path)?;
                e.node = Node::Dir { tree };
            }
            Node::File { size, chunks } => {
                let size = *size;
                match self.file(chunks, size) {
                    Ok(chunks) => e.node = Node::File { size, chunks },
                    Err(err) if !fatal(&err) => {
                        let why = format!("not copied: its data is damaged in the source repository ({err})");
                        if let Ok(mut d) = self.damaged.lock() {
                            d.push((path, why.clone()));
                        }
                        e.node = Node::File { size, chunks: Vec::new() };
                        e.error = Some(why);
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            _ => {}
        }
        Ok(e)
    }

    /// The target's chunks of a file whose content is the source's `chunks`.
    fn file(&self, chunks: &[BlobId], size: u64) -> Result<Vec<BlobId>, StoreError> {
        let key = chunk_list_digest(chunks);
        if let Some(done) = self.files.lock().ok().and_then(|f| f.get(&key).cloned()) {
            Counters::add(&self.counters.files_memo, 1);
            Counters::add(&self.counters.bytes_reused, size);
            return Ok(done);
        }
        let reader = SourceReader { repo: self.src, ids: chunks, next: 0, buf: Vec::new(), at: 0 };
        let out = match crate::stream::store_stream(&self.dst, reader, size, &self.counters) {
            Ok((_, out)) => out,
            // The store's own error, carried through the chunker's reader.
            Err(e) => {
                return Err(match e.into_inner().map(|inner| inner.downcast::<StoreError>()) {
                    Some(Ok(store)) => *store,
                    Some(Err(other)) => {
                        StoreError::Corrupt { object: "a copied file".into(), reason: other.to_string() }
                    }
                    None => StoreError::Corrupt { object: "a copied file".into(), reason: "reading it failed".into() },
                });
            }
        };
        if let Ok(mut f) = self.files.lock()
            && f.len() < REMEMBERED
        {
            f.insert(key, out.clone());
        }
        Ok(out)
    }
}

/// Writes a snapshot whose data `make` stores, as a backup does: under a session of its own
/// (host `session_host`, paths and tags of `like`), with a heartbeat, behind the commit
/// fence (nothing it deduplicated against was marked by a prune meanwhile). `what` names
/// the command in its errors.
pub(crate) fn write_snapshot(
    dst: &Arc<Repository>,
    session_host: &str,
    like: &Snapshot,
    what: &str,
    make: impl FnOnce() -> Result<Snapshot, PlanError>,
) -> Result<(SnapshotId, Snapshot), PlanError> {
    let now = clock::now_ns();
    let session = Session {
        id: Session::new_id()?,
        host: session_host.to_string(),
        started_ns: now,
        heartbeat_ns: now,
        paths: like.paths.clone(),
        options: SessionOptions { user: like.user.clone(), tags: like.tags.clone(), ..SessionOptions::default() },
        checkpoints: 0,
        interrupted: false,
        committing: None,
    };
    dst.put_session(&session)?;
    dst.write_for_session(session.id);
    let heartbeat = Heartbeat::start(dst.clone(), session.clone(), Duration::from_secs(60));
    let made = make().and_then(|snap| {
        dst.flush()?;
        Ok(snap)
    });
    let snapshot = match made {
        Ok(s) => s,
        Err(e) => {
            drop(heartbeat);
            let _ = dst.remove_session(&session);
            return Err(e);
        }
    };
    // The fence: nothing this run deduplicated against was marked meanwhile.
    let present: std::collections::HashSet<_> = dst.index_segments()?.into_iter().collect();
    let intact = !dst.is_poisoned() && dst.segments_used().iter().all(|s| present.contains(s));
    drop(heartbeat);
    if !intact {
        let _ = dst.remove_session(&session);
        return Err(PlanError::Fatal(format!(
            "a prune marked data this {what} relied on while it ran; run the {what} again"
        )));
    }
    let Some(id) = commit(dst, &session, &snapshot)? else {
        return Err(PlanError::Fatal(format!(
            "a prune declared this {what} expired while it ran; run the {what} again"
        )));
    };
    dst.remove_session(&session)?;
    Ok((id, snapshot))
}

/// A file's content, read blob by blob from the source repository.
struct SourceReader<'a> {
    repo: &'a Repository,
    ids: &'a [BlobId],
    next: usize,
    buf: Vec<u8>,
    at: usize,
}

impl Read for SourceReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.buf.len() {
            let Some(id) = self.ids.get(self.next) else { return Ok(0) };
            self.buf = self.repo.load_blob(id).map_err(std::io::Error::other)?;
            self.at = 0;
            self.next += 1;
        }
        let rest = self.buf.get(self.at..).unwrap_or_default();
        let n = rest.len().min(out.len());
        out.get_mut(..n).unwrap_or_default().copy_from_slice(rest.get(..n).unwrap_or_default());
        self.at += n;
        Ok(n)
    }
}
