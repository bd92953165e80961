//! Device numbers as the memo and the trees record them.
//!
//! A filesystem snapshot (btrfs, LVM, ZFS) is a new device holding the same inodes as the
//! live filesystem it was taken of: same inode numbers, sizes and times. A backup read from
//! one records every file under the live device instead, so a backup from a fresh snapshot
//! reuses the memo of one from the live tree, and the other way round (restic#4092: tools
//! that key on the device read everything again).

/// Device numbers to record in place of others: `(seen, recorded)` pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    map: Vec<(u64, u64)>,
}

impl Devices {
    /// A file seen on device `seen` is recorded as on `recorded`.
    pub fn insert(&mut self, seen: u64, recorded: u64) {
        if seen != recorded && !self.map.iter().any(|&(s, _)| s == seen) {
            self.map.push((seen, recorded));
        }
    }

    /// The device to record for a file seen on `dev`.
    pub fn normal(&self, dev: u64) -> u64 {
        self.map.iter().find(|&&(s, _)| s == dev).map_or(dev, |&(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_device_is_recorded_as_the_live_one() {
        let mut d = Devices::default();
        d.insert(40, 7);
        d.insert(40, 9);
        d.insert(5, 5);
        assert_eq!(d.normal(40), 7);
        assert_eq!(d.normal(7), 7);
        assert_eq!(d.normal(5), 5);
        assert_eq!(d.normal(1), 1);
    }
}
