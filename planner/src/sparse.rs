//! Reading a sparse file without reading its holes.
//!
//! Reading a hole makes the kernel zero page-cache pages and copy them out: a 1 GiB file
//! with 4 bytes of data cost seconds. [`SparseReader`] asks `lseek(SEEK_DATA/SEEK_HOLE)`
//! where the data is and gives zeros for the holes without a read. The bytes are the same as
//! a plain read's, so the chunks and their ids are too. Where the file system cannot say
//! (`EINVAL`), it reads as usual.

use std::fs::File;
use std::io::{self, Read};

use rustix::fs::SeekFrom;

/// A reader over `file` from offset 0 that skips holes.
pub(crate) struct SparseReader<'a> {
    file: &'a File,
    pos: u64,
    /// Bytes up to here are known to be a hole.
    hole_end: u64,
    /// Bytes up to here are known to be data.
    data_end: u64,
    /// The file system answered no hole question: read as usual.
    plain: bool,
}

impl<'a> SparseReader<'a> {
    pub(crate) fn new(file: &'a File) -> Self {
        Self { file, pos: 0, hole_end: 0, data_end: 0, plain: false }
    }

    /// Whether a file of `size` bytes taking `blocks` 512-byte blocks has holes worth skipping
    /// (a small file is read whole).
    pub(crate) fn worth_it(size: u64, blocks: u64) -> bool {
        size >= 1 << 20 && blocks.saturating_mul(512) < size
    }

    fn locate(&mut self) -> io::Result<()> {
        match rustix::fs::seek(self.file, SeekFrom::Data(self.pos)) {
            Ok(data) if data > self.pos => self.hole_end = data,
            Ok(_) => match rustix::fs::seek(self.file, SeekFrom::Hole(self.pos)) {
                Ok(hole) => self.data_end = hole.max(self.pos + 1),
                Err(_) => self.plain = true,
            },
            // No data after `pos`: a hole to the end of the file as it is now.
            Err(rustix::io::Errno::NXIO) => {
                let size = self.file.metadata()?.len();
                if size <= self.pos {
                    self.data_end = self.pos + 1; // a read there says where the end is
                } else {
                    self.hole_end = size;
                }
            }
            Err(_) => self.plain = true,
        }
        Ok(())
    }
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.plain && self.pos >= self.hole_end && self.pos >= self.data_end {
            self.locate()?;
        }
        let n = if !self.plain && self.pos < self.hole_end {
            let n = usize::try_from(self.hole_end - self.pos).unwrap_or(usize::MAX).min(buf.len());
            buf.get_mut(..n).unwrap_or_default().fill(0);
            n
        } else {
            let want = if self.plain {
                buf.len()
            } else {
                usize::try_from(self.data_end - self.pos).unwrap_or(usize::MAX).min(buf.len())
            };
            rustix::io::pread(self.file, buf.get_mut(..want).unwrap_or_default(), self.pos)?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    #[test]
    fn a_sparse_file_reads_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        f.set_len(40 << 20).unwrap();
        for (at, what) in [(5u64 << 20, &b"hello"[..]), ((20 << 20) + 7, b"world"), ((40 << 20) - 3, b"end")] {
            f.seek(io::SeekFrom::Start(at)).unwrap();
            f.write_all(what).unwrap();
        }
        f.set_len(48 << 20).unwrap(); // and a hole at the end
        drop(f);
        let expected = std::fs::read(&path).unwrap();
        let file = File::open(&path).unwrap();
        for chunk in [1usize, 4096, 1 << 20, 7 << 20] {
            let mut got = Vec::new();
            let mut r = SparseReader::new(&file);
            let mut buf = vec![0u8; chunk];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if chunk == 1 && got.len() > 100_000 {
                    break; // byte by byte is slow; the start is checked
                }
            }
            assert_eq!(&got[..], &expected[..got.len()], "buffer of {chunk}");
            if chunk > 1 {
                assert_eq!(got.len(), expected.len());
            }
        }
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(SparseReader::worth_it(meta.len(), meta.blocks()), "the test file system keeps holes");
    }
}
