//! Bind parameters: PostgreSQL's text input functions (`int4in`, `numeric_in`, `date_in`,
//! `timestamptz_in`, `byteain`, …) and binary `*recv` formats, into [`ScalarValue`]s, with
//! PostgreSQL's error messages and SQLSTATEs. Pure: no I/O.

use super::*;

/// Decodes one Bind parameter: `format` 0 is text, 1 is binary.
pub fn decode_param(type_oid: u32, format: i16, bytes: &[u8]) -> Result<ScalarValue, PgTypeError> {
    match format {
        0 => decode_text_param(type_oid, bytes),
        1 => decode_binary_param(type_oid, bytes),
        f => Err(err(
            INVALID_PARAMETER_VALUE,
            format!("unsupported format code: {f}"),
        )),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, PgTypeError> {
    let bad = |b: u8| {
        let msg = format!("invalid byte sequence for encoding \"UTF8\": 0x{b:02x}");
        err(CHARACTER_NOT_IN_REPERTOIRE, msg)
    };
    let s = std::str::from_utf8(bytes).map_err(|e| bad(bytes[e.valid_up_to()]))?;
    // PostgreSQL text cannot contain NUL.
    match s.contains('\0') {
        true => Err(bad(0)),
        false => Ok(s),
    }
}

/// PostgreSQL's `isspace` set (includes vertical tab, which `char::is_ascii_whitespace` lacks).
fn trim_pg(s: &str) -> &str {
    s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
}

fn decode_text_param(type_oid: u32, bytes: &[u8]) -> Result<ScalarValue, PgTypeError> {
    let s = utf8(bytes)?;
    let int = |tname, min: i64, max: i64| parse_int(s, tname, min.into(), max.into());
    let tz = Some(Arc::from(UTC_TZ));
    Ok(match type_oid {
        oid::BOOL => ScalarValue::Boolean(Some(parse_bool(s)?)),
        oid::INT2 => ScalarValue::Int16(Some(
            int("smallint", i16::MIN.into(), i16::MAX.into())? as i16
        )),
        oid::INT4 => ScalarValue::Int32(Some(
            int("integer", i32::MIN.into(), i32::MAX.into())? as i32
        )),
        oid::INT8 => ScalarValue::Int64(Some(int("bigint", i64::MIN, i64::MAX)? as i64)),
        oid::FLOAT4 => ScalarValue::Float32(Some(parse_float(s, "real")? as f32)),
        oid::FLOAT8 => ScalarValue::Float64(Some(parse_float(s, "double precision")?)),
        oid::NUMERIC => parse_numeric(s)?,
        oid::DATE => ScalarValue::Date32(Some(parse_datetime(s, Kind::Date)? as i32)),
        oid::TIMESTAMP => {
            ScalarValue::TimestampMicrosecond(Some(parse_datetime(s, Kind::Ts)?), None)
        }
        oid::TIMESTAMPTZ => {
            ScalarValue::TimestampMicrosecond(Some(parse_datetime(s, Kind::TsTz)?), tz)
        }
        oid::BYTEA => ScalarValue::Binary(Some(parse_bytea(s)?)),
        _ => ScalarValue::Utf8(Some(s.to_string())),
    })
}

/// `boolin`: t/true/y/yes/on/1 and f/false/n/no/off/0, case-insensitive, unique prefixes.
fn parse_bool(s: &str) -> Result<bool, PgTypeError> {
    let t = trim_pg(s).to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Ok(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Ok(false)
    } else {
        Err(syntax("boolean", s))
    }
}

/// `int2in`/`int4in`/`int8in` of PostgreSQL 15: optional sign, decimal digits, surrounding
/// whitespace.
fn parse_int(s: &str, tname: &str, min: i128, max: i128) -> Result<i128, PgTypeError> {
    let t = trim_pg(s);
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax(tname, s));
    }
    let range = || {
        let msg = format!("value \"{s}\" is out of range for type {tname}");
        err(NUMERIC_VALUE_OUT_OF_RANGE, msg)
    };
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = v * 10 + i128::from(b - b'0');
        if v > max + 1 {
            return Err(range());
        }
    }
    let v = if t.starts_with('-') { -v } else { v };
    (min..=max).contains(&v).then_some(v).ok_or_else(range)
}

/// Checks `[+-]? (digits [. digits*] | . digits) ([eE] [+-]? digits)?`; returns the mantissa
/// digits (without point), the count of fraction digits and the exponent.
fn scan_decimal(t: &str) -> Option<(String, usize, i64)> {
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let exp = match exp {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned.is_empty() || !all_digits(unsigned) {
                return None;
            }
            // Clamp absurd exponents; they end in a range error either way.
            let v = unsigned.parse::<i64>().unwrap_or(1_000_000).min(1_000_000);
            if e.starts_with('-') {
                -v
            } else {
                v
            }
        }
    };
    Some((format!("{int}{frac}"), frac.len(), exp))
}

/// `float4in`/`float8in`: NaN and Infinity spellings, decimal notation, range errors for
/// overflow and for underflow to zero.
fn parse_float(s: &str, tname: &str) -> Result<f64, PgTypeError> {
    let t = trim_pg(s);
    match t.to_ascii_lowercase().as_str() {
        "nan" | "+nan" | "-nan" => return Ok(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(f64::INFINITY),
        "-infinity" | "-inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let (digits, _, _) = scan_decimal(t).ok_or_else(|| syntax(tname, s))?;
    let v = match tname {
        "real" => t.parse::<f32>().map(f64::from),
        _ => t.parse::<f64>(),
    };
    let v = v.map_err(|_| syntax(tname, s))?;
    if v.is_infinite() || (v == 0.0 && digits.bytes().any(|c| c != b'0')) {
        let msg = format!("\"{t}\" is out of range for type {tname}");
        return Err(err(NUMERIC_VALUE_OUT_OF_RANGE, msg));
    }
    Ok(v)
}

/// `numeric_in` into a Decimal128(38, scale of the text). NaN and Infinity are not
/// representable in Decimal128 and are refused.
fn parse_numeric(s: &str) -> Result<ScalarValue, PgTypeError> {
    let t = trim_pg(s);
    let lower = t.to_ascii_lowercase();
    if matches!(
        lower.trim_start_matches(['+', '-']),
        "nan" | "infinity" | "inf"
    ) {
        let msg = format!("numeric value \"{t}\" is not supported");
        return Err(err(FEATURE_NOT_SUPPORTED, msg));
    }
    let (digits, frac, exp) = scan_decimal(t).ok_or_else(|| syntax("numeric", s))?;
    let overflow = || {
        let msg = format!("numeric value \"{t}\" is out of range: at most 38 digits are supported");
        err(NUMERIC_VALUE_OUT_OF_RANGE, msg)
    };
    let mut scale = frac as i64 - exp;
    let mut significant = digits.trim_start_matches('0').to_string();
    if scale < 0 {
        if !significant.is_empty() {
            let zeros = usize::try_from(-scale)
                .ok()
                .filter(|z| *z <= 38)
                .ok_or_else(overflow)?;
            significant.push_str(&"0".repeat(zeros));
        }
        scale = 0;
    }
    if scale > 38 || significant.len() > 38 {
        return Err(overflow());
    }
    let v = significant
        .bytes()
        .fold(0i128, |v, c| v * 10 + i128::from(c - b'0'));
    let v = if t.starts_with('-') { -v } else { v };
    Ok(ScalarValue::Decimal128(Some(v), 38, scale as i8))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Date,
    Ts,
    TsTz,
}

/// A byte cursor for the date/time parser.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.b.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }
    fn spaces(&mut self) {
        while self.eat(b' ') {}
    }
    /// 1..=max digits: (value, count).
    fn num(&mut self, max: usize) -> Option<(i64, usize)> {
        let start = self.i;
        let mut v = 0i64;
        while self.i - start < max && self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            v = v * 10 + i64::from(self.b[self.i] - b'0');
            self.i += 1;
        }
        (self.i > start).then_some((v, self.i - start))
    }
    fn peek_digit(&self) -> bool {
        self.b.get(self.i).is_some_and(u8::is_ascii_digit)
    }
}

/// ISO dates and timestamps: `YYYY-MM-DD[( |T)HH:MM[:SS[.fff]]][ ][zone][ BC|AD]` where zone
/// is Z, UTC, GMT or `±HH[[:]MM[[:]SS]]`, plus infinity/-infinity/epoch. Returns Arrow days
/// (Date) or microseconds since 1970 in UTC. A zone given for a plain timestamp is ignored,
/// as PostgreSQL does; without one, timestamptz input is in the session zone (UTC).
fn parse_datetime(s: &str, kind: Kind) -> Result<i64, PgTypeError> {
    let tname = match kind {
        Kind::Date => "date",
        Kind::Ts => "timestamp",
        Kind::TsTz => "timestamp with time zone",
    };
    let bad = || {
        err(
            INVALID_DATETIME_FORMAT,
            format!("invalid input syntax for type {tname}: \"{s}\""),
        )
    };
    let overflow = |what: &str| err(DATETIME_FIELD_OVERFLOW, format!("{what}: \"{s}\""));
    let t = trim_pg(s);
    let (max, min) = match kind {
        Kind::Date => (i32::MAX.into(), i32::MIN.into()),
        _ => (i64::MAX, i64::MIN),
    };
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Ok(max),
        "-infinity" => return Ok(min),
        "epoch" => return Ok(0),
        _ => {}
    }
    let mut c = Cursor {
        b: t.as_bytes(),
        i: 0,
    };
    let (raw_year, _) = c.num(9).ok_or_else(bad)?;
    let month = c.eat(b'-').then(|| c.num(2)).flatten().ok_or_else(bad)?.0;
    let day = c.eat(b'-').then(|| c.num(2)).flatten().ok_or_else(bad)?.0;
    let (mut hour, mut minute, mut sec, mut micros) = (0, 0, 0, 0);
    let date_end = c.i;
    if !c.eat(b'T') && !c.eat(b't') {
        c.spaces();
    }
    if c.i > date_end && c.peek_digit() {
        hour = c.num(2).ok_or_else(bad)?.0;
        minute = c.eat(b':').then(|| c.num(2)).flatten().ok_or_else(bad)?.0;
        if c.eat(b':') {
            sec = c.num(2).ok_or_else(bad)?.0;
            if c.eat(b'.') {
                let start = c.i;
                while c.peek_digit() {
                    c.i += 1;
                }
                if c.i == start {
                    return Err(bad());
                }
                // PostgreSQL parses the fraction with strtod and rounds with rint.
                let frac: f64 = format!("0.{}", &t[start..c.i]).parse().map_err(|_| bad())?;
                micros = (frac * 1e6).round_ties_even() as i64;
            }
        }
    } else {
        c.i = date_end;
    }
    c.spaces();
    let mut offset = 0i64;
    let upper = t[c.i..].to_ascii_uppercase();
    if upper.starts_with("UTC") || upper.starts_with("GMT") {
        c.i += 3;
    } else if upper.starts_with('Z') {
        c.i += 1;
    } else if let Some(sign @ (b'+' | b'-')) = c.b.get(c.i).copied() {
        c.i += 1;
        // "+0530" and "+530" are [H]HMM; "+05" and "+5" hours, optionally ":MM[:SS]".
        let (h, n) = c.num(4).ok_or_else(bad)?;
        let (oh, mut om, mut os) = if n > 2 {
            (h / 100, h % 100, 0)
        } else {
            (h, 0, 0)
        };
        if n <= 2 && c.eat(b':') {
            om = c.num(2).ok_or_else(bad)?.0;
            if c.eat(b':') {
                os = c.num(2).ok_or_else(bad)?.0;
            }
        }
        if oh > 15 || om > 59 || os > 59 {
            return Err(overflow("time zone displacement out of range"));
        }
        offset = (oh * 3600 + om * 60 + os) * if sign == b'-' { -1 } else { 1 };
    }
    c.spaces();
    let bc = match t[c.i..].to_ascii_uppercase().as_str() {
        "" | "AD" => false,
        "BC" => true,
        _ => return Err(bad()),
    };
    let year = if bc { 1 - raw_year } else { raw_year };
    let bad_date = raw_year == 0 || !(1..=12).contains(&month);
    let bad_time = (hour > 23 && (hour, minute, sec, micros) != (24, 0, 0, 0)) || minute > 59;
    if bad_date || day < 1 || day > days_in_month(year, month) || bad_time || sec > 60 {
        return Err(overflow("date/time field value out of range"));
    }
    let days = days_from_civil(year, month, day);
    if kind == Kind::Date {
        return match (MIN_DATE..END_DATE).contains(&days) {
            true => Ok(days),
            false => Err(overflow("date out of range")),
        };
    }
    let offset = if kind == Kind::TsTz { offset } else { 0 };
    let secs = (hour * 60 + minute) * 60 + sec - offset;
    let total =
        i128::from(days) * i128::from(USECS_PER_DAY) + i128::from(secs * 1_000_000 + micros);
    match total >= MIN_TIMESTAMP.into() && total < i64::MAX.into() {
        true => Ok(total as i64),
        false => Err(overflow("timestamp out of range")),
    }
}

/// `byteain`: `\x` hex (whitespace between digit pairs allowed) or the escape format.
fn parse_bytea(s: &str) -> Result<Vec<u8>, PgTypeError> {
    let b = s.as_bytes();
    if let Some(hex) = s.strip_prefix("\\x") {
        let nibble = |i: usize| -> Result<u8, PgTypeError> {
            match hex.as_bytes().get(i) {
                Some(c @ b'0'..=b'9') => Ok(c - b'0'),
                Some(c @ b'a'..=b'f') => Ok(c - b'a' + 10),
                Some(c @ b'A'..=b'F') => Ok(c - b'A' + 10),
                Some(_) => {
                    let c = hex.get(i..).and_then(|r| r.chars().next()).unwrap_or('?');
                    let msg = format!("invalid hexadecimal digit: \"{c}\"");
                    Err(err(INVALID_TEXT_REPRESENTATION, msg))
                }
                None => Err(err(
                    INVALID_TEXT_REPRESENTATION,
                    "invalid hexadecimal data: odd number of digits",
                )),
            }
        };
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut i = 0;
        while i < hex.len() {
            if matches!(hex.as_bytes()[i], b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
                continue;
            }
            out.push(nibble(i)? << 4 | nibble(i + 1)?);
            i += 2;
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match &b[i..] {
            [b'\\', b'\\', ..] => {
                out.push(b'\\');
                i += 2;
            }
            [b'\\', d0 @ b'0'..=b'3', d1 @ b'0'..=b'7', d2 @ b'0'..=b'7', ..] => {
                out.push(((d0 - b'0') << 6) | ((d1 - b'0') << 3) | (d2 - b'0'));
                i += 4;
            }
            [b'\\', ..] => {
                let msg = "invalid input syntax for type bytea";
                return Err(err(INVALID_TEXT_REPRESENTATION, msg));
            }
            [c, ..] => {
                out.push(*c);
                i += 1;
            }
            [] => break,
        };
    }
    Ok(out)
}

fn insufficient() -> PgTypeError {
    err(PROTOCOL_VIOLATION, "insufficient data left in message")
}

fn extra_data() -> PgTypeError {
    err(
        INVALID_BINARY_REPRESENTATION,
        "incorrect binary data format in bind parameter",
    )
}

/// Exactly N bytes: fewer is a protocol violation (PostgreSQL's "insufficient data left in
/// message"), more an invalid binary representation, as in PostgreSQL's Bind handling.
fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], PgTypeError> {
    match bytes.len().cmp(&N) {
        Ordering::Less => Err(insufficient()),
        Ordering::Greater => Err(extra_data()),
        Ordering::Equal => bytes.try_into().map_err(|_| insufficient()),
    }
}

fn decode_binary_param(type_oid: u32, bytes: &[u8]) -> Result<ScalarValue, PgTypeError> {
    let text = |b: &[u8]| Ok::<_, PgTypeError>(ScalarValue::Utf8(Some(utf8(b)?.to_string())));
    Ok(match type_oid {
        oid::BOOL => ScalarValue::Boolean(Some(fixed::<1>(bytes)?[0] != 0)),
        oid::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(fixed(bytes)?))),
        oid::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(fixed(bytes)?))),
        oid::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(fixed(bytes)?))),
        oid::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(fixed(bytes)?))),
        oid::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(fixed(bytes)?))),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN | oid::JSON => {
            text(bytes)?
        }
        oid::UNSPECIFIED => text(bytes)?,
        oid::JSONB => match bytes.split_first() {
            Some((1, rest)) => text(rest)?,
            Some((v, _)) => {
                let msg = format!("unsupported jsonb version number {v}");
                return Err(err(INVALID_BINARY_REPRESENTATION, msg));
            }
            None => return Err(insufficient()),
        },
        oid::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
        oid::DATE => ScalarValue::Date32(Some(match i32::from_be_bytes(fixed(bytes)?) {
            pg @ (i32::MAX | i32::MIN) => pg,
            pg => i32::try_from(i64::from(pg) + UNIX_TO_PG_DAYS)
                .ok()
                .filter(|d| *d != i32::MAX)
                .ok_or_else(|| out_of_range("date"))?,
        })),
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let micros = match i64::from_be_bytes(fixed(bytes)?) {
                pg @ (i64::MAX | i64::MIN) => pg,
                pg => pg
                    .checked_add(UNIX_TO_PG_MICROS)
                    .filter(|m| *m != i64::MAX)
                    .ok_or_else(|| out_of_range("timestamp"))?,
            };
            let tz = (type_oid == oid::TIMESTAMPTZ).then(|| Arc::from(UTC_TZ));
            ScalarValue::TimestampMicrosecond(Some(micros), tz)
        }
        oid::NUMERIC => decode_numeric_binary(bytes)?,
        other => {
            let msg = format!("no binary input function available for type oid {other}");
            return Err(err(UNDEFINED_FUNCTION, msg));
        }
    })
}

/// `numeric_recv` into Decimal128(38, dscale); digits hidden by dscale are truncated away as
/// PostgreSQL does.
fn decode_numeric_binary(bytes: &[u8]) -> Result<ScalarValue, PgTypeError> {
    let invalid = |what: &str| {
        let msg = format!("invalid {what} in external \"numeric\" value");
        err(INVALID_BINARY_REPRESENTATION, msg)
    };
    let overflow = || {
        let msg = "numeric value out of range: at most 38 digits are supported";
        err(NUMERIC_VALUE_OUT_OF_RANGE, msg)
    };
    let header: [u8; 8] = bytes
        .get(..8)
        .ok_or_else(insufficient)?
        .try_into()
        .map_err(|_| insufficient())?;
    let word = |i: usize| u16::from_be_bytes([header[2 * i], header[2 * i + 1]]);
    let (ndigits, weight, sign, dscale) = (word(0) as i16, word(1) as i16, word(2), word(3));
    let body = &bytes[8..];
    let ndigits = usize::try_from(ndigits).map_err(|_| invalid("length"))?;
    match body.len().cmp(&(2 * ndigits)) {
        Ordering::Less => return Err(insufficient()),
        Ordering::Greater => return Err(extra_data()),
        Ordering::Equal => {}
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 | 0xD000 | 0xF000 => {
            return Err(err(
                FEATURE_NOT_SUPPORTED,
                "numeric NaN and Infinity are not supported",
            ))
        }
        _ => return Err(invalid("sign")),
    }
    if dscale & 0x3FFF != dscale {
        return Err(invalid("scale"));
    }
    if dscale > 38 {
        return Err(overflow());
    }
    let mut v: i128 = 0;
    for (k, pair) in body.chunks_exact(2).enumerate() {
        let d = i16::from_be_bytes([pair[0], pair[1]]);
        if !(0..10_000).contains(&d) {
            return Err(invalid("digit"));
        }
        // This digit is worth d * 10^(4 * (weight - k) + dscale) units of 10^-dscale.
        let exp10 = 4 * (i64::from(weight) - k as i64) + i64::from(dscale);
        let term = match exp10 {
            ..=-4 => 0,
            -3..=-1 => i128::from(d) / 10i128.pow((-exp10) as u32),
            _ if d == 0 => 0,
            0..=38 => i128::from(d)
                .checked_mul(10i128.pow(exp10 as u32))
                .ok_or_else(overflow)?,
            _ => return Err(overflow()),
        };
        v = v
            .checked_add(term)
            .filter(|v| *v < 10i128.pow(38))
            .ok_or_else(overflow)?;
    }
    let v = if sign == 0x4000 { -v } else { v };
    Ok(ScalarValue::Decimal128(Some(v), 38, dscale as i8))
}
