//! `ColumnType::from_sql`: a column type from the SQL parser's type AST (feature `sql`; only
//! compute parses SQL). Pure.

use sqlparser::ast::{CharacterLength, DataType as SqlType, ExactNumberInfo, TimezoneInfo};

use crate::{CodecError, ColumnType, DEFAULT_NUMERIC, MAX_NUMERIC_PRECISION};

/// PostgreSQL's limit for `varchar(n)`.
const MAX_VARCHAR_LEN: u64 = 10 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn num(precision: u8, scale: i8) -> ColumnType {
        ColumnType::Numeric { precision, scale }
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
}
