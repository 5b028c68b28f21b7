//! The network side: a TCP accept loop, the shared timelines, and the two kinds of
//! connection.
//!
//! ```text
//!                 Hello ──▶ proposer connection ──┐ (requests in order; pipelined
//!  TCP accept ──▶                                 │  Appends in the read buffer share
//!  (first frame)  StartReplication ──▶ replication│  one fsync)
//!                 Feedback ──▶ feedback (pageserver's durable LSN; no answers)
//!                 TimelineStatus ──▶ Status, close│
//!                 anything else ──▶ Error, close  ▼
//!                                     Timeline { Mutex<Acceptor<WalStorage>>, watch<commit_lsn> }
//!                                                 │ commit_lsn advances
//!                  pageserver ◀── WalData ◀───────┘ (whole records <= commit, 1 MiB chunks,
//!                                                    empty keepalive every second when idle)
//! ```
//!
//! Timelines found on disk are opened at start-up; only a `Hello` creates one, with its WAL
//! starting at the `start_lsn` it names. `StartReplication`, `Feedback` and `TimelineStatus`
//! for a timeline this safekeeper does not have are answered with an `Error` that says so
//! (the pageserver retries) and create nothing. Timelines are shared by all connections. The
//! acceptor's blocking file I/O runs on tokio's blocking pool while the connection holds the
//! timeline's lock. An error on a connection is logged, answered with `Response::Error` if
//! the peer still listens, and closes that connection only.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ids::{Lsn, TimelineId};
use remote_storage::RemoteStorage;
use safekeeper_api::{Request, Response};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::acceptor::{Acceptor, Append, ProposerSession};
use crate::error::{Result, SafekeeperError};
use crate::limits::{
    ACCEPT_RETRY_DELAY_MS, CONNECTIONS_MAX, GROUP_COMMIT_APPENDS_MAX, GROUP_COMMIT_BYTES_MAX,
    KEEPALIVE_INTERVAL_MS, READ_BUFFER_BYTES, READ_WAL_BYTES_MAX, REPLICATION_CHUNK_BYTES_MAX,
    RESPONSE_WRITE_TIMEOUT_MS, TIMELINES_MAX,
};
use crate::wal_backup;
use crate::wal_storage::WalStorage;

/// How long the farewell `Error` response to a failing connection may take.
const FAREWELL_WRITE_TIMEOUT_MS: u64 = 1_000;

type Reader = BufReader<OwnedReadHalf>;

/// One timeline's acceptor, shared by its connections.
pub(crate) struct Timeline {
    pub(crate) id: TimelineId,
    pub(crate) acceptor: Arc<Mutex<Acceptor<WalStorage>>>,
    /// The acceptor's commit LSN, for replication streams to wait on.
    commit_lsn_tx: watch::Sender<Lsn>,
}

impl Timeline {
    /// Runs `f` on the acceptor on a blocking thread, holding the timeline's lock, and
    /// publishes the commit LSN it leaves.
    pub(crate) async fn with_acceptor<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        F: FnOnce(&mut Acceptor<WalStorage>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let mut guard = self.acceptor.clone().lock_owned().await;
        let timeline = self.clone();
        tokio::task::spawn_blocking(move || {
            let value = f(&mut guard);
            let commit_lsn = guard.commit_lsn();
            timeline.commit_lsn_tx.send_if_modified(|published| {
                let advanced = commit_lsn > *published;
                *published = commit_lsn.max(*published);
                advanced
            });
            value
        })
        .await
        .map_err(|e| {
            SafekeeperError::Internal(format!("acceptor task of timeline {} failed: {e}", self.id))
        })
    }
}

/// The state shared by every connection of one safekeeper.
pub(crate) struct Server {
    id: u32,
    data_dir: PathBuf,
    /// Where WAL is offloaded to, if anywhere.
    remote: Option<RemoteStorage>,
    timelines: Mutex<HashMap<TimelineId, Arc<Timeline>>>,
    /// One WAL offload task per open timeline (with `remote`).
    backup_tasks: std::sync::Mutex<JoinSet<()>>,
}

impl Server {
    pub(crate) fn new(id: u32, data_dir: PathBuf, remote: Option<RemoteStorage>) -> Arc<Server> {
        Arc::new(Server {
            id,
            data_dir,
            remote,
            timelines: Mutex::new(HashMap::new()),
            backup_tasks: std::sync::Mutex::new(JoinSet::new()),
        })
    }

    /// Opens every timeline found on disk, so their WAL offload runs before anyone connects.
    async fn open_existing_timelines(&self) {
        let dir = self.data_dir.join("timelines");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<TimelineId>().ok())
            else {
                continue;
            };
            match self.timeline(id).await {
                Ok(_) => {}
                Err(SafekeeperError::UnknownTimeline { .. }) => {
                    info!(timeline = %id, "ignoring a timeline folder whose creation did not finish")
                }
                Err(e) => warn!(timeline = %id, "cannot open timeline: {e}"),
            }
        }
    }

    /// The timeline `id` if this safekeeper has it (opened from disk on first use);
    /// [`SafekeeperError::UnknownTimeline`] if not. Creates nothing.
    pub(crate) async fn timeline(&self, id: TimelineId) -> Result<Arc<Timeline>> {
        self.timeline_or_create(id, None).await
    }

    /// The timeline `id`, opened from disk on first use, or, with `create_at`, created with
    /// its WAL starting there if this safekeeper does not have it. Concurrent callers wait
    /// for one another, so a timeline is created once.
    pub(crate) async fn timeline_or_create(
        &self,
        id: TimelineId,
        create_at: Option<Lsn>,
    ) -> Result<Arc<Timeline>> {
        let mut timelines = self.timelines.lock().await;
        if let Some(timeline) = timelines.get(&id) {
            return Ok(timeline.clone());
        }
        if timelines.len() >= TIMELINES_MAX {
            return Err(SafekeeperError::Protocol(format!(
                "safekeeper {} already serves {TIMELINES_MAX} timelines",
                self.id
            )));
        }
        let data_dir = self.data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let storage = match WalStorage::open_existing(&data_dir, id)? {
                Some(storage) => storage,
                None => match create_at {
                    Some(start_lsn) => WalStorage::create(&data_dir, id, start_lsn)?,
                    None => return Ok(None),
                },
            };
            Acceptor::open(storage).map(Some)
        })
        .await
        .map_err(|e| SafekeeperError::Internal(format!("opening timeline {id}: {e}")))?
        .map_err(|e| match e {
            SafekeeperError::Corrupt(reason) => {
                SafekeeperError::Corrupt(format!("timeline {id} cannot be served: {reason}"))
            }
            other => other,
        })?;
        let Some(acceptor) = opened else {
            return Err(SafekeeperError::UnknownTimeline {
                timeline: id,
                safekeeper: self.id,
            });
        };
        info!(timeline = %id, term = acceptor.term(), start_lsn = %acceptor.timeline_start_lsn(), flush_lsn = %acceptor.flush_lsn(), "timeline opened");
        let (commit_lsn_tx, _) = watch::channel(acceptor.commit_lsn());
        let timeline = Arc::new(Timeline {
            id,
            acceptor: Arc::new(Mutex::new(acceptor)),
            commit_lsn_tx,
        });
        timelines.insert(id, timeline.clone());
        if let Some(remote) = &self.remote {
            self.backup_tasks
                .lock()
                .expect("backup task lock")
                .spawn(wal_backup::run(timeline.clone(), remote.clone(), self.id));
        }
        Ok(timeline)
    }

    /// Accepts connections until `shutdown` resolves, then ends them and checkpoints every
    /// timeline (persisting its commit LSN).
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        self.open_existing_timelines().await;
        let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            warn!(%peer, "refusing a connection: {CONNECTIONS_MAX} connections already open");
                            continue;
                        };
                        let server = self.clone();
                        connections.spawn(async move {
                            let _permit = permit;
                            serve_connection(server, stream, peer).await;
                        });
                    }
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
                    }
                },
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = joined {
                        warn!("connection task failed: {e}");
                    }
                }
            }
        }
        drop(listener);
        // A connection cancelled in the middle of an acceptor call leaves that call running
        // to completion on its blocking thread, holding the timeline lock: the checkpoint
        // below waits for it.
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        let mut backup_tasks =
            std::mem::take(&mut *self.backup_tasks.lock().expect("backup task lock"));
        backup_tasks.abort_all();
        while backup_tasks.join_next().await.is_some() {}
        let timelines: Vec<Arc<Timeline>> = self.timelines.lock().await.values().cloned().collect();
        for timeline in timelines {
            match timeline
                .with_acceptor(|acceptor| acceptor.checkpoint())
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(e) => {
                    warn!(timeline = %timeline.id, "checkpoint at shutdown failed: {e}")
                }
            }
        }
        info!("safekeeper {} stopped", self.id);
    }
}

async fn serve_connection(server: Arc<Server>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (read_half, mut writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    debug!(%peer, "connection opened");
    match handle_connection(&server, &mut reader, &mut writer).await {
        Ok(()) => debug!(%peer, "connection closed"),
        // The pageserver asks again until a compute has created the timeline: not a warning.
        Err(e @ SafekeeperError::UnknownTimeline { .. }) => {
            debug!(%peer, "closing connection: {e}");
            let farewell = Response::Error {
                message: e.to_string(),
            };
            let _ = write_responses(&mut writer, &[farewell], FAREWELL_WRITE_TIMEOUT_MS).await;
        }
        Err(e) => {
            warn!(%peer, "closing connection: {e}");
            let farewell = Response::Error {
                message: e.to_string(),
            };
            let _ = write_responses(&mut writer, &[farewell], FAREWELL_WRITE_TIMEOUT_MS).await;
        }
    }
}

async fn read_request(reader: &mut Reader) -> Result<Option<Request>> {
    match wire::read_frame(reader).await? {
        None => Ok(None),
        Some(frame) => Ok(Some(Request::decode(&frame)?)),
    }
}

/// Whether a whole frame is already in `buffered` (so reading it will not wait).
fn frame_is_buffered(buffered: &[u8]) -> bool {
    if buffered.len() < 8 {
        return false;
    }
    let len = u32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]) as usize;
    len <= wire::FRAME_BYTES_MAX && buffered.len() >= 8 + len
}

async fn write_responses(
    writer: &mut OwnedWriteHalf,
    responses: &[Response],
    timeout_ms: u64,
) -> Result<()> {
    let mut out = BytesMut::new();
    for response in responses {
        wire::encode_frame(&response.encode(), &mut out);
    }
    let write = async {
        writer.write_all(&out).await?;
        writer.flush().await
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), write).await {
        Ok(result) => result.map_err(|e| SafekeeperError::Wire(e.into())),
        Err(_) => Err(SafekeeperError::Protocol(format!(
            "peer did not take our response within {timeout_ms} ms"
        ))),
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "Hello",
        Request::RequestVote { .. } => "RequestVote",
        Request::Elected { .. } => "Elected",
        Request::Append { .. } => "Append",
        Request::ReadWal { .. } => "ReadWal",
        Request::StartReplication { .. } => "StartReplication",
        Request::Feedback { .. } => "Feedback",
        Request::TimelineStatus { .. } => "TimelineStatus",
    }
}

async fn handle_connection(
    server: &Server,
    reader: &mut Reader,
    writer: &mut OwnedWriteHalf,
) -> Result<()> {
    let Some(first) = read_request(reader).await? else {
        return Ok(());
    };
    match first {
        Request::Hello {
            timeline,
            start_lsn,
        } => {
            let timeline = server.timeline_or_create(timeline, Some(start_lsn)).await?;
            // A proposer that disagrees on where the timeline starts gets an Error and the
            // connection ends: it changed nothing.
            let hello = Request::Hello {
                timeline: timeline.id,
                start_lsn,
            };
            let answer = timeline
                .with_acceptor(move |acceptor| {
                    acceptor.handle(&mut ProposerSession::default(), hello)
                })
                .await??;
            let accepted = matches!(answer, Response::Status(_));
            if !accepted {
                info!(timeline = %timeline.id, "refusing a proposer: {answer:?}");
            }
            write_responses(writer, &[answer], RESPONSE_WRITE_TIMEOUT_MS).await?;
            if !accepted {
                return Ok(());
            }
            serve_proposer(server, &timeline, reader, writer).await
        }
        Request::TimelineStatus { timeline } => {
            let timeline = server.timeline(timeline).await?;
            let status = timeline.with_acceptor(|acceptor| acceptor.status()).await?;
            write_responses(
                writer,
                &[Response::Status(status)],
                RESPONSE_WRITE_TIMEOUT_MS,
            )
            .await
        }
        Request::StartReplication {
            timeline,
            start_lsn,
        } => {
            let timeline = server.timeline(timeline).await?;
            info!(timeline = %timeline.id, %start_lsn, "replication started");
            serve_replication(&timeline, start_lsn, reader, writer).await
        }
        Request::Feedback {
            timeline,
            remote_consistent_lsn,
        } => serve_feedback(server, timeline, remote_consistent_lsn, reader).await,
        other => Err(SafekeeperError::Protocol(format!(
            "a connection must start with Hello, StartReplication, Feedback or TimelineStatus, not {}",
            request_name(&other)
        ))),
    }
}

/// Answers a proposer's requests in order until it disconnects.
async fn serve_proposer(
    server: &Server,
    timeline: &Arc<Timeline>,
    reader: &mut Reader,
    writer: &mut OwnedWriteHalf,
) -> Result<()> {
    let mut session = ProposerSession::default();
    // A request read while gathering a group of appends, to handle next.
    let mut next_request: Option<Request> = None;
    loop {
        let request = match next_request.take() {
            Some(request) => request,
            None => match read_request(reader).await? {
                Some(request) => request,
                None => return Ok(()),
            },
        };
        let responses = match request {
            Request::Append {
                term,
                begin_lsn,
                commit_lsn,
                data,
            } => {
                let mut batch_bytes = data.len();
                let mut appends = vec![Append {
                    term,
                    begin_lsn,
                    commit_lsn,
                    data,
                }];
                // Group commit: take the appends that already wait in the read buffer.
                while appends.len() < GROUP_COMMIT_APPENDS_MAX
                    && batch_bytes < GROUP_COMMIT_BYTES_MAX
                    && frame_is_buffered(reader.buffer())
                {
                    match read_request(reader).await? {
                        Some(Request::Append {
                            term,
                            begin_lsn,
                            commit_lsn,
                            data,
                        }) => {
                            batch_bytes += data.len();
                            appends.push(Append {
                                term,
                                begin_lsn,
                                commit_lsn,
                                data,
                            });
                        }
                        Some(other) => {
                            next_request = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                let (responses, updated) = timeline
                    .with_acceptor(move |acceptor| {
                        let mut session = session;
                        (acceptor.handle_appends(&mut session, appends), session)
                    })
                    .await?;
                session = updated;
                responses?
            }
            Request::ReadWal {
                start_lsn,
                end_lsn,
                max_bytes,
            } => vec![read_wal(server, timeline, start_lsn, end_lsn, max_bytes).await],
            Request::Hello { .. }
            | Request::StartReplication { .. }
            | Request::Feedback { .. }
            | Request::TimelineStatus { .. } => {
                vec![Response::Error {
                    message: format!(
                        "{} is only allowed as a connection's first request",
                        request_name(&request)
                    ),
                }]
            }
            request => {
                let (response, updated) = timeline
                    .with_acceptor(move |acceptor| {
                        let mut session = session;
                        (acceptor.handle(&mut session, request), session)
                    })
                    .await?;
                session = updated;
                vec![response?]
            }
        };
        write_responses(writer, &responses, RESPONSE_WRITE_TIMEOUT_MS).await?;
    }
}

/// Answers a recovery read: from local WAL, or from the object store when the start was
/// offloaded and removed here.
async fn read_wal(
    server: &Server,
    timeline: &Arc<Timeline>,
    start_lsn: Lsn,
    end_lsn: Lsn,
    max_bytes: u32,
) -> Response {
    let local = timeline
        .with_acceptor(move |acceptor| acceptor.read_wal(start_lsn, end_lsn, max_bytes))
        .await
        .and_then(|read| read);
    let result = match (local, &server.remote) {
        (Err(SafekeeperError::WalOffloaded { .. }), Some(remote)) => {
            let flush_lsn = timeline
                .with_acceptor(|acceptor| acceptor.flush_lsn())
                .await
                .unwrap_or(Lsn::ZERO);
            let max_bytes = (max_bytes as usize).min(READ_WAL_BYTES_MAX);
            wal_backup::read_offloaded(
                remote,
                timeline.id,
                start_lsn,
                end_lsn.min(flush_lsn),
                max_bytes,
            )
            .await
        }
        (local, _) => local,
    };
    match result {
        Ok(data) => Response::Wal { start_lsn, data },
        Err(e) => Response::Error {
            message: format!("cannot read WAL at {start_lsn}: {e}"),
        },
    }
}

/// Takes a pageserver's durable LSNs until it disconnects.
async fn serve_feedback(
    server: &Server,
    timeline: TimelineId,
    remote_consistent_lsn: Lsn,
    reader: &mut Reader,
) -> Result<()> {
    let timeline = server.timeline(timeline).await?;
    let mut lsn = remote_consistent_lsn;
    loop {
        timeline
            .with_acceptor(move |acceptor| acceptor.note_remote_consistent_lsn(lsn))
            .await?;
        match read_request(reader).await? {
            None => return Ok(()),
            Some(Request::Feedback {
                timeline: id,
                remote_consistent_lsn,
            }) if id == timeline.id => lsn = remote_consistent_lsn,
            Some(other) => {
                return Err(SafekeeperError::Protocol(format!(
                    "{} on a feedback connection of timeline {}",
                    request_name(&other),
                    timeline.id
                )))
            }
        }
    }
}

/// Streams committed WAL from `start_lsn` until the peer disconnects (the peer sends
/// nothing; reading only notices it leaving).
async fn serve_replication(
    timeline: &Arc<Timeline>,
    start_lsn: Lsn,
    reader: &mut Reader,
    writer: &mut OwnedWriteHalf,
) -> Result<()> {
    let peer_leaves = async {
        match read_request(reader).await? {
            None => Ok(()),
            Some(other) => Err(SafekeeperError::Protocol(format!(
                "{} on a replication connection",
                request_name(&other)
            ))),
        }
    };
    tokio::select! {
        result = peer_leaves => result,
        result = send_wal(timeline, start_lsn, writer) => result,
    }
}

async fn send_wal(
    timeline: &Arc<Timeline>,
    start_lsn: Lsn,
    writer: &mut OwnedWriteHalf,
) -> Result<()> {
    let mut commit_lsn_rx = timeline.commit_lsn_tx.subscribe();
    let mut position = start_lsn;
    loop {
        let commit_lsn = *commit_lsn_rx.borrow_and_update();
        if position < commit_lsn {
            let read = timeline
                .with_acceptor(move |acceptor| {
                    acceptor.read_committed(position, REPLICATION_CHUNK_BYTES_MAX)
                })
                .await?;
            let (data, commit_lsn) = match read {
                Ok(read) => read,
                Err(SafekeeperError::WalOffloaded { wal_start, .. }) => {
                    info!(timeline = %timeline.id, "replication at {position}: WAL below {wal_start} is offloaded");
                    let offloaded = Response::WalOffloaded { wal_start };
                    return write_responses(writer, &[offloaded], RESPONSE_WRITE_TIMEOUT_MS).await;
                }
                Err(e) => return Err(e),
            };
            if !data.is_empty() {
                let n_bytes = data.len() as u64;
                let wal_data = Response::WalData {
                    start_lsn: position,
                    commit_lsn,
                    data,
                };
                write_responses(writer, &[wal_data], RESPONSE_WRITE_TIMEOUT_MS).await?;
                position = position.add(n_bytes);
                continue;
            }
            // The record at `position` ends past the commit LSN: wait for it to commit.
        }
        tokio::select! {
            changed = commit_lsn_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(KEEPALIVE_INTERVAL_MS)) => {
                let keepalive = Response::WalData { start_lsn: position, commit_lsn, data: Bytes::new() };
                write_responses(writer, &[keepalive], RESPONSE_WRITE_TIMEOUT_MS).await?;
            }
        }
    }
}
