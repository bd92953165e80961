//! `bakare cat config|snapshot|tree|pack|index|keys [ID]`: one repository object, decrypted and
//! decoded, as JSON (names as text where they are UTF-8, else as byte arrays): for
//! debugging and for scripts that want what `ls` and `snapshots` leave out.

use anyhow::{Context as _, Result, bail};
use bakare_store::{BlobId, Node, PackId, pack_path, read_pack_table};
use serde_json::{Value, json};

use crate::Outcome;
use crate::context::Context;
use crate::output::time;

fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!(bytes),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn run(ctx: &Context, what: &str, id: Option<&str>) -> Result<Outcome> {
    let need = |what: &str| id.with_context(|| format!("name the {what}: bakare cat {what} ID"));
    let value = match what {
        "config" => {
            let repo = ctx.open(false)?;
            let c = repo.config();
            json!({"id": hex(&c.id), "chunker": c.chunker, "data_public": hex(&c.data_public),
                "pack_size": c.pack_size, "created": time(c.created_ns), "created_ns": c.created_ns,
                "format_version": bakare_store::FORMAT_VERSION})
        }
        "snapshot" => {
            let repo = ctx.open(false)?;
            let (id, s) = repo.find_snapshot(need("snapshot")?)?;
            json!({"id": id.to_hex(), "time": time(s.time_ns), "time_ns": s.time_ns, "host": s.host, "user": s.user,
                "paths": s.paths.iter().map(|p| text(p)).collect::<Vec<_>>(), "tags": s.tags,
                "root": s.root.to_hex(), "parent": s.parent.map(|p| p.to_hex()), "stats": s.stats,
                "program": s.program, "log": s.log})
        }
        "tree" => {
            let repo = ctx.open(false)?;
            let spec = need("tree")?;
            let id = BlobId::from_hex(spec).with_context(|| format!("{spec:?} is not a blob id (64 hex digits)"))?;
            let tree = repo.load_tree(&id)?;
            let entries: Vec<_> = tree
                .entries
                .iter()
                .map(|e| {
                    let node = match &e.node {
                        Node::File { size, chunks } => {
                            json!({"type": "file", "size": size, "chunks": chunks.iter().map(BlobId::to_hex).collect::<Vec<_>>()})
                        }
                        Node::Dir { tree } => json!({"type": "dir", "tree": tree.to_hex()}),
                        Node::Symlink { target } => json!({"type": "symlink", "target": text(target)}),
                        Node::CharDevice { rdev } | Node::BlockDevice { rdev } => {
                            json!({"type": e.node.kind_name(), "rdev": rdev})
                        }
                        other => json!({"type": other.kind_name()}),
                    };
                    let xattrs: Vec<_> =
                        e.extra.xattrs.iter().map(|x| json!({"name": text(&x.name), "value": text(&x.value)})).collect();
                    json!({"name": text(&e.name), "node": node, "mode": format!("{:04o}", e.meta.mode),
                        "uid": e.meta.uid, "gid": e.meta.gid, "mtime_ns": e.meta.mtime_ns, "error": e.error,
                        "ctime_ns": e.extra.ctime_ns, "btime_ns": e.extra.btime_ns, "link": e.extra.link,
                        "xattrs": xattrs})
                })
                .collect();
            json!({"id": id.to_hex(), "entries": entries})
        }
        "pack" => {
            let repo = ctx.open(false)?;
            let spec = need("pack")?;
            let id = PackId::from_hex(spec).with_context(|| format!("{spec:?} is not a pack id (64 hex digits)"))?;
            let path = pack_path(&id);
            let table = read_pack_table(repo.backend().as_ref(), &path, &repo.access().write_key().index_key)?;
            let blobs: Vec<_> = table
                .entries
                .iter()
                .map(|e| {
                    json!({"id": e.id.to_hex(), "kind": format!("{:?}", e.kind).to_lowercase(), "offset": e.offset,
                        "length": e.length, "raw_len": e.raw_len, "compressed": e.compressed,
                        "frame_at": e.frame_at})
                })
                .collect();
            json!({"id": id.to_hex(), "size": repo.backend().size(&path)?, "blobs": blobs})
        }
        "index" => {
            let repo = ctx.open(false)?;
            match id {
                // The segments: their ids.
                None => Value::Array(repo.index_segments()?.iter().map(|d| Value::String(d.to_hex())).collect()),
                Some(spec) => {
                    let digest = bakare_store::Digest::from_hex(spec)
                        .with_context(|| format!("{spec:?} is not an index segment id (64 hex digits)"))?;
                    let path = format!("index/{}", digest.to_hex());
                    let bytes = repo.backend().get(&path)?;
                    if bakare_crypto::checksum(&bytes) != digest {
                        bail!("{path} is corrupt: its content does not match its name");
                    }
                    let segment =
                        bakare_store::IndexSegment::decode(&path, &bytes, &repo.access().write_key().index_key)?;
                    let packs: Vec<_> = segment
                        .packs
                        .iter()
                        .map(|(pack, entries)| {
                            let blobs: Vec<_> = entries
                                .iter()
                                .map(|e| {
                                    json!({"id": e.id.to_hex(), "kind": format!("{:?}", e.kind).to_lowercase(),
                                        "offset": e.offset, "length": e.length, "raw_len": e.raw_len,
                                        "compressed": e.compressed, "frame_at": e.frame_at})
                                })
                                .collect();
                            json!({"pack": pack.to_hex(), "blobs": blobs})
                        })
                        .collect();
                    json!({"id": digest.to_hex(), "packs": packs})
                }
            }
        }
        "keys" => {
            let (repo, pass) = ctx.open_master()?;
            let keys: Vec<_> = repo.key_files(pass.as_bytes())?.iter().map(crate::commands::key::key_json).collect();
            Value::Array(keys)
        }
        other => bail!("cannot cat {other:?}"),
    };
    out!("{}", serde_json::to_string_pretty(&value)?)?;
    Ok(Outcome::Success)
}
