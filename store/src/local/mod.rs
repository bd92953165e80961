//! This machine's caches of a repository, in local redb files of the cache folder. None of
//! them is ever the only copy of anything: each can be deleted, and is started anew when it
//! is damaged. See [`db`] for the one convention all of them keep.
//!
//! - [`blob_index`]: where each blob is (`index.redb`), mirroring the index segments.
//! - [`trees`]: sealed tree blobs and snapshot objects of remote repositories (`trees.redb`).
//! - the planner's memo of stat → chunk list (`state.redb`) and name index (`names.redb`)
//!   are built on [`db`] too; [`names`] hands the planner the name index's keys as an
//!   opaque sealer.

pub mod blob_index;
pub mod db;
pub mod names;
pub(crate) mod trees;
