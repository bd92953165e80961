//! Runs of blobs that lie one after another in one pack, read with one request: what a
//! restore reads (consecutive chunks of a file were saved one after another). From remote
//! storage, small runs are read through recent 4 MiB spans of packs, shared by the
//! restoring threads: the next files' chunks usually lie right after.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use super::reader::BlobReader;
use super::{Core, pack_path};
use crate::budget::Budget;
use crate::format::index::BlobLocation;
use crate::ids::PackId;
use crate::{Result, StoreError};

/// At most this many bytes of adjacent chunks are read with one request.
pub const RUN_BYTES: u64 = 16 << 20;

/// How many of the first locations lie one after another in one pack (at least 1), within
/// [`RUN_BYTES`]. Blobs of one frame share its bytes: the next blob of the frame continues a
/// run without lengthening it.
pub fn adjacent_run(locs: &[BlobLocation]) -> usize {
    let Some(first) = locs.first() else { return 0 };
    let mut end = u64::from(first.entry.offset) + u64::from(first.entry.length);
    let mut n = 1;
    let mut last = first;
    for l in locs.iter().skip(1) {
        if l.pack == last.pack && l.entry.frame_at.is_some() && l.entry.same_sealed(&last.entry) {
            n += 1;
            continue;
        }
        last = l;
        let next_end = u64::from(l.entry.offset) + u64::from(l.entry.length);
        if l.pack != first.pack
            || u64::from(l.entry.offset) != end
            || next_end - u64::from(first.entry.offset) > RUN_BYTES
        {
            break;
        }
        end = next_end;
        n += 1;
    }
    n
}

/// Remote storage is read in spans of this many bytes of a pack when a file needs less:
/// the next files' chunks usually lie right after (they were saved one after another), and
/// a request per small file costs a round trip each.
pub const SPAN: u64 = 4 << 20;

/// The spans of packs read lately (remote repositories only), shared by the restoring
/// threads; a span being read is waited for, not read twice.
#[derive(Default)]
pub(crate) struct Spans {
    state: Mutex<SpanState>,
    loaded: std::sync::Condvar,
}

#[derive(Default)]
struct SpanState {
    spans: HashMap<(PackId, u64), Option<Arc<Vec<u8>>>>,
    /// Ready spans, oldest first.
    order: VecDeque<(PackId, u64)>,
    sizes: HashMap<PackId, u64>,
}

impl Spans {
    /// `len` bytes at `start` of `pack`, from the span holding them (read first if needed);
    /// at most `capacity` spans are kept.
    pub(crate) fn read(&self, core: &Core, capacity: usize, pack: &PackId, start: u64, len: u64) -> Result<Vec<u8>> {
        let index = start / SPAN;
        let key = (*pack, index);
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            match st.spans.get(&key) {
                Some(Some(span)) => {
                    let at = usize::try_from(start - index * SPAN).unwrap_or(usize::MAX);
                    let end = at.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                    return span.get(at..end).map(<[u8]>::to_vec).ok_or_else(|| StoreError::Corrupt {
                        object: pack_path(pack),
                        reason: "a blob lies past the pack's end".into(),
                    });
                }
                Some(None) => st = self.loaded.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner),
                None => break,
            }
        }
        st.spans.insert(key, None);
        let size = st.sizes.get(pack).copied();
        drop(st);
        let fetched = (|| {
            let size = match size {
                Some(s) => s,
                None => core.backend.size(&pack_path(pack))?,
            };
            let span_len = size.saturating_sub(index * SPAN).min(SPAN);
            Ok::<_, StoreError>((size, core.backend.get_range(&pack_path(pack), index * SPAN, span_len)?))
        })();
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match fetched {
            Ok((size, bytes)) => {
                st.sizes.insert(*pack, size);
                st.spans.insert(key, Some(Arc::new(bytes)));
                st.order.push_back(key);
                while st.order.len() > capacity {
                    if let Some(old) = st.order.pop_front() {
                        st.spans.remove(&old);
                    }
                }
                drop(st);
                self.loaded.notify_all();
                self.read(core, capacity, pack, start, len)
            }
            Err(e) => {
                st.spans.remove(&key);
                drop(st);
                self.loaded.notify_all();
                Err(e)
            }
        }
    }
}

/// Whether a run of chunks lies in one span and is small enough to read through [`Spans`].
fn within_span(first: &BlobLocation, run: &[BlobLocation]) -> bool {
    let start = u64::from(first.entry.offset);
    let end = run_end(run);
    end - start <= SPAN / 4 && start / SPAN == (end.saturating_sub(1)) / SPAN
}

/// Where a run of adjacent blobs (see [`adjacent_run`]) ends in its pack.
fn run_end(run: &[BlobLocation]) -> u64 {
    run.iter().map(|l| u64::from(l.entry.offset) + u64::from(l.entry.length)).max().unwrap_or_default()
}

/// Reads a run of adjacent blobs (see [`adjacent_run`]) with one request, through `spans`
/// when the storage is remote; each blob is authenticated, decompressed and re-hashed by
/// `reader`. A run's buffer outside the spans takes its share of the read budget.
pub(crate) fn load_run(
    reader: &BlobReader,
    spans: &OnceLock<Spans>,
    core: &Core,
    budget: &Budget,
    run: &[BlobLocation],
) -> Result<Vec<Vec<u8>>> {
    let spans = core.backend.is_remote().then(|| spans.get_or_init(Spans::default));
    let spanned = spans.is_some() && run.first().is_some_and(|first| within_span(first, run));
    Ok(match run {
        [] => Vec::new(),
        [one] if !spanned => vec![reader.load_blob_at(core, one)?],
        [first, ..] => {
            let start = u64::from(first.entry.offset);
            let len = run_end(run).saturating_sub(start);
            let _permit = (!spanned).then(|| budget.read_permit(len));
            let bytes = match spans {
                Some(spans) if spanned => spans.read(core, budget.spans(SPAN), &first.pack, start, len)?,
                _ => reader.read_pack_range(core, &first.pack, start, len)?,
            };
            run.iter()
                .map(|l| reader.open_blob_in(core, &l.pack, &l.entry, &bytes, first.entry.offset))
                .collect::<Result<_>>()?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::PackEntry;
    use crate::ids::{BlobId, BlobKind};
    use bakare_crypto::Digest;

    fn loc(pack: u8, offset: u32, length: u32) -> BlobLocation {
        let entry = PackEntry {
            id: BlobId(Digest([offset as u8; 32])),
            kind: BlobKind::Data,
            compressed: false,
            offset,
            length,
            raw_len: length,
            frame_at: None,
        };
        BlobLocation { pack: PackId(Digest([pack; 32])), entry }
    }

    #[test]
    fn runs_of_adjacent_chunks() {
        assert_eq!(adjacent_run(&[]), 0);
        assert_eq!(adjacent_run(&[loc(1, 40, 10)]), 1);
        let adjacent = [loc(1, 40, 10), loc(1, 50, 5), loc(1, 55, 100), loc(1, 300, 1)];
        assert_eq!(adjacent_run(&adjacent), 3, "a gap ends the run");
        assert_eq!(adjacent_run(&[loc(1, 40, 10), loc(2, 50, 5)]), 1, "another pack ends it");
        assert_eq!(adjacent_run(&[loc(1, 50, 5), loc(1, 40, 10)]), 1, "so does going back");
        let big = [loc(1, 0, 10 << 20), loc(1, 10 << 20, 10 << 20)];
        assert_eq!(adjacent_run(&big), 1, "at most RUN_BYTES at once");
        // Blobs of one frame share its bytes: each continues the run, and what follows the
        // frame does too; a blob sealed alone at the frame's offset is not of the frame.
        let framed = |offset, length, at| {
            let mut l = loc(1, offset, length);
            l.entry.frame_at = Some(at);
            l
        };
        let run = [framed(40, 100, 0), framed(40, 100, 30), framed(40, 100, 70), loc(1, 140, 5)];
        assert_eq!(adjacent_run(&run), 4);
        assert_eq!(run_end(&run), 145);
        assert_eq!(adjacent_run(&[framed(40, 100, 0), loc(1, 40, 100)]), 1);
    }
}
