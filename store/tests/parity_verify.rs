//! verify --read-data compares each parity object with its pack while the pack is in
//! memory: a parity object of the right size that belongs to another pack is found.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bakare_store::KdfParams;
use bakare_store::backend::{Backend, MemoryBackend};
use bakare_store::verify::{ReadData, verify};
use bakare_store::{BlobKind, ChunkerParams, Repository};

#[test]
fn a_parity_object_of_another_pack_is_found_when_packs_are_read() {
    let backend = Arc::new(MemoryBackend::new());
    let kdf = KdfParams { m_kib: 64, t: 1, p: 1 };
    let mut repo =
        Repository::init_with_pack_size(backend.clone(), b"pw", kdf, ChunkerParams::default(), 64 << 10).unwrap();
    repo.set_parity(4);
    // Two blobs that do not compress, each filling a pack of its own: packs of one length.
    for seed in [1u8, 2] {
        let mut blob = vec![0u8; 70 << 10];
        blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut blob);
        repo.save_blob(BlobKind::Data, &blob).unwrap();
    }
    repo.flush().unwrap();
    let parity = backend.list("parity").unwrap();
    assert_eq!(parity.len(), 2);
    let clean = verify(&repo, ReadData::All).unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    // The survey counted its packs, and what it read of them, where a CLI can show it.
    let (done, total, read) = repo.progress().get();
    assert_eq!((done, total), (clean.packs.len() as u64, clean.packs.len() as u64));
    assert_eq!(read, clean.bytes_read);
    // The first pack's parity under the second's name.
    let first = backend.get(&parity[0]).unwrap();
    backend.tamper(&parity[1], first);
    let structure = verify(&repo, ReadData::No).unwrap();
    assert!(structure.is_clean(), "same length and a valid object: only the data tells");
    let read = verify(&repo, ReadData::All).unwrap();
    assert!(
        read.problems.iter().any(|p| p.object == parity[1] && p.problem.contains("does not match its pack")),
        "{:?}",
        read.problems
    );
}
