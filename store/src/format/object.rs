//! The 8-byte header every repository object starts with, and content-addressed reads.
//!
//! `"bakare" (6) | kind (1) | format version (1)`

use bakare_crypto::{Digest, SymmetricKey, checksum};

use crate::backend::Backend;
use crate::{Result, StoreError};

/// The format version this build writes (the header's last byte). It reads every version
/// from [`OLDEST_FORMAT_VERSION`] to this one; a greater one is refused as newer.
///
/// 2: trees may hold entries of tree format 2 (extended attributes, hard-link groups,
/// ctime, birth time) and snapshots carry a log. A format-1 reader meets a format-2 object
/// with "newer than this bakare supports" instead of calling its trees damaged.
///
/// 3: packs may hold frames (small data blobs compressed together; compression 2 in blob
/// tables and index segments), which a format-2 reader would call damaged tables.
pub const FORMAT_VERSION: u8 = 3;

/// The oldest format version this build still reads.
pub const OLDEST_FORMAT_VERSION: u8 = 1;

pub(crate) const MAGIC: &[u8; 6] = b"bakare";
pub(crate) const HEADER_LEN: usize = 8;

/// Object kinds, as stored in byte 6 of the header. 2 and 8 are the key files (crypto).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ObjectKind {
    Config = 1,
    Pack = 3,
    Index = 4,
    Snapshot = 5,
    Session = 6,
    Checkpoint = 7,
    Gc = 9,
    Parity = 10,
}

pub(crate) fn header(kind: ObjectKind) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..6].copy_from_slice(MAGIC);
    h[6] = kind as u8;
    h[7] = FORMAT_VERSION;
    h
}

/// Checks the header of `bytes` (of object `name`) and returns the rest.
pub(crate) fn check_header<'a>(name: &str, kind: ObjectKind, bytes: &'a [u8]) -> Result<&'a [u8]> {
    check_header_version(name, kind, bytes).map(|(_, body)| body)
}

/// [`check_header`], with the object's format version.
pub(crate) fn check_header_version<'a>(name: &str, kind: ObjectKind, bytes: &'a [u8]) -> Result<(u8, &'a [u8])> {
    let (head, body) =
        bytes.split_at_checked(HEADER_LEN).ok_or_else(|| StoreError::corrupt(name, "shorter than its header"))?;
    if head.get(..6) != Some(MAGIC.as_slice()) {
        return Err(StoreError::corrupt(name, "bad magic"));
    }
    if head.get(6) != Some(&(kind as u8)) {
        return Err(StoreError::corrupt(name, format!("expected object kind {}, found {:?}", kind as u8, head.get(6))));
    }
    match head.get(7) {
        Some(&v @ OLDEST_FORMAT_VERSION..=FORMAT_VERSION) => Ok((v, body)),
        Some(&found) if found > FORMAT_VERSION => Err(StoreError::NewerFormat { found, supported: FORMAT_VERSION }),
        other => Err(StoreError::corrupt(name, format!("unknown format version {other:?}"))),
    }
}

/// Reads a content-addressed object and checks that its bytes hash to its name.
pub(crate) fn get_verified(backend: &dyn Backend, path: &str, expected: &Digest) -> Result<Vec<u8>> {
    let bytes = backend.get(path)?;
    verify_name(path, &bytes, expected)?;
    Ok(bytes)
}

pub(crate) fn verify_name(path: &str, bytes: &[u8], expected: &Digest) -> Result<()> {
    if checksum(bytes) != *expected {
        return Err(StoreError::corrupt(path, "content does not match its name (hash mismatch)"));
    }
    Ok(())
}

/// Reads an object named by the hash of its bytes (`<folder>/<hex id>`) and checks the name.
pub(crate) fn get_named(backend: &dyn Backend, path: &str) -> Result<Vec<u8>> {
    let id = id_of_path(path).ok_or_else(|| StoreError::corrupt(path, "name is not an id"))?;
    get_verified(backend, path, &id)
}

/// `header(kind) || plain` sealed with `key` (AAD = the header); returns the object's id (the
/// hash of its bytes) and its bytes. Index segments and GC marks are written this way.
pub(crate) fn seal_object(kind: ObjectKind, plain: &[u8], key: &SymmetricKey) -> Result<(Digest, Vec<u8>)> {
    let head = header(kind);
    let mut out = head.to_vec();
    key.seal_into(&head, plain, &mut out)?;
    Ok((checksum(&out), out))
}

/// The plaintext of an object written by [`seal_object`], header and seal checked.
pub(crate) fn open_object(name: &str, kind: ObjectKind, bytes: &[u8], key: &SymmetricKey) -> Result<Vec<u8>> {
    let sealed = check_header(name, kind, bytes)?;
    let head = bytes.get(..HEADER_LEN).unwrap_or_default();
    key.open(head, sealed).map_err(|e| StoreError::crypto(name, e))
}

/// The id at the end of an object path such as `snapshots/<hex>`.
pub(crate) fn id_of_path(path: &str) -> Option<Digest> {
    path.rsplit('/').next().and_then(Digest::from_hex)
}

/// Decodes postcard bytes that must hold exactly one value: trailing bytes are refused, so
/// that every object has one encoding (found by fuzzing: `postcard::from_bytes` ignores them).
pub(crate) fn decode_exact<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| StoreError::corrupt(name, e.to_string()))?;
    if !rest.is_empty() {
        return Err(StoreError::corrupt(name, format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod format_doc {
    use super::ObjectKind;

    /// docs/FORMAT.md's table of object kinds, parsed: the row `kind: 1 config, 2 …`.
    fn documented() -> Vec<(u8, String)> {
        let doc = include_str!("../../../docs/FORMAT.md");
        let row = doc.lines().find(|l| l.contains("| kind: ")).unwrap_or_default();
        let list = row.split("kind: ").nth(1).unwrap_or_default().trim_end_matches(['|', ' ']);
        list.split(", ")
            .filter_map(|item| {
                let (n, name) = item.split_once(' ')?;
                Some((n.parse().ok()?, name.to_string()))
            })
            .collect()
    }

    #[test]
    fn the_object_kind_table_in_format_md_matches_the_code() {
        let doc = documented();
        // An exhaustive match: a new kind does not compile until it is named here (and then
        // the table must list it).
        let name = |k: ObjectKind| match k {
            ObjectKind::Config => "config",
            ObjectKind::Pack => "pack",
            ObjectKind::Index => "index segment",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Session => "session",
            ObjectKind::Checkpoint => "checkpoint",
            ObjectKind::Gc => "GC mark",
            ObjectKind::Parity => "parity",
        };
        let kinds = [
            ObjectKind::Config,
            ObjectKind::Pack,
            ObjectKind::Index,
            ObjectKind::Snapshot,
            ObjectKind::Session,
            ObjectKind::Checkpoint,
            ObjectKind::Gc,
            ObjectKind::Parity,
        ];
        // The key files' kinds live in the crypto crate (2 and 8).
        let mut code: Vec<(u8, String)> = kinds.iter().map(|k| (*k as u8, name(*k).to_string())).collect();
        code.push((2, "master key file".into()));
        code.push((8, "put-only key file".into()));
        code.sort();
        assert_eq!(doc, code, "docs/FORMAT.md's object kinds and the code disagree");
    }
}
