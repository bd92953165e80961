//! Storage backends: the one trait all repository I/O goes through.
//!
//! Object paths are `/`-separated strings such as `packs/ab/<hex>` or `snapshots/<hex>`.
//! Every object is written once: `put` must never leave a partial object under its final
//! name, and a second `put` of the same name writes the same bytes (names are hashes), so
//! correctness never depends on the store refusing an overwrite.

mod local;
mod memory;
#[cfg(feature = "remote")]
mod remote;
mod retry;

pub use local::LocalBackend;
pub use memory::MemoryBackend;
#[cfg(feature = "remote")]
pub use remote::{RemoteBackend, RemoteOptions, RemoteUrl};
pub use retry::{RetryPolicy, Retrying};

use std::io;

/// An error from a backend, naming the object path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("{path}: not found")]
    NotFound { path: String },
    /// (The cause is in the message, not chained: `{:#}` would print it twice.)
    #[error("{path}: {cause}")]
    Io { path: String, cause: io::Error },
    #[error("{path}: short read: wanted {wanted} bytes at offset {offset}, object has {len}")]
    ShortRead { path: String, offset: u64, wanted: u64, len: u64 },
    /// A failure that may pass if the operation is tried again: a connection reset or
    /// stalled, a 5xx or 429 answer, a truncated body.
    #[error("{path}: {message} (temporary)")]
    Transient { path: String, message: String },
    /// The storage asked to slow down (HTTP 429, S3's `SlowDown`): transient too, and the
    /// one failure that lowers the number of requests in flight.
    #[error("{path}: the storage asks to slow down: {message} (temporary)")]
    Throttled { path: String, message: String },
    /// A failure that trying again cannot fix: bad credentials, a missing bucket, no
    /// permission, a configuration the storage refuses.
    #[error("{path}: {message}")]
    Permanent { path: String, message: String },
    /// The storage made no progress (no operation succeeded) for the whole retry budget.
    #[error("{path}: the storage made no progress for {secs} s (retry budget spent); last error: {last}")]
    GaveUp { path: String, secs: u64, last: String },
}

impl BackendError {
    pub fn io(path: impl Into<String>, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::NotFound {
            Self::NotFound { path }
        } else {
            Self::Io { path, cause: source }
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::Throttled { .. })
    }

    /// Whether no retry and no `bakare resume` can help until the user changes something
    /// (credentials, the bucket's name).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. })
    }
}

/// Removes the spool files a killed process left in `dir`: older than a day, no writer has
/// them.
pub(crate) fn remove_stale_spool_files(dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    for e in rd.flatten() {
        let stale = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < old);
        if e.file_name().to_string_lossy().starts_with(".tmp-spool-") && stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What the storage says of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
    /// When the object was written, in nanoseconds since the Unix epoch, by the storage's
    /// clock: garbage collection judges the age of packs by it.
    pub modified_ns: i64,
}

/// The storage a repository lives on.
pub trait Backend: Send + Sync {
    /// Human-readable location, for messages.
    fn location(&self) -> String;
    /// Writes a whole object atomically; succeeds without writing if it already exists.
    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError>;
    /// Writes a whole object atomically, replacing any existing one. Only session records,
    /// which are renewed, and repair's rewrites of fixed-name copies use it.
    fn replace(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError>;
    /// Reads a whole object.
    fn get(&self, path: &str) -> Result<Vec<u8>, BackendError>;
    /// Reads `len` bytes at `offset`; a short object is an error, not a short read.
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;
    /// The size of an object.
    fn size(&self, path: &str) -> Result<u64, BackendError>;
    /// Paths of all objects under `prefix` (recursively), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError>;
    /// Removes an object; removing a missing object is not an error.
    fn delete(&self, path: &str) -> Result<(), BackendError>;
    /// An object's size and the time it was written.
    fn stat(&self, path: &str) -> Result<ObjectStat, BackendError>;
    /// A folder where whole objects may be spooled to files before [`Backend::put_file`]
    /// moves them into place cheaply (the local folder: on the same file system); `None`
    /// when objects are built in memory.
    fn spool_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Removes the temporary files (`.tmp-*`, not spool files) that killed writers left,
    /// written before `before_ns` by the storage's clock; how many it removed.
    fn sweep_temporaries(&self, _before_ns: i64) -> Result<usize, BackendError> {
        Ok(0)
    }
    /// Whether the storage is reached over a network (then trees read are cached locally).
    fn is_remote(&self) -> bool {
        false
    }
    /// How many packs may be written at once (each spooled pack in flight costs a file, not
    /// memory; a remote store wants as many as it has connections).
    fn parallel_writes(&self) -> usize {
        4
    }
    /// [`Backend::put`] of the contents of `file`, which is removed (moved into place
    /// where possible).
    fn put_file(&self, path: &str, file: &std::path::Path) -> Result<(), BackendError> {
        self.put_file_keep(path, file)?;
        std::fs::remove_file(file).map_err(|e| BackendError::io(path, e))
    }
    /// [`Backend::put`] of the contents of `file`, which stays (a retry reads it again).
    fn put_file_keep(&self, path: &str, file: &std::path::Path) -> Result<(), BackendError> {
        let bytes = std::fs::read(file).map_err(|e| BackendError::io(path, e))?;
        self.put(path, &bytes)
    }
    /// [`Backend::list`] with each object's [`Backend::stat`]. An object deleted between the
    /// listing and its stat is left out.
    fn list_stat(&self, prefix: &str) -> Result<Vec<(String, ObjectStat)>, BackendError> {
        let mut out = Vec::new();
        for path in self.list(prefix)? {
            match self.stat(&path) {
                Ok(st) => out.push((path, st)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// How many requests to send at once when a command has several independent ones: a
/// remote store answers each after a round trip but many in parallel (as many as it has
/// connections); a local one gains nothing.
pub fn request_width(backend: &dyn Backend) -> usize {
    if backend.is_remote() { backend.parallel_writes().clamp(1, 16) } else { 1 }
}

/// `f` of every item, `width` at a time on scoped threads (in order on this thread when
/// `width` is 1); the results in the items' order. A panic in `f` is raised again here,
/// as it would be on one thread.
pub fn in_parallel<T: Send, R: Send>(items: Vec<T>, width: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    if width <= 1 || n <= 1 {
        return items.into_iter().map(f).collect();
    }
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..width.min(n))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let next = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
                        let Some((i, item)) = next else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod parallel_tests {
    use super::in_parallel;

    #[test]
    fn results_come_in_the_items_order_whatever_the_width() {
        for width in [1, 2, 5, 64] {
            let got = in_parallel((0..100u64).collect(), width, |i| {
                // Later items finish first.
                std::thread::sleep(std::time::Duration::from_micros(100 - i));
                i * 2
            });
            assert_eq!(got, (0..100u64).map(|i| i * 2).collect::<Vec<_>>(), "width {width}");
        }
    }

    #[test]
    fn items_run_at_once_up_to_the_width() {
        let running = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        in_parallel(vec![(); 12], 4, |()| {
            let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
        let most = most.into_inner();
        assert!(most > 1 && most <= 4, "{most} at once");
    }
}
