//! Conversions between file-system metadata and the store's [`Metadata`].

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use bakare_store::{Extra, Metadata, Node, Xattr};

/// The store's metadata of an `lstat` result.
pub fn metadata_of(m: &fs::Metadata) -> Metadata {
    Metadata {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
    }
}

/// The tree format 2 part of an `lstat` result, with the entry's extended attributes.
pub fn extra_of(m: &fs::Metadata, xattrs: Vec<Xattr>, devices: &crate::Devices) -> Extra {
    Extra {
        ctime_ns: m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
        btime_ns: btime_of(m),
        link: link_group(m, devices),
        xattrs,
    }
}

/// The birth time, where the file system keeps it (ns since the Unix epoch).
pub fn btime_of(m: &fs::Metadata) -> Option<i64> {
    m.created().ok().map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    })
}

/// A file's hard-link group: nonzero when it has more than one link, the same for every
/// name of one inode (device and inode number, hashed; never 0).
pub fn link_group(m: &fs::Metadata, devices: &crate::Devices) -> u64 {
    if m.is_dir() || m.nlink() < 2 {
        return 0;
    }
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&devices.normal(m.dev()).to_le_bytes());
    bytes[8..].copy_from_slice(&m.ino().to_le_bytes());
    let h = blake3::hash(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(first).max(1)
}

/// The node of an entry that is neither a file, a folder nor a symlink.
pub(crate) fn special_node(m: &fs::Metadata) -> Node {
    let ft = m.file_type();
    if ft.is_fifo() {
        Node::Fifo
    } else if ft.is_socket() {
        Node::Socket
    } else if ft.is_char_device() {
        Node::CharDevice { rdev: m.rdev() }
    } else {
        Node::BlockDevice { rdev: m.rdev() }
    }
}
