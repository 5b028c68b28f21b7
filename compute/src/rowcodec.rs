//! Table column types, the stored row format and the order-preserving key format: the
//! `rowcodec` crate (`libs/rowcodec`), re-exported under compute's old path. Compute builds
//! it with the `scalar` feature (rows and keys from DataFusion `ScalarValue`s) and the `sql`
//! feature (`ColumnType::from_sql`, over the SQL parser's AST); the pageserver shares the
//! row decoder without either.

pub use ::rowcodec::{
    decode_row, encode_key, encode_row, encode_values, BatchBuilder, CodecError, ColumnType, Value,
    DEFAULT_NUMERIC, MAX_NUMERIC_PRECISION, PG_TYPE_METADATA_KEY, ROW_FORMAT_VERSION, UTC_TZ,
};
