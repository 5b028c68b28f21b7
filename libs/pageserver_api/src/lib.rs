//! Wire types of the pageserver protocol (compute → pageserver).
//!
//! A compute (or the control plane) opens a TCP connection and sends [`Request`]s one at a
//! time. `Scan` is answered by zero or more `RowBatch` responses followed by `ScanEnd` (or
//! `Error`), `ColumnScan` likewise by `ColumnBatch` responses (Arrow IPC, see
//! [`ColumnPredicate`]'s module); every other request by one [`Response`]: `GetRow` by `Row`; `Status`,
//! `CreateTimeline` by `Timeline`; `ListTimelines` by `Timelines`; `DeleteTimeline` by
//! `Deleted`; `Compact` by `Compacted`. Every read names an LSN: the pageserver answers with
//! exactly the committed state at that LSN, first waiting until it has ingested the WAL up to
//! it (or answering `Error { kind: WaitLsnTimeout }`).
//!
//! Keys and values are opaque bytes; only the compute knows their encoding. Every message is
//! one [`wire`] frame; decoding never panics on bad bytes.

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use wire::{Decoder, Encoder, Result, WireError};

mod column_scan;
pub use column_scan::{
    ColumnPredicate, CompareOp, Literal, COLUMN_BATCH_IPC_BYTES_MAX, COLUMN_SCAN_BATCH_ROWS_MAX,
    COLUMN_SCAN_COLUMNS_MAX, COLUMN_SCAN_LITERAL_BYTES_MAX, COLUMN_SCAN_PREDICATES_MAX,
};

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
    /// How far this pageserver has ingested and persisted the timeline, and its ancestor.
    Status { timeline: TimelineId },
    /// The rows of user table `table` as of `lsn` that may satisfy every predicate, as
    /// Arrow IPC: the `columns` (indices of the table's columns) and the storage key, in
    /// `ColumnBatch` frames of at most `batch_rows` rows each, each frame whole messages of
    /// one Arrow IPC stream (see the `column_scan` module).
    ColumnScan {
        timeline: TimelineId,
        table: u32,
        lsn: Lsn,
        columns: Vec<u32>,
        predicates: Vec<ColumnPredicate>,
        batch_rows: u32,
    },
    /// Creates a timeline: an empty one, or a branch of `ancestor` that starts as the
    /// ancestor's state at a point and copies no data. Refused if the id is taken.
    CreateTimeline {
        tenant: TenantId,
        timeline: TimelineId,
        ancestor: Option<(TimelineId, BranchPoint)>,
    },
    /// Every timeline this pageserver serves.
    ListTimelines,
    /// Stops serving a timeline and deletes its files from the object store. Refused while
    /// another timeline branches from it.
    DeleteTimeline { timeline: TimelineId },
    /// Once the WAL up to `lsn` is ingested: uploads everything in memory as delta layers,
    /// then writes image layers (row and column pages) for `table` (or every table) if it
    /// has changes above its newest image. What a compute's `VACUUM` asks for.
    Compact {
        timeline: TimelineId,
        table: Option<u32>,
        lsn: Lsn,
    },
}

/// Where on its ancestor a branch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchPoint {
    /// The ancestor's last applied commit.
    Latest,
    /// The ancestor's state as of this LSN (at or below its last applied commit).
    Lsn(Lsn),
    /// The ancestor's state as of its last commit at or before this time, in microseconds
    /// since the Unix epoch (by the committing compute's clock).
    Timestamp { unix_us: u64 },
}

/// What a pageserver says about one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineInfo {
    pub tenant: TenantId,
    pub timeline: TimelineId,
    /// The timeline it branches from, and the LSN it branches at: its WAL starts there.
    pub ancestor: Option<(TimelineId, Lsn)>,
    /// End of the last WAL record applied.
    pub last_record_lsn: Lsn,
    /// Everything at or below this LSN is in the object store.
    pub remote_consistent_lsn: Lsn,
}

impl TimelineInfo {
    /// Where the timeline's own WAL starts: its branch LSN, or 0 for a root timeline.
    pub fn start_lsn(&self) -> Lsn {
        self.ancestor.map_or(Lsn::ZERO, |(_, lsn)| lsn)
    }

    fn encode(&self, e: &mut Encoder) {
        e.tenant(self.tenant).timeline(self.timeline);
        match self.ancestor {
            None => e.u8(0),
            Some((timeline, lsn)) => e.u8(1).timeline(timeline).lsn(lsn),
        };
        e.lsn(self.last_record_lsn).lsn(self.remote_consistent_lsn);
    }

    fn decode(d: &mut Decoder) -> Result<TimelineInfo> {
        Ok(TimelineInfo {
            tenant: d.tenant()?,
            timeline: d.timeline()?,
            ancestor: match d.u8()? {
                0 => None,
                1 => Some((d.timeline()?, d.lsn()?)),
                other => return Err(WireError::Malformed(format!("bad ancestor flag {other}"))),
            },
            last_record_lsn: d.lsn()?,
            remote_consistent_lsn: d.lsn()?,
        })
    }
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
    /// The request conflicts with the timelines as they are (an id already taken, a
    /// timeline that others branch from, a branch point outside what is kept).
    Conflict,
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
    Timeline(TimelineInfo),
    Timelines(Vec<TimelineInfo>),
    Deleted,
    Error {
        kind: ErrorKind,
        message: String,
    },
    ColumnBatch {
        ipc: Bytes,
    },
    /// The tables that got image layers, and the LSN those are at.
    Compacted {
        image_lsn: Lsn,
        tables: Vec<u32>,
    },
}

mod tag {
    pub const GET_ROW: u8 = 1;
    pub const SCAN: u8 = 2;
    pub const STATUS: u8 = 3;
    pub const CREATE_TIMELINE: u8 = 4;
    pub const LIST_TIMELINES: u8 = 5;
    pub const DELETE_TIMELINE: u8 = 6;
    pub const COMPACT: u8 = 7;
    pub const COLUMN_SCAN: u8 = 20;

    pub const ROW: u8 = 101;
    pub const ROW_BATCH: u8 = 102;
    pub const SCAN_END: u8 = 103;
    pub const TIMELINE: u8 = 104;
    pub const ERROR: u8 = 105;
    pub const TIMELINES: u8 = 106;
    pub const DELETED: u8 = 107;
    pub const COMPACTED: u8 = 108;
    pub const COLUMN_BATCH: u8 = 120;
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
            Request::CreateTimeline {
                tenant,
                timeline,
                ancestor,
            } => {
                e = Encoder::new(tag::CREATE_TIMELINE);
                e.tenant(*tenant).timeline(*timeline);
                match ancestor {
                    None => e.u8(0),
                    Some((ancestor, point)) => {
                        e.u8(1).timeline(*ancestor);
                        match point {
                            BranchPoint::Latest => e.u8(0),
                            BranchPoint::Lsn(lsn) => e.u8(1).lsn(*lsn),
                            BranchPoint::Timestamp { unix_us } => e.u8(2).u64(*unix_us),
                        }
                    }
                };
            }
            Request::ListTimelines => e = Encoder::new(tag::LIST_TIMELINES),
            Request::ColumnScan {
                timeline,
                table,
                lsn,
                columns,
                predicates,
                batch_rows,
            } => {
                e = Encoder::new(tag::COLUMN_SCAN);
                e.timeline(*timeline).u32(*table).lsn(*lsn);
                column_scan::encode_column_scan(&mut e, columns, predicates, *batch_rows);
            }
            Request::DeleteTimeline { timeline } => {
                e = Encoder::new(tag::DELETE_TIMELINE);
                e.timeline(*timeline);
            }
            Request::Compact {
                timeline,
                table,
                lsn,
            } => {
                e = Encoder::new(tag::COMPACT);
                e.timeline(*timeline);
                match table {
                    None => e.u8(0),
                    Some(table) => e.u8(1).u32(*table),
                };
                e.lsn(*lsn);
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
            tag::CREATE_TIMELINE => Request::CreateTimeline {
                tenant: d.tenant()?,
                timeline: d.timeline()?,
                ancestor: match d.u8()? {
                    0 => None,
                    1 => {
                        let ancestor = d.timeline()?;
                        let point = match d.u8()? {
                            0 => BranchPoint::Latest,
                            1 => BranchPoint::Lsn(d.lsn()?),
                            2 => BranchPoint::Timestamp { unix_us: d.u64()? },
                            other => {
                                return Err(WireError::Malformed(format!(
                                    "unknown branch point kind {other}"
                                )))
                            }
                        };
                        Some((ancestor, point))
                    }
                    other => {
                        return Err(WireError::Malformed(format!("bad ancestor flag {other}")))
                    }
                },
            },
            tag::LIST_TIMELINES => Request::ListTimelines,
            tag::COLUMN_SCAN => {
                let (timeline, table, lsn) = (d.timeline()?, d.u32()?, d.lsn()?);
                let (columns, predicates, batch_rows) = column_scan::decode_column_scan(&mut d)?;
                Request::ColumnScan {
                    timeline,
                    table,
                    lsn,
                    columns,
                    predicates,
                    batch_rows,
                }
            }
            tag::DELETE_TIMELINE => Request::DeleteTimeline {
                timeline: d.timeline()?,
            },
            tag::COMPACT => Request::Compact {
                timeline: d.timeline()?,
                table: match d.u8()? {
                    0 => None,
                    1 => Some(d.u32()?),
                    other => return Err(WireError::Malformed(format!("bad table flag {other}"))),
                },
                lsn: d.lsn()?,
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
            ErrorKind::Conflict => 5,
        }
    }
    fn from_code(code: u8) -> Result<ErrorKind> {
        Ok(match code {
            1 => ErrorKind::WaitLsnTimeout,
            2 => ErrorKind::UnknownTimeline,
            3 => ErrorKind::BadRequest,
            4 => ErrorKind::Internal,
            5 => ErrorKind::Conflict,
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
            Response::Timeline(info) => {
                e = Encoder::new(tag::TIMELINE);
                info.encode(&mut e);
            }
            Response::Timelines(infos) => {
                e = Encoder::new(tag::TIMELINES);
                e.u32(infos.len() as u32);
                for info in infos {
                    info.encode(&mut e);
                }
            }
            Response::Deleted => e = Encoder::new(tag::DELETED),
            Response::Compacted { image_lsn, tables } => {
                e = Encoder::new(tag::COMPACTED);
                e.lsn(*image_lsn).u32(tables.len() as u32);
                for table in tables {
                    e.u32(*table);
                }
            }
            Response::ColumnBatch { ipc } => {
                e = Encoder::new(tag::COLUMN_BATCH);
                e.bytes(ipc);
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
            tag::TIMELINE => Response::Timeline(TimelineInfo::decode(&mut d)?),
            tag::TIMELINES => {
                let n = d.count(49)?;
                let mut infos = Vec::with_capacity(n);
                for _ in 0..n {
                    infos.push(TimelineInfo::decode(&mut d)?);
                }
                Response::Timelines(infos)
            }
            tag::DELETED => Response::Deleted,
            tag::COMPACTED => {
                let image_lsn = d.lsn()?;
                let n = d.count(4)?;
                let mut tables = Vec::with_capacity(n);
                for _ in 0..n {
                    tables.push(d.u32()?);
                }
                Response::Compacted { image_lsn, tables }
            }
            tag::COLUMN_BATCH => Response::ColumnBatch {
                ipc: payload.slice_ref(d.bytes()?),
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

    fn info(ancestor: Option<(TimelineId, Lsn)>) -> TimelineInfo {
        TimelineInfo {
            tenant: TenantId::from_u128(1),
            timeline: TimelineId::from_u128(2),
            ancestor,
            last_record_lsn: Lsn(4),
            remote_consistent_lsn: Lsn(2),
        }
    }

    #[test]
    fn messages_round_trip_and_reject_truncation() {
        let timeline = TimelineId::from_u128(3);
        let requests = vec![
            Request::Compact {
                timeline: TimelineId::from_u128(5),
                table: Some(16),
                lsn: Lsn(9),
            },
            Request::Compact {
                timeline: TimelineId::from_u128(5),
                table: None,
                lsn: Lsn(0),
            },
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
            Request::CreateTimeline {
                tenant: TenantId::from_u128(1),
                timeline,
                ancestor: None,
            },
            Request::CreateTimeline {
                tenant: TenantId::from_u128(1),
                timeline,
                ancestor: Some((TimelineId::from_u128(4), BranchPoint::Latest)),
            },
            Request::CreateTimeline {
                tenant: TenantId::from_u128(1),
                timeline,
                ancestor: Some((TimelineId::from_u128(4), BranchPoint::Lsn(Lsn(77)))),
            },
            Request::CreateTimeline {
                tenant: TenantId::from_u128(1),
                timeline,
                ancestor: Some((
                    TimelineId::from_u128(4),
                    BranchPoint::Timestamp { unix_us: 123 },
                )),
            },
            Request::ListTimelines,
            Request::DeleteTimeline { timeline },
            Request::ColumnScan {
                timeline,
                table: 16,
                lsn: Lsn(9),
                columns: vec![],
                predicates: vec![],
                batch_rows: 1,
            },
            Request::ColumnScan {
                timeline,
                table: u32::MAX,
                lsn: Lsn(u64::MAX),
                columns: vec![2, 0, 2],
                predicates: vec![
                    ColumnPredicate {
                        column: 0,
                        op: CompareOp::GtEq,
                        literal: Literal::Decimal {
                            value: -12_345,
                            scale: 2,
                        },
                    },
                    ColumnPredicate {
                        column: 2,
                        op: CompareOp::Eq,
                        literal: Literal::Text("é".into()),
                    },
                    ColumnPredicate {
                        column: 1,
                        op: CompareOp::Lt,
                        literal: Literal::Float(f64::NAN),
                    },
                ],
                batch_rows: COLUMN_SCAN_BATCH_ROWS_MAX,
            },
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
            Response::Timeline(info(None)),
            Response::Timelines(vec![
                info(None),
                info(Some((TimelineId::from_u128(8), Lsn(3)))),
            ]),
            Response::Timelines(vec![]),
            Response::Deleted,
            Response::Compacted {
                image_lsn: Lsn(77),
                tables: vec![16, 17],
            },
            Response::Compacted {
                image_lsn: Lsn(0),
                tables: vec![],
            },
            Response::ColumnBatch {
                ipc: Bytes::from_static(b"\xff\xff\xff\xffarrow"),
            },
            Response::ColumnBatch { ipc: Bytes::new() },
            Response::Error {
                kind: ErrorKind::WaitLsnTimeout,
                message: "late".into(),
            },
        ];
        for response in responses {
            let bytes = response.encode();
            assert_eq!(Response::decode(&bytes).unwrap(), response);
            for cut in 0..bytes.len() {
                assert!(Response::decode(&bytes.slice(..cut)).is_err());
            }
        }
    }
}
