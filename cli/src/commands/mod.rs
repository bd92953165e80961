//! One module per command verb.

pub mod backup;
pub mod cat;
pub mod debug;
pub mod docs;
pub mod dump;
pub mod files_from;
pub mod find;
pub mod forget;
pub mod init;
pub mod key;
pub mod ls;
pub mod prune;
pub mod restore;
pub mod resume;
pub mod snapshots;
pub mod stats;
pub mod tag;
pub mod verify;
