//! The column scan of the pageserver protocol: `Request::ColumnScan` names a table, an LSN, a
//! projection (column indices of the table) and a conjunction of [`ColumnPredicate`]s
//! (`column op literal`); the pageserver answers with `Response::ColumnBatch` frames, then
//! `ScanEnd` (or `Error`).
//!
//! The `ipc` payloads of one answer's `ColumnBatch` frames, concatenated, are one Arrow IPC
//! stream: the first frame starts with the schema message, and every frame holds whole
//! messages (at most [`COLUMN_BATCH_IPC_BYTES_MAX`] bytes: a batch too large for one frame is
//! split by rows). An answer without `ColumnBatch` frames has no rows. Each batch holds the
//! requested columns in table order (each once), then the row's storage key (`__omendb_key`,
//! binary). The rows are exactly those of the table at the LSN that may satisfy every
//! predicate: a predicate the pageserver cannot decide exactly (a literal that does not
//! convert exactly to the column's type, an order comparison on a floating-point column)
//! keeps the row, so the caller applies its filters again.
//!
//! This crate knows nothing of Arrow: the payload is opaque bytes. Pure encoding and decoding.

use wire::{Decoder, Encoder, Result, WireError};

/// The most columns a `ColumnScan` may name (PostgreSQL's limit on a table's columns).
pub const COLUMN_SCAN_COLUMNS_MAX: usize = 1600;
/// The most predicates a `ColumnScan` may carry.
pub const COLUMN_SCAN_PREDICATES_MAX: usize = 256;
/// The most rows a `ColumnScan` may ask for per batch (a larger request is refused).
pub const COLUMN_SCAN_BATCH_ROWS_MAX: u32 = 64 * 1024;
/// The most bytes of Arrow IPC one `ColumnBatch` frame carries: well within
/// `wire::FRAME_BYTES_MAX`, so a frame never has to be refused for its size.
pub const COLUMN_BATCH_IPC_BYTES_MAX: usize = 16 << 20;
/// The longest text or bytes literal of a predicate.
pub const COLUMN_SCAN_LITERAL_BYTES_MAX: usize = 64 << 10;

const _: () = assert!(COLUMN_BATCH_IPC_BYTES_MAX + 64 < wire::FRAME_BYTES_MAX);

/// The comparison of a [`ColumnPredicate`]: `column op literal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Eq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CompareOp {
    fn code(self) -> u8 {
        match self {
            CompareOp::Eq => 0,
            CompareOp::Lt => 1,
            CompareOp::LtEq => 2,
            CompareOp::Gt => 3,
            CompareOp::GtEq => 4,
        }
    }

    fn from_code(code: u8) -> Result<CompareOp> {
        Ok(match code {
            0 => CompareOp::Eq,
            1 => CompareOp::Lt,
            2 => CompareOp::LtEq,
            3 => CompareOp::Gt,
            4 => CompareOp::GtEq,
            other => return Err(WireError::Malformed(format!("unknown comparison {other}"))),
        })
    }

    /// The same comparison with its sides swapped: `a < b` is `b > a`.
    pub fn flipped(self) -> CompareOp {
        match self {
            CompareOp::Eq => CompareOp::Eq,
            CompareOp::Lt => CompareOp::Gt,
            CompareOp::LtEq => CompareOp::GtEq,
            CompareOp::Gt => CompareOp::Lt,
            CompareOp::GtEq => CompareOp::LtEq,
        }
    }
}

/// The constant side of a [`ColumnPredicate`], in a small tagged form of its own (the
/// pageserver converts it to the column's type, exactly or not at all).
#[derive(Debug, Clone)]
pub enum Literal {
    Int(i64),
    Float(f64),
    /// An unscaled value and its scale: `{ value: 12345, scale: 2 }` is 123.45.
    Decimal {
        value: i128,
        scale: i8,
    },
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00:00 (UTC for `timestamptz`).
    Timestamp(i64),
}

/// Floats compare by their bits, so that a message equals itself after a round trip (NaN
/// included) and `Request` can stay `Eq`.
impl PartialEq for Literal {
    fn eq(&self, other: &Literal) -> bool {
        use Literal as L;
        match (self, other) {
            (L::Int(a), L::Int(b)) => a == b,
            (L::Float(a), L::Float(b)) => a.to_bits() == b.to_bits(),
            (
                L::Decimal {
                    value: a,
                    scale: sa,
                },
                L::Decimal {
                    value: b,
                    scale: sb,
                },
            ) => a == b && sa == sb,
            (L::Bool(a), L::Bool(b)) => a == b,
            (L::Text(a), L::Text(b)) => a == b,
            (L::Bytes(a), L::Bytes(b)) => a == b,
            (L::Date(a), L::Date(b)) => a == b,
            (L::Timestamp(a), L::Timestamp(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Literal {}

/// `column op literal`, where `column` indexes the table's columns. A NULL satisfies none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPredicate {
    pub column: u32,
    pub op: CompareOp,
    pub literal: Literal,
}

/// Bytes the smallest predicate takes on the wire: column, op, literal tag and a bool.
const PREDICATE_BYTES_MIN: usize = 4 + 1 + 1 + 1;

pub(crate) fn encode_column_scan(
    e: &mut Encoder,
    columns: &[u32],
    predicates: &[ColumnPredicate],
    batch_rows: u32,
) {
    e.u32(columns.len() as u32);
    for column in columns {
        e.u32(*column);
    }
    e.u32(predicates.len() as u32);
    for predicate in predicates {
        e.u32(predicate.column).u8(predicate.op.code());
        encode_literal(e, &predicate.literal);
    }
    e.u32(batch_rows);
}

/// Decodes what [`encode_column_scan`] wrote, within the protocol's limits.
pub(crate) fn decode_column_scan(d: &mut Decoder) -> Result<(Vec<u32>, Vec<ColumnPredicate>, u32)> {
    let n_columns = d.count(4)?;
    if n_columns > COLUMN_SCAN_COLUMNS_MAX {
        return Err(WireError::Malformed(format!(
            "column scan of {n_columns} columns (at most {COLUMN_SCAN_COLUMNS_MAX})"
        )));
    }
    let mut columns = Vec::with_capacity(n_columns);
    for _ in 0..n_columns {
        columns.push(d.u32()?);
    }
    let n_predicates = d.count(PREDICATE_BYTES_MIN)?;
    if n_predicates > COLUMN_SCAN_PREDICATES_MAX {
        return Err(WireError::Malformed(format!(
            "column scan with {n_predicates} predicates (at most {COLUMN_SCAN_PREDICATES_MAX})"
        )));
    }
    let mut predicates = Vec::with_capacity(n_predicates);
    for _ in 0..n_predicates {
        predicates.push(ColumnPredicate {
            column: d.u32()?,
            op: CompareOp::from_code(d.u8()?)?,
            literal: decode_literal(d)?,
        });
    }
    let batch_rows = d.u32()?;
    if batch_rows == 0 || batch_rows > COLUMN_SCAN_BATCH_ROWS_MAX {
        return Err(WireError::Malformed(format!(
            "column scan batches of {batch_rows} rows (1 to {COLUMN_SCAN_BATCH_ROWS_MAX})"
        )));
    }
    Ok((columns, predicates, batch_rows))
}

mod literal_tag {
    pub const INT: u8 = 0;
    pub const FLOAT: u8 = 1;
    pub const DECIMAL: u8 = 2;
    pub const BOOL: u8 = 3;
    pub const TEXT: u8 = 4;
    pub const BYTES: u8 = 5;
    pub const DATE: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
}

fn encode_literal(e: &mut Encoder, literal: &Literal) {
    match literal {
        Literal::Int(v) => e.u8(literal_tag::INT).u64(*v as u64),
        Literal::Float(v) => e.u8(literal_tag::FLOAT).u64(v.to_bits()),
        Literal::Decimal { value, scale } => e
            .u8(literal_tag::DECIMAL)
            .u64((*value as u128 >> 64) as u64)
            .u64(*value as u128 as u64)
            .u8(*scale as u8),
        Literal::Bool(v) => e.u8(literal_tag::BOOL).bool(*v),
        Literal::Text(v) => e.u8(literal_tag::TEXT).str(v),
        Literal::Bytes(v) => e.u8(literal_tag::BYTES).bytes(v),
        Literal::Date(v) => e.u8(literal_tag::DATE).u32(*v as u32),
        Literal::Timestamp(v) => e.u8(literal_tag::TIMESTAMP).u64(*v as u64),
    };
}

fn decode_literal(d: &mut Decoder) -> Result<Literal> {
    let too_long = |n: usize| {
        WireError::Malformed(format!(
            "predicate literal of {n} bytes (at most {COLUMN_SCAN_LITERAL_BYTES_MAX})"
        ))
    };
    Ok(match d.u8()? {
        literal_tag::INT => Literal::Int(d.u64()? as i64),
        literal_tag::FLOAT => Literal::Float(f64::from_bits(d.u64()?)),
        literal_tag::DECIMAL => {
            let high = d.u64()? as u128;
            let low = d.u64()? as u128;
            Literal::Decimal {
                value: ((high << 64) | low) as i128,
                scale: d.u8()? as i8,
            }
        }
        literal_tag::BOOL => Literal::Bool(d.bool()?),
        literal_tag::TEXT => {
            let text = d.str()?;
            if text.len() > COLUMN_SCAN_LITERAL_BYTES_MAX {
                return Err(too_long(text.len()));
            }
            Literal::Text(text.to_string())
        }
        literal_tag::BYTES => {
            let bytes = d.bytes()?;
            if bytes.len() > COLUMN_SCAN_LITERAL_BYTES_MAX {
                return Err(too_long(bytes.len()));
            }
            Literal::Bytes(bytes.to_vec())
        }
        literal_tag::DATE => Literal::Date(d.u32()? as i32),
        literal_tag::TIMESTAMP => Literal::Timestamp(d.u64()? as i64),
        other => {
            return Err(WireError::Malformed(format!(
                "unknown predicate literal tag {other}"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_round_trip_at_their_extremes() {
        let literals = [
            Literal::Int(i64::MIN),
            Literal::Int(-1),
            Literal::Int(i64::MAX),
            Literal::Float(-0.0),
            Literal::Float(f64::NAN),
            Literal::Float(f64::NEG_INFINITY),
            Literal::Decimal {
                value: i128::MIN,
                scale: -3,
            },
            Literal::Decimal {
                value: -12345,
                scale: 2,
            },
            Literal::Decimal {
                value: i128::MAX,
                scale: 38,
            },
            Literal::Bool(false),
            Literal::Bool(true),
            Literal::Text(String::new()),
            Literal::Text("é\0x".into()),
            Literal::Bytes(vec![0, 255]),
            Literal::Date(i32::MIN),
            Literal::Date(-1),
            Literal::Timestamp(i64::MIN),
            Literal::Timestamp(1_700_000_000_000_000),
        ];
        for literal in literals {
            let mut e = Encoder::new(0);
            encode_literal(&mut e, &literal);
            let bytes = e.finish();
            let mut d = Decoder::new(&bytes, "test");
            assert_eq!(d.u8().unwrap(), 0);
            assert_eq!(decode_literal(&mut d).unwrap(), literal);
            d.finish().unwrap();
        }
        assert_ne!(Literal::Float(0.0), Literal::Float(-0.0));
        assert_ne!(Literal::Int(1), Literal::Date(1));
    }

    #[test]
    fn limits_are_enforced_on_decode() {
        let decode = |columns: &[u32], predicates: &[ColumnPredicate], batch_rows: u32| {
            let mut e = Encoder::new(0);
            encode_column_scan(&mut e, columns, predicates, batch_rows);
            let bytes = e.finish();
            let mut d = Decoder::new(&bytes, "test");
            d.u8().unwrap();
            decode_column_scan(&mut d)
        };
        let predicate = ColumnPredicate {
            column: 0,
            op: CompareOp::Lt,
            literal: Literal::Int(3),
        };
        assert!(decode(&[0, 1], std::slice::from_ref(&predicate), 1).is_ok());
        assert!(decode(&[], &[], 0).is_err(), "zero rows per batch");
        assert!(decode(&[], &[], COLUMN_SCAN_BATCH_ROWS_MAX + 1).is_err());
        let columns = vec![0u32; COLUMN_SCAN_COLUMNS_MAX + 1];
        assert!(decode(&columns, &[], 1).is_err());
        let predicates = vec![predicate; COLUMN_SCAN_PREDICATES_MAX + 1];
        assert!(decode(&[], &predicates, 1).is_err());
        let long = ColumnPredicate {
            column: 0,
            op: CompareOp::Eq,
            literal: Literal::Text("x".repeat(COLUMN_SCAN_LITERAL_BYTES_MAX + 1)),
        };
        assert!(decode(&[], &[long], 1).is_err());
        for op in [
            CompareOp::Eq,
            CompareOp::Lt,
            CompareOp::LtEq,
            CompareOp::Gt,
            CompareOp::GtEq,
        ] {
            assert_eq!(CompareOp::from_code(op.code()).unwrap(), op);
            assert_eq!(op.flipped().flipped(), op);
        }
        assert!(CompareOp::from_code(5).is_err());
    }
}
