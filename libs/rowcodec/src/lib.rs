//! Table column types, the stored row format, the order-preserving key format and table
//! definitions: what every OmenDB service that touches table rows must agree on. Pure; no I/O.
//!
//! * [`ColumnType`] is the closed set of column types a table may declare. It maps to exactly
//!   one Arrow type ([`ColumnType::arrow_type`]) and carries its PostgreSQL identity through
//!   Arrow field metadata ([`PG_TYPE_METADATA_KEY`]) so that `varchar(20)` is not reported as
//!   `text`. With the `sql` feature it is parsed from the SQL AST (`ColumnType::from_sql`).
//! * [`encode_values`] / [`BatchBuilder`] (and, with the `scalar` feature, `encode_row` /
//!   `decode_row` over DataFusion's `ScalarValue`) implement the stored row value: a version
//!   byte, a value count and one tagged value per column. Tags make a row verifiable against
//!   the column types (corruption or a schema mix-up is an error, never a panic or a silently
//!   wrong value) and let a row written before `ADD COLUMN` decode with trailing NULLs.
//! * `encode_key` (feature `scalar`) implements the memcomparable primary-key encoding:
//!   comparing encodings byte-wise gives the SQL order of the key tuples, which is what range
//!   scans over the key-value store rely on.
//! * [`TableDef`] / [`ColumnDef`] are a table's schema as the catalog stores it (versioned
//!   JSON in catalog table [`CATALOG_TABLE_ID`], keyed by table name).
//!
//! # Features
//!
//! Compute enables `scalar` (DataFusion's `ScalarValue`, through `datafusion-common`) and
//! `sql` (the SQL parser's type AST). The pageserver enables neither: it decodes stored rows
//! into Arrow batches and reads table definitions, and must know nothing of SQL or DataFusion.
//! Both are default features only so that `cargo test -p rowcodec` tests everything; the
//! workspace dependency turns default features off.
//!
//! Row format, version 1 (integers are LEB128 varints, signed ones zigzag-mapped first):
//!
//! ```text
//! row   := 0x01 count:varint value{count}
//! value := 0x00                                  NULL
//!        | 0x01 | 0x02                           false | true
//!        | 0x03 i16 | 0x04 i32 | 0x05 i64         zigzag varint
//!        | 0x06 f32 | 0x07 f64                   little-endian IEEE 754
//!        | 0x08 len:varint utf8 | 0x09 len:varint bytes
//!        | 0x0A scale:i8 zigzag-varint(i128)      decimal
//!        | 0x0B days | 0x0C micros | 0x0D micros  date, timestamp, timestamptz (zigzag varint)
//! ```

mod column_type;
#[cfg(feature = "scalar")]
mod key;
mod row;
#[cfg(feature = "scalar")]
mod scalar;
#[cfg(feature = "sql")]
mod sql;
mod table;

pub use column_type::{
    ColumnType, DEFAULT_NUMERIC, MAX_NUMERIC_PRECISION, PG_TYPE_METADATA_KEY, UTC_TZ,
};
#[cfg(feature = "scalar")]
pub use key::encode_key;
pub use row::{encode_values, BatchBuilder, Value, ROW_FORMAT_VERSION};
#[cfg(feature = "scalar")]
pub use scalar::{decode_row, encode_row};
pub use table::{
    ColumnDef, TableDef, CATALOG_TABLE_ID, COMMIT_TIMES_TABLE_ID, FIRST_USER_TABLE_ID, KEY_COLUMN,
    META_TABLE_ID, NEXT_TABLE_ID_KEY,
};

/// Errors of the row and key codecs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A type or value the storage layer does not support (SQLSTATE 0A000).
    #[error("{0}")]
    Unsupported(String),
    /// Stored bytes that do not decode: corruption, or a bug in whoever wrote them.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A value (or stored tag) whose type differs from the column's.
    #[error("type mismatch: expected {expected}, found {found}")]
    TypeMismatch { expected: String, found: String },
    /// A NULL in a primary key.
    #[error("null value in primary key")]
    NullKey,
}
