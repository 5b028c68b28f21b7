//! The delta layer file format: every transaction of a timeline with commit LSN in
//! `(start_lsn, end_lsn]`, in commit order.
//!
//! ```text
//! +----------------+-------------+---------------+-------------+--------------+
//! | magic (8 B)    | version u32 | start_lsn u64 | end_lsn u64 | n_txns u32   |
//! +----------------+-------------+---------------+-------------+--------------+
//! | n_txns x ( commit_lsn u64 | xid u64 | n_ops u32 | n_ops x op )            |
//! +---------------------------------------------------------------------------+
//! | crc32c u32: over every byte before it                                     |
//! +---------------------------------------------------------------------------+
//! op: tag u8 (1 put, 2 delete, 3 drop table) | table u32 | [key] | [value]
//! key and value: len u32 | bytes          (all integers big-endian)
//! ```
//!
//! Layers of one timeline are contiguous: each starts where the previous one ends, so
//! replaying them in order rebuilds the timeline. A layer's commit LSNs are strictly
//! increasing and within its range; `decode` checks that, the checksum and every length,
//! and never panics on bad bytes. Pure encoding and decoding: no I/O.

use bytes::{BufMut, Bytes};
use ids::Lsn;
use wal::{Op, Transaction};
use wire::{Decoder, Encoder, WireError};

use crate::error::{PageserverError, Result};

pub const LAYER_MAGIC: [u8; 8] = *b"OMENDLTA";
pub const LAYER_FORMAT_VERSION: u32 = 1;
/// Magic, version, start, end, transaction count.
const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 4;
const CRC_BYTES: usize = 4;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_DROP_TABLE: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaLayer {
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    /// `(commit LSN, transaction)`, commit LSNs strictly increasing in `(start_lsn, end_lsn]`.
    pub transactions: Vec<(Lsn, Transaction)>,
}

/// Asserts the invariants of a layer's contents (cheap: one pass over the LSNs).
fn assert_well_formed(start_lsn: Lsn, end_lsn: Lsn, transactions: &[(Lsn, Transaction)]) {
    assert!(
        start_lsn < end_lsn,
        "empty layer range {start_lsn}..{end_lsn}"
    );
    let mut previous = start_lsn;
    for (lsn, _) in transactions {
        assert!(
            *lsn > previous && *lsn <= end_lsn,
            "commit LSN {lsn} out of order or range"
        );
        previous = *lsn;
    }
}

/// Encodes a layer. Panics if the transactions break the layer invariants (a caller bug).
pub fn encode(start_lsn: Lsn, end_lsn: Lsn, transactions: &[(Lsn, Transaction)]) -> Bytes {
    assert_well_formed(start_lsn, end_lsn, transactions);
    let mut encoder = Encoder::default();
    encoder.buf.put_slice(&LAYER_MAGIC);
    encoder
        .u32(LAYER_FORMAT_VERSION)
        .lsn(start_lsn)
        .lsn(end_lsn)
        .u32(transactions.len() as u32);
    for (lsn, txn) in transactions {
        encoder.lsn(*lsn).u64(txn.xid).u32(txn.ops.len() as u32);
        for op in &txn.ops {
            match op {
                Op::Put { table, key, value } => {
                    encoder.u8(OP_PUT).u32(*table).bytes(key).bytes(value)
                }
                Op::Delete { table, key } => encoder.u8(OP_DELETE).u32(*table).bytes(key),
                Op::DropTable { table } => encoder.u8(OP_DROP_TABLE).u32(*table),
            };
        }
    }
    let crc = crc32c::crc32c(&encoder.buf);
    encoder.buf.put_u32(crc);
    encoder.finish()
}

/// Decodes and validates a layer file.
pub fn decode(bytes: &[u8]) -> Result<DeltaLayer> {
    let corrupt = |reason: String| PageserverError::corrupt("delta layer", reason);
    if bytes.len() < HEADER_BYTES + CRC_BYTES {
        return Err(corrupt(format!(
            "{} bytes is shorter than a header",
            bytes.len()
        )));
    }
    if bytes[..8] != LAYER_MAGIC {
        return Err(corrupt("bad magic: not a delta layer file".into()));
    }
    let (content, crc_bytes) = bytes.split_at(bytes.len() - CRC_BYTES);
    let stored_crc = u32::from_be_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let actual_crc = crc32c::crc32c(content);
    if stored_crc != actual_crc {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored_crc:08x}, computed {actual_crc:08x})"
        )));
    }
    let wire = |e: WireError| corrupt(e.to_string());
    let mut decoder = Decoder::new(&content[8..], "delta layer");
    let version = decoder.u32().map_err(wire)?;
    if version != LAYER_FORMAT_VERSION {
        return Err(corrupt(format!(
            "unsupported format version {version} (this build reads {LAYER_FORMAT_VERSION})"
        )));
    }
    let start_lsn = decoder.lsn().map_err(wire)?;
    let end_lsn = decoder.lsn().map_err(wire)?;
    if start_lsn >= end_lsn {
        return Err(corrupt(format!("empty range {start_lsn}..{end_lsn}")));
    }
    // A transaction takes at least 20 bytes: commit LSN, xid and op count.
    let n_txns = decoder.count(20).map_err(wire)?;
    let mut transactions = Vec::with_capacity(n_txns);
    let mut previous = start_lsn;
    for _ in 0..n_txns {
        let lsn = decoder.lsn().map_err(wire)?;
        if lsn <= previous || lsn > end_lsn {
            return Err(corrupt(format!("commit LSN {lsn} after {previous} is out of order or outside {start_lsn}..{end_lsn}")));
        }
        previous = lsn;
        let xid = decoder.u64().map_err(wire)?;
        // An op takes at least 5 bytes: tag and table.
        let n_ops = decoder.count(5).map_err(wire)?;
        let mut ops = Vec::with_capacity(n_ops);
        for _ in 0..n_ops {
            ops.push(decode_op(&mut decoder).map_err(|e| match e {
                OpError::Wire(e) => wire(e),
                OpError::Tag(tag) => corrupt(format!("unknown operation tag {tag}")),
                OpError::TooLarge(n_bytes) => corrupt(format!(
                    "row of {n_bytes} bytes exceeds the WAL record limit"
                )),
            })?);
        }
        transactions.push((lsn, Transaction { xid, ops }));
    }
    decoder.finish().map_err(wire)?;
    assert_well_formed(start_lsn, end_lsn, &transactions);
    Ok(DeltaLayer {
        start_lsn,
        end_lsn,
        transactions,
    })
}

enum OpError {
    Wire(WireError),
    Tag(u8),
    TooLarge(usize),
}

impl From<WireError> for OpError {
    fn from(e: WireError) -> OpError {
        OpError::Wire(e)
    }
}

fn decode_op(decoder: &mut Decoder) -> std::result::Result<Op, OpError> {
    // A row came from one WAL record, so it is never larger than one; a bigger one could
    // not be sent to a compute in one frame.
    let checked = |n_bytes: usize| match n_bytes <= wal::RECORD_BYTES_MAX {
        true => Ok(()),
        false => Err(OpError::TooLarge(n_bytes)),
    };
    Ok(match decoder.u8()? {
        OP_PUT => {
            let table = decoder.u32()?;
            let key = decoder.bytes()?;
            let value = decoder.bytes()?;
            checked(key.len() + value.len())?;
            Op::Put {
                table,
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
            }
        }
        OP_DELETE => {
            let table = decoder.u32()?;
            let key = decoder.bytes()?;
            checked(key.len())?;
            Op::Delete {
                table,
                key: Bytes::copy_from_slice(key),
            }
        }
        OP_DROP_TABLE => Op::DropTable {
            table: decoder.u32()?,
        },
        tag => return Err(OpError::Tag(tag)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Rng;

    fn sample() -> DeltaLayer {
        let txn = |xid: u64, ops: Vec<Op>| Transaction { xid, ops };
        DeltaLayer {
            start_lsn: Lsn(100),
            end_lsn: Lsn(300),
            transactions: vec![
                (
                    Lsn(120),
                    txn(
                        1,
                        vec![Op::Put {
                            table: 7,
                            key: Bytes::from_static(b"k"),
                            value: Bytes::from_static(b"value"),
                        }],
                    ),
                ),
                (Lsn(150), txn(2, vec![])),
                (
                    Lsn(300),
                    txn(
                        3,
                        vec![
                            Op::Delete {
                                table: 7,
                                key: Bytes::from_static(b"k"),
                            },
                            Op::DropTable { table: 9 },
                        ],
                    ),
                ),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let layer = sample();
        let bytes = encode(layer.start_lsn, layer.end_lsn, &layer.transactions);
        assert_eq!(decode(&bytes).unwrap(), layer);
        let empty = encode(Lsn(0), Lsn(1), &[]);
        assert_eq!(decode(&empty).unwrap().transactions, vec![]);
    }

    #[test]
    fn corruption_at_every_byte_and_truncation_are_detected() {
        let layer = sample();
        let bytes = encode(layer.start_lsn, layer.end_lsn, &layer.transactions);
        for idx in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.to_vec();
                bad[idx] ^= flip;
                assert!(
                    decode(&bad).is_err(),
                    "flip {flip:#x} at byte {idx} not caught"
                );
            }
        }
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "truncation to {cut} bytes not caught"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    /// Bytes that pass the checksum but lie inside must be rejected too, without panics.
    #[test]
    fn garbage_with_a_valid_checksum_is_rejected() {
        let mut rng = Rng::new(7);
        let layer = sample();
        let bytes = encode(layer.start_lsn, layer.end_lsn, &layer.transactions);
        let reseal = |mut content: Vec<u8>| {
            let crc = crc32c::crc32c(&content);
            content.extend_from_slice(&crc.to_be_bytes());
            content
        };
        for _ in 0..2000 {
            let mut content = bytes[..bytes.len() - CRC_BYTES].to_vec();
            for _ in 0..1 + rng.below(3) {
                let idx = 8 + rng.below(content.len() as u64 - 8) as usize;
                content[idx] = rng.below(256) as u8;
            }
            let _ = decode(&reseal(content));
        }
        // Specific lies: an LSN out of range, and an op count larger than the file.
        let mut content = bytes[..bytes.len() - CRC_BYTES].to_vec();
        content[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&500u64.to_be_bytes());
        assert!(decode(&reseal(content)).is_err());
        let mut content = bytes[..bytes.len() - CRC_BYTES].to_vec();
        content[HEADER_BYTES + 16..HEADER_BYTES + 20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&reseal(content)).is_err());
        let mut content = bytes[..bytes.len() - CRC_BYTES].to_vec();
        content[12..20].copy_from_slice(&300u64.to_be_bytes());
        assert!(decode(&reseal(content)).is_err(), "start == end");
    }
}
