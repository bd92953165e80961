//! Snapshots, session records and checkpoints of a repository: written, listed (remote
//! storage in parallel, through the tree cache), and named (`latest~N`, id prefixes).

use bakare_crypto::MasterKey;

use super::{Repository, SnapshotList};
use crate::format::object::{get_verified, id_of_path, verify_name};
use crate::format::session::{self, Checkpoint, Session};
use crate::format::snapshot::Snapshot;
use crate::ids::SnapshotId;
use crate::{Result, StoreError};

/// Whether an object exists at `path`.
fn exists(core: &super::Core, path: &str) -> Result<bool> {
    match core.backend.size(path) {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether session `id`'s record exists and no declaration of its expiry does.
pub(crate) fn session_standing(core: &super::Core, id: &[u8; 16]) -> Result<bool> {
    // Both asked at once: a backup asks after every index segment, a round trip each.
    let width = crate::backend::request_width(core.backend.as_ref());
    let paths = vec![session::record_path(id), session::declaration_path(id)];
    let mut found = crate::backend::in_parallel(paths, width, |p| exists(core, &p)).into_iter();
    // (in_parallel answers each item: the defaults, not standing, are never taken)
    let record = found.next().unwrap_or(Ok(false))?;
    let declared = found.next().unwrap_or(Ok(true))?;
    Ok(record && !declared)
}

impl Repository {
    /// Writes a snapshot (its mirror first). Call [`Repository::flush`] before.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId> {
        self.save_snapshot_after(snapshot, |_| Ok(()))
    }

    /// As [`Repository::save_snapshot`], calling `before` with the snapshot's id before
    /// anything is written (a backup records it in its session first).
    pub fn save_snapshot_after(
        &self,
        snapshot: &Snapshot,
        before: impl FnOnce(&SnapshotId) -> Result<()>,
    ) -> Result<SnapshotId> {
        let (id, bytes) = snapshot.encode(self.core.access.write_key())?;
        before(&id)?;
        self.core.backend.put(&format!("snapshots.mirror/{id}"), &bytes)?;
        self.core.backend.put(&format!("snapshots/{id}"), &bytes)?;
        Ok(id)
    }

    /// Whether `snapshots/<id>` or its mirror exists (needs no key).
    pub fn snapshot_exists(&self, id: &SnapshotId) -> Result<bool> {
        for dir in ["snapshots", "snapshots.mirror"] {
            if exists(&self.core, &format!("{dir}/{id}"))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every readable snapshot, oldest first, and a message for each that could be read from
    /// neither its file nor its mirror.
    pub fn snapshots(&self) -> Result<SnapshotList> {
        let master = self.core.access.master()?;
        let mut ids: Vec<SnapshotId> = Vec::new();
        for dir in ["snapshots", "snapshots.mirror"] {
            ids.extend(self.core.backend.list(dir)?.iter().filter_map(|p| id_of_path(p)).map(SnapshotId));
        }
        ids.sort();
        ids.dedup();
        let mut out = Vec::new();
        let mut problems = Vec::new();
        // Remote storage answers slowly but in parallel: as many readers as connections.
        let width = crate::backend::request_width(self.core.backend.as_ref());
        let read = crate::backend::in_parallel(ids, width, |id| (id, self.read_snapshot(&id, master)));
        for (id, r) in read {
            match r {
                Ok(s) => out.push((id, s)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems.sort();
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        Ok(SnapshotList { snapshots: out, problems })
    }

    fn read_snapshot(&self, id: &SnapshotId, master: &MasterKey) -> Result<Snapshot> {
        let cache = self.reader.tree_cache.get();
        let mut first_err = None;
        for dir in ["snapshots", "snapshots.mirror"] {
            let path = format!("{dir}/{id}");
            // A cached copy is checked like a download; one that fails is read again.
            if let Some(bytes) = cache.and_then(|c| c.get_object(&path))
                && let Ok(s) =
                    verify_name(&path, &bytes, id.digest()).and_then(|()| Snapshot::decode(&path, &bytes, master))
            {
                return Ok(s);
            }
            let read = get_verified(self.core.backend.as_ref(), &path, id.digest()).and_then(|b| {
                let s = Snapshot::decode(&path, &b, master)?;
                if let Some(c) = cache {
                    c.put_object(&path, &b);
                }
                Ok(s)
            });
            match read {
                Ok(s) => return Ok(s),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| StoreError::NoSuchSnapshot(id.to_hex())))
    }

    /// Resolves `latest`, `latest~N` or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        self.find_snapshot_for(spec, &SnapshotFilter::default(), "")
    }

    /// Resolves `latest` and `latest~N` among the snapshots that `filter` lets through and
    /// that hold `path` (any, for `""` or `/`), or a unique id prefix (which names one
    /// snapshot whatever the filter).
    pub fn find_snapshot_for(&self, spec: &str, filter: &SnapshotFilter, path: &str) -> Result<(SnapshotId, Snapshot)> {
        let mut all = self.snapshots()?.snapshots;
        if let Some(back) = spec.strip_prefix("latest") {
            let n: usize = match back.strip_prefix('~') {
                None if back.is_empty() => 0,
                Some(n) => n.parse().map_err(|_| StoreError::NoSuchSnapshot(spec.into()))?,
                None => return Err(StoreError::NoSuchSnapshot(spec.into())),
            };
            if all.is_empty() {
                return Err(StoreError::NoSnapshots);
            }
            let total = all.len();
            all.retain(|(_, s)| filter.matches(s) && holds(s, path.as_bytes()));
            let what = filter.describe(path);
            let unfit = |why: String| StoreError::NoFittingSnapshot { spec: spec.to_string(), why };
            let of_all = format!("the {total} snapshots");
            if all.is_empty() {
                return Err(unfit(if total == 1 {
                    format!("the repository's one snapshot is not among those that {what}")
                } else {
                    format!("none of {of_all} {what}")
                }));
            }
            let at = all.len().checked_sub(n + 1).ok_or_else(|| {
                unfit(match (all.len() == total, total) {
                    (true, 1) => "the repository has only one snapshot".to_string(),
                    (true, _) => format!("the repository has only {total} snapshots"),
                    (false, _) => format!("only {} of {of_all} {what}", all.len()),
                })
            })?;
            return Ok(all.swap_remove(at));
        }
        let spec_lc = spec.to_ascii_lowercase();
        if spec_lc.is_empty() || !spec_lc.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::NoSuchSnapshot(spec.into()));
        }
        let mut matches: Vec<_> = all.into_iter().filter(|(id, _)| id.to_hex().starts_with(&spec_lc)).collect();
        match matches.len() {
            0 => Err(StoreError::NoSuchSnapshot(spec.into())),
            1 => Ok(matches.remove(0)),
            count => Err(StoreError::AmbiguousSnapshot { spec: spec.into(), count }),
        }
    }

    /// Writes (or renews) a session record.
    pub fn put_session(&self, session: &Session) -> Result<()> {
        let bytes = session.encode(&self.core.access.write_key().index_key)?;
        Ok(self.core.backend.replace(&session.path(), &bytes)?)
    }

    pub fn remove_session(&self, session: &Session) -> Result<()> {
        Ok(self.core.backend.delete(&session.path())?)
    }

    /// Declares `session` expired, as a prune does before any sweep relies on its expiry: a
    /// copy of its record goes to `sessions.expired/` first, then the record is removed. The
    /// backup behind it, if it ever wakes, finds the declaration at its next check and
    /// treats what it wrote since the one before as void.
    pub fn declare_expired(&self, session: &Session) -> Result<()> {
        let bytes = session.encode(&self.core.access.write_key().index_key)?;
        self.core.backend.put(&session::declaration_path(&session.id), &bytes)?;
        self.remove_session(session)
    }

    /// The declarations of expired sessions: each one's path, session id and storage time.
    pub fn expired_declarations(&self) -> Result<Vec<(String, [u8; 16], crate::backend::ObjectStat)>> {
        Ok(self
            .core
            .backend
            .list_stat(session::EXPIRED_SESSIONS)?
            .into_iter()
            .filter_map(|(path, st)| session::id_of_name(&path).map(|id| (path, id, st)))
            .collect())
    }

    /// Whether the session `id` may still commit what it writes: its record exists and no
    /// prune declared it expired. A backup asks after each index segment, checkpoint and
    /// snapshot it writes (see docs/FORMAT.md, "Garbage collection").
    pub fn session_standing(&self, id: &[u8; 16]) -> Result<bool> {
        session_standing(&self.core, id)
    }

    /// Removes a snapshot: the mirror first, so that an interruption leaves the snapshot
    /// (which `verify --repair` gives a mirror again), never a lone mirror to restore it from.
    pub fn remove_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.core.backend.delete(&format!("snapshots.mirror/{id}"))?;
        self.core.backend.delete(&format!("snapshots/{id}"))?;
        Ok(())
    }

    /// Every readable session record, oldest first, and why any could not be read.
    pub fn sessions(&self) -> Result<(Vec<Session>, Vec<String>)> {
        let key = &self.core.access.write_key().index_key;
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for path in self.core.backend.list("sessions")? {
            match self.core.backend.get(&path).map_err(StoreError::from).and_then(|b| Session::decode(&path, &b, key)) {
                Ok(s) => out.push(s),
                Err(e) => problems.push(e.to_string()),
            }
        }
        out.sort_by_key(|s| (s.started_ns, s.id));
        Ok((out, problems))
    }

    /// Writes a checkpoint. Call after the flush that made its blobs durable.
    pub fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<String> {
        let (id, bytes) = checkpoint.encode(self.core.access.write_key())?;
        let path = format!("checkpoints/{id}");
        self.core.backend.put(&path, &bytes)?;
        Ok(path)
    }

    /// The checkpoints of one session, in order; damaged ones are skipped.
    pub fn checkpoints(&self, session: &[u8; 16]) -> Result<Vec<(String, Checkpoint)>> {
        let key = self.core.access.write_key();
        let mut out = Vec::new();
        for path in self.core.backend.list("checkpoints")? {
            let Some(id) = id_of_path(&path) else { continue };
            let Ok(bytes) = get_verified(self.core.backend.as_ref(), &path, &id) else { continue };
            match Checkpoint::decode_refs(&path, &bytes, &key.index_key) {
                Ok(r) if r.session == *session => {
                    if let Ok(c) = Checkpoint::decode(&path, &bytes, key) {
                        out.push((path, c));
                    }
                }
                _ => {}
            }
        }
        out.sort_by_key(|(_, c)| c.refs.seq);
        Ok(out)
    }
}

/// Which snapshots `latest` may name, as restic's `--host`, `--path` and `--tag` choose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Any of these hosts (any host if empty).
    pub hosts: Vec<String>,
    /// Each of these among the snapshot's backed-up paths (absolute, no trailing `/`).
    pub paths: Vec<Vec<u8>>,
    /// Each of these tags.
    pub tags: Vec<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && self.paths.iter().all(|p| s.paths.contains(p))
            && self.tags.iter().all(|t| s.tags.contains(t))
    }

    /// What the filter and `path` ask of a snapshot, for messages: "hold /x, of host h".
    pub fn describe(&self, path: &str) -> String {
        let mut parts = Vec::new();
        let path = path.trim_end_matches('/');
        if !path.is_empty() {
            parts.push(format!("hold {path}"));
        }
        if !self.hosts.is_empty() {
            parts.push(format!("are of host {}", self.hosts.join(" or ")));
        }
        for p in &self.paths {
            parts.push(format!("back up {}", String::from_utf8_lossy(p)));
        }
        if !self.tags.is_empty() {
            parts.push(format!("are tagged {}", self.tags.join(" and ")));
        }
        if parts.is_empty() { "fit".to_string() } else { parts.join(", ") }
    }
}

/// Whether snapshot `s` holds `path` (absolute; `""` or `/` is everything): one of its
/// backed-up paths is `path`, above it, or below it (then `path` is a folder on the way).
pub fn holds(s: &Snapshot, path: &[u8]) -> bool {
    let path = trim_slashes(path);
    if path.is_empty() {
        return true;
    }
    let within = |outer: &[u8], inner: &[u8]| inner.strip_prefix(outer).is_some_and(|rest| rest.first() == Some(&b'/'));
    s.paths.iter().any(|p| {
        let p = trim_slashes(p);
        p.is_empty() || p == path || within(p, path) || within(path, p)
    })
}

/// `path` without the trailing `/` (and `/` itself as empty).
fn trim_slashes(path: &[u8]) -> &[u8] {
    let mut p = path;
    while let [rest @ .., b'/'] = p {
        p = rest;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlobId;

    fn snap(host: &str, paths: &[&str], tags: &[&str]) -> Snapshot {
        Snapshot {
            time_ns: 0,
            host: host.into(),
            user: String::new(),
            paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
            tags: tags.iter().map(|t| (*t).to_string()).collect(),
            root: BlobId(bakare_crypto::checksum(b"r")),
            parent: None,
            stats: Default::default(),
            program: String::new(),
            log: Vec::new(),
        }
    }

    #[test]
    fn a_snapshot_holds_its_paths_what_is_below_and_the_folders_above() {
        let s = snap("h", &["/home/me/doc", "/srv/x"], &[]);
        for yes in ["", "/", "/home", "/home/me/", "/home/me/doc", "/home/me/doc/a/b", "/srv/x/y"] {
            assert!(holds(&s, yes.as_bytes()), "{yes}");
        }
        for no in ["/home/me/docs", "/home/me/do", "/home/you", "/srv/xy", "/etc"] {
            assert!(!holds(&s, no.as_bytes()), "{no}");
        }
        assert!(holds(&snap("h", &["/"], &[]), b"/etc/x"));
    }

    #[test]
    fn filters_want_any_host_every_path_and_every_tag() {
        let s = snap("a", &["/x", "/y"], &["t1", "t2"]);
        let f = |hosts: &[&str], paths: &[&str], tags: &[&str]| SnapshotFilter {
            hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
            paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
            tags: tags.iter().map(|t| (*t).to_string()).collect(),
        };
        assert!(f(&[], &[], &[]).matches(&s));
        assert!(f(&["b", "a"], &["/y"], &["t2", "t1"]).matches(&s));
        assert!(!f(&["b"], &[], &[]).matches(&s));
        assert!(!f(&[], &["/x", "/z"], &[]).matches(&s));
        assert!(!f(&[], &[], &["t1", "t3"]).matches(&s));
        assert_eq!(f(&["b"], &[], &["t"]).describe("/a/"), "hold /a, are of host b, are tagged t");
    }
}
