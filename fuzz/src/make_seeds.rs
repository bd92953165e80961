//! Writes the committed seed corpora: real objects of a small repository, made with the fixed
//! fuzzing key. Run from `fuzz/`: `cargo run --bin make-seeds`.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bakare_crypto::{KdfParams, seal_key_file, write_key_file};
use bakare_store::backend::{Backend, MemoryBackend};
use bakare_store::{
    Access, BlobKind, ChunkerParams, Entry, Extra, Metadata, Node, Repository, Snapshot, SnapshotStats, Tree,
};

fn write(target: &str, n: usize, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(format!("seed-{n}")), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = bakare_fuzz::key();
    let backend = Arc::new(MemoryBackend::new());
    Repository::init(backend.clone(), b"fuzz", KdfParams { m_kib: 8, t: 1, p: 1 }, ChunkerParams::default())?;
    // Re-open the initialised repository with the fixed key: config must name its public key.
    let mut config = Repository::read_config(backend.as_ref())?;
    config.data_public = key.write.data_public.0;
    let backend = Arc::new(MemoryBackend::new());
    backend.put("config", &config.encode()?)?;
    let repo = Repository::open_with_key(backend.clone(), Access::Master(key.clone()))?;
    let a = repo.save_blob(BlobKind::Data, b"hello, seed")?.id;
    let b = repo.save_blob(BlobKind::Data, &[0u8; 5000])?.id;
    let meta = Metadata { mode: 0o644, uid: 1000, gid: 1000, mtime_ns: 1_700_000_000_000_000_000 };
    let tree = Tree {
        entries: vec![
            Entry {
                name: b"a.txt".to_vec(),
                node: Node::File { size: 11, chunks: vec![a] },
                meta,
                error: None,
                extra: Extra::default(),
            },
            Entry {
                name: b"link".to_vec(),
                node: Node::Symlink { target: b"a.txt".to_vec() },
                meta,
                error: None,
                extra: Extra::default(),
            },
            Entry {
                name: b"zeros".to_vec(),
                node: Node::File { size: 5000, chunks: vec![b] },
                meta,
                error: None,
                extra: Extra::default(),
            },
        ],
    };
    let root = repo.save_tree(&tree)?.id;
    repo.flush()?;
    let snapshot = Snapshot {
        time_ns: 1_700_000_000_000_000_000,
        host: "seed".into(),
        user: "fuzz".into(),
        paths: vec![b"/home/fuzz".to_vec()],
        tags: vec!["t".into()],
        root,
        parent: None,
        stats: SnapshotStats::default(),
        program: "bakare seeds".into(),
        log: vec!["pre-hook: ok".into()],
    };
    let id = repo.save_snapshot(&snapshot)?;

    write("config", 0, &backend.get("config")?)?;
    write("key_file", 0, &seal_key_file(&key, b"fuzz", KdfParams { m_kib: 8, t: 1, p: 1 })?)?;
    write("key_file", 1, &write_key_file(&key.write))?;
    for (n, p) in backend.list("packs")?.iter().enumerate() {
        write("pack", n, &backend.get(p)?)?;
        if n == 0 {
            write("pack", 100, &bakare_store::parity::encode(&backend.get(p)?, 2)?)?;
        }
    }
    for (n, p) in backend.list("index")?.iter().enumerate() {
        write("index", n, &backend.get(p)?)?;
    }
    write("tree", 0, &tree.encode()?)?;
    write("snapshot", 0, &backend.get(&format!("snapshots/{id}"))?)?;
    let record = bakare_planner::MemoRecord::new(
        Path::new("/home/fuzz/a.txt"),
        bakare_planner::StatFingerprint {
            size: 11,
            mtime_ns: 5,
            ctime_ns: 6,
            ino: 7,
            dev: 8,
            linked: false,
            owner: Some(bakare_planner::Owner { mode: 0o644, uid: 1000, gid: 100, btime_ns: Some(4) }),
        },
        false,
        vec![a],
        Some(vec![bakare_store::Xattr { name: b"user.mime".to_vec(), value: b"text/plain".to_vec() }]),
    );
    let mut memo = vec![u8::try_from(record.key.len())?];
    memo.extend_from_slice(&record.key);
    memo.extend_from_slice(&record.encode());
    write("memo_record", 0, &memo)?;
    // A folder's record, with its own entry.
    let own = bakare_planner::DirStat {
        owner: bakare_planner::Owner { mode: 0o755, uid: 0, gid: 0, btime_ns: None },
        mtime_ns: -3,
        ctime_ns: 9,
        xattrs: Some(vec![bakare_store::Xattr { name: b"user.x".to_vec(), value: vec![1, 2] }]),
    };
    let totals = bakare_planner::Totals { files: 2, bytes: 22, dirs: 1 };
    let folder = bakare_planner::DirRecord::new(Path::new("/home/fuzz"), a, totals, Some(own));
    let mut memo = vec![u8::try_from(folder.key.len())?];
    memo.extend_from_slice(&folder.key);
    memo.extend_from_slice(&folder.encode());
    write("memo_record", 1, &memo)?;
    // What a backup asks `bakare watch`, and its answer.
    let mut ask = Vec::new();
    let sync = bakare_planner::watch::Request::Sync { paths: vec![b"/home/fuzz".to_vec()], since: 5, probe: false };
    bakare_planner::watch::send(&mut ask, &sync)?;
    write("watch_message", 0, &ask)?;
    let mut answer = Vec::new();
    let reply = bakare_planner::watch::SyncReply {
        epoch: [9; 16],
        generation: 12,
        floor: 1,
        links: 3,
        uncovered: None,
        folders: vec![b"/home/fuzz/a".to_vec()],
        named: vec![(b"/home/fuzz/b".to_vec(), vec![b"c.txt".to_vec()])],
        subtrees: vec![b"/home/fuzz/new".to_vec()],
    };
    bakare_planner::watch::send(&mut answer, &reply)?;
    write("watch_message", 1, &answer)?;
    let session = bakare_store::Session {
        id: [3; 16],
        host: "seed".into(),
        started_ns: 1,
        heartbeat_ns: 2,
        paths: vec![b"/home/fuzz".to_vec()],
        options: bakare_store::SessionOptions::default(),
        checkpoints: 1,
        interrupted: false,
        committing: None,
    };
    write("session", 0, &session.encode(&key.write.index_key)?)?;
    let checkpoint = bakare_store::Checkpoint {
        refs: bakare_store::CheckpointRefs { session: [3; 16], seq: 1, blobs: vec![a] },
        entries: vec![(record.key.clone(), record.encode())],
    };
    write("session", 1, &checkpoint.encode(&key.write)?.1)?;
    let mark = bakare_store::gc::GcRecord { mark_ns: 5, host: "h".into(), candidates: vec![bakare_store::PackId(a.0)] };
    write("session", 2, &mark.encode(&key.write.index_key)?.1)?;
    let mut rt = vec![7, 0, 0, 0, 0x10, 4];
    rt.extend_from_slice(b"some blob bytes that compress compress compress compress well");
    write("roundtrip", 0, &rt)?;
    println!("seeds written under fuzz/corpus/");
    Ok(())
}
