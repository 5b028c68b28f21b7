//! [`ColumnType`]: the closed set of column types a table may declare, their Arrow types and
//! their PostgreSQL names. Pure.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};

/// Arrow field metadata key holding a [`ColumnType::pg_tag`], read back by `pgtypes`.
pub const PG_TYPE_METADATA_KEY: &str = "omendb.pg_type";
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

impl ColumnType {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn num(precision: u8, scale: i8) -> ColumnType {
        ColumnType::Numeric { precision, scale }
    }

    #[rustfmt::skip]
    fn all_types() -> Vec<ColumnType> {
        use ColumnType::*;
        vec![SmallInt, Int, BigInt, Double, Real, Text, Varchar(Some(20)), Bool, num(10, 2), Date,
             Timestamp, TimestampTz, Bytea]
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
}
