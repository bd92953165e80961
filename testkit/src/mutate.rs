//! Changes a tree the way a user does between two backups: rewrites, appends, inserts in the
//! middle (content-defined chunking should keep the rest), renames of files and now and then
//! of a folder, deletes, new files and folders, and touches that change the mtime only.

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::rng::Rng;
use crate::tree::{content, file_name, file_size, text, walk};

/// What one [`mutate`] did, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Mutation {
    pub rewritten: u64,
    pub appended: u64,
    pub inserted: u64,
    pub renamed: u64,
    pub deleted: u64,
    pub touched: u64,
    pub added: u64,
    pub folders_renamed: u64,
    pub folders_added: u64,
}

impl std::fmt::Display for Mutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rewritten={} appended={} inserted={} renamed={} deleted={} touched={} added={} folders_renamed={} folders_added={}",
            self.rewritten,
            self.appended,
            self.inserted,
            self.renamed,
            self.deleted,
            self.touched,
            self.added,
            self.folders_renamed,
            self.folders_added
        )
    }
}

/// Changes about `percent` percent of the regular files under `root` (at least one), the same
/// way for the same tree and seed. `folders` also renames and adds a folder per 200 changes.
pub fn mutate(root: &Path, percent: u32, seed: u64, folders: bool) -> io::Result<Mutation> {
    let mut rng = Rng::new(seed ^ 0xA5A5_0000);
    let files: Vec<PathBuf> = walk(root)?
        .into_iter()
        .filter(|(p, is_dir)| !is_dir && fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .map(|(p, _)| p)
        .collect();
    let count = (files.len() as u64 * u64::from(percent) / 100).max(1) as usize;
    let mut done = Mutation::default();
    let mut pool = Vec::new();
    for i in rng.sample(files.len(), count) {
        let Some(path) = files.get(i) else { continue };
        if !path.exists() {
            continue; // inside a folder renamed earlier in this run
        }
        change(&mut rng, path, &mut done, &mut pool)?;
    }
    if folders {
        for _ in 0..(count / 200).max(1) {
            folder_change(&mut rng, root, &mut done, &mut pool)?;
        }
    }
    Ok(done)
}

fn change(rng: &mut Rng, path: &Path, done: &mut Mutation, pool: &mut Vec<Vec<u8>>) -> io::Result<()> {
    let action = rng.unit();
    if action < 0.25 {
        let size = file_size(rng, 24.0);
        fs::write(path, content(rng, size, pool).0)?;
        done.rewritten += 1;
    } else if action < 0.45 {
        let n = rng.range(1, 8192) as usize;
        fs::OpenOptions::new().append(true).open(path)?.write_all(&text(rng, n))?;
        done.appended += 1;
    } else if action < 0.55 {
        let mut data = fs::read(path)?;
        let at = rng.index(data.len() + 1);
        let n = rng.range(1, 4096) as usize;
        data.splice(at..at, text(rng, n));
        fs::write(path, data)?;
        done.inserted += 1;
    } else if action < 0.65 {
        let mut to = path.as_os_str().to_owned();
        to.push(".moved");
        fs::rename(path, to)?;
        done.renamed += 1;
    } else if action < 0.75 {
        fs::remove_file(path)?;
        done.deleted += 1;
    } else if action < 0.90 {
        let now = filetime::FileTime::now();
        filetime::set_file_times(path, now, now)?;
        done.touched += 1;
    } else {
        let mut to = path.as_os_str().to_owned();
        to.push(".new");
        let size = file_size(rng, 24.0);
        fs::write(to, content(rng, size, pool).0)?;
        done.added += 1;
    }
    Ok(())
}

/// Renames one folder (not the root) and adds a new one with a few files.
fn folder_change(rng: &mut Rng, root: &Path, done: &mut Mutation, pool: &mut Vec<Vec<u8>>) -> io::Result<()> {
    let folders: Vec<PathBuf> = walk(root)?.into_iter().filter(|(_, d)| *d).map(|(p, _)| p).collect();
    if let Some(dir) = rng.pick(&folders) {
        let mut to = dir.as_os_str().to_owned();
        to.push("-renamed");
        fs::rename(dir, to)?;
        done.folders_renamed += 1;
    }
    let parent = rng.pick(&folders).filter(|p| p.exists()).cloned().unwrap_or_else(|| root.to_path_buf());
    let new = parent.join(format!("new-folder-{}", rng.below(1 << 20)));
    fs::create_dir_all(&new)?;
    for n in 0..rng.range(1, 5) {
        let name = file_name(rng, n, false);
        let size = file_size(rng, 24.0);
        fs::write(new.join(std::ffi::OsStr::from_bytes(&name)), content(rng, size, pool).0)?;
        done.added += 1;
    }
    done.folders_added += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{TreeSpec, create, tests::tempdir};

    fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>, i64)> {
        walk(root)
            .unwrap()
            .into_iter()
            .filter(|(p, d)| !d && fs::symlink_metadata(p).unwrap().is_file())
            .map(|(p, _)| {
                let m = fs::metadata(&p).unwrap();
                (p.clone(), fs::read(&p).unwrap(), std::os::unix::fs::MetadataExt::mtime(&m))
            })
            .collect()
    }

    #[test]
    fn a_mutation_changes_about_the_share_asked_and_repeats_exactly() {
        let tmp = tempdir();
        let spec = TreeSpec::new(800).mean_kib(2.0).seed(9);
        create(&tmp.join("a"), &spec).unwrap();
        create(&tmp.join("b"), &spec).unwrap();
        let before = snapshot(&tmp.join("a"));
        let m = mutate(&tmp.join("a"), 10, 4, false).unwrap();
        let n = m.rewritten + m.appended + m.inserted + m.renamed + m.deleted + m.touched + m.added;
        assert_eq!(n, before.len() as u64 / 10, "{m}");
        assert!(m.rewritten > 0 && m.appended > 0 && m.renamed > 0 && m.deleted > 0 && m.touched > 0, "{m}");
        let after = snapshot(&tmp.join("a"));
        let unchanged = after.iter().filter(|f| before.contains(f)).count();
        assert!(unchanged >= before.len() * 85 / 100 && unchanged < before.len(), "{unchanged} of {}", before.len());
        // The same seed on the same tree does the same thing.
        assert_eq!(mutate(&tmp.join("b"), 10, 4, false).unwrap(), m);
        let strip = |root: &Path, v: Vec<(PathBuf, Vec<u8>, i64)>| -> Vec<(PathBuf, Vec<u8>)> {
            v.into_iter().map(|(p, d, _)| (p.strip_prefix(root).unwrap().to_path_buf(), d)).collect()
        };
        assert_eq!(strip(&tmp.join("a"), after), strip(&tmp.join("b"), snapshot(&tmp.join("b"))));
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn folder_changes_rename_and_add_folders() {
        let tmp = tempdir();
        create(&tmp, &TreeSpec::new(300).mean_kib(1.0)).unwrap();
        let m = mutate(&tmp, 5, 1, true).unwrap();
        assert_eq!((m.folders_renamed, m.folders_added), (1, 1));
        assert!(walk(&tmp).unwrap().iter().any(|(p, _)| p.to_string_lossy().ends_with("-renamed")));
        fs::remove_dir_all(&tmp).unwrap();
    }
}
