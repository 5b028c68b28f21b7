//! Random point lookups of present keys over n sorted 8-byte keys, through:
//!
//! - `learned_index`: `locate` (the model's prediction, then 3 fence comparisons pick the
//!   page) and a binary search of that page's 256 keys that starts with the model's window
//!   `[p − ε, p + ε]` on it (`search_page_near_by`), as an image layer would do it;
//! - `fences`: binary search over the first key of every page, then of the page (the index an
//!   image layer would have without a model);
//! - `btreemap`: `BTreeMap<u64, u32>::get` (key → row);
//! - `binary_search`: `slice::binary_search` over all n keys.
//!
//! Each in two modes: `lookup/…`, independent lookups (the CPU may overlap consecutive ones:
//! throughput, as the PGM-index and SOSD papers measure), and `lookup_dependent/…`, where the
//! next query depends on this one's answer (latency). Queries are 2^20 present keys drawn
//! uniformly, cycled through.
//!
//! Keys are uniform random u64, or "zipfian": running sums of gaps drawn from a power law
//! (exponent 1.3 over 1..2^32), mostly small gaps and now and then a huge one. The learned index
//! sees them as big-endian bytes; pages and the baselines hold them as `u64`.
//!
//! Sizes: `LEARNED_INDEX_BENCH_SIZES=1000000,10000000,100000000` (default `1000000`). 100M keys
//! take about 5 GB at peak (keys, a BTreeMap, its build buffer) and a few minutes to set up.
//! Before timing, every structure's answer is checked on 100,000 queries. Index sizes go to
//! stdout as `bytes/key` lines: the learned index's `size_bytes()`, the fences' array, and the
//! BTreeMap's heap bytes measured by a counting global allocator around its construction.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use learned_index::{search_page_near_by, LearnedIndex, ROWS_PER_PAGE_DEFAULT};

/// Counts live heap bytes, to measure what a structure allocates.
struct CountingAllocator;

static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Queries per structure, cycled through: enough that they do not fit in cache together with
/// their targets at 10M keys and up.
const QUERIES: usize = 1 << 20;
const CHECKED_QUERIES: usize = 100_000;

struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn uniform_keys(n: usize, rng: &mut SplitMix) -> Vec<u64> {
    let mut keys: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn zipfian_keys(n: usize, rng: &mut SplitMix) -> Vec<u64> {
    let (range, exponent) = (2f64.powi(32), 1.3f64);
    let a = 1.0 - exponent;
    let mut key = 0u64;
    (0..n)
        .map(|_| {
            let gap = ((range.powf(a) - 1.0) * rng.unit() + 1.0).powf(1.0 / a);
            key = key.saturating_add(gap as u64);
            key
        })
        .collect()
}

fn bench_sizes() -> Vec<usize> {
    let sizes = std::env::var("LEARNED_INDEX_BENCH_SIZES").unwrap_or_else(|_| "1000000".into());
    sizes
        .split(',')
        .map(|n| n.trim().replace('_', ""))
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse()
                .unwrap_or_else(|e| panic!("LEARNED_INDEX_BENCH_SIZES: {n:?}: {e}"))
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let rows_per_page = ROWS_PER_PAGE_DEFAULT as usize;
    for n in bench_sizes() {
        for distribution in ["uniform", "zipfian"] {
            let mut rng = SplitMix(n as u64 ^ 0xB0BA);
            let keys = match distribution {
                "uniform" => uniform_keys(n, &mut rng),
                _ => zipfian_keys(n, &mut rng),
            };
            let n_keys = keys.len();

            let index = {
                let key_bytes: Vec<[u8; 8]> = keys.iter().map(|k| k.to_be_bytes()).collect();
                LearnedIndex::build(&key_bytes, ROWS_PER_PAGE_DEFAULT).expect("build")
            };
            let fences: Vec<u64> = keys.iter().step_by(rows_per_page).copied().collect();
            let before = ALLOCATED_BYTES.load(Ordering::Relaxed);
            let map: BTreeMap<u64, u32> = keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, i as u32))
                .collect();
            let map_bytes = ALLOCATED_BYTES
                .load(Ordering::Relaxed)
                .saturating_sub(before);

            let queries: Vec<u64> = (0..QUERIES)
                .map(|_| keys[(rng.next_u64() % n_keys as u64) as usize])
                .collect();

            let learned = |q: u64| -> Option<usize> {
                let location = index.locate(&q.to_be_bytes())?;
                let rows = index.page_rows(location.page);
                let page = &keys[rows.clone()];
                search_page_near_by(page.len(), location.slots, |slot| page[slot].cmp(&q))
                    .map(|slot| rows.start + slot)
            };
            let fenced = |q: u64| -> Option<usize> {
                let page = fences.partition_point(|&f| f <= q).saturating_sub(1);
                let start = page * rows_per_page;
                let end = (start + rows_per_page).min(n_keys);
                keys[start..end]
                    .binary_search(&q)
                    .ok()
                    .map(|slot| start + slot)
            };
            for &q in &queries[..CHECKED_QUERIES] {
                let expected = keys.binary_search(&q).ok();
                assert!(expected.is_some());
                assert_eq!(learned(q), expected, "learned index, key {q}");
                assert_eq!(fenced(q), expected, "fences, key {q}");
                assert_eq!(
                    map.get(&q).map(|&r| r as usize),
                    expected,
                    "BTreeMap, key {q}"
                );
            }

            println!(
                "bytes/key {distribution} n={n_keys}: learned_index {:.4} ({} segments, {} levels, \
                 epsilon {}), fences {:.4}, btreemap {:.2}, binary_search 0 (keys only: 8)",
                index.size_bytes() as f64 / n_keys as f64,
                index.n_segments(),
                index.n_levels(),
                index.epsilon(),
                (fences.len() * 8) as f64 / n_keys as f64,
                map_bytes as f64 / n_keys as f64,
            );

            let binary_search = |q: u64| keys.binary_search(&q).ok();
            let btreemap = |q: u64| map.get(&q).map(|&row| row as usize);
            for mode in [Mode::Independent, Mode::Dependent] {
                let mut group = c.benchmark_group(format!("{}/{distribution}/{n}", mode.name()));
                group.throughput(Throughput::Elements(1));
                bench(&mut group, mode, "learned_index", &queries, learned);
                bench(&mut group, mode, "fences", &queries, fenced);
                bench(&mut group, mode, "btreemap", &queries, btreemap);
                bench(&mut group, mode, "binary_search", &queries, binary_search);
                group.finish();
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    /// Each lookup's key is known in advance: the CPU may overlap the memory accesses of
    /// consecutive lookups (throughput, as the PGM-index and SOSD papers measure).
    Independent,
    /// The next key's position in the query list depends on this lookup's answer, so the
    /// lookups run one after another (latency, as a query that needs the row sees it).
    Dependent,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Independent => "lookup",
            Mode::Dependent => "lookup_dependent",
        }
    }
}

fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    mode: Mode,
    name: &str,
    queries: &[u64],
    lookup: impl Fn(u64) -> Option<usize>,
) {
    let mut next = 0usize;
    group.bench_function(name, |b| match mode {
        Mode::Independent => b.iter(|| {
            next = next.wrapping_add(1);
            black_box(lookup(queries[next % QUERIES]))
        }),
        Mode::Dependent => b.iter(|| {
            let row = lookup(queries[next % QUERIES]).unwrap_or(0);
            next = next.wrapping_add(1 + (row & 1));
            row
        }),
    });
}

criterion_group! {
    name = benches;
    // Short runs: 16 benchmarks per size; pass criterion's flags to change them.
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = lookups
}
criterion_main!(benches);
