//! Where DataFusion's semantics differ from PostgreSQL's, a rewrite of the logical plan.
//!
//! - A cast to text of a timestamp, date, float or bytea gives PostgreSQL's text output
//!   (`2024-01-15 10:30:00`, `1e+20`, `\x0102`), through [`PgText`], which formats with the
//!   same code as the wire protocol's text format. DataFusion would give ISO-8601 with a `T`.
//! - A cast from text to bytea parses PostgreSQL's bytea input (`'\x0102'`, escape format),
//!   through [`PgBytea`]. DataFusion would take the string's bytes as they are.
//!
//! Pure: no I/O.

use std::sync::Arc;

use bytes::BytesMut;
use datafusion::arrow::array::{Array, ArrayRef, BinaryBuilder, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::SqlError;
use crate::pgtypes;

/// Formats any value as PostgreSQL's text output.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgText {
    signature: Signature,
}

/// Parses PostgreSQL's bytea text input.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgBytea {
    signature: Signature,
}

fn external(e: SqlError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl ScalarUDFImpl for PgText {
    fn name(&self) -> &str {
        "pg_text"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let mut out = StringBuilder::with_capacity(array.len(), array.len() * 16);
        let mut scratch = BytesMut::new();
        for row in 0..array.len() {
            if array.is_null(row) {
                out.append_null();
                continue;
            }
            scratch.clear();
            pgtypes::encode_text(array.as_ref(), row, &mut scratch)
                .map_err(|e| external(SqlError::new(e.sqlstate(), e.message().to_string())))?;
            let text =
                std::str::from_utf8(&scratch).map_err(|e| external(SqlError::internal(e)))?;
            out.append_value(text);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

impl ScalarUDFImpl for PgBytea {
    fn name(&self) -> &str {
        "pg_bytea"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let array = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
        let strings = array
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .ok_or_else(|| DataFusionError::Internal("pg_bytea takes text".into()))?;
        let mut out = BinaryBuilder::with_capacity(strings.len(), strings.len() * 8);
        for row in 0..strings.len() {
            if strings.is_null(row) {
                out.append_null();
            } else {
                out.append_value(parse_bytea(strings.value(row)).map_err(external)?);
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// PostgreSQL's bytea input: hex format (`\x0a0b`) or escape format (`a\000b`, `\\`).
pub fn parse_bytea(text: &str) -> Result<Vec<u8>, SqlError> {
    match pgtypes::decode_param(17, 0, text.as_bytes()) {
        Ok(ScalarValue::Binary(Some(bytes))) => Ok(bytes),
        Ok(other) => Err(SqlError::internal(format!("bytea input gave {other:?}"))),
        Err(e) => Err(SqlError::new(e.sqlstate(), e.message().to_string())),
    }
}

fn formats_differently(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Timestamp(..)
            | DataType::Date32
            | DataType::Float32
            | DataType::Float64
            | DataType::Binary
    )
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// Rewrites the plan's casts to follow PostgreSQL (see the module doc).
pub fn rewrite(plan: LogicalPlan) -> Result<LogicalPlan> {
    let pg_text = Arc::new(ScalarUDF::new_from_impl(PgText {
        signature: Signature::any(1, Volatility::Immutable),
    }));
    let pg_bytea = Arc::new(ScalarUDF::new_from_impl(PgBytea {
        signature: Signature::any(1, Volatility::Immutable),
    }));
    let rewritten = plan.transform_up(|node| {
        // Expressions of a node are evaluated over the merged schema of its inputs.
        let mut schema = DFSchema::empty();
        for input in node.inputs() {
            schema.merge(input.schema());
        }
        node.map_expressions(|expr| {
            expr.transform_up(|expr| {
                let Expr::Cast(Cast { expr: inner, field }) = &expr else {
                    return Ok(Transformed::no(expr));
                };
                let data_type = field.data_type();
                let Ok(from) = inner.get_type(&schema) else {
                    return Ok(Transformed::no(expr));
                };
                if is_text(data_type) && formats_differently(&from) {
                    let call = pg_text.call(vec![inner.as_ref().clone()]);
                    let call = if data_type == &DataType::Utf8 {
                        call
                    } else {
                        call.cast_to(data_type, &schema)?
                    };
                    return Ok(Transformed::yes(call));
                }
                if data_type == &DataType::Binary && is_text(&from) {
                    return Ok(Transformed::yes(
                        pg_bytea.call(vec![inner.as_ref().clone()]),
                    ));
                }
                Ok(Transformed::no(expr))
            })
        })
    })?;
    Ok(rewritten.data)
}

/// A function of no arguments that returns a fixed text, such as `version()`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionText {
    name: &'static str,
    value: String,
    signature: Signature,
}

impl ScalarUDFImpl for SessionText {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            self.value.clone(),
        ))))
    }
}

/// The text of `SELECT version()`: drivers and ORMs parse the `PostgreSQL 15.` prefix.
pub fn version_text() -> String {
    format!(
        "PostgreSQL 15.0 (OmenDB {}) on {}-linux, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// Registers the session functions clients call on connect, in PostgreSQL's spelling.
pub fn register_functions(ctx: &datafusion::prelude::SessionContext, database: &str) {
    let functions = [
        ("version", version_text()),
        ("current_database", database.to_string()),
        ("current_schema", "public".into()),
    ];
    for (name, value) in functions {
        ctx.register_udf(ScalarUDF::new_from_impl(SessionText {
            name,
            value,
            signature: Signature::exact(vec![], Volatility::Stable),
        }));
    }
}
