//! Helpers shared by the crate's tests: a seeded random generator, unique temp folders,
//! random transaction histories and the naive replay model they are checked against.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ids::Lsn;
use wal::{Op, Transaction};

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A new, empty folder under the system temp folder, unique to this call.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let unique = format!(
        "omendb-pageserver-{name}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path = std::env::temp_dir().join(unique);
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// `n` transactions over tables 0..4 and keys of up to two letters from `a..=c`, with
/// strictly increasing commit LSNs.
pub fn random_history(rng: &mut Rng, n: usize) -> Vec<(Lsn, Transaction)> {
    let mut lsn = Lsn(0);
    let mut history = Vec::with_capacity(n);
    for xid in 0..n as u64 {
        let mut ops = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let table = rng.below(4) as u32;
            let key_len = rng.below(3) as usize;
            let key = Bytes::from(
                (0..key_len)
                    .map(|_| b'a' + rng.below(3) as u8)
                    .collect::<Vec<u8>>(),
            );
            ops.push(match rng.below(30) {
                0 => Op::DropTable { table },
                1..=6 => Op::Delete { table, key },
                _ => Op::Put {
                    table,
                    key,
                    value: Bytes::from(format!("value {xid} {}", rng.below(1000))),
                },
            });
        }
        lsn = lsn.add(1 + rng.below(100));
        history.push((
            lsn,
            Transaction {
                xid,
                commit_time_us: 0,
                ops,
            },
        ));
    }
    history
}

/// Runs a future to completion on a fresh current-thread runtime (for tests of async code
/// that does no I/O of its own).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a test runtime")
        .block_on(future)
}

/// The naive model of a timeline: replays every transaction with commit LSN <= `lsn` from
/// scratch (a dropped table loses its rows and ignores later operations).
pub fn replay(
    history: &[(Lsn, Transaction)],
    lsn: Lsn,
) -> std::collections::BTreeMap<(u32, Bytes), Bytes> {
    let mut rows = std::collections::BTreeMap::new();
    let mut dropped = std::collections::BTreeSet::new();
    for (_, txn) in history
        .iter()
        .take_while(|(commit_lsn, _)| *commit_lsn <= lsn)
    {
        for op in &txn.ops {
            match op {
                Op::Put { table, .. } | Op::Delete { table, .. } if dropped.contains(table) => {}
                Op::Put { table, key, value } => {
                    rows.insert((*table, key.clone()), value.clone());
                }
                Op::Delete { table, key } => {
                    rows.remove(&(*table, key.clone()));
                }
                Op::DropTable { table } => {
                    dropped.insert(*table);
                    rows.retain(|(row_table, _), _| row_table != table);
                }
            }
        }
    }
    rows
}

/// The rows of `table` with `start <= key < end` (unbounded where `None`) in a replayed state.
pub fn model_range(
    expected: &std::collections::BTreeMap<(u32, Bytes), Bytes>,
    table: u32,
    start: Option<&Bytes>,
    end: Option<&Bytes>,
) -> Vec<(Bytes, Bytes)> {
    expected
        .iter()
        .filter(|((row_table, key), _)| {
            *row_table == table
                && start.is_none_or(|start| key >= start)
                && end.is_none_or(|end| key < end)
        })
        .map(|((_, key), value)| (key.clone(), value.clone()))
        .collect()
}
