//! Retention: which snapshots a `forget` policy keeps, as restic decides it.
//!
//! Snapshots are grouped by host and paths. Within a group, newest first, each `keep_*` rule
//! keeps the newest snapshot of each of its last N periods (hours, days, ISO weeks, months,
//! years, in UTC) that has one; `keep_last` keeps the N newest. A snapshot kept by any rule
//! stays. Forgetting removes only the snapshot objects; `prune` reclaims the data.

use std::collections::BTreeMap;

use crate::Result;
use crate::format::snapshot::Snapshot;
use crate::ids::SnapshotId;
use crate::repo::Repository;

/// How many of each period to keep, and what else to keep. All empty keeps nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    /// Keep every snapshot at most this long before the newest of its group (restic's
    /// `--keep-within`: calendar years, months, days and hours).
    pub within: Option<Within>,
    /// Keep every snapshot that has all the tags of any one of these lists.
    pub tags: Vec<Vec<String>>,
}

/// A span of calendar time back from an instant, as restic's `1y2m3d4h`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Within {
    pub years: i64,
    pub months: i64,
    pub days: i64,
    pub hours: i64,
}

impl Within {
    /// Parses `1y2m3d4h` (any of the parts, in this order; `w` for weeks too).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let mut w = Self::default();
        let mut num = String::new();
        let mut any = false;
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: i64 = num.parse().map_err(|_| format!("{s:?}: expected a number before {c:?} (try 1y6m or 7d)"))?;
            num.clear();
            any = true;
            match c {
                'y' => w.years += n,
                'm' => w.months += n,
                'w' => w.days += 7 * n,
                'd' => w.days += n,
                'h' => w.hours += n,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use y, m, w, d, h)")),
            }
        }
        if !num.is_empty() || !any {
            return Err(format!("{s:?}: every number needs a unit (y, m, w, d, h), as in 1y6m or 7d"));
        }
        Ok(w)
    }

    /// The instant (seconds since the epoch, UTC) this span before `secs`: calendar years
    /// and months back (the day kept, clamped to the month's end), then days and hours.
    pub fn before(&self, secs: i64) -> i64 {
        let days = secs.div_euclid(86_400);
        let in_day = secs.rem_euclid(86_400);
        let (y, m, d) = crate::clock::civil(days);
        let months = y * 12 + (m - 1) - self.years * 12 - self.months;
        let (ny, nm) = (months.div_euclid(12), months.rem_euclid(12) + 1);
        let nd = d.min(days_in_month(ny, nm));
        let day = days_from_civil(ny, nm, nd) - self.days;
        day * 86_400 + in_day - self.hours * 3600
    }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm; the inverse of
/// [`crate::clock::civil`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One snapshot's fate, and the rules that keep it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    #[serde(serialize_with = "hex")]
    pub id: SnapshotId,
    pub keep: bool,
    pub reasons: Vec<&'static str>,
}

/// One group's decisions, newest first.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Group {
    pub host: String,
    pub paths: Vec<String>,
    pub decisions: Vec<Decision>,
}

/// Applies `policy` to each group of `snapshots` (host and paths).
pub fn plan(snapshots: &[(SnapshotId, Snapshot)], policy: &KeepPolicy) -> Vec<Group> {
    type Key = (String, Vec<Vec<u8>>);
    let mut groups: BTreeMap<Key, Vec<&(SnapshotId, Snapshot)>> = BTreeMap::new();
    for s in snapshots {
        groups.entry((s.1.host.clone(), s.1.paths.clone())).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|((host, paths), mut members)| {
            members.sort_by_key(|(id, s)| std::cmp::Reverse((s.time_ns, *id)));
            Group {
                host,
                paths: paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect(),
                decisions: decide(&members, policy),
            }
        })
        .collect()
}

fn hex<S: serde::Serializer>(id: &SnapshotId, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

type Bucket = fn(i64) -> i64;

fn decide(newest_first: &[&(SnapshotId, Snapshot)], policy: &KeepPolicy) -> Vec<Decision> {
    let rules: [(&'static str, usize, Bucket); 6] = [
        ("last", policy.last, |_| i64::MIN),
        ("hourly", policy.hourly, |t| t.div_euclid(3600)),
        ("daily", policy.daily, |t| t.div_euclid(86_400)),
        ("weekly", policy.weekly, |t| (t.div_euclid(86_400) + 3).div_euclid(7)),
        ("monthly", policy.monthly, |t| {
            let (y, m, _) = crate::clock::civil(t.div_euclid(86_400));
            y * 12 + m
        }),
        ("yearly", policy.yearly, |t| crate::clock::civil(t.div_euclid(86_400)).0),
    ];
    let mut left: Vec<usize> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
    let newest = newest_first.first().map(|(_, s)| s.time_ns.div_euclid(1_000_000_000));
    let since = policy.within.zip(newest).map(|(w, t)| w.before(t));
    newest_first
        .iter()
        .enumerate()
        .map(|(n, (id, s))| {
            let secs = s.time_ns.div_euclid(1_000_000_000);
            let mut reasons = Vec::new();
            for (i, (name, _, bucket)) in rules.iter().enumerate() {
                let Some(remaining) = left.get_mut(i) else { continue };
                if *remaining == 0 {
                    continue;
                }
                // keep-last: every snapshot is its own period.
                let b = if i == 0 { n as i64 } else { bucket(secs) };
                if last_bucket.get(i).copied().flatten() != Some(b) {
                    *remaining -= 1;
                    if let Some(lb) = last_bucket.get_mut(i) {
                        *lb = Some(b);
                    }
                    reasons.push(*name);
                }
            }
            if since.is_some_and(|since| secs >= since) {
                reasons.push("within");
            }
            if policy.tags.iter().any(|list| list.iter().all(|t| s.tags.contains(t))) {
                reasons.push("tag");
            }
            Decision { id: *id, keep: !reasons.is_empty(), reasons }
        })
        .collect()
}

/// Removes a snapshot: the mirror first, so that an interrupted forget leaves the snapshot
/// (which `verify --repair` gives a mirror again), never a lone mirror to restore it from.
pub fn remove_snapshot(repo: &Repository, id: &SnapshotId) -> Result<()> {
    repo.remove_snapshot(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, SnapshotStats};
    use bakare_crypto::Digest;

    #[test]
    fn keep_within_goes_back_in_calendar_time_from_the_newest() {
        let w = |s: &str| Within::parse(s).unwrap();
        for bad in ["", "7", "1x", "d", "1d2"] {
            assert!(Within::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(w("1y2m3d4h"), Within { years: 1, months: 2, days: 3, hours: 4 });
        assert_eq!(w("2w"), Within { days: 14, ..Within::default() });
        let day = 86_400;
        let at = |y, m, d| days_from_civil(y, m, d) * day;
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(at(2024, 2, 29) / day, 19_782);
        // One month before 31 March is the end of February.
        assert_eq!(w("1m").before(at(2024, 3, 31) + 5), at(2024, 2, 29) + 5);
        assert_eq!(w("1y").before(at(2024, 2, 29)), at(2023, 2, 28));
        assert_eq!(w("1d6h").before(at(2024, 1, 2)), at(2023, 12, 31) + 18 * 3600);
        // Snapshots on ten consecutive days: --keep-within 3d keeps the last four.
        let snaps: Vec<_> = (0..10u8).map(|i| snap(i, at(2024, 5, 1) + i64::from(i) * day, "a")).collect();
        let policy = KeepPolicy { within: Some(w("3d")), ..KeepPolicy::default() };
        assert_eq!(kept(&plan(&snaps, &policy)), [6, 7, 8, 9]);
    }

    #[test]
    fn keep_tag_keeps_what_has_every_tag_of_a_list() {
        let mut snaps: Vec<_> = (0..4u8).map(|i| snap(i, i64::from(i) * 86_400, "a")).collect();
        snaps[0].1.tags = vec!["release".into(), "v1".into()];
        snaps[1].1.tags = vec!["release".into()];
        snaps[2].1.tags = vec!["v1".into()];
        let lists = vec![vec!["release".to_string(), "v1".to_string()], vec!["keep".to_string()]];
        let policy = KeepPolicy { last: 1, tags: lists, ..KeepPolicy::default() };
        let groups = plan(&snaps, &policy);
        assert_eq!(kept(&groups), [0, 3]);
        assert_eq!(groups[0].decisions.last().unwrap().reasons, ["tag"]);
    }

    fn snap(n: u8, secs: i64, host: &str) -> (SnapshotId, Snapshot) {
        let s = Snapshot {
            time_ns: secs * 1_000_000_000,
            host: host.into(),
            user: String::new(),
            paths: vec![b"/data".to_vec()],
            tags: Vec::new(),
            root: BlobId(Digest([0; 32])),
            parent: None,
            stats: SnapshotStats::default(),
            program: String::new(),
            log: Vec::new(),
        };
        (SnapshotId(Digest([n; 32])), s)
    }

    fn kept(groups: &[Group]) -> Vec<u8> {
        let mut out: Vec<u8> =
            groups.iter().flat_map(|g| &g.decisions).filter(|d| d.keep).map(|d| d.id.0.0[0]).collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn civil_dates() {
        use crate::clock::civil;
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn keep_last_and_daily() {
        // Two snapshots a day for five days; day d at 08:00 and 20:00.
        let day = 86_400;
        let snaps: Vec<_> = (0..10u8)
            .map(|i| snap(i, 20_000 * day + i64::from(i / 2) * day + i64::from(i % 2) * 43_200 + 28_800, "a"))
            .collect();
        let groups = plan(&snaps, &KeepPolicy { last: 1, ..KeepPolicy::default() });
        assert_eq!(kept(&groups), [9]);
        // Daily keeps the last of each day: 9, 7, 5.
        let groups = plan(&snaps, &KeepPolicy { daily: 3, ..KeepPolicy::default() });
        assert_eq!(kept(&groups), [5, 7, 9]);
        let groups = plan(&snaps, &KeepPolicy { last: 2, daily: 3, ..KeepPolicy::default() });
        assert_eq!(kept(&groups), [5, 7, 8, 9]);
        assert_eq!(groups[0].decisions[0].reasons, ["last", "daily"]);
    }

    #[test]
    fn weekly_monthly_yearly_and_groups() {
        let day = 86_400;
        // Daily snapshots for 400 days from 2023-01-02 (a Monday, day 19_359).
        let snaps: Vec<_> = (0..400i64).map(|i| snap((i % 250) as u8, (19_359 + i) * day, "a")).collect();
        let weekly = plan(&snaps, &KeepPolicy { weekly: 4, ..KeepPolicy::default() });
        let days: Vec<i64> = weekly[0]
            .decisions
            .iter()
            .zip(snaps.iter().rev())
            .filter(|(d, _)| d.keep)
            .map(|(_, s)| s.1.time_ns / 1_000_000_000 / day - 19_359)
            .collect();
        // Day 399 is a Monday, alone in its week; each other kept one is the Sunday ending its week.
        assert_eq!(days, [399, 398, 391, 384]);
        let monthly = plan(&snaps, &KeepPolicy { monthly: 14, ..KeepPolicy::default() });
        assert_eq!(monthly[0].decisions.iter().filter(|d| d.keep).count(), 14);
        let yearly = plan(&snaps, &KeepPolicy { yearly: 5, ..KeepPolicy::default() });
        assert_eq!(yearly[0].decisions.iter().filter(|d| d.keep).count(), 2);
        // Another host is a group of its own.
        let mut both = snaps[..3].to_vec();
        both.push(snap(251, 19_359 * day, "b"));
        let groups = plan(&both, &KeepPolicy { last: 1, ..KeepPolicy::default() });
        assert_eq!(groups.len(), 2);
        assert_eq!(kept(&groups), [2, 251]);
    }
}
