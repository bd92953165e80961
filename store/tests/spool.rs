//! Open packs spooled to files in a local repository: what is written is what a pack in
//! memory would be, and no spool file outlives its pack.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bakare_store::KdfParams;
use bakare_store::backend::{Backend, LocalBackend};
use bakare_store::verify::{ReadData, verify};
use bakare_store::{BlobKind, ChunkerParams, Repository};

fn spool_files(root: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

#[test]
fn spooled_packs_read_back_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));

    let kdf = KdfParams { m_kib: 64, t: 1, p: 1 };
    let repo =
        Repository::init_with_pack_size(backend.clone(), b"pw", kdf, ChunkerParams::default(), 64 << 10).unwrap();
    let blobs: Vec<Vec<u8>> = (0..200u32).map(|i| (0..5000).map(|j| ((i * 7 + j) % 251) as u8).collect()).collect();
    let ids: Vec<_> = blobs.iter().map(|b| repo.save_blob(BlobKind::Data, b).unwrap().id).collect();
    // Full packs were moved into place as they filled; the open ones are still spooled.
    assert!(!spool_files(dir.path()).is_empty());
    repo.flush().unwrap();
    assert!(spool_files(dir.path()).is_empty(), "{:?}", spool_files(dir.path()));
    let again = Repository::open_with_passphrase(backend.clone(), b"pw").unwrap();
    for (id, b) in ids.iter().zip(&blobs) {
        assert_eq!(&again.load_blob(id).unwrap(), b);
    }
    let report = verify(&again, ReadData::All).unwrap();
    assert!(report.is_clean(), "{report:?}");

    // A handle dropped with open packs (a failed backup) removes their spool files.
    let third = Repository::open_with_passphrase(backend, b"pw").unwrap();
    third.save_blob(BlobKind::Data, b"never flushed").unwrap();
    assert_eq!(spool_files(dir.path()).len(), 1);
    drop(third);
    assert!(spool_files(dir.path()).is_empty());
}
