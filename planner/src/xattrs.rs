//! Extended attributes (POSIX ACLs among them) read from and written to files, without
//! following symlinks, through rustix's `llistxattr`, `lgetxattr` and `lsetxattr`.

use std::path::Path;

use bakare_store::Xattr;
use rustix::io::Errno;

/// Tries of a read whose list or value grew between the size query and the read.
const TRIES: usize = 4;

/// The extended attributes of `path` that the running user can read, sorted by name. A file
/// system without them gives none; an attribute removed while being read is left out.
pub fn read(path: &Path) -> Result<Vec<Xattr>, String> {
    let names = match sized(|buf| rustix::fs::llistxattr(path, buf), || rustix::fs::llistxattr_query(path)) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list extended attributes: {e}")),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let value = sized(|buf| rustix::fs::lgetxattr(path, name, buf), || rustix::fs::lgetxattr_query(path, name));
        match value {
            Ok(value) => out.push(Xattr { name: name.to_vec(), value }),
            Err(Errno::NODATA) => {}
            Err(e) => {
                return Err(format!("cannot read extended attribute {}: {e}", String::from_utf8_lossy(name)));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Reads into a buffer sized by `query`, again if it grew in between (`ERANGE`).
fn sized(
    read: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    query: impl Fn() -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    for _ in 0..TRIES {
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => buf.resize(query()?.max(buf.len() * 2), 0),
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// Sets each of `xattrs` on `path`; the ones that could not be set, with why (a file system
/// without them, `trusted.*` without root).
pub fn write(path: &Path, xattrs: &[Xattr]) -> Vec<String> {
    let mut failed = Vec::new();
    for x in xattrs {
        if let Err(e) = rustix::fs::lsetxattr(path, x.name.as_slice(), &x.value, rustix::fs::XattrFlags::empty()) {
            failed.push(format!("{}: {e}", String::from_utf8_lossy(&x.name)));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_attributes_round_trip_where_the_file_system_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let want = vec![
            Xattr { name: b"user.a".to_vec(), value: vec![0, 1, 255] },
            Xattr { name: b"user.big".to_vec(), value: vec![7; 3000] },
        ];
        let failed = write(&f, &want);
        if !failed.is_empty() {
            eprintln!("skipping: this file system keeps no user xattrs: {failed:?}");
            return;
        }
        let got: Vec<_> = read(&f).unwrap().into_iter().filter(|x| x.name.starts_with(b"user.")).collect();
        assert_eq!(got, want);
    }
}
