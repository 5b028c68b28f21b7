//! Seeded key sets for the property tests: a small deterministic generator (SplitMix64) and the
//! distributions the index must handle. Every set is sorted and free of duplicates.

#![allow(dead_code)]

/// SplitMix64: tiny, fast, and the same sequence for the same seed on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// Uniform random 8-byte keys.
    Uniform,
    /// 8-byte keys whose gaps follow a Zipf-like power law over 1..2^32 (exponent 1.1–1.6):
    /// mostly small gaps, now and then a huge one.
    Zipfian,
    /// Runs of consecutive integers, and text keys `user:00000123`.
    Sequential,
    /// Dense clusters of 1,000 to 50,000 consecutive integers at far-apart random centres, as
    /// when ids are handed out in blocks.
    Clustered,
    /// Composite keys (tenant, id), 8 bytes each, with a handful of tenants: long runs of keys
    /// that share their first 8 bytes, so that page boundaries fall inside them.
    Composite,
    /// Adversarial mixtures: small clusters (1 to 500 keys) at far-apart centres, few 8-byte
    /// heads with many short tails, keys that differ only by trailing zero bytes, varying
    /// lengths (0 to 20 bytes), and a 10-byte shared prefix on some.
    Hard,
}

pub const DISTRIBUTIONS: [Distribution; 6] = [
    Distribution::Uniform,
    Distribution::Zipfian,
    Distribution::Sequential,
    Distribution::Clustered,
    Distribution::Composite,
    Distribution::Hard,
];

/// About `n` keys (exactly `n` unless the distribution runs out of distinct keys) of `distribution`.
pub fn keys(distribution: Distribution, n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let mut keys = Vec::with_capacity(n);
    match distribution {
        Distribution::Uniform => fill(&mut keys, n, || rng.next_u64().to_be_bytes().to_vec()),
        Distribution::Zipfian => {
            let exponent = 1.1 + rng.unit() * 0.5;
            let mut key = rng.below(1 << 40);
            for _ in 0..n {
                keys.push(key.to_be_bytes().to_vec());
                key = key.saturating_add(zipf(&mut rng, exponent));
            }
        }
        Distribution::Sequential => {
            if rng.below(2) == 0 {
                let step = *rng.pick(&[1u64, 2, 7, 1000]);
                let start = rng.next_u64() >> rng.below(64);
                keys.extend(
                    (0..n as u64).map(|i| start.wrapping_add(i * step).to_be_bytes().to_vec()),
                );
            } else {
                let start = rng.below(1 << 20);
                keys.extend((0..n as u64).map(|i| format!("user:{:08}", start + i).into_bytes()));
            }
        }
        Distribution::Clustered => {
            while keys.len() < n {
                let centre = rng.next_u64();
                let run = 1_000 + rng.below(49_000);
                let step = *rng.pick(&[1u64, 1, 2, 10]);
                for i in 0..run.min((n - keys.len()) as u64) {
                    keys.push(centre.wrapping_add(i * step).to_be_bytes().to_vec());
                }
            }
        }
        Distribution::Composite => {
            let tenants: Vec<u64> = (0..1 + rng.below(8)).map(|_| rng.next_u64()).collect();
            let mut next_id = vec![0u64; tenants.len()];
            for _ in 0..n {
                let t = rng.below(tenants.len() as u64) as usize;
                next_id[t] += 1 + rng.below(3);
                keys.push([tenants[t].to_be_bytes(), next_id[t].to_be_bytes()].concat());
            }
        }
        Distribution::Hard => {
            let mut parts = Vec::new();
            let n_parts = 1 + rng.below(4) as usize;
            for _ in 0..n_parts {
                let share = n / n_parts;
                parts.push(match rng.below(4) {
                    0 => clusters(&mut rng, share),
                    1 => shared_prefixes(&mut rng, share),
                    2 => small_alphabet(&mut rng, share),
                    _ => {
                        let mut prefixed = shared_prefixes(&mut rng, share);
                        for key in &mut prefixed {
                            key.splice(0..0, b"tenant/42/".iter().copied());
                        }
                        prefixed
                    }
                });
            }
            keys = parts.concat();
        }
    }
    keys.sort();
    keys.dedup();
    keys.truncate(n);
    keys
}

/// Calls `next` until `keys` holds `n` distinct keys or it stops finding new ones.
fn fill(keys: &mut Vec<Vec<u8>>, n: usize, mut next: impl FnMut() -> Vec<u8>) {
    for _ in 0..8 {
        while keys.len() < n {
            keys.push(next());
        }
        keys.sort();
        keys.dedup();
        if keys.len() == n {
            break;
        }
    }
}

/// A power law over 1..2^32 by inverting its continuous CDF.
fn zipf(rng: &mut Rng, exponent: f64) -> u64 {
    let n = 2f64.powi(32);
    let a = 1.0 - exponent;
    let x = ((n.powf(a) - 1.0) * rng.unit() + 1.0).powf(1.0 / a);
    x.min(n) as u64
}

fn clusters(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let centre = rng.next_u64();
        let run = 1 + rng.below(500);
        let step = *rng.pick(&[1u64, 1, 3, 1 << 20]);
        for i in 0..run {
            keys.push(centre.wrapping_add(i * step).to_be_bytes().to_vec());
        }
    }
    keys
}

/// Few 8-byte heads (some ending in zero bytes), each followed by many short tails.
fn shared_prefixes(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    let n_heads = 1 + rng.below(6);
    let heads: Vec<[u8; 8]> = (0..n_heads)
        .map(|i| {
            let mut head = rng.next_u64().to_be_bytes();
            if i % 2 == 0 {
                head[4..].fill(0);
            }
            head
        })
        .collect();
    (0..n)
        .map(|_| {
            let mut key = rng.pick(&heads).to_vec();
            let tail = rng.below(11) as usize;
            key.extend((0..tail).map(|_| *rng.pick(&[0u8, 0, 1, 0x7f, 0xff])));
            key
        })
        .collect()
}

/// Keys of 0 to 20 bytes over {0, 1, 2, 255}: many differ only by trailing zeros.
fn small_alphabet(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let len = rng.below(21) as usize;
            (0..len).map(|_| *rng.pick(&[0u8, 0, 1, 2, 255])).collect()
        })
        .collect()
}

/// Number of seeds per distribution: `LEARNED_INDEX_TEST_SEEDS`, or `default`.
pub fn seeds(default: u64) -> u64 {
    env_number("LEARNED_INDEX_TEST_SEEDS").unwrap_or(default)
}

/// Largest random key-set size: `LEARNED_INDEX_TEST_KEYS`, or `default`.
pub fn keys_max(default: usize) -> usize {
    env_number("LEARNED_INDEX_TEST_KEYS").map_or(default, |n| n as usize)
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}
