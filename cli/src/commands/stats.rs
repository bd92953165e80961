//! `bakare stats [SNAPSHOT...]`: what a restore of the chosen snapshots would write (files,
//! folders, bytes: restic's restore-size), the unique data blobs behind them with their
//! plaintext and stored sizes (raw-data), the deduplication and compression ratios, and the
//! repository's packs. Trees are read once each, however many snapshots share them.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use bakare_store::{BlobId, Node, Repository};

use crate::Outcome;
use crate::args::StatsArgs;
use crate::context::Context;
use crate::output::{bytes, count};

/// What a restore of one tree writes.
#[derive(Clone, Copy, Default)]
struct Size {
    files: u64,
    dirs: u64,
    others: u64,
    bytes: u64,
}

struct Walk<'a> {
    repo: &'a Repository,
    trees: HashMap<BlobId, Size>,
    /// The hard-linked files under each tree: (link group, size), one per name.
    links: HashMap<BlobId, std::sync::Arc<Vec<(u64, u64)>>>,
    blobs: HashSet<BlobId>,
    problems: Vec<String>,
}

impl Walk<'_> {
    fn tree(&mut self, id: &BlobId) -> Size {
        if let Some(s) = self.trees.get(id) {
            return *s;
        }
        let mut size = Size::default();
        let mut links = Vec::new();
        match self.repo.load_tree(id) {
            Err(e) => self.problems.push(format!("tree {}: {e}", id.short())),
            Ok(tree) => {
                for e in tree.entries {
                    match &e.node {
                        Node::File { size: n, chunks } => {
                            size.files += 1;
                            size.bytes += n;
                            self.blobs.extend(chunks.iter().copied());
                            if e.extra.link != 0 {
                                links.push((e.extra.link, *n));
                            }
                        }
                        Node::Dir { tree } => {
                            let sub = self.tree(tree);
                            if let Some(l) = self.links.get(tree) {
                                links.extend(l.iter().copied());
                            }
                            size.dirs += 1 + sub.dirs;
                            size.files += sub.files;
                            size.others += sub.others;
                            size.bytes += sub.bytes;
                        }
                        _ => size.others += 1,
                    }
                }
            }
        }
        self.trees.insert(*id, size);
        if !links.is_empty() {
            self.links.insert(*id, std::sync::Arc::new(links));
        }
        size
    }

    /// A snapshot's restore size: a hard-link group's data is written once, however many
    /// names it has.
    fn snapshot(&mut self, root: &BlobId) -> Size {
        let mut size = self.tree(root);
        if let Some(links) = self.links.get(root) {
            let mut seen = HashSet::new();
            let again: u64 = links.iter().filter(|(group, _)| !seen.insert(*group)).map(|(_, n)| n).sum();
            size.bytes = size.bytes.saturating_sub(again);
        }
        size
    }
}

pub fn run(ctx: &Context, a: &StatsArgs) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let chosen = super::chosen_snapshots(&repo, &a.snapshots, &a.filter.filter())?;
    let mut walk =
        Walk { repo: &repo, trees: HashMap::new(), links: HashMap::new(), blobs: HashSet::new(), problems: Vec::new() };
    let mut total = Size::default();
    let mut per = Vec::new();
    for (id, s) in &chosen {
        let size = walk.snapshot(&s.root);
        total.files += size.files;
        total.dirs += size.dirs;
        total.others += size.others;
        total.bytes += size.bytes;
        per.push((id, s, size));
    }
    // The unique data behind them, from the index.
    let (mut raw, mut stored, mut unknown) = (0u64, 0u64, 0u64);
    // Small blobs share a frame: each frame counts once, whole.
    let mut frames = HashSet::new();
    for b in &walk.blobs {
        match repo.blob_location(b) {
            Some(loc) => {
                raw += u64::from(loc.entry.raw_len);
                if loc.entry.frame_at.is_none() || frames.insert((loc.pack, loc.entry.offset)) {
                    stored += u64::from(loc.entry.length);
                }
            }
            None => unknown += 1,
        }
    }
    let packs = repo.backend().list_stat("packs")?;
    let pack_bytes: u64 = packs.iter().map(|(_, s)| s.size).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    if ctx.global.json {
        let snaps: Vec<_> = per
            .iter()
            .map(|(id, s, z)| {
                serde_json::json!({"id": id.to_hex(), "host": s.host, "files": z.files, "dirs": z.dirs,
                    "other": z.others, "restore_bytes": z.bytes})
            })
            .collect();
        out!(
            "{}",
            serde_json::json!({
                "snapshots": chosen.len(), "files": total.files, "dirs": total.dirs, "other": total.others,
                "restore_bytes": total.bytes, "data_blobs": walk.blobs.len(), "raw_bytes": raw,
                "stored_bytes": stored, "blobs_missing_from_index": unknown,
                "dedup_ratio": ratio(total.bytes, raw), "compression_ratio": ratio(raw, stored),
                "packs": packs.len(), "pack_bytes": pack_bytes, "per_snapshot": if a.per_snapshot { snaps } else { Vec::new() },
                "problems": walk.problems,
            })
        )?;
    } else {
        if a.per_snapshot {
            out!("{:<9} {:<16} {:>10} {:>8} {:>12}", "id", "host", "files", "folders", "restore size")?;
            for (id, s, z) in &per {
                out!("{:<9} {:<16} {:>10} {:>8} {:>12}", id.short(), s.host, z.files, z.dirs, bytes(z.bytes))?;
            }
            out!("")?;
        }
        out!("snapshots:         {}", chosen.len())?;
        out!(
            "restore size:      {} in {} and {} (all snapshots together)",
            bytes(total.bytes),
            count(total.files, "file", "files"),
            count(total.dirs, "folder", "folders")
        )?;
        out!("unique data:       {} in {}", bytes(raw), count(walk.blobs.len() as u64, "chunk", "chunks"))?;
        out!("stored:            {} (after compression and encryption)", bytes(stored))?;
        out!("deduplication:     {:.2}x (restore size / unique data)", ratio(total.bytes, raw))?;
        out!("compression:       {:.2}x (unique data / stored)", ratio(raw, stored))?;
        out!("repository packs:  {} ({})", count(packs.len() as u64, "pack", "packs"), bytes(pack_bytes))?;
        if unknown > 0 {
            out!("not in the index:  {} (run `bakare verify`)", count(unknown, "chunk", "chunks"))?;
        }
    }
    for p in &walk.problems {
        say!("bakare: warning: {p}");
    }
    crate::context::warn_index(&repo);
    Ok(if walk.problems.is_empty() && unknown == 0 { Outcome::Success } else { Outcome::Problems })
}
