//! `--files-from`, `--files-from-verbatim` and `--files-from-raw`: source paths listed in
//! files, as restic reads them.

use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::args::BackupArgs;

/// Every path the `--files-from*` lists of `a` name, in order.
pub fn read(a: &BackupArgs) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for file in &a.files_from {
        let text = contents(file)?;
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() || trimmed.starts_with(b"#") {
                continue;
            }
            let where_ = || format!("{} line {}", file.display(), n + 1);
            let pattern = std::str::from_utf8(trimmed).with_context(|| {
                format!("{}: not UTF-8 (use --files-from-verbatim or --files-from-raw for such names)", where_())
            })?;
            if !pattern.contains(['*', '?', '[']) {
                paths.push(PathBuf::from(pattern));
                continue;
            }
            let matches = glob::glob(pattern).with_context(|| format!("{}: bad pattern {pattern:?}", where_()))?;
            let before = paths.len();
            for m in matches {
                paths.push(m.with_context(|| format!("{}: {pattern:?}", where_()))?);
            }
            if paths.len() == before {
                bail!("{}: {pattern:?} matches nothing", where_());
            }
        }
    }
    for file in &a.files_from_verbatim {
        let text = contents(file)?;
        let lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        paths.extend(lines.map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l))));
    }
    for file in &a.files_from_raw {
        let text = contents(file)?;
        let names = text.split(|&b| b == 0).filter(|l| !l.is_empty());
        paths.extend(names.map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l))));
    }
    Ok(paths)
}

/// A list file's bytes; `-` is standard input.
fn contents(file: &Path) -> Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("reading the paths to back up from standard input")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("reading the paths to back up from {}", file.display()))
}
