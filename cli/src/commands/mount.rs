//! `bakare mount MOUNTPOINT`: the repository's snapshots as a read-only file system (FUSE,
//! through `fuser`, mounted directly as root or through `fusermount` otherwise).
//!
//! ```text
//! MOUNTPOINT/snapshots/2026-12-07T03:30:10+01:00/home/me/...   one folder per snapshot (local time)
//! MOUNTPOINT/snapshots/latest -> the newest
//! MOUNTPOINT/ids/0a7ce264/...                           by id
//! MOUNTPOINT/hosts/HOST/2026-12-07T03:30:10+01:00/...         by host (and latest)
//! MOUNTPOINT/tags/TAG/2026-12-07T03:30:10+01:00/...           by tag
//! ```
//!
//! Everything is loaded when first looked at: a folder's tree when it is listed or a name in
//! it looked up, a file's chunk offsets (from the index: no blob read) when it is opened, its
//! chunks when read (the last chunk read is kept per open file, as the kernel reads 128 KiB at
//! a time).
//!
//! Memory stays within `--memory-limit` however large the snapshots: decoded trees are kept
//! most recently used first within an eighth of it, plus the largest one ([`Trees`]); an
//! inode the kernel looked up is a slot of about 100 bytes naming its folder and index, its
//! details read from the folder's tree when asked ([`Table`]), freed when the kernel forgets
//! it, and past a sixteenth of the limit the least recently used are handed back to the
//! kernel ([`SnapshotFs::trim`]); open files' last chunks take at most an eighth.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use bakare_store::{BlobId, Entry, Node, Repository, Tree};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

use crate::Outcome;
use crate::args::MountArgs;
use crate::context::Context;

/// How long the kernel may keep names and attributes: a snapshot never changes.
const TTL: Duration = Duration::from_secs(3600);

/// About what one looked-up inode costs the table: its slot and place, with the maps' spare
/// room (a folder's adds its tree's id).
const SLOT_BYTES: usize = 96;

/// An inode the mount makes up: the folders of snapshots, the `latest` links and each
/// snapshot's root. Kept for the whole mount (a few per snapshot).
enum Fixed {
    /// A made-up folder (snapshots/, hosts/HOST, ...): fixed children.
    Folder(Arc<Vec<(OsString, u64)>>),
    Link(Vec<u8>),
    /// A snapshot's root folder (its tree is in [`Table::folders`]).
    Root,
}

/// Where an inode comes from.
enum Place {
    /// Boxed: most slots are entries, which this would make three times larger.
    Fixed(Box<(Fixed, FileAttr)>),
    /// Entry `index` of the folder inode `parent` (whose tree is in [`Table::folders`]): its
    /// details are read from that tree (through [`Trees`]) each time they are needed.
    Entry { parent: u64, index: u32 },
}

/// One inode the kernel may name: 40 bytes, whatever the entry holds.
struct Slot {
    place: Place,
    /// Lookups answered and not yet forgotten by the kernel (a fixed inode ignores them).
    lookups: u64,
    /// Entry slots whose parent this is: a folder's slot outlives its children's.
    kids: u32,
    /// When it was last used (a tick of [`Table`]), for trimming.
    used: u64,
    /// The kernel was asked to drop its name (not again until it is looked up again: an
    /// open file keeps its inode).
    handed_back: bool,
}

/// The inodes the kernel holds. An entry's slot is made by `lookup` and freed when the
/// kernel forgets it; past [`Table::cap`] slots, the least recently used leaves are handed
/// back ([`SnapshotFs::trim`]), so the table stays within its share of `--memory-limit`
/// however many files are looked at.
struct Table {
    slots: HashMap<u64, Slot>,
    /// The slot of (parent, index), so that a name looked up twice is one inode.
    places: HashMap<(u64, u32), u64>,
    /// The tree each folder slot lists (folders are few beside files: kept apart).
    folders: HashMap<u64, BlobId>,
    next: u64,
    tick: u64,
    cap: usize,
}

impl Table {
    fn touch(&mut self, ino: u64) -> Option<&mut Slot> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.slots.get_mut(&ino)?;
        slot.used = tick;
        Some(slot)
    }

    fn add(&mut self, place: Place) -> u64 {
        self.next += 1;
        let ino = self.next;
        self.slots.insert(ino, Slot { place, lookups: 0, kids: 0, used: self.tick, handed_back: false });
        ino
    }

    /// Drops the lookups the kernel gave back; frees the slot (and parents left with no
    /// lookups and no children) once none are left.
    fn forget(&mut self, ino: u64, n: u64) {
        let mut ino = ino;
        let mut n = n;
        loop {
            let Some(slot) = self.slots.get_mut(&ino) else { return };
            slot.lookups = slot.lookups.saturating_sub(n);
            n = 0;
            let Place::Entry { parent, index } = slot.place else { return };
            if slot.lookups > 0 || slot.kids > 0 {
                return;
            }
            self.slots.remove(&ino);
            self.places.remove(&(parent, index));
            self.folders.remove(&ino);
            let Some(p) = self.slots.get_mut(&parent) else { return };
            p.kids = p.kids.saturating_sub(1);
            ino = parent;
        }
    }

    /// The slot of entry `index` of the folder `parent`, made if there is none (`lists`: the
    /// tree of a folder entry).
    fn slot_for(&mut self, parent: u64, index: u32, lists: Option<BlobId>) -> u64 {
        if let Some(&ino) = self.places.get(&(parent, index)) {
            return ino;
        }
        let ino = self.add(Place::Entry { parent, index });
        self.places.insert((parent, index), ino);
        if let Some(id) = lists {
            self.folders.insert(ino, id);
        }
        if let Some(p) = self.slots.get_mut(&parent) {
            p.kids += 1;
        }
        ino
    }

    /// Frees up to `n` of the least recently used slots the kernel does not hold (made by
    /// `readdir` for names never looked up), with nothing below them.
    fn drop_unheld(&mut self, n: usize) {
        let mut unheld: Vec<(u64, u64)> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.place, Place::Entry { .. }) && s.lookups == 0 && s.kids == 0)
            .map(|(&ino, s)| (s.used, ino))
            .collect();
        unheld.sort_unstable();
        for (_, ino) in unheld.into_iter().take(n) {
            self.forget(ino, 0);
        }
    }

    /// How many entry slots there are.
    fn entries(&self) -> usize {
        self.places.len()
    }
}

/// Decoded trees, most recently used kept, within their share of the memory limit; the
/// largest one is not counted (a folder being listed must be whole, and `ls -l` of a folder
/// larger than the share would otherwise decode it again for every name), nor is one in use.
struct Trees {
    map: HashMap<BlobId, (Arc<Tree>, usize, u64)>,
    by_use: BTreeMap<u64, BlobId>,
    bytes: usize,
    cap: usize,
    tick: u64,
}

impl Trees {
    fn get(&mut self, id: &BlobId) -> Option<Arc<Tree>> {
        self.tick += 1;
        let (tree, _, used) = self.map.get_mut(id)?;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, *id);
        Some(tree.clone())
    }

    /// A tree if it is kept, without counting as a use.
    fn peek(&self, id: &BlobId) -> Option<Arc<Tree>> {
        self.map.get(id).map(|v| v.0.clone())
    }

    fn put(&mut self, id: BlobId, tree: Arc<Tree>) {
        if self.map.contains_key(&id) {
            return;
        }
        self.tick += 1;
        let bytes = tree_bytes(&tree);
        self.bytes += bytes;
        self.map.insert(id, (tree, bytes, self.tick));
        self.by_use.insert(self.tick, id);
        if self.bytes <= self.cap {
            return;
        }
        let Some((&largest, &(_, largest_bytes, _))) = self.map.iter().max_by_key(|(_, v)| v.1) else { return };
        let mut over = self.bytes.saturating_sub(largest_bytes).saturating_sub(self.cap);
        let mut gone = Vec::new();
        for (&used, old) in &self.by_use {
            if over == 0 {
                break;
            }
            match self.map.get(old) {
                Some((t, b, _)) if *old != largest && Arc::strong_count(t) == 1 => {
                    over = over.saturating_sub(*b);
                    gone.push((used, *old));
                }
                _ => {}
            }
        }
        for (used, old) in gone {
            self.by_use.remove(&used);
            if let Some((_, b, _)) = self.map.remove(&old) {
                self.bytes -= b;
            }
        }
    }
}

/// About how much memory a decoded tree takes.
fn tree_bytes(t: &Tree) -> usize {
    let entry = |e: &Entry| {
        std::mem::size_of::<Entry>()
            + e.name.len()
            + e.error.as_ref().map_or(0, String::len)
            + match &e.node {
                Node::File { chunks, .. } => chunks.len() * std::mem::size_of::<BlobId>(),
                Node::Symlink { target } => target.len(),
                _ => 0,
            }
            + e.extra.xattrs.iter().map(|x| x.name.len() + x.value.len() + 48).sum::<usize>()
    };
    std::mem::size_of::<Tree>() + t.entries.iter().map(entry).sum::<usize>()
}

/// What an inode resolves to.
enum Found {
    Fixed(FileAttr),
    Entry(Arc<Tree>, usize),
}

/// A tree being decoded: the request that decodes it fills it, the others wait on it.
type Decoding = Arc<OnceLock<Result<Arc<Tree>, Errno>>>;

/// An open file: its chunks, where each starts, and the last chunk read.
struct Open {
    ino: u64,
    size: u64,
    chunks: Arc<[BlobId]>,
    starts: Arc<[u64]>,
    last: Option<(usize, Arc<Vec<u8>>)>,
}

struct SnapshotFs {
    repo: Repository,
    table: Mutex<Table>,
    trees: Mutex<Trees>,
    /// Trees being decoded, each once however many requests want it.
    loading: Mutex<HashMap<BlobId, Decoding>>,
    open: Mutex<HashMap<u64, Open>>,
    next_fh: AtomicU64,
    /// Set (and the condvar told) when the table is past its cap: the main thread trims.
    trim_wanted: (Mutex<bool>, std::sync::Condvar),
    /// Bytes of the open files' last chunks, kept within their share of the memory limit.
    held: AtomicUsize,
    held_cap: usize,
    uid: u32,
    gid: u32,
    /// `--xattrs`: answer extended attribute requests. Off, the first is refused as not
    /// supported and the kernel asks no more: `ls -l` asks for two per file, each a round
    /// trip (5 s instead of 0.2 s for 100,000 files, warm).
    xattrs: bool,
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_nanos(ns.unsigned_abs())).unwrap_or(UNIX_EPOCH)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SnapshotFs {
    fn folder_attr(&self, ino: u64, mtime: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn fixed(&self, what: Fixed, make_attr: impl FnOnce(u64) -> FileAttr) -> u64 {
        let mut t = lock(&self.table);
        let ino = t.next + 1;
        t.add(Place::Fixed(Box::new((what, make_attr(ino)))))
    }

    fn virtual_dir(&self, children: Vec<(OsString, u64)>, mtime: SystemTime) -> u64 {
        self.fixed(Fixed::Folder(Arc::new(children)), |ino| self.folder_attr(ino, mtime))
    }

    fn tree_dir(&self, id: BlobId, mtime: SystemTime) -> u64 {
        let ino = self.fixed(Fixed::Root, |ino| self.folder_attr(ino, mtime));
        lock(&self.table).folders.insert(ino, id);
        ino
    }

    /// A tree, decoded once and kept while it is used.
    /// A tree being decoded is waited for, not decoded again by another thread.
    fn tree(&self, id: &BlobId) -> Result<Arc<Tree>, Errno> {
        if let Some(t) = lock(&self.trees).get(id) {
            return Ok(t);
        }
        let cell = lock(&self.loading).entry(*id).or_default().clone();
        let made = cell
            .get_or_init(|| {
                let tree = self.repo.load_tree(id).map(Arc::new).map_err(|e| {
                    eprintln!("bakare mount: {e}");
                    Errno::EIO
                });
                if let Ok(t) = &tree {
                    lock(&self.trees).put(*id, t.clone());
                }
                tree
            })
            .clone();
        lock(&self.loading).remove(id);
        made
    }

    /// What `ino` is: a made-up inode's attributes, or an entry of a tree.
    fn find(&self, ino: u64) -> Result<Found, Errno> {
        let (parent_tree, index) = {
            let mut t = lock(&self.table);
            let Some(slot) = t.touch(ino) else { return Err(Errno::ENOENT) };
            match &slot.place {
                Place::Fixed(fixed) => return Ok(Found::Fixed(fixed.1)),
                &Place::Entry { parent, index } => {
                    (t.folders.get(&parent).copied().ok_or(Errno::ENOENT)?, index as usize)
                }
            }
        };
        let tree = self.tree(&parent_tree)?;
        if index >= tree.entries.len() {
            return Err(Errno::EIO);
        }
        Ok(Found::Entry(tree, index))
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        Ok(match self.find(ino)? {
            Found::Fixed(attr) => attr,
            Found::Entry(tree, i) => tree.entries.get(i).map(|e| self.entry_attr(ino, e)).ok_or(Errno::EIO)?,
        })
    }

    /// The attributes of one entry of a snapshot's tree.
    fn entry_attr(&self, ino: u64, e: &Entry) -> FileAttr {
        let m = &e.meta;
        let mtime = time_of(m.mtime_ns);
        let ctime = if e.extra.ctime_ns != 0 { time_of(e.extra.ctime_ns) } else { mtime };
        let crtime = e.extra.btime_ns.map_or(mtime, time_of);
        let (size, kind) = node_kind(&e.node);
        let rdev = match e.node {
            Node::CharDevice { rdev } | Node::BlockDevice { rdev } => u32::try_from(rdev).unwrap_or(0),
            _ => 0,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime,
            crtime,
            kind,
            perm: (m.mode & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: m.uid,
            gid: m.gid,
            rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The folder `ino` lists: made-up children, or a tree.
    fn listing(&self, ino: u64) -> Result<Listing, Errno> {
        let lists = {
            let mut t = lock(&self.table);
            let Some(slot) = t.touch(ino) else { return Err(Errno::ENOENT) };
            if let Place::Fixed(fixed) = &slot.place
                && let Fixed::Folder(children) = &fixed.0
            {
                return Ok(Listing::Made(children.clone()));
            }
            t.folders.get(&ino).copied().ok_or(Errno::ENOTDIR)?
        };
        Ok(Listing::Tree(self.tree(&lists)?))
    }

    /// The bytes of an open file's `chunk`-th chunk, through its one-chunk cache.
    fn chunk(&self, fh: u64, chunks: &[BlobId], i: usize) -> Result<Arc<Vec<u8>>, Errno> {
        if let Some(hit) = lock(&self.open).get(&fh).and_then(|f| f.last.clone()).filter(|l| l.0 == i) {
            return Ok(hit.1);
        }
        let id = chunks.get(i).ok_or(Errno::EIO)?;
        let data = Arc::new(self.repo.load_blob(id).map_err(|e| {
            eprintln!("bakare mount: {e}");
            Errno::EIO
        })?);
        if let Some(f) = lock(&self.open).get_mut(&fh) {
            if let Some((_, old)) = f.last.take() {
                self.held.fetch_sub(old.len(), Ordering::Relaxed);
            }
            // Kept only within the share of the memory limit: many files open at once
            // read each chunk anew rather than hold one chunk each.
            if self.held.fetch_add(data.len(), Ordering::Relaxed) + data.len() <= self.held_cap {
                f.last = Some((i, data.clone()));
            } else {
                self.held.fetch_sub(data.len(), Ordering::Relaxed);
            }
        }
        Ok(data)
    }

    /// When more entries are looked up than the table's share of the memory limit holds,
    /// asks the kernel to drop the least recently used names that have nothing below them;
    /// it then forgets their inodes (an open file or a folder in use stays). Sent from the
    /// mount's main thread, never from a request: the kernel locks the folder meanwhile.
    fn trim(&self, notifier: &fuser::Notifier) -> usize {
        // Not folders: the kernel unhashes a name it is told to drop even when it is in use,
        // and a process's working folder would then be gone from under it.
        let victims: Vec<(u64, BlobId, u32)> = {
            let mut t = lock(&self.table);
            if t.entries() <= t.cap {
                return 0;
            }
            // First what the kernel does not hold: freed here, nothing to tell it.
            let over = t.entries() - t.cap * 3 / 4;
            t.drop_unheld(over);
            if t.entries() <= t.cap * 3 / 4 {
                return 1;
            }
            let mut leaves: Vec<(u64, u64)> = t
                .slots
                .iter()
                .filter(|(ino, s)| {
                    matches!(s.place, Place::Entry { .. })
                        && s.kids == 0
                        && s.lookups > 0
                        && !s.handed_back
                        && !t.folders.contains_key(ino)
                })
                .map(|(&ino, s)| (s.used, ino))
                .collect();
            leaves.sort_unstable();
            let drop = t.entries() - t.cap * 3 / 4;
            let mut victims = Vec::new();
            for (_, ino) in leaves.into_iter().take(drop) {
                let Some(slot) = t.slots.get_mut(&ino) else { continue };
                slot.handed_back = true;
                let Place::Entry { parent, index } = slot.place else { continue };
                if let Some(&tree) = t.folders.get(&parent) {
                    victims.push((parent, tree, index));
                }
            }
            victims
        };
        let mut sent = 0;
        for (parent, tree, index) in victims {
            // Only from trees still decoded, and without counting as a use.
            let Some(tree) = lock(&self.trees).peek(&tree) else { continue };
            let Some(e) = tree.entries.get(index as usize) else { continue };
            if notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&e.name)).is_ok() {
                sent += 1;
            }
        }
        // The maps give back the room they grew into (the kernel's forgets for the names
        // just dropped come later: the next trim finds them gone).
        let mut t = lock(&self.table);
        if t.slots.capacity() > 2 * t.slots.len() + 1024 {
            t.slots.shrink_to_fit();
            t.places.shrink_to_fit();
            t.folders.shrink_to_fit();
        }
        sent
    }

    /// Wakes the main thread to trim when the table is past its cap.
    fn trim_if_over(&self, t: &Table) {
        if t.entries() > t.cap {
            let mut wanted = lock(&self.trim_wanted.0);
            if !*wanted {
                *wanted = true;
                self.trim_wanted.1.notify_one();
            }
        }
    }

    fn over_cap(&self) -> bool {
        let t = lock(&self.table);
        t.entries() > t.cap
    }

    /// Waits until the table wants trimming, or `timeout`.
    fn wait_for_trim(&self, timeout: Duration) {
        let wanted = lock(&self.trim_wanted.0);
        let (mut wanted, _) = self
            .trim_wanted
            .1
            .wait_timeout_while(wanted, timeout, |w| !*w)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *wanted = false;
    }
}

enum Listing {
    Made(Arc<Vec<(OsString, u64)>>),
    Tree(Arc<Tree>),
}

/// An entry's size and file type.
fn node_kind(node: &Node) -> (u64, FileType) {
    match node {
        Node::File { size, .. } => (*size, FileType::RegularFile),
        Node::Dir { .. } => (0, FileType::Directory),
        Node::Symlink { target } => (target.len() as u64, FileType::Symlink),
        Node::Fifo => (0, FileType::NamedPipe),
        Node::Socket => (0, FileType::Socket),
        Node::CharDevice { .. } => (0, FileType::CharDevice),
        Node::BlockDevice { .. } => (0, FileType::BlockDevice),
    }
}

/// The file system handed to `fuser`; the mount's main thread keeps the other handle (to trim).
struct Shared(Arc<SnapshotFs>);

impl std::ops::Deref for Shared {
    type Target = SnapshotFs;
    fn deref(&self) -> &SnapshotFs {
        &self.0
    }
}

impl Filesystem for Shared {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // A path through `latest` is resolved on every lookup: without this each is a
        // round trip (`ls -l` of 100,000 files took 5 s warm).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_CACHE_SYMLINKS);
        Ok(())
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: fuser::ReplyXattr) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let tree = match self.find(ino.0) {
            Ok(Found::Entry(tree, i)) => (tree, i),
            Ok(Found::Fixed(_)) => return reply.error(Errno::NO_XATTR),
            Err(e) => return reply.error(e),
        };
        let xattrs = tree.0.entries.get(tree.1).map(|e| e.extra.xattrs.as_slice()).unwrap_or_default();
        match xattrs.iter().find(|x| x.name == name.as_bytes()) {
            None => reply.error(Errno::NO_XATTR),
            Some(x) if size == 0 => reply.size(u32::try_from(x.value.len()).unwrap_or(u32::MAX)),
            Some(x) if x.value.len() > size as usize => reply.error(Errno::ERANGE),
            Some(x) => reply.data(&x.value),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let mut names = Vec::new();
        match self.find(ino.0) {
            Ok(Found::Entry(tree, i)) => {
                for x in tree.entries.get(i).map(|e| e.extra.xattrs.as_slice()).unwrap_or_default() {
                    names.extend_from_slice(&x.name);
                    names.push(0);
                }
            }
            Ok(Found::Fixed(_)) => {}
            Err(e) => return reply.error(e),
        }
        if size == 0 {
            reply.size(u32::try_from(names.len()).unwrap_or(u32::MAX));
        } else if names.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&names);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = match self.listing(parent.0) {
            Ok(Listing::Made(children)) => {
                let found = children.iter().find(|(n, _)| n == name).map(|(_, ino)| *ino);
                return match found.map(|ino| self.attr(ino)) {
                    Some(Ok(attr)) => reply.entry(&TTL, &attr, Generation(0)),
                    Some(Err(e)) => reply.error(e),
                    None => reply.error(Errno::ENOENT),
                };
            }
            Ok(Listing::Tree(tree)) => tree,
            Err(e) => return reply.error(e),
        };
        // Trees are sorted by name bytes.
        let Ok(i) = tree.entries.binary_search_by(|e| e.name.as_slice().cmp(name.as_bytes())) else {
            return reply.error(Errno::ENOENT);
        };
        let (Some(e), Ok(index)) = (tree.entries.get(i), u32::try_from(i)) else { return reply.error(Errno::EIO) };
        let lists = match &e.node {
            Node::Dir { tree } => Some(*tree),
            _ => None,
        };
        let ino = {
            let mut t = lock(&self.table);
            let ino = t.slot_for(parent.0, index, lists);
            if let Some(slot) = t.touch(ino) {
                slot.lookups += 1;
                slot.handed_back = false;
            }
            self.trim_if_over(&t);
            ino
        };
        reply.entry(&TTL, &self.entry_attr(ino, e), Generation(0));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.table).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let link = match lock(&self.table).slots.get(&ino.0).map(|s| &s.place) {
            Some(Place::Fixed(fixed)) if let Fixed::Link(target) = &fixed.0 => Some(target.clone()),
            _ => None,
        };
        if let Some(target) = link {
            return reply.data(&target);
        }
        match self.find(ino.0) {
            Ok(Found::Entry(tree, i)) => match tree.entries.get(i).map(|e| &e.node) {
                Some(Node::Symlink { target }) => reply.data(target),
                _ => reply.error(Errno::EINVAL),
            },
            Ok(Found::Fixed(_)) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (tree, i) = match self.find(ino.0) {
            Ok(Found::Entry(tree, i)) => (tree, i),
            Ok(Found::Fixed(_)) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        let Some(Node::File { size, chunks }) = tree.entries.get(i).map(|e| &e.node) else {
            return reply.error(Errno::EISDIR);
        };
        // Where each chunk starts, from the index (plaintext lengths): no blob is read.
        let mut starts = Vec::with_capacity(chunks.len());
        let mut at = 0u64;
        for id in chunks {
            starts.push(at);
            match self.repo.blob_location(id) {
                Some(loc) => at += u64::from(loc.entry.raw_len),
                None => {
                    eprintln!("bakare mount: blob {} is not in the index", id.to_hex());
                    return reply.error(Errno::EIO);
                }
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.open).insert(
            fh,
            Open {
                ino: ino.0,
                size: *size,
                chunks: Arc::from(chunks.as_slice()),
                starts: Arc::from(starts),
                last: None,
            },
        );
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((file_size, chunks, starts)) = lock(&self.open)
            .get(&fh.0)
            .filter(|f| f.ino == ino.0)
            .map(|f| (f.size, f.chunks.clone(), f.starts.clone()))
        else {
            return reply.error(Errno::EBADF);
        };
        let end = offset.saturating_add(u64::from(size)).min(file_size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            // The chunk holding `at`.
            let i = starts.partition_point(|&s| s <= at).saturating_sub(1);
            let data = match self.chunk(fh.0, &chunks, i) {
                Ok(d) => d,
                Err(e) => return reply.error(e),
            };
            let from = (at - starts.get(i).copied().unwrap_or(0)) as usize;
            let Some(piece) = data.get(from..) else { return reply.error(Errno::EIO) };
            if piece.is_empty() {
                break;
            }
            let take = piece.len().min((end - at) as usize);
            out.extend_from_slice(piece.get(..take).unwrap_or_default());
            at += take as u64;
        }
        reply.data(&out);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(f) = lock(&self.open).remove(&fh.0)
            && let Some((_, last)) = f.last
        {
            self.held.fetch_sub(last.len(), Ordering::Relaxed);
        }
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listing = match self.listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        // Offsets 0 and 1 are `.` and `..`; offset n + 2 is the n-th child.
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for i in start..2 {
            let name = if i == 0 { "." } else { ".." };
            if reply.add(ino, (i + 1) as u64, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let skip = start.saturating_sub(2);
        match listing {
            Listing::Made(children) => {
                for (n, (name, child)) in children.iter().enumerate().skip(skip) {
                    let kind = self.attr(*child).map_or(FileType::Directory, |a| a.kind);
                    if reply.add(INodeNo(*child), (n + 3) as u64, kind, name) {
                        break;
                    }
                }
            }
            Listing::Tree(tree) => {
                // Each name gets its slot now, so that `ls -i` (which reads these numbers)
                // and `stat` (which looks the name up) agree.
                let mut t = lock(&self.table);
                for (n, e) in tree.entries.iter().enumerate().skip(skip) {
                    let Ok(index) = u32::try_from(n) else { break };
                    let lists = match &e.node {
                        Node::Dir { tree } => Some(*tree),
                        _ => None,
                    };
                    let child = t.slot_for(ino.0, index, lists);
                    if reply.add(INodeNo(child), (n + 3) as u64, node_kind(&e.node).1, OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                self.trim_if_over(&t);
            }
        }
        reply.ok();
    }
}

/// A snapshot folder's name: its time in the local zone with the offset (as restic names
/// them), `-2`, `-3`... after equal ones.
fn names(times: &[i64]) -> Vec<String> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    times
        .iter()
        .map(|&ns| {
            let base = match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
                Ok(t) => t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                Err(_) => crate::output::time(ns).replace(' ', "T"),
            };
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 { base } else { format!("{base}-{n}") }
        })
        .collect()
}

pub fn run(ctx: &Context, a: &MountArgs) -> Result<Outcome> {
    // Before the passphrase is asked for: a missing mount point is the common mistake.
    let at = a.mountpoint.display();
    match std::fs::metadata(&a.mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("the mount point {at} is not a folder"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("the mount point {at} does not exist: make it first (mkdir -p '{at}')")
        }
        // A FUSE mount whose process was killed stays until unmounted.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) => {
            bail!("the mount point {at} is still mounted by a process that ended: unmount it first (umount '{at}')")
        }
        Err(e) => return Err(e).with_context(|| format!("the mount point {at}")),
    }
    let (repo, _) = ctx.open_master()?;
    let mut snaps = repo.snapshots()?.snapshots;
    let filter = a.filter.filter();
    snaps.retain(|(_, s)| filter.matches(s));
    snaps.sort_by_key(|(_, s)| s.time_ns);
    // Shares of --memory-limit: decoded trees an eighth (and the largest besides), the
    // inodes the kernel holds a sixteenth (about 100 bytes each), open files' last chunks an
    // eighth; the repository's own caches take theirs.
    let limit = usize::try_from(ctx.global.memory_limit.max(bakare_store::budget::MIN_LIMIT)).unwrap_or(usize::MAX);
    let fs = Arc::new(SnapshotFs {
        repo,
        table: Mutex::new(Table {
            slots: HashMap::new(),
            places: HashMap::new(),
            folders: HashMap::new(),
            next: 0,
            tick: 0,
            cap: (limit / 16 / SLOT_BYTES).max(1000),
        }),
        loading: Mutex::new(HashMap::new()),
        trees: Mutex::new(Trees { map: HashMap::new(), by_use: BTreeMap::new(), bytes: 0, cap: limit / 8, tick: 0 }),
        open: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
        trim_wanted: (Mutex::new(false), std::sync::Condvar::new()),
        held: AtomicUsize::new(0),
        held_cap: limit / 8,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        xattrs: a.xattrs,
    });
    let now = SystemTime::now();
    // The root is inode 1: made first, its children filled in below.
    let root = fs.virtual_dir(Vec::new(), now);
    let times: Vec<i64> = snaps.iter().map(|(_, s)| s.time_ns).collect();
    let folder_names = names(&times);
    // A view: the snapshots given, by time, with `latest` as a link to the newest.
    let view = |members: &[usize]| -> u64 {
        let mut children: Vec<(OsString, u64)> = members
            .iter()
            .filter_map(|&i| {
                let (_, s) = snaps.get(i)?;
                let name = folder_names.get(i)?.clone();
                Some((OsString::from(name), fs.tree_dir(s.root, time_of(s.time_ns))))
            })
            .collect();
        if let Some(&newest) = members.last()
            && let Some(name) = folder_names.get(newest)
        {
            let target = name.as_bytes().to_vec();
            let size = target.len() as u64;
            let ino = fs.fixed(Fixed::Link(target), |ino| FileAttr {
                kind: FileType::Symlink,
                perm: 0o777,
                size,
                nlink: 1,
                ..fs.folder_attr(ino, now)
            });
            children.push(("latest".into(), ino));
        }
        fs.virtual_dir(children, now)
    };
    let all: Vec<usize> = (0..snaps.len()).collect();
    let by_time = view(&all);
    let ids: Vec<(OsString, u64)> =
        snaps.iter().map(|(id, s)| (OsString::from(id.short()), fs.tree_dir(s.root, time_of(s.time_ns)))).collect();
    let ids = fs.virtual_dir(ids, now);
    let mut hosts: BTreeMap<String, Vec<usize>> = Default::default();
    let mut tags: BTreeMap<String, Vec<usize>> = Default::default();
    for (i, (_, s)) in snaps.iter().enumerate() {
        hosts.entry(s.host.clone()).or_default().push(i);
        for t in &s.tags {
            tags.entry(t.clone()).or_default().push(i);
        }
    }
    let hosts: Vec<(OsString, u64)> = hosts.iter().map(|(h, m)| (OsString::from(h), view(m))).collect();
    let hosts = fs.virtual_dir(hosts, now);
    let tags: Vec<(OsString, u64)> = tags.iter().map(|(t, m)| (OsString::from(t), view(m))).collect();
    let tags = fs.virtual_dir(tags, now);
    if let Some(Slot { place: Place::Fixed(fixed), .. }) = lock(&fs.table).slots.get_mut(&root) {
        fixed.0 = Fixed::Folder(Arc::new(vec![
            ("snapshots".into(), by_time),
            ("ids".into(), ids),
            ("hosts".into(), hosts),
            ("tags".into(), tags),
        ]));
    }
    let mountpoint: PathBuf = a.mountpoint.clone();
    let mut config = fuser::Config::default();
    config.mount_options.extend([
        MountOption::RO,
        MountOption::FSName("bakare".into()),
        MountOption::Subtype("bakare".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ]);
    config.n_threads = Some(4);
    let count = snaps.len();
    let session = fuser::spawn_mount(Shared(fs.clone()), &mountpoint, &config)
        .with_context(|| format!("mounting at {} (needs /dev/fuse, and root or fusermount)", mountpoint.display()))?;
    if !ctx.global.quiet {
        say!(
            "bakare: {} mounted at {} (read-only); Ctrl-C or `umount {}` ends it",
            crate::output::count(count as u64, "snapshot", "snapshots"),
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let notifier = session.notifier();
    // Until a signal, or until someone unmounts it.
    let stop = crate::interrupt::install();
    let canonical = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint.clone());
    let mut seen = false;
    let started = std::time::Instant::now();
    let mut checked = started;
    while stop.load(Ordering::Relaxed) == 0 {
        if checked.elapsed() >= Duration::from_millis(200) || !seen {
            checked = std::time::Instant::now();
            let now_mounted = mounted(&canonical);
            seen |= now_mounted;
            // Unmounted by someone else (after it was seen; the mount may take a moment).
            if !now_mounted && (seen || started.elapsed() > Duration::from_secs(10)) {
                break;
            }
        }
        fs.wait_for_trim(Duration::from_millis(200));
        if fs.trim(&notifier) == 0 && fs.over_cap() {
            // Over the cap with nothing to hand back (folders, open files): no use scanning
            // again at every lookup.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Unmounted here unless someone did already (then the error says so, and is moot).
    // Busy (a shell's folder in it, a file still open): detached, gone once they close.
    if session.umount_and_join().is_err()
        && mounted(&canonical)
        && let Err(e) = rustix::mount::unmount(&canonical, rustix::mount::UnmountFlags::DETACH)
    {
        say!("bakare: unmounting {}: {e}", mountpoint.display());
    }
    Ok(Outcome::Success)
}

/// Whether a bakare file system is mounted at `path`.
fn mounted(path: &std::path::Path) -> bool {
    bakare_planner::fs_snapshot::mounted_at(path, "fuse")
}
