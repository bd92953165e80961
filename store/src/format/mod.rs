//! The on-disk objects, one file per structure, each with its encoder, its checked decoder
//! and its tests. Nothing here does more I/O than reading and writing whole objects through
//! a [`crate::backend::Backend`]; see `docs/FORMAT.md`.
//!
//! - [`object`]: the 8-byte header every object starts with, sealing, and reading an
//!   object checked against its name.
//! - [`config`], [`pack`], [`index`], [`snapshot`], [`tree`], [`session`] (session records
//!   and checkpoints), [`marks`] (garbage collection's marks), [`parity`] (Reed-Solomon
//!   recovery shards per pack).

pub mod config;
pub mod index;
pub mod marks;
pub mod object;
pub mod pack;
pub mod parity;
pub mod session;
pub mod snapshot;
pub mod tree;
