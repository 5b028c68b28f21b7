//! [`RemoteStorage`] over S3, against a real S3-compatible server: moto's `moto_server`,
//! started by each test as a child process on a free loopback port (install it with
//! `python3 -m pip install 'moto[server]'`; `scripts/test.sh` does). A test whose server does
//! not start fails; it is never skipped.
//!
//! The stores are opened with the same code as [`RemoteStorage::from_spec`], with the
//! endpoint and credentials given to the builder instead of read from the environment.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ids::{Lsn, TimelineId};
use object_store::aws::AmazonS3Builder;

use crate::faults::{FaultRates, FaultyStore};
use crate::wal_objects::{chunk_key, lease_key, list_chunks, read_from, Chunk};
use crate::{s3_object_store, PutMode, RemoteStorage, RemoteStorageError};

/// How long `moto_server` may take to accept connections (it imports a lot of Python).
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(60);
const BUCKET: &str = "omendb-test";
const PREFIX: &str = "some/prefix";

/// A running `moto_server`, killed when dropped.
struct MotoServer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl MotoServer {
    /// Starts `moto_server` on a free port with `bucket` created, or panics saying why.
    fn start(name: &str) -> MotoServer {
        let log =
            std::env::temp_dir().join(format!("omendb-moto-{name}-{}.log", std::process::id()));
        // The port is free when probed; another process may take it before moto binds it,
        // so a server that exits while starting is tried again on another port.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("probing for a free port")
                .port();
            let log_file = std::fs::File::create(&log).expect("creating the moto log");
            let child = Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("cloning the moto log"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start moto_server ({e}); the S3 tests need it: install it with \
                         `python3 -m pip install 'moto[server]'` (scripts/test.sh does)"
                    )
                });
            let mut server = MotoServer {
                child,
                port,
                log: log.clone(),
            };
            if server.wait_ready() {
                server.create_bucket(BUCKET);
                return server;
            }
            last_log = server.log_text();
        }
        panic!("moto_server exited while starting, three times; its last log:\n{last_log}");
    }

    /// Waits until the server accepts connections; false if it exited first.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + MOTO_START_TIMEOUT;
        let addr = ([127, 0, 0, 1], self.port).into();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not accept connections within {MOTO_START_TIMEOUT:?}; its log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `PUT /<bucket>`: moto checks no signatures, so a bare request is enough.
    fn create_bucket(&self, bucket: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to moto");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("setting a read timeout");
        write!(
            stream,
            "PUT /{bucket} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("sending CreateBucket");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading the CreateBucket response");
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "creating bucket {bucket} failed: {response}"
        );
    }

    /// S3 connection settings for this server (what `AWS_*` variables give `from_spec`).
    fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{}", self.port))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
    }

    /// `s3://<bucket>/<prefix>` on this server.
    fn storage(&self, prefix: &str) -> RemoteStorage {
        RemoteStorage::from_spec_with(&format!("s3://{BUCKET}/{prefix}"), self.builder())
            .expect("opening the S3 store")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[tokio::test]
async fn put_get_list_delete_under_a_prefix() {
    let moto = MotoServer::start("basic");
    let remote = moto.storage(PREFIX);
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
    let whole_bucket = moto.storage("");
    let mut raw: Vec<String> = whole_bucket
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    raw.sort();
    assert_eq!(raw, vec!["some/prefix/a/b/one", "some/prefix/a/two"]);
    assert!(moto.storage("other").list("a").await.unwrap().is_empty());

    remote.delete("a/two").await.unwrap();
    remote.delete("a/two").await.unwrap();
    assert_eq!(remote.list("a").await.unwrap().len(), 1);
    let stats = remote.stats();
    assert_eq!(stats.bytes_uploaded, 12);
    assert_eq!(stats.bytes_downloaded, 7);
    assert_eq!(stats.retries, 0, "{stats:?}");
}

#[tokio::test]
async fn create_only_put_onto_an_existing_object_fails_and_leaves_it() {
    let moto = MotoServer::start("create-new");
    let remote = moto.storage(PREFIX);
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
    moto.storage(PREFIX)
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
    let moto = MotoServer::start("wal");
    let remote = moto.storage(PREFIX);
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
    let moto = MotoServer::start("faults");
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
