//! Wire types of the pageserver protocol (compute → pageserver).
//!
//! A compute opens a TCP connection and sends [`Request`]s one at a time. `GetRow` and
//! `Status` are answered by one [`Response`]; `Scan` by zero or more `RowBatch` responses
//! followed by `ScanEnd` (or `Error`). Every read names an LSN: the pageserver answers with
//! exactly the committed state at that LSN, first waiting until it has ingested the WAL up to
//! it (or answering `Error { kind: WaitLsnTimeout }`).
//!
//! Keys and values are opaque bytes; only the compute knows their encoding. Every message is
//! one [`wire`] frame; decoding never panics on bad bytes.

use bytes::Bytes;
use ids::{Lsn, TimelineId};
use wire::{Decoder, Encoder, Result, WireError};

/// The most rows a `RowBatch` carries.
pub const SCAN_BATCH_ROWS_MAX: usize = 8192;
/// The most bytes (keys + values) a `RowBatch` carries.
pub const SCAN_BATCH_BYTES_MAX: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The row at `key` of `table` as of `lsn`.
    GetRow {
        timeline: TimelineId,
        table: u32,
        key: Bytes,
        lsn: Lsn,
    },
    /// The rows of `table` with `start <= key < end` (unbounded where `None`) as of `lsn`, in
    /// key order.
    Scan {
        timeline: TimelineId,
        table: u32,
        start: Option<Bytes>,
        end: Option<Bytes>,
        lsn: Lsn,
    },
    /// How far this pageserver has ingested and persisted the timeline.
    Status { timeline: TimelineId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The WAL up to the requested LSN did not arrive in time.
    WaitLsnTimeout,
    /// The timeline is not known to this pageserver.
    UnknownTimeline,
    /// The request was malformed.
    BadRequest,
    /// Something failed inside the pageserver (storage, corruption).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Row {
        value: Option<Bytes>,
    },
    RowBatch {
        rows: Vec<(Bytes, Bytes)>,
    },
    ScanEnd,
    Status {
        /// End of the last WAL record applied.
        last_record_lsn: Lsn,
        /// Everything below this LSN is in the object store.
        remote_consistent_lsn: Lsn,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

mod tag {
    pub const GET_ROW: u8 = 1;
    pub const SCAN: u8 = 2;
    pub const STATUS: u8 = 3;

    pub const ROW: u8 = 101;
    pub const ROW_BATCH: u8 = 102;
    pub const SCAN_END: u8 = 103;
    pub const STATUS_REPLY: u8 = 104;
    pub const ERROR: u8 = 105;
}

impl Request {
    pub fn encode(&self) -> Bytes {
        let mut e;
        match self {
            Request::GetRow {
                timeline,
                table,
                key,
                lsn,
            } => {
                e = Encoder::new(tag::GET_ROW);
                e.timeline(*timeline).u32(*table).bytes(key).lsn(*lsn);
            }
            Request::Scan {
                timeline,
                table,
                start,
                end,
                lsn,
            } => {
                e = Encoder::new(tag::SCAN);
                e.timeline(*timeline)
                    .u32(*table)
                    .opt_bytes(start.as_deref())
                    .opt_bytes(end.as_deref())
                    .lsn(*lsn);
            }
            Request::Status { timeline } => {
                e = Encoder::new(tag::STATUS);
                e.timeline(*timeline);
            }
        }
        e.finish()
    }

    pub fn decode(payload: &Bytes) -> Result<Request> {
        let mut d = Decoder::new(payload, "pageserver request");
        let request = match d.u8()? {
            tag::GET_ROW => Request::GetRow {
                timeline: d.timeline()?,
                table: d.u32()?,
                key: payload.slice_ref(d.bytes()?),
                lsn: d.lsn()?,
            },
            tag::SCAN => Request::Scan {
                timeline: d.timeline()?,
                table: d.u32()?,
                start: d.opt_bytes()?.map(|b| payload.slice_ref(b)),
                end: d.opt_bytes()?.map(|b| payload.slice_ref(b)),
                lsn: d.lsn()?,
            },
            tag::STATUS => Request::Status {
                timeline: d.timeline()?,
            },
            other => return Err(WireError::Malformed(format!("unknown request tag {other}"))),
        };
        d.finish()?;
        Ok(request)
    }
}

impl ErrorKind {
    fn code(self) -> u8 {
        match self {
            ErrorKind::WaitLsnTimeout => 1,
            ErrorKind::UnknownTimeline => 2,
            ErrorKind::BadRequest => 3,
            ErrorKind::Internal => 4,
        }
    }
    fn from_code(code: u8) -> Result<ErrorKind> {
        Ok(match code {
            1 => ErrorKind::WaitLsnTimeout,
            2 => ErrorKind::UnknownTimeline,
            3 => ErrorKind::BadRequest,
            4 => ErrorKind::Internal,
            other => return Err(WireError::Malformed(format!("unknown error kind {other}"))),
        })
    }
}

impl Response {
    pub fn encode(&self) -> Bytes {
        let mut e;
        match self {
            Response::Row { value } => {
                e = Encoder::new(tag::ROW);
                e.opt_bytes(value.as_deref());
            }
            Response::RowBatch { rows } => {
                e = Encoder::new(tag::ROW_BATCH);
                e.u32(rows.len() as u32);
                for (key, value) in rows {
                    e.bytes(key).bytes(value);
                }
            }
            Response::ScanEnd => e = Encoder::new(tag::SCAN_END),
            Response::Status {
                last_record_lsn,
                remote_consistent_lsn,
            } => {
                e = Encoder::new(tag::STATUS_REPLY);
                e.lsn(*last_record_lsn).lsn(*remote_consistent_lsn);
            }
            Response::Error { kind, message } => {
                e = Encoder::new(tag::ERROR);
                e.u8(kind.code()).str(message);
            }
        }
        e.finish()
    }

    pub fn decode(payload: &Bytes) -> Result<Response> {
        let mut d = Decoder::new(payload, "pageserver response");
        let response = match d.u8()? {
            tag::ROW => Response::Row {
                value: d.opt_bytes()?.map(|b| payload.slice_ref(b)),
            },
            tag::ROW_BATCH => {
                let n = d.count(8)?;
                let mut rows = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = payload.slice_ref(d.bytes()?);
                    let value = payload.slice_ref(d.bytes()?);
                    rows.push((key, value));
                }
                Response::RowBatch { rows }
            }
            tag::SCAN_END => Response::ScanEnd,
            tag::STATUS_REPLY => Response::Status {
                last_record_lsn: d.lsn()?,
                remote_consistent_lsn: d.lsn()?,
            },
            tag::ERROR => Response::Error {
                kind: ErrorKind::from_code(d.u8()?)?,
                message: d.str()?.to_string(),
            },
            other => {
                return Err(WireError::Malformed(format!(
                    "unknown response tag {other}"
                )))
            }
        };
        d.finish()?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_reject_truncation() {
        let timeline = TimelineId::from_u128(3);
        let requests = vec![
            Request::GetRow {
                timeline,
                table: 5,
                key: Bytes::from_static(b"k"),
                lsn: Lsn(9),
            },
            Request::Scan {
                timeline,
                table: 5,
                start: None,
                end: Some(Bytes::from_static(b"z")),
                lsn: Lsn(9),
            },
            Request::Status { timeline },
        ];
        for request in requests {
            let bytes = request.encode();
            assert_eq!(Request::decode(&bytes).unwrap(), request);
            for cut in 0..bytes.len() {
                assert!(Request::decode(&bytes.slice(..cut)).is_err());
            }
        }
        let responses = vec![
            Response::Row {
                value: Some(Bytes::from_static(b"v")),
            },
            Response::Row { value: None },
            Response::RowBatch {
                rows: vec![(Bytes::from_static(b"a"), Bytes::from_static(b"1"))],
            },
            Response::ScanEnd,
            Response::Status {
                last_record_lsn: Lsn(4),
                remote_consistent_lsn: Lsn(2),
            },
            Response::Error {
                kind: ErrorKind::WaitLsnTimeout,
                message: "late".into(),
            },
        ];
        for response in responses {
            let bytes = response.encode();
            assert_eq!(Response::decode(&bytes).unwrap(), response);
        }
    }
}
