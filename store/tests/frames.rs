//! Small data blobs are compressed together in frames: smaller than each compressed alone,
//! each still read, deduplicated and found on its own, and a damaged frame loses only its
//! own blobs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bakare_store::backend::{Backend, MemoryBackend};
use bakare_store::verify::{ReadData, verify};
use bakare_store::{BlobId, BlobKind, ChunkerParams, KdfParams, Repository, read_pack_table};

/// The licence every "source file" starts with.
const LICENCE: &str = "// Copyright the project's authors. Licensed under the Apache License, Version 2.0
// (the \"License\"); you may not use this file except in compliance with the License. You
// may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0. Unless
// required by applicable law or agreed to in writing, software distributed under the
// License is distributed on an \"AS IS\" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND,
// either express or implied. See the License for the specific language governing
// permissions and limitations under the License.
";

/// A small "source file": the licence, shared words, its own numbers; 1.5 to 4 KiB.
fn small_file(n: u32) -> Vec<u8> {
    let mut out = format!("{LICENCE}// file {n}\n").into_bytes();
    let words = ["fn", "let", "match", "impl", "struct", "return", "self", "Result", "Vec", "String"];
    let mut x = n.wrapping_mul(2_654_435_761);
    while out.len() < 1536 + (n as usize % 6) * 512 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(words[x as usize % words.len()].as_bytes());
        out.extend_from_slice(if x.is_multiple_of(7) { b";\n" } else { b" " });
        if x.is_multiple_of(11) {
            out.extend_from_slice(format!("{}", x % 1000).as_bytes());
        }
    }
    out
}

fn pack_bytes(backend: &MemoryBackend) -> u64 {
    backend.list("packs").unwrap().iter().map(|p| backend.size(p).unwrap()).sum()
}

#[test]
fn small_blobs_share_frames_and_stay_addressable() {
    let backend = Arc::new(MemoryBackend::new());
    let kdf = KdfParams { m_kib: 64, t: 1, p: 1 };
    let repo = Repository::init(backend.clone(), b"pw", kdf, ChunkerParams::default()).unwrap();
    let files: Vec<Vec<u8>> = (0..600).map(small_file).collect();
    let raw: usize = files.iter().map(Vec::len).sum();
    let alone: usize = files.iter().map(|f| zstd::bulk::compress(f, 1).unwrap().len().min(f.len())).sum();
    let ids: Vec<BlobId> = files.iter().map(|f| repo.save_blob(BlobKind::Data, f).unwrap().id).collect();
    // A large blob beside them is sealed alone.
    let mut large = vec![0u8; 300 << 10];
    blake3::Hasher::new().update(b"large").finalize_xof().fill(&mut large);
    let large_id = repo.save_blob(BlobKind::Data, &large).unwrap().id;
    // Saving one again deduplicates it, even while its frame is open.
    assert_eq!(repo.save_blob(BlobKind::Data, &files[3]).unwrap().stored, 0);
    repo.flush().unwrap();
    assert_eq!(repo.save_blob(BlobKind::Data, &files[3]).unwrap().stored, 0, "and once written");

    // The frames: several blobs each, and the whole far smaller than the blobs alone.
    let stored = pack_bytes(&backend) - large.len() as u64;
    assert!((stored as usize) * 3 < alone * 2, "{raw} bytes: {stored} in frames, {alone} compressed alone");
    let mut frames: HashMap<(String, u32), usize> = HashMap::new();
    for pack in backend.list("packs").unwrap() {
        let table = read_pack_table(backend.as_ref(), &pack, &repo.access().write_key().index_key).unwrap();
        for e in table.entries {
            if e.id == large_id {
                assert_eq!(e.frame_at, None, "a large blob is sealed alone");
            } else {
                assert!(e.frame_at.is_some(), "a small blob is framed");
                *frames.entry((pack.clone(), e.offset)).or_default() += 1;
            }
        }
    }
    assert!(frames.len() >= 2 && frames.values().all(|&n| n > 10), "{frames:?}");

    // Every blob reads back, from this handle and from a new one (places from the segments).
    for (id, f) in ids.iter().zip(&files) {
        assert_eq!(&repo.load_blob(id).unwrap(), f);
    }
    let again = Repository::open_with_passphrase(backend.clone(), b"pw").unwrap();
    for (id, f) in ids.iter().zip(&files).rev() {
        assert_eq!(&again.load_blob(id).unwrap(), f);
    }
    assert_eq!(again.load_blob(&large_id).unwrap(), large);
    assert!(verify(&again, ReadData::All).unwrap().is_clean());

    // One flipped byte inside one frame: that frame's blobs fail, by name; no other does.
    let loc = again.blob_location(&ids[0]).unwrap();
    let path = bakare_store::pack_path(&loc.pack);
    let mut bytes = backend.get(&path).unwrap();
    bytes[loc.entry.offset as usize + loc.entry.length as usize / 2] ^= 0x10;
    backend.tamper(&path, bytes);
    let fresh = Repository::open_with_passphrase(backend.clone(), b"pw").unwrap();
    let in_frame: HashSet<BlobId> = ids
        .iter()
        .filter(|id| {
            let l = fresh.blob_location(id).unwrap();
            l.pack == loc.pack && l.entry.offset == loc.entry.offset
        })
        .copied()
        .collect();
    assert!(in_frame.len() > 10);
    for (id, f) in ids.iter().zip(&files) {
        match fresh.load_blob(id) {
            Ok(data) => {
                assert!(!in_frame.contains(id), "a blob of the damaged frame read");
                assert_eq!(&data, f);
            }
            Err(e) => {
                assert!(in_frame.contains(id), "a blob outside the damaged frame failed: {e}");
                assert!(e.to_string().contains("frame at") && e.to_string().contains(&path), "{e}");
            }
        }
    }
    let report = verify(&fresh, ReadData::All).unwrap();
    assert!(
        report.problems.iter().any(|p| p.object == path
            && p.problem.contains(&format!("{} of {} blobs unreadable", in_frame.len(), frames_in(&fresh, &path)))),
        "{:?}",
        report.problems
    );
}

/// How many blobs the index places in a pack.
fn frames_in(repo: &Repository, path: &str) -> usize {
    let table = read_pack_table(repo.backend().as_ref(), path, &repo.access().write_key().index_key).unwrap();
    table.entries.len()
}

/// Two frames of one pack with sealed bytes of the same length, each read as a run of its
/// blobs: each frame's blobs come from that frame (frames are kept by their place in the
/// pack, not by their place in the bytes a run read).
#[test]
fn runs_of_two_frames_of_one_length_read_their_own_blobs() {
    let backend = Arc::new(MemoryBackend::new());
    let kdf = KdfParams { m_kib: 64, t: 1, p: 1 };
    let repo = Repository::init(backend.clone(), b"pw", kdf, ChunkerParams::default()).unwrap();
    // Incompressible 100 KiB blobs: six fill a frame, and equal frames seal to equal lengths.
    let blobs: Vec<Vec<u8>> = (0..12u8)
        .map(|n| {
            let mut b = vec![0u8; 100 << 10];
            blake3::Hasher::new().update(&[n]).finalize_xof().fill(&mut b);
            b
        })
        .collect();
    let ids: Vec<BlobId> = blobs.iter().map(|b| repo.save_blob(BlobKind::Data, b).unwrap().id).collect();
    repo.flush().unwrap();
    let repo = Repository::open_with_passphrase(backend, b"pw").unwrap();
    let locs: Vec<_> = ids.iter().map(|id| repo.blob_location(id).unwrap()).collect();
    let (first, second) = (&locs[..6], &locs[6..]);
    assert!(first.iter().all(|l| l.entry.same_sealed(&first[0].entry) && l.entry.frame_at.is_some()));
    assert!(second.iter().all(|l| l.entry.same_sealed(&second[0].entry)));
    assert_eq!(first[0].pack, second[0].pack, "one pack");
    assert_ne!(first[0].entry.offset, second[0].entry.offset, "two frames");
    assert_eq!(first[0].entry.length, second[0].entry.length, "of one length");
    for (run, want) in [(first, &blobs[..6]), (second, &blobs[6..])] {
        assert_eq!(bakare_store::adjacent_run(run), 6);
        assert_eq!(repo.load_run(run).unwrap(), want);
    }
}
