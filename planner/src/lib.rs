//! bakare's file-system side: what to back up, how to cut it, and how to put it back.
//!
//! - [`backup`]: walks the source paths in parallel (rayon), applies exclusion rules
//!   (`ignore`'s gitignore matcher), cuts files into content-defined chunks (seeded FastCDC),
//!   hands chunks and folder listings to the store, and writes the snapshot last.
//! - [`restore`]: writes a snapshot's tree back to disk, in parallel, authenticating every
//!   blob, keeping holes for zero runs, and restoring permissions, times and ownership.
//!
//! This crate knows nothing of packs, keys or encryption: it sees only the
//! [`bakare_store::Repository`] interface.

mod backup;
mod copy;
mod counters;
mod db;
mod devices;
mod error;
mod exclude;
mod find;
pub mod fs_snapshot;
mod inputs;
mod memo;
mod meta;
mod names;
mod queries;
mod repair;
mod restore;
mod resume;
mod sparse;
mod stream;
pub mod watch;
mod xattrs;

pub use backup::{
    BackupOptions, BackupReport, CheckpointPolicy, DryRun, Heartbeat, backup, dry_run, expected_totals, stat_walk,
};
pub use bakare_store::Chunker;
pub use copy::{Copied, Copier, copied_from};
pub use counters::Counters;
pub use db::{Db, PlanDb, RunContext};
pub use devices::Devices;
pub use error::PlanError;
pub use exclude::Excludes;
pub use find::{Change, History, Version, diff, diff_local};
pub use inputs::{Child, ChildKind, Listing, Owner, SourceDir, SourceFile, StatFingerprint};
pub use memo::{DirRecord, DirStat, Memo, MemoRecord, Totals};
pub use meta::metadata_of;
pub use names::{Hit, IndexReport, NameIndex, index_path};
pub use queries::{Content, FileChange, Stop, TreeResult, dir_tree, file_content};
pub use repair::{CheckOptions, CheckOutcome, check, recover_from_source};
pub use restore::{RestoreOptions, RestoreReport, RestoreSelect, Start, find_node, restore, restore_selected};
pub use resume::{Prepared, find_session, finish_committed, interrupted_session, prepare_resume};
pub use stream::backup_stream;
