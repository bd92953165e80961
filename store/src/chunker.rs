//! Content-defined chunking: FastCDC with a gear table seeded from the repository secret, so
//! chunk boundaries reveal nothing about content, run over a large buffer (faster than
//! fastcdc's per-chunk-allocating `StreamCDC`).
//!
//! A FastCDC cut depends only on the bytes since the previous cut, so cutting a buffer,
//! keeping the last (possibly truncated) chunk and refilling behind it gives exactly the
//! chunks of one pass over the whole file. For the same reason a chunk that starts a
//! maximal window of zeros always ends at the same point: that cut is found once per
//! chunker, and a long run of zeros (a sparse file's holes, a zeroed disk image) is cut
//! without running the gear hash over it (a 1 GiB file of zeros: 4 s before, most of it in
//! the hash).

use std::io::{self, Read};
use std::ops::Range;

use crate::format::config::ChunkerParams;
use fastcdc::v2020::{FastCDC, Normalization};

/// A seeded content-defined chunker.
#[derive(Clone, Debug)]
pub struct Chunker {
    params: ChunkerParams,
    seed: u64,
    /// Where a chunk starting a window of `max` zeros ends (found on first need).
    zero_cut: std::sync::OnceLock<usize>,
}

impl Chunker {
    /// `params` must have passed [`ChunkerParams::check`] (the repository config does).
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        Self { params, seed, zero_cut: std::sync::OnceLock::new() }
    }

    fn cdc<'a>(&self, data: &'a [u8]) -> FastCDC<'a> {
        let p = self.params;
        FastCDC::with_level_and_seed(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            Normalization::Level1,
            self.seed,
        )
    }

    /// The length of a chunk that starts a window of `max` zero bytes.
    fn zero_cut(&self) -> usize {
        *self.zero_cut.get_or_init(|| {
            let zeros = vec![0u8; self.params.max as usize];
            let cdc = self.cdc(&zeros);
            cdc.cut(0, zeros.len()).1.max(1)
        })
    }

    /// The smallest chunk but the last of a file.
    pub fn min_len(&self) -> usize {
        self.params.min as usize
    }

    /// The buffer size for streaming: room for two maximal chunks.
    pub fn buffer_len(&self) -> usize {
        self.params.max as usize * 2
    }

    /// Cut points of `data`. Unless `eof`, the last chunk may continue past `data` and is left out.
    pub fn cut(&self, data: &[u8], eof: bool) -> Vec<Range<usize>> {
        let max = self.params.max as usize;
        let cdc = self.cdc(data);
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let end = match data.get(at..at + max) {
                Some(window) if all_zero(window) => at + self.zero_cut(),
                _ => cdc.cut(at, data.len() - at).1,
            };
            if end <= at {
                break;
            }
            out.push(at..end);
            at = end;
        }
        if !eof {
            out.pop();
        }
        out
    }

    /// Reads `reader` to its end, handing each run of complete chunks to `batch` in order.
    /// Returns the number of bytes read.
    pub fn stream<R: Read, E: From<io::Error>>(
        &self,
        mut reader: R,
        size_hint: u64,
        mut batch: impl FnMut(&[&[u8]]) -> Result<(), E>,
    ) -> Result<u64, E> {
        // One byte more than the expected size, so the read that reports the end fits and a
        // file of exactly the expected size is not mistaken for a growing one.
        let cap = usize::try_from(size_hint).unwrap_or(usize::MAX).saturating_add(1).clamp(1, self.buffer_len());
        let mut buf = vec![0u8; cap];
        let mut filled = 0usize;
        let mut total = 0u64;
        loop {
            let mut eof = false;
            while filled < buf.len() {
                match reader.read(buf.get_mut(filled..).unwrap_or_default()) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        filled += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !eof && buf.len() < self.buffer_len() {
                // The size hint was too small (the file grew): switch to the full buffer.
                buf.resize(self.buffer_len(), 0);
                continue;
            }
            let data = buf.get(..filled).unwrap_or_default();
            let ranges = self.cut(data, eof);
            let chunks: Vec<&[u8]> = ranges.iter().filter_map(|r| data.get(r.clone())).collect();
            if !chunks.is_empty() {
                batch(&chunks)?;
            }
            if eof {
                return Ok(total);
            }
            let consumed = ranges.last().map_or(0, |r| r.end);
            buf.copy_within(consumed..filled, 0);
            filled -= consumed;
        }
    }
}

/// Whether `bytes` are all zero (blocks OR-ed together, which compilers vectorise; the
/// first block with a set bit ends it).
pub fn all_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(4096);
    for block in blocks.by_ref() {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Chunker {
        Chunker::new(ChunkerParams { min: 1024, avg: 4096, max: 16384 }, 42)
    }

    fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn streaming_equals_one_pass() {
        let data = pseudo_random(300_000, 7);
        let c = small();
        let whole: Vec<Vec<u8>> = c.cut(&data, true).into_iter().map(|r| data[r].to_vec()).collect();
        // A reader that returns few bytes at a time exercises refills at every offset.
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = out.len().min(self.0.len()).min(999);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        for hint in [0u64, 10, 300_000] {
            let mut streamed = Vec::new();
            let total = c
                .stream::<_, io::Error>(Slow(&data), hint, |b| {
                    streamed.extend(b.iter().map(|s| s.to_vec()));
                    Ok(())
                })
                .unwrap();
            assert_eq!(total, data.len() as u64);
            assert_eq!(streamed, whole, "hint {hint}");
        }
    }

    /// FastCDC's own iteration over `data`, the reference the fast path must match.
    fn reference(c: &Chunker, data: &[u8]) -> Vec<Range<usize>> {
        c.cdc(data).map(|k| k.offset..k.offset + k.length).collect()
    }

    #[test]
    fn runs_of_zeros_cut_exactly_as_fastcdc_does() {
        let c = small();
        let mut data = Vec::new();
        for (i, zeros) in [0usize, 5, 16_383, 16_384, 16_385, 40_000, 100_000, 33_333].iter().enumerate() {
            data.extend(pseudo_random(7_000 + i * 977, i as u64 + 1));
            data.extend(std::iter::repeat_n(0u8, *zeros));
        }
        data.extend(std::iter::repeat_n(0u8, 70_000)); // and ending in zeros
        assert_eq!(c.cut(&data, true), reference(&c, &data));
        let mut not_eof = reference(&c, &data);
        not_eof.pop();
        assert_eq!(c.cut(&data, false), not_eof);
        let zeros = vec![0u8; 1_000_000];
        assert_eq!(c.cut(&zeros, true), reference(&c, &zeros));
        assert!(all_zero(&zeros) && !all_zero(&data) && all_zero(&[]));
    }

    #[test]
    fn seed_changes_boundaries_and_insertion_is_local() {
        let data = pseudo_random(400_000, 9);
        let a = small().cut(&data, true);
        let b = Chunker::new(ChunkerParams { min: 1024, avg: 4096, max: 16384 }, 43).cut(&data, true);
        assert_ne!(a, b);
        let mut edited = data.clone();
        edited.splice(200_000..200_000, [1u8; 100]);
        let ca: std::collections::HashSet<_> = a.iter().map(|r| data[r.clone()].to_vec()).collect();
        let cb: Vec<_> = small().cut(&edited, true).iter().map(|r| edited[r.clone()].to_vec()).collect();
        let new = cb.iter().filter(|c| !ca.contains(*c)).count();
        assert!(new <= 3, "{new} new chunks after a 100-byte insertion");
    }
}
