//! How far a long maintenance run has come (verify's packs), for the CLI to show: counters
//! the run raises and anyone may read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Units done of a total, and bytes read on the way.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub bytes: AtomicU64,
}

impl Progress {
    /// Starts a stage of `total` units.
    pub fn start(&self, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// One unit done, having read `bytes`.
    pub fn step(&self, bytes: u64) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (done, total, bytes) now.
    pub fn get(&self) -> (u64, u64, u64) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}
