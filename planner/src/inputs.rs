//! Salsa inputs: what the walker saw, for the changed working set only.
//!
//! A folder whose files all matched the memo and whose subfolders are unchanged never becomes
//! an input: the walker resolves it straight to its tree id. Everything else is a
//! [`SourceDir`] whose [`Listing`] holds resolved children (memo hits, symlinks, unchanged
//! subfolders) beside pending ones ([`SourceFile`] to read, [`SourceDir`] to build).

use std::path::PathBuf;

use bakare_store::Digest;
use bakare_store::{Extra, Metadata, Node, Xattr};

/// What `lstat` says about a file, as far as change detection is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatFingerprint {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    /// A file with more than one name (hard links).
    pub linked: bool,
    /// What its tree entry takes from `lstat` besides (None: a memo record from before it
    /// was kept).
    pub owner: Option<Owner>,
}

/// What a tree entry takes from `lstat` beyond change detection: kept in the memo, so that
/// a watched backup writes an entry no event named without asking the filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub btime_ns: Option<i64>,
}

impl Owner {
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), btime_ns: crate::meta::btime_of(m) }
    }

    /// The tree entry's metadata of an entry with this owner, these times and xattrs (one
    /// with no other names: no hard-link group).
    pub fn entry(&self, mtime_ns: i64, ctime_ns: i64, xattrs: Vec<Xattr>) -> (Metadata, Extra) {
        let meta = Metadata { mode: self.mode, uid: self.uid, gid: self.gid, mtime_ns };
        (meta, Extra { ctime_ns, btime_ns: self.btime_ns, link: 0, xattrs })
    }
}

impl StatFingerprint {
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
            linked: m.nlink() > 1 && !m.is_dir(),
            owner: Some(Owner::of(m)),
        }
    }

    /// The fingerprint with its device as recorded (a filesystem snapshot's as the live one).
    pub fn on(self, devices: &crate::Devices) -> Self {
        Self { dev: devices.normal(self.dev), ..self }
    }

    /// Whether content read under `self` is still valid for a file now seen as `now`. ctime
    /// is left out on purpose: a chmod or chown changes metadata (taken fresh from every walk),
    /// not content.
    pub fn same_content(&self, now: &StatFingerprint) -> bool {
        self.size == now.size && self.mtime_ns == now.mtime_ns && self.ino == now.ino && self.dev == now.dev
    }
}

/// A file whose content must be read.
#[salsa::input(debug)]
pub struct SourceFile {
    #[returns(ref)]
    pub path: PathBuf,
    #[returns(copy)]
    pub fp: StatFingerprint,
    /// Hash of the chunk list the memo had for this path, if any: tells "changed" from "new".
    #[returns(copy)]
    pub previous: Option<Digest>,
    /// Its extended attributes, read by the walk (`None` with `--no-xattrs`): the memo
    /// record keeps them.
    #[returns(ref)]
    pub xattrs: Option<Vec<Xattr>>,
}

/// A folder with at least one pending child.
#[salsa::input(debug)]
pub struct SourceDir {
    #[returns(ref)]
    pub path: PathBuf,
    #[returns(ref)]
    pub listing: Listing,
}

/// A folder's children, sorted by name bytes, and why it could not be listed, if so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub children: Vec<Child>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub name: Vec<u8>,
    pub meta: Metadata,
    pub extra: Extra,
    pub kind: ChildKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildKind {
    /// Known without reading: a memo hit, a symlink, a special file, an unchanged folder.
    Resolved { node: Node, error: Option<String> },
    /// Content to read.
    File(SourceFile),
    /// A folder with changes below it.
    Dir(SourceDir),
}
