//! The stored row value (format in the crate docs): [`encode_values`] writes one,
//! [`BatchBuilder`] validates and decodes many straight into Arrow builders. Pure.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch,
    RecordBatchOptions, StringArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef};

use crate::{CodecError, ColumnType, UTC_TZ};

/// First byte of every row written by [`encode_values`] (and `encode_row`).
pub const ROW_FORMAT_VERSION: u8 = 1;

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_I16: u8 = 3;
const TAG_I32: u8 = 4;
const TAG_I64: u8 = 5;
const TAG_F32: u8 = 6;
const TAG_F64: u8 = 7;
pub(crate) const TAG_TEXT: u8 = 8;
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

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u128) {
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

/// One value as the row format stores it, borrowing its text or bytes: what [`encode_values`]
/// writes without DataFusion's `ScalarValue`. Each variant is one tag of the format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    /// An unscaled value and its scale: `Decimal(12345, 2)` is 123.45. At most 38 digits.
    Decimal(i128, i8),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00:00, without a time zone.
    Timestamp(i64),
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    TimestampTz(i64),
}

/// Appends the stored form of one row of `values`. The values are not checked against column
/// types here: [`BatchBuilder::append_row`] checks them when the row is read.
pub fn encode_values(values: &[Value], out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.push(ROW_FORMAT_VERSION);
    put_varint(out, values.len() as u128);
    for value in values {
        put_value(out, *value)?;
    }
    Ok(())
}

/// Appends one tagged value; only a decimal beyond 38 digits is refused.
pub(crate) fn put_value(out: &mut Vec<u8>, value: Value) -> Result<(), CodecError> {
    fn signed(out: &mut Vec<u8>, tag: u8, v: i128) {
        out.push(tag);
        put_varint(out, zigzag(v));
    }
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Bool(b) => out.push(if b { TAG_TRUE } else { TAG_FALSE }),
        Value::Int16(i) => signed(out, TAG_I16, i.into()),
        Value::Int32(i) => signed(out, TAG_I32, i.into()),
        Value::Int64(i) => signed(out, TAG_I64, i.into()),
        Value::Date(d) => signed(out, TAG_DATE, d.into()),
        Value::Timestamp(t) => signed(out, TAG_TS, t.into()),
        Value::TimestampTz(t) => signed(out, TAG_TSTZ, t.into()),
        Value::Float32(f) => {
            out.push(TAG_F32);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Float64(f) => {
            out.push(TAG_F64);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Text(s) => put_bytes(out, TAG_TEXT, s.as_bytes()),
        Value::Bytes(b) => put_bytes(out, TAG_BYTES, b),
        Value::Decimal(d, scale) => {
            if d.unsigned_abs() >= MAX_DECIMAL {
                return Err(CodecError::Unsupported(format!(
                    "numeric value {d} (scale {scale}) exceeds 38 digits"
                )));
            }
            out.push(TAG_DECIMAL);
            out.push(scale as u8);
            put_varint(out, zigzag(d));
        }
    }
    Ok(())
}

/// A decoded cell that borrows nothing, so the scratch vector can live in [`BatchBuilder`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell {
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
pub(crate) const MAX_DECIMAL: u128 = 10u128.pow(38);

/// Validates `bytes` against `types` and pushes one [`Cell`] per type into `cells` (cleared
/// first). Missing trailing values decode as NULL; extra values are an error.
pub(crate) fn parse_row(
    types: &[ColumnType],
    bytes: &[u8],
    cells: &mut Vec<Cell>,
) -> Result<(), CodecError> {
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
    /// Text and bytea payloads of the row being appended by `append_values`.
    #[cfg(feature = "scalar")]
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
            #[cfg(feature = "scalar")]
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

    /// Decodes one stored row (checked against the column types) and appends it.
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
    #[cfg(feature = "scalar")]
    pub fn append_values(
        &mut self,
        values: &[datafusion_common::ScalarValue],
    ) -> Result<(), CodecError> {
        self.check_schema()?;
        if values.len() > self.types.len() {
            return Err(CodecError::TypeMismatch {
                expected: format!("at most {} values", self.types.len()),
                found: format!("{} values", values.len()),
            });
        }
        for (ty, v) in self.types.iter().zip(values) {
            if !crate::scalar::scalar_matches(ty, v) {
                return Err(CodecError::TypeMismatch {
                    expected: ty.sql_name(),
                    found: v.data_type().to_string(),
                });
            }
        }
        self.scratch.clear();
        self.cells.clear();
        for v in values {
            let cell = crate::scalar::scalar_to_cell(v, &mut self.scratch);
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Array, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
        Int16Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema};

    /// Without the `scalar` feature (the pageserver's build), rows written from [`Value`]s
    /// decode into the columns' Arrow types, NULLs and missing trailing values included.
    #[test]
    fn values_round_trip_through_batch_builder() {
        use ColumnType as C;
        let types = [
            C::SmallInt,
            C::Int,
            C::BigInt,
            C::Double,
            C::Real,
            C::Text,
            C::Bool,
            C::Numeric {
                precision: 10,
                scale: 2,
            },
            C::Date,
            C::Timestamp,
            C::TimestampTz,
            C::Bytea,
        ];
        let fields: Vec<Field> = types
            .iter()
            .enumerate()
            .map(|(i, t)| t.arrow_field(&format!("c{i}"), true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let full = [
            Value::Int16(-7),
            Value::Int32(i32::MIN),
            Value::Int64(i64::MAX),
            Value::Float64(-2.5),
            Value::Float32(0.25),
            Value::Text("héllo"),
            Value::Bool(true),
            Value::Decimal(-12_345, 2),
            Value::Date(-1),
            Value::Timestamp(1_705_314_600_123_456),
            Value::TimestampTz(-5),
            Value::Bytes(&[0, 255]),
        ];
        let mut builder = BatchBuilder::new(&types, schema.clone());
        for values in [&full[..], &[Value::Null; 12][..], &full[..2]] {
            let mut row = Vec::new();
            encode_values(values, &mut row).unwrap();
            builder.append_row(&row).unwrap();
        }
        let batch = builder.finish().unwrap();
        assert_eq!((batch.num_rows(), batch.schema()), (3, schema));
        let col = |i: usize| batch.column(i).as_ref();
        fn down<T: 'static>(a: &dyn Array) -> &T {
            a.as_any().downcast_ref::<T>().unwrap()
        }
        assert_eq!(down::<Int16Array>(col(0)).value(0), -7);
        assert_eq!(down::<Int32Array>(col(1)).value(2), i32::MIN);
        assert_eq!(down::<Int64Array>(col(2)).value(0), i64::MAX);
        assert_eq!(down::<Float64Array>(col(3)).value(0), -2.5);
        assert_eq!(down::<Float32Array>(col(4)).value(0), 0.25);
        assert_eq!(down::<StringArray>(col(5)).value(0), "héllo");
        assert!(down::<BooleanArray>(col(6)).value(0));
        assert_eq!(down::<Decimal128Array>(col(7)).value(0), -12_345);
        assert_eq!(down::<Date32Array>(col(8)).value(0), -1);
        let ts = down::<TimestampMicrosecondArray>(col(9));
        assert_eq!(ts.value(0), 1_705_314_600_123_456);
        assert_eq!(down::<TimestampMicrosecondArray>(col(10)).value(0), -5);
        assert_eq!(down::<BinaryArray>(col(11)).value(0), &[0, 255]);
        for (i, column) in batch.columns().iter().enumerate() {
            assert!(column.is_null(1), "column {i}");
            assert_eq!(column.is_null(2), i >= 2, "column {i}");
        }

        // Tags are checked against the column types, and decimals against 38 digits.
        let mut row = Vec::new();
        encode_values(&[Value::Int64(1)], &mut row).unwrap();
        let mut one_int = BatchBuilder::new(
            &types[1..2],
            Arc::new(Schema::new(vec![types[1].arrow_field("c", true)])),
        );
        assert!(matches!(
            one_int.append_row(&row),
            Err(CodecError::TypeMismatch { .. })
        ));
        let too_wide = encode_values(&[Value::Decimal(MAX_DECIMAL as i128, 0)], &mut row);
        assert!(matches!(too_wide, Err(CodecError::Unsupported(_))));
    }
}
