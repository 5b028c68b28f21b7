//! SQL errors with PostgreSQL's SQLSTATE codes, and the mapping from DataFusion's errors.
//!
//! Only the compute knows SQLSTATE: lower layers return their own errors, which are turned
//! into an [`SqlError`] here, at the boundary to the client.

use datafusion::error::DataFusionError;

/// SQLSTATE codes used by OmenDB (PostgreSQL's Appendix A).
pub mod sqlstate {
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_TABLE: &str = "42P07";
    pub const DUPLICATE_COLUMN: &str = "42701";
    pub const INVALID_TABLE_DEFINITION: &str = "42P16";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const AMBIGUOUS_COLUMN: &str = "42702";
    pub const GROUPING_ERROR: &str = "42803";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const DIVISION_BY_ZERO: &str = "22012";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
    pub const INVALID_COLUMN_REFERENCE: &str = "42P10";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    pub const INVALID_DATETIME_FORMAT: &str = "22007";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub const INVALID_BINARY_REPRESENTATION: &str = "22P03";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const INVALID_CURSOR_NAME: &str = "34000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const IO_ERROR: &str = "58030";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
}

/// An error reported to the client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Where the error happened (PostgreSQL's CONTEXT, e.g. the line of COPY data).
    pub context: Option<String>,
}

impl SqlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> SqlError {
        SqlError {
            code,
            message: message.into(),
            detail: None,
            hint: None,
            context: None,
        }
    }
    pub fn with_context(mut self, context: impl Into<String>) -> SqlError {
        self.context = Some(context.into());
        self
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> SqlError {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> SqlError {
        self.detail = Some(detail.into());
        self
    }
    pub fn internal(message: impl std::fmt::Display) -> SqlError {
        SqlError::new(sqlstate::INTERNAL_ERROR, message.to_string())
    }
    pub fn unsupported(what: impl std::fmt::Display) -> SqlError {
        SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what} is not supported"),
        )
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for SqlError {}

/// Maps a DataFusion error to the SQLSTATE PostgreSQL reports for the same mistake.
pub fn from_datafusion(error: DataFusionError) -> SqlError {
    let error = strip_context(error);
    let text = error.to_string();
    let lower = text.to_lowercase();
    let code = match &error {
        DataFusionError::SQL(..) => sqlstate::SYNTAX_ERROR,
        DataFusionError::SchemaError(e, _) => match **e {
            datafusion::common::SchemaError::FieldNotFound { .. } => sqlstate::UNDEFINED_COLUMN,
            datafusion::common::SchemaError::AmbiguousReference { .. } => {
                sqlstate::AMBIGUOUS_COLUMN
            }
            _ => sqlstate::SYNTAX_ERROR,
        },
        DataFusionError::NotImplemented(_) => sqlstate::FEATURE_NOT_SUPPORTED,
        DataFusionError::External(inner) => {
            if let Some(sql) = inner.downcast_ref::<SqlError>() {
                return sql.clone();
            }
            sqlstate::INTERNAL_ERROR
        }
        _ if lower.contains("divide by zero") || lower.contains("division by zero") => {
            sqlstate::DIVISION_BY_ZERO
        }
        _ if lower.contains("table") && lower.contains("not found") => sqlstate::UNDEFINED_TABLE,
        _ if lower.contains("no field named") => sqlstate::UNDEFINED_COLUMN,
        _ if lower.contains("invalid function") || lower.contains("no function matches") => {
            sqlstate::UNDEFINED_FUNCTION
        }
        _ if lower.contains("overflow") => sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
        _ if lower.contains("cannot cast")
            || lower.contains("cast error")
            || lower.contains("parser error") =>
        {
            sqlstate::INVALID_TEXT_REPRESENTATION
        }
        DataFusionError::Plan(_) if lower.contains("group by") || lower.contains("aggregate") => {
            sqlstate::GROUPING_ERROR
        }
        DataFusionError::Plan(_) => sqlstate::SYNTAX_ERROR,
        _ => sqlstate::INTERNAL_ERROR,
    };
    SqlError::new(code, clean_message(&text))
}

fn strip_context(error: DataFusionError) -> DataFusionError {
    match error {
        DataFusionError::Context(_, inner) => strip_context(*inner),
        DataFusionError::Shared(inner) => match std::sync::Arc::try_unwrap(inner) {
            Ok(inner) => strip_context(inner),
            Err(shared) => DataFusionError::Internal(shared.to_string()),
        },
        other => other,
    }
}

/// DataFusion prefixes messages with its error kind ("Error during planning: ..."); the
/// client gets the message alone.
fn clean_message(text: &str) -> String {
    let mut text = text.trim();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "Arrow error: ",
        "Execution error: ",
        "This feature is not implemented: ",
        "SQL error: ",
        "Optimizer rule 'simplify_expressions' failed\ncaused by\n",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.trim();
        }
    }
    text.lines().next().unwrap_or(text).to_string()
}
