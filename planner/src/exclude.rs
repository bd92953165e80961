//! Exclusion rules: `--exclude` globs, `--exclude-file` lists and, optionally, `.gitignore`
//! files found while walking. All use gitignore syntax through the `ignore` crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::error::PlanError;

/// The rules in force at one folder: the global ones and the `.gitignore` chain above it.
#[derive(Clone)]
pub struct Excludes {
    global: Arc<Gitignore>,
    git_ignore: bool,
    chain: Option<Arc<Level>>,
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
        Ok(Self { global: Arc::new(global), git_ignore, chain: None })
    }

    /// No rules at all.
    pub fn none() -> Self {
        Self { global: Arc::new(Gitignore::empty()), git_ignore: false, chain: None }
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

    pub(crate) fn is_excluded(&self, path: &Path, is_dir: bool) -> bool {
        if let Match::Ignore(_) = self.global.matched(path, is_dir) {
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
        assert!(!plain.is_excluded(&dir.path().join("x.log"), false));
    }
}
