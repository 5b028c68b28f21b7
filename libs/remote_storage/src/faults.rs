//! [`FaultyStore`]: an `ObjectStore` wrapper for tests that injects the failures a real object
//! store shows: requests that fail, requests that take too long, and requests that succeed
//! but whose response is lost (the caller sees an error although the write happened).
//!
//! ```text
//!  RemoteStorage ──▶ FaultyStore ──(seeded dice per request)──▶ inner store
//!                       │ fail: error before the request reaches the store
//!                       │ slow: sleep `slow_ms` first (a caller's timeout fires)
//!                       │ lost: forward, then answer with an error anyway
//!                       ▼
//!                    `inner` also records every put that reached it (key, bytes), so a
//!                    test can count overwrites
//! ```
//!
//! Every injected error is `object_store::Error::Generic`, which callers treat as transient.
//! Same seed, same sequence of dice (the interleaving of concurrent requests may still vary).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// How often each fault happens, in percent of requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultRates {
    pub fail_percent: u32,
    pub slow_percent: u32,
    pub lost_response_percent: u32,
    /// How long a slow request waits before it is forwarded.
    pub slow_ms: u64,
}

/// How many faults were injected.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub failed: AtomicU64,
    pub slowed: AtomicU64,
    pub lost_responses: AtomicU64,
}

/// A put that reached the inner store: its key and bytes.
pub type RecordedPut = (String, Bytes);

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rates: Mutex<FaultRates>,
    rng: Mutex<u64>,
    pub counts: FaultCounts,
    puts: Mutex<Vec<RecordedPut>>,
}

enum Fault {
    None,
    Fail,
    Slow(u64),
    LostResponse,
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected fault: {what}").into(),
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, rates: FaultRates, seed: u64) -> FaultyStore {
        FaultyStore {
            inner,
            rates: Mutex::new(rates),
            rng: Mutex::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            counts: FaultCounts::default(),
            puts: Mutex::new(Vec::new()),
        }
    }

    /// Changes the rates from now on (`FaultRates::default()` heals the store).
    pub fn set_rates(&self, rates: FaultRates) {
        *self.rates.lock().expect("rates lock") = rates;
    }

    /// Every put that reached the inner store, in order.
    pub fn recorded_puts(&self) -> Vec<RecordedPut> {
        self.puts.lock().expect("puts lock").clone()
    }

    fn roll(&self) -> Fault {
        let rates = *self.rates.lock().expect("rates lock");
        let mut state = self.rng.lock().expect("rng lock");
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let dice = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % 100) as u32;
        if dice < rates.fail_percent {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
            Fault::Fail
        } else if dice < rates.fail_percent + rates.slow_percent {
            self.counts.slowed.fetch_add(1, Ordering::Relaxed);
            Fault::Slow(rates.slow_ms)
        } else if dice < rates.fail_percent + rates.slow_percent + rates.lost_response_percent {
            self.counts.lost_responses.fetch_add(1, Ordering::Relaxed);
            Fault::LostResponse
        } else {
            Fault::None
        }
    }

    /// Runs `request` under one roll of the dice.
    async fn faulted<T, F>(&self, what: &str, request: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        match self.roll() {
            Fault::None => request.await,
            Fault::Fail => Err(injected(&format!("{what} failed"))),
            Fault::Slow(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                request.await
            }
            Fault::LostResponse => {
                let _ = request.await;
                Err(injected(&format!("{what} done, response lost")))
            }
        }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let bytes: Bytes = payload.clone().into();
        self.faulted("put", async {
            let result = self.inner.put_opts(location, payload, opts).await;
            if result.is_ok() {
                self.puts
                    .lock()
                    .expect("puts lock")
                    .push((location.to_string(), bytes));
            }
            result
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.faulted(
            "multipart put",
            self.inner.put_multipart_opts(location, opts),
        )
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.faulted("get", self.inner.get_opts(location, options))
            .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.faulted("get ranges", self.inner.get_ranges(location, ranges))
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        match self.roll() {
            Fault::Fail => locations.map(|_| Err(injected("delete failed"))).boxed(),
            // Deletes are idempotent: slow and lost responses add nothing a retry would see.
            _ => self.inner.delete_stream(locations),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.roll() {
            Fault::Fail | Fault::LostResponse => {
                futures::stream::once(async { Err(injected("list failed")) }).boxed()
            }
            _ => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.faulted("list", self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.faulted("copy", self.inner.copy_opts(from, to, options))
            .await
    }
}

/// The create-only scenario the fault tests run over any store: `n_objects` create-only puts,
/// then a second create-only put of other bytes onto each, then, with the faults healed,
/// checks that every put reported as done stored our bytes, that no object was replaced,
/// and that each key reached the inner store at most once. Faults must have happened.
#[cfg(test)]
pub(crate) async fn check_create_only_puts(
    faulty: &FaultyStore,
    remote: &crate::RemoteStorage,
    n_objects: u32,
    seed: u64,
) {
    use crate::PutMode;
    let content = |i: u32, version: u32| Bytes::from(format!("object {i} version {version}"));
    let mut created = Vec::new();
    for i in 0..n_objects {
        let key = format!("k/{i}");
        created.push(
            remote
                .put(&key, content(i, 1), PutMode::CreateNew)
                .await
                .is_ok(),
        );
    }
    for i in 0..n_objects {
        let key = format!("k/{i}");
        let again = remote.put(&key, content(i, 2), PutMode::CreateNew).await;
        if created[i as usize] {
            assert!(again.is_err(), "seed {seed}: k/{i} was replaced");
        }
    }
    faulty.set_rates(FaultRates::default());
    for (i, ok) in created.iter().enumerate() {
        let stored = remote.get(&format!("k/{i}"), 1 << 10).await;
        if *ok {
            assert!(
                stored.is_ok(),
                "seed {seed}: k/{i} reported created, not there"
            );
        }
        if let Ok(stored) = stored {
            assert_eq!(
                stored,
                content(i as u32, 1),
                "seed {seed}: k/{i} overwritten"
            );
        }
    }
    let mut written = std::collections::HashSet::new();
    for (key, _) in faulty.recorded_puts() {
        assert!(
            written.insert(key.clone()),
            "seed {seed}: {key} written twice"
        );
    }
    assert!(
        created.iter().filter(|ok| **ok).count() as u32 > n_objects / 2,
        "seed {seed}: too few puts succeeded: {created:?}"
    );
    assert!(
        faulty.counts.failed.load(Ordering::Relaxed) > 0
            && faulty.counts.lost_responses.load(Ordering::Relaxed) > 0,
        "seed {seed}: the faults were not exercised: {:?}",
        faulty.counts
    );
}
