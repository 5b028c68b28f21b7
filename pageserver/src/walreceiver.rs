//! The WAL receiver: follows a timeline's committed WAL on the safekeepers and ingests it.
//!
//! ```text
//!  connect(safekeeper i) ─▶ StartReplication { timeline, start_lsn: last_record_lsn }
//!        ◀─ WalData { start_lsn, commit_lsn, data } ... (empty data: keepalive, every 1 s)
//!  data ─▶ RecordSplitter ─▶ (end LSN, Transaction) ─▶ Timeline::ingest
//!        ◀─ WalOffloaded { wal_start }: read offloaded chunks (wal/<timeline>/...) from the
//!           object store up to wal_start, ingest them, reconnect
//!  error, end of stream, or no frame for 5 s ─▶ pause (100 ms doubling to 2 s) ─▶ safekeeper i+1
//!  no WAL for 5 s while another safekeeper (asked with TimelineStatus) has committed more ─▶ that one
//! ```
//!
//! A safekeeper that does not have the timeline yet (only a compute's `Hello` creates it)
//! answers `Error`; like any error, that is retried with the same backoff, on the next
//! safekeeper, until a compute has created the timeline.
//!
//! [`send_feedback`] runs beside it: whenever more of the timeline is durable in the object
//! store, it tells every safekeeper (`Feedback`, on a connection of its own to each), which
//! is what lets them remove WAL: they keep everything above the lowest of what is offloaded
//! and what the pageserver reported durable.
//!
//! Each connection starts from the last applied LSN with a fresh splitter, so a record cut by
//! a broken connection is simply read again whole. The WAL bytes must continue exactly where
//! the previous ones ended; a gap or overlap is a protocol error that ends the connection.
//! Safekeepers send only committed WAL, so every whole record is applied at once.
//!
//! Does network I/O; runs until cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ids::Lsn;
use remote_storage::wal_objects;
use safekeeper_api::{AcceptorStatus, Request, Response};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::error::{PageserverError, Result};
use crate::limits::{
    FEEDBACK_INTERVAL_MS, LAGGING_SAFEKEEPER_CHECK_MS, RECONNECT_BACKOFF_MAX_MS,
    RECONNECT_BACKOFF_MIN_MS, SAFEKEEPER_CONNECT_TIMEOUT_MS, WAL_RECEIVER_IDLE_TIMEOUT_MS,
};
use crate::timeline::Timeline;

/// Runs until `cancel` turns true (or its sender is dropped).
pub async fn run(
    timeline: Arc<Timeline>,
    safekeepers: Vec<SocketAddr>,
    mut cancel: watch::Receiver<bool>,
) {
    if safekeepers.is_empty() {
        tracing::warn!(
            "no safekeepers configured: timeline {} will not ingest WAL",
            timeline.timeline_id()
        );
        let _ = cancel.wait_for(|cancelled| *cancelled).await;
        return;
    }
    let backoff_min = Duration::from_millis(RECONNECT_BACKOFF_MIN_MS);
    let backoff_max = Duration::from_millis(RECONNECT_BACKOFF_MAX_MS);
    let mut backoff = backoff_min;
    let mut safekeeper_idx = 0;
    loop {
        let addr = safekeepers[safekeeper_idx % safekeepers.len()];
        let mut made_progress = false;
        let mut ahead: Option<usize> = None;
        let result = tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => return,
            result = stream_from(&timeline, &safekeepers, addr, &mut made_progress, &mut ahead) => result,
        };
        let Err(err) = result;
        tracing::warn!(
            "WAL receiver for timeline {} at LSN {}: safekeeper {addr}: {err}",
            timeline.timeline_id(),
            timeline.last_record_lsn()
        );
        if made_progress {
            backoff = backoff_min;
        }
        tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(backoff_max);
        safekeeper_idx = match ahead {
            Some(idx) => idx,
            None => safekeeper_idx.wrapping_add(1),
        };
    }
}

/// Streams from one safekeeper until something goes wrong; never returns `Ok`.
/// `made_progress` is set once the safekeeper has sent WAL. When it has sent nothing for
/// `LAGGING_SAFEKEEPER_CHECK_MS` while another safekeeper has committed WAL beyond our
/// position (it lags: cut off from the primary, or refilling after a repair), it gives up
/// and sets `ahead` to that other safekeeper.
async fn stream_from(
    timeline: &Timeline,
    safekeepers: &[SocketAddr],
    addr: SocketAddr,
    made_progress: &mut bool,
    ahead: &mut Option<usize>,
) -> Result<std::convert::Infallible> {
    let lag_check = Duration::from_millis(LAGGING_SAFEKEEPER_CHECK_MS);
    let mut last_progress = Instant::now();
    let connect_timeout = Duration::from_millis(SAFEKEEPER_CONNECT_TIMEOUT_MS);
    let idle_timeout = Duration::from_millis(WAL_RECEIVER_IDLE_TIMEOUT_MS);
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            PageserverError::Replication(format!(
                "connect timed out after {} ms",
                connect_timeout.as_millis()
            ))
        })??;
    stream.set_nodelay(true)?;
    let start_lsn = timeline.last_record_lsn();
    let request = Request::StartReplication {
        timeline: timeline.timeline_id(),
        start_lsn,
    };
    wire::write_frame(&mut stream, &request.encode()).await?;
    tracing::info!(
        "WAL receiver for timeline {}: streaming from {addr} at LSN {start_lsn}",
        timeline.timeline_id()
    );

    let mut splitter = wal::RecordSplitter::new(start_lsn);
    // Where the next WAL bytes must start.
    let mut next_lsn = start_lsn;
    loop {
        let frame = tokio::time::timeout(idle_timeout, wire::read_frame(&mut stream))
            .await
            .map_err(|_| {
                PageserverError::Replication(format!(
                    "no frame for {} ms",
                    idle_timeout.as_millis()
                ))
            })??
            .ok_or_else(|| {
                PageserverError::Replication("the safekeeper closed the connection".into())
            })?;
        match Response::decode(&frame)? {
            Response::WalOffloaded { wal_start } => {
                ingest_offloaded(timeline, wal_start).await?;
                *made_progress = true;
                return Err(PageserverError::Replication(format!(
                    "WAL below {wal_start} was read from the object store; reconnecting"
                )));
            }
            Response::WalData {
                start_lsn: data_lsn,
                commit_lsn: _,
                data,
            } => {
                if data.is_empty() {
                    if last_progress.elapsed() >= lag_check {
                        last_progress = Instant::now();
                        if let Some((idx, commit_lsn)) =
                            most_advanced(timeline, safekeepers, addr, next_lsn).await
                        {
                            *ahead = Some(idx);
                            return Err(PageserverError::Replication(format!(
                                "sent no WAL past {next_lsn} for {} ms while safekeeper {} has committed up to {commit_lsn}",
                                lag_check.as_millis(),
                                safekeepers[idx]
                            )));
                        }
                    }
                    continue;
                }
                last_progress = Instant::now();
                if data_lsn != next_lsn {
                    return Err(PageserverError::Replication(format!(
                        "WAL data at LSN {data_lsn}, expected it at LSN {next_lsn}"
                    )));
                }
                next_lsn = next_lsn.add(data.len() as u64);
                *made_progress = true;
                for (end_lsn, txn) in splitter.push(&data)? {
                    timeline.ingest(end_lsn, txn)?;
                }
            }
            Response::Error { message } => {
                return Err(PageserverError::Replication(format!(
                    "the safekeeper refused: {message}"
                )));
            }
            other => {
                return Err(PageserverError::Replication(format!(
                    "unexpected message {other:?}"
                )));
            }
        }
    }
}

/// The other safekeeper with the highest commit LSN above `position`, if any answers.
async fn most_advanced(
    timeline: &Timeline,
    safekeepers: &[SocketAddr],
    current: SocketAddr,
    position: Lsn,
) -> Option<(usize, Lsn)> {
    let probes = safekeepers
        .iter()
        .enumerate()
        .filter(|(_, addr)| **addr != current)
        .map(|(idx, addr)| async move {
            let commit_lsn = probe_commit_lsn(timeline, *addr).await?;
            Some((idx, commit_lsn))
        });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .filter(|(_, commit_lsn)| *commit_lsn > position)
        .max_by_key(|(_, commit_lsn)| *commit_lsn)
}

/// A safekeeper's commit LSN, from the `Status` that answers `TimelineStatus` (which changes
/// nothing on the safekeeper and never creates the timeline); `None` if it does not have the
/// timeline or does not answer in time.
async fn probe_commit_lsn(timeline: &Timeline, addr: SocketAddr) -> Option<Lsn> {
    probe_status(timeline, addr)
        .await
        .map(|status| status.commit_lsn)
}

/// The end of the WAL flushed on a majority of `safekeepers`: every acknowledged commit of
/// the timeline is at or below it (a compute acknowledges a commit only once a majority has
/// flushed it). `None` when fewer than a majority answer.
pub async fn majority_flush_lsn(timeline: &Timeline, safekeepers: &[SocketAddr]) -> Option<Lsn> {
    let probes = safekeepers.iter().map(|addr| probe_status(timeline, *addr));
    let mut flushed: Vec<Lsn> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .map(|status| status.flush_lsn)
        .collect();
    let majority = safekeepers.len() / 2 + 1;
    if flushed.len() < majority {
        return None;
    }
    // The majority-th highest: that many safekeepers have flushed at least this far.
    flushed.sort_unstable_by(|a, b| b.cmp(a));
    Some(flushed[majority - 1])
}

async fn probe_status(timeline: &Timeline, addr: SocketAddr) -> Option<AcceptorStatus> {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let probe = Request::TimelineStatus {
            timeline: timeline.timeline_id(),
        };
        wire::write_frame(&mut stream, &probe.encode()).await.ok()?;
        let frame = wire::read_frame(&mut stream).await.ok()??;
        match Response::decode(&frame).ok()? {
            Response::Status(status) => Some(status),
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_millis(SAFEKEEPER_CONNECT_TIMEOUT_MS), probe)
        .await
        .ok()
        .flatten()
}

/// The largest offloaded WAL chunk accepted on download: a segment window (16 MiB) plus one
/// record that crosses its end.
const OFFLOADED_CHUNK_BYTES_MAX: u64 = (16 << 20) + wal::RECORD_BYTES_MAX as u64;

/// Ingests offloaded WAL from the object store, from the last applied LSN up to `until` (the
/// start of what the safekeeper still has). Every record is checksum-verified by the splitter.
async fn ingest_offloaded(timeline: &Timeline, until: Lsn) -> Result<()> {
    let timeline_id = timeline.timeline_id();
    loop {
        let pos = timeline.last_record_lsn();
        if pos >= until {
            return Ok(());
        }
        let data = wal_objects::read_from(timeline.remote(), timeline_id, pos, OFFLOADED_CHUNK_BYTES_MAX)
            .await?
            .ok_or_else(|| {
                PageserverError::Replication(format!(
                    "WAL at {pos} is neither on the safekeeper (which starts at {until}) nor in the object store"
                ))
            })?;
        tracing::info!(
            "timeline {timeline_id}: ingesting {} bytes of offloaded WAL from {pos}",
            data.len()
        );
        let mut splitter = wal::RecordSplitter::new(pos);
        for (end_lsn, txn) in splitter.push(&data)? {
            timeline.ingest(end_lsn, txn)?;
        }
        if splitter.position() != pos.add(data.len() as u64) {
            return Err(PageserverError::Replication(format!(
                "offloaded WAL from {pos} ends inside a record"
            )));
        }
    }
}

/// Tells every safekeeper how far the timeline is durable in the object store, each time that
/// advances (checked every `FEEDBACK_INTERVAL_MS`), until `cancel` turns true. A safekeeper
/// that cannot be reached is tried again at the next advance.
pub async fn send_feedback(
    timeline: Arc<Timeline>,
    safekeepers: Vec<SocketAddr>,
    mut cancel: watch::Receiver<bool>,
) {
    let mut connections: Vec<Option<TcpStream>> = safekeepers.iter().map(|_| None).collect();
    let mut sent: Vec<Lsn> = vec![Lsn::ZERO; safekeepers.len()];
    let mut ticker = tokio::time::interval(Duration::from_millis(FEEDBACK_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let connect_timeout = Duration::from_millis(SAFEKEEPER_CONNECT_TIMEOUT_MS);
    loop {
        tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => return,
            _ = ticker.tick() => {}
        }
        let durable = timeline.remote_consistent_lsn();
        let feedback = Request::Feedback {
            timeline: timeline.timeline_id(),
            remote_consistent_lsn: durable,
        }
        .encode();
        for (i, addr) in safekeepers.iter().enumerate() {
            if sent[i] >= durable {
                continue;
            }
            let attempt = async {
                if connections[i].is_none() {
                    let stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    connections[i] = Some(stream);
                }
                let stream = connections[i].as_mut().expect("connected above");
                wire::write_frame(stream, &feedback)
                    .await
                    .map_err(std::io::Error::other)
            };
            match tokio::time::timeout(connect_timeout, attempt).await {
                Ok(Ok(())) => sent[i] = durable,
                Ok(Err(e)) => {
                    tracing::debug!("feedback to safekeeper {addr}: {e}");
                    connections[i] = None;
                }
                Err(_) => connections[i] = None,
            }
        }
    }
}
