//! bakare's repository: the on-disk format and the blob store built on it.
//!
//! Every object is immutable and named by the BLAKE3 of its bytes (only `config` has a fixed
//! name and carries its own checksum), so any flipped bit is caught before anything is parsed
//! or decrypted. A backup becomes visible by writing its snapshot last. See `docs/FORMAT.md`.
//!
//! - [`backend`]: the small storage trait (put-if-absent, get, get range, list, delete) and
//!   the local folder backend.
//! - [`Repository`]: opening and creating repositories, saving and loading blobs
//!   (dedup, zstd, sealing, packing), index segments and snapshots.
//! - [`tree`] and [`snapshot`]: the plaintext structures stored in tree blobs and snapshots.
//! - [`verify`] and [`repair`]: the survey of every object, and repair from redundancy.

pub mod backend;
pub mod budget;
mod chunker;
pub mod clock;
mod error;
pub mod failpoint;
pub mod format;
mod ids;
pub mod local;
pub mod maintenance;
pub mod progress;
mod repo;

pub use bakare_crypto::{Digest, KdfParams, checksum};
pub use budget::{Budget, ReadPermit, SMALL_READ};
pub use chunker::{Chunker, all_zero};
pub use error::StoreError;
pub use format::config::{ChunkerParams, Config};
pub use format::index::{BlobLocation, IndexSegment};
pub use format::object::FORMAT_VERSION;
pub use format::pack::{MAX_BLOB_LEN, PackEntry, PackTable, decode_blob_table, parse_blob_table, read_pack_table};
pub use format::session::{
    CACHEDIR_TAG, Checkpoint, CheckpointRefs, Selection, Session, SessionOptions, SourceOptions,
};
pub use format::snapshot::{Snapshot, SnapshotStats};
pub use format::tree::{Entry, Extra, Metadata, Node, Tree, Xattr};
pub use format::{parity, session, snapshot, tree};
pub use ids::{BlobId, BlobKind, PackId, SnapshotId};
pub use maintenance::{forget, gc, prune, repair, verify};
pub use repo::{
    Access, DEFAULT_COMPRESSION, KeyFileInfo, Repository, SPAN, SaveOutcome, SnapshotFilter, SnapshotList, WriteStats,
    adjacent_run, holds, pack_path,
};

/// Results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
