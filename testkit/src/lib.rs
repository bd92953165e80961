//! What bakare's tests and benchmarks stand on, inside the project: trees like a user's, made
//! deterministically from a seed ([`create`]), changed the way a user changes them
//! ([`mutate`]), and the side-by-side benchmark against the peers ([`peers`]).
//!
//! The same arguments give the same tree, byte for byte and name for name, on every machine,
//! so a test's figures and a benchmark's rows can be compared across runs.

mod mutate;
pub mod peers;
mod rng;
mod tree;

pub use mutate::{Mutation, mutate};
pub use rng::Rng;
pub use tree::{Made, STAMP, TreeSpec, create, stamp, walk};
