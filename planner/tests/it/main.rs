//! The planner's integration tests, as one binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine;
mod find;
mod golden;
mod incremental;
mod reuse;
mod selection;
