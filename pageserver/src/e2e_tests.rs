//! End-to-end tests in one process: a fake safekeeper (a small TCP server that answers
//! `StartReplication` with `WalData` frames cut at awkward byte boundaries), the real
//! pageserver (`run_with_listener`) on a temp-folder object store, and a client speaking
//! `pageserver_api` over TCP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use pageserver_api::{ErrorKind, Request, Response, SCAN_BATCH_BYTES_MAX, SCAN_BATCH_ROWS_MAX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use wal::{Op, Transaction};

use crate::manifest::Manifest;
use crate::remote_layout::index_key;
use crate::test_util::temp_dir;
use crate::Config;

const TENANT: TenantId = TenantId([0x11; 16]);
const TIMELINE: TimelineId = TimelineId([0x22; 16]);
/// WAL chunk sizes the fake safekeeper cycles through, so records are split everywhere.
const CHUNK_BYTES: [usize; 10] = [1, 2, 3, 5, 7, 11, 13, 64, 1000, 4096];

/// The WAL of the timeline, from LSN 0, as the fake safekeepers see it.
struct Wal {
    bytes: Vec<u8>,
    published: watch::Sender<Bytes>,
}

impl Wal {
    fn new() -> Wal {
        Wal {
            bytes: Vec::new(),
            published: watch::Sender::new(Bytes::new()),
        }
    }

    /// Appends one committed transaction (not yet visible to safekeepers); returns its commit LSN.
    fn commit(&mut self, ops: Vec<Op>) -> Lsn {
        let record = wal::encode_record(&Transaction {
            xid: self.bytes.len() as u64,
            commit_time_us: 0,
            ops,
        })
        .unwrap();
        self.bytes.extend_from_slice(&record);
        Lsn(self.bytes.len() as u64)
    }

    fn publish(&self) {
        self.published.send_replace(Bytes::from(self.bytes.clone()));
    }
}

struct FakeSafekeeper {
    addr: SocketAddr,
    /// The `start_lsn` of every `StartReplication` received.
    starts: Arc<Mutex<Vec<Lsn>>>,
    /// The `remote_consistent_lsn` of every `Feedback` received.
    feedback: Arc<Mutex<Vec<Lsn>>>,
}

impl FakeSafekeeper {
    /// `cut_first_after_bytes`: the first connection is dropped after sending this much WAL.
    async fn start(
        wal: watch::Receiver<Bytes>,
        cut_first_after_bytes: Option<usize>,
    ) -> FakeSafekeeper {
        FakeSafekeeper::start_offloaded(wal, cut_first_after_bytes, Lsn::ZERO).await
    }

    /// Like `start`, for a safekeeper that removed its WAL below `wal_start` (offloaded).
    async fn start_offloaded(
        wal: watch::Receiver<Bytes>,
        cut_first_after_bytes: Option<usize>,
        wal_start: Lsn,
    ) -> FakeSafekeeper {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let feedback = Arc::new(Mutex::new(Vec::new()));
        let (task_starts, task_feedback) = (starts.clone(), feedback.clone());
        tokio::spawn(async move {
            let mut cut = cut_first_after_bytes;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (wal, starts) = (wal.clone(), task_starts.clone());
                let (read_half, write_half) = stream.into_split();
                tokio::spawn(stream_wal(
                    read_half,
                    write_half,
                    wal,
                    starts,
                    task_feedback.clone(),
                    cut.take(),
                    wal_start,
                ));
            }
        });
        FakeSafekeeper {
            addr,
            starts,
            feedback,
        }
    }
}

async fn stream_wal(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    mut wal: watch::Receiver<Bytes>,
    starts: Arc<Mutex<Vec<Lsn>>>,
    feedback: Arc<Mutex<Vec<Lsn>>>,
    cut_after_bytes: Option<usize>,
    wal_start: Lsn,
) {
    let Ok(Some(frame)) = wire::read_frame(&mut reader).await else {
        return;
    };
    let (timeline, start_lsn) = match safekeeper_api::Request::decode(&frame) {
        Ok(safekeeper_api::Request::StartReplication {
            timeline,
            start_lsn,
        }) => (timeline, start_lsn),
        Ok(safekeeper_api::Request::Feedback {
            timeline,
            remote_consistent_lsn,
        }) => {
            // A feedback connection: record every LSN until it closes.
            assert_eq!(timeline, TIMELINE);
            feedback.lock().unwrap().push(remote_consistent_lsn);
            while let Ok(Some(frame)) = wire::read_frame(&mut reader).await {
                match safekeeper_api::Request::decode(&frame) {
                    Ok(safekeeper_api::Request::Feedback {
                        timeline,
                        remote_consistent_lsn,
                    }) if timeline == TIMELINE => {
                        feedback.lock().unwrap().push(remote_consistent_lsn)
                    }
                    other => panic!("unexpected message on a feedback connection: {other:?}"),
                }
            }
            return;
        }
        Ok(safekeeper_api::Request::TimelineStatus { timeline }) => {
            // A probe of how far this safekeeper has committed.
            assert_eq!(timeline, TIMELINE);
            let commit_lsn = Lsn(wal.borrow().len() as u64);
            let status = safekeeper_api::Response::Status(safekeeper_api::AcceptorStatus {
                term: 1,
                term_history: safekeeper_api::TermHistory::default(),
                flush_lsn: commit_lsn,
                commit_lsn,
            });
            let _ = wire::write_frame(&mut stream, &status.encode()).await;
            return;
        }
        other => {
            panic!(
                "the pageserver must open with StartReplication, Feedback or TimelineStatus: {other:?}"
            )
        }
    };
    assert_eq!(timeline, TIMELINE);
    starts.lock().unwrap().push(start_lsn);
    if start_lsn < wal_start {
        let offloaded = safekeeper_api::Response::WalOffloaded { wal_start };
        let _ = wire::write_frame(&mut stream, &offloaded.encode()).await;
        return;
    }
    let mut position = start_lsn.0 as usize;
    let (mut n_chunks, mut n_sent) = (0, 0);
    loop {
        let snapshot = wal.borrow_and_update().clone();
        assert!(position <= snapshot.len(), "asked for WAL beyond its end");
        while position < snapshot.len() {
            let n_bytes = CHUNK_BYTES[n_chunks % CHUNK_BYTES.len()].min(snapshot.len() - position);
            n_chunks += 1;
            if cut_after_bytes.is_some_and(|cut| n_sent + n_bytes > cut) {
                return; // Drops the connection in the middle of the stream.
            }
            let data = snapshot.slice(position..position + n_bytes);
            let response = safekeeper_api::Response::WalData {
                start_lsn: Lsn(position as u64),
                commit_lsn: Lsn(snapshot.len() as u64),
                data,
            };
            if wire::write_frame(&mut stream, &response.encode())
                .await
                .is_err()
            {
                return;
            }
            position += n_bytes;
            n_sent += n_bytes;
        }
        match tokio::time::timeout(Duration::from_secs(1), wal.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                let keepalive = safekeeper_api::Response::WalData {
                    start_lsn: Lsn(position as u64),
                    commit_lsn: Lsn(snapshot.len() as u64),
                    data: Bytes::new(),
                };
                if wire::write_frame(&mut stream, &keepalive.encode())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// An address where nothing listens.
async fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Pageserver {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    data_dir: std::path::PathBuf,
}

impl Pageserver {
    async fn start(config: Config) -> Pageserver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let handle = tokio::spawn(crate::run_with_listener(config, listener, async move {
            let _ = stop.await;
        }));
        Pageserver {
            addr,
            shutdown,
            handle,
            data_dir,
        }
    }

    async fn stop(self) {
        self.shutdown.send(()).unwrap();
        self.handle.await.unwrap().unwrap();
        std::fs::remove_dir_all(&self.data_dir).unwrap();
    }
}

fn config(object_store_dir: &std::path::Path, safekeepers: Vec<SocketAddr>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: temp_dir("e2e-data"),
        object_store: object_store_dir.display().to_string(),
        safekeepers,
        tenant: TENANT,
        timeline: TIMELINE,
        checkpoint_interval: Duration::from_millis(100),
        gc_interval: Duration::from_secs(3600),
        pitr_window: Duration::from_secs(3600),
        wait_lsn_timeout: Duration::from_secs(1),
        cache_memory_bytes: 4 << 20,
        cache_disk_bytes: crate::block_cache::BLOCK_CACHE_DISK_BYTES_MIN,
        metrics_listen: None,
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One metric's value from `GET /metrics` at `addr`.
async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {response}"))
        .parse()
        .unwrap()
}

struct Client {
    stream: TcpStream,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    async fn send(&mut self, request: &Request) {
        wire::write_frame(&mut self.stream, &request.encode())
            .await
            .unwrap();
    }

    async fn receive(&mut self) -> Response {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), wire::read_frame(&mut self.stream));
        Response::decode(&frame.await.unwrap().unwrap().unwrap()).unwrap()
    }

    async fn get(&mut self, table: u32, key: &str, lsn: Lsn) -> Response {
        let key = Bytes::copy_from_slice(key.as_bytes());
        self.send(&Request::GetRow {
            timeline: TIMELINE,
            table,
            key,
            lsn,
        })
        .await;
        self.receive().await
    }

    async fn value(&mut self, table: u32, key: &str, lsn: Lsn) -> Option<String> {
        match self.get(table, key, lsn).await {
            Response::Row { value } => value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
            other => panic!("GetRow {table}/{key} at {lsn}: {other:?}"),
        }
    }

    /// All rows of a scan, and the number of batches they came in.
    async fn scan(
        &mut self,
        table: u32,
        start: Option<&str>,
        end: Option<&str>,
        lsn: Lsn,
    ) -> (Vec<(Bytes, Bytes)>, usize) {
        let bound = |b: Option<&str>| b.map(|b| Bytes::copy_from_slice(b.as_bytes()));
        self.send(&Request::Scan {
            timeline: TIMELINE,
            table,
            start: bound(start),
            end: bound(end),
            lsn,
        })
        .await;
        let (mut rows, mut n_batches) = (Vec::new(), 0);
        loop {
            match self.receive().await {
                Response::RowBatch { rows: batch } => {
                    assert!(!batch.is_empty() && batch.len() <= SCAN_BATCH_ROWS_MAX);
                    let n_bytes: usize = batch.iter().map(|(k, v)| k.len() + v.len()).sum();
                    assert!(
                        batch.len() == 1 || n_bytes <= SCAN_BATCH_BYTES_MAX,
                        "batch of {n_bytes} bytes"
                    );
                    rows.extend(batch);
                    n_batches += 1;
                }
                Response::ScanEnd => return (rows, n_batches),
                other => panic!("scan {table} at {lsn}: {other:?}"),
            }
        }
    }

    async fn status(&mut self) -> (Lsn, Lsn) {
        self.send(&Request::Status { timeline: TIMELINE }).await;
        match self.receive().await {
            Response::Timeline(info) => (info.last_record_lsn, info.remote_consistent_lsn),
            other => panic!("status: {other:?}"),
        }
    }
}

fn put(table: u32, key: &str, value: &[u8]) -> Op {
    Op::Put {
        table,
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value),
    }
}

/// True when the peer closes the connection (without sending anything but, optionally,
/// one `BadRequest` error first).
async fn closed_after_bad_request(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .unwrap()
    {
        Ok(_) => {}
        // A close with unread input is a reset rather than an end of stream.
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return true,
        Err(err) => panic!("{err}"),
    }
    if rest.is_empty() {
        return true;
    }
    let mut reader: &[u8] = &rest;
    let frame = wire::read_frame(&mut reader).await.unwrap().unwrap();
    matches!(
        Response::decode(&frame).unwrap(),
        Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        }
    ) && reader.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_reads_at_lsns_over_tcp_and_restarts_from_the_object_store() {
    let object_store = temp_dir("e2e-object-store");
    let mut wal = Wal::new();
    let l1 = wal.commit(vec![
        put(1, "a", b"1"),
        put(1, "b", b"1"),
        put(1, "c", b"1"),
    ]);
    let mut ops = vec![
        put(1, "b", b"2"),
        Op::Delete {
            table: 1,
            key: Bytes::from_static(b"c"),
        },
    ];
    ops.extend((0..20_000).map(|i| put(2, &format!("{i:08}"), format!("row {i}").as_bytes())));
    ops.extend((0..10).map(|i| put(3, &format!("{i}"), &vec![b'x'; 1 << 20])));
    let l2 = wal.commit(ops);
    let l3 = wal.commit(vec![Op::DropTable { table: 2 }, put(1, "d", b"1")]);
    wal.publish();
    let safekeeper = FakeSafekeeper::start(wal.published.subscribe(), None).await;
    let pageserver = Pageserver::start(config(
        &object_store,
        vec![dead_addr().await, safekeeper.addr],
    ))
    .await;
    let mut client = Client::connect(pageserver.addr).await;

    assert_eq!(client.value(1, "b", l1).await.as_deref(), Some("1"));
    assert_eq!(
        client.value(1, "b", Lsn(l2.0 - 1)).await.as_deref(),
        Some("1")
    );
    assert_eq!(client.value(1, "b", l2).await.as_deref(), Some("2"));
    assert_eq!(client.value(1, "c", l1).await.as_deref(), Some("1"));
    assert_eq!(client.value(1, "c", l2).await, None);
    assert_eq!(client.value(1, "d", l2).await, None);
    assert_eq!(client.value(1, "d", l3).await.as_deref(), Some("1"));
    assert_eq!(
        client.value(2, "00000007", l2).await.as_deref(),
        Some("row 7")
    );
    assert_eq!(client.value(2, "00000007", l3).await, None, "dropped");

    let (rows, n_batches) = client.scan(2, None, None, l2).await;
    assert_eq!(rows.len(), 20_000);
    assert!(n_batches >= 3, "{n_batches} batches");
    assert!(rows.windows(2).all(|pair| pair[0].0 < pair[1].0));
    assert_eq!(
        rows[19_999],
        (Bytes::from("00019999"), Bytes::from("row 19999"))
    );
    let (rows, _) = client.scan(2, Some("00000100"), Some("00000200"), l2).await;
    assert_eq!(rows.len(), 100);
    assert_eq!(rows[0].0, "00000100");
    assert_eq!(client.scan(2, None, None, l1).await, (vec![], 0));
    assert_eq!(client.scan(2, None, None, l3).await, (vec![], 0));
    assert_eq!(
        client.scan(2, Some("9"), Some("0"), l2).await,
        (vec![], 0),
        "inverted range"
    );
    let (rows, n_batches) = client.scan(3, None, None, l2).await;
    assert_eq!(
        (rows.len(), n_batches),
        (10, 4),
        "1 MiB rows go 3 to a batch"
    );
    let keys: Vec<Bytes> = client
        .scan(1, None, None, l3)
        .await
        .0
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(keys, vec!["a", "b", "d"]);

    // Another timeline is refused, and the connection goes on.
    let other = TimelineId::from_u128(5);
    client.send(&Request::Status { timeline: other }).await;
    assert!(matches!(
        client.receive().await,
        Response::Error {
            kind: ErrorKind::UnknownTimeline,
            ..
        }
    ));
    client
        .send(&Request::GetRow {
            timeline: other,
            table: 1,
            key: Bytes::from("a"),
            lsn: l1,
        })
        .await;
    assert!(matches!(
        client.receive().await,
        Response::Error {
            kind: ErrorKind::UnknownTimeline,
            ..
        }
    ));

    // Everything ingested reaches the object store within a few checkpoint intervals.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.status().await != (l3, l3) {
        assert!(
            Instant::now() < deadline,
            "not uploaded: {:?}",
            client.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A read at a future LSN waits for the WAL, then succeeds.
    let l4 = wal.commit(vec![put(1, "e", b"1")]);
    let started = Instant::now();
    client
        .send(&Request::GetRow {
            timeline: TIMELINE,
            table: 1,
            key: Bytes::from("e"),
            lsn: l4,
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    wal.publish();
    assert_eq!(
        client.receive().await,
        Response::Row {
            value: Some(Bytes::from("1"))
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // ... or times out.
    let far = Lsn(l4.0 + 1_000_000);
    match client.get(1, "e", far).await {
        Response::Error {
            kind: ErrorKind::WaitLsnTimeout,
            message,
        } => assert_eq!(
            message,
            format!("timed out after 1000 ms waiting for WAL up to LSN {far} (have {l4})")
        ),
        other => panic!("expected a timeout, got {other:?}"),
    }
    client
        .send(&Request::Scan {
            timeline: TIMELINE,
            table: 1,
            start: None,
            end: None,
            lsn: far,
        })
        .await;
    assert!(matches!(
        client.receive().await,
        Response::Error {
            kind: ErrorKind::WaitLsnTimeout,
            ..
        }
    ));

    // A frame with a bad checksum closes that connection only; so does a frame whose
    // payload is no request (after a BadRequest answer).
    let mut bad = TcpStream::connect(pageserver.addr).await.unwrap();
    bad.write_all(&[0, 0, 0, 5, 1, 2, 3, 4, 1, 9, 9, 9, 9])
        .await
        .unwrap();
    assert!(closed_after_bad_request(&mut bad).await);
    let mut bad = TcpStream::connect(pageserver.addr).await.unwrap();
    wire::write_frame(&mut bad, &[200, 1, 2]).await.unwrap();
    assert!(closed_after_bad_request(&mut bad).await);
    let mut bad = TcpStream::connect(pageserver.addr).await.unwrap();
    bad.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .await
        .unwrap();
    assert!(
        closed_after_bad_request(&mut bad).await,
        "an oversized frame"
    );
    assert_eq!(client.value(1, "e", l4).await.as_deref(), Some("1"));

    pageserver.stop().await;
    let index = std::fs::read(object_store.join(index_key(TENANT, TIMELINE, 1))).unwrap();
    assert_eq!(
        Manifest::decode(&index, TENANT, TIMELINE)
            .unwrap()
            .remote_consistent_lsn(),
        l4
    );

    // A new pageserver on an empty local disk serves the same reads from the object store,
    // fetching layer blocks on demand, under a new generation, and follows the WAL from
    // where the object store ends.
    let metrics_addr = free_addr();
    let pageserver = Pageserver::start(Config {
        metrics_listen: Some(metrics_addr),
        ..config(&object_store, vec![safekeeper.addr])
    })
    .await;
    let mut client = Client::connect(pageserver.addr).await;
    assert_eq!(client.status().await, (l4, l4));
    let misses = "omendb_pageserver_block_cache_misses_total";
    let memory_hits = "omendb_pageserver_block_cache_memory_hits_total";
    assert_eq!(metric(metrics_addr, misses).await, 0, "nothing read yet");
    assert_eq!(client.value(1, "b", l1).await.as_deref(), Some("1"));
    assert_eq!(client.value(1, "b", l2).await.as_deref(), Some("2"));
    assert_eq!(
        client.value(2, "00000007", l2).await.as_deref(),
        Some("row 7")
    );
    let misses_after_reads = metric(metrics_addr, misses).await;
    assert!(misses_after_reads > 0, "blocks fetched on demand");
    assert!(
        metric(
            metrics_addr,
            "omendb_pageserver_block_cache_fetched_bytes_total"
        )
        .await
            > 0
    );
    let hits_before = metric(metrics_addr, memory_hits).await;
    assert_eq!(
        client.value(2, "00000007", l2).await.as_deref(),
        Some("row 7")
    );
    assert_eq!(
        metric(metrics_addr, misses).await,
        misses_after_reads,
        "a repeat is cached"
    );
    assert!(metric(metrics_addr, memory_hits).await > hits_before);
    assert_eq!(client.scan(2, None, None, l2).await.0.len(), 20_000);
    assert_eq!(client.scan(2, None, None, l4).await.0.len(), 0);
    let l5 = wal.commit(vec![put(1, "e", b"2")]);
    wal.publish();
    assert_eq!(client.value(1, "e", l5).await.as_deref(), Some("2"));
    assert_eq!(client.value(1, "e", l4).await.as_deref(), Some("1"));
    pageserver.stop().await;
    let index = std::fs::read(object_store.join(index_key(TENANT, TIMELINE, 2))).unwrap();
    assert_eq!(
        Manifest::decode(&index, TENANT, TIMELINE)
            .unwrap()
            .remote_consistent_lsn(),
        l5
    );
    let starts = safekeeper.starts.lock().unwrap().clone();
    assert_eq!(starts.first(), Some(&Lsn(0)));
    assert_eq!(
        starts.last(),
        Some(&l4),
        "the restarted pageserver streams from the uploaded LSN"
    );
    std::fs::remove_dir_all(&object_store).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replication_stream_resumes_from_the_last_applied_record() {
    let object_store = temp_dir("e2e-reconnect");
    let mut wal = Wal::new();
    let lsns: Vec<Lsn> = (0..20)
        .map(|i| wal.commit(vec![put(1, &format!("{i:02}"), b"some value")]))
        .collect();
    wal.publish();
    // The fake safekeeper drops its first connection before the WAL chunk that would pass
    // this byte: somewhere inside the first few records.
    let cut = lsns[2].0 as usize + 30;
    let safekeeper = FakeSafekeeper::start(wal.published.subscribe(), Some(cut)).await;
    let pageserver = Pageserver::start(config(&object_store, vec![safekeeper.addr])).await;
    let mut client = Client::connect(pageserver.addr).await;
    let (rows, _) = client.scan(1, None, None, lsns[19]).await;
    assert_eq!(rows.len(), 20);
    assert_eq!(client.value(1, "03", lsns[2]).await, None);
    assert_eq!(
        client.value(1, "03", lsns[3]).await.as_deref(),
        Some("some value")
    );
    pageserver.stop().await;
    // The first connection broke inside a record; the second one started at the end of the
    // last whole record before the break.
    let starts = safekeeper.starts.lock().unwrap().clone();
    assert!(starts.len() >= 2, "{starts:?}");
    assert_eq!(starts[0], Lsn(0));
    assert!(lsns[..3].contains(&starts[1]), "{starts:?}");
    std::fs::remove_dir_all(&object_store).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_removed_from_the_safekeepers_is_read_from_the_object_store() {
    use remote_storage::wal_objects::chunk_key;
    use remote_storage::{PutMode, RemoteStorage};

    let object_store = temp_dir("e2e-offloaded");
    let mut wal = Wal::new();
    let lsns: Vec<Lsn> = (0..30)
        .map(|i| wal.commit(vec![put(1, &format!("{i:02}"), format!("v{i}").as_bytes())]))
        .collect();
    wal.publish();
    // The safekeeper only keeps WAL from the 20th record on; below that it is offloaded.
    let wal_start = lsns[19];
    let safekeeper =
        FakeSafekeeper::start_offloaded(wal.published.subscribe(), None, wal_start).await;
    let pageserver = Pageserver::start(config(&object_store, vec![safekeeper.addr])).await;
    let mut client = Client::connect(pageserver.addr).await;
    // Not yet in the object store either: nothing is ingested, nothing made up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.status().await.0, Lsn::ZERO);
    assert!(matches!(
        client.get(1, "00", lsns[0]).await,
        Response::Error {
            kind: ErrorKind::WaitLsnTimeout,
            ..
        }
    ));
    // Offload it as two chunks: the pageserver reads them, then streams the rest.
    let remote = RemoteStorage::local(&object_store).unwrap();
    let bytes = Bytes::from(wal.bytes.clone());
    for (start, end) in [(Lsn::ZERO, lsns[9]), (lsns[9], wal_start)] {
        let chunk = bytes.slice(start.0 as usize..end.0 as usize);
        remote
            .put(&chunk_key(TIMELINE, start, end), chunk, PutMode::CreateNew)
            .await
            .unwrap();
    }
    let (rows, _) = client.scan(1, None, None, lsns[29]).await;
    assert_eq!(rows.len(), 30);
    assert_eq!(client.value(1, "05", lsns[5]).await.as_deref(), Some("v5"));
    assert_eq!(client.value(1, "25", lsns[24]).await, None);
    // It went to the safekeeper again from where the object store left it.
    let starts = safekeeper.starts.lock().unwrap().clone();
    assert_eq!(starts.first(), Some(&Lsn::ZERO));
    assert_eq!(starts.last(), Some(&wal_start), "{starts:?}");
    // And it tells the safekeeper what is durable, so it may remove more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !safekeeper.feedback.lock().unwrap().contains(&lsns[29]) {
        assert!(Instant::now() < deadline, "no feedback for {}", lsns[29]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pageserver.stop().await;
    std::fs::remove_dir_all(&object_store).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_safekeeper_is_left_for_one_that_has_more() {
    let object_store = temp_dir("e2e-lagging");
    let mut wal = Wal::new();
    let lsns: Vec<Lsn> = (0..10)
        .map(|i| wal.commit(vec![put(1, &format!("{i:02}"), b"v")]))
        .collect();
    // The first safekeeper only ever has the first 4 records; the second has all 10.
    let stale = watch::Sender::new(Bytes::copy_from_slice(&wal.bytes[..lsns[3].0 as usize]));
    wal.publish();
    let lagging = FakeSafekeeper::start(stale.subscribe(), None).await;
    let current = FakeSafekeeper::start(wal.published.subscribe(), None).await;
    let pageserver =
        Pageserver::start(config(&object_store, vec![lagging.addr, current.addr])).await;
    let mut client = Client::connect(pageserver.addr).await;
    // It gives up on the lagging one after LAGGING_SAFEKEEPER_CHECK_MS without WAL.
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.status().await.0 < lsns[9] {
        assert!(Instant::now() < deadline, "still on the lagging safekeeper");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rows, _) = client.scan(1, None, None, lsns[9]).await;
    assert_eq!(rows.len(), 10);
    assert_eq!(lagging.starts.lock().unwrap().clone(), vec![Lsn::ZERO]);
    assert_eq!(current.starts.lock().unwrap().clone(), vec![lsns[3]]);
    pageserver.stop().await;
    std::fs::remove_dir_all(&object_store).unwrap();
}
