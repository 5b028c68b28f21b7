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
//! Every put goes through `put_opts`, whatever its mode: plain, create-only
//! (`PutMode::Create`) and conditional (`PutMode::Update`, [`crate::RemoteStorage::put_if`])
//! puts get the same faults, and the record holds every one the inner store accepted (a
//! refused conditional put is not recorded; one whose response is lost is).
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
    /// Held across a put and its recording, so that `puts` is in the order the store
    /// applied them (another put could otherwise land and be recorded in between).
    applying: tokio::sync::Mutex<()>,
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
            applying: tokio::sync::Mutex::new(()),
        }
    }

    /// Changes the rates from now on (`FaultRates::default()` heals the store).
    pub fn set_rates(&self, rates: FaultRates) {
        *self.rates.lock().expect("rates lock") = rates;
    }

    /// Every put the inner store accepted (conditional ones included), in order.
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
            let _applying = self.applying.lock().await;
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

/// The rules of conditional puts, checked on any store: create with `Absent`, update with
/// the right version, refusals (stale version, `Absent` on an existing key, a version on a
/// `missing_key`) that leave the object as it was and name the key, then `n_quick_writes`
/// updates with other bytes of the same size, each giving a new version that a read returns.
/// Returns every version seen (the last is current) and the bytes last written.
#[cfg(test)]
pub(crate) async fn check_conditional_put_rules(
    remote: &crate::RemoteStorage,
    key: &str,
    missing_key: &str,
    n_quick_writes: u32,
) -> (Vec<crate::ObjectVersion>, Bytes) {
    use crate::Expected;
    let v1 = remote
        .put_if(key, Bytes::from_static(b"one"), Expected::Absent)
        .await
        .unwrap();
    let (bytes, read) = remote.get_with_version(key, 100).await.unwrap();
    assert_eq!((bytes, &read), (Bytes::from_static(b"one"), &v1));
    let v2 = remote
        .put_if(
            key,
            Bytes::from_static(b"two"),
            Expected::Version(v1.clone()),
        )
        .await
        .unwrap();
    assert_ne!(v1, v2);
    assert_eq!(remote.get_with_version(key, 100).await.unwrap().1, v2);

    let stale = remote
        .put_if(
            key,
            Bytes::from_static(b"three"),
            Expected::Version(v1.clone()),
        )
        .await
        .unwrap_err();
    assert!(refused(&stale, key), "{stale}");
    let exists = remote
        .put_if(key, Bytes::from_static(b"four"), Expected::Absent)
        .await
        .unwrap_err();
    assert!(refused(&exists, key), "{exists}");
    assert_eq!(remote.get(key, 100).await.unwrap(), "two");
    let missing = remote
        .put_if(
            missing_key,
            Bytes::from_static(b"x"),
            Expected::Version(v2.clone()),
        )
        .await
        .unwrap_err();
    assert!(
        missing.is_precondition_failed() && missing.to_string().contains(missing_key),
        "{missing}"
    );
    assert!(remote
        .get(missing_key, 100)
        .await
        .unwrap_err()
        .is_not_found());

    // Other bytes of the same size in quick succession: every version differs, and each is
    // the one a read returns.
    let mut versions = vec![v1, v2.clone()];
    let mut last = v2;
    let mut last_bytes = Bytes::from_static(b"two");
    for i in 0..n_quick_writes {
        last_bytes = Bytes::from(format!("{i:08}"));
        last = remote
            .put_if(key, last_bytes.clone(), Expected::Version(last.clone()))
            .await
            .unwrap();
        assert_eq!(remote.get_with_version(key, 100).await.unwrap().1, last);
        versions.push(last.clone());
    }
    let distinct: std::collections::HashSet<_> = versions.iter().collect();
    assert_eq!(distinct.len(), versions.len(), "a version came back");
    (versions, last_bytes)
}

/// A conditional put refused for its precondition, with the key in the message.
#[cfg(test)]
pub(crate) fn refused(error: &crate::RemoteStorageError, key: &str) -> bool {
    error.is_precondition_failed() && !error.is_already_exists() && error.to_string().contains(key)
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

/// The counter object of [`check_conditional_increments`]: the total, and how many increments
/// each task has applied. A task whose put failed in a way that leaves its effect unknown
/// tells by its own count whether the put landed, as a writer of an index would by a
/// generation number.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counter {
    pub total: u32,
    pub done: Vec<u32>,
}

#[cfg(test)]
impl Counter {
    pub fn encode(&self) -> Bytes {
        let done: Vec<String> = self.done.iter().map(u32::to_string).collect();
        Bytes::from(format!("total {} done {}", self.total, done.join(",")))
    }

    pub fn decode(bytes: &[u8]) -> Counter {
        let text = std::str::from_utf8(bytes).expect("a counter is text");
        let rest = text.strip_prefix("total ").expect("a counter");
        let (total, done) = rest.split_once(" done ").expect("a counter");
        Counter {
            total: total.parse().expect("a counter's total"),
            done: done
                .split(',')
                .map(|n| n.parse().expect("a task's count"))
                .collect(),
        }
    }
}

/// What [`check_conditional_increments`] saw.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncrementsOutcome {
    /// The counter once every task is done.
    pub last: Counter,
    /// Conditional puts refused (stale versions).
    pub refused: u64,
    /// Conditional puts that reported success.
    pub acknowledged: u64,
    /// Increments that landed although their put reported a failure (retries spent).
    pub landed_unacknowledged: u64,
}

/// `n_tasks` concurrent tasks each add `n_each` increments to the counter object `key`, all
/// through conditional puts: read it with its version, put the next state if it is still at
/// that version, and on a refusal (or a failure) read again. After every read, checks that
/// the total is the sum of the tasks' counts and that no task's count went back (a lost
/// update); at the end, that every increment is there exactly once and was either
/// acknowledged or found landed.
#[cfg(test)]
pub(crate) async fn check_conditional_increments(
    remote: &crate::RemoteStorage,
    key: &str,
    n_tasks: usize,
    n_each: u32,
) -> IncrementsOutcome {
    use crate::Expected;
    /// Reads and puts per increment before the test gives up (faults make some fail).
    const TRIES_MAX: u32 = 1_000;
    let mut tasks = Vec::new();
    for task in 0..n_tasks {
        let (remote, key) = (remote.clone(), key.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut refused, mut acknowledged, mut landed_unacknowledged) = (0, 0, 0);
            for i in 0..n_each {
                let mut tries = 0;
                loop {
                    tries += 1;
                    assert!(
                        tries <= TRIES_MAX,
                        "task {task}: increment {i} never landed"
                    );
                    let (state, expected) = match remote.get_with_version(&key, 1 << 16).await {
                        Ok((bytes, version)) => {
                            (Counter::decode(&bytes), Expected::Version(version))
                        }
                        Err(e) if e.is_not_found() => (
                            Counter {
                                total: 0,
                                done: vec![0; n_tasks],
                            },
                            Expected::Absent,
                        ),
                        Err(_) => continue,
                    };
                    assert_eq!(state.total, state.done.iter().sum::<u32>(), "{state:?}");
                    assert!(
                        state.done[task] >= i,
                        "task {task} made {i} increments, the counter holds {}: {state:?}",
                        state.done[task]
                    );
                    if state.done[task] > i {
                        assert_eq!(state.done[task], i + 1, "{state:?}");
                        landed_unacknowledged += 1;
                        break;
                    }
                    let mut next = state.clone();
                    next.done[task] += 1;
                    next.total += 1;
                    match remote.put_if(&key, next.encode(), expected).await {
                        Ok(_) => {
                            acknowledged += 1;
                            break;
                        }
                        Err(e) if e.is_precondition_failed() => {
                            assert!(e.to_string().contains(&key), "{e}");
                            refused += 1;
                        }
                        Err(_) => {}
                    }
                }
            }
            (refused, acknowledged, landed_unacknowledged)
        }));
    }
    let (mut refused, mut acknowledged, mut landed_unacknowledged) = (0, 0, 0);
    for task in tasks {
        let (r, a, l) = task.await.expect("an increment task panicked");
        refused += r;
        acknowledged += a;
        landed_unacknowledged += l;
    }
    let last = loop {
        if let Ok(bytes) = remote.get(key, 1 << 16).await {
            break Counter::decode(&bytes);
        }
    };
    assert_eq!(
        last,
        Counter {
            total: n_tasks as u32 * n_each,
            done: vec![n_each; n_tasks],
        }
    );
    assert_eq!(
        acknowledged + landed_unacknowledged,
        u64::from(last.total),
        "an increment acknowledged twice, or never"
    );
    IncrementsOutcome {
        last,
        refused,
        acknowledged,
        landed_unacknowledged,
    }
}
