//! PostgreSQL type identities and value formats.
//!
//! * [`pg_type_for_field`] / [`pg_type_for_column`] give the type OID, length and modifier
//!   announced in RowDescription and ParameterDescription.
//! * [`encode_text`] / [`encode_binary`] write one Arrow cell exactly as PostgreSQL 15 sends it
//!   (text output with DateStyle ISO, TimeZone UTC, extra_float_digits 1; binary `*send`).
//! * [`decode_param`] parses a Bind parameter in text or binary format into a [`ScalarValue`],
//!   with PostgreSQL's error messages and SQLSTATEs.
//!
//! Dates and timestamps are Arrow's (days / microseconds since 1970-01-01) and are converted
//! to PostgreSQL's 2000-01-01 epoch on the binary path. PostgreSQL's `infinity` and
//! `-infinity` map to the extreme `i32`/`i64` values, as in PostgreSQL itself.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::scalar::ScalarValue;

use crate::error::sqlstate::*;
use crate::rowcodec::{ColumnType, PG_TYPE_METADATA_KEY, UTC_TZ};

/// Type OIDs from PostgreSQL's `pg_type.dat`.
pub mod oid {
    pub const UNSPECIFIED: u32 = 0;
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// A value conversion error, with the SQLSTATE PostgreSQL reports for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PgTypeError {
    sqlstate: &'static str,
    message: String,
}

impl PgTypeError {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        PgTypeError { sqlstate, message }
    }
    pub fn sqlstate(&self) -> &'static str {
        self.sqlstate
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn err(sqlstate: &'static str, message: impl Into<String>) -> PgTypeError {
    PgTypeError::new(sqlstate, message)
}

fn syntax(tname: &str, input: &str) -> PgTypeError {
    let msg = format!("invalid input syntax for type {tname}: \"{input}\"");
    err(INVALID_TEXT_REPRESENTATION, msg)
}

/// What RowDescription / ParameterDescription say about a column or parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgType {
    pub oid: u32,
    pub typlen: i16,
    pub typmod: i32,
    pub name: &'static str,
}

impl PgType {
    const fn of(oid: u32, typlen: i16, name: &'static str) -> PgType {
        let typmod = -1;
        PgType {
            oid,
            typlen,
            typmod,
            name,
        }
    }
    pub const BOOL: PgType = PgType::of(oid::BOOL, 1, "bool");
    pub const BYTEA: PgType = PgType::of(oid::BYTEA, -1, "bytea");
    pub const INT8: PgType = PgType::of(oid::INT8, 8, "int8");
    pub const INT2: PgType = PgType::of(oid::INT2, 2, "int2");
    pub const INT4: PgType = PgType::of(oid::INT4, 4, "int4");
    pub const TEXT: PgType = PgType::of(oid::TEXT, -1, "text");
    pub const FLOAT4: PgType = PgType::of(oid::FLOAT4, 4, "float4");
    pub const FLOAT8: PgType = PgType::of(oid::FLOAT8, 8, "float8");
    pub const VARCHAR: PgType = PgType::of(oid::VARCHAR, -1, "varchar");
    pub const DATE: PgType = PgType::of(oid::DATE, 4, "date");
    pub const TIMESTAMP: PgType = PgType::of(oid::TIMESTAMP, 8, "timestamp");
    pub const TIMESTAMPTZ: PgType = PgType::of(oid::TIMESTAMPTZ, 8, "timestamptz");
    pub const NUMERIC: PgType = PgType::of(oid::NUMERIC, -1, "numeric");

    fn with_typmod(self, typmod: i32) -> PgType {
        PgType { typmod, ..self }
    }
}

/// PostgreSQL's numeric typmod: `((precision << 16) | (scale & 0x7ff)) + VARHDRSZ`.
fn numeric_typmod(precision: u8, scale: i8) -> i32 {
    ((i32::from(precision) << 16) | (i32::from(scale) & 0x7ff)) + 4
}

/// The PostgreSQL type of a table column.
pub fn pg_type_for_column(t: &ColumnType) -> PgType {
    match t {
        ColumnType::SmallInt => PgType::INT2,
        ColumnType::Int => PgType::INT4,
        ColumnType::BigInt => PgType::INT8,
        ColumnType::Double => PgType::FLOAT8,
        ColumnType::Real => PgType::FLOAT4,
        ColumnType::Text => PgType::TEXT,
        ColumnType::Varchar(None) => PgType::VARCHAR,
        ColumnType::Varchar(Some(n)) => {
            PgType::VARCHAR.with_typmod(i32::try_from(*n).unwrap_or(i32::MAX - 4) + 4)
        }
        ColumnType::Bool => PgType::BOOL,
        ColumnType::Numeric { precision, scale } => {
            PgType::NUMERIC.with_typmod(numeric_typmod(*precision, *scale))
        }
        ColumnType::Date => PgType::DATE,
        ColumnType::Timestamp => PgType::TIMESTAMP,
        ColumnType::TimestampTz => PgType::TIMESTAMPTZ,
        ColumnType::Bytea => PgType::BYTEA,
    }
}

/// The PostgreSQL type of a result column. The [`PG_TYPE_METADATA_KEY`] tag wins when it
/// agrees with the Arrow type (so `varchar(20)` stays varchar); otherwise the Arrow type
/// decides. The mapping always matches what [`encode_binary`] writes for that Arrow type.
pub fn pg_type_for_field(field: &Field) -> PgType {
    let tag = field.metadata().get(PG_TYPE_METADATA_KEY);
    if let Some(ct) = tag.and_then(|tag| ColumnType::from_pg_tag(tag)) {
        if ct.matches_arrow(field.data_type()) {
            return pg_type_for_column(&ct);
        }
    }
    match field.data_type() {
        DataType::Boolean => PgType::BOOL,
        DataType::Int8 | DataType::UInt8 | DataType::Int16 => PgType::INT2,
        DataType::UInt16 | DataType::Int32 => PgType::INT4,
        DataType::UInt32 | DataType::Int64 => PgType::INT8,
        DataType::UInt64 => PgType::NUMERIC,
        DataType::Float32 => PgType::FLOAT4,
        DataType::Float64 => PgType::FLOAT8,
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => PgType::NUMERIC.with_typmod(numeric_typmod(*p, *s)),
        DataType::Date32 => PgType::DATE,
        DataType::Timestamp(_, None) => PgType::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => PgType::TIMESTAMPTZ,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => PgType::BYTEA,
        // Strings, NULL and everything else (rendered by Arrow) travel as text.
        _ => PgType::TEXT,
    }
}

// Calendar ------------------------------------------------------------------------------------

const UNIX_TO_PG_DAYS: i64 = 10_957;
const UNIX_TO_PG_MICROS: i64 = 946_684_800_000_000;
const USECS_PER_DAY: i64 = 86_400_000_000;
/// PostgreSQL's date range in Arrow days: Julian day 0 (4714-11-24 BC) to 5874898-01-01.
const MIN_DATE: i64 = -2_440_588;
const END_DATE: i64 = 2_145_042_906;
/// PostgreSQL's MIN_TIMESTAMP in Arrow micros. Its END_TIMESTAMP (294277 AD) lies beyond
/// i64 in the 1970 epoch, so the upper bound is i64::MAX, which itself means `infinity`.
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000 + UNIX_TO_PG_MICROS;

/// Days since 1970-01-01 of a proleptic Gregorian date (year 0 = 1 BC), as PostgreSQL counts.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Writes `YYYY-MM-DD`; returns whether the year is BC (the caller appends " BC" last).
fn write_ymd(out: &mut String, days: i64) -> bool {
    let (y, m, d) = civil_from_days(days);
    let (y, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
    bc
}

/// Date32 days as PostgreSQL prints a date.
pub fn format_date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        _ => {
            let mut s = String::with_capacity(13);
            if write_ymd(&mut s, days.into()) {
                s.push_str(" BC");
            }
            s
        }
    }
}

/// Microseconds since 1970 as PostgreSQL prints a timestamp (`with_tz`: timestamptz in UTC).
pub fn format_timestamp(micros: i64, with_tz: bool) -> String {
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let mut s = String::with_capacity(32);
    let bc = write_ymd(&mut s, micros.div_euclid(USECS_PER_DAY));
    let t = micros.rem_euclid(USECS_PER_DAY);
    let (secs, frac) = (t / 1_000_000, t % 1_000_000);
    let _ = write!(
        s,
        " {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let digits = format!("{frac:06}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    if with_tz {
        s.push_str("+00");
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

// Numbers -------------------------------------------------------------------------------------

/// `floor(x * 2^e2 / 10^k)`, how the remainder compares with half a unit, and whether it is
/// zero, exactly in u128; `None` when the operands do not fit.
fn div_pow10(x: u128, e2: i32, k: i32) -> Option<(u128, Ordering, bool)> {
    let pow2 = |n: i32| 1u128.checked_shl(n as u32).filter(|_| n < 127);
    let pow10 = |n: i32| 10u128.checked_pow(n as u32);
    let num = x
        .checked_mul(pow2(e2.max(0))?)?
        .checked_mul(pow10((-k).max(0))?)?;
    let den = pow10(k.max(0))?.checked_mul(pow2((-e2).max(0))?)?;
    let rem = num % den;
    Some((num / den, rem.checked_mul(2)?.cmp(&den), rem == 0))
}

/// Shortest digits of the positive finite float `mant * 2^exp2` as PostgreSQL's Ryu
/// (`d2s.c`/`f2s.c`, built without STRICTLY_SHORTEST) picks them: the fewest digits strictly
/// inside the rounding interval, rounded half-even from the exact value. Rust's shortest
/// algorithm accepts the interval bounds and breaks exact ties upwards, so its digits (`sci`,
/// a `{:e}` rendering) only give the starting length; an exact search settles the rest. Where
/// the numbers exceed u128 (tiny or huge magnitudes, which cannot produce such ties) Rust's
/// digits stand. Returns the digits and the decimal exponent of the first one.
fn shortest_digits(mant: u64, exp2: i32, narrow_below: bool, sci: &str) -> (String, i32) {
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let rust_exp: i32 = exp.parse().unwrap_or(0);
    let rust_digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // The interval in units of 2^(exp2 - 2), as Ryu sets it up: (mm, mp), bounds excluded.
    let e2 = exp2 - 2;
    let mv = u128::from(mant) * 4;
    let (mp, mm) = (mv + 2, mv - if narrow_below { 1 } else { 2 });
    for len in rust_digits.len() as i32..=17 {
        let k = rust_exp - len + 1;
        let (Some((vm, ..)), Some((hi, _, hi_exact)), Some((vr, half, _))) = (
            div_pow10(mm, e2, k),
            div_pow10(mp, e2, k),
            div_pow10(mv, e2, k),
        ) else {
            break;
        };
        // Is the smallest multiple of 10^k above the lower bound also below the upper one?
        if vm + 1 < hi || (vm + 1 == hi && !hi_exact) {
            let round_up = half == Ordering::Greater || (half == Ordering::Equal && vr % 2 == 1);
            let out = (vr + u128::from(vr == vm || round_up)).to_string();
            let first_exp = k + out.len() as i32 - 1;
            return (out.trim_end_matches('0').to_string(), first_exp);
        }
    }
    (rust_digits, rust_exp)
}

/// `float8out`/`float4out` with extra_float_digits = 1: Ryu digits, fixed notation for
/// decimal exponents in `-4..max_fixed_exp` (15 / 6), else `d.ddde+XX`.
fn format_float(v: f64, mant: u64, exp2: i32, narrow: bool, sci: &str, max_fixed: i32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    let neg = v.is_sign_negative();
    if v.is_infinite() || v == 0.0 {
        let s = if v == 0.0 { "0" } else { "Infinity" };
        return if neg { format!("-{s}") } else { s.into() };
    }
    let (digits, exp) = shortest_digits(mant, exp2, narrow, sci);
    let n = digits.len() as i32;
    let mut s = String::with_capacity(26);
    if neg {
        s.push('-');
    }
    if (-4..max_fixed).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            s.push_str(&digits);
        } else if exp + 1 >= n {
            s.push_str(&digits);
            s.extend(std::iter::repeat_n('0', (exp + 1 - n) as usize));
        } else {
            let (int, frac) = digits.split_at(exp as usize + 1);
            let _ = write!(s, "{int}.{frac}");
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let sign = if exp < 0 { '-' } else { '+' };
        let point = if rest.is_empty() { "" } else { "." };
        let _ = write!(s, "{first}{point}{rest}e{sign}{:02}", exp.abs());
    }
    s
}

/// `float8out` with extra_float_digits = 1 (the PostgreSQL >= 12 default).
pub fn format_float8(v: f64) -> String {
    let bits = v.to_bits();
    let (biased, fraction) = ((bits >> 52) & 0x7ff, bits & ((1 << 52) - 1));
    let (mant, exp2) = match biased {
        0 => (fraction, -1074),
        _ => (fraction | (1 << 52), biased as i32 - 1075),
    };
    let narrow = fraction == 0 && biased > 1;
    format_float(v, mant, exp2, narrow, &format!("{:e}", v.abs()), 15)
}

/// `float4out` with extra_float_digits = 1.
pub fn format_float4(v: f32) -> String {
    let bits = v.to_bits();
    let (biased, fraction) = ((bits >> 23) & 0xff, bits & ((1 << 23) - 1));
    let (mant, exp2) = match biased {
        0 => (fraction, -149),
        _ => (fraction | (1 << 23), biased as i32 - 150),
    };
    let narrow = fraction == 0 && biased > 1;
    let sci = format!("{:e}", v.abs());
    format_float(v.into(), mant.into(), exp2, narrow, &sci, 6)
}

/// A scaled integer as PostgreSQL prints numeric: exactly `scale` fraction digits.
pub fn format_decimal(v: i128, scale: i8) -> String {
    let mut s = v.unsigned_abs().to_string();
    if scale <= 0 {
        if v != 0 {
            s.extend(std::iter::repeat_n('0', usize::from(scale.unsigned_abs())));
        }
    } else {
        let scale = scale as usize;
        if s.len() <= scale {
            s.insert_str(0, &"0".repeat(scale + 1 - s.len()));
        }
        s.insert(s.len() - scale, '.');
    }
    if v < 0 {
        s.insert(0, '-');
    }
    s
}

/// `numeric_send` of a decimal string such as "-12.50" or "12000": ndigits, weight, sign,
/// dscale, then base-10000 digits, with leading and trailing zero digits stripped as
/// PostgreSQL stores them.
fn put_numeric_binary(text: &str, out: &mut BytesMut) {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    // Pad the integer part on the left and the fraction on the right to whole groups of 4.
    let lead = (4 - int.len() % 4) % 4;
    let trail = (4 - frac.len() % 4) % 4;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', lead)
        .chain(int.bytes().chain(frac.bytes()))
        .chain(std::iter::repeat_n(b'0', trail))
        .collect();
    let group = |c: &[u8]| {
        c.iter()
            .fold(0i16, |a, d| a * 10 + i16::from(d.wrapping_sub(b'0')))
    };
    let groups: Vec<i16> = padded.chunks(4).map(group).collect();
    let first = groups.iter().position(|g| *g != 0).unwrap_or(groups.len());
    let last = groups
        .iter()
        .rposition(|g| *g != 0)
        .map_or(first, |i| i + 1);
    let digits = &groups[first..last];
    let weight = ((int.len() + lead) / 4) as i32 - 1 - first as i32;
    let (weight, sign) = match (digits.is_empty(), neg) {
        (true, _) => (0, 0),
        (false, neg) => (weight, if neg { 0x4000 } else { 0 }),
    };
    out.put_i16(digits.len() as i16);
    out.put_i16(weight as i16);
    out.put_u16(sign);
    out.put_u16(frac.len() as u16);
    digits.iter().for_each(|d| out.put_i16(*d));
}

// Output --------------------------------------------------------------------------------------

fn out_of_range(what: &str) -> PgTypeError {
    err(DATETIME_FIELD_OVERFLOW, format!("{what} out of range"))
}

/// A timestamp cell in microseconds; the extreme values of any unit stay the infinities.
fn timestamp_micros(array: &dyn Array, unit: &TimeUnit, row: usize) -> Result<i64, PgTypeError> {
    let (v, factor) = match unit {
        TimeUnit::Second => (
            array.as_primitive::<TimestampSecondType>().value(row),
            1_000_000,
        ),
        TimeUnit::Millisecond => (
            array.as_primitive::<TimestampMillisecondType>().value(row),
            1000,
        ),
        TimeUnit::Microsecond => (
            array.as_primitive::<TimestampMicrosecondType>().value(row),
            1,
        ),
        TimeUnit::Nanosecond => (
            array.as_primitive::<TimestampNanosecondType>().value(row),
            0,
        ),
    };
    match (v, factor) {
        (i64::MAX | i64::MIN, _) => Ok(v),
        (_, 0) => Ok(v.div_euclid(1000)),
        _ => v
            .checked_mul(factor)
            .filter(|m| *m != i64::MAX && *m != i64::MIN)
            .ok_or_else(|| out_of_range("timestamp")),
    }
}

fn check_row(array: &dyn Array, row: usize) -> Result<&dyn Array, PgTypeError> {
    match row < array.len() {
        true => Ok(array),
        false => Err(err(INTERNAL_ERROR, format!("row {row} out of bounds"))),
    }
}

fn put_hex(bytes: &[u8], out: &mut BytesMut) -> std::fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 + 2 * bytes.len());
    out.put_slice(b"\\x");
    for b in bytes {
        out.put_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }
    Ok(())
}

/// Appends the PostgreSQL text output of a non-NULL cell.
pub fn encode_text(array: &dyn Array, row: usize, out: &mut BytesMut) -> Result<(), PgTypeError> {
    let a = check_row(array, row)?;
    // fmt::Write on BytesMut cannot fail.
    let _ = match a.data_type() {
        DataType::Boolean => out.write_str(if a.as_boolean().value(row) { "t" } else { "f" }),
        DataType::Int8 => write!(out, "{}", a.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => write!(out, "{}", a.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => write!(out, "{}", a.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => write!(out, "{}", a.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => write!(out, "{}", a.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => write!(out, "{}", a.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => write!(out, "{}", a.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => write!(out, "{}", a.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => {
            out.write_str(&format_float4(a.as_primitive::<Float32Type>().value(row)))
        }
        DataType::Float64 => {
            out.write_str(&format_float8(a.as_primitive::<Float64Type>().value(row)))
        }
        DataType::Utf8 => out.write_str(a.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => out.write_str(a.as_string::<i64>().value(row)),
        DataType::Utf8View => out.write_str(a.as_string_view().value(row)),
        DataType::Binary => put_hex(a.as_binary::<i32>().value(row), out),
        DataType::LargeBinary => put_hex(a.as_binary::<i64>().value(row), out),
        DataType::BinaryView => put_hex(a.as_binary_view().value(row), out),
        DataType::FixedSizeBinary(_) => put_hex(a.as_fixed_size_binary().value(row), out),
        DataType::Decimal128(_, s) => out.write_str(&format_decimal(
            a.as_primitive::<Decimal128Type>().value(row),
            *s,
        )),
        DataType::Date32 => out.write_str(&format_date(a.as_primitive::<Date32Type>().value(row))),
        DataType::Timestamp(unit, tz) => {
            let micros = timestamp_micros(a, unit, row)?;
            out.write_str(&format_timestamp(micros, tz.is_some()))
        }
        // No PostgreSQL counterpart (or a rare decimal width): Arrow's own rendering.
        _ => {
            let fmt = ArrayFormatter::try_new(a, &FormatOptions::default())
                .map_err(|e| err(INTERNAL_ERROR, e.to_string()))?;
            write!(out, "{}", fmt.value(row))
        }
    };
    Ok(())
}

/// Appends the PostgreSQL binary (`*send`) form of a non-NULL cell, for the type
/// [`pg_type_for_field`] announces for the array's Arrow type.
pub fn encode_binary(array: &dyn Array, row: usize, out: &mut BytesMut) -> Result<(), PgTypeError> {
    let a = check_row(array, row)?;
    match a.data_type() {
        DataType::Boolean => out.put_u8(u8::from(a.as_boolean().value(row))),
        DataType::Int8 => out.put_i16(a.as_primitive::<Int8Type>().value(row).into()),
        DataType::UInt8 => out.put_i16(a.as_primitive::<UInt8Type>().value(row).into()),
        DataType::Int16 => out.put_i16(a.as_primitive::<Int16Type>().value(row)),
        DataType::UInt16 => out.put_i32(a.as_primitive::<UInt16Type>().value(row).into()),
        DataType::Int32 => out.put_i32(a.as_primitive::<Int32Type>().value(row)),
        DataType::UInt32 => out.put_i64(a.as_primitive::<UInt32Type>().value(row).into()),
        DataType::Int64 => out.put_i64(a.as_primitive::<Int64Type>().value(row)),
        DataType::Float32 => out.put_f32(a.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => out.put_f64(a.as_primitive::<Float64Type>().value(row)),
        DataType::Binary => out.put_slice(a.as_binary::<i32>().value(row)),
        DataType::LargeBinary => out.put_slice(a.as_binary::<i64>().value(row)),
        DataType::BinaryView => out.put_slice(a.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => out.put_slice(a.as_fixed_size_binary().value(row)),
        DataType::UInt64
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => {
            let mut text = BytesMut::new();
            encode_text(a, row, &mut text)?;
            let text =
                std::str::from_utf8(&text).map_err(|e| err(INTERNAL_ERROR, e.to_string()))?;
            put_numeric_binary(text, out);
        }
        DataType::Date32 => {
            let pg = match a.as_primitive::<Date32Type>().value(row) {
                d @ (i32::MAX | i32::MIN) => Some(d),
                d => i32::try_from(i64::from(d) - UNIX_TO_PG_DAYS).ok(),
            };
            out.put_i32(pg.ok_or_else(|| out_of_range("date"))?);
        }
        DataType::Timestamp(unit, _) => {
            let pg = match timestamp_micros(a, unit, row)? {
                v @ (i64::MAX | i64::MIN) => Some(v),
                v => v.checked_sub(UNIX_TO_PG_MICROS),
            };
            out.put_i64(pg.ok_or_else(|| out_of_range("timestamp"))?);
        }
        // Text and everything announced as text: the text output is the binary form.
        _ => encode_text(a, row, out)?,
    }
    Ok(())
}

mod input;
pub use input::decode_param;

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::*;
    use std::collections::HashMap;
    use ScalarValue as S;

    fn text(a: &dyn Array, row: usize) -> String {
        let mut out = BytesMut::new();
        encode_text(a, row, &mut out).unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn binary(a: &dyn Array, row: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_binary(a, row, &mut out).unwrap();
        out.to_vec()
    }

    /// decode_param with the error reduced to its SQLSTATE.
    fn p(oid: u32, format: i16, bytes: &[u8]) -> Result<S, &'static str> {
        decode_param(oid, format, bytes).map_err(|e| e.sqlstate())
    }

    fn tp(oid: u32, s: &str) -> Result<S, &'static str> {
        p(oid, 0, s.as_bytes())
    }

    fn dec(v: i128, s: i8) -> S {
        S::Decimal128(Some(v), 38, s)
    }

    fn ts(v: i64) -> S {
        S::TimestampMicrosecond(Some(v), None)
    }

    fn tstz(v: i64) -> S {
        S::TimestampMicrosecond(Some(v), Some(UTC_TZ.into()))
    }

    fn dec_array(v: i128, p: u8, s: i8) -> Decimal128Array {
        Decimal128Array::from(vec![v])
            .with_precision_and_scale(p, s)
            .unwrap()
    }

    /// Outputs as PostgreSQL 15 prints them (`select x::float8`). A comparison of 120k random
    /// values against PostgreSQL, exact ties and interval bounds included, matched as well.
    #[test]
    #[rustfmt::skip]
    fn floats_match_postgres() {
        let f8: [(f64, &str); 18] = [
            (0.1, "0.1"), (1.5, "1.5"), (100.0, "100"), (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"), (1e-5, "1e-05"), (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"), (-0.0, "-0"), (0.0, "0"), (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"), (-1e100, "-1e+100"), (f64::NAN, "NaN"), (1.0 / 3.0, "0.3333333333333333"),
            (f64::INFINITY, "Infinity"), (f64::NEG_INFINITY, "-Infinity"),
            // Rust's shortest digits for this double lie on the rounding interval's bound.
            (3.172230058817275e16, "3.1722300588172752e+16"),
        ];
        for (v, want) in f8 {
            assert_eq!(format_float8(v), want, "{v:e}");
        }
        let f4: [(f32, &str); 9] = [
            (1e6, "1e+06"), (123456.0, "123456"), (1e-5, "1e-05"), (0.1, "0.1"), (-0.0, "-0"),
            (f32::MAX, "3.4028235e+38"), (f32::NAN, "NaN"), (8.124762e7, "8.1247616e+07"),
            // An exact tie: PostgreSQL rounds half to even where Rust's shortest rounds up.
            (1346681.25_f64 as f32, "1.3466812e+06"),
        ];
        for (v, want) in f4 {
            assert_eq!(format_float4(v), want, "{v:e}");
        }
    }

    #[test]
    fn pg_types_of_fields_and_columns() {
        let f = ColumnType::Varchar(Some(20)).arrow_field("v", true);
        assert_eq!(pg_type_for_field(&f), PgType::VARCHAR.with_typmod(24));
        let num = ColumnType::Numeric {
            precision: 10,
            scale: 2,
        }
        .arrow_field("n", true);
        let t = pg_type_for_field(&num);
        assert_eq!((t.oid, t.typmod, t.typlen), (1700, (10 << 16 | 2) + 4, -1));
        assert_eq!(pg_type_for_column(&ColumnType::Int), PgType::INT4);
        // Metadata that disagrees with the Arrow type is ignored.
        let meta = HashMap::from([(PG_TYPE_METADATA_KEY.to_string(), "int4".to_string())]);
        let lying = Field::new("x", DataType::Int64, true).with_metadata(meta);
        assert_eq!(pg_type_for_field(&lying).oid, oid::INT8);
        let utc = Some(Arc::from("UTC"));
        let cases = [
            (DataType::Int16, 21),
            (DataType::Int32, 23),
            (DataType::Int64, 20),
            (DataType::Float32, 700),
            (DataType::Float64, 701),
            (DataType::Utf8, 25),
            (DataType::LargeUtf8, 25),
            (DataType::Utf8View, 25),
            (DataType::Boolean, 16),
            (DataType::Decimal128(38, 10), 1700),
            (DataType::Date32, 1082),
            (DataType::Timestamp(TimeUnit::Microsecond, None), 1114),
            (DataType::Timestamp(TimeUnit::Nanosecond, utc), 1184),
            (DataType::Binary, 17),
            (DataType::LargeBinary, 17),
            (DataType::Null, 25),
            (DataType::Time64(TimeUnit::Microsecond), 25),
            (DataType::UInt64, 1700),
        ];
        for (dt, want) in cases {
            let f = Field::new("c", dt.clone(), true);
            assert_eq!(pg_type_for_field(&f).oid, want, "{dt}");
        }
        for t in [ColumnType::Date, ColumnType::TimestampTz, ColumnType::Bytea] {
            assert_eq!(
                pg_type_for_column(&t),
                pg_type_for_field(&t.arrow_field("c", true))
            );
        }
    }

    #[test]
    #[rustfmt::skip]
    fn text_output_of_every_type() {
        let tsa = |v: i64| TimestampMicrosecondArray::from(vec![v]);
        let cases: Vec<(ArrayRef, &str)> = vec![
            (Arc::new(BooleanArray::from(vec![false])), "f"),
            (Arc::new(BooleanArray::from(vec![true])), "t"),
            (Arc::new(Int16Array::from(vec![-32768])), "-32768"),
            (Arc::new(Int32Array::from(vec![42])), "42"),
            (Arc::new(Int64Array::from(vec![i64::MIN])), "-9223372036854775808"),
            (Arc::new(UInt64Array::from(vec![u64::MAX])), "18446744073709551615"),
            (Arc::new(Float64Array::from(vec![1e15])), "1e+15"),
            (Arc::new(Float32Array::from(vec![1.5])), "1.5"),
            (Arc::new(StringArray::from(vec!["héllo"])), "héllo"),
            (Arc::new(BinaryArray::from(vec![&[10u8, 11, 255][..]])), "\\x0a0bff"),
            (Arc::new(BinaryArray::from(vec![&[][..]])), "\\x"),
            (Arc::new(dec_array(1250, 10, 2)), "12.50"),
            (Arc::new(dec_array(-5, 10, 2)), "-0.05"),
            (Arc::new(dec_array(0, 10, 2)), "0.00"),
            (Arc::new(dec_array(7, 10, 0)), "7"),
            (Arc::new(dec_array(12, 5, -3)), "12000"),
            (Arc::new(dec_array(-1, 38, 10)), "-0.0000000001"),
            (Arc::new(Date32Array::from(vec![19737])), "2024-01-15"),
            (Arc::new(Date32Array::from(vec![0])), "1970-01-01"),
            (Arc::new(Date32Array::from(vec![-719_162])), "0001-01-01"),
            (Arc::new(Date32Array::from(vec![-735_160])), "0044-03-15 BC"),
            (Arc::new(Date32Array::from(vec![2_932_897])), "10000-01-01"),
            (Arc::new(Date32Array::from(vec![i32::MAX])), "infinity"),
            (Arc::new(Date32Array::from(vec![i32::MIN])), "-infinity"),
            (Arc::new(tsa(1_705_314_600_000_000)), "2024-01-15 10:30:00"),
            (Arc::new(tsa(1_705_314_600_123_450)), "2024-01-15 10:30:00.12345"),
            (Arc::new(tsa(1_705_314_600_000_001).with_timezone("+00:00")), "2024-01-15 10:30:00.000001+00"),
            (Arc::new(tsa(-1)), "1969-12-31 23:59:59.999999"),
            (Arc::new(tsa(-63_517_786_200_000_000).with_timezone("UTC")), "0044-03-15 10:30:00+00 BC"),
            (Arc::new(tsa(i64::MAX)), "infinity"),
            (Arc::new(tsa(i64::MIN)), "-infinity"),
            (Arc::new(TimestampNanosecondArray::from(vec![1_999])), "1970-01-01 00:00:00.000001"),
            (Arc::new(TimestampSecondArray::from(vec![86_400])), "1970-01-02 00:00:00"),
            // No PostgreSQL counterpart: Arrow's rendering, announced as text.
            (Arc::new(Time64MicrosecondArray::from(vec![3_600_000_000])), "01:00:00"),
        ];
        for (array, want) in cases {
            assert_eq!(text(&array, 0), want, "{:?}", array.data_type());
        }
        let mut out = BytesMut::new();
        assert!(encode_text(&Int32Array::from(vec![1]), 1, &mut out).is_err());
        assert!(encode_binary(&Int32Array::from(vec![1]), 1, &mut out).is_err());
        let seconds = TimestampSecondArray::from(vec![i64::MAX / 10]);
        assert!(encode_text(&seconds, 0, &mut out).is_err());
    }

    #[test]
    #[rustfmt::skip]
    fn binary_output() {
        let cases: Vec<(ArrayRef, Vec<u8>)> = vec![
            (Arc::new(BooleanArray::from(vec![true])), vec![1]),
            (Arc::new(Int16Array::from(vec![-2])), vec![0xff, 0xfe]),
            (Arc::new(Int32Array::from(vec![258])), vec![0, 0, 1, 2]),
            (Arc::new(Int64Array::from(vec![1])), 1i64.to_be_bytes().to_vec()),
            (Arc::new(UInt32Array::from(vec![1])), 1i64.to_be_bytes().to_vec()),
            (Arc::new(Float64Array::from(vec![1.5])), 1.5f64.to_be_bytes().to_vec()),
            (Arc::new(Float32Array::from(vec![-2.0])), (-2.0f32).to_be_bytes().to_vec()),
            (Arc::new(StringArray::from(vec!["hé"])), "hé".as_bytes().to_vec()),
            (Arc::new(BinaryArray::from(vec![&[0u8, 1][..]])), vec![0, 1]),
            (Arc::new(Date32Array::from(vec![10_957])), vec![0, 0, 0, 0]),
            (Arc::new(Date32Array::from(vec![0])), (-10_957i32).to_be_bytes().to_vec()),
            (Arc::new(Date32Array::from(vec![i32::MAX])), i32::MAX.to_be_bytes().to_vec()),
            (Arc::new(TimestampMicrosecondArray::from(vec![946_684_800_000_001])), 1i64.to_be_bytes().to_vec()),
            (Arc::new(TimestampMicrosecondArray::from(vec![i64::MIN])), i64::MIN.to_be_bytes().to_vec()),
            (Arc::new(UInt64Array::from(vec![10_000])), vec![0, 1, 0, 1, 0, 0, 0, 0, 0, 1]),
        ];
        for (array, want) in cases {
            assert_eq!(binary(&array, 0), want, "{:?}", array.data_type());
        }
        let mut out = BytesMut::new();
        assert!(encode_binary(&Date32Array::from(vec![i32::MIN + 1]), 0, &mut out).is_err());
    }

    /// numeric_send of a Decimal128 as (ndigits, weight, sign, dscale, digits).
    fn numeric_send(v: i128, s: i8) -> (i16, i16, u16, u16, Vec<i16>) {
        let b = binary(&dec_array(v, 38, s), 0);
        let w: Vec<u16> = b
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let digits = w[4..].iter().map(|d| *d as i16).collect();
        (w[0] as i16, w[1] as i16, w[2], w[3], digits)
    }

    #[test]
    fn numeric_binary_matches_numeric_send() {
        // Expected values from PostgreSQL 15 `numeric_send`.
        assert_eq!(numeric_send(1250, 2), (2, 0, 0, 2, vec![12, 5000]));
        assert_eq!(numeric_send(-1250, 2), (2, 0, 0x4000, 2, vec![12, 5000]));
        assert_eq!(numeric_send(0, 0), (0, 0, 0, 0, vec![]));
        assert_eq!(numeric_send(0, 3), (0, 0, 0, 3, vec![]));
        assert_eq!(numeric_send(1, 4), (1, -1, 0, 4, vec![1]));
        assert_eq!(numeric_send(1234, 8), (1, -2, 0, 8, vec![1234]));
        assert_eq!(numeric_send(12, -3), (2, 1, 0, 0, vec![1, 2000]));
        assert_eq!(numeric_send(100_000_000, 0), (1, 2, 0, 0, vec![1]));
        assert_eq!(numeric_send(10i128.pow(38) - 1, 0).0, 10);
        // And back through numeric_recv.
        let values = [
            0i128,
            1,
            -1,
            1250,
            -99_999,
            10i128.pow(37),
            1 - 10i128.pow(38),
            5,
        ];
        for v in values {
            for s in [0i8, 2, 4, 5, 10, 38] {
                let b = binary(&dec_array(v, 38, s), 0);
                assert_eq!(p(oid::NUMERIC, 1, &b), Ok(dec(v, s)), "{v} scale {s}");
            }
        }
        // Digits hidden by dscale are truncated, as numeric_recv does: 1.2345, dscale 2.
        let b = [0, 2, 0, 0, 0, 0, 0, 2, 0, 1, 0x09, 0x29];
        assert_eq!(p(oid::NUMERIC, 1, &b), Ok(dec(123, 2)));
    }

    #[test]
    #[rustfmt::skip]
    fn text_params() {
        use oid::*;
        let cases: Vec<(u32, &str, Result<S, &str>)> = vec![
            (BOOL, "t", Ok(S::Boolean(Some(true)))), (BOOL, "TRUE", Ok(S::Boolean(Some(true)))),
            (BOOL, " yes ", Ok(S::Boolean(Some(true)))), (BOOL, "on", Ok(S::Boolean(Some(true)))),
            (BOOL, "1", Ok(S::Boolean(Some(true)))), (BOOL, "tr", Ok(S::Boolean(Some(true)))),
            (BOOL, "f", Ok(S::Boolean(Some(false)))), (BOOL, "off", Ok(S::Boolean(Some(false)))),
            (BOOL, "No", Ok(S::Boolean(Some(false)))), (BOOL, "0", Ok(S::Boolean(Some(false)))),
            (BOOL, "o", Err("22P02")), (BOOL, "truex", Err("22P02")),
            (INT4, " -42 ", Ok(S::Int32(Some(-42)))), (INT2, "-32768", Ok(S::Int16(Some(-32768)))),
            (INT8, "+9223372036854775807", Ok(S::Int64(Some(i64::MAX)))),
            (INT2, "32768", Err("22003")), (INT8, "-9223372036854775809", Err("22003")),
            (INT4, "99999999999999999999999999999999", Err("22003")),
            (INT4, "", Err("22P02")), (INT4, "-", Err("22P02")), (INT4, "1.0", Err("22P02")),
            (INT4, "1e3", Err("22P02")), (INT4, "0x10", Err("22P02")), (INT4, "1 2", Err("22P02")),
            (FLOAT8, " 1.5e3", Ok(S::Float64(Some(1500.0)))), (FLOAT8, ".5", Ok(S::Float64(Some(0.5)))),
            (FLOAT8, "1.", Ok(S::Float64(Some(1.0)))), (FLOAT4, "-2.5", Ok(S::Float32(Some(-2.5)))),
            (FLOAT8, "-Infinity", Ok(S::Float64(Some(f64::NEG_INFINITY)))),
            (FLOAT8, "1e400", Err("22003")), (FLOAT8, "1e-400", Err("22003")), (FLOAT4, "1e40", Err("22003")),
            (FLOAT8, "1.5x", Err("22P02")), (FLOAT8, "infinityx", Err("22P02")), (FLOAT8, "0x1p3", Err("22P02")),
            (NUMERIC, "12.50", Ok(dec(1250, 2))), (NUMERIC, "-0.001", Ok(dec(-1, 3))),
            (NUMERIC, "1.5e3", Ok(dec(1500, 0))), (NUMERIC, "5.", Ok(dec(5, 0))),
            (NUMERIC, " +0.00e1 ", Ok(dec(0, 1))), (NUMERIC, "1e-38", Ok(dec(1, 38))),
            (NUMERIC, "1e38", Err("22003")), (NUMERIC, "1e-39", Err("22003")),
            (NUMERIC, "NaN", Err("0A000")), (NUMERIC, "1.2.3", Err("22P02")), (NUMERIC, "e5", Err("22P02")),
            (BYTEA, "\\x0a0B ff", Ok(S::Binary(Some(vec![10, 11, 255])))), (BYTEA, "\\x", Ok(S::Binary(Some(vec![])))),
            (BYTEA, "a\\\\b\\001", Ok(S::Binary(Some(b"a\\b\x01".to_vec())))),
            (BYTEA, "\\xzz", Err("22P02")), (BYTEA, "\\x123", Err("22P02")), (BYTEA, "\\9", Err("22P02")),
            (VARCHAR, "x", Ok(S::Utf8(Some("x".into())))), (0, "42", Ok(S::Utf8(Some("42".into())))),
            (99_999, "?", Ok(S::Utf8(Some("?".into())))),
        ];
        for (oid, input, want) in cases {
            assert_eq!(tp(oid, input), want, "{oid} {input:?}");
        }
        assert!(matches!(tp(FLOAT4, "NaN"), Ok(S::Float32(Some(v))) if v.is_nan()));
        assert_eq!(tp(NUMERIC, &"9".repeat(39)), Err("22003"));
        assert_eq!(p(TEXT, 0, &[b'a', 0xff]), Err("22021"));
        assert_eq!(p(TEXT, 0, b"a\0"), Err("22021"));
        assert_eq!(p(TEXT, 2, b"a"), Err("22023"));
    }

    #[test]
    fn error_messages_match_postgres() {
        let msg = |oid: u32, s: &str| decode_param(oid, 0, s.as_bytes()).unwrap_err().to_string();
        let cases = [
            (
                oid::INT4,
                "abc",
                "invalid input syntax for type integer: \"abc\"",
            ),
            (
                oid::INT2,
                "99999",
                "value \"99999\" is out of range for type smallint",
            ),
            (
                oid::FLOAT8,
                "1e400",
                "\"1e400\" is out of range for type double precision",
            ),
            (
                oid::BOOL,
                "o",
                "invalid input syntax for type boolean: \"o\"",
            ),
            (
                oid::DATE,
                "abc",
                "invalid input syntax for type date: \"abc\"",
            ),
            (
                oid::DATE,
                "2024-13-01",
                "date/time field value out of range: \"2024-13-01\"",
            ),
            (oid::BYTEA, "\\xzz", "invalid hexadecimal digit: \"z\""),
            (
                oid::BYTEA,
                "\\x1",
                "invalid hexadecimal data: odd number of digits",
            ),
            (oid::BYTEA, "\\9", "invalid input syntax for type bytea"),
        ];
        for (oid, input, want) in cases {
            assert_eq!(msg(oid, input), want);
        }
        let e = decode_param(oid::TEXT, 0, &[0xff]).unwrap_err();
        assert_eq!(
            e.message(),
            "invalid byte sequence for encoding \"UTF8\": 0xff"
        );
    }

    #[test]
    #[rustfmt::skip]
    fn datetime_params() {
        use oid::*;
        let base = 1_705_314_600_000_000; // 2024-01-15 10:30:00 UTC
        let cases: Vec<(u32, &str, Result<S, &str>)> = vec![
            (DATE, "2024-01-15", Ok(S::Date32(Some(19737)))), (DATE, " 2024-1-5 ", Ok(S::Date32(Some(19727)))),
            (DATE, "0044-03-15 BC", Ok(S::Date32(Some(-735_160)))), (DATE, "2024-01-15 10:00", Ok(S::Date32(Some(19737)))),
            (DATE, "2024-02-29", Ok(S::Date32(Some(19782)))), (DATE, "infinity", Ok(S::Date32(Some(i32::MAX)))),
            (DATE, "-infinity", Ok(S::Date32(Some(i32::MIN)))), (DATE, "epoch", Ok(S::Date32(Some(0)))),
            (DATE, "2023-02-29", Err("22008")), (DATE, "2024-13-01", Err("22008")), (DATE, "0000-01-01", Err("22008")),
            (DATE, "5874898-01-01", Err("22008")), (DATE, "abc", Err("22007")), (DATE, "2024-01", Err("22007")),
            (TIMESTAMP, "2024-01-15 10:30:00", Ok(ts(base))), (TIMESTAMP, "2024-01-15T10:30", Ok(ts(base))),
            (TIMESTAMP, "2024-01-15 10:30:00.123456", Ok(ts(base + 123_456))),
            // PostgreSQL rounds the fraction as rint(strtod(".1234565") * 1e6) = 123456.
            (TIMESTAMP, "2024-01-15 10:30:00.1234565", Ok(ts(base + 123_456))),
            (TIMESTAMP, "2024-01-15 10:30:00.9999999", Ok(ts(base + 1_000_000))),
            (TIMESTAMP, "2024-01-15", Ok(ts(1_705_276_800_000_000))), (TIMESTAMP, "2024-01-14 24:00:00", Ok(ts(1_705_276_800_000_000))),
            (TIMESTAMP, "2024-01-15 10:30:00+02", Ok(ts(base))), // the zone is ignored, as PostgreSQL does
            (TIMESTAMP, "0044-03-15 10:30:00 BC", Ok(ts(-63_517_786_200_000_000))),
            (TIMESTAMP, "2024-01-15 25:00:00", Err("22008")), (TIMESTAMP, "2024-01-15 10:60", Err("22008")),
            (TIMESTAMP, "2024-01-15 24:00:01", Err("22008")), (TIMESTAMP, "4714-11-23 BC", Err("22008")),
            (TIMESTAMP, "2024-01-15 10:30:00.", Err("22007")), (TIMESTAMP, "2024-01-15 10", Err("22007")),
            (TIMESTAMP, "2024-01-15 10:30 xyz", Err("22007")), (TIMESTAMP, "2024-01-15x", Err("22007")),
            (TIMESTAMPTZ, "2024-01-15 10:30:00", Ok(tstz(base))), (TIMESTAMPTZ, "2024-01-15T10:30:00Z", Ok(tstz(base))),
            (TIMESTAMPTZ, "2024-01-15 10:30:00 UTC", Ok(tstz(base))), (TIMESTAMPTZ, "2024-01-15 12:30:00+02", Ok(tstz(base))),
            (TIMESTAMPTZ, "2024-01-15 12:30:00+02:00", Ok(tstz(base))), (TIMESTAMPTZ, "2024-01-15 16:00 +0530", Ok(tstz(base))),
            (TIMESTAMPTZ, "2024-01-15 05:00:00-05:30", Ok(tstz(base))), (TIMESTAMPTZ, "2024-01-15 10:00+16", Err("22008")),
        ];
        for (oid, input, want) in cases {
            assert_eq!(tp(oid, input), want, "{input:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn binary_params() {
        use oid::*;
        let cases: Vec<(u32, &[u8], Result<S, &str>)> = vec![
            (BOOL, &[1], Ok(S::Boolean(Some(true)))), (BOOL, &[0], Ok(S::Boolean(Some(false)))),
            (INT2, &[0xff, 0xfe], Ok(S::Int16(Some(-2)))), (INT4, &[0, 0, 1, 2], Ok(S::Int32(Some(258)))),
            (INT8, &[0, 0, 0, 0, 0, 0, 0, 7], Ok(S::Int64(Some(7)))),
            (FLOAT4, &[0x3f, 0xc0, 0, 0], Ok(S::Float32(Some(1.5)))),
            (FLOAT8, &[0x3f, 0xf8, 0, 0, 0, 0, 0, 0], Ok(S::Float64(Some(1.5)))),
            (TEXT, b"hi", Ok(S::Utf8(Some("hi".into())))), (UNSPECIFIED, b"", Ok(S::Utf8(Some("".into())))),
            (JSONB, b"\x01{}", Ok(S::Utf8(Some("{}".into())))), (BYTEA, &[0, 255], Ok(S::Binary(Some(vec![0, 255])))),
            (DATE, &[0, 0, 0, 0], Ok(S::Date32(Some(10_957)))), (DATE, &[0x7f, 0xff, 0xff, 0xff], Ok(S::Date32(Some(i32::MAX)))),
            (DATE, &[0x7f, 0xff, 0xff, 0xfe], Err("22008")),
            (TIMESTAMP, &[0, 0, 0, 0, 0, 0, 0, 1], Ok(ts(946_684_800_000_001))),
            (TIMESTAMPTZ, &[0; 8], Ok(tstz(946_684_800_000_000))),
            (TIMESTAMP, &[0x80, 0, 0, 0, 0, 0, 0, 0], Ok(ts(i64::MIN))),
            (TIMESTAMP, &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe], Err("22008")),
            // Too short is a protocol violation, too long an invalid binary representation.
            (INT4, &[0, 0, 1], Err("08P01")), (INT4, &[0; 8], Err("22P03")), (BOOL, &[], Err("08P01")),
            (NUMERIC, &[0, 1, 0, 0], Err("08P01")), (NUMERIC, &[0, 1, 0, 0, 0, 0, 0, 0], Err("08P01")),
            (NUMERIC, &[0, 0, 0, 0, 0, 0, 0, 0, 0], Err("22P03")), (NUMERIC, &[0, 0, 0, 0, 0xC0, 0, 0, 0], Err("0A000")),
            (NUMERIC, &[0, 0, 0, 0, 0x12, 0, 0, 0], Err("22P03")), (NUMERIC, &[0xff, 0xff, 0, 0, 0, 0, 0, 0], Err("22P03")),
            (NUMERIC, &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10], Err("22P03")),
            (NUMERIC, &[0, 1, 0, 10, 0, 0, 0, 0, 0, 1], Err("22003")),
            (TEXT, &[0xC3], Err("22021")), (JSONB, b"\x02{}", Err("22P03")), (2950, &[0; 16], Err("42883")),
        ];
        for (oid, bytes, want) in cases {
            assert_eq!(p(oid, 1, bytes), want, "{oid} {bytes:?}");
        }
    }

    #[test]
    fn garbage_params_never_panic() {
        let mut seed: u32 = 12345;
        let oids = [
            16, 17, 20, 21, 23, 25, 700, 701, 1082, 1114, 1184, 1700, 3802,
        ];
        for oid in oids {
            for len in 0..40 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        (seed >> 16) as u8
                    })
                    .collect();
                let _ = decode_param(oid, 1, &bytes);
                let _ = decode_param(oid, 0, &bytes);
                let printable: String = bytes
                    .iter()
                    .map(|b| char::from(b"0123456789-+:. TZe"[*b as usize % 18]))
                    .collect();
                let _ = decode_param(oid, 0, printable.as_bytes());
            }
        }
    }

    #[test]
    fn text_output_round_trips_through_params() {
        let days = Date32Array::from(vec![19737, -735_160, 0, i32::MAX, -2_440_588]);
        for (row, d) in days.values().iter().enumerate() {
            assert_eq!(tp(oid::DATE, &text(&days, row)), Ok(S::Date32(Some(*d))));
        }
        let micros = vec![1, -63_517_786_200_000_001, 1_705_314_600_123_450, i64::MIN];
        let stamps = TimestampMicrosecondArray::from(micros).with_timezone("+00:00");
        for (row, v) in stamps.values().iter().enumerate() {
            assert_eq!(tp(oid::TIMESTAMPTZ, &text(&stamps, row)), Ok(tstz(*v)));
        }
    }
}
