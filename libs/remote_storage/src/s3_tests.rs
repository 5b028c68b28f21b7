//! [`RemoteStorage`] over S3, against a real S3-compatible server: moto's `moto_server`,
//! started by each test as a child process on a free loopback port (install it with
//! `python3 -m pip install 'moto[server]'`; `scripts/test.sh` does). A test whose server does
//! not start fails; it is never skipped.
//!
//! The stores are opened with the same code as [`RemoteStorage::from_spec`], with the
//! endpoint and credentials given to the builder instead of read from the environment.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ids::{Lsn, TimelineId};

use crate::faults::{FaultRates, FaultyStore};
use crate::moto::MotoServer;
use crate::wal_objects::{chunk_key, lease_key, list_chunks, read_from, Chunk};
use crate::{s3_object_store, Expected, PutMode, RemoteStorage, RemoteStorageError};

/// How long `moto_server` may take to accept connections (it imports a lot of Python).
const BUCKET: &str = "omendb-test";
const PREFIX: &str = "some/prefix";

/// A moto server with [`BUCKET`] created.
fn moto(name: &str) -> MotoServer {
    let moto = MotoServer::start(name);
    moto.create_bucket(BUCKET);
    moto
}

/// `s3://<BUCKET>/<prefix>` on `moto`.
fn storage(moto: &MotoServer, prefix: &str) -> RemoteStorage {
    RemoteStorage::from_spec_with(&format!("s3://{BUCKET}/{prefix}"), moto.builder())
        .expect("opening the S3 store")
}

#[tokio::test]
async fn put_get_list_delete_under_a_prefix() {
    let moto = moto("basic");
    let remote = storage(&moto, PREFIX);
    remote
        .put("a/b/one", Bytes::from_static(b"12345"), PutMode::Overwrite)
        .await
        .unwrap();
    remote
        .put("a/two", Bytes::from_static(b"xy"), PutMode::CreateNew)
        .await
        .unwrap();
    remote
        .put("a/b/one", Bytes::from_static(b"54321"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(remote.get("a/b/one", 100).await.unwrap(), "54321");
    assert_eq!(remote.get("a/two", 100).await.unwrap(), "xy");
    let too_large = remote.get("a/b/one", 4).await.unwrap_err();
    assert!(
        matches!(
            too_large,
            RemoteStorageError::TooLarge { size_bytes: 5, .. }
        ),
        "{too_large}"
    );
    let missing = remote.get("a/missing", 100).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    let mut keys: Vec<(String, u64)> = remote
        .list("a")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size_bytes))
        .collect();
    keys.sort();
    assert_eq!(keys, vec![("a/b/one".into(), 5), ("a/two".into(), 2)]);
    assert!(remote.list("nothing/here").await.unwrap().is_empty());

    // The keys live under the prefix in the bucket; a store with another prefix sees none.
    let whole_bucket = storage(&moto, "");
    let mut raw: Vec<String> = whole_bucket
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    raw.sort();
    assert_eq!(raw, vec!["some/prefix/a/b/one", "some/prefix/a/two"]);
    assert!(storage(&moto, "other").list("a").await.unwrap().is_empty());

    remote.delete("a/two").await.unwrap();
    remote.delete("a/two").await.unwrap();
    assert_eq!(remote.list("a").await.unwrap().len(), 1);
    let stats = remote.stats();
    assert_eq!(stats.bytes_uploaded, 12);
    assert_eq!(stats.bytes_downloaded, 7);
    assert_eq!(stats.retries, 0, "{stats:?}");
}

#[tokio::test]
async fn ranged_gets_over_s3_return_exactly_the_range() {
    let moto = moto("ranged");
    let remote = storage(&moto, PREFIX);
    let content = Bytes::from((0..100u8).collect::<Vec<u8>>());
    remote
        .put("r/obj", content.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    for range in [10..20, 0..100, 99..100] {
        let got = remote.get_range("r/obj", range.clone()).await.unwrap();
        assert_eq!(got, content.slice(range.start as usize..range.end as usize));
    }
    assert_eq!(remote.stats().bytes_downloaded, 10 + 100 + 1);
    let short = remote.get_range("r/obj", 90..110).await.unwrap_err();
    assert!(
        matches!(&short, RemoteStorageError::Corrupt { key, .. } if key == "r/obj"),
        "{short}"
    );
    let missing = remote.get_range("r/missing", 0..10).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert_eq!(remote.stats().retries, 0, "{:?}", remote.stats());
    assert_eq!(remote.stats().bytes_downloaded, 111);
}

#[tokio::test]
async fn create_only_put_onto_an_existing_object_fails_and_leaves_it() {
    let moto = moto("create-new");
    let remote = storage(&moto, PREFIX);
    remote
        .put("k", Bytes::from_static(b"first"), PutMode::CreateNew)
        .await
        .unwrap();
    let err = remote
        .put("k", Bytes::from_static(b"second"), PutMode::CreateNew)
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert_eq!(remote.get("k", 100).await.unwrap(), "first");
    // Also when the object was written by an overwrite, and through another store object.
    storage(&moto, PREFIX)
        .put("k2", Bytes::from_static(b"plain"), PutMode::Overwrite)
        .await
        .unwrap();
    let err = remote
        .put("k2", Bytes::from_static(b"other"), PutMode::CreateNew)
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert_eq!(remote.get("k2", 100).await.unwrap(), "plain");
    assert_eq!(remote.stats().retries, 0, "already exists is not retried");
}

#[tokio::test]
async fn wal_chunks_list_and_read_back_over_s3() {
    let moto = moto("wal");
    let remote = storage(&moto, PREFIX);
    let timeline = TimelineId::from_u128(0x0e0d);
    let bytes =
        |start: u64, end: u64| Bytes::from((start..end).map(|i| i as u8).collect::<Vec<u8>>());
    // Uploaded out of order, next to a lease and a stray object that are not chunks.
    for (start, end) in [(300, 700), (0, 300)] {
        remote
            .put(
                &chunk_key(timeline, Lsn(start), Lsn(end)),
                bytes(start, end),
                PutMode::CreateNew,
            )
            .await
            .unwrap();
    }
    remote
        .put(
            &lease_key(timeline, 3),
            Bytes::from_static(b"lease"),
            PutMode::CreateNew,
        )
        .await
        .unwrap();
    remote
        .put(
            &format!("wal/{timeline}/stray.tmp"),
            Bytes::from_static(b"x"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(
        list_chunks(&remote, timeline).await.unwrap(),
        vec![
            Chunk {
                start: Lsn(0),
                end: Lsn(300),
                size_bytes: 300
            },
            Chunk {
                start: Lsn(300),
                end: Lsn(700),
                size_bytes: 400
            },
        ]
    );
    assert_eq!(
        read_from(&remote, timeline, Lsn(0), 1 << 20).await.unwrap(),
        Some(bytes(0, 300))
    );
    assert_eq!(
        read_from(&remote, timeline, Lsn(450), 1 << 20)
            .await
            .unwrap(),
        Some(bytes(450, 700))
    );
    assert_eq!(
        read_from(&remote, timeline, Lsn(700), 1 << 20)
            .await
            .unwrap(),
        None
    );
    let other = TimelineId::from_u128(0x0e0e);
    assert!(list_chunks(&remote, other).await.unwrap().is_empty());

    // A chunk whose size does not match its name is reported, not served.
    remote
        .put(
            &chunk_key(other, Lsn(0), Lsn(10)),
            Bytes::from_static(b"short"),
            PutMode::CreateNew,
        )
        .await
        .unwrap();
    let err = list_chunks(&remote, other).await.unwrap_err();
    assert!(matches!(err, RemoteStorageError::Corrupt { .. }), "{err}");
}

/// `tests::create_only_puts_through_faults_never_overwrite` over S3, smaller: lost
/// responses and timeouts make retries find their own earlier writes, and no object is
/// ever replaced.
#[tokio::test]
async fn create_only_puts_over_s3_through_faults_never_overwrite() {
    const N_OBJECTS: u32 = 15;
    let moto = moto("faults");
    let (mut n_failed, mut n_lost) = (0, 0);
    for seed in 1..=2u64 {
        let prefix = format!("{PREFIX}/seed-{seed}");
        let s3 = s3_object_store(moto.builder(), BUCKET, &prefix).unwrap();
        let faulty = Arc::new(FaultyStore::new(
            s3,
            FaultRates {
                fail_percent: 15,
                slow_percent: 5,
                lost_response_percent: 25,
                slow_ms: 1_500,
            },
            seed,
        ));
        // Longer than a request to moto takes on a loaded machine, shorter than a slow fault.
        let remote = RemoteStorage::from_object_store(faulty.clone())
            .with_request_timeout(Duration::from_millis(1_000));
        crate::faults::check_create_only_puts(&faulty, &remote, N_OBJECTS, seed).await;
        n_failed += faulty.counts.failed.load(Ordering::Relaxed);
        n_lost += faulty.counts.lost_responses.load(Ordering::Relaxed);
    }
    assert!(
        n_failed > 0 && n_lost > 0,
        "faults not exercised: {n_failed} failed, {n_lost} lost"
    );
}

/// Conditional puts over S3 (`If-None-Match: *`, `If-Match`): create, update, stale and
/// "absent" refusals that leave the object as it was, versions that change with every write
/// of other bytes and match what a read returns.
#[tokio::test]
async fn conditional_puts_over_s3() {
    let moto = moto("conditional");
    let remote = storage(&moto, PREFIX);
    let key = "t/index";
    let (versions, _) =
        crate::faults::check_conditional_put_rules(&remote, key, "t/missing", 10).await;
    let last = versions.last().unwrap().clone();

    // A plain put through another store object: the old version is stale.
    storage(&moto, PREFIX)
        .put(key, Bytes::from_static(b"plain"), PutMode::Overwrite)
        .await
        .unwrap();
    let after_plain = remote
        .put_if(key, Bytes::from_static(b"late"), Expected::Version(last))
        .await
        .unwrap_err();
    assert!(crate::faults::refused(&after_plain, key), "{after_plain}");
    assert_eq!(remote.get(key, 100).await.unwrap(), "plain");
    let stats = remote.stats();
    assert_eq!(stats.conditional_puts, 2 + 3 + 10 + 1, "{stats:?}");
    assert_eq!(stats.precondition_failures, 4, "{stats:?}");
    assert_eq!(stats.retries, 0, "{stats:?}");
}

/// `tests::concurrent_conditional_increments_in_a_local_folder_lose_nothing` over S3,
/// smaller: 4 tasks, 6 increments each, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_increments_over_s3_lose_nothing() {
    let moto = moto("increments");
    let remote = storage(&moto, PREFIX);
    let outcome = crate::faults::check_conditional_increments(&remote, "t/counter", 4, 6).await;
    assert_eq!(outcome.last.total, 24);
    assert!(
        outcome.refused > 0,
        "the tasks never conflicted: {outcome:?}"
    );
    assert_eq!(
        outcome.acknowledged + outcome.landed_unacknowledged,
        24,
        "{outcome:?}"
    );
    assert_eq!(
        remote.stats().precondition_failures,
        outcome.refused,
        "{:?}",
        remote.stats()
    );
}
