//! `verify --repair`: bring a surveyed repository back, using its redundancy.
//!
//! Steps, each crash-safe (a crash leaves a repository that a second repair finishes):
//! 1. copies: `config` and `config.mirror`, snapshots and their mirrors are rewritten from the
//!    intact copy (the damaged one is removed first; the other copy serves meanwhile);
//! 2. key files: damaged ones removed once a fresh one (sealed under the passphrase) exists;
//! 3. salvage: every readable blob of a damaged pack is stored again in a new pack, every tree
//!    of one is stored again from an intact copy (two copies again), then the pack is removed;
//! 4. index: one new set of segments is written from the packs' blob tables, then the old
//!    segments are removed (derived data, superseded);
//! 5. [`mark_lost`]: snapshots whose files still reference unavailable blobs are rewritten
//!    with those files marked lost (an error in their entry), and the old snapshot removed.
//!
//! Nothing that holds data is removed before its replacement is durable.

use std::collections::{HashMap, HashSet};

use bakare_crypto::seal_key_file;

use crate::format::index::IndexSegment;
use crate::format::object::id_of_path;
use crate::format::pack::{PackEntry, read_pack_table};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Entry, Node, Tree};
use crate::ids::{BlobId, BlobKind, PackId, SnapshotId};
use crate::maintenance::verify::Survey;
use crate::repo::{Repository, pack_path};
use crate::{Result, StoreError};

/// Recovery shards of a parity object that repair writes anew (its old count is unreadable).
const PARITY_ON_REPAIR: u16 = 2;
/// Packs per index segment written by a rebuild.
const PACKS_PER_SEGMENT: usize = 4096;

/// Runs steps 1 to 4 on a survey; returns what was done. `passphrase` lets it write a fresh
/// key file when fewer than two are intact.
pub fn repair(repo: &Repository, s: &Survey, passphrase: Option<&[u8]>) -> Result<Vec<String>> {
    let mut done = Vec::new();
    repair_config(repo, &mut done)?;
    repair_keys(repo, passphrase, &mut done)?;
    repair_snapshot_copies(repo, s, &mut done)?;
    remove_damaged_progress(repo, s, &mut done)?;
    let rebuilt = rebuild_from_parity(repo, s, &mut done)?;
    repair_parity(repo, s, &rebuilt, &mut done)?;
    salvage(repo, s, &rebuilt, &mut done)?;
    rebuild_index(repo, &mut done)?;
    Ok(done)
}

fn repair_config(repo: &Repository, done: &mut Vec<String>) -> Result<()> {
    let bytes = repo.config().encode()?;
    for name in ["config.mirror", "config"] {
        if repo.backend().get(name).ok().as_ref() != Some(&bytes) {
            repo.backend().delete(name)?;
            repo.backend().put(name, &bytes)?;
            done.push(format!("rewrote {name} from the intact copy"));
        }
    }
    Ok(())
}

fn repair_keys(repo: &Repository, passphrase: Option<&[u8]>, done: &mut Vec<String>) -> Result<()> {
    let backend = repo.backend();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for path in backend.list("keys")? {
        let bytes = backend.get(&path).ok();
        let intact = bytes.as_ref().is_some_and(|b| {
            id_of_path(&path) == Some(bakare_crypto::checksum(b)) && bakare_crypto::parse_key_file(b).is_ok()
        });
        if intact { good.push(bytes.unwrap_or_default()) } else { bad.push(path) }
    }
    if good.len() < 2 {
        let Some(pass) = passphrase else {
            done.push("cannot write a second key file without the passphrase".into());
            return Ok(());
        };
        let params =
            good.first().and_then(|b| bakare_crypto::parse_key_file(b).ok()).map(|(p, _)| p).unwrap_or_default();
        while good.len() < 2 {
            let file = seal_key_file(repo.access().master()?, pass, params)?;
            backend.put(&format!("keys/{}", bakare_crypto::checksum(&file)), &file)?;
            good.push(file);
            done.push("wrote a new key file".into());
        }
    }
    for path in bad {
        backend.delete(&path)?;
        done.push(format!("removed damaged {path}"));
    }
    Ok(())
}

fn repair_snapshot_copies(repo: &Repository, s: &Survey, done: &mut Vec<String>) -> Result<()> {
    for (id, c) in &s.snapshots {
        let Some(good) = c.good_bytes() else { continue };
        for (dir, intact) in [("snapshots.mirror", c.mirror.is_some()), ("snapshots", c.main.is_some())] {
            if !intact {
                let path = format!("{dir}/{id}");
                repo.backend().delete(&path)?;
                repo.backend().put(&path, good)?;
                done.push(format!("rewrote {path} from its other copy"));
            }
        }
    }
    Ok(())
}

/// Removes damaged session records, checkpoints and GC marks: the first two only speed up a
/// resume, and the packs of a lost mark are unindexed and unreferenced, so the next prune
/// marks them again.
fn remove_damaged_progress(repo: &Repository, s: &Survey, done: &mut Vec<String>) -> Result<()> {
    let progress = |o: &str| ["sessions/", "checkpoints/", "gc/"].iter().any(|p| o.starts_with(p));
    for p in s.problems.iter().filter(|p| progress(&p.object)) {
        repo.backend().delete(&p.object)?;
        done.push(format!("removed damaged {}", p.object));
    }
    Ok(())
}

/// Whether a pack needs salvage: it is damaged, has unreadable blobs, its table is gone, or a
/// problem was reported about it.
fn needs_salvage(s: &Survey, pack: &PackId) -> bool {
    let path = pack_path(pack);
    s.packs.get(pack).is_some_and(|p| p.damaged || !p.bad_blobs.is_empty() || p.table.is_none())
        || s.problems.iter().any(|p| p.object == path && p.repairable)
}

/// Rebuilds damaged packs that have parity, in place (the rebuilt bytes hash to the pack's
/// name, so they are exactly what was written). Returns the packs rebuilt.
fn rebuild_from_parity(repo: &Repository, s: &Survey, done: &mut Vec<String>) -> Result<HashSet<PackId>> {
    let backend = repo.backend();
    let mut rebuilt = HashSet::new();
    for pack in s.packs.keys().filter(|p| needs_salvage(s, p)) {
        let name = crate::format::parity::parity_path(pack);
        let Ok(parity) = backend.get(&name) else { continue };
        let Ok(p) = crate::format::parity::Parity::decode(&name, &parity) else { continue };
        let damaged = backend.get(&pack_path(pack)).unwrap_or_default();
        if let Some(bytes) = p.recover(pack, &damaged) {
            backend.replace(&pack_path(pack), &bytes)?;
            done.push(format!("rebuilt {} from its parity", pack_path(pack)));
            rebuilt.insert(*pack);
        }
    }
    Ok(rebuilt)
}

/// Rewrites damaged parity objects of intact packs, and removes those of packs that are gone.
fn repair_parity(repo: &Repository, s: &Survey, rebuilt: &HashSet<PackId>, done: &mut Vec<String>) -> Result<()> {
    let backend = repo.backend();
    let damaged: Vec<&str> =
        s.problems.iter().filter(|p| p.object.starts_with("parity/")).map(|p| p.object.as_str()).collect();
    if damaged.is_empty() {
        return Ok(());
    }
    // Read before anything is deleted: the damaged objects' own counts, and the usual one.
    let damaged_bytes: HashMap<String, Vec<u8>> =
        damaged.iter().filter_map(|o| backend.get(o).ok().map(|b| (o.to_string(), b))).collect();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for path in backend.list("parity")?.iter().filter(|p| !damaged.contains(&p.as_str())) {
        if let Ok(b) = backend.get(path)
            && let Ok(parity) = crate::format::parity::Parity::decode(path, &b)
        {
            *counts.entry(parity.recovery_count()).or_default() += 1;
        }
    }
    let usual = counts.into_iter().max_by_key(|(c, n)| (*n, *c)).map(|(c, _)| c);
    for p in s.problems.iter().filter(|p| p.object.starts_with("parity/")) {
        let pack = id_of_path(&p.object).map(PackId);
        let intact = pack.filter(|id| s.packs.contains_key(id) && (rebuilt.contains(id) || !needs_salvage(s, id)));
        backend.delete(&p.object)?;
        match intact {
            Some(id) => {
                let bytes = backend.get(&pack_path(&id))?;
                // As many recovery shards as it had: its header says, if its length agrees;
                // else as many as most other parity objects have.
                let count = damaged_bytes
                    .get(&p.object)
                    .and_then(|d| crate::format::parity::recovery_count_of(d, bytes.len() as u64))
                    .or(usual)
                    .unwrap_or(PARITY_ON_REPAIR);
                backend.put(&p.object, &crate::format::parity::encode(&bytes, count)?)?;
                done.push(format!("rewrote {} from its pack ({count} recovery shards)", p.object));
            }
            None => done.push(format!("removed {}", p.object)),
        }
    }
    Ok(())
}

fn salvage(repo: &Repository, s: &Survey, rebuilt: &HashSet<PackId>, done: &mut Vec<String>) -> Result<()> {
    let damaged: Vec<PackId> =
        s.packs.keys().filter(|p| needs_salvage(s, p) && !rebuilt.contains(p)).copied().collect();
    if damaged.is_empty() {
        return Ok(());
    }
    let damaged_set: HashSet<PackId> = damaged.iter().copied().collect();
    for pack in &damaged {
        // The table's copy of the ephemeral key, for blobs the pack's own copy cannot open.
        let table = s.packs.get(pack).and_then(|p| p.table.as_ref());
        let (mut saved, mut lost) = (0, 0);
        let entries: Vec<&crate::format::index::BlobLocation> =
            s.locations.values().flatten().filter(|l| l.pack == *pack).collect();
        for loc in entries {
            let id = loc.entry.id;
            let elsewhere = s.good_locations(&id).filter(|l| !damaged_set.contains(&l.pack)).count();
            // Data needs one intact copy outside damaged packs, trees two.
            let wanted = if loc.entry.kind == BlobKind::Tree { 2 } else { 1 };
            if elsewhere >= wanted {
                continue;
            }
            let data = s.good_locations(&id).find_map(|l| {
                let alternate =
                    if l.pack == *pack { table } else { s.packs.get(&l.pack).and_then(|p| p.table.as_ref()) };
                repo.load_blob_trying(l, alternate).ok()
            });
            match data {
                Some(d) => {
                    repo.save_blob_again(loc.entry.kind, id, &d)?;
                    saved += 1;
                }
                None => lost += 1,
            }
        }
        done.push(format!("salvaged {saved} blobs of damaged {}; {lost} unreadable", pack_path(pack)));
    }
    repo.flush()?;
    for pack in &damaged {
        repo.backend().delete(&pack_path(pack))?;
        repo.backend().delete(&crate::format::parity::parity_path(pack))?;
        done.push(format!("removed damaged {}", pack_path(pack)));
    }
    Ok(())
}

/// Writes new index segments from every pack's blob table, then removes the old segments.
fn rebuild_index(repo: &Repository, done: &mut Vec<String>) -> Result<()> {
    let backend = repo.backend();
    let key = &repo.access().write_key().index_key;
    let old: Vec<String> = backend.list("index")?;
    // Packs garbage collection marked are indexed too: a snapshot may use them again, and
    // the sweep keeps every pack an index segment lists.
    let mut packs: Vec<(PackId, Vec<PackEntry>)> = Vec::new();
    for path in backend.list("packs")? {
        let Some(id) = id_of_path(&path).map(PackId) else { continue };
        match read_pack_table(backend.as_ref(), &path, key) {
            Ok(t) => packs.push((id, t.entries)),
            Err(e) => done.push(format!("left {path} out of the index: {e}")),
        }
    }
    let mut written = HashSet::new();
    for chunk in packs.chunks(PACKS_PER_SEGMENT) {
        let (id, bytes) = IndexSegment { packs: chunk.to_vec() }.encode(key)?;
        backend.put(&format!("index/{id}"), &bytes)?;
        written.insert(format!("index/{id}"));
    }
    let mut removed = 0;
    for path in old.iter().filter(|p| !written.contains(*p)) {
        backend.delete(path)?;
        removed += 1;
    }
    if removed > 0 || !written.iter().all(|w| old.contains(w)) {
        done.push(format!("rebuilt the index from {} packs ({removed} old segments removed)", packs.len()));
    }
    Ok(())
}

/// Rewrites every snapshot that references unavailable blobs: files missing data get an
/// error and keep their chunk list (a later `--source` may find them again), unreadable
/// folders become empty with an error; the new snapshot is tagged `repaired` and the old one
/// (both copies) is removed. Files an earlier repair marked whose chunks are all available
/// again lose their mark. Returns old and new ids.
pub fn mark_lost(repo: &Repository, s: &Survey) -> Result<Vec<(SnapshotId, SnapshotId)>> {
    let mut out = Vec::new();
    let mut rewritten: HashMap<BlobId, Option<BlobId>> = HashMap::new();
    for (id, copies) in &s.snapshots {
        let Some(snap) = copies.snapshot() else { continue };
        let hex = id.to_hex();
        if !s.unmarked_lost().any(|l| l.snapshot == hex) && !s.healed.iter().any(|(snap, _)| *snap == hex) {
            continue;
        }
        let root = rewrite(repo, s, &snap.root, &mut rewritten)?.unwrap_or(snap.root);
        let mut new = Snapshot { root, parent: Some(*id), ..snap.clone() };
        if !new.tags.iter().any(|t| t == "repaired") {
            new.tags.push("repaired".into());
        }
        repo.flush()?;
        let new_id = repo.save_snapshot(&new)?;
        for dir in ["snapshots", "snapshots.mirror"] {
            repo.backend().delete(&format!("{dir}/{id}"))?;
        }
        out.push((*id, new_id));
    }
    Ok(out)
}

/// The id of a rewritten tree, or `None` if nothing below it was lost.
fn rewrite(
    repo: &Repository,
    s: &Survey,
    id: &BlobId,
    memo: &mut HashMap<BlobId, Option<BlobId>>,
) -> Result<Option<BlobId>> {
    if let Some(done) = memo.get(id) {
        return Ok(*done);
    }
    let tree = s.good_locations(id).find_map(|l| repo.load_blob_at(l).ok()).and_then(|b| Tree::decode("tree", &b).ok());
    let Some(mut tree) = tree else {
        return Err(StoreError::corrupt(format!("tree {}", id.short()), "unreadable while marking losses"));
    };
    let mut changed = false;
    for e in &mut tree.entries {
        changed |= mark_entry(repo, s, e, memo)?;
    }
    let new = if changed { Some(repo.save_tree(&tree)?.id) } else { None };
    memo.insert(*id, new);
    Ok(new)
}

/// Marks what is lost in one entry; whether it changed.
fn mark_entry(
    repo: &Repository,
    s: &Survey,
    e: &mut Entry,
    memo: &mut HashMap<BlobId, Option<BlobId>>,
) -> Result<bool> {
    match &mut e.node {
        Node::Dir { tree } if s.available(tree) => match rewrite(repo, s, tree, memo)? {
            Some(new) => {
                *tree = new;
                Ok(true)
            }
            None => Ok(false),
        },
        Node::Dir { tree } => {
            *tree = repo.save_tree(&Tree::default())?.id;
            e.error = Some("folder listing lost (found damaged by verify --repair)".into());
            Ok(true)
        }
        Node::File { chunks, .. } => {
            let gone = chunks.iter().filter(|c| !s.available(c)).count();
            // Found again (a later `--source`): the mark goes.
            if gone == 0 {
                let healed = e.error.is_some() && !chunks.is_empty();
                if healed {
                    e.error = None;
                }
                return Ok(healed);
            }
            // The chunk list stays: a later `verify --repair --source` can still find the
            // chunks in the file they came from and heal this entry.
            let error = format!(
                "content lost in the repository after the backup: {gone} of {} chunks damaged (marked by verify \
                 --repair; `verify --repair --source PATH` recovers it if the file still exists)",
                chunks.len()
            );
            if e.error.as_deref() == Some(error.as_str()) {
                return Ok(false);
            }
            e.error = Some(error);
            Ok(true)
        }
        _ => Ok(false),
    }
}
