//! Stream masker: masks a byte stream delivered in arbitrary pieces (COPY data, terminal
//! output, non-JSON HTTP bodies) so that the output is byte-for-byte what masking the whole
//! input at once would give, whatever the cut points.
//!
//! Why this works: every detector is line-local, so the stream is cut only at newlines and
//! the held-back tail is the current unfinished line. A line longer than [`STREAM_WINDOW`]
//! is cut at a deterministic point inside the window (after the last tab, quote or comma,
//! else the last space, else at the window edge), computed from the line's bytes only, so
//! the cut is the same however the input was split. A secret spanning such a forced cut can
//! be missed; only lines over 64 KiB without a newline are exposed to this, and the window
//! bounds the memory a peer can make us hold. Private-key blocks span lines: the state of an
//! open block is carried between batches and the block is masked from its `-----BEGIN` line
//! (bounded by `PEM_WINDOW`), so the whole key is hidden even when it arrives a byte at a
//! time.
//!
//! Not here: framing (the protocol module strips and re-adds its frame headers).

use super::MaskStats;
use super::detect::Hit;
use super::engine::{PemState, SessionMasker};

/// Longest unfinished line held back; also the most memory a stream masker holds.
pub const STREAM_WINDOW: usize = 64 * 1024;

/// Complete lines are masked in batches of at most this size (or one line, when longer lines
/// are cut); the size does not change the output, only how often the scanner is entered.
/// Equal to the window, so a line that fits the window always ends inside a batch.
const BATCH_TARGET: usize = STREAM_WINDOW;

/// Masks one byte stream. Create with [`SessionMasker::stream`]; one per direction per
/// session.
#[derive(Debug)]
pub struct StreamMasker {
    session: SessionMasker,
    pending: Vec<u8>,
    pem: PemState,
    hits: Vec<Hit>,
}

impl StreamMasker {
    pub(crate) fn new(session: SessionMasker) -> Self {
        Self {
            session,
            pending: Vec::new(),
            pem: PemState::default(),
            hits: Vec::new(),
        }
    }

    /// Masks what can be decided and appends it to `out`; holds back at most the current
    /// unfinished line (up to [`STREAM_WINDOW`] bytes).
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>, stats: &mut MaskStats) {
        if self.session.global.set == 0 {
            out.extend_from_slice(input);
            return;
        }
        let mut input = input;
        if !self.pending.is_empty() {
            // The held-back line usually ends early in this piece: complete and mask it
            // alone, then mask the rest of the piece in place instead of copying the whole
            // piece behind it. Batches are whole lines either way, so the output is the same.
            match memchr::memchr(b'\n', input) {
                Some(i) if self.pending.len() + i < STREAM_WINDOW => {
                    let mut pending = std::mem::take(&mut self.pending);
                    pending.extend_from_slice(input.get(..=i).unwrap_or_default());
                    self.process(&pending, false, out, stats);
                    pending.clear();
                    self.pending = pending;
                    input = input.get(i + 1..).unwrap_or_default();
                }
                _ => {
                    let mut pending = std::mem::take(&mut self.pending);
                    pending.extend_from_slice(input);
                    let used = self.process(&pending, false, out, stats);
                    pending.drain(..used.min(pending.len()));
                    self.pending = pending;
                    return;
                }
            }
        }
        let used = self.process(input, false, out, stats);
        self.pending
            .extend_from_slice(input.get(used..).unwrap_or_default());
    }

    /// Masks and appends everything held back; the masker is then ready for a new stream.
    pub fn finish(&mut self, out: &mut Vec<u8>, stats: &mut MaskStats) {
        let pending = std::mem::take(&mut self.pending);
        self.process(&pending, true, out, stats);
        self.pem = PemState::default();
        // Keep the allocation for the next stream.
        self.pending = pending;
        self.pending.clear();
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Masks the decidable prefix of `data`; returns its length.
    fn process(
        &mut self,
        data: &[u8],
        last: bool,
        out: &mut Vec<u8>,
        stats: &mut MaskStats,
    ) -> usize {
        let mut pos = 0usize;
        while let Some(rest) = data.get(pos..) {
            let Some(n) = batch_len(rest, last) else {
                break;
            };
            let batch = rest.get(..n).unwrap_or_default();
            let inner = &self.session.inner;
            inner.resolve(&self.session.global, &mut self.pem, batch, &mut self.hits);
            inner.write(&self.session.global, batch, &self.hits, out, stats);
            pos += n;
        }
        pos
    }
}

/// Length of the next batch of `rest` that can be decided now: complete lines (each at most
/// the window), or a forced cut of an over-long line, or everything when `last`.
fn batch_len(rest: &[u8], last: bool) -> Option<usize> {
    if rest.is_empty() {
        return None;
    }
    // One backward search for the last line end in the target, not one search per line:
    // rows are ~100 bytes, so a batch used to cost hundreds of `memchr` calls.
    let target = rest.get(..BATCH_TARGET).unwrap_or(rest);
    if let Some(i) = memchr::memrchr(b'\n', target) {
        return Some(i + 1);
    }
    if let Some(window) = rest.get(..STREAM_WINDOW) {
        let cut = memchr::memrchr3(b'\t', b'"', b',', window)
            .or_else(|| memchr::memrchr(b' ', window))
            .map_or(STREAM_WINDOW, |i| i + 1);
        return Some(cut);
    }
    last.then_some(rest.len())
}
