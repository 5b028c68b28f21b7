//! The WAL receiver: follows a timeline's committed WAL on the safekeepers and ingests it.
//!
//! ```text
//!  connect(safekeeper i) ─▶ StartReplication { timeline, start_lsn: last_record_lsn }
//!        ◀─ WalData { start_lsn, commit_lsn, data } ... (empty data: keepalive, every 1 s)
//!  data ─▶ RecordSplitter ─▶ (end LSN, Transaction) ─▶ Timeline::ingest
//!  error, end of stream, or no frame for 5 s ─▶ pause (100 ms doubling to 2 s) ─▶ safekeeper i+1
//! ```
//!
//! Each connection starts from the last applied LSN with a fresh splitter, so a record cut by
//! a broken connection is simply read again whole. The WAL bytes must continue exactly where
//! the previous ones ended; a gap or overlap is a protocol error that ends the connection.
//! Safekeepers send only committed WAL, so every whole record is applied at once.
//!
//! Does network I/O; runs until cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use safekeeper_api::{Request, Response};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::error::{PageserverError, Result};
use crate::limits::{
    RECONNECT_BACKOFF_MAX_MS, RECONNECT_BACKOFF_MIN_MS, SAFEKEEPER_CONNECT_TIMEOUT_MS,
    WAL_RECEIVER_IDLE_TIMEOUT_MS,
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
        let result = tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => return,
            result = stream_from(&timeline, addr, &mut made_progress) => result,
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
        safekeeper_idx = safekeeper_idx.wrapping_add(1);
    }
}

/// Streams from one safekeeper until something goes wrong; never returns `Ok`.
/// `made_progress` is set once the safekeeper has sent WAL.
async fn stream_from(
    timeline: &Timeline,
    addr: SocketAddr,
    made_progress: &mut bool,
) -> Result<std::convert::Infallible> {
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
            Response::WalData {
                start_lsn: data_lsn,
                commit_lsn: _,
                data,
            } => {
                if data.is_empty() {
                    continue;
                }
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
