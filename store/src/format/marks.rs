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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PackId;
    use bakare_crypto::{Digest, checksum};

    #[test]
    fn record_round_trips_and_refuses_tampering() {
        let m = bakare_crypto::MasterKey::generate().unwrap();
        let key = &m.write.index_key;
        let r = GcRecord { mark_ns: 5, host: "h".into(), candidates: vec![PackId(Digest([1; 32]))] };
        let (id, bytes) = r.encode(key).unwrap();
        assert_eq!(id, checksum(&bytes));
        assert_eq!(GcRecord::decode("gc/x", &bytes, key).unwrap(), r);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(GcRecord::decode("gc/x", &b, key).is_err(), "flip at {i}");
        }
    }
}
