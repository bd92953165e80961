//! `--fs-snapshot`: read the sources from one instant of their filesystem.
//!
//! Before the walk, each source's btrfs subvolume (and every subvolume nested below a
//! source) gets a read-only snapshot, `.bakare-fs-snapshots/<pid>-<random>` inside itself.
//! (Not right inside the subvolume's root: adding and removing it would change the root
//! folder's times on every run. The walk leaves out every folder of that name.)
//! In a private mount namespace (entered by [`private_mount_namespace`] before the process
//! has threads) each snapshot is bind-mounted over the live path it was taken of, so the walk
//! reads the snapshot under the original paths and records those. Other filesystems mounted
//! below a source are bound again over the snapshot and read live (said in the log).
//!
//! A snapshot is a new device with the same inode numbers, sizes and times, so the walk
//! records its device as the live one ([`crate::Devices`]): a no-change backup from a fresh
//! snapshot reuses the memo.
//!
//! The snapshots are deleted when the backup ends. Before each is made its path is written
//! to a record of this process (`/var/lib/bakare/fs-snapshots/<pid>-<start time>`), so that a
//! backup killed with SIGKILL leaves a record: [`clean_stale`], run at the start of every
//! backup and resume, deletes the snapshots of records whose process is gone. The mounts
//! need no cleaning: a mount namespace ends with its last process.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Devices;

/// `statfs`'s `f_type` of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of every btrfs subvolume's root folder.
const BTRFS_SUBVOLUME_INO: u64 = 256;
/// The folder, in the root of each subvolume snapshotted, that holds the snapshots.
pub const SNAPSHOT_DIR: &str = ".bakare-fs-snapshots";
/// Where running backups record the snapshots they made.
pub const RECORD_DIR: &str = "/var/lib/bakare/fs-snapshots";

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

/// The filesystem snapshots a backup reads from, mounted over their live paths in this
/// process's mount namespace; deleted on drop.
#[derive(Debug, Default)]
pub struct FsSnapshots {
    /// Snapshots made, in order.
    taken: Vec<PathBuf>,
    /// Mount points this process mounted on, in order.
    mounted: Vec<PathBuf>,
    /// This process's record file.
    record: Option<PathBuf>,
    /// Snapshot devices to record as the live ones.
    pub devices: Devices,
    /// What was read from where, for the snapshot's log.
    pub log: Vec<String>,
}

/// A subvolume to snapshot and where its snapshot goes.
struct Subvolume {
    path: PathBuf,
    dev: u64,
}

impl FsSnapshots {
    /// Snapshots the subvolumes holding `sources` (absolute, canonical) and mounts each over
    /// its live path. With [`Mode::Off`], does nothing. The caller entered a private mount
    /// namespace first.
    pub fn take(mode: Mode, sources: &[PathBuf]) -> Result<Self, FsSnapshotError> {
        let mut this = Self::default();
        if mode == Mode::Off {
            return Ok(this);
        }
        let mut sources = sources.to_vec();
        sources.sort();
        sources.dedup();
        // The subvolume of each source, and the source's path inside it.
        let mut roots: Vec<Subvolume> = Vec::new();
        let mut binds: Vec<(PathBuf, usize, PathBuf)> = Vec::new(); // (target, subvolume, path inside)
        for source in &sources {
            if !on_btrfs(source)? {
                if mode == Mode::Btrfs {
                    return Err(FsSnapshotError::NotBtrfs(source.clone()));
                }
                this.log.push(format!("fs-snapshot: {} read live (not on btrfs)", source.display()));
                continue;
            }
            let root = match subvolume_root(source)? {
                Some(r) => r,
                None if mode == Mode::Auto => {
                    this.log
                        .push(format!("fs-snapshot: {} read live (its subvolume is not reachable)", source.display()));
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
        let mounts = mount_info()?;
        let mut queue: Vec<PathBuf> = roots.iter().map(|r| r.path.clone()).collect();
        while let Some(parent) = queue.pop() {
            for nested in nested_subvolumes(&parent, &mounts)? {
                if sources.iter().any(|s| nested.starts_with(s) && nested != *s) {
                    let dev = fs::symlink_metadata(&nested).map_err(io(nested.display()))?.dev();
                    roots.push(Subvolume { path: nested.clone(), dev });
                    binds.push((nested.clone(), roots.len() - 1, PathBuf::new()));
                    queue.push(nested);
                }
            }
        }
        // Other filesystems mounted below a source: held open now, bound again after.
        let mut rebinds = Vec::new();
        let mut points: Vec<&PathBuf> = mounts.iter().map(|m| &m.point).collect();
        points.sort();
        points.dedup();
        for m in points {
            if sources.iter().any(|s| m.starts_with(s) && m != s) {
                rebinds.push((m.clone(), open_path(m)?));
            }
        }
        this.record = Some(record_file()?);
        let mut snapshots = Vec::new();
        for sub in &roots {
            let dir = sub.path.join(SNAPSHOT_DIR);
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(dir.display())(e)),
                _ => {}
            }
            let snap = dir.join(format!("{}-{:08x}", std::process::id(), random_u32()));
            this.note(&snap)?;
            run(Command::new("btrfs").args(["subvolume", "snapshot", "-r"]).arg(&sub.path).arg(&snap))?;
            this.taken.push(snap.clone());
            let snap_dev = fs::symlink_metadata(&snap).map_err(io(snap.display()))?.dev();
            this.devices.insert(snap_dev, sub.dev);
            this.log.push(format!("fs-snapshot: {} read from btrfs snapshot {}", sub.path.display(), snap.display()));
            snapshots.push(snap);
        }
        // Bind in path order (a parent before what lies in it), a live filesystem before a
        // snapshot over the same path. Every source is held open before the first bind: a
        // bind hides what lies below its target (a nested subvolume's snapshot, a mount).
        let mut steps: Vec<(PathBuf, bool, rustix::fd::OwnedFd)> = Vec::new();
        for (target, index, inside) in &binds {
            let from = snapshots[*index].join(inside);
            steps.push((target.clone(), true, open_path(&from)?));
        }
        for (target, fd) in rebinds {
            this.log.push(format!("fs-snapshot: {} read live (another filesystem)", target.display()));
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

    /// Appends `snapshot` to this process's record before it is made.
    fn note(&self, snapshot: &Path) -> Result<(), FsSnapshotError> {
        let Some(record) = &self.record else { return Ok(()) };
        let mut f = fs::OpenOptions::new().append(true).create(true).open(record).map_err(io(record.display()))?;
        f.write_all(format!("{}\n", snapshot.display()).as_bytes()).map_err(io(record.display()))?;
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
            if let Err(e) = delete_snapshot(&snap) {
                problems.push(e.to_string());
                kept = true;
            }
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

/// Deletes the snapshots recorded by backups whose process is gone (killed); returns one
/// line per snapshot deleted or problem met.
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
        for snap in text.lines().filter(|l| !l.is_empty()).map(PathBuf::from) {
            if !is_ours(&snap) || fs::symlink_metadata(&snap).is_err() {
                continue;
            }
            match delete_snapshot(&snap) {
                Ok(()) => {
                    said.push(format!("deleted the filesystem snapshot {} of a backup that was killed", snap.display()))
                }
                Err(e) => {
                    said.push(e.to_string());
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

/// An `O_PATH` handle on `path`, to bind from once `path` is hidden.
fn open_path(path: &Path) -> Result<rustix::fd::OwnedFd, FsSnapshotError> {
    rustix::fs::open(path, rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
        .map_err(|e| io(path.display())(e.into()))
}

fn delete_snapshot(snap: &Path) -> Result<(), FsSnapshotError> {
    run(Command::new("btrfs").args(["subvolume", "delete"]).arg(snap))
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

/// The root of the btrfs subvolume holding `path`: the highest folder above it on the same
/// device, which must be a subvolume root (inode 256).
fn subvolume_root(path: &Path) -> Result<Option<Subvolume>, FsSnapshotError> {
    let dev = fs::symlink_metadata(path).map_err(io(path.display()))?.dev();
    let mut top = path.to_path_buf();
    while let Some(parent) = top.parent() {
        match fs::symlink_metadata(parent) {
            Ok(m) if m.dev() == dev => top = parent.to_path_buf(),
            _ => break,
        }
    }
    let m = fs::symlink_metadata(&top).map_err(io(top.display()))?;
    Ok((m.is_dir() && m.ino() == BTRFS_SUBVOLUME_INO).then_some(Subvolume { path: top, dev }))
}

/// One line of `/proc/self/mountinfo`.
struct Mount {
    point: PathBuf,
    /// The mounted folder's path inside its filesystem (`/@home` for `subvol=@home`).
    root: PathBuf,
    btrfs: bool,
}

/// This namespace's mounts.
fn mount_info() -> Result<Vec<Mount>, FsSnapshotError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(io("/proc/self/mountinfo"))?;
    let mut mounts = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else { continue };
        let fstype = fields.iter().position(|f| *f == "-").and_then(|i| fields.get(i + 1)).copied();
        mounts.push(Mount {
            point: PathBuf::from(unescape(point)),
            root: PathBuf::from(unescape(root)),
            btrfs: fstype == Some("btrfs"),
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
/// holding `root` translates).
fn nested_subvolumes(root: &Path, mounts: &[Mount]) -> Result<Vec<PathBuf>, FsSnapshotError> {
    let Some(mount) =
        mounts.iter().filter(|m| m.btrfs && root.starts_with(&m.point)).max_by_key(|m| m.point.as_os_str().len())
    else {
        return Ok(Vec::new());
    };
    let output = run_output(Command::new("btrfs").args(["subvolume", "list", "-o"]).arg(root))?;
    let mut nested = Vec::new();
    for line in output.lines() {
        let Some((_, p)) = line.split_once(" path ") else { continue };
        let p = p.strip_prefix("<FS_TREE>/").unwrap_or(p);
        let in_fs = Path::new("/").join(p);
        if let Ok(rel) = in_fs.strip_prefix(&mount.root) {
            let path = mount.point.join(rel);
            if path.starts_with(root) && path != root && !is_ours(&path) {
                nested.push(path);
            }
        }
    }
    Ok(nested)
}

/// Whether `path` is where bakare puts snapshots.
fn is_ours(path: &Path) -> bool {
    path.parent().and_then(Path::file_name).is_some_and(|n| n == SNAPSHOT_DIR)
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
}
