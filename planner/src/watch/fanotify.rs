//! A fanotify filesystem mark in FID mode: one mark per filesystem sees every change in it,
//! with no per-folder watch and no limit on folders. Each event names the folder it happened
//! in by file handle (and the entry's name); the handle is opened against the filesystem's
//! root and its path read back from `/proc/self/fd`.
//!
//! This is the only place in the planner that calls the kernel through `libc` directly:
//! rustix has no fanotify, and the crates that wrap it either lack FID mode or are young.
//! Every `unsafe` block is one system call on buffers this module owns; event bytes are
//! parsed with checked slices only.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What one event says, after its folder handle was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Something in this folder changed, not said which entry.
    Folder(PathBuf),
    /// The entry of this name in this folder changed (its content or metadata), appeared or
    /// went away.
    Entry(PathBuf, Vec<u8>),
    /// A folder appeared at this path (created or moved here): nothing below it is known.
    Subtree(PathBuf),
    /// A file with other names changed, or its link count did (a hard link made or
    /// removed), at this path: other folders holding the same file changed without an event
    /// naming them.
    Links(PathBuf),
    /// The kernel dropped events: nothing can be trusted from here on.
    Overflow,
}

const MASK: u64 = libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_DELETE_SELF
    | libc::FAN_MOVE_SELF
    | libc::FAN_ONDIR;

/// The header of an event as the kernel writes it (`struct fanotify_event_metadata`).
const META_LEN: usize = 24;

/// An open fanotify group with filesystem marks.
pub struct Fanotify {
    fd: OwnedFd,
    /// Per filesystem (its `f_fsid`), the marked folders of it to open handles against: one
    /// per mount, as a handle opened through a mount reads back as a path within it.
    mounts: HashMap<[u8; 8], Vec<OwnedFd>>,
    buf: Vec<u8>,
}

fn last_error(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The `f_fsid` of the filesystem holding `fd`, as the kernel puts it in events.
fn fsid_of(fd: &OwnedFd) -> std::io::Result<[u8; 8]> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a valid, writable statfs buffer and `fd` an open descriptor.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(last_error("fstatfs"));
    }
    // SAFETY: fstatfs succeeded, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    // SAFETY: fsid_t is two c_ints with private fields; its bytes are what events carry.
    let raw: [u8; 8] = unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(st.f_fsid) };
    Ok(raw)
}

impl Fanotify {
    /// A group that reports folder handles with names and object handles. Needs
    /// CAP_SYS_ADMIN (filesystem marks) and Linux 5.9 or later.
    pub fn new() -> std::io::Result<Self> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME
            | libc::FAN_REPORT_FID;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: a plain system call with constant arguments.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(last_error("fanotify_init"));
        }
        // SAFETY: fanotify_init returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, mounts: HashMap::new(), buf: vec![0u8; 256 * 1024] })
    }

    /// Marks the whole filesystem holding `path`: every change in it is reported from now on.
    /// Marking a filesystem twice is harmless.
    pub fn mark_filesystem(&mut self, path: &Path) -> std::io::Result<()> {
        let dir =
            std::fs::File::open(path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let dir: OwnedFd = dir.into();
        let fsid = fsid_of(&dir)?;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                MASK,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        if r != 0 {
            return Err(last_error(&format!("fanotify_mark {}", path.display())));
        }
        self.mounts.entry(fsid).or_default().push(dir);
        Ok(())
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads what is queued (nothing when the queue is empty) and resolves each event's
    /// folder; `cache` keeps resolved handles for this batch only, as folders move.
    pub fn read(&mut self, out: &mut Vec<Change>) -> std::io::Result<usize> {
        // Taken out while the events in it are resolved (which borrows `self`), then put back.
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.parse(&mut buf, out);
        self.buf = buf;
        result
    }

    fn parse(&self, buf: &mut [u8], out: &mut Vec<Change>) -> std::io::Result<usize> {
        let n = match rustix::io::read(&self.fd, &mut *buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(std::io::Error::from(e)),
        };
        let mut cache: HashMap<Vec<u8>, Vec<PathBuf>> = HashMap::new();
        let bytes = buf.get(..n).unwrap_or_default();
        let mut at = 0usize;
        let mut events = 0;
        while let Some(meta) = bytes.get(at..at.saturating_add(META_LEN)) {
            let u32_at = |o: usize| meta.get(o..o + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
            let event_len = u32_at(0).unwrap_or(0) as usize;
            let meta_len = meta.get(6..8).and_then(|b| b.try_into().ok()).map(u16::from_ne_bytes).unwrap_or(0) as usize;
            let mask = meta.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes).unwrap_or(0);
            if event_len < META_LEN || meta_len < META_LEN || meta_len > event_len {
                break;
            }
            let Some(event) = bytes.get(at..at + event_len) else { break };
            at += event_len;
            events += 1;
            if mask & libc::FAN_Q_OVERFLOW != 0 {
                out.push(Change::Overflow);
                continue;
            }
            self.event(mask, event.get(meta_len..).unwrap_or_default(), &mut cache, out);
        }
        Ok(events)
    }

    /// One event's info records.
    fn event(&self, mask: u64, mut info: &[u8], cache: &mut HashMap<Vec<u8>, Vec<PathBuf>>, out: &mut Vec<Change>) {
        let mut folder = None;
        let mut object = None;
        while info.len() >= 4 {
            let kind = info.first().copied().unwrap_or(0);
            let len = info.get(2..4).and_then(|b| b.try_into().ok()).map(u16::from_ne_bytes).unwrap_or(0) as usize;
            if len < 4 || len > info.len() {
                break;
            }
            let record = info.get(4..len).unwrap_or_default();
            info = info.get(len..).unwrap_or_default();
            match kind {
                k if k == libc::FAN_EVENT_INFO_TYPE_DFID_NAME || k == libc::FAN_EVENT_INFO_TYPE_DFID => {
                    let Some((fsid, handle, rest)) = split_fid(record) else { continue };
                    let name = rest.split(|b| *b == 0).next().unwrap_or_default().to_vec();
                    let mut key = fsid.to_vec();
                    key.extend_from_slice(handle);
                    let dirs = cache.entry(key).or_insert_with(|| self.resolve(fsid, handle)).clone();
                    folder = Some((dirs, name));
                }
                k if k == libc::FAN_EVENT_INFO_TYPE_FID => object = split_fid(record).map(|(f, h, _)| (f, h.to_vec())),
                _ => {}
            }
        }
        let file = mask & libc::FAN_ONDIR == 0;
        match folder {
            Some((dirs, name)) => {
                // A change to a file with other names changes them too (its ctime, link
                // count or content): their folders are not named.
                let linked = file
                    && !dirs.is_empty()
                    && object
                        .as_ref()
                        .is_some_and(|(fsid, handle)| self.links_of(*fsid, handle).is_some_and(|n| n > 1));
                let appears = mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0;
                for dir in dirs {
                    if linked {
                        out.push(Change::Links(dir.clone()));
                    }
                    if appears && mask & libc::FAN_ONDIR != 0 && !name.is_empty() && name != b"." {
                        out.push(Change::Subtree(dir.join(std::ffi::OsString::from_vec(name.clone()))));
                    }
                    if name.is_empty() || name == b"." {
                        out.push(Change::Folder(dir));
                    } else {
                        out.push(Change::Entry(dir, name.clone()));
                    }
                }
            }
            // An attribute change with no folder: a link count (the kernel reports it on the
            // inode alone).
            None if mask & libc::FAN_ATTRIB != 0 && file => {
                if let Some((fsid, handle)) = object {
                    out.extend(self.resolve(fsid, &handle).into_iter().map(Change::Links));
                }
            }
            None => {}
        }
    }

    /// The link count of the file with this handle, if it still exists.
    fn links_of(&self, fsid: [u8; 8], handle: &[u8]) -> Option<u64> {
        let mount = self.mounts.get(&fsid)?.first()?;
        let fd = open(mount, handle)?;
        let st = rustix::fs::fstat(&fd).ok()?;
        Some(st.st_nlink as u64)
    }

    /// The current paths of the object with this handle (one per marked mount of its
    /// filesystem), if it still exists.
    fn resolve(&self, fsid: [u8; 8], handle: &[u8]) -> Vec<PathBuf> {
        let Some(mounts) = self.mounts.get(&fsid) else { return Vec::new() };
        let mut out: Vec<PathBuf> = mounts
            .iter()
            .filter_map(|m| open(m, handle))
            .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// An `O_PATH` descriptor of the object with this handle, opened through `mount`.
fn open(mount: &OwnedFd, handle: &[u8]) -> Option<OwnedFd> {
    // struct file_handle: handle_bytes (u32), handle_type (i32), f_handle[].
    let bytes_len = u32::from_ne_bytes(handle.get(0..4)?.try_into().ok()?) as usize;
    if handle.len() < 8 + bytes_len {
        return None;
    }
    let mut owned = handle.get(..8 + bytes_len)?.to_vec();
    // SAFETY: `owned` is a complete struct file_handle (its length checked above) that
    // lives through the call; the kernel only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            owned.as_mut_ptr().cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A FID record's filesystem id, file handle (header included) and what follows it.
fn split_fid(record: &[u8]) -> Option<([u8; 8], &[u8], &[u8])> {
    let fsid: [u8; 8] = record.get(0..8)?.try_into().ok()?;
    let handle = record.get(8..)?;
    let bytes_len = u32::from_ne_bytes(handle.get(0..4)?.try_into().ok()?) as usize;
    let end = 8usize.checked_add(bytes_len)?;
    Some((fsid, handle.get(..end)?, handle.get(end..)?))
}
