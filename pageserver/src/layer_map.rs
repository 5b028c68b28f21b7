//! The layer map: which layer files hold what part of a timeline's key space over which LSNs,
//! and which of them a read of a key (or a key range) at LSN X has to visit.
//!
//! ```text
//!   LSN ▲
//!       │   ┌──────────── delta (k0..k9, 300..400] ────────────┐   newest first
//!       │   ├──── delta (k0..k4, 200..300] ───┬─ delta (k5..k9, 200..300] ─┤
//!       │   ╞════ image k0..k4 @ 200 ═════════╡                            │
//!       │   ├──────────── delta (k0..k9, 100..200] ────────────┘
//!       └──────────────────────────────────────────────────────▶ key
//!   read k2 @ 350: delta(300..400], delta(200..300] k0..k4, image@200 k0..k4; stop.
//!   read k7 @ 350: delta(300..400], delta(200..300] k5..k9, delta(100..200]; no image: from empty.
//! ```
//!
//! Keys are the timeline's key space: the table id (4 bytes, big-endian) followed by the row
//! key, so byte order is (table, key) order and one table is the range
//! `[table, table + 1)` ([`KeyRange::table`]).
//!
//! A **delta** layer holds every change to its key range with commit LSN in
//! `(start_lsn, end_lsn]`; an **image** layer holds the whole state of its key range as of
//! `lsn` (every commit at or below it). A read of `key` at `lsn` needs the newest image at or
//! below `lsn` that covers the key (if any), then every covering delta whose range reaches
//! above that image and starts below `lsn`, applied oldest first. The map does not check
//! that its layers leave no gap; whoever adds layers keeps that (flush and compaction write
//! layers that continue exactly where the covered ones end).
//!
//! Pure data structure: no I/O. Lookups scan the layers (a timeline has hundreds at most
//! between compactions); an interval index can replace the scan behind the same interface.

use std::collections::BTreeMap;

use bytes::Bytes;
use ids::Lsn;

/// A half-open range of keys `[start, end)`; `end == None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyRange {
    pub start: Bytes,
    pub end: Option<Bytes>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Bytes::new(),
            end: None,
        }
    }

    /// Every key of table `table`.
    pub fn table(table: u32) -> KeyRange {
        KeyRange {
            start: Bytes::copy_from_slice(&table.to_be_bytes()),
            end: table
                .checked_add(1)
                .map(|next| Bytes::copy_from_slice(&next.to_be_bytes())),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && self.end.as_ref().is_none_or(|end| key < &end[..])
    }

    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let starts_before_other_ends = other.end.as_ref().is_none_or(|end| self.start < *end);
        let other_starts_before_end = self.end.as_ref().is_none_or(|end| other.start < *end);
        starts_before_other_ends && other_starts_before_end
    }

    fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|end| *end <= self.start)
    }
}

/// The key of `key` in table `table`, in the timeline's key space.
pub fn timeline_key(table: u32, key: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(4 + key.len());
    out.extend_from_slice(&table.to_be_bytes());
    out.extend_from_slice(key);
    Bytes::from(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerLsns {
    /// Changes with commit LSN in `(start, end]`.
    Delta { start: Lsn, end: Lsn },
    /// The whole state as of this LSN.
    Image { lsn: Lsn },
}

/// A layer as the map knows it; `id` is the caller's name for it (say, its file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo<Id> {
    pub id: Id,
    pub keys: KeyRange,
    pub lsns: LayerLsns,
}

/// What to read for one key range at one LSN: the image to start from (if any) and the
/// deltas to apply on top of it, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan<Id> {
    pub image: Option<Id>,
    /// Deltas ordered by LSN range, oldest first; they may also hold changes above the read
    /// LSN, which the reader skips.
    pub deltas: Vec<Id>,
}

#[derive(Debug, Clone)]
pub struct LayerMap<Id> {
    layers: BTreeMap<Id, LayerInfo<Id>>,
}

impl<Id> Default for LayerMap<Id> {
    fn default() -> Self {
        LayerMap {
            layers: BTreeMap::new(),
        }
    }
}

impl<Id: Ord + Clone> LayerMap<Id> {
    pub fn new() -> LayerMap<Id> {
        LayerMap::default()
    }

    /// Adds a layer (replacing one with the same id). Empty key or LSN ranges are ignored.
    pub fn insert(&mut self, layer: LayerInfo<Id>) {
        let empty_lsns = matches!(layer.lsns, LayerLsns::Delta { start, end } if end <= start);
        if layer.keys.is_empty() || empty_lsns {
            return;
        }
        self.layers.insert(layer.id.clone(), layer);
    }

    pub fn remove(&mut self, id: &Id) -> Option<LayerInfo<Id>> {
        self.layers.remove(id)
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &LayerInfo<Id>> {
        self.layers.values()
    }

    /// The layers that hold `key` as of `lsn`.
    pub fn search(&self, key: &[u8], lsn: Lsn) -> ReadPlan<Id> {
        self.plan(lsn, |keys| keys.contains(key))
    }

    /// [`LayerMap::search`] for every key in `range`: the range cut into pieces that share a
    /// plan, in key order. Pieces no layer covers have an empty plan.
    pub fn range_search(&self, range: &KeyRange, lsn: Lsn) -> Vec<(KeyRange, ReadPlan<Id>)> {
        if range.is_empty() {
            return Vec::new();
        }
        // Every layer boundary inside the range cuts it; within a piece, every layer either
        // covers all of it or none of it.
        let mut cuts: Vec<Bytes> = vec![range.start.clone()];
        for layer in self.layers.values().filter(|l| l.keys.overlaps(range)) {
            for bound in [Some(&layer.keys.start), layer.keys.end.as_ref()]
                .into_iter()
                .flatten()
            {
                if range.contains(bound) {
                    cuts.push(bound.clone());
                }
            }
        }
        cuts.sort();
        cuts.dedup();
        let mut pieces: Vec<(KeyRange, ReadPlan<Id>)> = Vec::new();
        for (i, start) in cuts.iter().enumerate() {
            let end = cuts.get(i + 1).cloned().or_else(|| range.end.clone());
            let piece = KeyRange {
                start: start.clone(),
                end,
            };
            let plan = self.plan(lsn, |keys| keys.contains(&piece.start));
            match pieces.last_mut() {
                // Neighbours with the same plan merge into one piece.
                Some((previous, previous_plan)) if *previous_plan == plan => {
                    previous.end = piece.end;
                }
                _ => pieces.push((piece, plan)),
            }
        }
        pieces
    }

    /// The plan at `lsn` over the layers whose key range `covers` accepts.
    fn plan(&self, lsn: Lsn, covers: impl Fn(&KeyRange) -> bool) -> ReadPlan<Id> {
        let covering: Vec<&LayerInfo<Id>> =
            self.layers.values().filter(|l| covers(&l.keys)).collect();
        let image = covering
            .iter()
            .filter_map(|l| match l.lsns {
                LayerLsns::Image { lsn: image_lsn } if image_lsn <= lsn => Some((image_lsn, *l)),
                _ => None,
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        let floor = image.map(|(image_lsn, _)| image_lsn);
        let mut deltas: Vec<(Lsn, Lsn, &Id)> = covering
            .iter()
            .filter_map(|l| match l.lsns {
                LayerLsns::Delta { start, end }
                    if start < lsn && floor.is_none_or(|floor| end > floor) =>
                {
                    Some((start, end, &l.id))
                }
                _ => None,
            })
            .collect();
        deltas.sort();
        ReadPlan {
            image: image.map(|(_, l)| l.id.clone()),
            deltas: deltas.into_iter().map(|(_, _, id)| id.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Rng;

    fn key(table: u32, k: u8) -> Bytes {
        timeline_key(table, &[k])
    }

    #[test]
    fn key_ranges() {
        let t1 = KeyRange::table(1);
        assert!(t1.contains(&key(1, 0)) && t1.contains(&key(1, 255)));
        assert!(!t1.contains(&key(0, 255)) && !t1.contains(&key(2, 0)));
        assert!(KeyRange::table(u32::MAX).contains(&timeline_key(u32::MAX, b"zz")));
        assert!(t1.overlaps(&KeyRange::all()) && !t1.overlaps(&KeyRange::table(2)));
        assert!(KeyRange::all().contains(b""));
    }

    #[test]
    fn the_picture_in_the_module_docs() {
        let (k0, k5) = (key(1, 0), key(1, 5));
        let all = KeyRange {
            start: k0.clone(),
            end: None,
        };
        let low = KeyRange {
            start: k0.clone(),
            end: Some(k5.clone()),
        };
        let high = KeyRange {
            start: k5.clone(),
            end: None,
        };
        let mut map = LayerMap::new();
        let delta = |id, keys: &KeyRange, start, end| LayerInfo {
            id,
            keys: keys.clone(),
            lsns: LayerLsns::Delta {
                start: Lsn(start),
                end: Lsn(end),
            },
        };
        map.insert(delta("d100", &all, 100, 200));
        map.insert(delta("d200-low", &low, 200, 300));
        map.insert(delta("d200-high", &high, 200, 300));
        map.insert(delta("d300", &all, 300, 400));
        map.insert(LayerInfo {
            id: "i200",
            keys: low.clone(),
            lsns: LayerLsns::Image { lsn: Lsn(200) },
        });
        assert_eq!(
            map.search(&key(1, 2), Lsn(350)),
            ReadPlan {
                image: Some("i200"),
                deltas: vec!["d200-low", "d300"]
            }
        );
        assert_eq!(
            map.search(&key(1, 7), Lsn(350)),
            ReadPlan {
                image: None,
                deltas: vec!["d100", "d200-high", "d300"]
            }
        );
        // At the image's own LSN the image is enough; below it, the deltas under it.
        assert_eq!(
            map.search(&key(1, 2), Lsn(200)),
            ReadPlan {
                image: Some("i200"),
                deltas: vec![]
            }
        );
        assert_eq!(
            map.search(&key(1, 2), Lsn(150)),
            ReadPlan {
                image: None,
                deltas: vec!["d100"]
            }
        );
        let pieces = map.range_search(&KeyRange::table(1), Lsn(350));
        assert_eq!(pieces.len(), 3, "{pieces:?}");
        assert_eq!(
            pieces[0].1,
            ReadPlan {
                image: None,
                deltas: vec![]
            }
        );
        assert_eq!(pieces[1].0, low);
        assert_eq!(pieces[2].0.start, k5);
    }

    /// A random history of puts and deletes, cut into delta layers (each LSN slice split
    /// into random key ranges) plus image layers of random key ranges at random LSNs: every
    /// read of a key or a key range at a random LSN, rebuilt from the layers the map names,
    /// equals a replay of the history up to that LSN.
    #[test]
    fn reads_through_the_map_match_a_replay_of_the_history() {
        type Change = (Lsn, Bytes, Option<u64>);
        for seed in 0..200u64 {
            let mut rng = Rng::new(seed);
            let n_keys = 1 + rng.below(12) as u8;
            let keys: Vec<Bytes> = (0..n_keys).map(|k| key(1 + (k % 3) as u32, k)).collect();
            // The history: one change per commit LSN 1, 2, ...
            let n_changes = rng.below(80);
            let history: Vec<Change> = (1..=n_changes)
                .map(|lsn| {
                    let k = keys[rng.below(keys.len() as u64) as usize].clone();
                    let value = (rng.below(4) != 0).then(|| rng.next_u64());
                    (Lsn(lsn), k, value)
                })
                .collect();
            let replay = |k: &[u8], lsn: Lsn, from: Option<u64>, after: Lsn| {
                history
                    .iter()
                    .filter(|(l, hk, _)| *l > after && *l <= lsn && &hk[..] == k)
                    .fold(from, |_, (_, _, v)| *v)
            };
            // Random key cut points shared by every slice keep the test's bookkeeping simple;
            // the slices themselves get different subsets of them.
            let mut cut_keys: Vec<Bytes> = keys.clone();
            cut_keys.sort();
            cut_keys.dedup();
            let random_ranges = |rng: &mut Rng| -> Vec<KeyRange> {
                let mut bounds: Vec<Bytes> = cut_keys
                    .iter()
                    .filter(|_| rng.below(3) == 0)
                    .cloned()
                    .collect();
                bounds.insert(0, Bytes::new());
                (0..bounds.len())
                    .map(|i| KeyRange {
                        start: bounds[i].clone(),
                        end: bounds.get(i + 1).cloned(),
                    })
                    .collect()
            };
            let mut map: LayerMap<u32> = LayerMap::new();
            let mut contents: BTreeMap<u32, (KeyRange, LayerLsns)> = BTreeMap::new();
            let mut next_id = 0u32;
            let mut add = |map: &mut LayerMap<u32>, keys: KeyRange, lsns: LayerLsns| {
                next_id += 1;
                contents.insert(next_id, (keys.clone(), lsns));
                map.insert(LayerInfo {
                    id: next_id,
                    keys,
                    lsns,
                });
            };
            let mut start = 0u64;
            while start < n_changes {
                let end = (start + 1 + rng.below(20)).min(n_changes);
                for keys in random_ranges(&mut rng) {
                    add(
                        &mut map,
                        keys,
                        LayerLsns::Delta {
                            start: Lsn(start),
                            end: Lsn(end),
                        },
                    );
                }
                start = end;
            }
            for _ in 0..rng.below(4) {
                let lsn = Lsn(rng.below(n_changes + 1));
                for keys in random_ranges(&mut rng) {
                    if rng.below(2) == 0 {
                        add(&mut map, keys, LayerLsns::Image { lsn });
                    }
                }
            }
            // Reads through the map: start from the image's state, apply the deltas' changes.
            let read = |plan: &ReadPlan<u32>, k: &[u8], lsn: Lsn| {
                let (mut value, mut after) = (None, Lsn::ZERO);
                if let Some(image) = plan.image {
                    let (range, LayerLsns::Image { lsn: image_lsn }) = &contents[&image] else {
                        panic!("not an image");
                    };
                    assert!(range.contains(k));
                    value = replay(k, *image_lsn, None, Lsn::ZERO);
                    after = *image_lsn;
                }
                let mut previous_end = after;
                for delta in &plan.deltas {
                    let (range, LayerLsns::Delta { start, end }) = &contents[delta] else {
                        panic!("not a delta");
                    };
                    assert!(range.contains(k));
                    assert!(*start <= previous_end.max(after), "a gap below {start}");
                    value = replay(k, lsn.min(*end), value, (*start).max(after));
                    previous_end = *end;
                }
                value
            };
            for _ in 0..50 {
                let lsn = Lsn(rng.below(n_changes + 2));
                let k = &keys[rng.below(keys.len() as u64) as usize];
                let plan = map.search(k, lsn);
                assert_eq!(
                    read(&plan, k, lsn),
                    replay(k, lsn, None, Lsn::ZERO),
                    "seed {seed}: key {k:?} at {lsn}, plan {plan:?}"
                );
                let table = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
                for (piece, plan) in map.range_search(&KeyRange::table(table), lsn) {
                    for k in keys.iter().filter(|k| piece.contains(k)) {
                        assert_eq!(
                            read(&plan, k, lsn),
                            replay(k, lsn, None, Lsn::ZERO),
                            "seed {seed}: range read of {k:?} at {lsn}"
                        );
                    }
                }
            }
        }
    }
}
