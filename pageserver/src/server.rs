//! The read server: the pageserver side of `pageserver_api`, over TCP.
//!
//! Per connection, requests are read and answered one at a time:
//!
//! - `GetRow` → wait for the LSN → one `Row`;
//! - `Scan` → wait for the LSN → `RowBatch` frames (each within `SCAN_BATCH_ROWS_MAX` rows
//!   and `SCAN_BATCH_BYTES_MAX` bytes, except that a single larger row travels alone) →
//!   `ScanEnd`. Each batch takes the in-memory layers' part under a short read lock, then
//!   reads the layer files without it, and the scan resumes after the last key examined; no
//!   lock is held while reading layers or writing to the socket. Commits that arrive
//!   meanwhile have LSNs above the scan's, so the batches form one consistent snapshot;
//! - `ColumnScan` → wait for the LSN → `ColumnBatch` frames (one Arrow IPC stream, see
//!   [`crate::timeline::columns`]) → `ScanEnd`;
//! - `Status` → `Timeline`;
//! - `CreateTimeline` → `Timeline` (the new one); `ListTimelines` → `Timelines`;
//!   `DeleteTimeline` → `Deleted` (see [`crate::timelines`]).
//!
//! Any failure to answer is an `Error` response (`UnknownTimeline` for a timeline not served
//! here, `WaitLsnTimeout` when the WAL is late, `Conflict` for a create or delete that the
//! timelines as they are refuse, `Internal` otherwise) and the connection goes on. A
//! frame that cannot be read (bad checksum, too large, torn) closes the connection; a frame
//! whose payload is not a request gets a `BadRequest` answer, then the connection closes.
//! Nothing here panics on input. Does network I/O.

use std::sync::Arc;
use std::time::Duration;

use pageserver_api::{ErrorKind, Request, Response, SCAN_BATCH_BYTES_MAX, SCAN_BATCH_ROWS_MAX};
use tokio::io::BufReader;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::error::{PageserverError, Result};
use crate::limits::{ACCEPT_ERROR_BACKOFF_MS, CONNECTIONS_MAX, SCAN_KEYS_EXAMINED_MAX};
use crate::store::ScanLimits;
use crate::timelines::Timelines;

const SCAN_LIMITS: ScanLimits = ScanLimits {
    rows_max: SCAN_BATCH_ROWS_MAX,
    bytes_max: SCAN_BATCH_BYTES_MAX,
    keys_examined_max: SCAN_KEYS_EXAMINED_MAX,
};

/// Accepts and serves connections until `cancel` turns true; then drops every connection.
pub async fn serve(
    listener: TcpListener,
    timelines: Arc<Timelines>,
    wait_lsn_timeout: Duration,
    mut cancel: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => break,
            permit = permits.clone().acquire_owned() => permit.expect("the connection semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                let timelines = timelines.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    match handle_connection(stream, &timelines, wait_lsn_timeout).await {
                        Ok(()) => tracing::debug!("connection from {peer} closed"),
                        Err(err) => tracing::info!("connection from {peer} closed: {err}"),
                    }
                });
            }
            Err(err) => {
                tracing::warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
            }
        }
    }
    connections.shutdown().await;
}

async fn handle_connection(
    stream: TcpStream,
    timelines: &Timelines,
    wait_lsn_timeout: Duration,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let Some(payload) = wire::read_frame(&mut reader).await? else {
            return Ok(());
        };
        let request = match Request::decode(&payload) {
            Ok(request) => request,
            Err(err) => {
                let message = format!("malformed request: {err}");
                send(
                    &mut writer,
                    &Response::Error {
                        kind: ErrorKind::BadRequest,
                        message,
                    },
                )
                .await?;
                return Err(err.into());
            }
        };
        handle_request(request, timelines, wait_lsn_timeout, &mut writer).await?;
    }
}

/// Answers one request; an `Err` is a failure to write to the client.
async fn handle_request(
    request: Request,
    timelines: &Timelines,
    wait_lsn_timeout: Duration,
    writer: &mut OwnedWriteHalf,
) -> Result<()> {
    let requested = match &request {
        Request::GetRow { timeline, .. }
        | Request::Scan { timeline, .. }
        | Request::Status { timeline }
        | Request::ColumnScan { timeline, .. }
        | Request::Compact { timeline, .. } => *timeline,
        Request::CreateTimeline {
            tenant,
            timeline,
            ancestor,
        } => {
            let response = match timelines.create(*tenant, *timeline, *ancestor).await {
                Ok(created) => Response::Timeline(created.info()),
                Err(err) => error_response(&err),
            };
            return send(writer, &response).await;
        }
        Request::ListTimelines => {
            let response = match timelines.list() {
                Ok(all) => Response::Timelines(all.iter().map(|t| t.info()).collect()),
                Err(err) => error_response(&err),
            };
            return send(writer, &response).await;
        }
        Request::DeleteTimeline { timeline } => {
            let response = match timelines.delete(*timeline).await {
                Ok(()) => Response::Deleted,
                Err(err) => error_response(&err),
            };
            return send(writer, &response).await;
        }
    };
    let timeline = match timelines.get(requested) {
        Ok(timeline) => timeline,
        Err(err) => return send(writer, &error_response(&err)).await,
    };
    match request {
        Request::Status { .. } => send(writer, &Response::Timeline(timeline.info())).await,
        Request::Compact { table, lsn, .. } => {
            let response = match timeline.wait_lsn(lsn, wait_lsn_timeout).await {
                Ok(()) => match timeline.compact_now(table).await {
                    Ok((image_lsn, tables)) => Response::Compacted { image_lsn, tables },
                    Err(err) => error_response(&err),
                },
                Err(err) => error_response(&err),
            };
            send(writer, &response).await
        }
        Request::GetRow {
            table, key, lsn, ..
        } => {
            let response = match timeline.wait_lsn(lsn, wait_lsn_timeout).await {
                Ok(()) => match timeline.get(table, &key, lsn).await {
                    Ok(value) => Response::Row { value },
                    Err(err) => error_response(&err),
                },
                Err(err) => error_response(&err),
            };
            send(writer, &response).await
        }
        Request::Scan {
            table,
            start,
            end,
            lsn,
            ..
        } => {
            if let Err(err) = timeline.wait_lsn(lsn, wait_lsn_timeout).await {
                return send(writer, &error_response(&err)).await;
            }
            let mut after_key = None;
            loop {
                let page = match timeline
                    .scan(
                        table,
                        (start.as_deref(), end.as_deref()),
                        lsn,
                        after_key.as_deref(),
                        SCAN_LIMITS,
                    )
                    .await
                {
                    Ok(page) => page,
                    Err(err) => return send(writer, &error_response(&err)).await,
                };
                if !page.rows.is_empty() {
                    send(writer, &Response::RowBatch { rows: page.rows }).await?;
                }
                match page.resume_after {
                    Some(key) => after_key = Some(key),
                    None => return send(writer, &Response::ScanEnd).await,
                }
            }
        }
        request @ Request::ColumnScan { .. } => {
            crate::timeline::columns::serve_column_scan(
                &timeline,
                &request,
                wait_lsn_timeout,
                writer,
            )
            .await
        }
        Request::CreateTimeline { .. }
        | Request::ListTimelines
        | Request::DeleteTimeline { .. } => {
            let err = PageserverError::Internal(
                "timeline management requests are answered before a timeline is looked up".into(),
            );
            send(writer, &error_response(&err)).await
        }
    }
}

fn error_response(err: &PageserverError) -> Response {
    let kind = match err {
        PageserverError::WaitLsnTimeout { .. } => ErrorKind::WaitLsnTimeout,
        PageserverError::UnknownTimeline(_) => ErrorKind::UnknownTimeline,
        PageserverError::Conflict(_) | PageserverError::NotRetained { .. } => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    };
    Response::Error {
        kind,
        message: err.to_string(),
    }
}

/// Writes one response frame. A response too large for a frame (which the limits on rows
/// make impossible) is replaced by an `Internal` error rather than a panic.
async fn send(writer: &mut OwnedWriteHalf, response: &Response) -> Result<()> {
    let mut payload = response.encode();
    if payload.len() + 1 > wire::FRAME_BYTES_MAX {
        let message = format!(
            "response of {} bytes does not fit in a frame",
            payload.len()
        );
        tracing::error!("{message}");
        payload = Response::Error {
            kind: ErrorKind::Internal,
            message,
        }
        .encode();
    }
    wire::write_frame(writer, &payload).await?;
    Ok(())
}
