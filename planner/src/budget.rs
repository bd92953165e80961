//! The process's memory budget (`--memory-limit`) and what it decides: how many large
//! read buffers may exist at once, and the caches of the local databases.
//!
//! What memory a run holds, and what bounds it:
//! - read buffers: a file larger than 1 MiB is read through a buffer of twice the largest
//!   chunk (16 MiB by default); a quarter of the budget is shared out among them, so at most
//!   that many exist at once (a reader waits for a permit). Their chunks are compressed and
//!   sealed on every core, so one reader still keeps all cores busy.
//! - open packs: spooled to files beside the repository ([`bakare_store`]), not in memory.
//! - the memo's, the name index's and the blob index's redb caches: a sixteenth of the budget
//!   each, 4 to 64 MiB.
//! - the blob index: in a local redb file (not memory), with only this run's blobs not yet in
//!   an index segment held in memory (a checkpoint writes one at least every 20,000 files).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// 512 MiB unless told otherwise.
static LIMIT: AtomicU64 = AtomicU64::new(512 << 20);

/// Sets the budget; call before any run starts (the read permits are sized on first use).
pub fn set_memory_limit(bytes: u64) {
    LIMIT.store(bytes.max(32 << 20), Ordering::Relaxed);
}

pub fn memory_limit() -> u64 {
    LIMIT.load(Ordering::Relaxed)
}

/// The cache of a local redb database (memo, name index, blob index).
pub fn local_cache_bytes() -> usize {
    usize::try_from(memory_limit() / 16).unwrap_or(usize::MAX).clamp(4 << 20, 64 << 20)
}

/// Files at most this large are read through a buffer of their size, without a permit.
pub(crate) const SMALL_READ: u64 = 1 << 20;

/// Bytes of large read buffers that may exist at once.
struct Reads {
    left: Mutex<u64>,
    freed: Condvar,
    total: u64,
}

fn reads() -> &'static Reads {
    static READS: OnceLock<Reads> = OnceLock::new();
    READS.get_or_init(|| {
        let total = memory_limit() / 4;
        Reads { left: Mutex::new(total), freed: Condvar::new(), total }
    })
}

/// A share of the read budget, given back when dropped.
pub(crate) struct ReadPermit(u64);

/// Waits until `bytes` (at most the whole read budget) are free and takes them.
pub(crate) fn read_permit(bytes: u64) -> ReadPermit {
    let r = reads();
    let want = bytes.min(r.total);
    let mut left = r.left.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while *left < want {
        left = r.freed.wait(left).unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    *left -= want;
    ReadPermit(want)
}

impl Drop for ReadPermit {
    fn drop(&mut self) {
        let r = reads();
        *r.left.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += self.0;
        r.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_wait_for_each_other() {
        let total = reads().total;
        let a = read_permit(total);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _b = read_permit(1);
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "the budget is spent");
        drop(a);
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(), "given back");
        t.join().unwrap();
        // More than the whole budget is capped at the budget, not refused.
        drop(read_permit(total * 2));
    }
}
