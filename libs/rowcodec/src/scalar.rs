//! The row codec over DataFusion's `ScalarValue` (feature `scalar`): compute's write path
//! encodes scalars, and its point reads decode them. Pure.

use std::sync::Arc;

use datafusion_common::ScalarValue;

use crate::row::{parse_row, put_value, put_varint, Cell, Value, MAX_DECIMAL};
use crate::{CodecError, ColumnType, ROW_FORMAT_VERSION, UTC_TZ};

/// Appends the stored form of one row. Values must already have their column's Arrow type
/// (NULLs may be typed or [`ScalarValue::Null`]).
pub fn encode_row(values: &[ScalarValue], out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.push(ROW_FORMAT_VERSION);
    put_varint(out, values.len() as u128);
    for v in values {
        put_value(out, scalar_to_value(v)?)?;
    }
    Ok(())
}

/// The stored form of a scalar; a decimal must fit its own precision.
fn scalar_to_value(v: &ScalarValue) -> Result<Value<'_>, CodecError> {
    use ScalarValue as S;
    if v.is_null() {
        return Ok(Value::Null);
    }
    Ok(match v {
        S::Boolean(Some(b)) => Value::Bool(*b),
        S::Int16(Some(i)) => Value::Int16(*i),
        S::Int32(Some(i)) => Value::Int32(*i),
        S::Int64(Some(i)) => Value::Int64(*i),
        S::Float32(Some(f)) => Value::Float32(*f),
        S::Float64(Some(f)) => Value::Float64(*f),
        S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) => Value::Text(s),
        S::Binary(Some(b)) | S::LargeBinary(Some(b)) | S::BinaryView(Some(b)) => Value::Bytes(b),
        S::Decimal128(Some(d), precision, scale) => {
            let limit = 10u128
                .checked_pow(u32::from(*precision))
                .unwrap_or(MAX_DECIMAL);
            if d.unsigned_abs() >= limit.min(MAX_DECIMAL) {
                return Err(CodecError::Unsupported(format!(
                    "numeric value {d} (scale {scale}) does not fit precision {precision}"
                )));
            }
            Value::Decimal(*d, *scale)
        }
        S::Date32(Some(d)) => Value::Date(*d),
        S::TimestampMicrosecond(Some(t), None) => Value::Timestamp(*t),
        S::TimestampMicrosecond(Some(t), Some(_)) => Value::TimestampTz(*t),
        other => {
            return Err(CodecError::Unsupported(format!(
                "cannot store a value of Arrow type {}",
                other.data_type()
            )))
        }
    })
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
pub(crate) fn scalar_matches(ty: &ColumnType, v: &ScalarValue) -> bool {
    matches!(v, ScalarValue::Null) || ty.matches_arrow(&v.data_type())
}

/// The scalar as a [`Cell`]; `scratch` receives text/bytea payloads, which the cell indexes.
pub(crate) fn scalar_to_cell(v: &ScalarValue, scratch: &mut Vec<u8>) -> Cell {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::TAG_TEXT;
    use crate::BatchBuilder;
    use arrow::datatypes::{Field, Schema, SchemaRef};
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
}
