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

/// (year, month 1-12, day) of a day count since 1970-01-01, proleptic Gregorian (Howard
/// Hinnant's days-to-civil algorithm).
pub fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
