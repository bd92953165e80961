//! The one convention of bakare's local redb files (the blob index, the tree cache, the
//! planner's memo and name index):
//!
//! - **Layout.** Table `meta` holds `layout` (the file's kind and layout version, e.g.
//!   `bakare blob index 2`) and, for a file that belongs to one repository key, `key` (a
//!   digest derived from that key). A file whose `layout` or `key` differs, or that holds
//!   tables but no `layout` (an older bakare's), is started anew.
//! - **Checked values.** A value that must not be trusted as it is ends with a 16-byte
//!   checksum over its key and body ([`seal_value`], [`open_value`]): damage makes a lookup
//!   miss, never return other bytes. redb checks its own pages only on a full integrity check.
//! - **Busy.** A file another process holds is waited for up to [`Options::busy_wait`]
//!   (not at all by default: a backup holds its files for hours), then [`OpenError::Busy`]:
//!   the caller goes on without it (or in memory).
//! - **Start anew.** A file that cannot be opened, makes redb panic or fails the integrity
//!   check is set aside as `<name>.corrupt` (replacing an earlier one) and created empty; one
//!   of another layout or key, or grown past its cap, is removed and created empty.
//!   [`Opened::started_anew`] says why ([`Anew`]).
//! - **Panics.** redb may panic on a damaged file rather than fail: [`guard`] turns a panic
//!   into a failure, which callers treat as damage (a miss, or a write lost).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, TableDefinition};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Bytes of the checksum that ends a checked value.
pub const SUM: usize = 16;

/// What a local file is: its kind and layout version (both written in its `meta` table).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub kind: &'static str,
    pub version: u8,
}

impl Layout {
    fn tag(&self) -> String {
        format!("{} {}", self.kind, self.version)
    }
}

/// How to open a local file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// redb's page cache (its default, 1 GiB, would count against the memory limit).
    pub cache_bytes: usize,
    /// Run redb's full integrity check on open.
    pub check_integrity: bool,
    /// A file larger than this is started anew (entries nothing reads again stop growing it).
    pub max_bytes: Option<u64>,
    /// The file belongs to the key this digest is derived from.
    pub key: Option<[u8; 32]>,
    /// How long to wait for a file another process holds.
    pub busy_wait: Duration,
}

/// An opened local file.
pub struct Opened {
    pub db: Database,
    pub path: PathBuf,
    /// Why the file was started anew, if it was.
    pub started_anew: Option<Anew>,
}

/// Why a local file was started anew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anew {
    /// It was damaged (set aside as `<name>.corrupt`).
    Damaged(String),
    /// Another version of bakare, or another key, wrote it (removed).
    Outdated(String),
    /// It grew past its cap (removed).
    TooLarge(u64),
}

impl std::fmt::Display for Anew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Anew::Damaged(why) | Anew::Outdated(why) => f.write_str(why),
            Anew::TooLarge(max) => write!(f, "larger than {} MiB", max >> 20),
        }
    }
}

/// Why a local file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{} is in use by another bakare process", .0.display())]
    Busy(PathBuf),
    #[error("{}: {reason}", path.display())]
    Failed { path: PathBuf, reason: String },
}

/// Runs `f`, turning a panic inside it (redb on a damaged file) into `None`.
pub fn guard<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// Opens (or creates) the local file at `path` under the convention above.
pub fn open(path: &Path, layout: Layout, opts: &Options) -> Result<Opened, OpenError> {
    let failed = |reason: String| OpenError::Failed { path: path.to_path_buf(), reason };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed(format!("cannot create its folder: {e}")))?;
    }
    let reason = match opts.max_bytes {
        Some(max) if std::fs::metadata(path).is_ok_and(|m| m.len() > max) => Anew::TooLarge(max),
        _ => match try_open(path, layout, opts, opts.check_integrity)? {
            Ok(db) => return Ok(Opened { db, path: path.to_path_buf(), started_anew: None }),
            Err(reason) => reason,
        },
    };
    match &reason {
        Anew::Damaged(_) => set_aside(path),
        Anew::Outdated(_) | Anew::TooLarge(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
    match try_open(path, layout, opts, false)? {
        Ok(db) => Ok(Opened { db, path: path.to_path_buf(), started_anew: Some(reason) }),
        Err(again) => Err(failed(format!("{reason}; started anew: {again}"))),
    }
}

/// Checks the file at `path` without changing it: redb's full integrity check. A file
/// another process holds, none at all, or one of another layout passes ([`open`] then starts
/// an outdated one anew and says so): only damage fails.
pub fn check(path: &Path, opts: &Options) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    let opened = guard(|| builder(opts, true).open(path)).ok_or_else(|| "redb panicked opening it".to_string())?;
    let db = match opened {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let read = || -> Result<(), String> {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        txn.list_tables().map_err(|e| e.to_string())?.for_each(drop);
        Ok(())
    };
    guard(read).unwrap_or_else(|| Err("redb panicked reading it".into()))
}

/// A new file in memory under the same convention (for callers with no cache folder).
pub fn in_memory(layout: Layout, opts: &Options) -> Result<Database, OpenError> {
    let failed = |reason: String| OpenError::Failed { path: PathBuf::from("(memory)"), reason };
    let db = guard(|| builder(opts, false).create_with_backend(redb::backends::InMemoryBackend::new()))
        .ok_or_else(|| failed("redb panicked".into()))?
        .map_err(|e| failed(e.to_string()))?;
    claim(&db, layout, opts).map_err(|e| failed(e.to_string()))?;
    Ok(db)
}

/// Moves a file aside as `<name>.corrupt` (or removes it if it cannot be moved).
pub fn set_aside(path: &Path) {
    let aside = PathBuf::from(format!("{}.corrupt", path.display()));
    if std::fs::rename(path, &aside).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

fn builder(opts: &Options, check: bool) -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(opts.cache_bytes.max(1 << 20));
    b.set_check_integrity_on_open(check);
    b
}

/// `Ok(Ok(db))`: usable; `Ok(Err(why))`: damaged or of another layout; `Err`: busy.
fn try_open(path: &Path, layout: Layout, opts: &Options, check: bool) -> Result<Result<Database, Anew>, OpenError> {
    let deadline = Instant::now() + opts.busy_wait;
    loop {
        let Some(created) = guard(|| builder(opts, check).create(path)) else {
            return Ok(Err(Anew::Damaged("redb panicked opening it".into())));
        };
        match created {
            Ok(db) => {
                let fits = guard(|| claim(&db, layout, opts))
                    .unwrap_or_else(|| Err(Anew::Damaged("redb panicked reading it".into())));
                return Ok(fits.map(|()| db));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::Busy(path.to_path_buf())),
            Err(e) => return Ok(Err(Anew::Damaged(e.to_string()))),
        }
    }
}

/// Checks the file's `meta` against `layout` and `opts.key`; writes them into a new file.
fn claim(db: &Database, layout: Layout, opts: &Options) -> Result<(), Anew> {
    let e = |e: &dyn std::fmt::Display| Anew::Damaged(e.to_string());
    let tag = layout.tag();
    let (found, key, tables) = {
        let txn = db.begin_read().map_err(|x| e(&x))?;
        let tables = txn.list_tables().map_err(|x| e(&x))?.count();
        match txn.open_table(META) {
            Ok(meta) => {
                let get = |k: &str| meta.get(k).ok().flatten().map(|v| v.value().to_vec());
                (get("layout"), get("key"), tables)
            }
            Err(redb::TableError::TableDoesNotExist(_)) => (None, None, tables),
            Err(x) => return Err(e(&x)),
        }
    };
    match found {
        Some(f) if f == tag.as_bytes() => {
            if key.as_deref() == opts.key.as_ref().map(|k| k.as_slice()) {
                Ok(())
            } else {
                Err(Anew::Outdated("written under another key".into()))
            }
        }
        Some(f) => Err(Anew::Outdated(format!("layout {}, this bakare uses {tag}", String::from_utf8_lossy(&f)))),
        None if tables > 0 => Err(Anew::Outdated(format!("an older layout; this bakare uses {tag}"))),
        None => {
            let txn = db.begin_write().map_err(|x| e(&x))?;
            {
                let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
                meta.insert("layout", tag.as_bytes()).map_err(|x| e(&x))?;
                if let Some(k) = &opts.key {
                    meta.insert("key", k.as_slice()).map_err(|x| e(&x))?;
                }
            }
            txn.commit().map_err(|x| e(&x))
        }
    }
}

/// A table in a new read transaction; `None` before anything was ever written to it.
pub fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    db: &Database,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, redb::Error> {
    match db.begin_read()?.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `body` followed by its checksum over `key` and `body`: the stored form of a checked value.
pub fn seal_value(key: &[u8], mut body: Vec<u8>) -> Vec<u8> {
    let sum: [u8; SUM] = bakare_crypto::bound_checksum(key, &body);
    body.extend_from_slice(&sum);
    body
}

/// The body of a checked value stored under `key`, if its checksum holds.
pub fn open_value<'a>(key: &[u8], value: &'a [u8]) -> Option<&'a [u8]> {
    let (body, sum) = value.split_at_checked(value.len().checked_sub(SUM)?)?;
    (bakare_crypto::bound_checksum::<SUM>(key, body) == sum).then_some(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const L: Layout = Layout { kind: "test file", version: 1 };
    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn put(db: &Database, v: u64) {
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert("a", v).unwrap();
        txn.commit().unwrap();
    }

    fn get(db: &Database) -> Option<u64> {
        read_table(db, T).unwrap().and_then(|t| t.get("a").unwrap().map(|v| v.value()))
    }

    #[test]
    fn a_file_is_kept_while_layout_and_key_match() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.redb");
        let opts = Options { key: Some([1; 32]), ..Options::default() };
        let o = open(&p, L, &opts).unwrap();
        assert!(o.started_anew.is_none());
        put(&o.db, 7);
        drop(o);
        let o = open(&p, L, &opts).unwrap();
        assert!(o.started_anew.is_none());
        assert_eq!(get(&o.db), Some(7));
    }

    #[test]
    fn another_layout_key_or_garbage_starts_anew_and_sets_the_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.redb");
        let opts = Options { key: Some([1; 32]), ..Options::default() };
        put(&open(&p, L, &opts).unwrap().db, 7);
        let other_key = Options { key: Some([2; 32]), ..Options::default() };
        let o = open(&p, L, &other_key).unwrap();
        assert!(
            matches!(&o.started_anew, Some(Anew::Outdated(w)) if w.contains("another key")),
            "{:?}",
            o.started_anew
        );
        assert_eq!(get(&o.db), None);
        drop(o);
        let newer = Layout { version: 2, ..L };
        let o = open(&p, newer, &other_key).unwrap();
        assert!(o.started_anew.as_ref().unwrap().to_string().contains("layout test file 1"), "{:?}", o.started_anew);
        assert!(!dir.path().join("x.redb.corrupt").exists(), "an outdated file is not kept as damaged");
        drop(o);
        std::fs::write(&p, b"not a redb file").unwrap();
        let o = open(&p, newer, &other_key).unwrap();
        assert!(matches!(o.started_anew, Some(Anew::Damaged(_))), "{:?}", o.started_anew);
        assert!(dir.path().join("x.redb.corrupt").exists());
    }

    #[test]
    fn a_file_with_tables_but_no_layout_is_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.redb");
        put(&Database::create(&p).unwrap(), 3);
        let o = open(&p, L, &Options::default()).unwrap();
        assert!(
            matches!(&o.started_anew, Some(Anew::Outdated(w)) if w.contains("older layout")),
            "{:?}",
            o.started_anew
        );
        assert_eq!(get(&o.db), None);
    }

    #[test]
    fn a_held_file_is_busy_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.redb");
        let held = open(&p, L, &Options::default()).unwrap();
        let quick = Options { busy_wait: Duration::from_millis(200), ..Options::default() };
        assert!(matches!(open(&p, L, &quick), Err(OpenError::Busy(_))));
        drop(held);
        assert!(open(&p, L, &quick).is_ok());
    }

    #[test]
    fn a_file_over_its_cap_starts_anew() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.redb");
        put(&open(&p, L, &Options::default()).unwrap().db, 9);
        let size = std::fs::metadata(&p).unwrap().len();
        let at = Options { max_bytes: Some(size), ..Options::default() };
        assert_eq!(get(&open(&p, L, &at).unwrap().db), Some(9));
        let under = Options { max_bytes: Some(size - 1), ..Options::default() };
        let o = open(&p, L, &under).unwrap();
        assert!(o.started_anew.is_some());
        assert_eq!(get(&o.db), None);
    }

    #[test]
    fn the_check_fails_only_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.redb");
        assert!(check(&p, &Options::default()).is_ok(), "no file");
        put(&Database::create(&p).unwrap(), 3);
        assert!(check(&p, &Options::default()).is_ok(), "an older layout is open's to replace, not damage");
        std::fs::write(&p, b"not a redb file").unwrap();
        assert!(check(&p, &Options::default()).is_err());
    }

    #[test]
    fn every_flip_of_a_checked_value_is_a_miss() {
        let v = seal_value(b"key", b"body".to_vec());
        assert_eq!(open_value(b"key", &v), Some(&b"body"[..]));
        assert_eq!(open_value(b"other", &v), None);
        for i in 0..v.len() {
            let mut w = v.clone();
            w[i] ^= 1;
            assert_eq!(open_value(b"key", &w), None, "flip at {i}");
        }
        assert_eq!(open_value(b"key", &v[..3]), None);
    }
}
