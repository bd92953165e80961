//! `verify` and `verify --repair` end to end: survey, repair from redundancy, re-read lost
//! chunks from the source files they came from, mark what is still lost, survey again.
//!
//! Each phase opens a fresh repository handle: repair changes the index under it.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bakare_store::backend::Backend;
use bakare_store::repair::{mark_lost, repair};
use bakare_store::verify::{ReadData, Survey, verify};
use bakare_store::{Access, BlobId, BlobKind, Repository, SnapshotId};

use crate::error::PlanError;

/// What to check and how to repair.
pub struct CheckOptions {
    pub read_data: ReadData,
    pub repair: bool,
    /// Re-read lost chunks from files under this path, at the paths they were backed up from.
    pub source: Option<PathBuf>,
    /// Lets repair write a fresh key file.
    pub passphrase: Option<Vec<u8>>,
    /// Where the survey counts the packs it checked (shown by the CLI).
    pub progress: Option<Arc<bakare_store::progress::Progress>>,
}

/// What a check found and did.
pub struct CheckOutcome {
    pub before: Survey,
    pub actions: Vec<String>,
    /// Chunks found again in source files.
    pub recovered: u64,
    /// Snapshots rewritten with lost files marked: (old, new).
    pub rewritten: Vec<(SnapshotId, SnapshotId)>,
    /// The survey after repair (`None` without `--repair`).
    pub after: Option<Survey>,
}

pub fn check(backend: Arc<dyn Backend>, access: Access, opts: &CheckOptions) -> Result<CheckOutcome, PlanError> {
    let open = || {
        Repository::open_with_key(backend.clone(), access.clone()).map(|mut r| {
            if let Some(p) = &opts.progress {
                r.set_progress(p.clone());
            }
            r
        })
    };
    let repo = open()?;
    let before = verify(&repo, opts.read_data)?;
    let mut out = CheckOutcome { before, actions: Vec::new(), recovered: 0, rewritten: Vec::new(), after: None };
    // Files marked lost by an earlier repair are no problem, but with a source there is
    // something to do: find their chunks again.
    let healable = opts.source.is_some() && out.before.lost.iter().any(|l| l.marked);
    if !opts.repair || (out.before.is_clean() && !healable) {
        return Ok(out);
    }
    out.actions = repair(&repo, &out.before, opts.passphrase.as_deref())?;
    let repo = open()?;
    let mut mid = verify(&repo, opts.read_data)?;
    if let Some(source) = &opts.source
        && !mid.lost.is_empty()
    {
        out.recovered = recover_from_source(&repo, &mid, source)?;
        repo.flush()?;
        if out.recovered > 0 {
            out.actions.push(format!("re-read {} lost chunks from files under {}", out.recovered, source.display()));
            mid = verify(&open()?, opts.read_data)?;
        }
    }
    let newly_lost = mid.unmarked_lost().count();
    if newly_lost > 0 && opts.source.is_none() {
        out.actions.push(format!(
            "{newly_lost} files lost data in the repository; if they still exist where they were backed up from, \
             `bakare verify --repair --source PATH` recovers them (marking them lost keeps what that needs)"
        ));
    }
    if newly_lost > 0 || !mid.healed.is_empty() {
        let repo = open()?;
        out.rewritten = mark_lost(&repo, &mid)?;
        for (old, new) in &out.rewritten {
            out.actions.push(format!(
                "rewrote snapshot {} as {} with its lost files marked (or healed ones unmarked)",
                old.short(),
                new.short()
            ));
        }
    }
    out.after = Some(verify(&open()?, opts.read_data)?);
    Ok(out)
}

/// Reads the files that lost chunks, where they were backed up from (if under `source`),
/// and stores again every chunk whose id is among the lost ones.
pub fn recover_from_source(repo: &Repository, s: &Survey, source: &Path) -> Result<u64, PlanError> {
    let wanted: HashSet<BlobId> = s.missing.clone();
    let chunker = repo.chunker();
    let mut found: HashSet<BlobId> = HashSet::new();
    let mut seen_paths = HashSet::new();
    for lost in &s.lost {
        let path = PathBuf::from(&lost.path);
        if !path.starts_with(source) || !seen_paths.insert(path.clone()) {
            continue;
        }
        let Ok(file) = File::open(&path) else { continue };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let read = chunker.stream(file, size, |batch: &[&[u8]]| {
            for c in batch {
                let id = repo.blob_id(c);
                if wanted.contains(&id) && !found.contains(&id) {
                    repo.save_blob_again(BlobKind::Data, id, c)?;
                    found.insert(id);
                }
            }
            Ok::<_, PlanError>(())
        });
        match read {
            // A source file that cannot be read just recovers nothing.
            Ok(_) | Err(PlanError::Read(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found.len() as u64)
}
