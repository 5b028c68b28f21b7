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

    /// A pooled connection if there is one (`true`), else a new one (`false`).
    async fn connection(&self) -> Result<(TcpStream, bool), PageserverError> {
        if let Some(stream) = self.pool.lock().expect("pool lock").pop() {
            return Ok((stream, true));
        }
        Ok((self.connect().await?, false))
    }

    async fn connect(&self) -> Result<TcpStream, PageserverError> {
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

    async fn send_and_recv(
        &self,
        stream: &mut TcpStream,
        payload: &[u8],
    ) -> Result<Response, PageserverError> {
        wire::write_frame(stream, payload)
            .await
            .map_err(|e| self.unavailable(e))?;
        self.recv(stream).await
    }

    /// Sends `request` and reads the first response. A pooled connection may have died
    /// with a restarted pageserver (a write to it can still succeed; the read then sees the
    /// end of the stream), so a failure on one is retried once on a new connection.
    async fn start(&self, request: &Request) -> Result<(TcpStream, Response), PageserverError> {
        let payload = request.encode();
        let (mut stream, pooled) = self.connection().await?;
        match self.send_and_recv(&mut stream, &payload).await {
            Ok(response) => Ok((stream, response)),
            Err(PageserverError::Unavailable { .. }) if pooled => {
                self.pool.lock().expect("pool lock").clear();
                let mut stream = self.connect().await?;
                let response = self.send_and_recv(&mut stream, &payload).await?;
                Ok((stream, response))
            }
            Err(e) => Err(e),
        }
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
        match self.start(&request).await? {
            (stream, Response::Row { value }) => {
                self.give_back(stream);
                Ok(value)
            }
            (_, other) => Err(self.unavailable(format!("unexpected answer to GetRow: {other:?}"))),
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
            let (mut stream, first) = match client.start(&request).await {
                Ok(started) => started,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut next = Some(Ok(first));
            loop {
                let response = match next.take() {
                    Some(response) => response,
                    None => client.recv(&mut stream).await,
                };
                match response {
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
