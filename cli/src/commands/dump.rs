//! `bakare dump SNAPSHOT:PATH`: a file's bytes to standard output, or a folder (or the whole
//! snapshot) as a tar archive, as restic's `dump` does. Nothing is written to disk.
//!
//! One damaged file does not stop the archive: its lost ranges are written as zeros (its
//! size is in the header already), it is named on standard error, and the exit code is 4.

use std::io::{BufWriter, IsTerminal as _, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use bakare_planner::{Start, find_node};
use bakare_store::{BlobId, Entry, Metadata, Node, Repository};

use crate::Outcome;
use crate::args::DumpArgs;
use crate::commands::ls::{in_snapshot, target_and_path};
use crate::context::Context;

pub fn run(ctx: &Context, a: &DumpArgs) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let (spec, path) = target_and_path(&a.target, a.dir.as_deref())?;
    let (id, snap) = repo.find_snapshot_for(spec, &a.filter.filter(), path)?;
    let start = find_node(&repo, snap.root, path).map_err(|e| in_snapshot(e, &id, &snap))?;
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut damaged = Vec::new();
    match start {
        Start::Entry(e) => match &e.node {
            Node::File { chunks, .. } => {
                if let Some(why) = &e.error {
                    bail!("{path} was not backed up in full: {why}");
                }
                for c in chunks {
                    let bytes = repo.load_blob(c).with_context(|| format!("reading {path}"))?;
                    out.write_all(&bytes)?;
                }
            }
            Node::Symlink { target } => {
                bail!("{path} is a symlink to {}: dump its target instead", String::from_utf8_lossy(target))
            }
            other => bail!("{path} is a {}, which has no contents to dump", other.kind_name()),
        },
        Start::Tree(tree) => {
            if std::io::stdout().is_terminal() {
                bail!("{} is a folder: its tar archive would go to the terminal; redirect it to a file", nice(path));
            }
            let base = Path::new(path.trim_matches('/')).file_name().map(PathBuf::from).unwrap_or_default();
            let mut tar = tar::Builder::new(&mut out);
            tar.follow_symlinks(false);
            // The folder itself first, with its mode, owner and time (a snapshot's root has
            // no entry: the archive then holds its paths only).
            if let Some(e) = folder_entry(&repo, snap.root, path) {
                let mut h = header(tar::EntryType::Directory, &e.meta, 0);
                tar.append_data(&mut h, base.join(""), std::io::empty())?;
            }
            write_tree(&repo, &tree, &base, &mut tar, &mut damaged)?;
            tar.finish()?;
        }
    }
    out.flush()?;
    for (p, why) in &damaged {
        say!("bakare: damaged: {}: {why} (its lost ranges are zeros in the archive)", p.display());
    }
    Ok(if damaged.is_empty() { Outcome::Success } else { Outcome::Incomplete })
}

/// The entry of the folder at `path` in its parent's listing (`None` for the root).
fn folder_entry(repo: &Repository, root: BlobId, path: &str) -> Option<Entry> {
    let trimmed = Path::new(path.trim_end_matches('/'));
    let (parent, name) = (trimmed.parent()?, trimmed.file_name()?);
    let Ok(Start::Tree(parent)) = find_node(repo, root, &parent.to_string_lossy()) else { return None };
    repo.load_tree(&parent).ok()?.get(name.as_bytes()).cloned()
}

fn nice(path: &str) -> &str {
    if path.trim_matches('/').is_empty() { "the snapshot" } else { path }
}

fn header(kind: tar::EntryType, meta: &Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(u64::from(meta.uid));
    h.set_gid(u64::from(meta.gid));
    h.set_mtime(u64::try_from(meta.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0));
    h.set_size(size);
    h
}

/// Appends the folder `tree` under `dir` (`""` for the archive's top), entries in name order.
fn write_tree<W: Write>(
    repo: &Repository,
    tree: &BlobId,
    dir: &Path,
    tar: &mut tar::Builder<W>,
    damaged: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    let listing = match repo.load_tree(tree) {
        Ok(t) => t,
        Err(e) => {
            damaged.push((dir.to_path_buf(), format!("its listing cannot be read: {e}")));
            return Ok(());
        }
    };
    for e in listing.entries {
        let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
        write_entry(repo, &e, &path, tar, damaged)?;
    }
    Ok(())
}

use std::os::unix::ffi::OsStrExt as _;

fn write_entry<W: Write>(
    repo: &Repository,
    e: &Entry,
    path: &Path,
    tar: &mut tar::Builder<W>,
    damaged: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    match &e.node {
        Node::Dir { tree } => {
            let mut h = header(tar::EntryType::Directory, &e.meta, 0);
            // "name/", as tar writes folders.
            tar.append_data(&mut h, path.join(""), std::io::empty())?;
            write_tree(repo, tree, path, tar, damaged)?;
        }
        Node::File { size, chunks } => {
            if let Some(why) = &e.error {
                damaged.push((path.to_path_buf(), format!("not backed up in full: {why}")));
            }
            let mut h = header(tar::EntryType::Regular, &e.meta, *size);
            let body = FileBody { repo, chunks, at: 0, buf: Vec::new(), pos: 0, left: *size, path, damaged };
            tar.append_data(&mut h, path, body)?;
        }
        Node::Symlink { target } => {
            let mut h = header(tar::EntryType::Symlink, &e.meta, 0);
            tar.append_link(&mut h, path, std::ffi::OsStr::from_bytes(target))?;
        }
        Node::Fifo => {
            let mut h = header(tar::EntryType::Fifo, &e.meta, 0);
            tar.append_data(&mut h, path, std::io::empty())?;
        }
        Node::CharDevice { rdev } | Node::BlockDevice { rdev } => {
            let kind =
                if matches!(e.node, Node::CharDevice { .. }) { tar::EntryType::Char } else { tar::EntryType::Block };
            let mut h = header(kind, &e.meta, 0);
            let (major, minor) = (libc::major(*rdev), libc::minor(*rdev));
            h.set_device_major(major)?;
            h.set_device_minor(minor)?;
            tar.append_data(&mut h, path, std::io::empty())?;
        }
        // tar has no sockets; a restore would not make one either.
        Node::Socket => {}
    }
    Ok(())
}

/// A file's contents as a reader over its chunks, read one at a time; exactly `left` bytes
/// (the header's size). From a chunk that cannot be read on, zeros (and the file recorded).
struct FileBody<'a> {
    repo: &'a Repository,
    chunks: &'a [BlobId],
    at: usize,
    buf: Vec<u8>,
    pos: usize,
    left: u64,
    path: &'a Path,
    damaged: &'a mut Vec<(PathBuf, String)>,
}

impl std::io::Read for FileBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.buf.len() {
            self.pos = 0;
            self.buf = match self.chunks.get(self.at) {
                Some(c) => match self.repo.load_blob(c) {
                    Ok(b) => b,
                    Err(err) => {
                        self.damaged.push((self.path.to_path_buf(), err.to_string()));
                        // The lost chunk's length is not known here, so the bytes after it
                        // would land at wrong offsets: zeros to the end instead.
                        self.at = self.chunks.len();
                        vec![0; usize::try_from(self.left.min(1 << 20)).unwrap_or(1 << 20)]
                    }
                },
                // Fewer bytes than the size said (a file recorded without its content).
                None => vec![0; usize::try_from(self.left.min(1 << 20)).unwrap_or(1 << 20)],
            };
            self.at += 1;
        }
        let avail = self.buf.get(self.pos..).unwrap_or_default();
        let n = avail.len().min(out.len()).min(usize::try_from(self.left).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}
