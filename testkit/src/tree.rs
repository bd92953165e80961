//! Trees like a user's: folders of varying depth and fan-out, file sizes from a long tail,
//! prose, random bytes, already-compressed data, runs of zeros and exact duplicates, symlinks
//! (some dangling), empty folders and the names that trip tools up (spaces, a leading dash,
//! non-ASCII, a newline, bytes that are not UTF-8, names differing only in case).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::rng::Rng;

/// What to make. `TreeSpec::new(files)` is a typical user's folder of `files` files.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    pub files: u64,
    /// The mean file size the long tail is scaled to, in KiB.
    pub mean_kib: f64,
    pub seed: u64,
    /// Files of 64 MiB sharing 16 MiB regions with each other (for chunking).
    pub big: u32,
    /// Symlinks, empty folders and odd names; off gives plain files in plain folders.
    pub extras: bool,
    /// About how many entries a folder holds.
    pub fan_out: u64,
}

impl TreeSpec {
    pub fn new(files: u64) -> Self {
        Self { files, mean_kib: 24.0, seed: 1, big: 0, extras: true, fan_out: 60 }
    }
    pub fn mean_kib(self, mean_kib: f64) -> Self {
        Self { mean_kib, ..self }
    }
    pub fn seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }
    pub fn big(self, big: u32) -> Self {
        Self { big, ..self }
    }
    pub fn extras(self, extras: bool) -> Self {
        Self { extras, ..self }
    }
}

/// What [`create`] made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Made {
    pub files: u64,
    pub bytes: u64,
    pub folders: u64,
    pub empty_folders: u64,
    pub symlinks: u64,
    pub duplicates: u64,
    pub odd_names: u64,
    pub deepest: usize,
}

/// Every file, folder and link gets this mtime, so two trees made alike look alike to a
/// stat cache (and no file counts as modified "just now").
pub const STAMP: i64 = 1_700_000_000;

const WORDS: &[&str] = &[
    "backup", "chunk", "index", "snapshot", "restore", "verify", "repair", "planner", "store", "crypto", "salsa",
    "redb", "blake3", "zstd", "nonce", "key", "pack", "tree", "file", "folder", "the", "a", "of", "and", "to", "in",
    "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "this", "are", "from", "at", "report", "notes",
    "draft", "final", "photo", "invoice", "summary", "config", "main", "test",
];
const EXTS: &[&str] = &[".txt", ".rs", ".jpg", ".bin", ".md", ".json", "", ".py", ".html", ".zst", ".log", ".pdf"];
const ODD: &[&[u8]] = &[
    b"with space",
    b"-leading-dash",
    b"r\xc3\xa9sum\xc3\xa9 \xe2\x9c\x93",
    b"line\nbreak",
    b"not-utf8-\xff\xfe",
    b"tab\tand'quote\"",
    b"UPPER",
    b"upper",
    b"..dots..",
    b"#hash;semi&amp",
];

/// The prose files draw slices from: one seeded corpus, compressible like text.
pub(crate) fn corpus() -> &'static [u8] {
    static CORPUS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut rng = Rng::new(0);
        let mut out = Vec::with_capacity(6 << 20);
        while out.len() < (6 << 20) {
            let words = rng.range(4, 14);
            for w in 0..words {
                if w > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(rng.pick(WORDS).unwrap_or(&"x").as_bytes());
            }
            out.push(b'\n');
        }
        out
    })
}

pub(crate) fn text(rng: &mut Rng, size: usize) -> Vec<u8> {
    let corpus = corpus();
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let at = rng.index(corpus.len() - 4096);
        let n = (size - out.len()).min(4096);
        out.extend_from_slice(&corpus[at..at + n]);
    }
    out
}

/// A size from a long tail: log-normal around `mean_kib`, capped at 8 MiB.
pub(crate) fn file_size(rng: &mut Rng, mean_kib: f64) -> usize {
    let kib = rng.lognormal(1.6) * mean_kib / 3.6;
    ((kib * 1024.0) as usize).min(8 << 20)
}

/// Contents of one new file; `pool` keeps earlier small contents to duplicate.
pub(crate) fn content(rng: &mut Rng, size: usize, pool: &mut Vec<Vec<u8>>) -> (Vec<u8>, bool) {
    let kind = rng.unit();
    if kind < 0.08
        && let Some(dup) = rng.pick(pool)
    {
        return (dup.clone(), true);
    }
    let data = if kind < 0.50 {
        text(rng, size)
    } else if kind < 0.60 {
        // Already compressed, as photos, archives and media are: high entropy, no zstd gain.
        let plain = text(rng, size.saturating_mul(4));
        let mut z = zstd::bulk::compress(&plain, 9).unwrap_or(plain);
        z.truncate(size);
        z
    } else if kind < 0.63 {
        vec![0; size]
    } else {
        rng.bytes(size)
    };
    if pool.len() < 256 && size < (1 << 20) {
        pool.push(data.clone());
    }
    (data, false)
}

/// A file name like a user's, unique by its number.
pub(crate) fn file_name(rng: &mut Rng, n: u64, odd: bool) -> Vec<u8> {
    let mut name = if odd {
        rng.pick(ODD).map(|o| o.to_vec()).unwrap_or_default()
    } else {
        let a = rng.pick(WORDS).unwrap_or(&"f");
        let b = rng.pick(WORDS).unwrap_or(&"g");
        format!("{a}-{b}").into_bytes()
    };
    name.extend_from_slice(format!("_{n:06}").as_bytes());
    name.extend_from_slice(rng.pick(EXTS).unwrap_or(&"").as_bytes());
    name
}

fn join(dir: &Path, name: Vec<u8>) -> PathBuf {
    dir.join(OsString::from_vec(name))
}

struct Maker<'a> {
    spec: &'a TreeSpec,
    rng: Rng,
    /// Folders made so far, with their depth below the root.
    folders: Vec<(PathBuf, usize)>,
    current: usize,
    pool: Vec<Vec<u8>>,
    made: Made,
}

impl Maker<'_> {
    /// The folder the next file goes to: mostly the current one; now and then a new folder
    /// below it (going deeper) or below any earlier one (fanning out).
    fn next_folder(&mut self) -> io::Result<PathBuf> {
        if self.rng.chance(1.0 / self.spec.fan_out.max(2) as f64) {
            let deeper = self.rng.chance(0.6);
            let parent = if deeper { self.current } else { self.rng.index(self.folders.len()) };
            let (mut parent_path, mut depth) = self.folders.get(parent).cloned().unwrap_or_default();
            if depth >= 7 {
                (parent_path, depth) = self.folders.first().cloned().unwrap_or_default();
            }
            let n = self.folders.len();
            let name = format!("{}-{n:04}", self.rng.pick(WORDS).unwrap_or(&"d"));
            let path = parent_path.join(name);
            fs::create_dir_all(&path)?;
            self.folders.push((path, depth + 1));
            self.current = n;
            self.made.folders += 1;
            self.made.deepest = self.made.deepest.max(depth + 1);
            if self.spec.extras && self.rng.chance(0.04) {
                fs::create_dir_all(parent_path.join(format!("empty-{n:04}")))?;
                self.made.empty_folders += 1;
            }
        }
        let at = if self.rng.chance(0.9) { self.current } else { self.rng.index(self.folders.len()) };
        Ok(self.folders.get(at).map(|f| f.0.clone()).unwrap_or_default())
    }

    fn file(&mut self, n: u64) -> io::Result<()> {
        let folder = self.next_folder()?;
        let odd = self.spec.extras && self.rng.chance(0.01);
        let path = join(&folder, file_name(&mut self.rng, n, odd));
        if self.spec.extras && self.rng.chance(0.01) {
            return self.symlink(&folder, &path);
        }
        let size = file_size(&mut self.rng, self.spec.mean_kib);
        let (data, dup) = content(&mut self.rng, size, &mut self.pool);
        fs::write(&path, &data)?;
        self.made.files += 1;
        self.made.bytes += data.len() as u64;
        self.made.duplicates += u64::from(dup);
        self.made.odd_names += u64::from(odd);
        Ok(())
    }

    /// A link to a file beside it, to a folder above, or to nowhere.
    fn symlink(&mut self, folder: &Path, path: &Path) -> io::Result<()> {
        let target = match self.rng.below(3) {
            0 => fs::read_dir(folder)?
                .filter_map(|e| e.ok())
                .map(|e| PathBuf::from(e.file_name()))
                .min()
                .unwrap_or_else(|| PathBuf::from("missing")),
            1 => PathBuf::from(".."),
            _ => PathBuf::from("/nonexistent/bakare-testkit/target"),
        };
        std::os::unix::fs::symlink(target, path)?;
        self.made.symlinks += 1;
        Ok(())
    }

    fn big_files(&mut self, root: &Path) -> io::Result<()> {
        if self.spec.big == 0 {
            return Ok(());
        }
        let base = self.rng.bytes(16 << 20);
        let dir = root.join("big");
        fs::create_dir_all(&dir)?;
        for j in 0..self.spec.big {
            let mut f = fs::File::create(dir.join(format!("big{j:03}.img")))?;
            for k in 0..4 {
                let part = if (j + k) % 2 == 0 { base.clone() } else { self.rng.bytes(16 << 20) };
                io::Write::write_all(&mut f, &part)?;
            }
            self.made.files += 1;
            self.made.bytes += 64 << 20;
        }
        Ok(())
    }
}

/// Makes the tree `spec` describes under `root` (created if missing).
pub fn create(root: &Path, spec: &TreeSpec) -> io::Result<Made> {
    fs::create_dir_all(root)?;
    let mut m = Maker {
        spec,
        rng: Rng::new(spec.seed),
        folders: vec![(root.to_path_buf(), 0)],
        current: 0,
        pool: Vec::new(),
        made: Made::default(),
    };
    for n in 0..spec.files {
        m.file(n)?;
    }
    m.big_files(root)?;
    stamp(root)?;
    Ok(m.made)
}

/// Sets every mtime under `root` (links and folders too, deepest first) to [`STAMP`].
pub fn stamp(root: &Path) -> io::Result<()> {
    let t = filetime::FileTime::from_unix_time(STAMP, 0);
    for (path, _) in walk(root)?.into_iter().rev() {
        filetime::set_symlink_file_times(&path, t, t)?;
    }
    filetime::set_file_times(root, t, t)
}

/// Every path under `root` (not following links), sorted, with whether it is a folder.
pub fn walk(root: &Path) -> io::Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let is_dir = e.file_type()?.is_dir();
            if is_dir {
                stack.push(e.path());
            }
            out.push((e.path(), is_dir));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn listing(root: &Path) -> Vec<(PathBuf, String)> {
        walk(root)
            .unwrap()
            .into_iter()
            .map(|(p, _)| {
                let m = fs::symlink_metadata(&p).unwrap();
                let what = if m.is_symlink() {
                    format!("link {:?}", fs::read_link(&p).unwrap())
                } else if m.is_dir() {
                    "dir".into()
                } else {
                    blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string()
                };
                (p.strip_prefix(root).unwrap().to_path_buf(), what)
            })
            .collect()
    }

    #[test]
    fn the_same_spec_makes_the_same_tree_and_another_seed_another() {
        let tmp = tempdir();
        let spec = TreeSpec::new(600).mean_kib(4.0).seed(5);
        let a = create(&tmp.join("a"), &spec).unwrap();
        let b = create(&tmp.join("b"), &spec).unwrap();
        assert_eq!(a, b);
        assert_eq!(listing(&tmp.join("a")), listing(&tmp.join("b")));
        create(&tmp.join("c"), &spec.clone().seed(6)).unwrap();
        assert_ne!(listing(&tmp.join("a")), listing(&tmp.join("c")));
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_tree_has_what_a_users_has() {
        let tmp = tempdir();
        let made = create(&tmp, &TreeSpec::new(3000).mean_kib(2.0).seed(2)).unwrap();
        assert_eq!(made.files + made.symlinks, 3000);
        assert!(made.symlinks > 5 && made.odd_names > 5 && made.duplicates > 50, "{made:?}");
        assert!(made.empty_folders > 0 && made.folders > 20 && made.deepest >= 4, "{made:?}");
        let entries = walk(&tmp).unwrap();
        let names: Vec<Vec<u8>> = entries.iter().map(|(p, _)| p.file_name().unwrap().as_bytes().to_vec()).collect();
        assert!(names.iter().any(|n| std::str::from_utf8(n).is_err()), "a name that is not UTF-8");
        assert!(names.iter().any(|n| n.contains(&b'\n')), "a name with a newline");
        let sizes: Vec<u64> = entries
            .iter()
            .filter_map(|(p, _)| fs::symlink_metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len()))
            .collect();
        let small = sizes.iter().filter(|&&s| s < 16 << 10).count();
        let large = sizes.iter().filter(|&&s| s > 32 << 10).count();
        assert!(small > sizes.len() / 2 && large > 0, "a long tail: {small} small, {large} large");
        let m = fs::symlink_metadata(&entries[0].0).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&m), STAMP);
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn without_extras_only_plain_files_and_folders() {
        let tmp = tempdir();
        let made = create(&tmp, &TreeSpec::new(500).mean_kib(2.0).extras(false)).unwrap();
        assert_eq!((made.files, made.symlinks, made.odd_names, made.empty_folders), (500, 0, 0, 0));
        fs::remove_dir_all(&tmp).unwrap();
    }

    pub(crate) fn tempdir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("bakare-testkit-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }
}
