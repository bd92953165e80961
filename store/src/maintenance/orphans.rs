//! Packs an interrupted backup wrote but never indexed: listed in a new index segment, so
//! that their blobs deduplicate (what `resume` does first).

use std::collections::HashSet;

use crate::format::index::IndexSegment;
use crate::format::marks::marked_packs;
use crate::format::object::id_of_path;
use crate::format::pack::read_pack_table;
use crate::ids::PackId;
use crate::{Repository, Result};

/// Lists in a new index segment every pack that no segment lists: packs an interrupted
/// backup wrote before it could index them. Packs that garbage collection marked stay out:
/// only its sweep may put them back. Returns how many were adopted.
pub fn adopt(repo: &Repository) -> Result<usize> {
    repo.load_index()?;
    let backend = repo.backend().as_ref();
    let key = &repo.access().write_key().index_key;
    let mut known: HashSet<PackId> = repo.index_packs();
    known.extend(marked_packs(backend, key)?);
    let mut orphans = Vec::new();
    for path in backend.list("packs")? {
        let Some(id) = id_of_path(&path).map(PackId) else { continue };
        if known.contains(&id) {
            continue;
        }
        // A pack whose table is damaged stays out; verify reports it.
        if let Ok(t) = read_pack_table(backend, &path, key) {
            orphans.push((id, t.entries));
        }
    }
    if orphans.is_empty() {
        return Ok(0);
    }
    let n = orphans.len();
    crate::failpoint::hit("before-adopt");
    repo.write_index_segment(&IndexSegment { packs: orphans })?;
    Ok(n)
}
