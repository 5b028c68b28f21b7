//! Building an index in one streaming pass, and checking one against its keys. Pure; no I/O.
//!
//! The builder sees each key once, in order: it checks the order, records a fence at every
//! page start (and a separator when the boundary splits keys of one projection), and feeds the
//! first rank of every new projection to the first level's fits, one per candidate error bound
//! (`rows_per_page / 2`, `/ 8`, `/ 32`, down to `EPSILON_MIN`). `finish` keeps the finest fit
//! that is small enough (at most one segment per `FINER_EPSILON_KEYS_PER_SEGMENT_MIN` keys; the
//! coarsest always qualifies), then fits the upper levels over the first keys of the level
//! below until one segment is left.

use crate::pla::{self, Pla};
use crate::projection::{cmp_concat, common_prefix, project, shortest_separator};
use crate::ties::TiesBuilder;
use crate::{
    Error, LearnedIndex, Level, EPSILON_MIN, EPSILON_RECURSIVE, FINER_EPSILON_KEYS_PER_SEGMENT_MIN,
    KEYS_MAX, KEY_BYTES_MAX, LEVELS_MAX, ROWS_PER_PAGE_MAX, ROWS_PER_PAGE_MIN,
};

/// A fit of the first level for one error bound.
#[derive(Debug)]
struct Candidate {
    epsilon: u32,
    pla: Pla,
    level: Level,
}

impl Candidate {
    fn new(epsilon: u32) -> Self {
        Self {
            epsilon,
            pla: Pla::new(u64::from(fit_epsilon(epsilon))),
            level: Level::default(),
        }
    }

    fn add(&mut self, x: u64, rank: u64) {
        if !self.pla.add(x, rank) {
            self.level.extend(self.pla.segment());
            let started = self.pla.add(x, rank);
            debug_assert!(started, "a point always starts a segment");
        }
    }
}

/// Builds a [`LearnedIndex`] from keys pushed one at a time in strictly increasing order, for
/// a writer that streams rows into pages. Every key must start with `common_prefix` (give an
/// empty prefix when it is not known; [`LearnedIndex::build`] computes it from the first and
/// the last key). A `push` that fails leaves the builder as it was.
#[derive(Debug)]
pub struct LearnedIndexBuilder {
    rows_per_page: u32,
    prefix: Vec<u8>,
    n_keys: u64,
    /// The previous key's bytes after the prefix, and its projection.
    previous_rest: Vec<u8>,
    previous_x: u64,
    /// From the coarsest error bound (`rows_per_page / 2`) to the finest.
    candidates: Vec<Candidate>,
    fences: Vec<u64>,
    ties: TiesBuilder,
}

impl LearnedIndexBuilder {
    pub fn new(rows_per_page: u32, common_prefix: &[u8]) -> Result<Self, Error> {
        if !(ROWS_PER_PAGE_MIN..=ROWS_PER_PAGE_MAX).contains(&rows_per_page) {
            return Err(Error::RowsPerPage {
                rows_per_page,
                min: ROWS_PER_PAGE_MIN,
                max: ROWS_PER_PAGE_MAX,
            });
        }
        if common_prefix.len() > KEY_BYTES_MAX {
            return Err(Error::KeyTooLong {
                position: 0,
                key_bytes: common_prefix.len(),
                max: KEY_BYTES_MAX,
            });
        }
        let coarsest = rows_per_page / 2;
        let candidates = [coarsest, coarsest / 4, coarsest / 16]
            .into_iter()
            .enumerate()
            .filter(|&(i, epsilon)| i == 0 || epsilon >= EPSILON_MIN)
            .map(|(_, epsilon)| Candidate::new(epsilon))
            .collect();
        Ok(Self {
            rows_per_page,
            prefix: common_prefix.to_vec(),
            n_keys: 0,
            previous_rest: Vec::new(),
            previous_x: 0,
            candidates,
            fences: Vec::new(),
            ties: TiesBuilder::default(),
        })
    }

    /// Adds the next key (the next row's key, in page order).
    pub fn push(&mut self, key: &[u8]) -> Result<(), Error> {
        let position = self.n_keys;
        if position >= KEYS_MAX {
            return Err(Error::TooManyKeys { max: KEYS_MAX });
        }
        if key.len() > KEY_BYTES_MAX {
            return Err(Error::KeyTooLong {
                position,
                key_bytes: key.len(),
                max: KEY_BYTES_MAX,
            });
        }
        if position > 0 && cmp_concat(&[&self.prefix, &self.previous_rest], key).is_ge() {
            return Err(Error::NotSorted { position });
        }
        let Some(rest) = key.strip_prefix(self.prefix.as_slice()) else {
            return Err(Error::KeyOutsidePrefix {
                position,
                prefix_bytes: self.prefix.len(),
            });
        };
        let x = project(rest);

        let page_start = position.is_multiple_of(u64::from(self.rows_per_page));
        if page_start && position > 0 && x == self.previous_x {
            // The boundary splits keys of one projection: keep the shortest separator.
            let separator = shortest_separator(&self.previous_rest, rest);
            self.ties.check_room(separator.len())?;
            let page = position / u64::from(self.rows_per_page);
            self.ties.push(page as u32, x, separator);
        }
        if page_start {
            self.fences.push(x);
        }
        if position == 0 || x != self.previous_x {
            // The model targets the first rank of each projection.
            for candidate in &mut self.candidates {
                candidate.add(x, position);
            }
        }
        self.previous_rest.clear();
        self.previous_rest.extend_from_slice(rest);
        self.previous_x = x;
        self.n_keys += 1;
        Ok(())
    }

    /// Closes the last segments, chooses the error bound, and fits the upper levels.
    pub fn finish(mut self) -> Result<LearnedIndex, Error> {
        let segments_max = (self.n_keys / FINER_EPSILON_KEYS_PER_SEGMENT_MIN).max(1) as usize;
        let mut chosen = None;
        for (i, mut candidate) in std::mem::take(&mut self.candidates).into_iter().enumerate() {
            candidate.level.extend(candidate.pla.segment());
            if i == 0 || candidate.level.len() <= segments_max {
                chosen = Some(candidate);
            }
        }
        let Some(chosen) = chosen else {
            return Err(Error::Internal("no candidate error bound".to_owned()));
        };
        let mut levels = Vec::new();
        if self.n_keys > 0 {
            levels.push(chosen.level);
            while let Some(below) = levels.last().filter(|level| level.len() > 1) {
                if levels.len() >= LEVELS_MAX {
                    return Err(Error::Internal(format!("more than {LEVELS_MAX} levels")));
                }
                let points = below
                    .first_x
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (x, i as u64));
                let mut level = Level::default();
                level.extend(pla::fit(points, u64::from(fit_epsilon(EPSILON_RECURSIVE))));
                if level.len() >= below.len() {
                    return Err(Error::Internal(format!(
                        "a level of {} segments did not shrink",
                        below.len()
                    )));
                }
                levels.push(level);
            }
        }
        for level in &mut levels {
            level.shrink_to_fit();
        }
        self.fences.shrink_to_fit();
        Ok(LearnedIndex {
            n_keys: self.n_keys,
            rows_per_page: self.rows_per_page,
            epsilon: chosen.epsilon,
            first_x: self.fences.first().copied().unwrap_or(0),
            last_x: if self.n_keys > 0 { self.previous_x } else { 0 },
            prefix: self.prefix,
            levels,
            fences: self.fences,
            ties: self.ties.finish(),
        })
    }
}

impl Level {
    fn extend(&mut self, segments: impl IntoIterator<Item = pla::Segment>) {
        for segment in segments {
            self.push(segment);
        }
    }
}

/// Levels are fitted one rank inside their bound; the rank covers the `f64` rounding of the
/// line and of its prediction (see `pla::Pla::segment`).
fn fit_epsilon(epsilon: u32) -> u32 {
    epsilon.saturating_sub(1)
}

pub(crate) fn build<K: AsRef<[u8]>>(keys: &[K], rows_per_page: u32) -> Result<LearnedIndex, Error> {
    let prefix = match (keys.first(), keys.last()) {
        (Some(first), Some(last)) => common_prefix(first.as_ref(), last.as_ref()),
        _ => &[],
    };
    let prefix_bytes = prefix.len().min(KEY_BYTES_MAX);
    let mut builder = LearnedIndexBuilder::new(rows_per_page, &prefix[..prefix_bytes])?;
    for key in keys {
        builder.push(key.as_ref()).map_err(|error| match error {
            // With the prefix of the first and the last key, a key without it means that the
            // keys are out of order, maybe further on: name the first pair that is.
            Error::KeyOutsidePrefix { position, .. } => {
                let unsorted = keys.windows(2).position(|w| w[0].as_ref() >= w[1].as_ref());
                Error::NotSorted {
                    position: unsorted.map_or(position, |i| i as u64 + 1),
                }
            }
            other => other,
        })?;
    }
    let index = builder.finish()?;
    index
        .check(keys)
        .map_err(|error| Error::Internal(format!("a fresh index fails its check: {error}")))?;
    Ok(index)
}

impl LearnedIndex {
    /// Checks the index against the keys it was built over, in one pass: the key count, every
    /// page's fence, and the error bound of every level at every point it was fitted to.
    pub fn check<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<(), Error> {
        let mismatch = |what: String| Err(Error::Mismatch { what });
        if keys.len() as u64 != self.n_keys {
            return mismatch(format!(
                "{} keys, the index has {}",
                keys.len(),
                self.n_keys
            ));
        }
        let epsilon = self.epsilon() as usize;
        let rows_per_page = self.rows_per_page as usize;
        let level0 = match self.levels.first() {
            Some(level) => level,
            None if keys.is_empty() => return Ok(()),
            None => return mismatch("no levels".to_owned()),
        };
        let mut segment = 0usize;
        let mut previous_x = None;
        for (rank, key) in keys.iter().enumerate() {
            let Some(rest) = key.as_ref().strip_prefix(self.prefix.as_slice()) else {
                return mismatch(format!("key {rank} lacks the common prefix"));
            };
            let x = project(rest);
            if rank % rows_per_page == 0 && self.fences.get(rank / rows_per_page) != Some(&x) {
                return mismatch(format!("page {} has the wrong fence", rank / rows_per_page));
            }
            if previous_x == Some(x) {
                continue;
            }
            previous_x = Some(x);
            let first_rank = rank;
            while level0
                .first_x
                .get(segment + 1)
                .is_some_and(|&next| next <= x)
            {
                segment += 1;
            }
            let predicted = level0.predict(segment, x, keys.len());
            if predicted.abs_diff(first_rank) > epsilon {
                return mismatch(format!(
                    "key {rank}: predicted rank {predicted}, first rank of its projection \
                     {first_rank}, error bound {epsilon}"
                ));
            }
        }
        for l in 1..self.levels.len() {
            let (below, level) = (&self.levels[l - 1], &self.levels[l]);
            let mut segment = 0usize;
            for (position, &x) in below.first_x.iter().enumerate() {
                while level
                    .first_x
                    .get(segment + 1)
                    .is_some_and(|&next| next <= x)
                {
                    segment += 1;
                }
                let predicted = level.predict(segment, x, below.len());
                if predicted.abs_diff(position) > EPSILON_RECURSIVE as usize {
                    return mismatch(format!(
                        "level {l}: predicted {predicted} for segment {position} of the level \
                         below, error bound {EPSILON_RECURSIVE}"
                    ));
                }
            }
        }
        Ok(())
    }
}
