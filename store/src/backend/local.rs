//! A repository in a local folder. Writes go to a temporary file in the same folder, are
//! fsynced, renamed into place, and the folder is fsynced, so a crash leaves either nothing
//! or the whole object under its final name.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Backend, BackendError, ObjectStat};

/// A backend rooted at a local folder.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn write_new(&self, path: &str, target: &Path, bytes: &[u8]) -> Result<(), BackendError> {
        let dir = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| BackendError::io(path, e))?;
        let tmp = dir.join(format!(".tmp-{}", random_suffix()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            if let Some(t) = crate::clock::shifted_now() {
                // Under a test clock, the storage's clock moves with it.
                f.set_modified(t)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, target)
        };
        let result = match write() {
            // A prune removed the temporary file (this process slept past the session
            // expiry, see `sweep_temporaries`): write it once more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write(),
            other => other,
        }
        .and_then(|()| File::open(dir)?.sync_all());
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| BackendError::io(path, e))
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    // A failed RNG still gives a unique-enough name together with the pid; create_new guards.
    let _ = getrandom::fill(&mut b);
    format!("{}-{}", std::process::id(), u64::from_le_bytes(b))
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
        let target = self.full(path);
        if target.exists() {
            return Ok(());
        }
        self.write_new(path, &target, bytes)
    }

    fn replace(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
        let target = self.full(path);
        self.write_new(path, &target, bytes)
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        let dir = self.root.join("packs");
        if !self.root.is_dir() || fs::create_dir_all(&dir).is_err() {
            return None;
        }
        super::remove_stale_spool_files(&dir);
        Some(dir)
    }

    fn sweep_temporaries(&self, before_ns: i64) -> Result<usize, BackendError> {
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(e.path());
                    continue;
                }
                // Spool files are their process's own (see `spool_dir`).
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with(".tmp-") || name.starts_with(".tmp-spool-") {
                    continue;
                }
                let written = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_nanos()).ok())
                });
                if written.is_some_and(|w| w < before_ns) && fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn put_file(&self, path: &str, file: &Path) -> Result<(), BackendError> {
        let target = self.full(path);
        let result = (|| {
            if target.exists() {
                return fs::remove_file(file);
            }
            let dir = target.parent().unwrap_or(&self.root);
            fs::create_dir_all(dir)?;
            if let Some(t) = crate::clock::shifted_now() {
                File::options().write(true).open(file)?.set_modified(t)?;
            }
            // The spool file was synced when it was finished.
            fs::rename(file, &target)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(file);
        }
        result.map_err(|e| BackendError::io(path, e))
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, BackendError> {
        let mut f = File::open(self.full(path)).map_err(|e| BackendError::io(path, e))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|e| BackendError::io(path, e))?;
        Ok(out)
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let f = File::open(self.full(path)).map_err(|e| BackendError::io(path, e))?;
        let size = f.metadata().map_err(|e| BackendError::io(path, e))?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(BackendError::ShortRead { path: path.into(), offset, wanted: len, len: size });
        }
        let n = usize::try_from(len).map_err(|_| BackendError::ShortRead {
            path: path.into(),
            offset,
            wanted: len,
            len: size,
        })?;
        let mut out = vec![0u8; n];
        f.read_exact_at(&mut out, offset).map_err(|e| BackendError::io(path, e))?;
        Ok(out)
    }

    fn size(&self, path: &str) -> Result<u64, BackendError> {
        let mut f = File::open(self.full(path)).map_err(|e| BackendError::io(path, e))?;
        f.seek(SeekFrom::End(0)).map_err(|e| BackendError::io(path, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let mut out = Vec::new();
        let mut stack = vec![prefix.trim_end_matches('/').to_string()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(self.full(&dir)) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BackendError::io(dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| BackendError::io(dir.clone(), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") {
                    continue;
                }
                let path = format!("{dir}/{name}");
                let ft = entry.file_type().map_err(|e| BackendError::io(path.clone(), e))?;
                if ft.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn stat(&self, path: &str) -> Result<ObjectStat, BackendError> {
        let m = fs::symlink_metadata(self.full(path)).map_err(|e| BackendError::io(path, e))?;
        let t = m.modified().map_err(|e| BackendError::io(path, e))?;
        Ok(ObjectStat { size: m.len(), modified_ns: crate::clock::ns_of(t) })
    }

    fn delete(&self, path: &str) -> Result<(), BackendError> {
        match fs::remove_file(self.full(path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BackendError::io(path, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("packs/ab/abc", b"hello").unwrap();
        b.put("packs/ab/abc", b"hello").unwrap();
        b.put("index/x", b"1").unwrap();
        assert_eq!(b.get("packs/ab/abc").unwrap(), b"hello");
        assert_eq!(b.get_range("packs/ab/abc", 1, 3).unwrap(), b"ell");
        assert!(matches!(b.get_range("packs/ab/abc", 3, 9), Err(BackendError::ShortRead { .. })));
        assert_eq!(b.list("packs").unwrap(), vec!["packs/ab/abc".to_string()]);
        assert!(b.get("nope").unwrap_err().is_not_found());
        b.delete("packs/ab/abc").unwrap();
        b.delete("packs/ab/abc").unwrap();
        assert!(b.list("packs").unwrap().is_empty());
    }

    #[test]
    fn temporaries_of_killed_writers_are_swept_when_old() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("packs/ab/abc", b"hello").unwrap();
        std::fs::write(dir.path().join("packs/ab/.tmp-abc-1"), b"half").unwrap();
        std::fs::write(dir.path().join(".tmp-config-2"), b"half").unwrap();
        std::fs::write(dir.path().join("packs/.tmp-spool-1-2-3"), b"open pack").unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert_eq!(b.sweep_temporaries(now - 3_600_000_000_000).unwrap(), 0, "younger than the cutoff");
        assert_eq!(b.sweep_temporaries(now + 1_000_000_000).unwrap(), 2);
        assert!(!dir.path().join("packs/ab/.tmp-abc-1").exists());
        assert!(dir.path().join("packs/.tmp-spool-1-2-3").exists(), "spool files are their writer's");
        assert_eq!(b.get("packs/ab/abc").unwrap(), b"hello");
    }
}
