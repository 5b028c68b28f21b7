//! OmenDB's logical WAL record format.
//!
//! A timeline's WAL is a byte stream; an [`Lsn`] is a byte position in it. The stream is a
//! sequence of records:
//!
//! ```text
//! +-----------+-----------+---------+------------------------------+
//! | len: u32  | crc: u32  | ver: u8 | body (len-1 bytes)           |
//! +-----------+-----------+---------+------------------------------+
//! ```
//!
//! `crc` is CRC32C over the version byte and the body. Every record is one committed
//! transaction: its xid, its commit time (version 2 on) and all of its row operations. A transaction is therefore atomic in
//! the WAL — a reader either has the whole record (the commit) or nothing of it — and the LSN
//! at the *end* of the record is the transaction's commit LSN. Aborted transactions never
//! reach the WAL: the compute buffers a transaction's writes until COMMIT.
//!
//! DDL is not special here: the compute stores its catalog as rows of reserved tables, so a
//! CREATE TABLE is a `Put` into the catalog table and travels in the same record as the data.
//!
//! Pure encoding and decoding: no I/O.

use bytes::{BufMut, Bytes, BytesMut};
use ids::Lsn;
use wire::{Decoder, Encoder, WireError};

/// Version of the record body encoding written. Version 1 (no commit time) is still read.
pub const RECORD_VERSION: u8 = 2;
/// The first version whose records carry a commit time.
const RECORD_VERSION_COMMIT_TIME: u8 = 2;
/// Header bytes before each record body: length and checksum.
pub const RECORD_HEADER_BYTES: usize = 8;
/// The largest record (one transaction) the WAL accepts.
pub const RECORD_BYTES_MAX: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("corrupt WAL record at {lsn}: {reason}")]
    Corrupt { lsn: Lsn, reason: String },
    #[error("WAL record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// One row-level operation. Keys and values are opaque bytes here; the compute owns their
/// encoding. `table` ids are the compute's; the catalog lives at reserved ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace the row at `key`.
    Put {
        table: u32,
        key: Bytes,
        value: Bytes,
    },
    /// Remove the row at `key` (a no-op if there is none).
    Delete { table: u32, key: Bytes },
    /// Remove every row of `table`; the id is never used again.
    DropTable { table: u32 },
}

/// A committed transaction: the only kind of WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub xid: u64,
    /// When the compute committed it: microseconds since the Unix epoch, by the compute's
    /// clock; 0 where unknown (records of version 1).
    pub commit_time_us: u64,
    pub ops: Vec<Op>,
}

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_DROP_TABLE: u8 = 3;

/// Encodes a transaction as one whole record, header included.
pub fn encode_record(txn: &Transaction) -> Result<Bytes, WalError> {
    let mut body = Encoder::default();
    body.u8(RECORD_VERSION)
        .u64(txn.xid)
        .u64(txn.commit_time_us)
        .u32(txn.ops.len() as u32);
    for op in &txn.ops {
        match op {
            Op::Put { table, key, value } => body.u8(OP_PUT).u32(*table).bytes(key).bytes(value),
            Op::Delete { table, key } => body.u8(OP_DELETE).u32(*table).bytes(key),
            Op::DropTable { table } => body.u8(OP_DROP_TABLE).u32(*table),
        };
    }
    let body = body.finish();
    if body.len() > RECORD_BYTES_MAX {
        return Err(WalError::TooLarge {
            len: body.len(),
            max: RECORD_BYTES_MAX,
        });
    }
    let mut record = BytesMut::with_capacity(RECORD_HEADER_BYTES + body.len());
    record.put_u32(body.len() as u32);
    record.put_u32(crc32c::crc32c(&body));
    record.put_slice(&body);
    Ok(record.freeze())
}

/// Where the next record in `data` ends, if `data` starts with a whole, valid record.
///
/// `Ok(None)`: `data` holds only part of a record (read more). `Err`: the bytes are not a
/// valid record (bad length or checksum). `lsn` is `data[0]`'s position, for error texts.
pub fn next_record_len(data: &[u8], lsn: Lsn) -> Result<Option<usize>, WalError> {
    if data.len() < RECORD_HEADER_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > RECORD_BYTES_MAX {
        return Err(WalError::Corrupt {
            lsn,
            reason: format!("bad record length {len}"),
        });
    }
    let total = RECORD_HEADER_BYTES + len;
    if data.len() < total {
        return Ok(None);
    }
    let expected = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(&data[RECORD_HEADER_BYTES..total]);
    if expected != actual {
        return Err(WalError::Corrupt {
            lsn,
            reason: format!("checksum mismatch (stored {expected:08x}, computed {actual:08x})"),
        });
    }
    Ok(Some(total))
}

/// The length of the longest prefix of `data` made of whole, valid records. Used to find
/// the end of WAL after a crash: a torn or corrupt tail is where the valid WAL stops.
pub fn valid_prefix_len(data: &[u8]) -> usize {
    let mut pos = 0;
    while let Ok(Some(len)) = next_record_len(&data[pos..], Lsn(pos as u64)) {
        pos += len;
    }
    pos
}

/// Checks that `data`, starting at `start`, is exactly a sequence of whole valid records.
pub fn check_whole_records(data: &[u8], start: Lsn) -> Result<usize, WalError> {
    let mut pos = 0;
    let mut n_records = 0;
    while pos < data.len() {
        let lsn = start.add(pos as u64);
        match next_record_len(&data[pos..], lsn)? {
            Some(len) => pos += len,
            None => {
                return Err(WalError::Corrupt {
                    lsn,
                    reason: "partial record at the end".into(),
                })
            }
        }
        n_records += 1;
    }
    Ok(n_records)
}

/// Decodes the body of the record that starts at `data[0]` (header included in `data`).
pub fn decode_record(data: &[u8], lsn: Lsn) -> Result<Transaction, WalError> {
    let corrupt = |reason: String| WalError::Corrupt { lsn, reason };
    let Some(len) = next_record_len(data, lsn)? else {
        return Err(corrupt("partial record".into()));
    };
    let body = &data[RECORD_HEADER_BYTES..len];
    let wire = |e: WireError| WalError::Corrupt {
        lsn,
        reason: e.to_string(),
    };
    let mut decoder = Decoder::new(body, "WAL record");
    let version = decoder.u8().map_err(wire)?;
    if version == 0 || version > RECORD_VERSION {
        return Err(corrupt(format!("unsupported record version {version}")));
    }
    let xid = decoder.u64().map_err(wire)?;
    let commit_time_us = match version >= RECORD_VERSION_COMMIT_TIME {
        true => decoder.u64().map_err(wire)?,
        false => 0,
    };
    let n_ops = decoder.count(5).map_err(wire)?;
    let mut ops = Vec::with_capacity(n_ops);
    for _ in 0..n_ops {
        let op = match decoder.u8().map_err(wire)? {
            OP_PUT => Op::Put {
                table: decoder.u32().map_err(wire)?,
                key: Bytes::copy_from_slice(decoder.bytes().map_err(wire)?),
                value: Bytes::copy_from_slice(decoder.bytes().map_err(wire)?),
            },
            OP_DELETE => Op::Delete {
                table: decoder.u32().map_err(wire)?,
                key: Bytes::copy_from_slice(decoder.bytes().map_err(wire)?),
            },
            OP_DROP_TABLE => Op::DropTable {
                table: decoder.u32().map_err(wire)?,
            },
            other => return Err(corrupt(format!("unknown operation tag {other}"))),
        };
        ops.push(op);
    }
    decoder.finish().map_err(wire)?;
    Ok(Transaction {
        xid,
        commit_time_us,
        ops,
    })
}

/// Splits a stream of WAL bytes into records as they arrive; keeps a partial record until
/// the rest comes.
pub struct RecordSplitter {
    /// LSN of `pending[0]`.
    start: Lsn,
    pending: BytesMut,
}

impl RecordSplitter {
    pub fn new(start: Lsn) -> RecordSplitter {
        RecordSplitter {
            start,
            pending: BytesMut::new(),
        }
    }

    /// The LSN up to which every byte has been returned as part of a whole record.
    pub fn position(&self) -> Lsn {
        self.start
    }

    /// Feeds bytes that continue the stream; returns the records completed by them with
    /// their end LSNs (commit LSNs).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<(Lsn, Transaction)>, WalError> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(len) = next_record_len(&self.pending[pos..], self.start.add(pos as u64))? {
            let lsn = self.start.add(pos as u64);
            let txn = decode_record(&self.pending[pos..pos + len], lsn)?;
            pos += len;
            out.push((self.start.add(pos as u64), txn));
        }
        let _ = self.pending.split_to(pos);
        self.start = self.start.add(pos as u64);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(xid: u64) -> Transaction {
        Transaction {
            xid,
            commit_time_us: 1_700_000_000_000_000 + xid,
            ops: vec![
                Op::Put {
                    table: 7,
                    key: Bytes::from_static(b"k1"),
                    value: Bytes::from_static(b"v"),
                },
                Op::Delete {
                    table: 7,
                    key: Bytes::from_static(b"k0"),
                },
                Op::DropTable { table: 9 },
            ],
        }
    }

    #[test]
    fn record_round_trip() {
        let record = encode_record(&sample(5)).unwrap();
        assert_eq!(
            next_record_len(&record, Lsn(0)).unwrap(),
            Some(record.len())
        );
        assert_eq!(decode_record(&record, Lsn(0)).unwrap(), sample(5));
        assert_eq!(check_whole_records(&record, Lsn(0)).unwrap(), 1);
    }

    #[test]
    fn version_1_records_are_read_without_a_commit_time() {
        let mut body = Encoder::default();
        body.u8(1).u64(42).u32(1).u8(OP_DROP_TABLE).u32(9);
        let body = body.finish();
        let mut record = BytesMut::new();
        record.put_u32(body.len() as u32);
        record.put_u32(crc32c::crc32c(&body));
        record.put_slice(&body);
        let txn = decode_record(&record, Lsn(0)).unwrap();
        assert_eq!(
            txn,
            Transaction {
                xid: 42,
                commit_time_us: 0,
                ops: vec![Op::DropTable { table: 9 }],
            }
        );
    }

    #[test]
    fn corruption_is_detected_at_every_byte() {
        let record = encode_record(&sample(5)).unwrap();
        for i in 0..record.len() {
            let mut bad = record.to_vec();
            bad[i] ^= 0x40;
            assert!(
                decode_record(&bad, Lsn(0)).is_err(),
                "flip at byte {i} not caught"
            );
        }
        for cut in 0..record.len() {
            assert_eq!(valid_prefix_len(&record[..cut]), 0);
            assert!(check_whole_records(&record[..cut], Lsn(0)).is_err() || cut == 0);
        }
    }

    #[test]
    fn splitter_handles_any_chunking() {
        let mut stream = Vec::new();
        for xid in 0..4 {
            stream.extend_from_slice(&encode_record(&sample(xid)).unwrap());
        }
        assert_eq!(valid_prefix_len(&stream), stream.len());
        for chunk in [1, 3, 17, stream.len()] {
            let mut splitter = RecordSplitter::new(Lsn(100));
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                seen.extend(splitter.push(piece).unwrap());
            }
            assert_eq!(seen.len(), 4);
            assert_eq!(seen.last().unwrap().0, Lsn(100 + stream.len() as u64));
            assert_eq!(splitter.position(), Lsn(100 + stream.len() as u64));
            assert_eq!(seen[2].1, sample(2));
        }
    }
}
