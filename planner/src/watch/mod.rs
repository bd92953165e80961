//! `bakare watch`: a daemon that records which folders changed, so that a backup lists only
//! those and takes every other folder's tree from the memo.
//!
//! The daemon keeps a *dirty set* (folder path -> the generation of its last event) in redb
//! in the cache folder, under an *epoch*: a random id drawn when the watch was armed, and
//! replaced whenever an event may have been lost (the kernel's queue overflowed, a
//! filesystem was mounted or unmounted under a watched folder, the daemon restarted). A
//! backup asks the daemon over a Unix socket, after the daemon has read every event queued
//! so far, for the folders changed since the generation its set's last snapshot started at.
//! It uses them only if the epoch is the one of that snapshot: events speed a run up; they
//! never decide whether it is correct (see ARCHITECTURE.md, "Watch").

pub mod client;
pub mod daemon;
pub mod fanotify;

use serde::{Deserialize, Serialize};

/// The socket and database of the daemon, in the cache folder's `watch` folder.
pub const SOCKET: &str = "watch.sock";
pub const DATABASE: &str = "watch.redb";

/// Longest message either side accepts.
const MAX_MESSAGE: usize = 256 << 20;

/// What a client asks.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Read every queued event, then say which folders under `paths` changed after
    /// generation `since`; `probe`: asked by `watch --continuous` to decide whether to
    /// back up (not a backup).
    Sync {
        paths: Vec<Vec<u8>>,
        since: u64,
        probe: bool,
    },
    Status,
}

/// The answer to [`Request::Sync`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncReply {
    pub epoch: [u8; 16],
    /// The generation every event read so far belongs to (or an earlier one).
    pub generation: u64,
    /// Entries older than this were dropped (the set grew too large): a backup that started
    /// before it cannot use the set.
    pub floor: u64,
    /// The last generation with a change to a file with other names (a hard link).
    pub links: u64,
    /// Why the paths asked for are not all covered, if they are not.
    pub uncovered: Option<String>,
    /// Folders where anything may have changed after `since`.
    pub folders: Vec<Vec<u8>>,
    /// Folders where only the entries of these names changed after `since`.
    pub named: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    /// Folders that appeared after `since`: everything below them is new.
    pub subtrees: Vec<Vec<u8>>,
}

/// The answer to [`Request::Status`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub source: String,
    pub roots: Vec<Vec<u8>>,
    /// When the current epoch began (ns since the Unix epoch), and the boot it belongs to.
    pub epoch_since_ns: i64,
    pub boot_id: String,
    pub generation: u64,
    pub dirty: u64,
    pub events: u64,
    /// Why earlier epochs ended, newest last (at most a few).
    pub breaks: Vec<String>,
    /// When a backup last asked what changed (ns since the Unix epoch; 0: none yet).
    pub last_backup_ns: i64,
}

/// Writes one length-prefixed message.
pub fn send<T: Serialize>(w: &mut impl std::io::Write, msg: &T) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(msg).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "too long"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)?;
    w.flush()
}

/// Reads one length-prefixed message.
pub fn receive<T: for<'a> Deserialize<'a>>(r: &mut impl std::io::Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a message of {len} bytes")));
    }
    // Grown as bytes arrive: a length alone never makes the reader allocate it.
    use std::io::Read as _;
    let mut bytes = Vec::new();
    r.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() != len {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a message cut short"));
    }
    postcard::from_bytes(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Whether `path` is `root` or below it (whole components).
pub fn is_under(path: &[u8], root: &[u8]) -> bool {
    if root == b"/" {
        return path.first() == Some(&b'/');
    }
    path.starts_with(root) && matches!(path.get(root.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_means_whole_components() {
        assert!(is_under(b"/a/b", b"/a"));
        assert!(is_under(b"/a", b"/a"));
        assert!(is_under(b"/anything", b"/"));
        assert!(!is_under(b"/ab", b"/a"));
        assert!(!is_under(b"/", b"/a"));
    }

    #[test]
    fn messages_are_bounded() {
        let mut bytes = Vec::new();
        send(&mut bytes, &Request::Sync { paths: vec![b"/x".to_vec()], since: 7, probe: false }).unwrap();
        let back: Request = receive(&mut bytes.as_slice()).unwrap();
        // The wire format (the fuzz seeds are these bytes): a u32 LE length, then postcard.
        let mut seed = Vec::new();
        send(&mut seed, &Request::Sync { paths: vec![b"/home/fuzz".to_vec()], since: 5, probe: false }).unwrap();
        assert_eq!(seed, [&[15, 0, 0, 0, 0, 1, 10][..], b"/home/fuzz", &[5, 0]].concat());
        assert!(matches!(back, Request::Sync { since: 7, .. }));
        // A length past the bound is refused before anything is allocated for it.
        let huge = (u32::MAX).to_le_bytes();
        assert!(receive::<Request>(&mut huge.as_slice()).is_err());
        // A short or garbled body is an error, never a panic.
        assert!(receive::<Request>(&mut [3u8, 0, 0, 0, 9, 9].as_slice()).is_err());
    }
}
