//! Table column types, the stored row format and the order-preserving key format.
//!
//! * [`ColumnType`] is the closed set of column types a table may declare. It is parsed from
//!   the SQL AST ([`ColumnType::from_sql`]), maps to exactly one Arrow type
//!   ([`ColumnType::arrow_type`]) and carries its PostgreSQL identity through Arrow field
//!   metadata ([`PG_TYPE_METADATA_KEY`]) so that `varchar(20)` is not reported as `text`.
//! * [`encode_row`] / [`decode_row`] / [`BatchBuilder`] implement the stored row value: a
//!   version byte, a value count and one tagged value per column. Tags make a row verifiable
//!   against the column types (corruption or a schema mix-up is an error, never a panic or a
//!   silently wrong value) and let a row written before `ADD COLUMN` decode with trailing NULLs.
//! * [`encode_key`] implements the memcomparable primary-key encoding: comparing encodings
//!   byte-wise gives the SQL order of the key tuples, which is what range scans over the
//!   key-value store rely on.
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

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch,
    RecordBatchOptions, StringArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    CharacterLength, DataType as SqlType, ExactNumberInfo, TimezoneInfo,
};

/// Arrow field metadata key holding a [`ColumnType::pg_tag`], read back by `pgtypes`.
pub const PG_TYPE_METADATA_KEY: &str = "omendb.pg_type";
/// First byte of every row written by [`encode_row`].
pub const ROW_FORMAT_VERSION: u8 = 1;
/// Largest precision a `numeric` column may declare: what an `i128` (Arrow Decimal128) holds.
pub const MAX_NUMERIC_PRECISION: u8 = 38;
/// `numeric` without a type modifier. PostgreSQL's unconstrained numeric has no fixed scale,
/// which Decimal128 cannot express; 38 digits with 10 after the point keeps money-like and
/// ratio-like values exact while still leaving 28 integer digits.
pub const DEFAULT_NUMERIC: ColumnType = ColumnType::Numeric {
    precision: 38,
    scale: 10,
};
/// Time zone of `timestamptz` Arrow columns: values are UTC instants.
pub const UTC_TZ: &str = "+00:00";
/// PostgreSQL's limit for `varchar(n)`.
const MAX_VARCHAR_LEN: u64 = 10 * 1024 * 1024;

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

/// The column types a table may declare.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ColumnType {
    SmallInt,
    Int,
    BigInt,
    Double,
    Real,
    Text,
    Varchar(Option<u32>),
    Bool,
    Numeric { precision: u8, scale: i8 },
    Date,
    Timestamp,
    TimestampTz,
    Bytea,
}

fn unsupported(what: impl std::fmt::Display) -> CodecError {
    CodecError::Unsupported(format!("type {what} is not supported"))
}

impl ColumnType {
    /// Maps a SQL type from a `CREATE TABLE` / `ALTER TABLE` to a column type.
    ///
    /// `numeric`/`decimal` without modifiers becomes [`DEFAULT_NUMERIC`]; precision must be
    /// 1..=38 and scale between -38 and the precision (Decimal128's limits). `char(n)` is
    /// rejected: its blank-padding semantics are not implemented, and silently storing it as
    /// varchar would compare and print differently from PostgreSQL. `timestamp(p)` is only
    /// accepted for p = 6 because values are not rounded to a coarser precision.
    pub fn from_sql(t: &SqlType) -> Result<ColumnType, CodecError> {
        use ColumnType as C;
        Ok(match t {
            SqlType::SmallInt(None) | SqlType::Int2(None) => C::SmallInt,
            SqlType::Int(None) | SqlType::Integer(None) | SqlType::Int4(None) => C::Int,
            SqlType::BigInt(None) | SqlType::Int8(None) => C::BigInt,
            SqlType::Real | SqlType::Float4 => C::Real,
            SqlType::DoublePrecision | SqlType::Float8 | SqlType::Double(ExactNumberInfo::None) => {
                C::Double
            }
            SqlType::Float(info) => match info {
                ExactNumberInfo::None => C::Double,
                ExactNumberInfo::Precision(p) => match p {
                    0 => {
                        return Err(CodecError::Unsupported(
                            "precision for type float must be at least 1 bit".into(),
                        ))
                    }
                    1..=24 => C::Real,
                    25..=53 => C::Double,
                    _ => {
                        return Err(CodecError::Unsupported(
                            "precision for type float must be less than 54 bits".into(),
                        ))
                    }
                },
                ExactNumberInfo::PrecisionAndScale(..) => return Err(unsupported(t)),
            },
            SqlType::Text => C::Text,
            SqlType::Varchar(len) | SqlType::CharacterVarying(len) | SqlType::CharVarying(len) => {
                C::Varchar(varchar_len(len.as_ref(), t)?)
            }
            SqlType::Char(_) | SqlType::Character(_) => {
                return Err(CodecError::Unsupported(format!(
                    "type {t} (blank-padded character) is not supported; use varchar(n) or text"
                )))
            }
            SqlType::Bool | SqlType::Boolean => C::Bool,
            SqlType::Numeric(info) | SqlType::Decimal(info) | SqlType::Dec(info) => {
                numeric_type(info)?
            }
            SqlType::Date => C::Date,
            SqlType::Timestamp(precision, tz) => {
                if !matches!(precision, None | Some(6)) {
                    return Err(CodecError::Unsupported(format!(
                        "type {t} is not supported: only the default precision (6) is"
                    )));
                }
                match tz {
                    TimezoneInfo::None | TimezoneInfo::WithoutTimeZone => C::Timestamp,
                    TimezoneInfo::WithTimeZone | TimezoneInfo::Tz => C::TimestampTz,
                }
            }
            SqlType::Bytea => C::Bytea,
            // Spellings the parser does not know as keywords arrive as custom type names.
            SqlType::Custom(name, modifiers) if modifiers.is_empty() => {
                let last = name.0.last().map(|p| p.to_string()).unwrap_or_default();
                match last.trim_matches('"').to_ascii_lowercase().as_str() {
                    "int2" | "smallint" => C::SmallInt,
                    "int4" | "int" | "integer" => C::Int,
                    "int8" | "bigint" => C::BigInt,
                    "float4" | "real" => C::Real,
                    "float8" => C::Double,
                    "bool" | "boolean" => C::Bool,
                    "text" => C::Text,
                    "varchar" => C::Varchar(None),
                    "bytea" => C::Bytea,
                    "date" => C::Date,
                    "timestamp" => C::Timestamp,
                    "timestamptz" => C::TimestampTz,
                    "numeric" | "decimal" => DEFAULT_NUMERIC,
                    _ => return Err(unsupported(t)),
                }
            }
            _ => return Err(unsupported(t)),
        })
    }

    /// The Arrow type values of this column have everywhere (rows, batches, scalars).
    pub fn arrow_type(&self) -> DataType {
        match self {
            ColumnType::SmallInt => DataType::Int16,
            ColumnType::Int => DataType::Int32,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Double => DataType::Float64,
            ColumnType::Real => DataType::Float32,
            ColumnType::Text | ColumnType::Varchar(_) => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Numeric { precision, scale } => DataType::Decimal128(*precision, *scale),
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::TimestampTz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC_TZ)))
            }
            ColumnType::Bytea => DataType::Binary,
        }
    }

    /// Whether an Arrow type carries this column's values. The time zone name of a
    /// `timestamptz` column is not compared: every zone denotes the same UTC instants.
    pub fn matches_arrow(&self, dt: &DataType) -> bool {
        match (self, dt) {
            (ColumnType::TimestampTz, DataType::Timestamp(TimeUnit::Microsecond, Some(_))) => true,
            _ => self.arrow_type() == *dt,
        }
    }

    /// The type as PostgreSQL's `format_type` spells it (for `\d`, information_schema, errors).
    pub fn sql_name(&self) -> String {
        match self {
            ColumnType::SmallInt => "smallint".into(),
            ColumnType::Int => "integer".into(),
            ColumnType::BigInt => "bigint".into(),
            ColumnType::Double => "double precision".into(),
            ColumnType::Real => "real".into(),
            ColumnType::Text => "text".into(),
            ColumnType::Varchar(None) => "character varying".into(),
            ColumnType::Varchar(Some(n)) => format!("character varying({n})"),
            ColumnType::Bool => "boolean".into(),
            ColumnType::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp => "timestamp without time zone".into(),
            ColumnType::TimestampTz => "timestamp with time zone".into(),
            ColumnType::Bytea => "bytea".into(),
        }
    }

    /// Compact tag stored under [`PG_TYPE_METADATA_KEY`]; [`ColumnType::from_pg_tag`] inverts it.
    pub fn pg_tag(&self) -> String {
        match self {
            ColumnType::SmallInt => "int2".into(),
            ColumnType::Int => "int4".into(),
            ColumnType::BigInt => "int8".into(),
            ColumnType::Double => "float8".into(),
            ColumnType::Real => "float4".into(),
            ColumnType::Text => "text".into(),
            ColumnType::Varchar(None) => "varchar".into(),
            ColumnType::Varchar(Some(n)) => format!("varchar({n})"),
            ColumnType::Bool => "bool".into(),
            ColumnType::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp => "timestamp".into(),
            ColumnType::TimestampTz => "timestamptz".into(),
            ColumnType::Bytea => "bytea".into(),
        }
    }

    /// Parses a [`ColumnType::pg_tag`]; `None` for anything else.
    pub fn from_pg_tag(tag: &str) -> Option<ColumnType> {
        let simple = match tag {
            "int2" => Some(ColumnType::SmallInt),
            "int4" => Some(ColumnType::Int),
            "int8" => Some(ColumnType::BigInt),
            "float8" => Some(ColumnType::Double),
            "float4" => Some(ColumnType::Real),
            "text" => Some(ColumnType::Text),
            "varchar" => Some(ColumnType::Varchar(None)),
            "bool" => Some(ColumnType::Bool),
            "date" => Some(ColumnType::Date),
            "timestamp" => Some(ColumnType::Timestamp),
            "timestamptz" => Some(ColumnType::TimestampTz),
            "bytea" => Some(ColumnType::Bytea),
            _ => None,
        };
        if simple.is_some() {
            return simple;
        }
        if let Some(n) = tag
            .strip_prefix("varchar(")
            .and_then(|r| r.strip_suffix(')'))
        {
            return n.parse().ok().map(|n| ColumnType::Varchar(Some(n)));
        }
        let args = tag.strip_prefix("numeric(")?.strip_suffix(')')?;
        let (p, s) = args.split_once(',')?;
        Some(ColumnType::Numeric {
            precision: p.parse().ok()?,
            scale: s.parse().ok()?,
        })
    }

    /// An Arrow field of this type whose metadata records the PostgreSQL type.
    pub fn arrow_field(&self, name: &str, nullable: bool) -> Field {
        Field::new(name, self.arrow_type(), nullable).with_metadata(HashMap::from([(
            PG_TYPE_METADATA_KEY.to_string(),
            self.pg_tag(),
        )]))
    }
}

fn varchar_len(len: Option<&CharacterLength>, t: &SqlType) -> Result<Option<u32>, CodecError> {
    match len {
        None => Ok(None),
        Some(CharacterLength::IntegerLength { length, .. }) => {
            if *length == 0 {
                Err(CodecError::Unsupported(
                    "length for type varchar must be at least 1".into(),
                ))
            } else if *length > MAX_VARCHAR_LEN {
                Err(CodecError::Unsupported(format!(
                    "length for type varchar cannot exceed {MAX_VARCHAR_LEN}"
                )))
            } else {
                Ok(Some(*length as u32))
            }
        }
        Some(CharacterLength::Max) => Err(unsupported(t)),
    }
}

fn numeric_type(info: &ExactNumberInfo) -> Result<ColumnType, CodecError> {
    let (p, s) = match *info {
        ExactNumberInfo::None => return Ok(DEFAULT_NUMERIC),
        ExactNumberInfo::Precision(p) => (p, 0),
        ExactNumberInfo::PrecisionAndScale(p, s) => (p, s),
    };
    if p == 0 || p > u64::from(MAX_NUMERIC_PRECISION) {
        return Err(CodecError::Unsupported(format!(
            "NUMERIC precision {p} must be between 1 and {MAX_NUMERIC_PRECISION}"
        )));
    }
    if s > p as i64 || s < -i64::from(MAX_NUMERIC_PRECISION) {
        return Err(CodecError::Unsupported(format!(
            "NUMERIC scale {s} must be between -{MAX_NUMERIC_PRECISION} and precision {p}"
        )));
    }
    Ok(ColumnType::Numeric {
        precision: p as u8,
        scale: s as i8,
    })
}

// ---------------------------------------------------------------------------------------------
// Row encoding
// ---------------------------------------------------------------------------------------------

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_I16: u8 = 3;
const TAG_I32: u8 = 4;
const TAG_I64: u8 = 5;
const TAG_F32: u8 = 6;
const TAG_F64: u8 = 7;
const TAG_TEXT: u8 = 8;
const TAG_BYTES: u8 = 9;
const TAG_DECIMAL: u8 = 10;
const TAG_DATE: u8 = 11;
const TAG_TS: u8 = 12;
const TAG_TSTZ: u8 = 13;

fn tag_name(tag: u8) -> &'static str {
    match tag {
        TAG_NULL => "null",
        TAG_FALSE | TAG_TRUE => "boolean",
        TAG_I16 => "smallint",
        TAG_I32 => "integer",
        TAG_I64 => "bigint",
        TAG_F32 => "real",
        TAG_F64 => "double precision",
        TAG_TEXT => "text",
        TAG_BYTES => "bytea",
        TAG_DECIMAL => "numeric",
        TAG_DATE => "date",
        TAG_TS => "timestamp without time zone",
        TAG_TSTZ => "timestamp with time zone",
        _ => "unknown tag",
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn unzigzag(u: u128) -> i128 {
    ((u >> 1) as i128) ^ -((u & 1) as i128)
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    out.push(tag);
    put_varint(out, b.len() as u128);
    out.extend_from_slice(b);
}

/// Appends the stored form of one row. Values must already have their column's Arrow type
/// (NULLs may be typed or [`ScalarValue::Null`]).
pub fn encode_row(values: &[ScalarValue], out: &mut Vec<u8>) -> Result<(), CodecError> {
    use ScalarValue as S;
    out.push(ROW_FORMAT_VERSION);
    put_varint(out, values.len() as u128);
    for v in values {
        if v.is_null() {
            out.push(TAG_NULL);
            continue;
        }
        match v {
            S::Boolean(Some(b)) => out.push(if *b { TAG_TRUE } else { TAG_FALSE }),
            S::Int16(Some(i)) => {
                out.push(TAG_I16);
                put_varint(out, zigzag(i128::from(*i)));
            }
            S::Int32(Some(i)) => {
                out.push(TAG_I32);
                put_varint(out, zigzag(i128::from(*i)));
            }
            S::Int64(Some(i)) => {
                out.push(TAG_I64);
                put_varint(out, zigzag(i128::from(*i)));
            }
            S::Float32(Some(f)) => {
                out.push(TAG_F32);
                out.extend_from_slice(&f.to_le_bytes());
            }
            S::Float64(Some(f)) => {
                out.push(TAG_F64);
                out.extend_from_slice(&f.to_le_bytes());
            }
            S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) => {
                put_bytes(out, TAG_TEXT, s.as_bytes())
            }
            S::Binary(Some(b)) | S::LargeBinary(Some(b)) | S::BinaryView(Some(b)) => {
                put_bytes(out, TAG_BYTES, b)
            }
            S::Decimal128(Some(d), precision, scale) => {
                let limit = 10u128
                    .checked_pow(u32::from(*precision))
                    .unwrap_or(MAX_DECIMAL);
                if d.unsigned_abs() >= limit.min(MAX_DECIMAL) {
                    return Err(CodecError::Unsupported(format!(
                        "numeric value {d} (scale {scale}) does not fit precision {precision}"
                    )));
                }
                out.push(TAG_DECIMAL);
                out.push(*scale as u8);
                put_varint(out, zigzag(*d));
            }
            S::Date32(Some(d)) => {
                out.push(TAG_DATE);
                put_varint(out, zigzag(i128::from(*d)));
            }
            S::TimestampMicrosecond(Some(t), tz) => {
                out.push(if tz.is_some() { TAG_TSTZ } else { TAG_TS });
                put_varint(out, zigzag(i128::from(*t)));
            }
            other => {
                return Err(CodecError::Unsupported(format!(
                    "cannot store a value of Arrow type {}",
                    other.data_type()
                )))
            }
        }
    }
    Ok(())
}

/// A decoded cell that borrows nothing, so the scratch vector can live in [`BatchBuilder`].
#[derive(Debug, Clone, Copy)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Dec(i128),
    F32(f32),
    F64(f64),
    /// A byte range of the row (text, already UTF-8 validated, or bytea).
    Bytes(usize, usize),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| CodecError::Corrupt(format!("row truncated at byte {}", self.pos)))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<(usize, usize), CodecError> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| CodecError::Corrupt(format!("value of {n} bytes overruns the row")))?;
        self.pos = end;
        Ok((start, end))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let (s, e) = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[s..e]);
        Ok(a)
    }

    /// A LEB128 varint of at most `bits` significant bits.
    fn varint(&mut self, bits: u32) -> Result<u128, CodecError> {
        let mut v: u128 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            let chunk = u128::from(b & 0x7f);
            if shift >= bits || (shift > 0 && bits - shift < 7 && chunk >> (bits - shift) != 0) {
                return Err(CodecError::Corrupt("varint overflow".into()));
            }
            v |= chunk << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn signed(&mut self, min: i128, max: i128, bits: u32) -> Result<i128, CodecError> {
        let v = unzigzag(self.varint(bits)?);
        if v < min || v > max {
            return Err(CodecError::Corrupt(format!("integer {v} out of range")));
        }
        Ok(v)
    }
}

/// 10^38: Decimal128 holds at most 38 digits.
const MAX_DECIMAL: u128 = 10u128.pow(38);

/// Validates `bytes` against `types` and pushes one [`Cell`] per type into `cells` (cleared
/// first). Missing trailing values decode as NULL; extra values are an error.
fn parse_row(types: &[ColumnType], bytes: &[u8], cells: &mut Vec<Cell>) -> Result<(), CodecError> {
    cells.clear();
    let mut r = Reader { buf: bytes, pos: 0 };
    let version = r.byte()?;
    if version != ROW_FORMAT_VERSION {
        return Err(CodecError::Corrupt(format!(
            "unknown row format version {version}"
        )));
    }
    let count = r.varint(64)?;
    if count > types.len() as u128 {
        return Err(CodecError::Corrupt(format!(
            "row has {count} values but the table has {} columns",
            types.len()
        )));
    }
    for ty in &types[..count as usize] {
        let tag = r.byte()?;
        let mismatch = || CodecError::TypeMismatch {
            expected: ty.sql_name(),
            found: tag_name(tag).to_string(),
        };
        let cell = match (tag, ty) {
            (TAG_NULL, _) => Cell::Null,
            (TAG_FALSE, ColumnType::Bool) => Cell::Bool(false),
            (TAG_TRUE, ColumnType::Bool) => Cell::Bool(true),
            (TAG_I16, ColumnType::SmallInt) => {
                Cell::Int(r.signed(i16::MIN.into(), i16::MAX.into(), 17)? as i64)
            }
            (TAG_I32, ColumnType::Int) | (TAG_DATE, ColumnType::Date) => {
                Cell::Int(r.signed(i32::MIN.into(), i32::MAX.into(), 33)? as i64)
            }
            (TAG_I64, ColumnType::BigInt)
            | (TAG_TS, ColumnType::Timestamp)
            | (TAG_TSTZ, ColumnType::TimestampTz) => {
                Cell::Int(r.signed(i64::MIN.into(), i64::MAX.into(), 65)? as i64)
            }
            (TAG_F32, ColumnType::Real) => Cell::F32(f32::from_le_bytes(r.array()?)),
            (TAG_F64, ColumnType::Double) => Cell::F64(f64::from_le_bytes(r.array()?)),
            (TAG_TEXT, ColumnType::Text | ColumnType::Varchar(_)) => {
                let len = r.varint(64)?;
                let (s, e) = r.take(usize::try_from(len).unwrap_or(usize::MAX))?;
                std::str::from_utf8(&bytes[s..e])
                    .map_err(|err| CodecError::Corrupt(format!("invalid UTF-8 in text: {err}")))?;
                Cell::Bytes(s, e)
            }
            (TAG_BYTES, ColumnType::Bytea) => {
                let len = r.varint(64)?;
                let (s, e) = r.take(usize::try_from(len).unwrap_or(usize::MAX))?;
                Cell::Bytes(s, e)
            }
            (TAG_DECIMAL, ColumnType::Numeric { scale, .. }) => {
                let stored_scale = r.byte()? as i8;
                if stored_scale != *scale {
                    return Err(CodecError::TypeMismatch {
                        expected: ty.sql_name(),
                        found: format!("numeric with scale {stored_scale}"),
                    });
                }
                // Only Decimal128's own limit is enforced here: a value beyond the column's
                // precision is a constraint problem of whoever wrote it, and refusing it on read
                // would make the row unreadable.
                let v = unzigzag(r.varint(128)?);
                if v.unsigned_abs() >= MAX_DECIMAL {
                    return Err(CodecError::Corrupt(format!(
                        "decimal {v} exceeds 38 digits"
                    )));
                }
                Cell::Dec(v)
            }
            _ => return Err(mismatch()),
        };
        cells.push(cell);
    }
    if r.pos != bytes.len() {
        return Err(CodecError::Corrupt(format!(
            "{} trailing bytes after the last value",
            bytes.len() - r.pos
        )));
    }
    cells.resize(types.len(), Cell::Null);
    Ok(())
}

fn typed_null(ty: &ColumnType) -> ScalarValue {
    match ty {
        ColumnType::SmallInt => ScalarValue::Int16(None),
        ColumnType::Int => ScalarValue::Int32(None),
        ColumnType::BigInt => ScalarValue::Int64(None),
        ColumnType::Double => ScalarValue::Float64(None),
        ColumnType::Real => ScalarValue::Float32(None),
        ColumnType::Text | ColumnType::Varchar(_) => ScalarValue::Utf8(None),
        ColumnType::Bool => ScalarValue::Boolean(None),
        ColumnType::Numeric { precision, scale } => {
            ScalarValue::Decimal128(None, *precision, *scale)
        }
        ColumnType::Date => ScalarValue::Date32(None),
        ColumnType::Timestamp => ScalarValue::TimestampMicrosecond(None, None),
        ColumnType::TimestampTz => ScalarValue::TimestampMicrosecond(None, Some(Arc::from(UTC_TZ))),
        ColumnType::Bytea => ScalarValue::Binary(None),
    }
}

fn cell_to_scalar(ty: &ColumnType, cell: Cell, bytes: &[u8]) -> Result<ScalarValue, CodecError> {
    let corrupt =
        || CodecError::Corrupt(format!("cell does not fit column type {}", ty.sql_name()));
    Ok(match (cell, ty) {
        (Cell::Null, _) => typed_null(ty),
        (Cell::Bool(b), _) => ScalarValue::Boolean(Some(b)),
        (Cell::Int(i), ColumnType::SmallInt) => ScalarValue::Int16(Some(i as i16)),
        (Cell::Int(i), ColumnType::Int) => ScalarValue::Int32(Some(i as i32)),
        (Cell::Int(i), ColumnType::Date) => ScalarValue::Date32(Some(i as i32)),
        (Cell::Int(i), ColumnType::BigInt) => ScalarValue::Int64(Some(i)),
        (Cell::Int(i), ColumnType::Timestamp) => ScalarValue::TimestampMicrosecond(Some(i), None),
        (Cell::Int(i), ColumnType::TimestampTz) => {
            ScalarValue::TimestampMicrosecond(Some(i), Some(Arc::from(UTC_TZ)))
        }
        (Cell::F32(f), _) => ScalarValue::Float32(Some(f)),
        (Cell::F64(f), _) => ScalarValue::Float64(Some(f)),
        (Cell::Dec(d), ColumnType::Numeric { precision, scale }) => {
            ScalarValue::Decimal128(Some(d), *precision, *scale)
        }
        (Cell::Bytes(s, e), ColumnType::Bytea) => ScalarValue::Binary(Some(bytes[s..e].to_vec())),
        (Cell::Bytes(s, e), _) => ScalarValue::Utf8(Some(
            std::str::from_utf8(&bytes[s..e])
                .map_err(|_| corrupt())?
                .to_string(),
        )),
        _ => return Err(corrupt()),
    })
}

/// Decodes a stored row into one scalar per column type, of the column's Arrow type.
pub fn decode_row(types: &[ColumnType], bytes: &[u8]) -> Result<Vec<ScalarValue>, CodecError> {
    let mut cells = Vec::with_capacity(types.len());
    parse_row(types, bytes, &mut cells)?;
    types
        .iter()
        .zip(cells)
        .map(|(ty, cell)| cell_to_scalar(ty, cell, bytes))
        .collect()
}

/// Whether `v` is a (possibly NULL) value of column type `ty`.
fn scalar_matches(ty: &ColumnType, v: &ScalarValue) -> bool {
    matches!(v, ScalarValue::Null) || ty.matches_arrow(&v.data_type())
}

/// The scalar as a [`Cell`]; `scratch` receives text/bytea payloads, which the cell indexes.
fn scalar_to_cell(v: &ScalarValue, scratch: &mut Vec<u8>) -> Cell {
    use ScalarValue as S;
    let mut bytes = |b: &[u8]| {
        let start = scratch.len();
        scratch.extend_from_slice(b);
        Cell::Bytes(start, scratch.len())
    };
    match v {
        S::Boolean(Some(b)) => Cell::Bool(*b),
        S::Int16(Some(i)) => Cell::Int((*i).into()),
        S::Int32(Some(i)) | S::Date32(Some(i)) => Cell::Int((*i).into()),
        S::Int64(Some(i)) | S::TimestampMicrosecond(Some(i), _) => Cell::Int(*i),
        S::Float32(Some(f)) => Cell::F32(*f),
        S::Float64(Some(f)) => Cell::F64(*f),
        S::Decimal128(Some(d), ..) => Cell::Dec(*d),
        S::Utf8(Some(s)) => bytes(s.as_bytes()),
        S::Binary(Some(b)) => bytes(b),
        _ => Cell::Null,
    }
}

enum ColumnBuilder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    /// Text is gathered as bytes (validated per row) and turned into a StringArray in one
    /// bulk UTF-8 check at `finish`, which keeps the per-row path free of fallible steps.
    Text(BinaryBuilder),
    Bytes(BinaryBuilder),
    Dec(Decimal128Builder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    fn append(&mut self, cell: Cell, bytes: &[u8]) {
        use ColumnBuilder as B;
        match (self, cell) {
            (B::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (B::I16(b), Cell::Int(v)) => b.append_value(v as i16),
            (B::I32(b), Cell::Int(v)) => b.append_value(v as i32),
            (B::Date(b), Cell::Int(v)) => b.append_value(v as i32),
            (B::I64(b), Cell::Int(v)) => b.append_value(v),
            (B::Ts(b), Cell::Int(v)) => b.append_value(v),
            (B::F32(b), Cell::F32(v)) => b.append_value(v),
            (B::F64(b), Cell::F64(v)) => b.append_value(v),
            (B::Dec(b), Cell::Dec(v)) => b.append_value(v),
            (B::Text(b) | B::Bytes(b), Cell::Bytes(s, e)) => b.append_value(&bytes[s..e]),
            // Cells are produced for this column's type, so anything else is a NULL.
            (B::Bool(b), _) => b.append_null(),
            (B::I16(b), _) => b.append_null(),
            (B::I32(b), _) => b.append_null(),
            (B::Date(b), _) => b.append_null(),
            (B::I64(b), _) => b.append_null(),
            (B::Ts(b), _) => b.append_null(),
            (B::F32(b), _) => b.append_null(),
            (B::F64(b), _) => b.append_null(),
            (B::Dec(b), _) => b.append_null(),
            (B::Text(b) | B::Bytes(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> Result<ArrayRef, CodecError> {
        use ColumnBuilder as B;
        Ok(match self {
            B::Bool(b) => Arc::new(b.finish()),
            B::I16(b) => Arc::new(b.finish()),
            B::I32(b) => Arc::new(b.finish()),
            B::I64(b) => Arc::new(b.finish()),
            B::F32(b) => Arc::new(b.finish()),
            B::F64(b) => Arc::new(b.finish()),
            B::Text(b) => {
                let bin: BinaryArray = b.finish();
                Arc::new(
                    StringArray::try_from_binary(bin)
                        .map_err(|e| CodecError::Corrupt(format!("invalid UTF-8 in text: {e}")))?,
                )
            }
            B::Bytes(b) => Arc::new(b.finish()),
            B::Dec(b) => Arc::new(b.finish()),
            B::Date(b) => Arc::new(b.finish()),
            B::Ts(b) => Arc::new(b.finish()),
        })
    }
}

/// Builds a [`RecordBatch`] from stored rows (the scan hot path) or from scalars, writing
/// straight into Arrow builders. A row that fails to decode leaves the builder unchanged.
pub struct BatchBuilder {
    types: Vec<ColumnType>,
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    cells: Vec<Cell>,
    scratch: Vec<u8>,
    rows: usize,
    /// Why `schema` does not fit `types`, if it does not.
    invalid: Option<CodecError>,
}

impl BatchBuilder {
    /// `schema` must have one field per type, of the type's Arrow type (nullability and
    /// metadata are the caller's; a NULL in a non-nullable field fails at `finish`). A schema
    /// that does not fit is reported by every later call rather than here, so that
    /// construction stays infallible.
    pub fn new(types: &[ColumnType], schema: SchemaRef) -> Self {
        let mut invalid = None;
        if schema.fields().len() != types.len() {
            invalid = Some(CodecError::TypeMismatch {
                expected: format!("{} columns", types.len()),
                found: format!("schema with {} fields", schema.fields().len()),
            });
        }
        let mut columns = Vec::with_capacity(types.len());
        for (i, ty) in types.iter().enumerate() {
            let field_type = schema.fields().get(i).map(|f| f.data_type());
            if let Some(dt) = field_type.filter(|dt| !ty.matches_arrow(dt)) {
                invalid.get_or_insert(CodecError::TypeMismatch {
                    expected: ty.arrow_type().to_string(),
                    found: format!("field {i} of type {dt}"),
                });
            }
            columns.push(match ty {
                ColumnType::SmallInt => ColumnBuilder::I16(Int16Builder::new()),
                ColumnType::Int => ColumnBuilder::I32(Int32Builder::new()),
                ColumnType::BigInt => ColumnBuilder::I64(Int64Builder::new()),
                ColumnType::Double => ColumnBuilder::F64(Float64Builder::new()),
                ColumnType::Real => ColumnBuilder::F32(Float32Builder::new()),
                ColumnType::Text | ColumnType::Varchar(_) => {
                    ColumnBuilder::Text(BinaryBuilder::new())
                }
                ColumnType::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
                ColumnType::Numeric { precision, scale } => ColumnBuilder::Dec(
                    match Decimal128Builder::new().with_precision_and_scale(*precision, *scale) {
                        Ok(b) => b,
                        Err(e) => {
                            invalid.get_or_insert(CodecError::Unsupported(e.to_string()));
                            Decimal128Builder::new()
                        }
                    },
                ),
                ColumnType::Date => ColumnBuilder::Date(Date32Builder::new()),
                ColumnType::Timestamp => ColumnBuilder::Ts(TimestampMicrosecondBuilder::new()),
                ColumnType::TimestampTz => {
                    let tz = match field_type {
                        Some(DataType::Timestamp(_, Some(tz))) => tz.clone(),
                        _ => Arc::from(UTC_TZ),
                    };
                    ColumnBuilder::Ts(TimestampMicrosecondBuilder::new().with_timezone(tz))
                }
                ColumnType::Bytea => ColumnBuilder::Bytes(BinaryBuilder::new()),
            });
        }
        BatchBuilder {
            types: types.to_vec(),
            schema,
            columns,
            cells: Vec::with_capacity(types.len()),
            scratch: Vec::new(),
            rows: 0,
            invalid,
        }
    }

    fn check_schema(&self) -> Result<(), CodecError> {
        match &self.invalid {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Decodes one stored row (see [`decode_row`]) and appends it.
    pub fn append_row(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        self.check_schema()?;
        // Validate the whole row first so that an error never leaves columns of unequal length.
        parse_row(&self.types, bytes, &mut self.cells)?;
        for (col, cell) in self.columns.iter_mut().zip(&self.cells) {
            col.append(*cell, bytes);
        }
        self.rows += 1;
        Ok(())
    }

    /// Appends one row of scalars; fewer values than columns are padded with NULLs.
    pub fn append_values(&mut self, values: &[ScalarValue]) -> Result<(), CodecError> {
        self.check_schema()?;
        if values.len() > self.types.len() {
            return Err(CodecError::TypeMismatch {
                expected: format!("at most {} values", self.types.len()),
                found: format!("{} values", values.len()),
            });
        }
        for (ty, v) in self.types.iter().zip(values) {
            if !scalar_matches(ty, v) {
                return Err(CodecError::TypeMismatch {
                    expected: ty.sql_name(),
                    found: v.data_type().to_string(),
                });
            }
        }
        self.scratch.clear();
        self.cells.clear();
        for v in values {
            let cell = scalar_to_cell(v, &mut self.scratch);
            self.cells.push(cell);
        }
        self.cells.resize(self.types.len(), Cell::Null);
        for (col, cell) in self.columns.iter_mut().zip(&self.cells) {
            col.append(*cell, &self.scratch);
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The batch of the rows appended so far; the builder starts over empty.
    pub fn finish(&mut self) -> Result<RecordBatch, CodecError> {
        self.check_schema()?;
        let rows = std::mem::take(&mut self.rows);
        let arrays = self
            .columns
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect::<Result<Vec<_>, _>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)
            .map_err(|e| CodecError::Corrupt(format!("building record batch: {e}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Key encoding
// ---------------------------------------------------------------------------------------------

/// Appends the memcomparable encoding of a primary key tuple: for two tuples of the same
/// column types, byte-wise comparison of encodings equals SQL comparison of the tuples.
///
/// Integers, dates and timestamps are big-endian with the sign bit flipped; decimals are the
/// i128 the same way (one column has one scale). Floats map through the IEEE sign trick, with
/// -0 folded onto 0 and every NaN onto one NaN above +Infinity, as PostgreSQL orders them
/// (so -0 and 0 are the same key, like `'-0'::float8 = 0` in PostgreSQL). Text and bytea
/// escape 0x00 as 0x00 0xFF and end with 0x00 0x00, so a prefix sorts first and the next
/// column's bytes never mix into the comparison. Text compares by bytes (the "C" collation).
pub fn encode_key(values: &[ScalarValue], out: &mut Vec<u8>) -> Result<(), CodecError> {
    use ScalarValue as S;
    for v in values {
        if v.is_null() {
            return Err(CodecError::NullKey);
        }
        match v {
            S::Boolean(Some(b)) => out.push(u8::from(*b)),
            S::Int16(Some(i)) => out.extend_from_slice(&((*i as u16) ^ 0x8000).to_be_bytes()),
            S::Int32(Some(i)) | S::Date32(Some(i)) => {
                out.extend_from_slice(&((*i as u32) ^ (1 << 31)).to_be_bytes())
            }
            S::Int64(Some(i)) | S::TimestampMicrosecond(Some(i), _) => {
                out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes())
            }
            S::Decimal128(Some(d), ..) => {
                out.extend_from_slice(&((*d as u128) ^ (1 << 127)).to_be_bytes())
            }
            S::Float32(Some(f)) => {
                let f = if f.is_nan() {
                    f32::NAN
                } else if *f == 0.0 {
                    0.0
                } else {
                    *f
                };
                let bits = f.to_bits();
                let key = if bits >> 31 == 1 {
                    !bits
                } else {
                    bits | (1 << 31)
                };
                out.extend_from_slice(&key.to_be_bytes());
            }
            S::Float64(Some(f)) => {
                let f = if f.is_nan() {
                    f64::NAN
                } else if *f == 0.0 {
                    0.0
                } else {
                    *f
                };
                let bits = f.to_bits();
                let key = if bits >> 63 == 1 {
                    !bits
                } else {
                    bits | (1 << 63)
                };
                out.extend_from_slice(&key.to_be_bytes());
            }
            S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) => {
                escape_key_bytes(s.as_bytes(), out)
            }
            S::Binary(Some(b)) | S::LargeBinary(Some(b)) | S::BinaryView(Some(b)) => {
                escape_key_bytes(b, out)
            }
            other => {
                return Err(CodecError::Unsupported(format!(
                    "primary key of Arrow type {} is not supported",
                    other.data_type()
                )))
            }
        }
    }
    Ok(())
}

fn escape_key_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.reserve(b.len() + 2);
    for chunk in b.split_inclusive(|&x| x == 0) {
        out.extend_from_slice(chunk);
        if chunk.last() == Some(&0) {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use ScalarValue as S;

    fn num(precision: u8, scale: i8) -> ColumnType {
        ColumnType::Numeric { precision, scale }
    }

    #[rustfmt::skip]
    fn all_types() -> Vec<ColumnType> {
        use ColumnType::*;
        vec![SmallInt, Int, BigInt, Double, Real, Text, Varchar(Some(20)), Bool, num(10, 2), Date,
             Timestamp, TimestampTz, Bytea]
    }

    /// One value per [`all_types`] column, with awkward edges.
    fn sample_values() -> Vec<S> {
        vec![
            S::Int16(Some(-12345)),
            S::Int32(Some(i32::MIN)),
            S::Int64(Some(i64::MAX)),
            S::Float64(Some(-1.5e300)),
            S::Float32(Some(f32::NAN)),
            S::Utf8(Some("héllo\0world".into())),
            S::Utf8(Some(String::new())),
            S::Boolean(Some(true)),
            S::Decimal128(Some(-1_234_567_890), 10, 2),
            S::Date32(Some(-719_162)),
            S::TimestampMicrosecond(Some(1_705_314_600_123_456), None),
            S::TimestampMicrosecond(Some(i64::MIN), Some(Arc::from(UTC_TZ))),
            S::Binary(Some(vec![0, 1, 2, 255])),
        ]
    }

    fn encoded(values: &[S]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_row(values, &mut out).unwrap();
        out
    }

    fn parse_type(sql: &str) -> Result<ColumnType, CodecError> {
        let dialect = PostgreSqlDialect {};
        let mut parser = Parser::new(&dialect).try_with_sql(sql).expect("tokenize");
        ColumnType::from_sql(&parser.parse_data_type().expect("parse"))
    }

    #[test]
    #[rustfmt::skip]
    fn from_sql_maps_postgres_spellings() {
        use ColumnType::*;
        let cases = [
            ("int", Int), ("integer", Int), ("int4", Int), ("bigint", BigInt), ("int8", BigInt),
            ("smallint", SmallInt), ("int2", SmallInt), ("text", Text), ("varchar", Varchar(None)),
            ("varchar(20)", Varchar(Some(20))), ("character varying(5)", Varchar(Some(5))),
            ("boolean", Bool), ("bool", Bool), ("double precision", Double), ("float8", Double),
            ("float", Double), ("float(24)", Real), ("float(25)", Double), ("real", Real),
            ("float4", Real), ("numeric", DEFAULT_NUMERIC), ("numeric(10,2)", num(10, 2)),
            ("decimal(38)", num(38, 0)), ("numeric(5,-2)", num(5, -2)), ("date", Date),
            ("timestamp", Timestamp), ("timestamp without time zone", Timestamp),
            ("timestamp(6)", Timestamp), ("timestamptz", TimestampTz),
            ("timestamp with time zone", TimestampTz), ("bytea", Bytea),
        ];
        for (sql, want) in cases {
            assert_eq!(parse_type(sql), Ok(want), "{sql}");
        }
        for bad in ["char(3)", "character(3)", "numeric(39,2)", "numeric(5,6)", "numeric(0)", "json",
                    "uuid", "int unsigned", "timestamp(3)", "varchar(0)", "float(54)", "interval", "int(11)"] {
            assert!(matches!(parse_type(bad), Err(CodecError::Unsupported(m)) if !m.is_empty()), "{bad}");
        }
        assert!(parse_type("uuid").unwrap_err().to_string().contains("UUID"));
        assert!(parse_type("char(3)").unwrap_err().to_string().contains("varchar"));
    }

    #[test]
    fn names_tags_and_fields() {
        let names: Vec<String> = all_types().iter().map(ColumnType::sql_name).collect();
        let want = [
            "smallint",
            "integer",
            "bigint",
            "double precision",
            "real",
            "text",
            "character varying(20)",
            "boolean",
            "numeric(10,2)",
            "date",
            "timestamp without time zone",
            "timestamp with time zone",
            "bytea",
        ];
        assert_eq!(names, want);
        assert_eq!(ColumnType::Varchar(None).sql_name(), "character varying");
        let mut types = all_types();
        types.extend([ColumnType::Varchar(None), num(5, -2)]);
        for t in types {
            assert_eq!(ColumnType::from_pg_tag(&t.pg_tag()), Some(t.clone()));
            let f = t.arrow_field("c", true);
            assert_eq!(f.data_type(), &t.arrow_type());
            assert_eq!(f.metadata().get(PG_TYPE_METADATA_KEY), Some(&t.pg_tag()));
        }
        for bad in ["varchar(x)", "numeric(1)", "numeric(1,2", "int"] {
            assert_eq!(ColumnType::from_pg_tag(bad), None, "{bad}");
        }
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
        assert!(ColumnType::TimestampTz.matches_arrow(&utc));
        assert!(!ColumnType::Timestamp.matches_arrow(&utc));
    }

    #[test]
    fn row_round_trip_every_type_with_nulls() {
        let types = all_types();
        let buf = encoded(&sample_values());
        assert_eq!(buf[0], ROW_FORMAT_VERSION);
        let back = decode_row(&types, &buf).unwrap();
        // NaN != NaN, so compare re-encodings; and some values directly.
        assert_eq!(encoded(&back), buf);
        for i in [0, 5, 8, 11, 12] {
            assert_eq!(back[i], sample_values()[i]);
        }
        for (t, v) in types.iter().zip(&back) {
            assert!(t.matches_arrow(&v.data_type()), "{t:?} {v:?}");
        }
        // Every column NULL, typed or untyped: one byte each, typed NULLs back.
        let nulls: Vec<S> = types
            .iter()
            .enumerate()
            .map(|(i, t)| if i % 2 == 0 { S::Null } else { typed_null(t) })
            .collect();
        let buf = encoded(&nulls);
        assert_eq!(buf.len(), 2 + types.len());
        for (t, v) in types.iter().zip(decode_row(&types, &buf).unwrap()) {
            assert!(
                v.is_null() && t.matches_arrow(&v.data_type()),
                "{t:?} {v:?}"
            );
        }
        // Rows written before an ADD COLUMN decode with trailing NULLs; extra values fail.
        let buf = encoded(&sample_values()[..2]);
        let back = decode_row(&types, &buf).unwrap();
        assert_eq!(back[1], S::Int32(Some(i32::MIN)));
        assert!(back.len() == types.len() && back[2..].iter().all(S::is_null));
        assert!(matches!(
            decode_row(&types[..1], &buf),
            Err(CodecError::Corrupt(_))
        ));
    }

    #[test]
    fn type_checks() {
        let mismatch = |r| matches!(r, Err(CodecError::TypeMismatch { .. }));
        let buf = encoded(&[S::Int32(Some(1))]);
        assert!(mismatch(decode_row(&[ColumnType::BigInt], &buf)));
        let buf = encoded(&[S::Decimal128(Some(1), 10, 3)]);
        assert!(mismatch(decode_row(&[num(10, 2)], &buf)));
        let mut out = Vec::new();
        let too_wide = encode_row(&[S::Decimal128(Some(10_000), 4, 2)], &mut out);
        assert!(matches!(too_wide, Err(CodecError::Unsupported(_))));
        let unsupported = encode_row(&[S::UInt8(Some(1))], &mut out);
        assert!(matches!(unsupported, Err(CodecError::Unsupported(_))));
        // A value beyond the column's precision (but within 38 digits) still reads back.
        let buf = encoded(&[S::Decimal128(Some(10_000), 38, 2)]);
        assert_eq!(
            decode_row(&[num(4, 2)], &buf),
            Ok(vec![S::Decimal128(Some(10_000), 4, 2)])
        );
    }

    fn schema_for(types: &[ColumnType]) -> SchemaRef {
        let fields: Vec<Field> = types
            .iter()
            .enumerate()
            .map(|(i, t)| t.arrow_field(&format!("c{i}"), true))
            .collect();
        Arc::new(Schema::new(fields))
    }

    #[test]
    fn corrupt_rows_error_without_panicking() {
        let types = all_types();
        let buf = encoded(&sample_values());
        let mut builder = BatchBuilder::new(&types, schema_for(&types));
        for len in 0..buf.len() {
            // Even a prefix ending at a value boundary is invalid: the count promises more.
            assert!(
                decode_row(&types, &buf[..len]).is_err(),
                "truncated at {len}"
            );
            assert!(builder.append_row(&buf[..len]).is_err());
        }
        for i in 0..buf.len() {
            for flip in [0x01u8, 0x80, 0xFF, 0x7F, 0x40] {
                let mut bad = buf.clone();
                bad[i] ^= flip;
                let _ = decode_row(&types, &bad);
                let _ = builder.append_row(&bad);
            }
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert!(decode_row(&types, &longer).is_err());
        assert!(decode_row(&types, &[2, 0]).is_err(), "unknown version");
        let overlong = [
            1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
        ];
        assert!(decode_row(&types, &overlong).is_err());
        let huge_len = [
            1, 1, TAG_TEXT, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
        ];
        assert!(decode_row(&[ColumnType::Text], &huge_len).is_err());
        let bad_utf8 = [1, 1, TAG_TEXT, 2, 0xC3, 0x28];
        assert!(matches!(
            decode_row(&[ColumnType::Text], &bad_utf8),
            Err(CodecError::Corrupt(_))
        ));
        // Whatever was accepted still forms a consistent batch.
        let n = builder.len();
        assert_eq!(builder.finish().unwrap().num_rows(), n);
    }

    #[test]
    fn batch_builder_matches_decode_row() {
        let types = all_types();
        let schema = schema_for(&types);
        let mut builder = BatchBuilder::new(&types, schema.clone());
        let nulls: Vec<S> = types.iter().map(typed_null).collect();
        let rows = [
            sample_values(),
            nulls.clone(),
            sample_values()[..3].to_vec(),
        ];
        for row in &rows {
            builder.append_row(&encoded(row)).unwrap();
        }
        builder.append_values(&sample_values()).unwrap();
        builder.append_values(&[S::Null]).unwrap();
        assert!(builder.append_values(&[S::Int64(Some(1))]).is_err());
        assert!(builder.append_values(&vec![S::Null; 14]).is_err());
        assert_eq!(builder.len(), 5);
        let batch = builder.finish().unwrap();
        assert!(builder.is_empty());
        assert_eq!((batch.num_rows(), batch.schema()), (5, schema));
        let mut expected = rows.to_vec();
        expected.push(sample_values());
        expected.push(vec![]);
        for (r, row) in expected.iter().enumerate() {
            for (c, col) in batch.columns().iter().enumerate() {
                let got = S::try_from_array(col, r).unwrap();
                let want = row.get(c).cloned().unwrap_or_else(|| typed_null(&types[c]));
                assert_eq!(encoded(&[got]), encoded(&[want]), "row {r} column {c}");
            }
        }
        // Empty batches, and a table without columns.
        assert_eq!(builder.finish().unwrap().num_rows(), 0);
        let mut empty = BatchBuilder::new(&[], Arc::new(Schema::empty()));
        empty.append_row(&[1, 0]).unwrap();
        assert_eq!(empty.finish().unwrap().num_rows(), 1);
    }

    #[test]
    fn batch_builder_reports_a_wrong_schema() {
        let mut b = BatchBuilder::new(&[ColumnType::Int], schema_for(&[ColumnType::BigInt]));
        assert!(b.append_values(&[S::Int32(Some(1))]).is_err());
        assert!(b.finish().is_err());
        let mut b = BatchBuilder::new(&[ColumnType::Int], Arc::new(Schema::empty()));
        assert!(b.append_row(&[1, 0]).is_err());
    }

    fn key(values: &[S]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key(values, &mut out).unwrap();
        out
    }

    /// Keys of `sorted` (in SQL order, no duplicates) must be strictly increasing.
    fn assert_key_order(sorted: Vec<S>) {
        let keys: Vec<Vec<u8>> = sorted
            .iter()
            .map(|v| key(std::slice::from_ref(v)))
            .collect();
        for (i, pair) in keys.windows(2).enumerate() {
            assert!(pair[0] < pair[1], "{:?} !< {:?}", sorted[i], sorted[i + 1]);
        }
    }

    #[test]
    #[rustfmt::skip]
    fn key_order_single_columns() {
        let ints = [i64::MIN, -300, -256, -255, -1, 0, 1, 255, 256, 70_000, i64::MAX];
        assert_key_order(ints.map(|i| S::Int64(Some(i))).to_vec());
        assert_key_order([i32::MIN, -70_000, -1, 0, 1, 255, i32::MAX].map(|i| S::Int32(Some(i))).to_vec());
        assert_key_order([-32768i16, -1, 0, 1, 32767].map(|i| S::Int16(Some(i))).to_vec());
        assert_key_order([i32::MIN, -5, 0, 7].map(|d| S::Date32(Some(d))).to_vec());
        assert_key_order([i64::MIN, -1, 0, 1].map(|t| S::TimestampMicrosecond(Some(t), None)).to_vec());
        assert_key_order([i128::MIN, -10_000, -1, 0, 1, 99, i128::MAX].map(|d| S::Decimal128(Some(d), 38, 2)).to_vec());
        assert_key_order([false, true].map(|b| S::Boolean(Some(b))).to_vec());
        let f = [f64::NEG_INFINITY, -1e300, -1.5, -1e-300, 0.0, 1e-300, 2.0, 1e300, f64::INFINITY, f64::NAN];
        assert_key_order(f.map(|v| S::Float64(Some(v))).to_vec());
        let g = [f32::NEG_INFINITY, -3.5, -1e-45, 0.0, 0.25, f32::INFINITY, f32::NAN];
        assert_key_order(g.map(|v| S::Float32(Some(v))).to_vec());
        // -0 = 0 and NaN = NaN in PostgreSQL, so they must be the same key.
        assert_eq!(key(&[S::Float64(Some(-0.0))]), key(&[S::Float64(Some(0.0))]));
        assert_eq!(key(&[S::Float64(Some(-f64::NAN))]), key(&[S::Float64(Some(f64::NAN))]));
        let words = ["", "\0", "\0\0", "\0a", "a", "a\0", "a\0\0", "a\0b", "a\u{1}", "ab", "b", "é"];
        assert_key_order(words.map(|w| S::Utf8(Some(w.into()))).to_vec());
        let blobs: [&[u8]; 6] = [b"", b"\x00", b"\x00\xff", b"\x01", b"\xff", b"\xff\x00"];
        assert_key_order(blobs.map(|b| S::Binary(Some(b.to_vec()))).to_vec());
        assert_eq!(key(&[S::Utf8(Some("a\0b".into()))]), b"a\x00\xffb\x00\x00");
    }

    #[test]
    fn key_order_composite_matches_tuple_order() {
        // Sorting by encoded key == sorting the (text, int, bool) tuples.
        let mut tuples = Vec::new();
        for t in ["", "a", "a\0", "a\0\0", "ab", "b"] {
            for i in [i32::MIN, -2, 0, 3] {
                tuples.extend([(t.to_string(), i, false), (t.to_string(), i, true)]);
            }
        }
        let mut by_key = tuples.clone();
        by_key.reverse();
        by_key.sort_by_key(|(t, i, b)| {
            key(&[
                S::Utf8(Some(t.clone())),
                S::Int32(Some(*i)),
                S::Boolean(Some(*b)),
            ])
        });
        tuples.sort();
        assert_eq!(by_key, tuples);
    }

    #[test]
    fn key_rejects_null_and_unsupported() {
        let mut out = Vec::new();
        assert_eq!(
            encode_key(&[S::Int32(Some(1)), S::Int32(None)], &mut out),
            Err(CodecError::NullKey)
        );
        assert_eq!(encode_key(&[S::Null], &mut out), Err(CodecError::NullKey));
        let r = encode_key(&[S::UInt64(Some(1))], &mut out);
        assert!(matches!(r, Err(CodecError::Unsupported(_))));
    }
}
