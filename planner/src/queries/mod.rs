//! The tracked queries, one per file. Their bodies never use rayon: salsa forbids a thread
//! that is inside a query from running a query on another database clone, which rayon's
//! work stealing would do. Parallelism happens around them (see `backup.rs`).

mod content;
mod tree;

pub use content::{Content, Stop, file_content};
pub use tree::{TreeResult, dir_tree};
