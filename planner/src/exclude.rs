//! Exclusion rules: `--exclude` globs, `--exclude-file` lists and, optionally, `.gitignore`
//! files found while walking, all in gitignore syntax through the `ignore` crate; and the
//! selection flags restic users know: `--one-file-system`, `--exclude-if-present`,
//! `--exclude-caches` and `--exclude-larger-than`, each decided from what the walk already
//! has (the folder's names, the entry's `lstat`), so that they cost nothing on a no-change
//! run except reading a tag file that is there.

use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bakare_store::Selection;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::error::PlanError;

/// The rules in force at one folder: the global ones, the `.gitignore` chain above it, and
/// the selection (`--one-file-system`, `--exclude-if-present`, `--exclude-larger-than`).
#[derive(Clone)]
pub struct Excludes {
    global: Arc<Gitignore>,
    /// `--iexclude`: patterns matched ignoring case.
    global_icase: Option<Arc<Gitignore>>,
    git_ignore: bool,
    chain: Option<Arc<Level>>,
    select: Arc<Select>,
    /// The device of the source this folder is in, once inside one.
    dev: Option<u64>,
}

/// The selection's rules, parsed.
#[derive(Default)]
struct Select {
    one_file_system: bool,
    /// Tag files: a name and the bytes the file must begin with.
    tags: Vec<(OsString, Vec<u8>)>,
    larger_than: Option<u64>,
}

struct Level {
    rules: Gitignore,
    parent: Option<Arc<Level>>,
}

impl Excludes {
    /// Builds the global rules from patterns and files of patterns (one per line, `#` comments).
    pub fn new(patterns: &[String], files: &[PathBuf], git_ignore: bool) -> Result<Self, PlanError> {
        let mut b = GitignoreBuilder::new("/");
        for p in patterns {
            b.add_line(None, p).map_err(|e| PlanError::Exclude { pattern: p.clone(), reason: e.to_string() })?;
        }
        for f in files {
            let text = std::fs::read_to_string(f).map_err(crate::error::io(f))?;
            for line in text.lines() {
                b.add_line(Some(f.clone()), line)
                    .map_err(|e| PlanError::Exclude { pattern: line.into(), reason: e.to_string() })?;
            }
        }
        let global = b.build().map_err(|e| PlanError::Exclude { pattern: String::new(), reason: e.to_string() })?;
        Ok(Self {
            global: Arc::new(global),
            global_icase: None,
            git_ignore,
            chain: None,
            select: Arc::default(),
            dev: None,
        })
    }

    /// No rules at all.
    pub fn none() -> Self {
        Self {
            global: Arc::new(Gitignore::empty()),
            global_icase: None,
            git_ignore: false,
            chain: None,
            select: Arc::default(),
            dev: None,
        }
    }

    /// These rules and `patterns` matched ignoring case (restic's `--iexclude`).
    pub fn with_iexcludes(self, patterns: &[String]) -> Result<Self, PlanError> {
        match gitignore(patterns, true)? {
            Some(icase) => Ok(Self { global_icase: Some(Arc::new(icase)), ..self }),
            None => Ok(self),
        }
    }

    /// These rules and `selection`'s.
    pub fn with_selection(self, selection: &Selection) -> Self {
        let tags = selection
            .exclude_if_present
            .iter()
            .map(|rule| match rule.split_once(':') {
                Some((name, header)) => (OsString::from(name), header.as_bytes().to_vec()),
                None => (OsString::from(rule), Vec::new()),
            })
            .collect();
        let select =
            Select { one_file_system: selection.one_file_system, tags, larger_than: selection.exclude_larger_than };
        Self { select: Arc::new(select), ..self }
    }

    /// The rules inside a folder on device `dev`: the first such folder (a source) sets the
    /// device `--one-file-system` keeps to.
    pub(crate) fn on_device(self, dev: u64) -> Self {
        Self { dev: self.dev.or(Some(dev)), ..self }
    }

    /// Whether a folder on `dev` is on another file system than its source, and
    /// `--one-file-system` keeps it empty.
    pub(crate) fn crosses(&self, dev: u64) -> bool {
        self.select.one_file_system && self.dev.is_some_and(|d| d != dev)
    }

    /// Whether a file of `size` bytes is left out (`--exclude-larger-than`).
    pub(crate) fn too_large(&self, size: u64) -> bool {
        self.select.larger_than.is_some_and(|limit| size > limit)
    }

    /// Whether the folder `dir`, whose names are `names` (sorted by bytes), holds a tag file
    /// (`--exclude-if-present`, `--exclude-caches`) and is left out. A tag with a header is
    /// read; one that cannot be read does not count.
    pub(crate) fn tagged<'a>(&self, dir: &Path, names: impl Iterator<Item = &'a OsStr> + Clone) -> bool {
        self.select.tags.iter().any(|(tag, header)| {
            names.clone().any(|n| n == tag.as_os_str()) && (header.is_empty() || begins_with(&dir.join(tag), header))
        })
    }

    /// The rules for the children of `dir`, adding its `.gitignore` when enabled.
    pub(crate) fn enter(&self, dir: &Path) -> Self {
        if !self.git_ignore {
            return self.clone();
        }
        let file = dir.join(".gitignore");
        if !file.is_file() {
            return self.clone();
        }
        let (rules, _err) = Gitignore::new(&file);
        Self { chain: Some(Arc::new(Level { rules, parent: self.chain.clone() })), ..self.clone() }
    }

    /// Whether the global rules (patterns, not `.gitignore` files) leave out the folder at
    /// `path`, or one above it.
    pub fn excludes_folder(&self, path: &Path) -> bool {
        path.ancestors().any(|p| p.parent().is_some() && self.is_excluded(p, true))
    }

    pub(crate) fn is_excluded(&self, path: &Path, is_dir: bool) -> bool {
        // Where `--fs-snapshot` keeps its snapshots while a backup runs.
        if is_dir && path.file_name().is_some_and(|n| n == crate::fs_snapshot::SNAPSHOT_DIR) {
            return true;
        }
        if let Match::Ignore(_) = self.global.matched(path, is_dir) {
            return true;
        }
        if let Some(Match::Ignore(_)) = self.global_icase.as_ref().map(|g| g.matched(path, is_dir)) {
            return true;
        }
        let mut level = self.chain.as_deref();
        while let Some(l) = level {
            match l.rules.matched(path, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => level = l.parent.as_deref(),
            }
        }
        false
    }
}

/// Gitignore rules rooted at `/` from `patterns` (`icase`: matched ignoring case); none for
/// no patterns.
pub(crate) fn gitignore(patterns: &[String], icase: bool) -> Result<Option<Gitignore>, PlanError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let bad = |pattern: &str, e: ignore::Error| PlanError::Exclude { pattern: pattern.into(), reason: e.to_string() };
    let mut b = GitignoreBuilder::new("/");
    b.case_insensitive(icase).map_err(|e| bad("", e))?;
    for p in patterns {
        b.add_line(None, p).map_err(|e| bad(p, e))?;
    }
    b.build().map(Some).map_err(|e| bad("", e))
}

/// Whether the file at `path` begins with `header`.
fn begins_with(path: &Path, header: &[u8]) -> bool {
    let mut start = vec![0u8; header.len()];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut start)).is_ok() && start == header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_gitignore() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".gitignore"), "*.log\n!keep.log\nbuild/\n").unwrap();
        let ex = Excludes::new(&["*.tmp".into()], &[], true).unwrap();
        assert!(ex.is_excluded(&dir.path().join("a/b.tmp"), false));
        let inner = ex.enter(dir.path());
        assert!(inner.is_excluded(&dir.path().join("x.log"), false));
        assert!(!inner.is_excluded(&dir.path().join("keep.log"), false));
        assert!(inner.is_excluded(&dir.path().join("build"), true));
        assert!(!inner.is_excluded(&dir.path().join("build"), false));
        assert!(!ex.is_excluded(&dir.path().join("x.log"), false));
        let plain = Excludes::new(&[], &[], false).unwrap().enter(dir.path());
        let icase = Excludes::new(&[], &[], false).unwrap().with_iexcludes(&["*.JPG".into(), "Cache/".into()]).unwrap();
        assert!(icase.is_excluded(Path::new("/p/a.jpg"), false) && icase.is_excluded(Path::new("/p/b.Jpg"), false));
        assert!(icase.is_excluded(Path::new("/p/cache"), true) && !icase.is_excluded(Path::new("/p/cache"), false));
        assert!(!icase.is_excluded(Path::new("/p/a.png"), false));
        assert!(!plain.is_excluded(&dir.path().join("x.log"), false));
    }
}
