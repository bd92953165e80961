//! Live counters of a running backup or restore, read by the CLI's progress display.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Progress so far. All counters only grow.
#[derive(Debug, Default)]
pub struct Counters {
    /// Files opened and read (backup) or written (restore).
    pub files: AtomicU64,
    /// Files whose content came from the memo without being opened.
    pub files_memo: AtomicU64,
    pub files_new: AtomicU64,
    pub files_changed: AtomicU64,
    pub files_unchanged: AtomicU64,
    /// Size of every file in the backup, read or not.
    pub bytes_total: AtomicU64,
    pub dirs: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Size of the files whose content came from the memo (with `bytes_read`: how far a
    /// backup has come).
    pub bytes_reused: AtomicU64,
    pub bytes_written: AtomicU64,
    pub errors: AtomicU64,
    /// The file most recently started, for display.
    pub current: Mutex<String>,
    /// When `Some` (`--verbose`), each file found new or changed is queued here for the CLI
    /// to print (and take away).
    pub changes: Mutex<Option<Vec<(crate::FileChange, std::path::PathBuf)>>>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Starts the per-walk counts again for another walk over the same sources (bytes read
    /// and written keep counting: they happened).
    pub(crate) fn restart_pass(&self) {
        for c in [
            &self.files,
            &self.files_memo,
            &self.files_new,
            &self.files_changed,
            &self.files_unchanged,
            &self.bytes_total,
            &self.bytes_reused,
            &self.dirs,
            &self.errors,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_current(&self, path: &std::path::Path) {
        if let Ok(mut c) = self.current.try_lock() {
            c.clear();
            c.push_str(&path.to_string_lossy());
        }
    }
}
