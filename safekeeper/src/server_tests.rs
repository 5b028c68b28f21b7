//! The whole safekeeper over TCP on loopback, driven with `safekeeper_api` messages.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ids::{Lsn, TimelineId};
use safekeeper_api::{AcceptorStatus, Request, Response, TermEntry, TermHistory};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use wal::{Op, Transaction};

use crate::limits::KEEPALIVE_INTERVAL_MS;
use crate::server::Server;
use crate::wal_storage::tests::TempDir;
use crate::Config;

/// How long a test waits for any one answer before failing.
const ANSWER_TIMEOUT_MS: u64 = 10_000;

fn record(xid: u64, value_bytes: usize) -> Bytes {
    let txn = Transaction {
        xid,
        commit_time_us: 0,
        ops: vec![Op::Put {
            table: 5,
            key: Bytes::from(xid.to_be_bytes().to_vec()),
            value: Bytes::from(vec![1u8; value_bytes]),
        }],
    };
    wal::encode_record(&txn).unwrap()
}

fn history(entries: &[(u64, u64)]) -> TermHistory {
    TermHistory(
        entries
            .iter()
            .map(|&(term, lsn)| TermEntry {
                term,
                start_lsn: Lsn(lsn),
            })
            .collect(),
    )
}

const TIMELINE: TimelineId = TimelineId([7; 16]);

struct Client {
    stream: TcpStream,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// Sends requests in one write, so they arrive together (pipelined).
    async fn send(&mut self, requests: &[Request]) {
        let mut out = BytesMut::new();
        for request in requests {
            wire::encode_frame(&request.encode(), &mut out);
        }
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next response, or `None` when the safekeeper closed the connection.
    async fn try_recv(&mut self) -> Option<Response> {
        let read = tokio::time::timeout(
            Duration::from_millis(ANSWER_TIMEOUT_MS),
            wire::read_frame(&mut self.stream),
        );
        match read.await.expect("no answer in time") {
            Ok(Some(frame)) => Some(Response::decode(&frame).unwrap()),
            Ok(None) | Err(_) => None,
        }
    }

    async fn recv(&mut self) -> Response {
        self.try_recv().await.expect("connection closed")
    }

    async fn call(&mut self, request: Request) -> Response {
        self.send(&[request]).await;
        self.recv().await
    }

    /// Opens a proposer connection for `timeline` starting at `start_lsn`; the answer to
    /// `Hello` as it came.
    async fn hello_at(
        addr: SocketAddr,
        timeline: TimelineId,
        start_lsn: Lsn,
    ) -> (Client, Response) {
        let mut client = Client::connect(addr).await;
        let answer = client
            .call(Request::Hello {
                timeline,
                start_lsn,
            })
            .await;
        (client, answer)
    }

    async fn hello(addr: SocketAddr) -> (Client, AcceptorStatus) {
        let mut client = Client::connect(addr).await;
        match client
            .call(Request::Hello {
                timeline: TIMELINE,
                start_lsn: Lsn::ZERO,
            })
            .await
        {
            Response::Status(status) => (client, status),
            other => panic!("unexpected answer to Hello: {other:?}"),
        }
    }

    /// Connects, wins `term` and is elected with the safekeeper's WAL as the agreed log.
    async fn elected(addr: SocketAddr, term: u64) -> (Client, AcceptorStatus) {
        let (mut client, status) = Client::hello(addr).await;
        match client.call(Request::RequestVote { term }).await {
            Response::Vote { granted: true, .. } => {}
            other => panic!("vote not granted: {other:?}"),
        }
        let mut entries = status.term_history.0.clone();
        entries.push(TermEntry {
            term,
            start_lsn: status.flush_lsn,
        });
        let elected = Request::Elected {
            term,
            term_history: TermHistory(entries),
            truncate_lsn: status.flush_lsn,
        };
        assert_eq!(
            client.call(elected).await,
            Response::Flushed {
                term,
                flush_lsn: status.flush_lsn
            }
        );
        (client, status)
    }
}

/// A safekeeper started with [`crate::run`] on a free loopback port.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(data_dir: &Path) -> Running {
        Running::start_with(data_dir, None).await
    }

    /// With WAL offload to a local-folder object store.
    async fn start_with(data_dir: &Path, object_store_dir: Option<&Path>) -> Running {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = Config {
            id: 1,
            listen: addr,
            data_dir: data_dir.to_path_buf(),
            object_store: object_store_dir.map(|dir| dir.display().to_string()),
        };
        let task = tokio::spawn(crate::run(config, async move {
            let _ = stopped.await;
        }));
        // Wait until it accepts connections.
        for _ in 0..500 {
            if TcpStream::connect(addr).await.is_ok() {
                return Running { addr, stop, task };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("safekeeper did not start listening on {addr}");
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Appends `records` one frame each, pipelined, each carrying `commit_lsn`; returns the
/// expected end LSN of each.
async fn pipeline_appends(
    client: &mut Client,
    term: u64,
    start: Lsn,
    commit_lsn: Lsn,
    records: &[Bytes],
) -> Vec<Lsn> {
    let mut requests = Vec::new();
    let mut ends = Vec::new();
    let mut pos = start;
    for record in records {
        requests.push(Request::Append {
            term,
            begin_lsn: pos,
            commit_lsn,
            data: record.clone(),
        });
        pos = pos.add(record.len() as u64);
        ends.push(pos);
    }
    client.send(&requests).await;
    ends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposer_flow_with_pipelined_appends_and_group_commit() {
    let dir = TempDir::new("server-flow");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(1, dir.0.clone(), None);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));

    let (mut client, status) = Client::hello(addr).await;
    assert_eq!(status, AcceptorStatus::default());
    match client.call(Request::RequestVote { term: 1 }).await {
        Response::Vote {
            granted: true,
            status,
        } => assert_eq!(status.term, 1),
        other => panic!("unexpected {other:?}"),
    }
    let elected = Request::Elected {
        term: 1,
        term_history: history(&[(1, 0)]),
        truncate_lsn: Lsn::ZERO,
    };
    assert_eq!(
        client.call(elected).await,
        Response::Flushed {
            term: 1,
            flush_lsn: Lsn::ZERO
        }
    );

    let records: Vec<Bytes> = (0..50).map(|xid| record(xid, 100)).collect();
    let ends = pipeline_appends(&mut client, 1, Lsn::ZERO, Lsn::ZERO, &records).await;
    for end in &ends {
        assert_eq!(
            client.recv().await,
            Response::Flushed {
                term: 1,
                flush_lsn: *end
            }
        );
    }
    let timeline = server.timeline(TIMELINE).await.unwrap();
    let n_syncs = timeline.acceptor.lock().await.storage().sync_count();
    assert!(
        n_syncs < records.len() as u64,
        "{n_syncs} fsyncs for {} pipelined appends",
        records.len()
    );

    // ReadWal: whole records only, cut within max_bytes but at least one.
    let end = *ends.last().unwrap();
    let record_bytes = records[0].len() as u64;
    let read = Request::ReadWal {
        start_lsn: Lsn(record_bytes),
        end_lsn: end,
        max_bytes: (record_bytes * 3 / 2) as u32,
    };
    assert_eq!(
        client.call(read).await,
        Response::Wal {
            start_lsn: Lsn(record_bytes),
            data: records[1].clone()
        }
    );
    let read = Request::ReadWal {
        start_lsn: end,
        end_lsn: Lsn(end.0 + 100),
        max_bytes: 1000,
    };
    assert_eq!(
        client.call(read).await,
        Response::Wal {
            start_lsn: end,
            data: Bytes::new()
        }
    );

    // A second Hello on the same connection is an error answer, not a crash.
    assert!(matches!(
        client
            .call(Request::Hello {
                timeline: TIMELINE,
                start_lsn: Lsn::ZERO,
            })
            .await,
        Response::Error { .. }
    ));
    stop.send(()).unwrap();
    serving.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_streams_committed_wal() {
    let dir = TempDir::new("server-replication");
    let safekeeper = Running::start(&dir.0).await;
    let addr = safekeeper.addr;

    // A pageserver subscribes once a compute created the timeline, before any WAL exists.
    let (mut proposer, _) = Client::elected(addr, 1).await;
    let mut replication = Client::connect(addr).await;
    replication
        .send(&[Request::StartReplication {
            timeline: TIMELINE,
            start_lsn: Lsn::ZERO,
        }])
        .await;

    let records: Vec<Bytes> = (0..20).map(|xid| record(xid, 300_000)).collect();
    let mut expected = Vec::new();
    for record in &records {
        expected.extend_from_slice(record);
    }
    let end = Lsn(expected.len() as u64);
    // The appends commit everything but the last record...
    let last_start = Lsn(end.0 - records[19].len() as u64);
    let ends = pipeline_appends(&mut proposer, 1, Lsn::ZERO, last_start, &records).await;
    for lsn in &ends {
        assert_eq!(
            proposer.recv().await,
            Response::Flushed {
                term: 1,
                flush_lsn: *lsn
            }
        );
    }

    let mut received = Vec::new();
    while (received.len() as u64) < last_start.0 {
        match replication.recv().await {
            Response::WalData {
                start_lsn,
                commit_lsn,
                data,
            } => {
                assert_eq!(start_lsn.0, received.len() as u64);
                assert!(data.len() <= crate::limits::REPLICATION_CHUNK_BYTES_MAX);
                assert!(
                    start_lsn.0 + data.len() as u64 <= commit_lsn.0,
                    "only committed WAL is sent"
                );
                wal::check_whole_records(&data, start_lsn).unwrap();
                received.extend_from_slice(&data);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, expected[..last_start.0 as usize]);

    // ...then an empty append commits the last one.
    let commit = Request::Append {
        term: 1,
        begin_lsn: end,
        commit_lsn: end,
        data: Bytes::new(),
    };
    assert_eq!(
        proposer.call(commit).await,
        Response::Flushed {
            term: 1,
            flush_lsn: end
        }
    );
    // A second subscriber from a record boundary in the middle, and one above the flush LSN
    // (it waits for the WAL to arrive).
    let mut from_middle = Client::connect(addr).await;
    from_middle
        .send(&[Request::StartReplication {
            timeline: TIMELINE,
            start_lsn: ends[9],
        }])
        .await;
    let mut from_future = Client::connect(addr).await;
    from_future
        .send(&[Request::StartReplication {
            timeline: TIMELINE,
            start_lsn: end,
        }])
        .await;
    while (received.len() as u64) < end.0 {
        match replication.recv().await {
            Response::WalData { data, .. } => received.extend_from_slice(&data),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, expected);
    let mut middle = Vec::new();
    while (middle.len() as u64) < end.0 - ends[9].0 {
        match from_middle.recv().await {
            Response::WalData { data, .. } => middle.extend_from_slice(&data),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(middle, expected[ends[9].0 as usize..]);

    // Idle: an empty WalData keepalive arrives.
    let started = std::time::Instant::now();
    match replication.recv().await {
        Response::WalData {
            start_lsn,
            commit_lsn,
            data,
        } => {
            assert!(data.is_empty());
            assert_eq!((start_lsn, commit_lsn), (end, end));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(3 * KEEPALIVE_INTERVAL_MS));

    let more = record(100, 10);
    let new_end = end.add(more.len() as u64);
    let append = Request::Append {
        term: 1,
        begin_lsn: end,
        commit_lsn: new_end,
        data: more.clone(),
    };
    assert_eq!(
        proposer.call(append).await,
        Response::Flushed {
            term: 1,
            flush_lsn: new_end
        }
    );
    loop {
        match from_future.recv().await {
            Response::WalData { data, .. } if data.is_empty() => continue,
            Response::WalData {
                start_lsn, data, ..
            } => {
                assert_eq!((start_lsn, data), (end, more));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    safekeeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_term_proposer_is_rejected_after_a_newer_election() {
    let dir = TempDir::new("server-fencing");
    let safekeeper = Running::start(&dir.0).await;
    let (mut old, _) = Client::elected(safekeeper.addr, 1).await;
    let first = record(1, 10);
    let end = Lsn(first.len() as u64);
    let append = Request::Append {
        term: 1,
        begin_lsn: Lsn::ZERO,
        commit_lsn: Lsn::ZERO,
        data: first,
    };
    assert_eq!(
        old.call(append).await,
        Response::Flushed {
            term: 1,
            flush_lsn: end
        }
    );

    let (mut new, status) = Client::elected(safekeeper.addr, 2).await;
    assert_eq!(status.term, 1);
    assert_eq!(status.flush_lsn, end);

    let stale = Request::Append {
        term: 1,
        begin_lsn: end,
        commit_lsn: end,
        data: record(2, 10),
    };
    assert_eq!(old.call(stale).await, Response::Rejected { term: 2 });
    let vote = Request::RequestVote { term: 2 };
    assert!(matches!(
        old.call(vote).await,
        Response::Vote { granted: false, .. }
    ));
    let second = record(3, 10);
    let new_end = end.add(second.len() as u64);
    let append = Request::Append {
        term: 2,
        begin_lsn: end,
        commit_lsn: new_end,
        data: second,
    };
    assert_eq!(
        new.call(append).await,
        Response::Flushed {
            term: 2,
            flush_lsn: new_end
        }
    );
    safekeeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_term_and_wal() {
    let dir = TempDir::new("server-restart");
    let safekeeper = Running::start(&dir.0).await;
    let (mut proposer, _) = Client::elected(safekeeper.addr, 4).await;
    let records: Vec<Bytes> = (0..5).map(|xid| record(xid, 1000)).collect();
    let mut expected = BytesMut::new();
    for record in &records {
        expected.extend_from_slice(record);
    }
    let end = Lsn(expected.len() as u64);
    let ends = pipeline_appends(&mut proposer, 4, Lsn::ZERO, end, &records).await;
    for lsn in ends {
        assert_eq!(
            proposer.recv().await,
            Response::Flushed {
                term: 4,
                flush_lsn: lsn
            }
        );
    }
    drop(proposer);
    safekeeper.stop().await;

    let safekeeper = Running::start(&dir.0).await;
    let (mut client, status) = Client::hello(safekeeper.addr).await;
    let expected_status = AcceptorStatus {
        term: 4,
        term_history: history(&[(4, 0)]),
        flush_lsn: end,
        commit_lsn: end,
    };
    assert_eq!(status, expected_status);
    let read = Request::ReadWal {
        start_lsn: Lsn::ZERO,
        end_lsn: end,
        max_bytes: 1 << 20,
    };
    assert_eq!(
        client.call(read).await,
        Response::Wal {
            start_lsn: Lsn::ZERO,
            data: expected.freeze()
        }
    );
    assert!(matches!(
        client.call(Request::RequestVote { term: 4 }).await,
        Response::Vote { granted: false, .. }
    ));
    safekeeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let dir = TempDir::new("server-bad-input");
    let safekeeper = Running::start(&dir.0).await;
    let (mut proposer, _) = Client::elected(safekeeper.addr, 1).await;

    // A first request that is neither Hello nor StartReplication.
    let mut client = Client::connect(safekeeper.addr).await;
    assert!(matches!(
        client.call(Request::RequestVote { term: 9 }).await,
        Response::Error { .. }
    ));
    assert_eq!(client.try_recv().await, None);

    // A frame with a bad checksum, a malformed message and raw garbage.
    let mut frame = BytesMut::new();
    wire::encode_frame(
        &Request::Hello {
            timeline: TIMELINE,
            start_lsn: Lsn::ZERO,
        }
        .encode(),
        &mut frame,
    );
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    let mut malformed = BytesMut::new();
    wire::encode_frame(&[200, 1, 2, 3], &mut malformed);
    for bad in [frame.to_vec(), malformed.to_vec(), vec![0xff; 64]] {
        let mut client = Client::connect(safekeeper.addr).await;
        client.stream.write_all(&bad).await.unwrap();
        assert!(matches!(
            client.try_recv().await,
            Some(Response::Error { .. })
        ));
        assert_eq!(client.try_recv().await, None);
    }
    // A bad Append on a live proposer connection is answered, and nothing else changes.
    let bad = Request::Append {
        term: 1,
        begin_lsn: Lsn::ZERO,
        commit_lsn: Lsn::ZERO,
        data: Bytes::from_static(b"junk"),
    };
    assert!(matches!(proposer.call(bad).await, Response::Error { .. }));
    let (_, status) = Client::hello(safekeeper.addr).await;
    assert_eq!((status.term, status.flush_lsn), (1, Lsn::ZERO));
    let good = record(1, 10);
    let end = Lsn(good.len() as u64);
    let append = Request::Append {
        term: 1,
        begin_lsn: Lsn::ZERO,
        commit_lsn: Lsn::ZERO,
        data: good,
    };
    assert_eq!(
        proposer.call(append).await,
        Response::Flushed {
            term: 1,
            flush_lsn: end
        }
    );
    safekeeper.stop().await;
}

/// Waits until `check` holds, polling; fails after `ANSWER_TIMEOUT_MS`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..(ANSWER_TIMEOUT_MS / 50) {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Checks a `Wal` answer without printing megabytes when it differs.
fn assert_wal(answer: Response, start: Lsn, expected: &Bytes) {
    match answer {
        Response::Wal { start_lsn, data } => {
            assert_eq!(start_lsn, start);
            assert_eq!(data.len(), expected.len(), "WAL read at {start}");
            assert!(data == expected, "WAL read at {start}: different bytes");
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

fn segment_files(timeline_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(timeline_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.len() == 16)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_wal_is_offloaded_then_removed_and_still_readable() {
    use crate::limits::SEGMENT_BYTES;
    use remote_storage::wal_objects;

    let dir = TempDir::new("server-offload");
    let object_store = dir.0.join("object-store");
    let data_dir = dir.0.join("safekeeper");
    let safekeeper = Running::start_with(&data_dir, Some(&object_store)).await;
    let (mut proposer, _) = Client::elected(safekeeper.addr, 1).await;
    // 2.5 segments of 1 MiB records, committed.
    let records: Vec<Bytes> = (0..40).map(|xid| record(xid, 1 << 20)).collect();
    let mut all = BytesMut::new();
    for r in &records {
        all.extend_from_slice(r);
    }
    let all = all.freeze();
    let end = Lsn(all.len() as u64);
    assert!(end.0 > 2 * SEGMENT_BYTES);
    let mut pos = Lsn::ZERO;
    for r in &records {
        let answer = proposer
            .call(Request::Append {
                term: 1,
                begin_lsn: pos,
                commit_lsn: pos,
                data: r.clone(),
            })
            .await;
        assert!(matches!(answer, Response::Flushed { .. }), "{answer:?}");
        pos = pos.add(r.len() as u64);
    }
    let answer = proposer
        .call(Request::Append {
            term: 1,
            begin_lsn: end,
            commit_lsn: end,
            data: Bytes::new(),
        })
        .await;
    assert!(matches!(answer, Response::Flushed { .. }), "{answer:?}");

    // Two whole segment windows are committed: both are offloaded as chunks that hold
    // exactly the WAL's bytes.
    let remote = remote_storage::RemoteStorage::local(&object_store).unwrap();
    let mut chunks = Vec::new();
    for _ in 0..(ANSWER_TIMEOUT_MS / 100) {
        chunks = wal_objects::list_chunks(&remote, TIMELINE).await.unwrap();
        if chunks.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0].start, Lsn::ZERO);
    assert_eq!(chunks[1].start, chunks[0].end);
    assert!(chunks[0].end.0 >= SEGMENT_BYTES && chunks[1].end.0 >= 2 * SEGMENT_BYTES);
    for chunk in &chunks {
        let key = wal_objects::chunk_key(TIMELINE, chunk.start, chunk.end);
        let bytes = remote.get(&key, 64 << 20).await.unwrap();
        assert!(bytes == all.slice(chunk.start.0 as usize..chunk.end.0 as usize));
    }
    // Nothing is removed until the pageserver reports it durable...
    let timeline_dir = crate::wal_storage::timeline_dir(&data_dir, TIMELINE);
    assert_eq!(segment_files(&timeline_dir).len(), 3);
    let mut feedback = Client::connect(safekeeper.addr).await;
    feedback
        .send(&[
            Request::Feedback {
                timeline: TIMELINE,
                remote_consistent_lsn: chunks[0].end,
            },
            Request::Feedback {
                timeline: TIMELINE,
                remote_consistent_lsn: chunks[1].end,
            },
        ])
        .await;
    // ...then the segments below min(offloaded, pageserver) go.
    eventually("the first two segments are removed", || {
        segment_files(&timeline_dir).len() == 1
    })
    .await;
    drop(feedback);

    // A reader that starts below the local WAL is told where it starts...
    let mut replication = Client::connect(safekeeper.addr).await;
    replication
        .send(&[Request::StartReplication {
            timeline: TIMELINE,
            start_lsn: chunks[0].end,
        }])
        .await;
    assert_eq!(
        replication.recv().await,
        Response::WalOffloaded {
            wal_start: Lsn(2 * SEGMENT_BYTES)
        }
    );
    // ...and a recovery read is served from the object store, whole records only.
    let first = records[0].len();
    let answer = proposer
        .call(Request::ReadWal {
            start_lsn: Lsn(first as u64),
            end_lsn: end,
            max_bytes: (3 * records[1].len() + 100) as u32,
        })
        .await;
    assert_wal(
        answer,
        Lsn(first as u64),
        &all.slice(first..first + 3 * records[1].len()),
    );
    // After a restart the safekeeper still knows what it removed, and serves the rest.
    drop(proposer);
    safekeeper.stop().await;
    let safekeeper = Running::start_with(&data_dir, Some(&object_store)).await;
    let (mut proposer, status) = Client::hello(safekeeper.addr).await;
    assert_eq!(status.flush_lsn, end);
    let start = chunks[1].end;
    let answer = proposer
        .call(Request::ReadWal {
            start_lsn: start,
            end_lsn: end,
            max_bytes: u32::MAX,
        })
        .await;
    assert_wal(answer, start, &all.slice(start.0 as usize..));
    safekeeper.stop().await;
}

/// A branch timeline, and where its WAL starts: inside segment 3.
const BRANCH: TimelineId = TimelineId([8; 16]);
const BRANCH_START: Lsn = Lsn(3 * crate::limits::SEGMENT_BYTES + 4_321);

fn control_file_bytes(data_dir: &Path, timeline: TimelineId) -> Vec<u8> {
    let dir = crate::wal_storage::timeline_dir(data_dir, timeline);
    std::fs::read(dir.join(crate::control_file::CONTROL_FILE_NAME)).unwrap()
}

/// Expects an `Error` whose message contains `needle`, then the connection closing.
async fn expect_error_and_close(client: &mut Client, needle: &str) {
    match client.recv().await {
        Response::Error { message } => assert!(message.contains(needle), "{message}"),
        other => panic!("expected an error about {needle:?}, got {other:?}"),
    }
    assert_eq!(client.try_recv().await, None, "the connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_created_at_a_start_lsn_serves_wal_from_there() {
    let dir = TempDir::new("server-branch");
    let safekeeper = Running::start(&dir.0).await;
    let addr = safekeeper.addr;

    // Hello creates the timeline with every LSN at its start.
    let (mut proposer, answer) = Client::hello_at(addr, BRANCH, BRANCH_START).await;
    assert_eq!(
        answer,
        Response::Status(AcceptorStatus {
            term: 0,
            term_history: TermHistory::default(),
            flush_lsn: BRANCH_START,
            commit_lsn: BRANCH_START,
        })
    );
    // The first term's history starts there, and so do the appends.
    assert!(matches!(
        proposer.call(Request::RequestVote { term: 1 }).await,
        Response::Vote { granted: true, .. }
    ));
    let elected = Request::Elected {
        term: 1,
        term_history: history(&[(1, BRANCH_START.0)]),
        truncate_lsn: BRANCH_START,
    };
    assert_eq!(
        proposer.call(elected).await,
        Response::Flushed {
            term: 1,
            flush_lsn: BRANCH_START
        }
    );
    let records: Vec<Bytes> = (0..5).map(|xid| record(xid, 1000)).collect();
    let mut expected = BytesMut::new();
    for record in &records {
        expected.extend_from_slice(record);
    }
    let expected = expected.freeze();
    let end = BRANCH_START.add(expected.len() as u64);
    let ends = pipeline_appends(&mut proposer, 1, BRANCH_START, end, &records).await;
    for lsn in ends {
        assert_eq!(
            proposer.recv().await,
            Response::Flushed {
                term: 1,
                flush_lsn: lsn
            }
        );
    }
    let read = |start_lsn: Lsn| Request::ReadWal {
        start_lsn,
        end_lsn: end,
        max_bytes: 1 << 20,
    };
    assert_wal(
        proposer.call(read(BRANCH_START)).await,
        BRANCH_START,
        &expected,
    );
    // Below the start there is no WAL: an error, not the hole in the segment file.
    for below in [
        Lsn::ZERO,
        Lsn(3 * crate::limits::SEGMENT_BYTES),
        Lsn(BRANCH_START.0 - 1),
    ] {
        match proposer.call(read(below)).await {
            Response::Error { message } => {
                assert!(
                    message.contains("the timeline's WAL starts at"),
                    "{message}"
                )
            }
            other => panic!("ReadWal at {below} answered {other:?}"),
        }
    }

    // Replication from the start streams the committed WAL; below it is refused.
    let mut replication = Client::connect(addr).await;
    replication
        .send(&[Request::StartReplication {
            timeline: BRANCH,
            start_lsn: BRANCH_START,
        }])
        .await;
    match replication.recv().await {
        Response::WalData {
            start_lsn, data, ..
        } => {
            assert_eq!(start_lsn, BRANCH_START);
            assert!(data == expected);
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut below = Client::connect(addr).await;
    below
        .send(&[Request::StartReplication {
            timeline: BRANCH,
            start_lsn: Lsn::ZERO,
        }])
        .await;
    expect_error_and_close(&mut below, "the timeline's WAL starts at").await;
    drop((proposer, replication));
    safekeeper.stop().await;

    // A restart keeps the start, the term and the WAL.
    let safekeeper = Running::start(&dir.0).await;
    let (mut proposer, answer) = Client::hello_at(safekeeper.addr, BRANCH, BRANCH_START).await;
    assert_eq!(
        answer,
        Response::Status(AcceptorStatus {
            term: 1,
            term_history: history(&[(1, BRANCH_START.0)]),
            flush_lsn: end,
            commit_lsn: end,
        })
    );
    assert_wal(
        proposer.call(read(BRANCH_START)).await,
        BRANCH_START,
        &expected,
    );
    assert!(matches!(
        proposer.call(read(Lsn::ZERO)).await,
        Response::Error { .. }
    ));
    // A Hello whose start is above the timeline's WAL is refused, and changes nothing.
    let control_before = control_file_bytes(&dir.0, BRANCH);
    let (mut refused, answer) = Client::hello_at(safekeeper.addr, BRANCH, end.add(1)).await;
    match answer {
        Response::Error { message } => assert!(message.contains("ends at"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(refused.try_recv().await, None, "the connection is closed");
    assert_eq!(control_file_bytes(&dir.0, BRANCH), control_before);
    safekeeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_disagrees_on_the_start_is_refused_and_changes_nothing() {
    let dir = TempDir::new("server-branch-mismatch");
    let safekeeper = Running::start(&dir.0).await;
    let (_, answer) = Client::hello_at(safekeeper.addr, BRANCH, BRANCH_START).await;
    assert!(matches!(answer, Response::Status(_)), "{answer:?}");
    let control_before = control_file_bytes(&dir.0, BRANCH);
    // No WAL of its own yet: another start, lower or higher, is a disagreement.
    for other in [Lsn::ZERO, Lsn(BRANCH_START.0 - 1), BRANCH_START.add(1)] {
        let (mut client, answer) = Client::hello_at(safekeeper.addr, BRANCH, other).await;
        match answer {
            Response::Error { message } => {
                assert!(message.contains(&other.to_string()), "{message}")
            }
            answer => panic!("Hello at {other} answered {answer:?}"),
        }
        assert_eq!(client.try_recv().await, None, "the connection is closed");
    }
    assert_eq!(control_file_bytes(&dir.0, BRANCH), control_before);
    let (_, answer) = Client::hello_at(safekeeper.addr, BRANCH, BRANCH_START).await;
    match answer {
        Response::Status(status) => assert_eq!(
            (status.term, status.flush_lsn, status.commit_lsn),
            (0, BRANCH_START, BRANCH_START)
        ),
        other => panic!("unexpected {other:?}"),
    }
    safekeeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hello_creates_a_timeline() {
    let dir = TempDir::new("server-unknown");
    let safekeeper = Running::start(&dir.0).await;
    let addr = safekeeper.addr;
    let unknown = "is not known to safekeeper 1; a compute creates it";
    let requests = [
        Request::StartReplication {
            timeline: BRANCH,
            start_lsn: BRANCH_START,
        },
        Request::Feedback {
            timeline: BRANCH,
            remote_consistent_lsn: BRANCH_START,
        },
        Request::TimelineStatus { timeline: BRANCH },
    ];
    for request in &requests {
        let mut client = Client::connect(addr).await;
        client.send(std::slice::from_ref(request)).await;
        expect_error_and_close(&mut client, unknown).await;
    }
    let timeline_dir = crate::wal_storage::timeline_dir(&dir.0, BRANCH);
    assert!(!timeline_dir.exists(), "no timeline folder appears");
    // Nor after a restart.
    safekeeper.stop().await;
    let safekeeper = Running::start(&dir.0).await;
    let addr = safekeeper.addr;
    let mut client = Client::connect(addr).await;
    client.send(&requests[..1]).await;
    expect_error_and_close(&mut client, unknown).await;
    assert!(!timeline_dir.exists());

    // A compute's Hello creates it; then the pageserver's requests are served.
    let (_proposer, answer) = Client::hello_at(addr, BRANCH, BRANCH_START).await;
    assert!(matches!(answer, Response::Status(_)), "{answer:?}");
    assert!(timeline_dir.exists());
    let mut probe = Client::connect(addr).await;
    match probe
        .call(Request::TimelineStatus { timeline: BRANCH })
        .await
    {
        Response::Status(status) => assert_eq!(status.flush_lsn, BRANCH_START),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(probe.try_recv().await, None, "a probe is one request");
    let mut replication = Client::connect(addr).await;
    replication.send(&requests[..1]).await;
    // Nothing committed past the start: a keepalive within a second or so.
    assert_eq!(
        replication.recv().await,
        Response::WalData {
            start_lsn: BRANCH_START,
            commit_lsn: BRANCH_START,
            data: Bytes::new()
        }
    );
    safekeeper.stop().await;
}

/// Offload on a timeline that starts just below a segment boundary: the first chunk starts
/// at the timeline's start (never below it), the segment holding the start is removed once
/// the horizon passes it, and a read at the start is then served from the object store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_offloads_from_its_start() {
    use crate::limits::SEGMENT_BYTES;
    use remote_storage::wal_objects;

    let dir = TempDir::new("server-branch-offload");
    let object_store = dir.0.join("object-store");
    let data_dir = dir.0.join("safekeeper");
    let safekeeper = Running::start_with(&data_dir, Some(&object_store)).await;
    let start = Lsn(SEGMENT_BYTES - 1_000);
    let (mut proposer, answer) = Client::hello_at(safekeeper.addr, BRANCH, start).await;
    assert!(matches!(answer, Response::Status(_)), "{answer:?}");
    assert!(matches!(
        proposer.call(Request::RequestVote { term: 1 }).await,
        Response::Vote { granted: true, .. }
    ));
    let elected = Request::Elected {
        term: 1,
        term_history: history(&[(1, start.0)]),
        truncate_lsn: start,
    };
    assert!(matches!(
        proposer.call(elected).await,
        Response::Flushed { .. }
    ));
    // Records from just below the segment boundary to well past it, all committed.
    let records: Vec<Bytes> = (0..3).map(|xid| record(xid, 300_000)).collect();
    let mut all = BytesMut::new();
    for r in &records {
        all.extend_from_slice(r);
    }
    let all = all.freeze();
    let end = start.add(all.len() as u64);
    for lsn in pipeline_appends(&mut proposer, 1, start, end, &records).await {
        assert_eq!(
            proposer.recv().await,
            Response::Flushed {
                term: 1,
                flush_lsn: lsn
            }
        );
    }
    let remote = remote_storage::RemoteStorage::local(&object_store).unwrap();
    let mut chunks = Vec::new();
    for _ in 0..(ANSWER_TIMEOUT_MS / 100) {
        chunks = wal_objects::list_chunks(&remote, BRANCH).await.unwrap();
        if !chunks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    let first_end = start.add(records[0].len() as u64);
    assert_eq!((chunks[0].start, chunks[0].end), (start, first_end));
    let key = wal_objects::chunk_key(BRANCH, start, first_end);
    assert!(remote.get(&key, 1 << 20).await.unwrap() == records[0]);

    // Once the pageserver reports it durable, segment 0 (holding the start) goes.
    let timeline_dir = crate::wal_storage::timeline_dir(&data_dir, BRANCH);
    assert_eq!(segment_files(&timeline_dir).len(), 2);
    let mut feedback = Client::connect(safekeeper.addr).await;
    feedback
        .send(&[Request::Feedback {
            timeline: BRANCH,
            remote_consistent_lsn: end,
        }])
        .await;
    eventually("segment 0 is removed", || {
        segment_files(&timeline_dir).len() == 1
    })
    .await;
    drop(feedback);
    // Replication at the start is now told to read the object store; a recovery read at the
    // start is served from it; below the start is still no WAL at all.
    let mut replication = Client::connect(safekeeper.addr).await;
    replication
        .send(&[Request::StartReplication {
            timeline: BRANCH,
            start_lsn: start,
        }])
        .await;
    assert_eq!(
        replication.recv().await,
        Response::WalOffloaded {
            wal_start: Lsn(SEGMENT_BYTES)
        }
    );
    let answer = proposer
        .call(Request::ReadWal {
            start_lsn: start,
            end_lsn: end,
            max_bytes: 1,
        })
        .await;
    assert_wal(answer, start, &records[0]);
    assert!(matches!(
        proposer
            .call(Request::ReadWal {
                start_lsn: Lsn(start.0 - 1),
                end_lsn: end,
                max_bytes: 1,
            })
            .await,
        Response::Error { .. }
    ));
    safekeeper.stop().await;
}
