//! Retries for a storage reached over a network: [`Retrying`] wraps any [`Backend`].
//!
//! A [`BackendError::Transient`] failure (a reset or stalled connection, a 5xx or 429
//! answer, a truncated body) is tried again after an exponential backoff with full jitter;
//! any other error is returned at once. The budget is one of *progress*, not of attempts:
//! an operation gives up with [`BackendError::GaveUp`] only when no operation of this
//! handle has succeeded for [`RetryPolicy::budget`] (and not before its own start), so a long
//! backup over a flaky link keeps going while a dead link stops it in bounded time. From
//! then on every operation of the handle fails at once: the command is stopping. Every
//! operation is idempotent (object names are hashes of their bytes), so trying one again is
//! always safe.
//!
//! The same wrapper bounds the operations in flight to [`RetryPolicy::connections`] and
//! halves that bound after a failure (down to one), growing it back by one after a run of
//! successes: a link that drops packets under load gets less load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Backend, BackendError, ObjectStat};

/// How [`Retrying`] retries.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Give up when nothing succeeded for this long.
    pub budget: Duration,
    /// The first backoff; each retry of an operation doubles it, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Operations in flight at most.
    pub connections: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(15 * 60),
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            connections: 8,
        }
    }
}

/// A [`Backend`] that retries transient failures (see the module documentation).
pub struct Retrying<B> {
    inner: B,
    policy: RetryPolicy,
    limiter: Mutex<Limiter>,
    freed: Condvar,
    /// When an operation last succeeded.
    last_progress: Mutex<Instant>,
    retries: AtomicU64,
    /// An operation gave up: every later one fails at once (the command is stopping; each
    /// waiting out a budget of its own would only delay that).
    gave_up: Mutex<Option<String>>,
}

struct Limiter {
    /// Operations allowed in flight now (1..=connections).
    limit: usize,
    in_flight: usize,
    /// Successes since the limit last changed.
    successes: usize,
}

impl<B: Backend> Retrying<B> {
    pub fn new(inner: B, policy: RetryPolicy) -> Self {
        let connections = policy.connections.max(1);
        Self {
            inner,
            policy: RetryPolicy { connections, ..policy },
            limiter: Mutex::new(Limiter { limit: connections, in_flight: 0, successes: 0 }),
            freed: Condvar::new(),
            last_progress: Mutex::new(Instant::now()),
            retries: AtomicU64::new(0),
            gave_up: Mutex::new(None),
        }
    }

    /// Failed attempts tried again so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Operations allowed in flight now.
    pub fn current_limit(&self) -> usize {
        lock(&self.limiter).limit
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn run<T>(
        &self,
        what: &str,
        path: &str,
        mut op: impl FnMut(&B) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let start = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            if let Some(last) = lock(&self.gave_up).clone() {
                let secs = lock(&self.last_progress).elapsed().as_secs();
                return Err(BackendError::GaveUp { path: path.to_string(), secs, last });
            }
            self.acquire();
            let sent = Instant::now();
            let result = op(&self.inner);
            if let Some(t0) = trace_start() {
                let outcome = match &result {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                };
                eprintln!(
                    "request {:9.3} s {what:<6} {path} {:.0} ms {outcome}",
                    sent.duration_since(t0).as_secs_f64(),
                    sent.elapsed().as_secs_f64() * 1e3
                );
            }
            let failed = matches!(&result, Err(e) if e.is_transient());
            self.release(failed);
            let err = match result {
                Ok(v) => {
                    *lock(&self.last_progress) = Instant::now();
                    return Ok(v);
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            let since = (*lock(&self.last_progress)).max(start);
            let stalled = since.elapsed();
            if stalled >= self.policy.budget {
                let last = lock(&self.gave_up).get_or_insert_with(|| err.to_string()).clone();
                return Err(BackendError::GaveUp { path: path.to_string(), secs: stalled.as_secs(), last });
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            let backoff = self.policy.first_delay.saturating_mul(1 << attempt.min(16)).min(self.policy.max_delay);
            // Full jitter, at least half the backoff: racing retries spread out.
            let delay = backoff / 2 + backoff.mul_f64(jitter() / 2.0);
            std::thread::sleep(delay.min(self.policy.budget.saturating_sub(stalled)));
            attempt = attempt.saturating_add(1);
        }
    }

    fn acquire(&self) {
        let mut l = lock(&self.limiter);
        while l.in_flight >= l.limit {
            l = self.freed.wait(l).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        l.in_flight += 1;
    }

    fn release(&self, failed: bool) {
        let mut l = lock(&self.limiter);
        l.in_flight -= 1;
        if failed {
            l.limit = (l.limit / 2).max(1);
            l.successes = 0;
        } else {
            l.successes += 1;
            if l.limit < self.policy.connections && l.successes >= 4 * l.limit {
                l.limit += 1;
                l.successes = 0;
            }
        }
        drop(l);
        self.freed.notify_all();
    }
}

/// A number in [0, 1), from the operating system's generator (a clock-derived one if that
/// fails: jitter needs no secrecy).
fn jitter() -> f64 {
    let bits = getrandom::u64().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        u64::from(t.subsec_nanos()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// With `BAKARE_TRACE_REQUESTS` set, each attempt of each operation is printed to
/// standard error (its start since the first, the operation, the object, how long it took
/// and how it ended): where a slow run's time goes.
fn trace_start() -> Option<Instant> {
    static START: std::sync::OnceLock<Option<Instant>> = std::sync::OnceLock::new();
    *START.get_or_init(|| std::env::var_os("BAKARE_TRACE_REQUESTS").map(|_| Instant::now()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: Backend> Backend for Retrying<B> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.run("put", path, |b| b.put(path, bytes))
    }
    fn replace(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.run("replace", path, |b| b.replace(path, bytes))
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, BackendError> {
        self.run("get", path, |b| b.get(path))
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.run("get_range", path, |b| b.get_range(path, offset, len))
    }
    fn size(&self, path: &str) -> Result<u64, BackendError> {
        self.run("size", path, |b| b.size(path))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.run("list", prefix, |b| b.list(prefix))
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        self.run("delete", path, |b| b.delete(path))
    }
    fn stat(&self, path: &str) -> Result<ObjectStat, BackendError> {
        self.run("stat", path, |b| b.stat(path))
    }
    fn spool_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.spool_dir()
    }
    fn parallel_writes(&self) -> usize {
        self.inner.parallel_writes()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    fn sweep_temporaries(&self, before_ns: i64) -> Result<usize, BackendError> {
        self.run("sweep", "", |b| b.sweep_temporaries(before_ns))
    }
    /// The file stays until the upload succeeded, so every retry reads it again.
    fn put_file(&self, path: &str, file: &std::path::Path) -> Result<(), BackendError> {
        self.run("put", path, |b| b.put_file_keep(path, file))?;
        std::fs::remove_file(file).map_err(|e| BackendError::io(path, e))
    }
    fn list_stat(&self, prefix: &str) -> Result<Vec<(String, ObjectStat)>, BackendError> {
        self.run("list_stat", prefix, |b| b.list_stat(prefix))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::backend::MemoryBackend;

    /// Fails the first `fail_first` operations with `error`, then works.
    struct Flaky {
        inner: MemoryBackend,
        fail_first: usize,
        calls: AtomicUsize,
        error: fn(&str) -> BackendError,
    }

    impl Flaky {
        fn new(fail_first: usize, error: fn(&str) -> BackendError) -> Self {
            Self { inner: MemoryBackend::new(), fail_first, calls: AtomicUsize::new(0), error }
        }
        fn check(&self, path: &str) -> Result<(), BackendError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_first { Err((self.error)(path)) } else { Ok(()) }
        }
    }

    impl Backend for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        fn put(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
            self.check(path)?;
            self.inner.put(path, bytes)
        }
        fn replace(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
            self.check(path)?;
            self.inner.replace(path, bytes)
        }
        fn get(&self, path: &str) -> Result<Vec<u8>, BackendError> {
            self.check(path)?;
            self.inner.get(path)
        }
        fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
            self.check(path)?;
            self.inner.get_range(path, offset, len)
        }
        fn size(&self, path: &str) -> Result<u64, BackendError> {
            self.check(path)?;
            self.inner.size(path)
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
            self.check(prefix)?;
            self.inner.list(prefix)
        }
        fn delete(&self, path: &str) -> Result<(), BackendError> {
            self.check(path)?;
            self.inner.delete(path)
        }
        fn stat(&self, path: &str) -> Result<ObjectStat, BackendError> {
            self.check(path)?;
            self.inner.stat(path)
        }
    }

    fn transient(path: &str) -> BackendError {
        BackendError::Transient { path: path.into(), message: "connection reset".into() }
    }

    fn permanent(path: &str) -> BackendError {
        BackendError::Permanent { path: path.into(), message: "access denied".into() }
    }

    fn fast(budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            budget: Duration::from_millis(budget_ms),
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            connections: 4,
        }
    }

    #[test]
    fn transient_failures_are_retried_until_they_pass() {
        let b = Retrying::new(Flaky::new(5, transient), fast(10_000));
        b.put("a", b"bytes").unwrap();
        assert_eq!(b.get("a").unwrap(), b"bytes");
        assert_eq!(b.retries(), 5);
        assert_eq!(b.inner().calls.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let b = Retrying::new(Flaky::new(1, permanent), fast(10_000));
        let e = b.put("a", b"bytes").unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert_eq!(b.inner().calls.load(Ordering::SeqCst), 1);
        assert_eq!(b.retries(), 0);
    }

    #[test]
    fn a_dead_store_gives_up_after_the_budget_without_progress() {
        let b = Retrying::new(Flaky::new(usize::MAX, transient), fast(300));
        let t = Instant::now();
        let e = b.get("packs/x").unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, BackendError::GaveUp { .. }), "{e}");
        assert!(e.to_string().contains("packs/x") && e.to_string().contains("connection reset"), "{e}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        assert!(b.retries() > 3, "{}", b.retries());
    }

    #[test]
    fn after_giving_up_every_later_operation_fails_at_once() {
        let b = Retrying::new(Flaky::new(usize::MAX, transient), fast(200));
        assert!(matches!(b.get("a"), Err(BackendError::GaveUp { .. })));
        let calls = b.inner().calls.load(Ordering::SeqCst);
        let t = Instant::now();
        let e = b.put("b", b"x").unwrap_err();
        assert!(matches!(&e, BackendError::GaveUp { path, last, .. } if path == "b" && last.contains("reset")), "{e}");
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        assert_eq!(b.inner().calls.load(Ordering::SeqCst), calls, "no request after giving up");
    }

    #[test]
    fn the_budget_counts_from_the_last_success_or_the_operations_start() {
        // Idle for longer than the budget, then a short hiccup: it must not give up.
        let b = Retrying::new(Flaky::new(0, transient), fast(100));
        b.put("a", b"x").unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let b = Retrying::new(Flaky::new(3, transient), fast(100));
        std::thread::sleep(Duration::from_millis(150));
        b.put("a", b"x").unwrap();
    }

    #[test]
    fn failures_halve_the_operations_in_flight_and_successes_restore_them() {
        let b = Retrying::new(Flaky::new(2, transient), fast(10_000));
        assert_eq!(b.current_limit(), 4);
        b.put("a", b"x").unwrap();
        assert_eq!(b.current_limit(), 1);
        for _ in 0..200 {
            b.get("a").unwrap();
        }
        assert_eq!(b.current_limit(), 4);
    }

    #[test]
    fn no_more_than_the_limit_run_at_once() {
        struct Counting {
            now: AtomicUsize,
            most: AtomicUsize,
        }
        impl Backend for Counting {
            fn location(&self) -> String {
                "counting".into()
            }
            fn put(&self, _: &str, _: &[u8]) -> Result<(), BackendError> {
                Ok(())
            }
            fn replace(&self, _: &str, _: &[u8]) -> Result<(), BackendError> {
                Ok(())
            }
            fn get(&self, _: &str) -> Result<Vec<u8>, BackendError> {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                self.now.fetch_sub(1, Ordering::SeqCst);
                Ok(Vec::new())
            }
            fn get_range(&self, _: &str, _: u64, _: u64) -> Result<Vec<u8>, BackendError> {
                Ok(Vec::new())
            }
            fn size(&self, _: &str) -> Result<u64, BackendError> {
                Ok(0)
            }
            fn list(&self, _: &str) -> Result<Vec<String>, BackendError> {
                Ok(Vec::new())
            }
            fn delete(&self, _: &str) -> Result<(), BackendError> {
                Ok(())
            }
            fn stat(&self, _: &str) -> Result<ObjectStat, BackendError> {
                Ok(ObjectStat { size: 0, modified_ns: 0 })
            }
        }
        let b = Retrying::new(Counting { now: AtomicUsize::new(0), most: AtomicUsize::new(0) }, fast(1000));
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    for _ in 0..10 {
                        b.get("x").unwrap();
                    }
                });
            }
        });
        let most = b.inner().most.load(Ordering::SeqCst);
        assert!((2..=4).contains(&most), "{most} in flight");
    }
}
