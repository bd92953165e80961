//! Wall-clock time for sessions, snapshots and garbage collection. Tests move it with
//! `BAKARE_CLOCK_OFFSET_SECS` (for example 604800 for "a week passes"), so time-based
//! behaviour is tested without waiting.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, plus the test offset if set. `SystemTime` is the
/// realtime clock: it keeps counting while the machine sleeps.
pub fn now_ns() -> i64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    real.saturating_add(offset_secs().saturating_mul(1_000_000_000))
}

fn offset_secs() -> i64 {
    std::env::var("BAKARE_CLOCK_OFFSET_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}
