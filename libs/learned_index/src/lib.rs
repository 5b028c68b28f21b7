//! A PGM-style learned index over the sorted keys of one image layer's table: given a key, it
//! names the one row page that can hold it, so a point lookup reads exactly one page.
//!
//! The index does not own the rows. The caller packs its rows, sorted by key, into pages of
//! `rows_per_page` rows (the last page may be shorter) and builds the index over the same keys
//! in the same order. [`LearnedIndex::locate`] answers with a page and the slots of it the
//! model points at; the caller reads that page and finds the key in it ([`search_page_near`],
//! or [`search_page_near_by`] for pages that hold keys in another form). [`LearnedIndex::lookup`]
//! does both over an in-memory key array, for tests and benchmarks. Pure; no I/O.
//!
//! # Structure
//!
//! ```text
//!  key: byte string (order-preserving encoding of the primary key)
//!   │ cut the prefix common to all keys of the index, take the next 8 bytes,
//!   │ big-endian, zero-padded                           (order-preserving, not injective)
//!   ▼
//!   x: u64 ──▶ levels[top] (1 segment) ─▶ … ─▶ levels[1]     each predicts a position in the
//!                                                │           level below within ±4; a branch-free
//!                                                ▼           count over ±6 keys finds the segment
//!                    levels[0]: segment = first_x (8 bytes) + line (f32 slope, i32 intercept)
//!                                                │
//!      p = intercept + slope·(x − first_x) ≈ rank of the first key whose projection is x
//!                                                │  |p − rank| ≤ ε ≤ rows_per_page / 2,
//!                                                ▼  so [p − ε, p + ε] touches ≤ 2 pages
//!  fences: u64 per page (projection of its first key) + separators where a page boundary
//!          falls between two keys with the same projection ("ties", module `ties`)
//!                                                │  3 adjacent fence comparisons pick one page
//!                                                ▼
//!   rows:  │ page 0: rows 0 … R−1 │ page 1: rows R … 2R−1 │ … │ page n_pages−1 │
//!                           ▲ the caller reads only this page and bisects [p − ε, p + ε] on it
//! ```
//!
//! # What it guarantees
//!
//! - **One page per lookup.** [`LearnedIndex::page_for`] (and `locate`) returns the page whose
//!   key range holds the key: page `j` (for `j ≥ 1`) starts at a separator `s_j` with
//!   `last key of page j−1 < s_j ≤ first key of page j`, and the key goes to the last page whose
//!   separator is ≤ the key (page 0 for keys below all separators). A present key is always on
//!   that page; an absent key is then not found on it. The answer comes from the fences alone,
//!   checked around the model's prediction and searched outward from it when the check fails,
//!   so it is right even where the model is far off (a run of keys sharing their 8 projected
//!   bytes, or damaged bytes that still decode); the model only makes it fast. Likewise
//!   [`search_page_near_by`] searches the whole page when the key is not in the window.
//! - **Error bound.** For every distinct projection `x` of the indexed keys, the predicted
//!   rank is within [`LearnedIndex::epsilon`] of the rank of the first key with projection `x`
//!   (checked over every key by [`LearnedIndex::build`] before it returns). ε is
//!   `rows_per_page / 2` (128 for 256-row pages), or `/ 8` or `/ 32` when that fit is cheap
//!   ([`FINER_EPSILON_KEYS_PER_SEGMENT_MIN`]): the builder fits all three in the same pass and
//!   keeps the finest that is small enough, which narrows the search within the page. Levels
//!   are fitted with one rank less than their bound, which covers storing slopes as `f32` and
//!   intercepts as integers (see `pla::Pla::segment`).
//! - **Equal projections.** Keys that share their first 8 bytes after the prefix (or differ
//!   only by trailing zero bytes within them) share a projection. The model is fitted to the
//!   first rank of each projection. A page boundary between two keys of one projection (a
//!   "tie") keeps the shortest separator between them (LevelDB's `FindShortestSeparator`)
//!   beside its fence, with the bytes that a run of such separators shares stored once;
//!   fences compare as `u64`s and fall back to the separator only when the query's projection
//!   equals the fence. Inside such a run the model cannot tell pages apart, so the fence search
//!   gallops across the run's pages: O(log pages in the run) separator comparisons instead of
//!   3. Composite keys whose first column fills the first 8 bytes are the common case.
//! - **Build** is one streaming pass, O(n) ([`LearnedIndexBuilder`]); the optimal
//!   piecewise-linear fit (fewest segments for the bound) is O'Rourke's, as in the PGM-index.
//! - **Size** ([`LearnedIndex::size_bytes`]): 8 bytes of fence per page, 16 bytes per segment of
//!   every level, and per tie 9 bytes plus the separator's bytes that its run does not share.
//!   With [`ROWS_PER_PAGE_DEFAULT`] (256 rows) fences cost 0.031 bytes/key; measured totals are
//!   0.034–0.08 bytes/key on uniform, Zipfian-gap, sequential, clustered and composite keys,
//!   inside the target of 0.1 bytes/key (10 MB per 100M keys). Adversarial keys (clusters
//!   smaller than a page, each needing its own segment) can cost more; the tests hold them to
//!   0.15.
//! - **Serialization** ([`LearnedIndex::encode`], [`LearnedIndex::decode`]): magic, version,
//!   little-endian fields, CRC32C. Decoding bounds-checks every count before allocating,
//!   validates the structure, and never panics; a decoded index never panics on lookup.
//!
//! # Limits
//! [`KEY_BYTES_MAX`], [`KEYS_MAX`], [`ROWS_PER_PAGE_MIN`], [`ROWS_PER_PAGE_MAX`],
//! [`EPSILON_MIN`], [`EPSILON_RECURSIVE`], [`LEVELS_MAX`], [`SEPARATOR_BYTES_MAX`].

mod build;
mod codec;
mod error;
mod pla;
mod projection;
mod search;
mod ties;

use std::ops::Range;

pub use build::LearnedIndexBuilder;
pub use error::Error;
pub use projection::{common_prefix, PROJECTION_BYTES};

use projection::{cmp_concat, place, project, Placement};
use search::partition_point_near;
use ties::Ties;

/// Longest key the index accepts, in bytes.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// Most keys (rows) one index covers: 2^30. Intercepts are `i32`; a larger table has more
/// than one image layer (each covers a key range), each with its own index.
pub const KEYS_MAX: u64 = 1 << 30;
/// Fewest rows per page: the error bound `rows_per_page / 2` must leave a rank of slack.
pub const ROWS_PER_PAGE_MIN: u32 = 4;
/// Most rows per page.
pub const ROWS_PER_PAGE_MAX: u32 = 1 << 20;
/// Rows per page the image layer is meant to use: 0.031 bytes/key of fences, ε ≤ 128.
pub const ROWS_PER_PAGE_DEFAULT: u32 = 256;
/// Finest error bound of the first level tried, in ranks. The coarsest is
/// `rows_per_page / 2`; the builder also tries `/ 8` and `/ 32` where they are at least this.
pub const EPSILON_MIN: u32 = 4;
/// A finer error bound than `rows_per_page / 2` is used only when its first level has at most
/// one segment per this many keys (16 bytes per segment: ≤ 0.016 bytes/key). A finer bound
/// narrows the window a lookup searches within the page; it does not change the page.
pub const FINER_EPSILON_KEYS_PER_SEGMENT_MIN: u64 = 1024;
/// Error bound, in positions, of the levels above the first: a prediction there is off by at
/// most 4 segments (6 between segment keys, with rounding), so a branch-free count over 12
/// keys, two cache lines, finds the segment.
pub const EPSILON_RECURSIVE: u32 = 4;
/// Most levels of segments. Each level has at most half the segments of the one below (any
/// two points fit one segment), so 2^30 keys need at most 31.
pub const LEVELS_MAX: usize = 40;
/// Most bytes of page-boundary separators kept beyond the fences, in all.
pub const SEPARATOR_BYTES_MAX: u64 = u32::MAX as u64;

/// A page of rows: rows `id·rows_per_page .. min((id+1)·rows_per_page, n)` in key order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(pub u32);

impl PageId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One level of the model: segments sorted by `first_x`. The keys are an array of their own,
/// which the search scans, and each segment's line is one 8-byte entry of another, so a
/// lookup touches one cache line of lines per level.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Level {
    pub first_x: Vec<u64>,
    pub lines: Vec<Line>,
}

/// A segment's line: `y ≈ intercept + slope · (x − first_x)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Line {
    pub slope: f32,
    pub intercept: i32,
}

impl Level {
    pub fn len(&self) -> usize {
        self.first_x.len()
    }

    pub fn push(&mut self, segment: pla::Segment) {
        self.first_x.push(segment.first_x);
        self.lines.push(Line {
            slope: segment.slope,
            intercept: segment.intercept,
        });
    }

    pub fn shrink_to_fit(&mut self) {
        self.first_x.shrink_to_fit();
        self.lines.shrink_to_fit();
    }

    /// Segment `segment`'s prediction for `x`, rounded to the nearest integer (halves up),
    /// at most the next segment's intercept, and clamped to `0..len` (`len ≥ 1`). A segment
    /// index out of range (only possible for an inconsistent index) predicts 0.
    ///
    /// The cap matters for keys past a segment's last point: a line fitted to its points may
    /// climb far above the next segment's start across a wide gap of keys (the PGM-index
    /// caps it the same way).
    #[inline]
    pub fn predict(&self, segment: usize, x: u64, len: usize) -> usize {
        let (Some(&first_x), Some(line)) = (self.first_x.get(segment), self.lines.get(segment))
        else {
            return 0;
        };
        let y =
            f64::from(line.intercept) + f64::from(line.slope) * x.saturating_sub(first_x) as f64;
        // `as` truncates toward zero and saturates (NaN becomes 0): for y ≥ −0.5 this is
        // rounding to nearest, and anything below rounds to ≤ 0 and is clamped to 0 anyway.
        // (f64::round is a libm call on baseline x86-64.)
        let mut rounded = (y + 0.5) as i64;
        if let Some(next) = self.lines.get(segment + 1) {
            rounded = rounded.min(i64::from(next.intercept));
        }
        rounded.clamp(0, len.saturating_sub(1) as i64) as usize
    }
}

/// A learned index over the sorted keys of `n` rows packed into pages of `rows_per_page`.
/// See the crate documentation for its structure and guarantees.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnedIndex {
    n_keys: u64,
    rows_per_page: u32,
    /// The first level's error bound, at most `rows_per_page / 2`.
    epsilon: u32,
    /// The prefix every key shares; cut off before projecting.
    prefix: Vec<u8>,
    /// Projections of the first and the last key (0 and 0 when empty).
    first_x: u64,
    last_x: u64,
    /// `levels[0]` predicts ranks; `levels[l]` predicts segment indexes of `levels[l−1]`; the
    /// last level has one segment. Empty when the index is empty.
    levels: Vec<Level>,
    /// Per page, the projection of its first key; non-decreasing.
    fences: Vec<u64>,
    ties: Ties,
}

impl LearnedIndex {
    /// Builds the index over `keys`, which must be strictly increasing (byte order), packed
    /// into pages of `rows_per_page` rows, and checks the error bound over every key before
    /// returning. One pass to build, one to check.
    pub fn build<K: AsRef<[u8]>>(keys: &[K], rows_per_page: u32) -> Result<Self, Error> {
        build::build(keys, rows_per_page)
    }

    /// The number of keys (rows) indexed.
    pub fn len(&self) -> usize {
        self.n_keys as usize
    }

    pub fn is_empty(&self) -> bool {
        self.n_keys == 0
    }

    pub fn rows_per_page(&self) -> u32 {
        self.rows_per_page
    }

    /// The error bound of the first level, in ranks: `rows_per_page / 2` or, where the keys
    /// allow it cheaply, finer (see [`FINER_EPSILON_KEYS_PER_SEGMENT_MIN`]).
    pub fn epsilon(&self) -> u32 {
        self.epsilon
    }

    pub fn n_pages(&self) -> usize {
        self.fences.len()
    }

    /// Segments in the first level (the piecewise-linear model of the key distribution).
    pub fn n_segments(&self) -> usize {
        self.levels.first().map_or(0, Level::len)
    }

    /// Levels of segments, the first included (0 when empty).
    pub fn n_levels(&self) -> usize {
        self.levels.len()
    }

    /// Page boundaries that needed a separator beyond their fence.
    pub fn n_tie_fences(&self) -> usize {
        self.ties.len()
    }

    /// The prefix shared by every key, cut off before projecting.
    pub fn common_prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Memory held by the index, in bytes: every array at its length, plus the struct itself.
    pub fn size_bytes(&self) -> usize {
        let levels: usize = self.levels.iter().map(|level| level.len() * 16).sum();
        const _: () = assert!(std::mem::size_of::<Line>() == 8);
        std::mem::size_of::<Self>()
            + self.levels.len() * std::mem::size_of::<Level>()
            + levels
            + self.fences.len() * 8
            + self.ties.size_bytes()
            + self.prefix.len()
    }

    /// The rows of page `page`, clamped to the index's rows.
    pub fn page_rows(&self, page: PageId) -> Range<usize> {
        let n = self.len();
        let start = (page.index())
            .saturating_mul(self.rows_per_page as usize)
            .min(n);
        let end = start.saturating_add(self.rows_per_page as usize).min(n);
        start..end
    }

    /// The one page that can hold `key`; `None` only when the index is empty. See the crate
    /// documentation for what "can hold" means for absent keys.
    pub fn page_for(&self, key: &[u8]) -> Option<PageId> {
        self.locate(key).map(|location| location.page)
    }

    /// The one page that can hold `key` (as [`Self::page_for`]) and the slots of it that the
    /// model points at, for [`search_page_near`]. `None` only when the index is empty.
    pub fn locate(&self, key: &[u8]) -> Option<Location> {
        let n_pages = self.fences.len();
        let last_page = Location {
            page: PageId(u32::try_from(n_pages.checked_sub(1)?).ok()?),
            slots: 0..0,
        };
        let first_page = Location {
            page: PageId(0),
            slots: 0..0,
        };
        let rest = match place(&self.prefix, key) {
            Placement::Below => return Some(first_page),
            Placement::Above => return Some(last_page),
            Placement::Within(rest) => rest,
        };
        let x = project(rest);
        if x < self.first_x {
            return Some(first_page);
        }
        if x > self.last_x {
            return Some(last_page);
        }
        let rank = self.predict_projected(x);
        let epsilon = self.epsilon as usize;
        let (window_start, window_end) = (rank.saturating_sub(epsilon), rank + epsilon + 1);
        let rows_per_page = self.rows_per_page as usize;
        // The key's page is the number of page boundaries (page starts 1..n_pages) at or
        // below it. When the model is right, that is the window's first page or the next:
        // the boundary of the first must be at or below the key and the one two pages on
        // above it, and then one comparison, without a branch, picks between the two.
        // Otherwise (a key whose projection starts a run of many pages, a damaged model),
        // gallop from the window.
        let first = (window_start / rows_per_page).min(n_pages - 1);
        let le = |page: usize| self.separator_le(page, rest, x);
        let page = if (first == 0 || le(first)) && !le(first + 2) {
            first + usize::from(le(first + 1))
        } else {
            // Index i stands for the boundary at the start of page i + 1.
            partition_point_near(n_pages - 1, first, |i| le(i + 1))
        };
        let page_start = page * rows_per_page;
        let start = window_start.saturating_sub(page_start).min(rows_per_page);
        let end = window_end.saturating_sub(page_start).min(rows_per_page);
        Some(Location {
            page: PageId(page as u32),
            slots: start..end.max(start),
        })
    }

    /// The model's rank for `key`: within [`Self::epsilon`] of the rank of the first indexed
    /// key with the same projection, for every indexed key. `None` when the index is empty.
    pub fn predict_rank(&self, key: &[u8]) -> Option<usize> {
        let last = self.len().checked_sub(1)?;
        match place(&self.prefix, key) {
            Placement::Below => Some(0),
            Placement::Above => Some(last),
            Placement::Within(rest) => Some(self.predict_projected(project(rest))),
        }
    }

    /// Finds `key` among `keys` (the keys the index was built over) by reading one page:
    /// its row number, or `None` when absent.
    pub fn lookup<K: AsRef<[u8]>>(&self, keys: &[K], key: &[u8]) -> Option<usize> {
        let location = self.locate(key)?;
        let rows = self.page_rows(location.page);
        let page_keys = keys.get(rows.start..rows.end.min(keys.len()))?;
        Some(rows.start + search_page_near(page_keys, key, location.slots)?)
    }

    /// The predicted rank of projection `x`, walking the levels from the top.
    #[inline]
    fn predict_projected(&self, x: u64) -> usize {
        let Some(top) = self.levels.len().checked_sub(1) else {
            return 0;
        };
        let mut segment = 0usize;
        for l in (1..=top).rev() {
            let below = &self.levels[l - 1].first_x;
            let predicted = self.levels[l].predict(segment, x, below.len());
            // Between two segment keys the prediction is within ε + 1 of the count, and
            // rounding adds one more.
            let radius = EPSILON_RECURSIVE as usize + 2;
            segment = count_at_or_below_near(below, x, predicted + 1, radius).saturating_sub(1);
        }
        self.levels[0].predict(segment, x, self.len())
    }

    /// Whether the separator at the start of `page` is ≤ the key whose rest after the prefix
    /// is `rest` and whose projection is `x` (false past the last page).
    #[inline]
    fn separator_le(&self, page: usize, rest: &[u8], x: u64) -> bool {
        let Some(&fence) = self.fences.get(page) else {
            return false;
        };
        if fence == x {
            return self.separator_le_at_fence(page, rest, fence);
        }
        fence < x
    }

    /// `separator_le` for a key whose projection equals the page's fence.
    #[cold]
    fn separator_le_at_fence(&self, page: usize, rest: &[u8], fence: u64) -> bool {
        // Without a tie record, the separator is the fence's bytes without trailing zeros:
        // the least key with this projection, so ≤ every key that has it.
        match self.ties.separator(page as u32) {
            None => true,
            Some(separator) => {
                let fence_bytes = fence.to_be_bytes();
                let head = &fence_bytes[..separator.head_bytes];
                cmp_concat(&[head, separator.run_prefix, separator.suffix], rest).is_le()
            }
        }
    }
}

/// Where [`LearnedIndex::locate`] sends a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The one page that can hold the key.
    pub page: PageId,
    /// The slots of that page (0-based within it) inside the model's window
    /// `[p − ε, p + ε]`: a present key is there unless an earlier key shares its projection.
    /// A hint: [`search_page_near`] looks there first and then, if the key sorts outside the
    /// window, in the rest of the page. May be empty.
    pub slots: Range<usize>,
}

/// Finds `key` in one page's keys (sorted): its slot, or `None` when absent.
pub fn search_page<K: AsRef<[u8]>>(page_keys: &[K], key: &[u8]) -> Option<usize> {
    page_keys.binary_search_by(|k| k.as_ref().cmp(key)).ok()
}

/// [`search_page`] that bisects the model's window `slots` first ([`Location::slots`]).
pub fn search_page_near<K: AsRef<[u8]>>(
    page_keys: &[K],
    key: &[u8],
    slots: Range<usize>,
) -> Option<usize> {
    search_page_near_by(page_keys.len(), slots, |slot| {
        page_keys[slot].as_ref().cmp(key)
    })
}

/// The number of keys ≤ `x` in the sorted `keys`, expected within `radius` of `hint`: counted
/// without branches over that window when the keys on either side of it bracket `x`,
/// otherwise found by galloping from `hint`.
#[inline]
fn count_at_or_below_near(keys: &[u64], x: u64, hint: usize, radius: usize) -> usize {
    let len = keys.len();
    let start = hint.saturating_sub(radius).min(len);
    let end = hint.saturating_add(radius).min(len);
    let bracketed = (start == 0 || keys[start - 1] <= x) && (end == len || keys[end] > x);
    if bracketed {
        start
            + keys[start..end]
                .iter()
                .map(|&key| usize::from(key <= x))
                .sum::<usize>()
    } else {
        partition_point_near(len, hint, |i| keys[i] <= x)
    }
}

/// [`search_page_near`] for pages that hold keys in another form: `compare(slot)` orders the
/// key at `slot` against the key sought, for `slot < page_len`. Bisects `slots` (clamped to
/// the page), then, only if the key sorts before or after every key there, the part of the
/// page on that side. Right for any `slots`; fast when they hold the key.
pub fn search_page_near_by(
    page_len: usize,
    slots: Range<usize>,
    mut compare: impl FnMut(usize) -> std::cmp::Ordering,
) -> Option<usize> {
    let end = slots.end.min(page_len);
    let start = slots.start.min(end);
    let (start, end) = if start == end {
        (0, page_len)
    } else {
        (start, end)
    };
    let found = lower_bound(start, end, &mut compare);
    if found < end {
        return match compare(found) {
            std::cmp::Ordering::Equal => Some(found),
            // Greater than the sought key: it is absent unless it sorts before the window.
            _ if found > start => None,
            _ => lower_bound_equal(0, start, &mut compare),
        };
    }
    // Every key of the window sorts before the sought key.
    lower_bound_equal(end, page_len, &mut compare)
}

/// The first slot in `start..end` whose key is not less than the sought key (`end` if none).
/// Branch-free bisection: the range halves whatever the comparison says, and the comparison
/// only selects which half, so lookups of random keys do not stall on mispredictions.
#[inline]
fn lower_bound(
    start: usize,
    end: usize,
    compare: &mut impl FnMut(usize) -> std::cmp::Ordering,
) -> usize {
    if start >= end {
        return start;
    }
    // The answer is in base..=base + size.
    let mut base = start;
    let mut size = end - start;
    while size > 1 {
        let half = size / 2;
        let mid = base + half;
        base = std::hint::select_unpredictable(compare(mid).is_lt(), mid, base);
        size -= half;
    }
    base + usize::from(compare(base).is_lt())
}

fn lower_bound_equal(
    start: usize,
    end: usize,
    compare: &mut impl FnMut(usize) -> std::cmp::Ordering,
) -> Option<usize> {
    let found = lower_bound(start, end, compare);
    (found < end && compare(found).is_eq()).then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_near_finds_every_key_from_every_window() {
        for len in 0..12usize {
            let page: Vec<u32> = (0..len as u32).map(|i| i * 2 + 1).collect();
            for sought in 0..(2 * len as u32 + 2) {
                let expected = page.binary_search(&sought).ok();
                for start in 0..len + 2 {
                    for end in 0..len + 3 {
                        let found =
                            search_page_near_by(len, start..end, |slot| page[slot].cmp(&sought));
                        assert_eq!(
                            found, expected,
                            "len {len} sought {sought} slots {start}..{end}"
                        );
                    }
                }
            }
        }
    }
}
