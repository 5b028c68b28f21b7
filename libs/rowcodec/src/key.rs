//! The memcomparable primary-key encoding (feature `scalar`: keys are built from compute's
//! scalars). Pure.

use datafusion_common::ScalarValue;

use crate::CodecError;

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
    use ScalarValue as S;

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
