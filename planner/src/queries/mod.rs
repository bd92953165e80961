//! The tracked queries, one per file. Their bodies never use rayon: salsa forbids a thread
//! that is inside a query from running a query on another database clone, which rayon's
//! work stealing would do. Parallelism happens around them (see `backup.rs`). Nor do they
//! keep state of the run: what a body found is in its value, applied by the caller (see
//! `content.rs`), so a database that lives long may run them again.

mod content;
mod tree;

pub use content::{Content, FileChange, Stop, file_content};
pub use tree::{TreeResult, dir_tree};
