//! Conversions between file-system metadata and the store's [`Metadata`].

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use bakare_store::{Metadata, Node};

/// The store's metadata of an `lstat` result.
pub fn metadata_of(m: &fs::Metadata) -> Metadata {
    Metadata {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
    }
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
