//! The versioned key-value state of one timeline's recent WAL, in memory: the timeline's
//! in-memory layer (see `timeline`), which is frozen and flushed as a delta layer.
//!
//! For every row key `(table, key)` the store keeps the list of its versions, `(commit LSN,
//! value)` with `None` for a deletion, in LSN order; for every dropped table, the LSN of its
//! `DropTable`. A read at LSN `X` sees exactly the transactions whose commit LSN is `<= X`:
//! the newest version at or below `X`, and nothing of a table dropped at or below `X`.
//!
//! Invariants (asserted): transactions are applied with strictly increasing commit LSNs, so
//! every version list is strictly increasing too. Within one transaction a later operation
//! on the same key replaces the earlier one. A dropped table's id is never used again (the
//! WAL format promises it); operations on it at or after its drop are ignored and counted.
//!
//! Pure: no I/O, no locking, no clock.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use ids::Lsn;
use wal::{Op, Transaction};

/// One version of a row: committed at the LSN; `None` is a deletion.
type Version = (Lsn, Option<Bytes>);

#[derive(Debug, Default)]
pub struct Store {
    rows: BTreeMap<(u32, Bytes), Vec<Version>>,
    /// Table id → LSN of its `DropTable`.
    dropped: HashMap<u32, Lsn>,
    /// Commit LSN of the last applied transaction.
    last_lsn: Lsn,
    n_versions: usize,
    n_ignored_ops: u64,
    /// Keys plus values plus a fixed overhead per version: what a flush will write.
    n_bytes: usize,
}

/// Bytes counted per version on top of its key and value (LSN, lengths, flags).
const VERSION_OVERHEAD_BYTES: usize = 24;

/// How much one [`Store::scan`] call may return and look at.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    pub rows_max: usize,
    /// Keys plus values; the first row is returned even if it alone is larger.
    pub bytes_max: usize,
    pub keys_examined_max: usize,
}

/// One step of a scan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Visible rows in key order.
    pub rows: Vec<(Bytes, Bytes)>,
    /// `Some(key)`: a limit was reached and more keys of the range remain after `key`;
    /// continue with `after_key = key`. `None`: the range is exhausted.
    pub resume_after: Option<Bytes>,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Commit LSN of the last applied transaction (`Lsn::ZERO` if none).
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// Number of row versions held (for metrics and tests).
    pub fn n_versions(&self) -> usize {
        self.n_versions
    }

    /// About how many bytes a delta layer of this store's versions takes.
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.n_versions == 0 && self.dropped.is_empty()
    }

    /// Tables dropped by the transactions applied here, with their drop LSNs.
    pub fn dropped_tables(&self) -> Vec<(u32, Lsn)> {
        let mut dropped: Vec<(u32, Lsn)> = self.dropped.iter().map(|(t, l)| (*t, *l)).collect();
        dropped.sort();
        dropped
    }

    /// Every version held, as delta-layer entries sorted by (timeline key, LSN).
    pub fn delta_entries(&self) -> Vec<crate::delta_layer::DeltaEntry> {
        let mut entries = Vec::with_capacity(self.n_versions);
        for ((table, key), versions) in &self.rows {
            let timeline_key = crate::layer_map::timeline_key(*table, key);
            for (lsn, value) in versions {
                entries.push(crate::delta_layer::DeltaEntry {
                    key: timeline_key.clone(),
                    lsn: *lsn,
                    value: value.clone(),
                });
            }
        }
        entries
    }

    /// The newest version of `(table, key)` at or below `lsn` held here, `None` in the value
    /// for a deletion; `None` when this store holds no such version. Drops are not applied:
    /// the caller checks them for the whole timeline.
    pub fn newest_version(&self, table: u32, key: &[u8], lsn: Lsn) -> Option<(Lsn, Option<Bytes>)> {
        let versions = self.rows.get(&(table, Bytes::copy_from_slice(key)))?;
        let n_visible = versions.partition_point(|(version_lsn, _)| *version_lsn <= lsn);
        n_visible.checked_sub(1).map(|i| versions[i].clone())
    }

    /// For the keys of `table` after `lower` and before `end` (unbounded where `None`), in
    /// key order, the newest version at or below `lsn` (deletions included, keys with no such
    /// version left out). At most `keys_max` keys (at least one) are examined: the second
    /// value is `None` when the whole range was covered, or the last key examined when it
    /// stopped there (every key up to and including it was covered).
    pub fn newest_versions_in_range(
        &self,
        table: u32,
        lower: Bound<&[u8]>,
        end: Option<&[u8]>,
        lsn: Lsn,
        keys_max: usize,
    ) -> (Vec<(Bytes, Option<Bytes>)>, Option<Bytes>) {
        let lower = match lower {
            Bound::Included(key) => Bound::Included((table, Bytes::copy_from_slice(key))),
            Bound::Excluded(key) => Bound::Excluded((table, Bytes::copy_from_slice(key))),
            Bound::Unbounded => Bound::Included((table, Bytes::new())),
        };
        let mut out = Vec::new();
        for (n_examined, ((row_table, key), versions)) in
            self.rows.range((lower, Bound::Unbounded)).enumerate()
        {
            if *row_table != table || end.is_some_and(|end| key.as_ref() >= end) {
                break;
            }
            let n_visible = versions.partition_point(|(version_lsn, _)| *version_lsn <= lsn);
            if let Some(i) = n_visible.checked_sub(1) {
                out.push((key.clone(), versions[i].1.clone()));
            }
            if n_examined + 1 >= keys_max.max(1) {
                return (out, Some(key.clone()));
            }
        }
        (out, None)
    }

    /// Operations ignored because they touched a table after its drop.
    pub fn n_ignored_ops(&self) -> u64 {
        self.n_ignored_ops
    }

    /// Applies the transaction committed at `lsn`. Panics unless `lsn` is above every LSN
    /// applied so far: callers check this before (it is an invariant, not input validation).
    pub fn apply(&mut self, lsn: Lsn, txn: &Transaction) {
        assert!(
            lsn > self.last_lsn,
            "commit LSN {lsn} does not advance past {}",
            self.last_lsn
        );
        for op in &txn.ops {
            match op {
                Op::Put { table, key, value } => {
                    self.add_version(*table, key, lsn, Some(value.clone()))
                }
                Op::Delete { table, key } => self.add_version(*table, key, lsn, None),
                Op::DropTable { table } => {
                    // A second drop of the same id changes nothing: the first one already
                    // hid every row.
                    self.dropped.entry(*table).or_insert(lsn);
                }
            }
        }
        self.last_lsn = lsn;
    }

    fn add_version(&mut self, table: u32, key: &Bytes, lsn: Lsn, value: Option<Bytes>) {
        if self.dropped.contains_key(&table) {
            self.n_ignored_ops += 1;
            return;
        }
        let versions = self.rows.entry((table, key.clone())).or_default();
        let value_len = value.as_ref().map_or(0, Bytes::len);
        match versions.last_mut() {
            Some(last) if last.0 == lsn => {
                self.n_bytes -= last.1.as_ref().map_or(0, Bytes::len);
                self.n_bytes += value_len;
                last.1 = value;
            }
            Some(last) => {
                assert!(last.0 < lsn, "version at {} after one at {lsn}", last.0);
                versions.push((lsn, value));
                self.n_versions += 1;
                self.n_bytes += 4 + key.len() + value_len + VERSION_OVERHEAD_BYTES;
            }
            None => {
                versions.push((lsn, value));
                self.n_versions += 1;
                self.n_bytes += 4 + key.len() + value_len + VERSION_OVERHEAD_BYTES;
            }
        }
    }

    fn table_dropped_at(&self, table: u32, lsn: Lsn) -> bool {
        self.dropped
            .get(&table)
            .is_some_and(|dropped_lsn| *dropped_lsn <= lsn)
    }

    /// The value visible at `lsn` among `versions`.
    fn visible(versions: &[Version], lsn: Lsn) -> Option<&Bytes> {
        let n_visible = versions.partition_point(|(version_lsn, _)| *version_lsn <= lsn);
        match n_visible {
            0 => None,
            n => versions[n - 1].1.as_ref(),
        }
    }

    /// The row at `(table, key)` as of `lsn`.
    pub fn get(&self, table: u32, key: &[u8], lsn: Lsn) -> Option<Bytes> {
        if self.table_dropped_at(table, lsn) {
            return None;
        }
        let versions = self.rows.get(&(table, Bytes::copy_from_slice(key)))?;
        Store::visible(versions, lsn).cloned()
    }

    /// Rows of `table` with `start <= key < end` (unbounded where `None`) and `key >
    /// after_key`, visible at `lsn`, in key order, within `limits`. Any bounds are accepted,
    /// empty or inverted ranges included: they give no rows.
    pub fn scan(
        &self,
        table: u32,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        lsn: Lsn,
        after_key: Option<&[u8]>,
        limits: ScanLimits,
    ) -> ScanPage {
        let mut page = ScanPage::default();
        if self.table_dropped_at(table, lsn) {
            return page;
        }
        let start = start.unwrap_or(&[]);
        // Only a lower bound is given to `range`: it panics on inverted ranges, and the
        // upper bound is checked row by row anyway.
        let lower = match after_key {
            Some(after) if after >= start => {
                Bound::Excluded((table, Bytes::copy_from_slice(after)))
            }
            _ => Bound::Included((table, Bytes::copy_from_slice(start))),
        };
        // A step always makes progress, whatever the limits say.
        let rows_max = limits.rows_max.max(1);
        let keys_examined_max = limits.keys_examined_max.max(1);
        let mut n_bytes = 0usize;
        let mut last_done: Option<&Bytes> = None;
        let range = self.rows.range((lower, Bound::Unbounded));
        for (n_examined, ((row_table, key), versions)) in range.enumerate() {
            if *row_table != table || end.is_some_and(|end| key.as_ref() >= end) {
                break;
            }
            if page.rows.len() >= rows_max || n_examined >= keys_examined_max {
                page.resume_after = last_done.cloned();
                break;
            }
            if let Some(value) = Store::visible(versions, lsn) {
                let row_bytes = key.len() + value.len();
                if !page.rows.is_empty() && n_bytes + row_bytes > limits.bytes_max {
                    page.resume_after = last_done.cloned();
                    break;
                }
                n_bytes += row_bytes;
                page.rows.push((key.clone(), value.clone()));
            }
            last_done = Some(key);
        }
        debug_assert!(page.rows.windows(2).all(|pair| pair[0].0 < pair[1].0));
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{model_range, replay, Rng};

    const UNLIMITED: ScanLimits = ScanLimits {
        rows_max: usize::MAX,
        bytes_max: usize::MAX,
        keys_examined_max: usize::MAX,
    };

    fn put(table: u32, key: &str, value: &str) -> Op {
        Op::Put {
            table,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn scan_all(
        store: &Store,
        table: u32,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        lsn: Lsn,
        limits: ScanLimits,
    ) -> Vec<(Bytes, Bytes)> {
        let mut rows = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let page = store.scan(table, start, end, lsn, after.as_deref(), limits);
            assert!(page.rows.len() <= limits.rows_max.max(1));
            rows.extend(page.rows);
            match page.resume_after {
                Some(key) => after = Some(key),
                None => return rows,
            }
        }
    }

    #[test]
    fn versions_and_drop_table() {
        let mut store = Store::new();
        store.apply(
            Lsn(10),
            &Transaction {
                xid: 1,
                commit_time_us: 0,
                ops: vec![put(1, "a", "1"), put(1, "b", "1"), put(2, "x", "1")],
            },
        );
        store.apply(
            Lsn(20),
            &Transaction {
                xid: 2,
                commit_time_us: 0,
                ops: vec![
                    put(1, "a", "2"),
                    Op::Delete {
                        table: 1,
                        key: Bytes::from_static(b"b"),
                    },
                ],
            },
        );
        store.apply(
            Lsn(30),
            &Transaction {
                xid: 3,
                commit_time_us: 0,
                ops: vec![
                    put(2, "y", "1"),
                    Op::DropTable { table: 2 },
                    put(2, "z", "1"),
                ],
            },
        );
        store.apply(
            Lsn(40),
            &Transaction {
                xid: 4,
                commit_time_us: 0,
                ops: vec![put(1, "c", "1"), put(1, "c", "2")],
            },
        );

        assert_eq!(store.get(1, b"a", Lsn(9)), None);
        assert_eq!(store.get(1, b"a", Lsn(10)).unwrap(), "1");
        assert_eq!(store.get(1, b"a", Lsn(19)).unwrap(), "1");
        assert_eq!(store.get(1, b"a", Lsn(20)).unwrap(), "2");
        assert_eq!(store.get(1, b"b", Lsn(15)).unwrap(), "1");
        assert_eq!(store.get(1, b"b", Lsn(20)), None);
        assert_eq!(store.get(2, b"x", Lsn(29)).unwrap(), "1");
        assert_eq!(store.get(2, b"x", Lsn(30)), None);
        assert_eq!(store.get(2, b"y", Lsn(100)), None);
        assert_eq!(
            store.get(1, b"c", Lsn(40)).unwrap(),
            "2",
            "the later op of a transaction wins"
        );
        assert_eq!(
            store.n_ignored_ops(),
            1,
            "z came after the drop, in the same transaction"
        );
        assert_eq!(scan_all(&store, 2, None, None, Lsn(29), UNLIMITED).len(), 1);
        assert!(scan_all(&store, 2, None, None, Lsn(30), UNLIMITED).is_empty());
        let keys: Vec<Bytes> = scan_all(&store, 1, None, None, Lsn(40), UNLIMITED)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["a", "c"]);
        // Inverted and empty ranges give nothing and do not panic.
        assert!(scan_all(&store, 1, Some(b"z"), Some(b"a"), Lsn(40), UNLIMITED).is_empty());
        assert!(scan_all(&store, 1, Some(b"a"), Some(b"a"), Lsn(40), UNLIMITED).is_empty());
        assert!(
            store
                .scan(1, Some(b"c"), None, Lsn(40), Some(b"a"), UNLIMITED)
                .rows
                .len()
                == 1
        );
        assert!(store
            .scan(u32::MAX, None, None, Lsn(40), Some(b"zz"), UNLIMITED)
            .rows
            .is_empty());
    }

    #[test]
    #[should_panic(expected = "does not advance")]
    fn apply_rejects_non_increasing_lsn() {
        let mut store = Store::new();
        store.apply(
            Lsn(10),
            &Transaction {
                xid: 1,
                commit_time_us: 0,
                ops: vec![],
            },
        );
        store.apply(
            Lsn(10),
            &Transaction {
                xid: 2,
                commit_time_us: 0,
                ops: vec![],
            },
        );
    }

    fn random_key(rng: &mut Rng) -> Bytes {
        let len = rng.below(3) as usize;
        Bytes::from(
            (0..len)
                .map(|_| b'a' + rng.below(4) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    #[test]
    fn model_check_against_naive_replay() {
        for seed in 1..=20u64 {
            let mut rng = Rng::new(seed);
            let mut store = Store::new();
            let mut history = Vec::new();
            let mut lsn = Lsn(0);
            for xid in 0..60 {
                let mut ops = Vec::new();
                for _ in 0..rng.below(5) {
                    let table = rng.below(4) as u32;
                    ops.push(match rng.below(20) {
                        0 => Op::DropTable { table },
                        1..=5 => Op::Delete {
                            table,
                            key: random_key(&mut rng),
                        },
                        _ => Op::Put {
                            table,
                            key: random_key(&mut rng),
                            value: Bytes::from(vec![b'v'; rng.below(6) as usize]),
                        },
                    });
                }
                lsn = lsn.add(1 + rng.below(40));
                let txn = Transaction {
                    xid,
                    commit_time_us: 0,
                    ops,
                };
                store.apply(lsn, &txn);
                history.push((lsn, txn));
            }
            for _ in 0..80 {
                let read_lsn = Lsn(rng.below(lsn.0 + 10));
                let expected = replay(&history, read_lsn);
                for table in 0..5u32 {
                    for key in ["", "a", "b", "c", "d", "aa", "ab", "ba", "dd", "ddd"] {
                        let actual = store.get(table, key.as_bytes(), read_lsn);
                        let want = expected.get(&(table, Bytes::copy_from_slice(key.as_bytes())));
                        assert_eq!(
                            actual.as_ref(),
                            want,
                            "seed {seed} get {table}/{key} at {read_lsn}"
                        );
                    }
                    let start = (rng.below(3) > 0).then(|| random_key(&mut rng));
                    let end = (rng.below(3) > 0).then(|| random_key(&mut rng));
                    let want = model_range(&expected, table, start.as_ref(), end.as_ref());
                    let limits = ScanLimits {
                        rows_max: rng.below(4) as usize,
                        bytes_max: rng.below(12) as usize,
                        keys_examined_max: rng.below(4) as usize,
                    };
                    for limits in [UNLIMITED, limits] {
                        let actual = scan_all(
                            &store,
                            table,
                            start.as_deref(),
                            end.as_deref(),
                            read_lsn,
                            limits,
                        );
                        assert_eq!(
                            actual, want,
                            "seed {seed} scan {table} {start:?}..{end:?} at {read_lsn} {limits:?}"
                        );
                    }
                }
            }
        }
    }
}
