//! The memory budget of a run (`--memory-limit`): a value made once from the limit and handed
//! down (the CLI makes it, the repository handle carries it, the planner asks the handle).
//!
//! What memory a run holds, and what bounds it:
//! - read buffers: a file larger than [`SMALL_READ`] is read through a buffer of twice the
//!   largest chunk (16 MiB by default); a quarter of the budget is shared out among them, so
//!   at most that many exist at once (a reader waits for a [`ReadPermit`]). Their chunks are
//!   compressed and sealed on every core, so one reader still keeps all cores busy. A
//!   restore's runs of adjacent blobs take permits the same way.
//! - open packs: spooled to files beside the repository, not in memory.
//! - the local files' redb caches (memo, name index, blob index, tree cache): a sixteenth
//!   of the budget each, 4 to 64 MiB ([`Budget::local_cache_bytes`]).
//! - the blob index: in a local redb file (not memory), with only this run's blobs not yet in
//!   an index segment held in memory (a checkpoint writes one at least every 20,000 files).
//! - a restore from remote storage keeps recent 4 MiB spans of packs: an eighth of the
//!   budget, 2 to 16 of them.

use std::sync::{Arc, Condvar, Mutex};

/// Files at most this large are read through a buffer of their size, without a permit.
pub const SMALL_READ: u64 = 1 << 20;

/// The smallest budget accepted.
pub const MIN_LIMIT: u64 = 32 << 20;

/// A run's memory budget. Clones share the read permits.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    limit: u64,
    /// Bytes of large read buffers that may still be taken.
    left: Mutex<u64>,
    freed: Condvar,
}

impl Default for Budget {
    /// 512 MiB, the CLI's default.
    fn default() -> Self {
        Self::new(512 << 20)
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget").field("limit", &self.inner.limit).finish()
    }
}

impl Budget {
    /// A budget of `limit` bytes (at least [`MIN_LIMIT`]).
    pub fn new(limit: u64) -> Self {
        let limit = limit.max(MIN_LIMIT);
        Self { inner: Arc::new(Inner { limit, left: Mutex::new(limit / 4), freed: Condvar::new() }) }
    }

    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// The page cache of one local redb file.
    pub fn local_cache_bytes(&self) -> usize {
        usize::try_from(self.limit() / 16).unwrap_or(usize::MAX).clamp(4 << 20, 64 << 20)
    }

    /// Bytes of large read buffers that may exist at once.
    pub fn read_bytes(&self) -> u64 {
        self.limit() / 4
    }

    /// How many spans of `span` bytes a restore keeps.
    pub fn spans(&self, span: u64) -> usize {
        usize::try_from(self.limit() / 8 / span.max(1)).unwrap_or(16).clamp(2, 16)
    }

    /// Waits until `bytes` (at most the whole read budget) are free and takes them.
    pub fn read_permit(&self, bytes: u64) -> ReadPermit {
        let want = bytes.min(self.read_bytes());
        let mut left = self.inner.left.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *left < want {
            left = self.inner.freed.wait(left).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *left -= want;
        ReadPermit { budget: self.inner.clone(), bytes: want }
    }
}

/// A share of the read budget, given back when dropped.
pub struct ReadPermit {
    budget: Arc<Inner>,
    bytes: u64,
}

impl Drop for ReadPermit {
    fn drop(&mut self) {
        *self.budget.left.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn permits_wait_for_each_other() {
        let budget = Budget::new(64 << 20);
        let total = budget.read_bytes();
        let a = budget.read_permit(total);
        let (tx, rx) = std::sync::mpsc::channel();
        let other = budget.clone();
        let t = std::thread::spawn(move || {
            let _b = other.read_permit(1);
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "the budget is spent");
        drop(a);
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(), "given back");
        t.join().unwrap();
        // More than the whole budget is capped at the budget, not refused.
        drop(budget.read_permit(total * 2));
    }

    #[test]
    fn two_budgets_do_not_share_permits() {
        let a = Budget::new(64 << 20);
        let b = Budget::new(64 << 20);
        let _all = a.read_permit(a.read_bytes());
        drop(b.read_permit(b.read_bytes()));
    }

    #[test]
    fn the_caches_follow_the_limit_within_bounds() {
        assert_eq!(Budget::new(0).limit(), MIN_LIMIT);
        assert_eq!(Budget::new(128 << 20).local_cache_bytes(), 8 << 20);
        assert_eq!(Budget::new(1 << 40).local_cache_bytes(), 64 << 20);
        assert_eq!(Budget::new(32 << 20).local_cache_bytes(), 4 << 20);
        assert_eq!(Budget::new(512 << 20).spans(4 << 20), 16);
        assert_eq!(Budget::new(32 << 20).spans(4 << 20), 2);
    }
}
