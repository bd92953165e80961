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
//! The same wrapper bounds the operations in flight to [`RetryPolicy::connections`]. A
//! store that asks to slow down ([`BackendError::Throttled`]: HTTP 429, S3's `SlowDown`)
//! halves that bound (down to one), and a run of successes grows it back by one. Other
//! failures leave it alone: under random packet loss each TCP connection stalls on its own
//! retransmission timer, so parallel requests are what keeps a transfer moving, and
//! fewer of them only made a lossy link slower (issue 24: restores 4x slower than restic at
//! 30 % loss).
//!
//! A range read longer than [`PIECE`] goes as pieces of that size in parallel, each retried
//! on its own: under loss, one TCP connection spends most of its time waiting out its
//! retransmission timer (a 1.5 MB pack took 40 s at 30 % loss, as one request), while the
//! pieces' connections wait independently, and a lost connection costs one piece, not the
//! whole span. On a clean link the pieces cost a few more GET requests (a 16 MiB pack
//! restored whole is 32 instead of 4: $0.00001 at S3's prices) and download in parallel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Backend, BackendError, ObjectStat};

/// A range read larger than this goes as parallel pieces of this size.
pub const PIECE: u64 = 512 << 10;

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
            self.release(&result);
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

    /// A range read: one request up to [`PIECE`] bytes, else parallel pieces (see the
    /// module documentation).
    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        if len <= PIECE {
            return self.run("get_range", path, |b| b.get_range(path, offset, len));
        }
        let mut out = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        let piece = usize::try_from(PIECE).unwrap_or(usize::MAX);
        std::thread::scope(|s| {
            let pieces: Vec<_> = out
                .chunks_mut(piece)
                .enumerate()
                .map(|(i, buf)| {
                    let at = offset + i as u64 * PIECE;
                    s.spawn(move || {
                        let want = buf.len();
                        let bytes = self.run("piece", path, |b| match b.get_range(path, at, want as u64)? {
                            // copy_from_slice needs the exact length; a short answer is
                            // tried again, as any truncated answer.
                            bytes if bytes.len() == want => Ok(bytes),
                            bytes => Err(BackendError::Transient {
                                path: path.to_string(),
                                message: format!("truncated answer: {} of {want} bytes", bytes.len()),
                            }),
                        })?;
                        buf.copy_from_slice(&bytes);
                        Ok(())
                    })
                })
                .collect();
            pieces.into_iter().try_for_each(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        })?;
        Ok(out)
    }

    fn acquire(&self) {
        let mut l = lock(&self.limiter);
        while l.in_flight >= l.limit {
            l = self.freed.wait(l).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        l.in_flight += 1;
    }

    fn release<T>(&self, result: &Result<T, BackendError>) {
        let failed = matches!(result, Err(e) if e.is_transient());
        let mut l = lock(&self.limiter);
        l.in_flight -= 1;
        if matches!(result, Err(BackendError::Throttled { .. })) {
            l.limit = (l.limit / 2).max(1);
            l.successes = 0;
        } else if !failed {
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
        self.read_range(path, offset, len)
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

    fn throttled(path: &str) -> BackendError {
        BackendError::Throttled { path: path.into(), message: "SlowDown".into() }
    }

    #[test]
    fn slow_down_answers_halve_the_operations_in_flight_and_successes_restore_them() {
        let b = Retrying::new(Flaky::new(2, throttled), fast(10_000));
        assert_eq!(b.current_limit(), 4);
        b.put("a", b"x").unwrap();
        assert_eq!(b.current_limit(), 1);
        for _ in 0..200 {
            b.get("a").unwrap();
        }
        assert_eq!(b.current_limit(), 4);
    }

    #[test]
    fn lost_connections_keep_the_operations_in_flight() {
        // Random packet loss: fewer parallel requests would only make it slower.
        let b = Retrying::new(Flaky::new(3, transient), fast(10_000));
        b.put("a", b"x").unwrap();
        assert_eq!(b.retries(), 3);
        assert_eq!(b.current_limit(), 4);
    }

    /// Records the length of every range read; the first `fail_first` fail as transient.
    struct Ranges {
        inner: MemoryBackend,
        fail_first: AtomicUsize,
        lens: Mutex<Vec<u64>>,
    }

    impl Backend for Ranges {
        fn location(&self) -> String {
            "ranges".into()
        }
        fn put(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
            self.inner.put(path, bytes)
        }
        fn replace(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
            self.inner.replace(path, bytes)
        }
        fn get(&self, path: &str) -> Result<Vec<u8>, BackendError> {
            self.inner.get(path)
        }
        fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
            lock(&self.lens).push(len);
            if self.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err(transient(path));
            }
            self.inner.get_range(path, offset, len)
        }
        fn size(&self, path: &str) -> Result<u64, BackendError> {
            self.inner.size(path)
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
            self.inner.list(prefix)
        }
        fn delete(&self, path: &str) -> Result<(), BackendError> {
            self.inner.delete(path)
        }
        fn stat(&self, path: &str) -> Result<ObjectStat, BackendError> {
            self.inner.stat(path)
        }
    }

    fn ranges(fail_first: usize) -> (Retrying<Ranges>, Vec<u8>) {
        let bytes: Vec<u8> = (0..(PIECE * 5 + 1234)).map(|i| (i * 7 % 251) as u8).collect();
        let inner =
            Ranges { inner: MemoryBackend::new(), fail_first: AtomicUsize::new(fail_first), lens: Mutex::default() };
        inner.put("packs/p", &bytes).unwrap();
        (Retrying::new(inner, fast(10_000)), bytes)
    }

    #[test]
    fn a_short_range_is_one_request() {
        let (b, bytes) = ranges(0);
        assert_eq!(b.get_range("packs/p", 7, PIECE).unwrap(), &bytes[7..7 + PIECE as usize]);
        assert_eq!(*lock(&b.inner().lens), vec![PIECE]);
    }

    #[test]
    fn a_long_range_is_read_in_pieces_each_retried_alone() {
        // One piece fails twice: the bytes are still the object's, each request at most
        // one piece long, and only the failed piece is asked again.
        let (b, bytes) = ranges(2);
        let len = PIECE * 4 + 100;
        assert_eq!(b.get_range("packs/p", 7, len).unwrap(), &bytes[7..7 + len as usize]);
        let lens = lock(&b.inner().lens).clone();
        assert!(lens.iter().all(|&l| l <= PIECE), "{lens:?}");
        assert_eq!(lens.len(), 5 + 2, "{lens:?}");
        let again = lens.iter().sum::<u64>() - len;
        assert!(again == 2 * PIECE || again == PIECE + 100 || again == 200, "{lens:?}");
        assert_eq!(b.retries(), 2);
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
