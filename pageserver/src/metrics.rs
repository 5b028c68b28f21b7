//! The pageserver's metrics over HTTP: `GET /metrics` answers the Prometheus text format
//! (version 0.0.4) with the block cache's hit and miss counters, the object store's request
//! counters and each timeline's LSNs (labelled `timeline="<id>"`).
//!
//! A deliberately small HTTP/1.1 responder: it reads one request head (at most
//! `METRICS_REQUEST_BYTES_MAX`), answers it and closes the connection. Anything but
//! `GET /metrics` gets a 404 or 400; a client that sends nothing within
//! `METRICS_REQUEST_TIMEOUT_MS` is dropped. Does network I/O.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::timeline::Timeline;
use crate::timelines::Timelines;

/// The longest request head read.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 << 10;
/// How long a client has to send its request.
pub const METRICS_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// The metrics of the pageserver and its timelines, in the Prometheus text format.
pub fn render(timelines: &Timelines) -> String {
    let cache = timelines.cache().metrics();
    let remote = timelines.remote().stats();
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    };
    counter(
        "omendb_pageserver_block_cache_memory_hits_total",
        "Layer-file blocks served from the memory tier.",
        cache.memory_hits,
    );
    counter(
        "omendb_pageserver_block_cache_disk_hits_total",
        "Layer-file blocks served from the local-disk tier.",
        cache.disk_hits,
    );
    counter(
        "omendb_pageserver_block_cache_misses_total",
        "Layer-file blocks in neither tier, fetched from the object store.",
        cache.misses,
    );
    counter(
        "omendb_pageserver_block_cache_fetches_total",
        "Ranged GETs made for missing blocks.",
        cache.fetches,
    );
    counter(
        "omendb_pageserver_block_cache_fetched_bytes_total",
        "Bytes fetched from the object store for missing blocks.",
        cache.bytes_fetched,
    );
    counter(
        "omendb_pageserver_object_store_requests_total",
        "Object-store request attempts, retries included.",
        remote.requests,
    );
    counter(
        "omendb_pageserver_object_store_failures_total",
        "Object-store requests that failed for good.",
        remote.failures,
    );
    counter(
        "omendb_pageserver_object_store_downloaded_bytes_total",
        "Bytes downloaded from the object store.",
        remote.bytes_downloaded,
    );
    counter(
        "omendb_pageserver_object_store_uploaded_bytes_total",
        "Bytes uploaded to the object store.",
        remote.bytes_uploaded,
    );
    let timelines = timelines.list().unwrap_or_default();
    let mut gauge = |name: &str, help: &str, value: &dyn Fn(&Timeline) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for timeline in &timelines {
            let id = timeline.timeline_id();
            let _ = writeln!(out, "{name}{{timeline=\"{id}\"}} {}", value(timeline));
        }
    };
    gauge(
        "omendb_pageserver_last_record_lsn",
        "End of the last WAL record applied, per timeline.",
        &|t| t.last_record_lsn().0,
    );
    gauge(
        "omendb_pageserver_remote_consistent_lsn",
        "Every commit at or below this LSN is in the object store, per timeline.",
        &|t| t.remote_consistent_lsn().0,
    );
    out
}

/// Serves `GET /metrics` until `cancel` turns true.
pub async fn serve(
    listener: TcpListener,
    timelines: Arc<Timelines>,
    mut cancel: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                let timelines = timelines.clone();
                connections.spawn(async move {
                    if let Err(err) = answer(stream, &timelines).await {
                        tracing::debug!("metrics request from {peer}: {err}");
                    }
                });
            }
            Err(err) => {
                tracing::warn!("metrics accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(
                    crate::limits::ACCEPT_ERROR_BACKOFF_MS,
                ))
                .await;
            }
        }
    }
    connections.shutdown().await;
}

async fn answer(mut stream: TcpStream, timelines: &Timelines) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(Duration::from_millis(METRICS_REQUEST_TIMEOUT_MS), async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > METRICS_REQUEST_BYTES_MAX {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    })
    .await;
    let complete = match read {
        Ok(result) => result?,
        Err(_) => return Ok(()),
    };
    let request_line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|line| String::from_utf8_lossy(line).trim_end().to_string())
        .unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (status, body) = match (complete, parts.next(), parts.next()) {
        (true, Some("GET"), Some("/metrics")) => ("200 OK", render(timelines)),
        (true, Some(_), Some(_)) => ("404 Not Found", "only GET /metrics is served\n".into()),
        _ => ("400 Bad Request", "malformed request\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
