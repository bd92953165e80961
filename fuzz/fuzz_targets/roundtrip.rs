#![no_main]
//! Store blobs, let one byte of one pack rot, load them all: each load gives the original
//! bytes or an error, never other bytes. Input: rot offset (u32 LE), xor byte, blob size
//! unit, then the blob bytes.
use std::sync::Arc;

use bakare_store::KdfParams;
use bakare_store::backend::{Backend, MemoryBackend};
use bakare_store::{BlobKind, ChunkerParams, Repository};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, body)) = data.split_at_checked(6) else { return };
    let at = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let (xor, unit) = (head[4], usize::from(head[5]).max(1) * 8);
    let backend = Arc::new(MemoryBackend::new());
    let kdf = KdfParams { m_kib: 8, t: 1, p: 1 };
    let Ok(repo) = Repository::init(backend.clone(), b"fuzz", kdf, ChunkerParams::default()) else { return };
    let blobs: Vec<&[u8]> = body.chunks(unit).collect();
    let ids: Vec<_> = blobs.iter().filter_map(|b| repo.save_blob(BlobKind::Data, b).ok()).map(|o| o.id).collect();
    assert_eq!(ids.len(), blobs.len());
    if repo.flush().is_err() {
        return;
    }
    if let Some(pack) = backend.list("packs").ok().and_then(|p| p.into_iter().next())
        && let Ok(mut bytes) = backend.get(&pack)
        && !bytes.is_empty()
    {
        let i = at % bytes.len();
        bytes[i] ^= xor;
        backend.tamper(&pack, bytes);
    }
    let reopened = Repository::open_with_key(backend, repo.access().clone()).ok();
    for r in [Some(&repo), reopened.as_ref()].into_iter().flatten() {
        let _ = r.load_index();
        for (id, original) in ids.iter().zip(&blobs) {
            if let Ok(loaded) = r.load_blob(id) {
                assert_eq!(&loaded, original, "a damaged pack gave wrong data");
            }
        }
    }
});
