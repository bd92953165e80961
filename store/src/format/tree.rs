//! Tree blobs: one folder's listing. Stored as postcard bytes in a blob of kind `Tree`.
//!
//! Entries are sorted by name (bytes), so equal listings give equal bytes and equal ids:
//! an unchanged folder deduplicates like data.

use crate::ids::BlobId;
use crate::{Result, StoreError};

/// A folder listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tree {
    #[serde(deserialize_with = "entries")]
    pub entries: Vec<Entry>,
}

/// A tree's entries, in a list that ends the size of the folder. serde's own grows by
/// doubling from a cautious start, so a folder of 100,000 entries held room for 200,000
/// (34 MB instead of 17). This one doubles only up to the count the encoding states: a
/// corrupt count costs at most twice what was really decoded.
fn entries<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<Entry>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<Entry>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of tree entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<Entry>, A::Error> {
            let stated = seq.size_hint().unwrap_or(0);
            let mut v: Vec<Entry> = Vec::with_capacity(stated.min(4096));
            while let Some(e) = seq.next_element()? {
                if v.len() == v.capacity() {
                    v.reserve_exact(stated.saturating_sub(v.len()).min(v.len()).max(1));
                }
                v.push(e);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Entries)
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
    /// What format 1 trees did not keep (all default when read from one).
    pub extra: Extra,
}

/// An entry's metadata beyond [`Metadata`] (tree format 2).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extra {
    /// Status change time, ns since the Unix epoch (0: unknown, as in format 1 trees).
    pub ctime_ns: i64,
    /// Birth time, where the file system keeps it.
    pub btime_ns: Option<i64>,
    /// Nonzero for a file with more than one link: the entries of one snapshot with the same
    /// `link` were one inode, and a restore makes them one again (hard links).
    pub link: u64,
    /// Extended attributes (POSIX ACLs among them: `system.posix_acl_access` and
    /// `system.posix_acl_default`), sorted by name.
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// The first bytes of a format 2 tree's plaintext. A format 1 tree begins with its entry
/// count as a postcard varint, which cannot begin with these (nine continuation bytes then
/// 2 overflow a u64), so no format 1 tree is ever taken for a format 2 one.
const TREE_V2: [u8; 10] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 2];

/// Format 1 trees, read and never written.
#[derive(serde::Serialize, serde::Deserialize)]
struct TreeV1 {
    entries: Vec<EntryV1>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EntryV1 {
    name: Vec<u8>,
    node: Node,
    meta: Metadata,
    error: Option<String>,
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
    /// The plaintext of a format 2 tree blob: [`TREE_V2`] then postcard.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_extend(self, TREE_V2.to_vec()).map_err(|e| StoreError::corrupt("tree", e.to_string()))
    }

    /// Reads a tree blob of format 2, or of format 1 (its entries without [`Extra`]).
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Self> {
        let tree: Self = match bytes.strip_prefix(TREE_V2.as_slice()) {
            Some(body) => crate::format::object::decode_exact(name, body)?,
            None => {
                let v1: TreeV1 = crate::format::object::decode_exact(name, bytes)?;
                let entries = v1
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        name: e.name,
                        node: e.node,
                        meta: e.meta,
                        error: e.error,
                        extra: Extra::default(),
                    })
                    .collect();
                Self { entries }
            }
        };
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

    fn entry(name: &[u8]) -> Entry {
        Entry { name: name.to_vec(), node: Node::Fifo, meta: Metadata::default(), error: None, extra: Extra::default() }
    }

    #[test]
    fn a_large_folder_decodes_into_a_list_of_its_size() {
        let entries: Vec<Entry> = (0..10_000u32).map(|i| entry(format!("{i:08}").as_bytes())).collect();
        let t = Tree::decode("t", &Tree { entries }.encode().unwrap()).unwrap();
        assert_eq!((t.entries.len(), t.entries.capacity()), (10_000, 10_000));
    }

    #[test]
    fn refuses_unsafe_names() {
        for bad in [&b".."[..], b"a/b", b"", b"."] {
            let t = Tree { entries: vec![entry(bad)] };
            assert!(Tree::decode("t", &t.encode().unwrap()).is_err());
        }
    }

    #[test]
    fn format_1_trees_read_and_format_2_trees_keep_their_extras() {
        let v1 = TreeV1 {
            entries: vec![EntryV1 {
                name: b"a".to_vec(),
                node: Node::File { size: 3, chunks: vec![] },
                meta: Metadata { mode: 0o640, uid: 1, gid: 2, mtime_ns: 3 },
                error: None,
            }],
        };
        let old = Tree::decode("t", &postcard::to_stdvec(&v1).unwrap()).unwrap();
        assert_eq!(old.entries[0].meta.mode, 0o640);
        assert_eq!(old.entries[0].extra, Extra::default());
        let mut e = entry(b"b");
        e.extra = Extra {
            ctime_ns: 5,
            btime_ns: Some(4),
            link: 77,
            xattrs: vec![Xattr { name: b"user.k".to_vec(), value: vec![0, 1, 2] }],
        };
        let t = Tree { entries: vec![e] };
        let bytes = t.encode().unwrap();
        assert_eq!(Tree::decode("t", &bytes).unwrap(), t);
        // A format 2 tree is never read as a format 1 one.
        assert!(crate::format::object::decode_exact::<TreeV1>("t", &bytes).is_err());
        assert!(postcard::from_bytes::<TreeV1>(&TREE_V2).is_err());
    }
}
