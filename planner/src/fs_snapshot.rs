//! `--fs-snapshot`: read the sources from one instant of their filesystem.
//!
//! Before the walk, each source's btrfs subvolume (and every subvolume nested below a
//! source, unless excluded or `--one-file-system`) gets a read-only snapshot. Snapshots go
//! into `.bakare-fs-snapshots/` in the *top-level* subvolume of their filesystem, mounted
//! (`subvolid=5`) only in this process's mount namespace: a folder every component of whose
//! path is root's, so no user can swap a snapshot for another subvolume before it is deleted,
//! and nothing is added to the trees being backed up. In the private mount namespace (entered
//! by [`private_mount_namespace`] before the process has threads) each snapshot is
//! bind-mounted over the live path it was taken of, so the walk reads the snapshot under the
//! original paths and records those. Other filesystems mounted below a source, and the
//! folders bakare writes to (its cache, a local repository) when they lie in a source, are
//! bound again over the snapshot and read live (the log says so).
//!
//! A snapshot is a new device with the same inode numbers, sizes and times, so the walk
//! records its device as the live one ([`crate::Devices`]): a no-change backup from a fresh
//! snapshot reuses the memo.
//!
//! The snapshots are deleted when the backup ends. Before each is made, its filesystem and
//! name are written to a record of this process (`/var/lib/bakare/fs-snapshots/<pid>-<start
//! time>`), so that a backup killed with SIGKILL leaves a record: [`clean_stale`], run at the
//! start of a backup or resume as root, deletes the snapshots of records whose process is
//! gone. The mounts need no cleaning: a mount namespace ends with its last process.
//!
//! `/` itself cannot be read this way (a mount over the process's root is not seen by it): it
//! is refused with `btrfs` and read live with `auto`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Devices;

/// `statfs`'s `f_type` of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of every btrfs subvolume's root folder.
const BTRFS_SUBVOLUME_INO: u64 = 256;
/// The folder, in the top-level subvolume of each filesystem, that holds the snapshots (the
/// walk leaves out every folder of that name).
pub const SNAPSHOT_DIR: &str = ".bakare-fs-snapshots";
/// Where running backups record the snapshots they made.
pub const RECORD_DIR: &str = "/var/lib/bakare/fs-snapshots";
/// Where the top-level subvolumes are mounted, in the private namespace only.
const TOP_DIR: &str = "/var/lib/bakare/fs-snapshots/top";

/// What `--fs-snapshot` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read the live tree.
    Off,
    /// A snapshot where the source's filesystem can make one; the live tree elsewhere.
    Auto,
    /// A btrfs snapshot of every source, or no backup.
    Btrfs,
}

impl Mode {
    /// Parses `off`, `auto` or `btrfs` (the empty string is `off`).
    pub fn parse(s: &str) -> Result<Self, FsSnapshotError> {
        match s {
            "" | "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            "btrfs" => Ok(Self::Btrfs),
            other => Err(FsSnapshotError::Mode(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsSnapshotError {
    #[error("--fs-snapshot {0:?}: expected auto, btrfs or off (LVM and ZFS snapshots are not supported yet)")]
    Mode(String),
    #[error("--fs-snapshot btrfs: {0} is not on a btrfs filesystem")]
    NotBtrfs(PathBuf),
    #[error(
        "--fs-snapshot: cannot find the btrfs subvolume that holds {0} (the folder above it is another filesystem \
         and it is no subvolume's root: a bind mount of a folder inside a subvolume?); give the subvolume's path"
    )]
    NoSubvolume(PathBuf),
    #[error(
        "--fs-snapshot btrfs: {0} is the root folder, which a snapshot mounted over it would not hide from this \
         process; back up the folders below it, or use --fs-snapshot auto to read it live"
    )]
    Root(PathBuf),
    #[error("--fs-snapshot: {0} must be a folder of root's that only root can write (it holds the snapshots)")]
    Unsafe(PathBuf),
    #[error("--fs-snapshot: {what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("--fs-snapshot: `{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error(
        "--fs-snapshot needs its own mount namespace, which this process could not enter ({0}); it needs root \
         (CAP_SYS_ADMIN)"
    )]
    Namespace(String),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> FsSnapshotError {
    let what = what.to_string();
    move |cause| FsSnapshotError::Io { what, cause }
}

/// Moves this process into a mount namespace of its own whose mounts do not propagate back
/// (`unshare(CLONE_NEWNS)`, then `/` made recursively a slave). Must be called while the
/// process has one thread: a namespace is per thread, and only threads started afterwards
/// share it. Refuses (without unsharing) when there are more.
#[allow(unsafe_code)]
pub fn private_mount_namespace() -> Result<(), FsSnapshotError> {
    let threads = fs::read_dir("/proc/self/task").map(Iterator::count).unwrap_or(0);
    if threads != 1 {
        return Err(FsSnapshotError::Namespace(format!("{threads} threads run already")));
    }
    // SAFETY: only CLONE_NEWNS is unshared (with the CLONE_FS it implies), not the file
    // table, and the process has one thread (checked above), so no other thread can observe
    // a difference.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(|e| FsSnapshotError::Namespace(e.to_string()))?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::DOWNSTREAM | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|e| FsSnapshotError::Namespace(format!("making / a slave mount: {e}")))
}

/// How far before a snapshot a file's ctime must be for its live metadata to stand for the
/// snapshot's.
const CUT_MARGIN_NS: i64 = 1_000_000_000;

/// Where a folder read from a snapshot can also be reached live, and since when a file seen
/// live is as the snapshot holds it.
///
/// Reading a fresh snapshot costs the kernel a new inode for every file: a no-change backup
/// of 100,000 files from one took 2.5 times as long as from the live tree, all of it in the
/// kernel. Yet a file whose live inode is the one the snapshot lists, and whose status
/// change time is older than the snapshot, has not changed since (a change to its data or
/// metadata moves ctime, which nothing can set back): its live metadata is the snapshot's.
/// So the walk lists each folder from the snapshot (one new inode per folder), takes each
/// entry's metadata live where that holds ([`Live::unchanged`]), and reads from the
/// snapshot the metadata of what changed and the contents of what it reads.
#[derive(Clone, Debug, Default)]
pub struct LiveViews {
    /// Bind targets: a snapshot's live folder, or `None` for a folder bound live.
    roots: Vec<(PathBuf, Option<Live>)>,
}

impl LiveViews {
    /// Whether no folder is read from a filesystem snapshot.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// For a folder the walk enters at `path`: `Some` when a snapshot (with its live
    /// folder) or a live filesystem is mounted there, `None` when it is as its parent.
    pub fn at(&self, path: &Path) -> Option<Option<Live>> {
        self.roots.iter().find(|(p, _)| p == path).map(|(_, l)| l.clone())
    }
}

/// The live folder behind one folder of a snapshot.
#[derive(Clone, Debug)]
pub struct Live {
    dir: std::sync::Arc<rustix::fd::OwnedFd>,
    /// A file whose ctime (ns) is older than this was as it is now when the snapshot was taken.
    cut_ns: i64,
    /// The live subvolume's device.
    dev: u64,
    clock: std::sync::Arc<ClockCheck>,
}

/// The system clock since the snapshots were taken: stepped back (by NTP at boot, by hand),
/// a file changed since could have a ctime older than the cut, so live views end.
#[derive(Debug)]
struct ClockCheck {
    wall: std::time::SystemTime,
    steady: std::time::Instant,
}

impl ClockCheck {
    fn new() -> Self {
        Self { wall: std::time::SystemTime::now(), steady: std::time::Instant::now() }
    }

    /// Whether the wall clock has advanced with the steady one, within half a second (a
    /// slewed clock never goes back; suspend only moves the wall clock ahead).
    fn sane(&self) -> bool {
        let steady = self.steady.elapsed();
        clock_sane(std::time::SystemTime::now().duration_since(self.wall).ok(), steady)
    }
}

/// Whether `wall` (the wall clock's advance, `None` if it went back past its start) kept up
/// with `steady` within half a second.
fn clock_sane(wall: Option<std::time::Duration>, steady: std::time::Duration) -> bool {
    wall.is_some_and(|wall| wall + std::time::Duration::from_millis(500) >= steady)
}

/// Now, in ns since the epoch, by the system clock.
fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl Live {
    fn stands_for(&self, m: &fs::Metadata, ino: u64) -> bool {
        let ctime = m.ctime().checked_mul(1_000_000_000).and_then(|s| s.checked_add(m.ctime_nsec()));
        m.ino() == ino && m.dev() == self.dev && ctime.is_some_and(|c| c < self.cut_ns)
    }

    /// The live folder's entries, read once (their metadata is then an `fstatat` each);
    /// `None` once the system clock has gone back.
    pub fn listing(&self) -> Option<LiveListing> {
        if !self.clock.sane() {
            return None;
        }
        use std::os::fd::AsRawFd as _;
        let mut entries: Vec<(std::ffi::OsString, fs::DirEntry)> =
            fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))
                .map(|d| d.flatten().map(|e| (e.file_name(), e)).collect())
                .unwrap_or_default();
        entries.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
        Some(LiveListing { live: self.clone(), entries })
    }

    /// The live folder `name`, when it is the snapshot's folder `ino` (its entries may have
    /// changed: each is checked on its own).
    pub fn enter(&self, name: &std::ffi::OsStr, ino: u64) -> Option<Live> {
        let fd = rustix::fs::openat(
            &*self.dir,
            name,
            rustix::fs::OFlags::PATH
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        (st.st_ino == ino && st.st_dev == self.dev).then(|| Live { dir: std::sync::Arc::new(fd), ..self.clone() })
    }
}

/// A live folder's entries, by name.
pub struct LiveListing {
    live: Live,
    entries: Vec<(std::ffi::OsString, fs::DirEntry)>,
}

impl LiveListing {
    /// The live metadata of the regular file `name`, when it is the snapshot's inode `ino`
    /// unchanged since the snapshot was taken. Only files: what else a folder, link or
    /// device holds (extended attributes, a target) would be read by name after this check,
    /// and could be another's by then; those come from the snapshot, whose inode a folder
    /// costs anyway when it is listed.
    pub fn unchanged(&self, name: &std::ffi::OsStr, ino: u64) -> Option<fs::Metadata> {
        let i = self.entries.binary_search_by(|(n, _)| n.as_encoded_bytes().cmp(name.as_encoded_bytes())).ok()?;
        let m = self.entries.get(i)?.1.metadata().ok()?;
        (m.is_file() && self.live.stands_for(&m, ino)).then_some(m)
    }

    pub fn live(&self) -> &Live {
        &self.live
    }
}

/// The filesystem snapshots a backup reads from, mounted over their live paths in this
/// process's mount namespace; deleted on drop.
#[derive(Debug, Default)]
pub struct FsSnapshots {
    /// Snapshots made, in order.
    taken: Vec<Taken>,
    /// Mount points this process mounted on, in order (the top-level subvolumes first).
    mounted: Vec<PathBuf>,
    /// The top-level subvolumes mounted: filesystem (its device) and mount point.
    tops: Vec<(String, PathBuf)>,
    /// This process's record file.
    record: Option<PathBuf>,
    /// Snapshot devices to record as the live ones.
    pub devices: Devices,
    /// The live folders behind the snapshots, where a walk takes what has not changed.
    pub live: LiveViews,
    /// What was read from where, for the snapshot's log.
    pub log: Vec<String>,
}

/// A snapshot made: its path (through the top-level mount).
#[derive(Debug)]
struct Taken {
    path: PathBuf,
}

/// A subvolume to snapshot.
struct Subvolume {
    /// Its root in this namespace.
    path: PathBuf,
    dev: u64,
    /// The device of its filesystem (mountinfo's source).
    device: String,
}

/// What [`FsSnapshots::take`] is told besides the sources.
pub struct TakeOptions<'a> {
    pub mode: Mode,
    /// `--one-file-system`: nested subvolumes are cut from the walk, so not snapshotted.
    pub one_file_system: bool,
    /// Whether the walk leaves a folder out (its nested subvolume is not snapshotted).
    pub excluded: &'a dyn Fn(&Path) -> bool,
    /// Folders bakare writes to (cache, local repository): where they lie in a source they
    /// stay live.
    pub keep_live: &'a [PathBuf],
}

impl FsSnapshots {
    /// Snapshots the subvolumes holding `sources` (absolute, canonical) and mounts each over
    /// its live path. With [`Mode::Off`], does nothing. The caller entered a private mount
    /// namespace first. With [`Mode::Auto`], a source that cannot be snapshotted is read live,
    /// and if any snapshot fails, every source is (the log says why).
    pub fn take(sources: &[PathBuf], o: &TakeOptions<'_>) -> Result<Self, FsSnapshotError> {
        if o.mode == Mode::Off {
            return Ok(Self::default());
        }
        match Self::try_take(sources, o) {
            Err(e) if o.mode == Mode::Auto => {
                let mut live = Self::default();
                live.log.push(format!("fs-snapshot: every source read live: {e}"));
                Ok(live)
            }
            other => other,
        }
    }

    fn try_take(sources: &[PathBuf], o: &TakeOptions<'_>) -> Result<Self, FsSnapshotError> {
        let mut this = Self::default();
        let mut sources = sources.to_vec();
        sources.sort();
        sources.dedup();
        let mounts = mount_info()?;
        // The subvolume of each source, and the source's path inside it.
        let mut roots: Vec<Subvolume> = Vec::new();
        let mut binds: Vec<(PathBuf, usize, PathBuf)> = Vec::new(); // (target, subvolume, path inside)
        let live = |this: &mut Self, source: &Path, why: &str| {
            this.log.push(format!("fs-snapshot: {} read live ({why})", source.display()));
        };
        for source in &sources {
            if source.parent().is_none() {
                if o.mode == Mode::Btrfs {
                    return Err(FsSnapshotError::Root(source.clone()));
                }
                live(&mut this, source, "the root folder cannot be read from a snapshot");
                continue;
            }
            if !on_btrfs(source)? {
                if o.mode == Mode::Btrfs {
                    return Err(FsSnapshotError::NotBtrfs(source.clone()));
                }
                live(&mut this, source, "not on btrfs");
                continue;
            }
            let root = match subvolume_root(source, &mounts)? {
                Some(r) => r,
                None if o.mode == Mode::Auto => {
                    live(&mut this, source, "its subvolume is not reachable");
                    continue;
                }
                None => return Err(FsSnapshotError::NoSubvolume(source.clone())),
            };
            let index = match roots.iter().position(|s| s.path == root.path) {
                Some(i) => i,
                None => {
                    roots.push(root);
                    roots.len() - 1
                }
            };
            let inside = source.strip_prefix(&roots[index].path).unwrap_or(Path::new("")).to_path_buf();
            binds.push((source.clone(), index, inside));
        }
        // Subvolumes nested below a source: a snapshot holds an empty folder in their place.
        if !o.one_file_system {
            let mut queue: Vec<usize> = (0..roots.len()).collect();
            while let Some(parent) = queue.pop() {
                let (parent_path, device) = (roots[parent].path.clone(), roots[parent].device.clone());
                for nested in nested_subvolumes(&parent_path, &mounts)? {
                    let below = sources.iter().any(|s| nested.starts_with(s) && nested != *s);
                    if !below || (o.excluded)(&nested) || roots.iter().any(|r| r.path == nested) {
                        continue;
                    }
                    let dev = fs::symlink_metadata(&nested).map_err(io(nested.display()))?.dev();
                    roots.push(Subvolume { path: nested.clone(), dev, device: device.clone() });
                    binds.push((nested, roots.len() - 1, PathBuf::new()));
                    queue.push(roots.len() - 1);
                }
            }
        }
        // Other filesystems mounted below a source, and bakare's own folders in a source:
        // held open now, bound again after.
        let mut points: Vec<&PathBuf> = mounts.iter().map(|m| &m.point).collect();
        points.sort();
        points.dedup();
        let mut rebinds = Vec::new();
        let below_a_source = |p: &Path| sources.iter().any(|s| p.starts_with(s) && p != s);
        for m in points {
            if below_a_source(m) {
                this.log.push(format!("fs-snapshot: {} read live (another filesystem)", m.display()));
                rebinds.push((m.clone(), open_path(m)?));
            }
        }
        for p in o.keep_live {
            if below_a_source(p) && p.exists() {
                this.log.push(format!("fs-snapshot: {} read live (bakare writes there)", p.display()));
                rebinds.push((p.clone(), open_path(p)?));
            }
        }
        this.record = Some(record_file()?);
        let mut snapshots = Vec::new();
        let mut cuts = Vec::new();
        for sub in &roots {
            let top = this.top(&sub.device)?;
            let name = format!("{}-{:08x}", std::process::id(), random_u32());
            this.note(&sub.device, &name)?;
            let snap = top.join(SNAPSHOT_DIR).join(&name);
            // A file whose ctime is older than this was as it is now when the snapshot was
            // taken; a second of margin for coarse clocks. The system clock itself (no test
            // offset): ctimes come from it.
            cuts.push(wall_ns().saturating_sub(CUT_MARGIN_NS));
            run(Command::new("btrfs").args(["subvolume", "snapshot", "-r"]).arg(&sub.path).arg(&snap))?;
            this.taken.push(Taken { path: snap.clone() });
            let snap_dev = fs::symlink_metadata(&snap).map_err(io(snap.display()))?.dev();
            this.devices.insert(snap_dev, sub.dev);
            this.log.push(format!("fs-snapshot: {} read from btrfs snapshot {name}", sub.path.display()));
            snapshots.push(snap);
        }
        // Bind in path order (a parent before what lies in it), a live folder before a
        // snapshot over the same path. Everything is held open before the first bind: a
        // bind hides what lies below its target.
        let mut steps: Vec<(PathBuf, bool, rustix::fd::OwnedFd)> = Vec::new();
        let clock = std::sync::Arc::new(ClockCheck::new());
        for (target, index, inside) in &binds {
            let from = snapshots[*index].join(inside);
            steps.push((target.clone(), true, open_path(&from)?));
            // The live folder, held before the snapshot hides it. Not through an idmapped
            // mount: its owners would not be the snapshot's (read through the plain mount).
            let idmapped = mount_of(target, &mounts).is_some_and(|m| m.idmapped);
            let live = match open_path(target) {
                Ok(fd) if !idmapped => Some(Live {
                    dir: std::sync::Arc::new(fd),
                    cut_ns: cuts[*index],
                    dev: roots[*index].dev,
                    clock: clock.clone(),
                }),
                _ => None,
            };
            this.live.roots.push((target.clone(), live));
        }
        for (target, fd) in rebinds {
            this.live.roots.push((target.clone(), None));
            steps.push((target, false, fd));
        }
        steps.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        for (target, _, fd) in steps {
            use std::os::fd::AsRawFd as _;
            let from = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            rustix::mount::mount_bind(&from, &target)
                .map_err(|e| io(format!("binding a snapshot over {}", target.display()))(e.into()))?;
            this.mounted.push(target);
        }
        Ok(this)
    }

    /// The top-level subvolume of the filesystem on `device`, mounted (once) in this
    /// namespace, with its snapshot folder checked.
    fn top(&mut self, device: &str) -> Result<PathBuf, FsSnapshotError> {
        if let Some((_, dir)) = self.tops.iter().find(|(d, _)| d == device) {
            return Ok(dir.clone());
        }
        let dir = mount_top(device, self.tops.len())?;
        self.tops.push((device.to_string(), dir.clone()));
        Ok(dir)
    }

    /// Appends a snapshot about to be made to this process's record.
    fn note(&self, device: &str, name: &str) -> Result<(), FsSnapshotError> {
        let Some(record) = &self.record else { return Ok(()) };
        let mut f = fs::OpenOptions::new().append(true).create(true).open(record).map_err(io(record.display()))?;
        f.write_all(format!("btrfs\t{device}\t{name}\n").as_bytes()).map_err(io(record.display()))?;
        f.sync_all().map_err(io(record.display()))
    }

    /// Unmounts and deletes the snapshots; returns what could not be done.
    pub fn release(mut self) -> Vec<String> {
        self.release_all()
    }

    fn release_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for target in self.mounted.drain(..).rev() {
            if let Err(e) = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH) {
                problems.push(format!("unmounting the snapshot over {}: {e}", target.display()));
            }
        }
        let mut kept = false;
        for snap in self.taken.drain(..).rev() {
            if let Err(e) = delete_snapshot(&snap.path) {
                problems.push(e.to_string());
                kept = true;
            }
        }
        for (_, dir) in self.tops.drain(..).rev() {
            let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH);
        }
        if let Some(record) = self.record.take()
            && !kept
        {
            let _ = fs::remove_file(record);
        }
        problems
    }
}

impl Drop for FsSnapshots {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Whether there are records of snapshots (of running or killed backups): a backup then
/// enters a mount namespace of its own so that [`clean_stale`] can reach them.
pub fn records_exist() -> bool {
    fs::read_dir(RECORD_DIR)
        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().contains('-'))))
}

/// Deletes the snapshots recorded by backups whose process is gone (killed); returns one
/// line per snapshot deleted or problem met. Needs a private mount namespace (it mounts the
/// filesystems' top-level subvolumes there).
pub fn clean_stale() -> Vec<String> {
    let mut said = Vec::new();
    let Ok(entries) = fs::read_dir(RECORD_DIR) else { return said };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, start)) = name.split_once('-') else { continue };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else { continue };
        if start_time(pid) == Some(start) {
            continue; // still running
        }
        let path = entry.path();
        let Ok(text) = fs::read_to_string(&path) else { continue };
        let mut kept = false;
        for (i, line) in text.lines().enumerate() {
            let mut fields = line.split('\t');
            let (Some("btrfs"), Some(device), Some(snap)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            if snap.is_empty() || !snap.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                continue;
            }
            let result = mount_top(device, 1000 + i).and_then(|top| {
                let snapshot = top.join(SNAPSHOT_DIR).join(snap);
                let done = if fs::symlink_metadata(&snapshot).is_ok() {
                    delete_snapshot(&snapshot).map(|()| Some(snapshot))
                } else {
                    Ok(None)
                };
                let _ = rustix::mount::unmount(&top, rustix::mount::UnmountFlags::DETACH);
                done
            });
            match result {
                Ok(Some(_)) => said
                    .push(format!("deleted the filesystem snapshot {snap} (on {device}) of a backup that was killed")),
                Ok(None) => {}
                Err(e) => {
                    said.push(format!("{e} (a snapshot of a killed backup, {snap} on {device}, remains)"));
                    kept = true;
                }
            }
        }
        if !kept {
            let _ = fs::remove_file(&path);
        }
    }
    said
}

/// Mounts the top-level subvolume (`subvolid=5`) of the btrfs filesystem on `device` at a
/// folder of its own in this namespace, and makes sure its snapshot folder is root's alone.
fn mount_top(device: &str, n: usize) -> Result<PathBuf, FsSnapshotError> {
    let dir = Path::new(TOP_DIR).join(n.to_string());
    fs::create_dir_all(&dir).map_err(io(dir.display()))?;
    let data = c"subvolid=5";
    rustix::mount::mount(
        device,
        &dir,
        "btrfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        data,
    )
    .map_err(|e| io(format!("mounting the top of the btrfs filesystem on {device}"))(e.into()))?;
    let checked = (|| {
        root_only(&dir)?;
        let snaps = dir.join(SNAPSHOT_DIR);
        match fs::create_dir(&snaps) {
            Ok(()) => fs::set_permissions(&snaps, fs::Permissions::from_mode(0o700)).map_err(io(snaps.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(snaps.display())(e)),
        }
        root_only(&snaps)
    })();
    if let Err(e) = checked {
        let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH);
        return Err(e);
    }
    Ok(dir)
}

/// `path` must be a real folder (no symlink) of root's that no one else can write.
fn root_only(path: &Path) -> Result<(), FsSnapshotError> {
    let m = fs::symlink_metadata(path).map_err(io(path.display()))?;
    if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(FsSnapshotError::Unsafe(path.to_path_buf()));
    }
    Ok(())
}

fn delete_snapshot(snap: &Path) -> Result<(), FsSnapshotError> {
    run(Command::new("btrfs").args(["subvolume", "delete"]).arg(snap))
}

/// An `O_PATH` handle on `path`, to bind from once `path` is hidden.
fn open_path(path: &Path) -> Result<rustix::fd::OwnedFd, FsSnapshotError> {
    rustix::fs::open(path, rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
        .map_err(|e| io(path.display())(e.into()))
}

/// Makes this process's record file (`<pid>-<start time>`), empty.
fn record_file() -> Result<PathBuf, FsSnapshotError> {
    fs::create_dir_all(RECORD_DIR).map_err(io(RECORD_DIR))?;
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    let path = Path::new(RECORD_DIR).join(format!("{pid}-{start}"));
    fs::write(&path, b"").map_err(io(path.display()))?;
    Ok(path)
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`, field 22), which
/// tells a process from a later one given the same pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// A number that differs between the snapshots one process makes.
fn random_u32() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let h = blake3::hash(
        &[bakare_store::clock::now_ns().to_le_bytes(), u64::from(NEXT.fetch_add(1, Ordering::Relaxed)).to_le_bytes()]
            .concat(),
    );
    let mut first = [0u8; 4];
    first.copy_from_slice(&h.as_bytes()[..4]);
    u32::from_le_bytes(first)
}

fn on_btrfs(path: &Path) -> Result<bool, FsSnapshotError> {
    let s = rustix::fs::statfs(path).map_err(|e| io(path.display())(e.into()))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(s.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// The mount of this namespace that holds `path` (the longest mount point above it).
fn mount_of<'m>(path: &Path, mounts: &'m [Mount]) -> Option<&'m Mount> {
    mounts.iter().filter(|m| path.starts_with(&m.point)).max_by_key(|m| m.point.as_os_str().len())
}

/// The root of the btrfs subvolume holding `path`: the highest folder above it on the same
/// device and inside the same mount, which must be a subvolume root (inode 256).
fn subvolume_root(path: &Path, mounts: &[Mount]) -> Result<Option<Subvolume>, FsSnapshotError> {
    let Some(mount) = mount_of(path, mounts).filter(|m| m.btrfs) else { return Ok(None) };
    let dev = fs::symlink_metadata(path).map_err(io(path.display()))?.dev();
    let mut top = path.to_path_buf();
    while let Some(parent) = top.parent() {
        if !parent.starts_with(&mount.point) {
            break;
        }
        match fs::symlink_metadata(parent) {
            Ok(m) if m.dev() == dev => top = parent.to_path_buf(),
            _ => break,
        }
    }
    let m = fs::symlink_metadata(&top).map_err(io(top.display()))?;
    let found = m.is_dir() && m.ino() == BTRFS_SUBVOLUME_INO;
    Ok(found.then(|| Subvolume { path: top, dev, device: mount.source.clone() }))
}

/// One line of `/proc/self/mountinfo`.
struct Mount {
    point: PathBuf,
    /// The mounted folder's path inside its filesystem (`/@home` for `subvol=@home`).
    root: PathBuf,
    btrfs: bool,
    /// An idmapped mount (owners shown mapped).
    idmapped: bool,
    /// Its filesystem type (`fuse.bakare`, `btrfs`).
    fstype: String,
    /// The mount's source: the device of a btrfs filesystem.
    source: String,
}

/// Whether a filesystem whose type begins with `fstype` is mounted at `point` in this
/// process's namespace (mountinfo's paths unescaped: a mount point may hold a space).
pub fn mounted_at(point: &Path, fstype: &str) -> bool {
    mount_info().is_ok_and(|m| m.iter().any(|m| m.point == point && m.fstype.starts_with(fstype)))
}

/// This namespace's mounts.
fn mount_info() -> Result<Vec<Mount>, FsSnapshotError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(io("/proc/self/mountinfo"))?;
    let mut mounts = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else { continue };
        let dash = fields.iter().position(|f| *f == "-");
        let fstype = dash.and_then(|i| fields.get(i + 1)).copied();
        let source = dash.and_then(|i| fields.get(i + 2)).map(|s| unescape(s)).unwrap_or_default();
        mounts.push(Mount {
            point: PathBuf::from(unescape(point)),
            root: PathBuf::from(unescape(root)),
            btrfs: fstype == Some("btrfs"),
            idmapped: fields.get(5).is_some_and(|o| o.split(',').any(|o| o == "idmapped")),
            fstype: fstype.unwrap_or_default().to_string(),
            source,
        });
    }
    Ok(mounts)
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = oct {
            out.push(d.iter().fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The subvolumes directly below the subvolume rooted at `root`, as paths of this namespace
/// (`btrfs subvolume list -o` names them from the filesystem's top; the btrfs mount
/// holding `root` translates). Our own snapshots are never among them.
fn nested_subvolumes(root: &Path, mounts: &[Mount]) -> Result<Vec<PathBuf>, FsSnapshotError> {
    let Some(mount) = mount_of(root, mounts).filter(|m| m.btrfs) else { return Ok(Vec::new()) };
    let output = run_output(Command::new("btrfs").args(["subvolume", "list", "-o"]).arg(root))?;
    let mut nested = Vec::new();
    for line in output.lines() {
        let Some((_, p)) = line.split_once(" path ") else { continue };
        let p = p.strip_prefix("<FS_TREE>/").unwrap_or(p);
        let in_fs = Path::new("/").join(p);
        if in_fs.components().any(|c| c.as_os_str() == SNAPSHOT_DIR) {
            continue;
        }
        if let Ok(rel) = in_fs.strip_prefix(&mount.root) {
            let path = mount.point.join(rel);
            if path.starts_with(root) && path != root {
                nested.push(path);
            }
        }
    }
    Ok(nested)
}

fn run(cmd: &mut Command) -> Result<(), FsSnapshotError> {
    run_output(cmd).map(drop)
}

fn run_output(cmd: &mut Command) -> Result<String, FsSnapshotError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| FsSnapshotError::Command { command: command.clone(), output: e.to_string() })?;
    if !out.status.success() {
        let output = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(FsSnapshotError::Command { command, output: format!("{} ({})", output, out.status) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_views_end_when_the_clock_goes_back() {
        let s = std::time::Duration::from_secs;
        assert!(clock_sane(Some(s(10)), s(10)), "in step");
        assert!(clock_sane(Some(s(3600)), s(10)), "a suspend moves the wall clock ahead");
        assert!(!clock_sane(Some(s(5)), s(10)), "stepped back 5 s");
        assert!(!clock_sane(None, s(1)), "stepped back past the start");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\\y"), r"/x\\y");
        assert_eq!(unescape(r"/e\05"), r"/e\05");
    }

    #[test]
    fn modes() {
        assert_eq!(Mode::parse("").unwrap(), Mode::Off);
        assert_eq!(Mode::parse("auto").unwrap(), Mode::Auto);
        assert!(matches!(Mode::parse("zfs"), Err(FsSnapshotError::Mode(_))));
    }

    #[test]
    fn this_process_is_alive_and_a_stranger_is_not() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn the_root_folder_is_refused_and_read_live_with_auto() {
        let excluded = |_: &Path| false;
        let o = TakeOptions { mode: Mode::Btrfs, one_file_system: false, excluded: &excluded, keep_live: &[] };
        assert!(matches!(FsSnapshots::take(&[PathBuf::from("/")], &o), Err(FsSnapshotError::Root(_))));
        let auto = TakeOptions { mode: Mode::Auto, ..o };
        let taken = FsSnapshots::take(&[PathBuf::from("/")], &auto).unwrap();
        assert!(taken.log[0].contains("read live (the root folder"), "{:?}", taken.log);
    }
}
