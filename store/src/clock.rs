//! Wall-clock time for sessions, snapshots and garbage collection. Tests move it with
//! `BAKARE_CLOCK_OFFSET_SECS` (for example 604800 for "a week passes"), so time-based
//! behaviour is tested without waiting.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, plus the test offset if set. `SystemTime` is the
/// realtime clock: it keeps counting while the machine sleeps.
pub fn now_ns() -> i64 {
    ns_of(SystemTime::now()).saturating_add(offset_secs().saturating_mul(1_000_000_000))
}

/// A system time as nanoseconds since the Unix epoch (0 before it).
pub fn ns_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// The shifted time when a test offset is set: a local repository then stamps its files
/// with it, so that the storage's clock and the test's clock agree.
pub fn shifted_now() -> Option<SystemTime> {
    let offset = offset_secs();
    if offset == 0 {
        return None;
    }
    let now = SystemTime::now();
    let shift = std::time::Duration::from_secs(offset.unsigned_abs());
    if offset > 0 { now.checked_add(shift) } else { now.checked_sub(shift) }
}

fn offset_secs() -> i64 {
    std::env::var("BAKARE_CLOCK_OFFSET_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}
