//! Formatting for people: sizes, times, tables.

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS.get(unit).unwrap_or(&"B")) }
}

/// "1 snapshot", "2 snapshots": a count with its noun (`one` and `many` forms).
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `YYYY-MM-DD HH:MM:SS` in UTC from ns since the epoch.
pub fn time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = bakare_store::clock::civil(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `ns` as local time (the system's time zone, or `TZ`), with the zone's abbreviation;
/// UTC where the zone cannot be known.
pub fn local_time(ns: i64) -> String {
    let Ok(t) = jiff::Timestamp::from_nanosecond(i128::from(ns)) else { return time(ns) };
    t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::bytes(10), "10 B");
        assert_eq!(super::count(1u64, "snapshot", "snapshots"), "1 snapshot");
        assert_eq!(super::count(0u64, "file", "files"), "0 files");
        assert_eq!(super::count(2u64, "entry", "entries"), "2 entries");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::time(0), "1970-01-01 00:00:00");
        assert_eq!(super::time(1_700_000_000_000_000_000), "2023-11-14 22:13:20");
    }
}
