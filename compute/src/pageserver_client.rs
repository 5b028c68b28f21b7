//! Client of the pageserver's read protocol: point lookups and streamed scans at an LSN.
//!
//! Connections are pooled: a request takes an idle connection (or opens one), and returns
//! it when the exchange finished cleanly. A connection that saw an error is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ids::{Lsn, TimelineId};
use pageserver_api::{ErrorKind, Request, Response};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Idle connections kept per pageserver.
pub const POOL_CONNECTIONS_MAX: usize = 16;
/// How long opening a connection may take.
pub const CONNECT_TIMEOUT_MS: u64 = 2000;
/// Row batches buffered between the socket and the consumer of a scan.
pub const SCAN_CHANNEL_BATCHES: usize = 4;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PageserverError {
    #[error("pageserver {addr} unreachable: {message}")]
    Unavailable { addr: SocketAddr, message: String },
    #[error("pageserver: {message}")]
    Remote { kind: ErrorKind, message: String },
}

pub type Row = (Bytes, Bytes);

#[derive(Clone)]
pub struct PageserverClient {
    addr: SocketAddr,
    timeline: TimelineId,
    pool: Arc<Mutex<Vec<TcpStream>>>,
}

impl PageserverClient {
    pub fn new(addr: SocketAddr, timeline: TimelineId) -> PageserverClient {
        PageserverClient {
            addr,
            timeline,
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn unavailable(&self, message: impl ToString) -> PageserverError {
        PageserverError::Unavailable {
            addr: self.addr,
            message: message.to_string(),
        }
    }

    async fn connection(&self) -> Result<TcpStream, PageserverError> {
        if let Some(stream) = self.pool.lock().expect("pool lock").pop() {
            return Ok(stream);
        }
        let stream = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| self.unavailable("connect timed out"))?
        .map_err(|e| self.unavailable(e))?;
        stream.set_nodelay(true).ok();
        Ok(stream)
    }

    fn give_back(&self, stream: TcpStream) {
        let mut pool = self.pool.lock().expect("pool lock");
        if pool.len() < POOL_CONNECTIONS_MAX {
            pool.push(stream);
        }
    }

    async fn recv(&self, stream: &mut TcpStream) -> Result<Response, PageserverError> {
        let frame = wire::read_frame(stream)
            .await
            .map_err(|e| self.unavailable(e))?
            .ok_or_else(|| self.unavailable("connection closed"))?;
        match Response::decode(&frame).map_err(|e| self.unavailable(e))? {
            Response::Error { kind, message } => Err(PageserverError::Remote { kind, message }),
            response => Ok(response),
        }
    }

    /// Sends `request` on a pooled connection, retrying once on a fresh connection when a
    /// pooled one turned out to be dead (the pageserver may have restarted).
    async fn start(&self, request: &Request) -> Result<TcpStream, PageserverError> {
        let payload = request.encode();
        let mut stream = self.connection().await?;
        if wire::write_frame(&mut stream, &payload).await.is_ok() {
            return Ok(stream);
        }
        self.pool.lock().expect("pool lock").clear();
        let mut stream = self.connection().await?;
        wire::write_frame(&mut stream, &payload)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(stream)
    }

    /// The row at `key` of `table` as of `lsn`.
    pub async fn get_row(
        &self,
        table: u32,
        key: Bytes,
        lsn: Lsn,
    ) -> Result<Option<Bytes>, PageserverError> {
        let request = Request::GetRow {
            timeline: self.timeline,
            table,
            key,
            lsn,
        };
        let mut stream = self.start(&request).await?;
        match self.recv(&mut stream).await {
            Ok(Response::Row { value }) => {
                self.give_back(stream);
                Ok(value)
            }
            Ok(other) => Err(self.unavailable(format!("unexpected answer to GetRow: {other:?}"))),
            Err(e) => Err(e),
        }
    }

    /// Streams the rows of `table` as of `lsn`, in key order, as batches.
    pub fn scan(&self, table: u32, lsn: Lsn) -> mpsc::Receiver<Result<Vec<Row>, PageserverError>> {
        let (tx, rx) = mpsc::channel(SCAN_CHANNEL_BATCHES);
        let client = self.clone();
        tokio::spawn(async move {
            let request = Request::Scan {
                timeline: client.timeline,
                table,
                start: None,
                end: None,
                lsn,
            };
            let mut stream = match client.start(&request).await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            loop {
                match client.recv(&mut stream).await {
                    Ok(Response::RowBatch { rows }) => {
                        if tx.send(Ok(rows)).await.is_err() {
                            return; // consumer gone; the connection is mid-scan, drop it
                        }
                    }
                    Ok(Response::ScanEnd) => {
                        client.give_back(stream);
                        return;
                    }
                    Ok(other) => {
                        let _ = tx
                            .send(Err(
                                client.unavailable(format!("unexpected answer to Scan: {other:?}"))
                            ))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Every row of `table` as of `lsn`.
    pub async fn scan_all(&self, table: u32, lsn: Lsn) -> Result<Vec<Row>, PageserverError> {
        let mut rx = self.scan(table, lsn);
        let mut rows = Vec::new();
        while let Some(batch) = rx.recv().await {
            rows.extend(batch?);
        }
        Ok(rows)
    }
}
