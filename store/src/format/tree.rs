//! Tree blobs: one folder's listing. Stored as postcard bytes in a blob of kind `Tree`.
//!
//! Entries are sorted by name (bytes), so equal listings give equal bytes and equal ids:
//! an unchanged folder deduplicates like data.

use crate::ids::BlobId;
use crate::{Result, StoreError};

/// A folder listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

/// One name in a folder.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The name's raw bytes (Unix names need not be UTF-8).
    pub name: Vec<u8>,
    pub node: Node,
    pub meta: Metadata,
    /// Why this entry could not be backed up in full; its content is then absent.
    pub error: Option<String>,
}

/// What a name is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Node {
    /// A regular file: its size and content as a list of data blobs.
    File {
        size: u64,
        chunks: Vec<BlobId>,
    },
    /// A folder and its listing's tree blob.
    Dir {
        tree: BlobId,
    },
    Symlink {
        target: Vec<u8>,
    },
    Fifo,
    Socket,
    CharDevice {
        rdev: u64,
    },
    BlockDevice {
        rdev: u64,
    },
}

/// The metadata kept for every entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// Permission and special bits (the low 12 bits of `st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
}

impl Node {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Node::File { .. } => "file",
            Node::Dir { .. } => "dir",
            Node::Symlink { .. } => "symlink",
            Node::Fifo => "fifo",
            Node::Socket => "socket",
            Node::CharDevice { .. } => "chardev",
            Node::BlockDevice { .. } => "blockdev",
        }
    }
}

impl Tree {
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| StoreError::corrupt("tree", e.to_string()))
    }

    pub fn decode(name: &str, bytes: &[u8]) -> Result<Self> {
        let tree: Self = crate::format::object::decode_exact(name, bytes)?;
        let sorted = tree.entries.windows(2).all(|w| w.first().map(|a| &a.name) < w.get(1).map(|b| &b.name));
        let names_ok = tree
            .entries
            .iter()
            .all(|e| !e.name.is_empty() && !e.name.contains(&b'/') && e.name != b"." && e.name != b"..");
        if !sorted || !names_ok {
            return Err(StoreError::corrupt(name, "tree entries are unsorted, repeated or have unsafe names"));
        }
        Ok(tree)
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().and_then(|i| self.entries.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unsafe_names() {
        for bad in [&b".."[..], b"a/b", b"", b"."] {
            let t = Tree {
                entries: vec![Entry { name: bad.to_vec(), node: Node::Fifo, meta: Metadata::default(), error: None }],
            };
            assert!(Tree::decode("t", &t.encode().unwrap()).is_err());
        }
    }
}
