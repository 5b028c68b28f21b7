//! A raw `pageserver_api` client for tests that compare what two pageservers hold.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ids::{Lsn, TimelineId};
use pageserver_api::{Request, Response};
use tokio::net::TcpStream;

/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PageserverClient {
    stream: TcpStream,
    timeline: TimelineId,
}

impl PageserverClient {
    pub async fn connect(addr: SocketAddr, timeline: &str) -> PageserverClient {
        PageserverClient {
            stream: TcpStream::connect(addr)
                .await
                .expect("connect to the pageserver"),
            timeline: timeline.parse().expect("timeline id"),
        }
    }

    async fn call(&mut self, request: &Request) -> Response {
        wire::write_frame(&mut self.stream, &request.encode())
            .await
            .expect("send to the pageserver");
        self.receive().await
    }

    async fn receive(&mut self) -> Response {
        let frame = tokio::time::timeout(ANSWER_TIMEOUT, wire::read_frame(&mut self.stream))
            .await
            .expect("pageserver answer in time")
            .expect("read from the pageserver")
            .expect("pageserver closed the connection");
        Response::decode(&frame).expect("decode a pageserver answer")
    }

    /// (last_record_lsn, remote_consistent_lsn)
    pub async fn status(&mut self) -> (Lsn, Lsn) {
        match self
            .call(&Request::Status {
                timeline: self.timeline,
            })
            .await
        {
            Response::Timeline(info) => (info.last_record_lsn, info.remote_consistent_lsn),
            other => panic!("status: {other:?}"),
        }
    }

    /// Every row of table `table` at `lsn`.
    pub async fn scan(&mut self, table: u32, lsn: Lsn) -> Vec<(Bytes, Bytes)> {
        let request = Request::Scan {
            timeline: self.timeline,
            table,
            start: None,
            end: None,
            lsn,
        };
        wire::write_frame(&mut self.stream, &request.encode())
            .await
            .expect("send a scan");
        let mut rows = Vec::new();
        loop {
            match self.receive().await {
                Response::RowBatch { rows: batch } => rows.extend(batch),
                Response::ScanEnd => return rows,
                other => panic!("scan of table {table} at {lsn}: {other:?}"),
            }
        }
    }
}
