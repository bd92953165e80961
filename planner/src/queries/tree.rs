//! `dir_tree`: a changed folder's tree blob, from its listing, its files' contents and its
//! subfolders' trees. Its one effect, saving the tree blob, is idempotent (by content).

use bakare_store::{BlobId, Entry, Node, Tree};

use crate::db::Db;
use crate::inputs::{ChildKind, SourceDir};
use crate::queries::content::{Content, Stop, file_content};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeResult {
    Saved(BlobId),
    /// The repository failed: the run stops.
    Fatal(Stop),
}

#[salsa::tracked(returns(ref))]
pub fn dir_tree(db: &dyn Db, dir: SourceDir) -> TreeResult {
    db.log(format!("dir_tree {}", dir.path(db).display()));
    let listing = dir.listing(db);
    let mut entries = Vec::with_capacity(listing.children.len());
    for child in &listing.children {
        let (node, error) = match &child.kind {
            ChildKind::Resolved { node, error } => (node.clone(), error.clone()),
            ChildKind::File(f) => match file_content(db, *f) {
                Content::Read { size, chunks, .. } => (Node::File { size: *size, chunks: chunks.clone() }, None),
                Content::Unreadable(e) => (Node::File { size: f.fp(db).size, chunks: Vec::new() }, Some(e.clone())),
                Content::Fatal(e) => return TreeResult::Fatal(e.clone()),
            },
            ChildKind::Dir(d) => match dir_tree(db, *d) {
                TreeResult::Saved(id) => (Node::Dir { tree: *id }, d.listing(db).error.clone()),
                TreeResult::Fatal(e) => return TreeResult::Fatal(e.clone()),
            },
        };
        entries.push(Entry { name: child.name.clone(), node, meta: child.meta, error, extra: child.extra.clone() });
    }
    match db.run().repo.save_tree(&Tree { entries }) {
        Ok(saved) => TreeResult::Saved(saved.id),
        Err(e) => TreeResult::Fatal(Stop::from(&e)),
    }
}
