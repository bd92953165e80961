//! The watching process: reads events, keeps the dirty set, answers backups.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::fanotify::{Change, Fanotify};
use super::{DATABASE, Request, SOCKET, Status, SyncReply, is_under, receive, send};

/// Folder path -> generations (u64 LE each) of its last change, of its last appearance and
/// of its last change not said of one entry.
const DIRTY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dirty");
/// `folder path || 0x00 || entry name` -> generation of the entry's last change (u64 LE).
const NAMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("names");

/// Past this many folders the set is dropped and its floor raised: a backup then walks
/// everything once, and the daemon's disk use stays bounded.
const MAX_DIRTY: u64 = 2_000_000;

/// How often the mount table is read for filesystems mounted or unmounted under a root.
const MOUNT_CHECK: Duration = Duration::from_secs(2);

/// What `bakare watch` is told.
pub struct WatchOptions {
    pub roots: Vec<PathBuf>,
    /// The cache folder's `watch` folder: socket and database.
    pub folder: PathBuf,
    /// Set (by a signal handler) to stop.
    pub stop: Arc<AtomicBool>,
    /// Where lines for the user go.
    pub log: Box<dyn Fn(&str) + Send>,
}

fn err(kind: ErrorKind, msg: String) -> std::io::Error {
    std::io::Error::new(kind, msg)
}

fn db_err(e: impl std::fmt::Display) -> std::io::Error {
    err(ErrorKind::Other, format!("the watch database: {e}"))
}

struct State {
    db: Database,
    fan: Fanotify,
    roots: Vec<Vec<u8>>,
    epoch: [u8; 16],
    epoch_since_ns: i64,
    generation: u64,
    floor: u64,
    links: u64,
    events: u64,
    breaks: Vec<String>,
    last_backup_ns: i64,
    mounts: BTreeSet<(Vec<u8>, String)>,
    /// The daemon's own folder (socket and database), whose changes are not recorded.
    own: Vec<u8>,
    /// Commits since the last durable one (redb frees pages only after a durable commit).
    lazy_commits: u32,
}

/// Mount points under any of `roots`, with their device numbers, from the mount table.
fn mounts_under(roots: &[Vec<u8>]) -> BTreeSet<(Vec<u8>, String)> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else { return BTreeSet::new() };
    let mut out = BTreeSet::new();
    for line in text.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) else { continue };
        let point = unescape(point);
        if roots.iter().any(|r| is_under(&point, r)) {
            out.insert((point, String::from_utf8_lossy(dev).into_owned()));
        }
    }
    out
}

/// A mount table field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&b) = field.get(i) {
        if b == b'\\'
            && let Some(oct) = field.get(i + 1..i + 4)
            && let Ok(s) = std::str::from_utf8(oct)
            && let Ok(v) = u8::from_str_radix(s, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

impl State {
    /// A new epoch: the set is emptied, and no earlier backup can use what follows.
    fn new_epoch(&mut self, why: Option<String>) -> std::io::Result<()> {
        self.epoch = bakare_store::Session::new_id().map_err(|e| err(ErrorKind::Other, e.to_string()))?;
        self.epoch_since_ns = bakare_store::clock::now_ns();
        self.generation += 1;
        self.floor = self.generation;
        self.clear()?;
        if let Some(why) = why {
            self.breaks.push(why);
            if self.breaks.len() > 8 {
                self.breaks.remove(0);
            }
        }
        Ok(())
    }

    /// Empties the set.
    fn clear(&self) -> std::io::Result<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.delete_table(DIRTY).map_err(db_err)?;
        txn.delete_table(NAMES).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Marks every filesystem under the roots; a new epoch when the set of them changed.
    fn mark(&mut self, log: &dyn Fn(&str), first: bool) -> std::io::Result<()> {
        let mounts = mounts_under(&self.roots);
        if !first && mounts == self.mounts {
            return Ok(());
        }
        for root in &self.roots {
            self.fan.mark_filesystem(Path::new(std::ffi::OsStr::from_bytes(root)))?;
        }
        for (point, _) in &mounts {
            let path = Path::new(std::ffi::OsStr::from_bytes(point));
            // A mount point that cannot be marked (a pseudo filesystem, or gone again) leaves
            // its folders uncovered: the set then never stands for them.
            if let Err(e) = self.fan.mark_filesystem(path) {
                log(&format!("cannot watch {}: {e}", path.display()));
            }
        }
        self.mounts = mounts;
        if !first {
            self.new_epoch(Some("filesystems were mounted or unmounted under a watched folder".into()))?;
        }
        Ok(())
    }

    /// Reads every queued event and records it; returns how many.
    fn drain(&mut self) -> std::io::Result<u64> {
        let mut changes = Vec::new();
        let mut events = 0;
        let started = Instant::now();
        loop {
            let n = self.fan.read(&mut changes)?;
            events += n as u64;
            if n == 0 || started.elapsed() > Duration::from_millis(200) {
                break;
            }
        }
        if changes.is_empty() {
            return Ok(events);
        }
        self.events += events;
        self.apply(changes)?;
        Ok(events)
    }

    fn apply(&mut self, changes: Vec<Change>) -> std::io::Result<()> {
        if changes.contains(&Change::Overflow) {
            return self.new_epoch(Some("the kernel's event queue overflowed".into()));
        }
        // Only what is under a root, and not the daemon's own files (its database writes
        // would wake it again and again).
        let relevant = |p: &std::path::Path| {
            let p = p.as_os_str().as_bytes();
            self.roots.iter().any(|r| is_under(p, r)) && !is_under(p, &self.own)
        };
        let changes: Vec<Change> = changes
            .into_iter()
            .filter(|c| match c {
                Change::Folder(p) | Change::Entry(p, _) | Change::Subtree(p) | Change::Links(p) => relevant(p),
                Change::Overflow => false,
            })
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        self.generation += 1;
        let g = self.generation;
        let mut txn = self.db.begin_write().map_err(db_err)?;
        self.lazy_commits += 1;
        if self.lazy_commits < 64 {
            txn.set_durability(redb::Durability::None).map_err(db_err)?;
        } else {
            self.lazy_commits = 0;
        }
        let too_many = {
            let mut table = txn.open_table(DIRTY).map_err(db_err)?;
            let mut names = txn.open_table(NAMES).map_err(db_err)?;
            for c in changes {
                let (path, name, appeared) = match c {
                    Change::Folder(p) => (p, None, false),
                    Change::Entry(p, name) => (p, Some(name), false),
                    Change::Subtree(p) => (p, None, true),
                    Change::Links(_) => {
                        self.links = g;
                        continue;
                    }
                    Change::Overflow => continue,
                };
                let path = path.as_os_str().as_bytes();
                let old = table.get(path).map_err(db_err)?.map(|v| decode(v.value()));
                let [_, old_appeared, old_whole] = old.unwrap_or_default();
                let value = encode([
                    g,
                    if appeared { g } else { old_appeared },
                    if name.is_none() && !appeared { g } else { old_whole },
                ]);
                table.insert(path, value.as_slice()).map_err(db_err)?;
                if let Some(name) = name {
                    names.insert(name_key(path, &name).as_slice(), g.to_le_bytes().as_slice()).map_err(db_err)?;
                }
            }
            table.len().map_err(db_err)? + names.len().map_err(db_err)? > MAX_DIRTY
        };
        txn.commit().map_err(db_err)?;
        if too_many {
            self.clear()?;
            self.floor = self.generation;
        }
        Ok(())
    }

    fn sync(&mut self, paths: &[Vec<u8>], since: u64, probe: bool) -> std::io::Result<SyncReply> {
        self.drain()?;
        if !probe {
            self.last_backup_ns = bakare_store::clock::now_ns();
        }
        let uncovered = paths
            .iter()
            .find(|p| !self.roots.iter().any(|r| is_under(p, r)))
            .map(|p| format!("{} is not under a watched folder", String::from_utf8_lossy(p)));
        let mut folders = Vec::new();
        let mut named = Vec::new();
        let mut subtrees = Vec::new();
        if uncovered.is_none() {
            let txn = self.db.begin_read().map_err(db_err)?;
            let names = match txn.open_table(NAMES) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_err(e)),
            };
            match txn.open_table(DIRTY) {
                Ok(table) => {
                    for p in paths {
                        for item in table.range(p.as_slice()..).map_err(db_err)? {
                            let (k, v) = item.map_err(db_err)?;
                            let key = k.value();
                            if !key.starts_with(p) {
                                break;
                            }
                            if !is_under(key, p) {
                                continue;
                            }
                            let [changed, appeared, whole] = decode(v.value());
                            if whole > since || (changed > since && names.is_none()) {
                                folders.push(key.to_vec());
                            } else if changed > since
                                && let Some(names) = &names
                            {
                                let these = names_since(names, key, since)?;
                                if these.is_empty() {
                                    // Changed, and no name kept for it: every entry.
                                    folders.push(key.to_vec());
                                } else {
                                    named.push((key.to_vec(), these));
                                }
                            }
                            if appeared > since {
                                subtrees.push(key.to_vec());
                            }
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(db_err(e)),
            }
        }
        Ok(SyncReply {
            epoch: self.epoch,
            generation: self.generation,
            floor: self.floor,
            links: self.links,
            uncovered,
            folders,
            named,
            subtrees,
        })
    }

    fn status(&self) -> std::io::Result<Status> {
        let dirty = match self.db.begin_read().map_err(db_err)?.open_table(DIRTY) {
            Ok(t) => t.len().map_err(db_err)?,
            Err(_) => 0,
        };
        Ok(Status {
            pid: std::process::id(),
            source: "fanotify filesystem marks".into(),
            roots: self.roots.clone(),
            epoch_since_ns: self.epoch_since_ns,
            boot_id: boot_id(),
            generation: self.generation,
            dirty,
            events: self.events,
            breaks: self.breaks.clone(),
            last_backup_ns: self.last_backup_ns,
        })
    }

    fn serve(&mut self, mut conn: UnixStream) -> std::io::Result<()> {
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        match receive::<Request>(&mut conn)? {
            Request::Sync { paths, since, probe } => {
                let reply = self.sync(&paths, since, probe)?;
                send(&mut conn, &reply)
            }
            Request::Status => {
                let s = self.status()?;
                send(&mut conn, &s)
            }
        }
    }
}

fn encode(gens: [u64; 3]) -> [u8; 24] {
    let mut v = [0u8; 24];
    for (i, g) in gens.iter().enumerate() {
        v[i * 8..i * 8 + 8].copy_from_slice(&g.to_le_bytes());
    }
    v
}

/// A dirty set value; a part that is missing reads as 0.
fn decode(v: &[u8]) -> [u64; 3] {
    let part = |i: usize| v.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    [part(0), part(1), part(2)]
}

fn name_key(folder: &[u8], name: &[u8]) -> Vec<u8> {
    [folder, &[0], name].concat()
}

/// The names in `folder` changed after generation `since`.
fn names_since(
    names: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    folder: &[u8],
    since: u64,
) -> std::io::Result<Vec<Vec<u8>>> {
    let prefix = name_key(folder, b"");
    let mut out = Vec::new();
    for item in names.range(prefix.as_slice()..).map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        let Some(name) = k.value().strip_prefix(prefix.as_slice()) else { break };
        if decode(v.value())[0] > since {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// The error of a fanotify call, with what watching needs.
fn needs_root(e: std::io::Error) -> std::io::Error {
    err(
        e.kind(),
        format!(
            "{e}: watching needs fanotify filesystem marks (root, or CAP_SYS_ADMIN, on Linux 5.9 or later); \
             without a watcher every backup walks the whole tree, as it always did"
        ),
    )
}

/// This boot's id, as the kernel gives it.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Watches `roots` until `stop` is set.
pub fn run(opts: WatchOptions) -> std::io::Result<()> {
    let log = &*opts.log;
    let mut roots = Vec::new();
    for r in &opts.roots {
        let abs = std::fs::canonicalize(r).map_err(|e| err(e.kind(), format!("{}: {e}", r.display())))?;
        roots.push(abs.as_os_str().as_bytes().to_vec());
    }
    roots.sort();
    roots.dedup();
    std::fs::create_dir_all(&opts.folder)?;
    let _ = std::fs::set_permissions(&opts.folder, std::fs::Permissions::from_mode(0o700));
    let db = match Database::create(opts.folder.join(DATABASE)) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(err(
                ErrorKind::AddrInUse,
                format!("another `bakare watch` uses {} (see `bakare watch --status`)", opts.folder.display()),
            ));
        }
        Err(e) => return Err(db_err(e)),
    };
    let fan = Fanotify::new().map_err(needs_root)?;
    let mut state = State {
        db,
        fan,
        roots,
        epoch: [0; 16],
        epoch_since_ns: 0,
        generation: 0,
        floor: 0,
        links: 0,
        events: 0,
        breaks: Vec::new(),
        last_backup_ns: 0,
        mounts: BTreeSet::new(),
        own: std::fs::canonicalize(&opts.folder)?.as_os_str().as_bytes().to_vec(),
        lazy_commits: 0,
    };
    state.mark(log, true).map_err(needs_root)?;
    state.new_epoch(None)?;
    let socket = opts.folder.join(SOCKET);
    // Only a socket no daemon answers on is replaced (the database lock says none runs).
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| err(e.kind(), format!("{}: {e}", socket.display())))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let shown: Vec<String> = state.roots.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    log(&format!(
        "watching {} (fanotify filesystem marks); backups of these folders now list only what changed",
        shown.join(", ")
    ));
    let mut last_mount_check = Instant::now();
    while !opts.stop.load(Ordering::Relaxed) {
        let fan_fd = state.fan.as_fd();
        let mut fds = [
            rustix::event::PollFd::new(&fan_fd, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN),
        ];
        let timeout = rustix::event::Timespec { tv_sec: 0, tv_nsec: 500_000_000 };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let (events, clients) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if events {
            state.drain()?;
        }
        if clients {
            loop {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Err(e) = state.serve(conn) {
                            log(&format!("a client's request failed: {e}"));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if last_mount_check.elapsed() >= MOUNT_CHECK {
            last_mount_check = Instant::now();
            state.mark(log, false)?;
        }
    }
    let _ = std::fs::remove_file(&socket);
    log("stopped watching");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape(br"/mnt/my\040disk"), b"/mnt/my disk".to_vec());
        assert_eq!(unescape(br"/a\134b"), br"/a\b".to_vec());
        assert_eq!(unescape(br"/trailing\04"), br"/trailing\04".to_vec());
        assert_eq!(decode(&encode([5, 9, 2])), [5, 9, 2]);
        assert_eq!(decode(b"short"), [0, 0, 0]);
        assert_eq!(decode(&5u64.to_le_bytes()), [5, 0, 0]);
    }
}
