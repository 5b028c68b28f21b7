//! Client of the pageserver's read protocol: point lookups and streamed scans at an LSN, and
//! the timeline's status (where its WAL starts, which the compute needs before its election).
//!
//! Connections are pooled: a request takes an idle connection (or opens one), and returns
//! it when the exchange finished cleanly. A connection that saw an error is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ids::{Lsn, TimelineId};
use pageserver_api::{ErrorKind, Request, Response, TimelineInfo};
use tokio::io::AsyncWriteExt;
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

    /// What the pageserver knows of this client's timeline: among other things, where its
    /// WAL starts ([`TimelineInfo::start_lsn`]). `Remote { kind: UnknownTimeline, .. }` if
    /// the pageserver does not serve it (yet).
    pub async fn timeline_info(&self) -> Result<TimelineInfo, PageserverError> {
        let request = Request::Status {
            timeline: self.timeline,
        };
        match self.start(&request).await? {
            (stream, Response::Timeline(info)) if info.timeline == self.timeline => {
                self.give_back(stream);
                Ok(info)
            }
            (_, other) => Err(self.unavailable(format!(
                "unexpected answer to Status for timeline {}: {other:?}",
                self.timeline
            ))),
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

    /// Once the pageserver has the WAL up to `lsn`: uploads what it holds in memory and
    /// writes image layers (row and column pages) for `table` (or every table) that changed
    /// since its newest image. Returns the images' LSN and the tables imaged.
    pub async fn compact(
        &self,
        table: Option<u32>,
        lsn: Lsn,
    ) -> Result<(Lsn, Vec<u32>), PageserverError> {
        let request = Request::Compact {
            timeline: self.timeline,
            table,
            lsn,
        };
        match self.start(&request).await? {
            (stream, Response::Compacted { image_lsn, tables }) => {
                self.give_back(stream);
                Ok((image_lsn, tables))
            }
            (_, other) => Err(self.unavailable(format!("unexpected answer to Compact: {other:?}"))),
        }
    }

    /// The rows at `keys` of `table` as of `lsn`, in the order of `keys`. The requests are
    /// pipelined on one connection (written while the answers are read), so a batch costs
    /// about one round trip plus the pageserver's work instead of one round trip per key.
    pub async fn get_rows(
        &self,
        table: u32,
        keys: &[Bytes],
        lsn: Lsn,
    ) -> Result<Vec<Option<Bytes>>, PageserverError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut payload = BytesMut::new();
        for key in keys {
            let request = Request::GetRow {
                timeline: self.timeline,
                table,
                key: key.clone(),
                lsn,
            };
            wire::encode_frame(&request.encode(), &mut payload);
        }
        let (mut stream, pooled) = self.connection().await?;
        let rows = match self.pipeline(&mut stream, &payload, keys.len()).await {
            Err(PageserverError::Unavailable { .. }) if pooled => {
                self.pool.lock().expect("pool lock").clear();
                stream = self.connect().await?;
                self.pipeline(&mut stream, &payload, keys.len()).await?
            }
            other => other?,
        };
        self.give_back(stream);
        Ok(rows)
    }

    /// Writes `payload` (`n` GetRow frames) while reading their `n` answers.
    async fn pipeline(
        &self,
        stream: &mut TcpStream,
        payload: &[u8],
        n: usize,
    ) -> Result<Vec<Option<Bytes>>, PageserverError> {
        let (reader, mut writer) = stream.split();
        let write = async {
            writer
                .write_all(payload)
                .await
                .map_err(|e| self.unavailable(e))
        };
        let read = async {
            let mut reader = tokio::io::BufReader::new(reader);
            let mut rows = Vec::with_capacity(n);
            for _ in 0..n {
                let frame = wire::read_frame(&mut reader)
                    .await
                    .map_err(|e| self.unavailable(e))?
                    .ok_or_else(|| self.unavailable("connection closed"))?;
                match Response::decode(&frame).map_err(|e| self.unavailable(e))? {
                    Response::Row { value } => rows.push(value),
                    Response::Error { kind, message } => {
                        return Err(PageserverError::Remote { kind, message })
                    }
                    other => {
                        return Err(
                            self.unavailable(format!("unexpected answer to GetRow: {other:?}"))
                        )
                    }
                }
            }
            Ok(rows)
        };
        let ((), rows) = tokio::try_join!(write, read)?;
        Ok(rows)
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

/// Column scans: the rows of a user table at an LSN as Arrow record batches, decoded from
/// the pageserver's `ColumnBatch` frames (one Arrow IPC stream per scan).
impl PageserverClient {
    /// Streams the rows of user table `table` as of `lsn` that may satisfy every predicate,
    /// as record batches of at most `batch_rows` rows holding the `columns` (indices of the
    /// table's columns) in table order, each once, then the storage key (binary). A table
    /// that does not exist at `lsn` has no rows.
    pub fn column_scan(
        &self,
        table: u32,
        lsn: Lsn,
        columns: Vec<u32>,
        predicates: Vec<pageserver_api::ColumnPredicate>,
        batch_rows: u32,
    ) -> mpsc::Receiver<Result<datafusion::arrow::record_batch::RecordBatch, PageserverError>> {
        let (tx, rx) = mpsc::channel(SCAN_CHANNEL_BATCHES);
        let client = self.clone();
        tokio::spawn(async move {
            let request = Request::ColumnScan {
                timeline: client.timeline,
                table,
                lsn,
                columns,
                predicates,
                batch_rows,
            };
            let (mut stream, first) = match client.start(&request).await {
                Ok(started) => started,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut decoder = datafusion::arrow::ipc::reader::StreamDecoder::new();
            let mut next = Some(Ok(first));
            loop {
                let response = match next.take() {
                    Some(response) => response,
                    None => client.recv(&mut stream).await,
                };
                let ipc = match response {
                    Ok(Response::ColumnBatch { ipc }) => ipc,
                    Ok(Response::ScanEnd) => {
                        client.give_back(stream);
                        return;
                    }
                    Ok(other) => {
                        let message = format!("unexpected answer to ColumnScan: {other:?}");
                        let _ = tx.send(Err(client.unavailable(message))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let batches = match decode_column_batch(&mut decoder, ipc) {
                    Ok(batches) => batches,
                    Err(e) => {
                        let message = format!("malformed ColumnBatch from the pageserver: {e}");
                        let _ = tx.send(Err(client.unavailable(message))).await;
                        return;
                    }
                };
                for batch in batches {
                    if tx.send(Ok(batch)).await.is_err() {
                        return; // consumer gone; the connection is mid-scan, drop it
                    }
                }
            }
        });
        rx
    }
}

/// The non-empty record batches in one `ColumnBatch` frame, which holds whole messages of
/// the scan's IPC stream (the first one starts with the schema).
fn decode_column_batch(
    decoder: &mut datafusion::arrow::ipc::reader::StreamDecoder,
    ipc: Bytes,
) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>, datafusion::arrow::error::ArrowError>
{
    let mut buffer = datafusion::arrow::buffer::Buffer::from(ipc);
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer)? {
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod column_scan_tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, BinaryArray, Int32Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::ipc::writer::StreamEncoder;
    use datafusion::arrow::record_batch::RecordBatch;

    use super::*;

    fn frame(buffers: Vec<datafusion::arrow::buffer::Buffer>) -> Bytes {
        let mut out = Vec::new();
        for buffer in buffers {
            out.extend_from_slice(buffer.as_slice());
        }
        Bytes::from(out)
    }

    /// Frames of whole IPC messages decode one by one; a damaged frame is an error, never a
    /// panic.
    #[test]
    fn column_batches_decode_frame_by_frame() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("__omendb_key", DataType::Binary, false),
        ]));
        let batch = |from: i32| {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int32Array::from_iter_values(from..from + 3)),
                Arc::new(BinaryArray::from_iter_values(
                    (from..from + 3).map(|i| i.to_be_bytes()),
                )),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        };
        let mut encoder = StreamEncoder::try_new(&schema).unwrap();
        let first = frame(
            encoder
                .encode(&RecordBatch::new_empty(schema.clone()))
                .unwrap(),
        );
        let mut first = first.to_vec();
        first.extend_from_slice(&frame(encoder.encode(&batch(0)).unwrap()));
        let second = frame(encoder.encode(&batch(10)).unwrap());

        let mut decoder = datafusion::arrow::ipc::reader::StreamDecoder::new();
        let got = decode_column_batch(&mut decoder, Bytes::from(first)).unwrap();
        assert_eq!(got, vec![batch(0)]);
        let got = decode_column_batch(&mut decoder, second.clone()).unwrap();
        assert_eq!(got, vec![batch(10)]);

        let mut damaged = second.to_vec();
        let at = damaged.len() / 3;
        damaged[at..at + 8].copy_from_slice(&[0xff; 8]);
        let mut decoder = datafusion::arrow::ipc::reader::StreamDecoder::new();
        assert!(decode_column_batch(&mut decoder, Bytes::from(damaged)).is_err());
    }
}
