//! `backup --stdin --stdin-filename NAME`: one stream (a database dump piped in) stored as
//! the file `/NAME` of a snapshot of its own, cut into chunks as it arrives (never held whole)
//! and deduplicated like any file. It is written under a session and behind the commit fence
//! as a backup is ([`crate::copy::write_snapshot`]); it has no memo (there is no file to
//! compare), so every byte is read and hashed, and only new chunks are stored.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use bakare_store::{BlobId, BlobKind, Entry, Extra, Metadata, Node, Repository, Snapshot, SnapshotStats, Tree, clock};

use crate::backup::{BackupOptions, BackupReport};
use crate::counters::Counters;
use crate::error::PlanError;

/// Cuts what `reader` gives with `repo`'s chunker and stores its chunks, counting the bytes
/// and the file; returns its size and chunk ids. A store error comes back inside the
/// `io::Error` (`into_inner`). `stdin` and `copy` store their streams so.
pub(crate) fn store_stream(
    repo: &Repository,
    reader: impl Read,
    size_hint: u64,
    counters: &Counters,
) -> std::io::Result<(u64, Vec<BlobId>)> {
    let mut chunks = Vec::new();
    let size = repo.chunker().stream(reader, size_hint, |batch: &[&[u8]]| {
        for c in batch {
            Counters::add(&counters.bytes_read, c.len() as u64);
            chunks.push(repo.save_blob(BlobKind::Data, c).map_err(std::io::Error::other)?.id);
        }
        Ok::<_, std::io::Error>(())
    })?;
    Counters::add(&counters.files, 1);
    Ok((size, chunks))
}

/// Backs up what `reader` gives as the file `/name`.
pub fn backup_stream(
    repo: Arc<Repository>,
    name: &str,
    reader: impl Read,
    opts: &BackupOptions,
    counters: Arc<Counters>,
) -> Result<BackupReport, PlanError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(PlanError::Fatal(format!("--stdin-filename {name:?}: a file name (no /) is needed")));
    }
    let started = Instant::now();
    let time_ns = opts.time_ns.unwrap_or_else(clock::now_ns);
    let stored_before = repo.stats().bytes_stored.load(std::sync::atomic::Ordering::Relaxed);
    let like = Snapshot {
        time_ns,
        host: opts.host.clone(),
        user: opts.user.clone(),
        paths: vec![format!("/{name}").into_bytes()],
        tags: opts.tags.clone(),
        root: bakare_store::BlobId(bakare_store::Digest([0; 32])),
        parent: None,
        stats: SnapshotStats::default(),
        program: format!("bakare {}", env!("CARGO_PKG_VERSION")),
        log: opts.log.clone(),
    };
    let (id, snapshot) = crate::copy::write_snapshot(&repo, &opts.host, &like, "backup", || {
        let (size, chunks) = store_stream(&repo, reader, 0, &counters)?;
        let (uid, gid) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
        let entry = Entry {
            name: name.as_bytes().to_vec(),
            node: Node::File { size, chunks },
            meta: Metadata { mode: 0o644, uid, gid, mtime_ns: time_ns },
            error: None,
            extra: Extra { ctime_ns: time_ns, ..Extra::default() },
        };
        let root = repo.save_tree(&Tree { entries: vec![entry] })?.id;
        let stats = SnapshotStats {
            files_new: 1,
            files_read: 1,
            dirs: 1,
            bytes_read: size,
            bytes_added: repo.stats().bytes_stored.load(std::sync::atomic::Ordering::Relaxed) - stored_before,
            total_bytes: size,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ..SnapshotStats::default()
        };
        Ok(Snapshot { root, stats, ..like.clone() })
    })?;
    Ok(BackupReport {
        id,
        snapshot,
        errors: Vec::new(),
        memo_warnings: Vec::new(),
        passes: 1,
        walk: Default::default(),
    })
}
