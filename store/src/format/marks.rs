//! Garbage collection's marks (`gc/<id>`, kind 6): packs that were unreferenced and are no
//! longer indexed, waiting for a later prune's sweep (see the `gc` module of `maintenance`).

use std::collections::HashSet;

use bakare_crypto::{Digest, SymmetricKey};

use crate::backend::Backend;
use crate::format::object::{ObjectKind, get_named, open_object, seal_object};
use crate::ids::PackId;
use crate::{Result, StoreError};

/// A mark: packs that were unreferenced and are no longer indexed, waiting for the sweep.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcRecord {
    /// When the index no longer offered the candidates.
    pub mark_ns: i64,
    pub host: String,
    pub candidates: Vec<PackId>,
}

impl GcRecord {
    /// Encodes and seals the record; returns its id (the hash of the bytes) and the bytes.
    pub fn encode(&self, index_key: &SymmetricKey) -> Result<(Digest, Vec<u8>)> {
        let plain = postcard::to_stdvec(self).map_err(|e| StoreError::corrupt("gc record", e.to_string()))?;
        seal_object(ObjectKind::Gc, &plain, index_key)
    }

    /// Authenticates and parses a record (its name was checked by the caller).
    pub fn decode(name: &str, bytes: &[u8], index_key: &SymmetricKey) -> Result<Self> {
        crate::format::object::decode_exact(name, &open_object(name, ObjectKind::Gc, bytes, index_key)?)
    }
}

/// GC records by path, and (path, problem) of each that could not be read.
pub type Records = (Vec<(String, GcRecord)>, Vec<(String, String)>);

/// The readable GC records, and the path and problem of each that could not be read.
pub fn records(backend: &dyn Backend, key: &SymmetricKey) -> Result<Records> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for path in backend.list("gc")? {
        let read = get_named(backend, &path).and_then(|b| GcRecord::decode(&path, &b, key));
        match read {
            Ok(r) => out.push((path, r)),
            Err(e) => problems.push((path, e.to_string())),
        }
    }
    Ok((out, problems))
}

/// Every pack some GC record lists: not to be indexed again by anything but the sweep.
pub fn marked_packs(backend: &dyn Backend, key: &SymmetricKey) -> Result<HashSet<PackId>> {
    Ok(records(backend, key)?.0.into_iter().flat_map(|(_, r)| r.candidates).collect())
}
