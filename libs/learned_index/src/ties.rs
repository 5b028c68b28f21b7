//! Page boundaries that fall inside a run of keys sharing one projection ("ties"), and the
//! separators that split them. Pure; no I/O.
//!
//! A fence (the `u64` projection of a page's first key) tells a key apart from the page start
//! unless both have the same projection. For most boundaries that is enough: the separator is
//! the least key with the fence's projection, so every key with that projection is at or
//! after it. When the last key of the previous page has the same projection as the page's
//! first key, the boundary keeps the shortest separator between the two keys. Ties come in
//! runs (a long run of keys with one projection spans many pages, e.g. composite keys whose
//! first column fills the 8 bytes); the separators of one run usually share many bytes past
//! the first 8, which are stored once per run:
//!
//! ```text
//!  separator = fence bytes [..head] ++ run prefix ++ suffix    (head < 8 ⇒ no prefix, no suffix)
//!  pages:      │ 17 │ 18 │ 19 │ 40 │ …        page each tie starts (increasing)
//!  ends:       │ e0 │ e1 │ e2 │ e3 │ …        entry i is bytes[e(i−1)..e(i)] = head byte, suffix
//!  run_starts: │ 0  │ 3  │ …                  first tie of each run (a run's ties share
//!                                            one fence, or, with an empty prefix, nothing)
//!  run_ends:   │ r0 │ r1 │ …                  run j's prefix is run_bytes[r(j−1)..r(j)]
//! ```

use crate::projection::PROJECTION_BYTES;
use crate::{Error, KEY_BYTES_MAX, SEPARATOR_BYTES_MAX};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ties {
    pub pages: Vec<u32>,
    pub ends: Vec<u32>,
    pub bytes: Vec<u8>,
    pub run_starts: Vec<u32>,
    pub run_ends: Vec<u32>,
    pub run_bytes: Vec<u8>,
}

/// A tie's separator in three parts; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Separator<'a> {
    pub head_bytes: usize,
    pub run_prefix: &'a [u8],
    pub suffix: &'a [u8],
}

impl Ties {
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn size_bytes(&self) -> usize {
        (self.pages.len() + self.ends.len() + self.run_starts.len() + self.run_ends.len()) * 4
            + self.bytes.len()
            + self.run_bytes.len()
    }

    /// The separator at the start of `page`, or `None` when that boundary is not a tie.
    /// Bounds-checked throughout: a damaged table yields `None` or a wrong separator.
    pub fn separator(&self, page: u32) -> Option<Separator<'_>> {
        let i = self.pages.binary_search(&page).ok()?;
        let (&head_bytes, suffix) = entry(&self.ends, &self.bytes, i)?.split_first()?;
        let run = self
            .run_starts
            .partition_point(|&start| start as usize <= i)
            .checked_sub(1)?;
        Some(Separator {
            head_bytes: usize::from(head_bytes).min(PROJECTION_BYTES),
            run_prefix: entry(&self.run_ends, &self.run_bytes, run)?,
            suffix,
        })
    }

    /// Checks the invariants that `separator` and the codec rely on; `fences` are the index's.
    pub fn validate(&self, fences: &[u64]) -> Result<(), String> {
        let n_ties = self.pages.len();
        if self.ends.len() != n_ties || self.run_ends.len() != self.run_starts.len() {
            return Err("tie arrays of different lengths".to_owned());
        }
        if self.pages.windows(2).any(|w| w[0] >= w[1])
            || self.pages.first() == Some(&0)
            || self
                .pages
                .last()
                .is_some_and(|&page| page as usize >= fences.len())
        {
            return Err("tie pages are not increasing within 1..n_pages".to_owned());
        }
        if self.run_starts.windows(2).any(|w| w[0] >= w[1])
            || self.run_starts.first().is_some_and(|&start| start != 0)
            || self
                .run_starts
                .last()
                .is_some_and(|&start| start as usize >= n_ties)
            || (n_ties > 0) == self.run_starts.is_empty()
        {
            return Err("tie runs do not partition the ties".to_owned());
        }
        if self.ends.last().map_or(0, |&end| end as usize) != self.bytes.len()
            || self.run_ends.last().map_or(0, |&end| end as usize) != self.run_bytes.len()
        {
            return Err("tie ends do not cover the tie bytes".to_owned());
        }
        for (i, &page) in self.pages.iter().enumerate() {
            let separator = entry(&self.ends, &self.bytes, i)
                .ok_or_else(|| format!("tie {i} ends before it starts"))?;
            let Some((&head_bytes, suffix)) = separator.split_first() else {
                return Err(format!("tie {i} is empty"));
            };
            let head_bytes = usize::from(head_bytes);
            // run_starts begins at 0, so every tie has a run.
            let run = self
                .run_starts
                .partition_point(|&start| start as usize <= i)
                - 1;
            let run_prefix = entry(&self.run_ends, &self.run_bytes, run)
                .ok_or_else(|| format!("tie run {run} ends before it starts"))?;
            let short = head_bytes < PROJECTION_BYTES;
            if head_bytes > PROJECTION_BYTES
                || short && !(run_prefix.is_empty() && suffix.is_empty())
            {
                return Err(format!("tie {i} has a bad separator head"));
            }
            if run_prefix.len() + suffix.len() > KEY_BYTES_MAX {
                return Err(format!("tie {i} separator is longer than KEY_BYTES_MAX"));
            }
            // The separator must have its page's fence as its projection.
            let fence_bytes = fences[page as usize].to_be_bytes();
            if fence_bytes[head_bytes..].iter().any(|&b| b != 0) {
                return Err(format!("tie {i} separator does not project to its fence"));
            }
        }
        Ok(())
    }
}

/// Entry `i` of a table of `ends` into `bytes`: `bytes[ends[i−1]..ends[i]]` (from 0 for i = 0).
fn entry<'a>(ends: &[u32], bytes: &'a [u8], i: usize) -> Option<&'a [u8]> {
    let start = match i.checked_sub(1) {
        Some(previous) => *ends.get(previous)? as usize,
        None => 0,
    };
    bytes.get(start..*ends.get(i)? as usize)
}

/// Bytes of one run's entry in the table (its first tie and its prefix's end).
const RUN_ENTRY_BYTES: usize = 8;

/// Collects ties in page order, holding back the current run until its prefix is known.
#[derive(Debug, Default)]
pub(crate) struct TiesBuilder {
    ties: Ties,
    /// Bytes pushed so far before prefix sharing, an upper bound of what the table needs.
    pushed_bytes: u64,
    run_x: u64,
    run_heads: Vec<u8>,
    /// The current run's separators past their first 8 bytes, back to back.
    run_tails: Vec<u8>,
    run_tail_ends: Vec<usize>,
}

impl TiesBuilder {
    /// Fails, changing nothing, when a separator of `separator_bytes` would not fit.
    pub fn check_room(&self, separator_bytes: usize) -> Result<(), Error> {
        if self.pushed_bytes + 1 + separator_bytes as u64 > SEPARATOR_BYTES_MAX {
            return Err(Error::SeparatorBytes {
                max: SEPARATOR_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// Adds the tie at the start of `page`, whose fence is `x`, with its shortest separator
    /// (the part after the index's common prefix). Call `check_room` first.
    pub fn push(&mut self, page: u32, x: u64, separator: &[u8]) {
        if !self.run_heads.is_empty() && x != self.run_x {
            self.flush_run();
        }
        self.run_x = x;
        self.pushed_bytes += 1 + separator.len() as u64;
        self.ties.pages.push(page);
        self.run_heads
            .push(separator.len().min(PROJECTION_BYTES) as u8);
        self.run_tails
            .extend_from_slice(separator.get(PROJECTION_BYTES..).unwrap_or_default());
        self.run_tail_ends.push(self.run_tails.len());
    }

    /// Writes the current run: the bytes all its tails share once, then each tail's rest.
    /// Tails are sorted, so what the first and the last share, all share.
    fn flush_run(&mut self) {
        let first = &self.run_tails[..self.run_tail_ends.first().copied().unwrap_or(0)];
        let last_start = match self.run_tail_ends.len() {
            0 | 1 => 0,
            n => self.run_tail_ends[n - 2],
        };
        let last = &self.run_tails[last_start..];
        let mut shared = first.iter().zip(last).take_while(|(a, b)| a == b).count();

        let ties = &mut self.ties;
        // A run entry costs 8 bytes; where sharing saves less, the ties join the previous run
        // if that has no prefix either (runs only need to share *a* prefix, maybe empty).
        if shared * self.run_heads.len() <= RUN_ENTRY_BYTES {
            shared = 0;
        }
        let previous_prefix_empty = match ties.run_ends.len() {
            0 => false,
            1 => ties.run_ends[0] == 0,
            n => ties.run_ends[n - 1] == ties.run_ends[n - 2],
        };
        if shared > 0 || !previous_prefix_empty {
            let first_tie = ties.pages.len() - self.run_heads.len();
            ties.run_starts.push(first_tie as u32);
            ties.run_bytes.extend_from_slice(&first[..shared]);
            ties.run_ends.push(ties.run_bytes.len() as u32);
        }
        let mut start = 0;
        for (&head, &end) in self.run_heads.iter().zip(&self.run_tail_ends) {
            ties.bytes.push(head);
            ties.bytes
                .extend_from_slice(&self.run_tails[start + shared.min(end - start)..end]);
            ties.ends.push(ties.bytes.len() as u32);
            start = end;
        }
        self.run_heads.clear();
        self.run_tails.clear();
        self.run_tail_ends.clear();
    }

    pub fn finish(mut self) -> Ties {
        if !self.run_heads.is_empty() {
            self.flush_run();
        }
        let mut ties = self.ties;
        ties.pages.shrink_to_fit();
        ties.ends.shrink_to_fit();
        ties.bytes.shrink_to_fit();
        ties.run_starts.shrink_to_fit();
        ties.run_ends.shrink_to_fit();
        ties.run_bytes.shrink_to_fit();
        ties
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_share_their_prefix() {
        let mut builder = TiesBuilder::default();
        let separators: [(u32, u64, &[u8]); 5] = [
            (1, 7, b"ab"),
            (2, 9, b"headhead-tenant-1"),
            (3, 9, b"headhead-tenant-2x"),
            (4, 9, b"headhead-tenant-3"),
            (9, 11, b"headheadZ"),
        ];
        for (page, x, separator) in separators {
            builder.check_room(separator.len()).unwrap();
            builder.push(page, x, separator);
        }
        let ties = builder.finish();
        // "ab" and "headheadZ" save less than a run entry costs: no prefix for them.
        assert_eq!(ties.run_starts, [0, 1, 4]);
        assert_eq!(ties.run_bytes, b"-tenant-");
        for (page, _, separator) in separators {
            let found = ties.separator(page).unwrap();
            let rebuilt = [
                &separator[..found.head_bytes],
                found.run_prefix,
                found.suffix,
            ]
            .concat();
            assert_eq!(rebuilt, separator);
        }
        assert_eq!(ties.separator(5), None);
    }
}
