//! One module per command verb.

pub mod backup;
pub mod cache;
pub mod cat;
pub mod copy;
pub mod debug;
pub mod docs;
pub mod dump;
pub mod files_from;
pub mod find;
pub mod forget;
pub mod hooks;
pub mod init;
pub mod key;
pub mod ls;
pub mod mount;
pub mod prune;
pub mod restore;
pub mod resume;
pub mod snapshots;
pub mod stats;
pub mod tag;
pub mod verify;
pub mod watch;

/// The snapshots `specs` name (ids, prefixes, `latest`, `latest~N`, `latest` narrowed by
/// `filter`), or when there are none every snapshot `filter` lets through; never none.
pub fn chosen_snapshots(
    repo: &bakare_store::Repository,
    specs: &[String],
    filter: &bakare_store::SnapshotFilter,
) -> anyhow::Result<Vec<(bakare_store::SnapshotId, bakare_store::Snapshot)>> {
    let chosen: Vec<_> = if specs.is_empty() {
        let list = repo.snapshots()?;
        for p in &list.problems {
            say!("bakare: warning: {p}");
        }
        list.snapshots.into_iter().filter(|(_, s)| filter.matches(s)).collect()
    } else {
        specs.iter().map(|spec| repo.find_snapshot_for(spec, filter, "")).collect::<Result<_, _>>()?
    };
    if chosen.is_empty() {
        anyhow::bail!("no snapshot {}", filter.describe(""));
    }
    Ok(chosen)
}
