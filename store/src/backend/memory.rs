//! A repository in memory, for tests and fuzzing. Besides the [`Backend`] operations it lets
//! a test overwrite an object in place ([`MemoryBackend::tamper`]), which no real backend
//! does, to simulate bit rot.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{Backend, BackendError, ObjectStat};

#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    times: Mutex<BTreeMap<String, i64>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn times(&self) -> MutexGuard<'_, BTreeMap<String, i64>> {
        self.times.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces an object's bytes, as storage rot would.
    pub fn tamper(&self, path: &str, bytes: Vec<u8>) {
        self.objects().insert(path.to_string(), bytes);
    }

    /// Sets an object's storage time, as if it had been written then.
    pub fn set_modified_ns(&self, path: &str, ns: i64) {
        self.times().insert(path.to_string(), ns);
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
        let mut objects = self.objects();
        if !objects.contains_key(path) {
            objects.insert(path.to_string(), bytes.to_vec());
            self.times().insert(path.to_string(), crate::clock::now_ns());
        }
        Ok(())
    }

    fn replace(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.objects().insert(path.to_string(), bytes.to_vec());
        self.times().insert(path.to_string(), crate::clock::now_ns());
        Ok(())
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, BackendError> {
        self.objects().get(path).cloned().ok_or_else(|| BackendError::NotFound { path: path.into() })
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let objects = self.objects();
        let obj = objects.get(path).ok_or_else(|| BackendError::NotFound { path: path.into() })?;
        let short = || BackendError::ShortRead { path: path.into(), offset, wanted: len, len: obj.len() as u64 };
        let start = usize::try_from(offset).map_err(|_| short())?;
        let end = start.checked_add(usize::try_from(len).map_err(|_| short())?).ok_or_else(short)?;
        obj.get(start..end).map(<[u8]>::to_vec).ok_or_else(short)
    }

    fn size(&self, path: &str) -> Result<u64, BackendError> {
        self.objects().get(path).map(|o| o.len() as u64).ok_or_else(|| BackendError::NotFound { path: path.into() })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let dir = format!("{}/", prefix.trim_end_matches('/'));
        Ok(self.objects().keys().filter(|k| k.starts_with(&dir)).cloned().collect())
    }

    fn stat(&self, path: &str) -> Result<ObjectStat, BackendError> {
        let size = self.size(path)?;
        Ok(ObjectStat { size, modified_ns: self.times().get(path).copied().unwrap_or(0) })
    }

    fn delete(&self, path: &str) -> Result<(), BackendError> {
        self.objects().remove(path);
        self.times().remove(path);
        Ok(())
    }
}
