//! One client session: transaction state and the execution of each SQL statement.
//!
//! SELECT is planned and run by DataFusion over [`OmenTable`] providers. DDL, DML and
//! transactions are OmenDB's own: INSERT lets DataFusion evaluate and cast the rows to
//! insert; UPDATE and DELETE let it find the affected rows (with their storage keys) and
//! compute new values; the writes themselves, and every constraint check, happen here and go
//! into the transaction's buffer, which COMMIT turns into one WAL record.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, BinaryArray};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::TableReference;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    self, AssignmentTarget, ColumnOption, Expr, FromTable, Ident, ObjectName, ObjectType,
    SelectItem, SetExpr, Statement, TableConstraint, TableFactor,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::catalog::{ColumnDef, TableDef, KEY_COLUMN};
use crate::engine::{pageserver_error, read_only_error, Engine, Txn};
use crate::error::{from_datafusion, sqlstate, SqlError};
use crate::provider::{OmenTable, ReadPath, READ_PATH_SETTING};
use crate::rowcodec::{self, ColumnType};

#[path = "session_copy.rs"]
mod copy_in;
pub use copy_in::{CopyEnd, CopyIn, COPY_BATCH_ROWS};

/// What a statement produced.
pub enum Outcome {
    /// Rows, with the column names PostgreSQL would give them.
    Rows {
        schema: SchemaRef,
        names: Vec<String>,
        batches: Vec<RecordBatch>,
        tag: String,
    },
    /// A command tag such as `INSERT 0 3`.
    Command(String),
    /// `COPY … FROM STDIN` is waiting for its data: the connection feeds it to
    /// [`Session::copy_data`] and ends it with [`Session::copy_end`].
    CopyIn(Box<CopyIn>),
}

/// What Describe reports for a statement before it runs.
pub struct Description {
    /// Inferred parameter types, `None` where nothing constrains them. A field rather than
    /// a type, so that a column's PostgreSQL type (such as varchar) comes along.
    pub param_types: Vec<Option<Field>>,
    /// The result columns, when the statement returns rows.
    pub columns: Option<(SchemaRef, Vec<String>)>,
}

/// Server settings reported to clients and readable with SHOW.
pub fn default_settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("server_version", "15.0"),
        ("server_version_num", "150000"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "on"),
        ("application_name", ""),
        ("transaction_isolation", "repeatable read"),
        ("search_path", "\"$user\", public"),
    ]
}

pub struct Session {
    engine: Arc<Engine>,
    runtime: Arc<RuntimeEnv>,
    /// DataFusion's context, made on first use (see [`Session::context`]).
    datafusion: Option<SessionContext>,
    /// Tables registered in `datafusion` by the last statement.
    registered_tables: Vec<String>,
    txn: Option<Txn>,
    /// Inside BEGIN … COMMIT.
    explicit: bool,
    /// An error happened inside the explicit transaction: only ROLLBACK is accepted.
    failed: bool,
    /// Inside the statements of one multi-statement simple Query, outside BEGIN.
    implicit_block: bool,
    settings: HashMap<String, String>,
    /// Notices raised by the last statement, for the client.
    notices: Vec<SqlError>,
    pub user: String,
    pub database: String,
}

pub(crate) fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The table name an object name refers to (`public.t` and `t` are the same table).
fn table_name(name: &ObjectName) -> Result<String, SqlError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| {
            part.as_ident()
                .map(ident_name)
                .ok_or_else(|| SqlError::unsupported("this table name"))
        })
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [table] => Ok(table.clone()),
        [schema, table] if schema == "public" => Ok(table.clone()),
        [schema, _] => Err(SqlError::new(
            "3F000",
            format!("schema \"{schema}\" does not exist"),
        )),
        _ => Err(SqlError::unsupported(format!("the name {name}"))),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn parse_sql(sql: &str) -> Result<Vec<Statement>, SqlError> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| {
        let text = e.to_string();
        let text = text.strip_prefix("sql parser error: ").unwrap_or(&text);
        SqlError::new(sqlstate::SYNTAX_ERROR, format!("syntax error: {text}"))
    })
}

fn undefined_table(name: &str) -> SqlError {
    SqlError::new(
        sqlstate::UNDEFINED_TABLE,
        format!("relation \"{name}\" does not exist"),
    )
}

/// The name PostgreSQL gives an unaliased output column (its FigureColname).
fn figure_column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident_name(ident)),
        Expr::CompoundIdentifier(idents) => idents.last().map(ident_name),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_lowercase()),
        Expr::Cast {
            expr, data_type, ..
        } => figure_column_name(expr).or_else(|| Some(cast_type_name(data_type))),
        Expr::Nested(inner) => figure_column_name(inner),
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        _ => None,
    }
}

fn cast_type_name(data_type: &ast::DataType) -> String {
    match ColumnType::from_sql(data_type) {
        Ok(ColumnType::SmallInt) => "int2".into(),
        Ok(ColumnType::Int) => "int4".into(),
        Ok(ColumnType::BigInt) => "int8".into(),
        Ok(ColumnType::Double) => "float8".into(),
        Ok(ColumnType::Real) => "float4".into(),
        Ok(ColumnType::Text) => "text".into(),
        Ok(ColumnType::Varchar(_)) => "varchar".into(),
        Ok(ColumnType::Bool) => "bool".into(),
        Ok(ColumnType::Numeric { .. }) => "numeric".into(),
        Ok(ColumnType::Date) => "date".into(),
        Ok(ColumnType::Timestamp) => "timestamp".into(),
        Ok(ColumnType::TimestampTz) => "timestamptz".into(),
        Ok(ColumnType::Bytea) => "bytea".into(),
        Err(_) => data_type.to_string().to_lowercase(),
    }
}

/// PostgreSQL's output column names for a query, where they can be derived from its
/// top-level select list; DataFusion's names otherwise.
fn output_names(query: &ast::Query, schema: &Schema) -> Vec<String> {
    let fallback: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let SetExpr::Select(select) = query.body.as_ref() else {
        return fallback;
    };
    let n_wildcards = select
        .projection
        .iter()
        .filter(|item| {
            matches!(
                item,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        })
        .count();
    let n_named = select.projection.len() - n_wildcards;
    if n_wildcards > 1
        || (n_wildcards == 0 && n_named != fallback.len())
        || n_named > fallback.len()
    {
        return fallback;
    }
    let wildcard_width = fallback.len() - n_named;
    let mut names = Vec::with_capacity(fallback.len());
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(expr) => {
                names.push(figure_column_name(expr).unwrap_or_else(|| "?column?".into()))
            }
            SelectItem::ExprWithAlias { alias, .. } => names.push(ident_name(alias)),
            SelectItem::ExprWithAliases { .. } => return fallback,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                let start = names.len();
                names.extend(fallback[start..start + wildcard_width].iter().cloned());
            }
        }
    }
    names
}

fn is_text_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    )
}

/// Text assigned to a bytea column is PostgreSQL's bytea input, not raw bytes.
fn bytea_from_text(column: &ColumnDef, array: &ArrayRef) -> Result<ArrayRef, SqlError> {
    let text = cast_with_options(array, &DataType::Utf8, &cast_options())
        .map_err(|e| value_error(column, e))?;
    let text = text
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .ok_or_else(|| SqlError::internal("text array is not a StringArray"))?;
    let mut out = datafusion::arrow::array::BinaryBuilder::new();
    for row in 0..text.len() {
        if text.is_null(row) {
            out.append_null();
        } else {
            out.append_value(crate::pgcompat::parse_bytea(text.value(row))?);
        }
    }
    Ok(Arc::new(out.finish()))
}

/// The storage keys in the first column of an UPDATE's or DELETE's row batch.
fn key_array(batch: &RecordBatch) -> Result<BinaryArray, SqlError> {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .cloned()
        .ok_or_else(|| SqlError::internal("key column is not binary"))
}

/// One row of `columns` as scalars.
fn row_values(columns: &[ArrayRef], row: usize) -> Result<Vec<ScalarValue>, SqlError> {
    columns
        .iter()
        .map(|array| ScalarValue::try_from_array(array, row))
        .collect::<Result<_, _>>()
        .map_err(from_datafusion)
}

/// A parameter that is assigned straight to a column takes the column's type.
fn column_param(column: &ColumnDef) -> Option<Field> {
    Some(column.column_type.arrow_field(&column.name, true))
}

/// The most parameters a statement may have (PostgreSQL's limit: Bind counts are 16-bit).
pub const PARAMS_MAX: usize = 65_535;

/// The 1-based index of a placeholder named `$n`, if it is one a statement may have.
fn placeholder_index(name: &str) -> Option<usize> {
    name.strip_prefix('$')?
        .parse::<usize>()
        .ok()
        .filter(|&n| (1..=PARAMS_MAX).contains(&n))
}

/// The index of `expr` if it is a bare placeholder.
fn expr_placeholder(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(value) => match &value.value {
            ast::Value::Placeholder(name) => placeholder_index(name),
            _ => None,
        },
        _ => None,
    }
}

/// Records parameter `idx`'s type; `overwrite` says whether it beats one already known.
fn set_param(types: &mut Vec<Option<Field>>, idx: usize, field: Option<Field>, overwrite: bool) {
    if types.len() < idx {
        types.resize(idx, None);
    }
    if overwrite || types[idx - 1].is_none() {
        if field.is_some() || types[idx - 1].is_none() {
            types[idx - 1] = field;
        }
    }
}

fn cast_options() -> CastOptions<'static> {
    CastOptions {
        safe: false,
        format_options: Default::default(),
    }
}

fn value_error(column: &ColumnDef, error: impl std::fmt::Display) -> SqlError {
    let text = error.to_string();
    let type_name = column.column_type.sql_name();
    if text.contains("Overflow")
        || text.contains("overflow")
        || text.contains("Can't cast value")
        || text.contains("too large")
    {
        let what = match column.column_type {
            ColumnType::SmallInt => "smallint out of range".to_string(),
            ColumnType::Int => "integer out of range".to_string(),
            ColumnType::BigInt => "bigint out of range".to_string(),
            _ => format!("value out of range for type {type_name}"),
        };
        SqlError::new(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, what)
    } else {
        SqlError::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!(
                "invalid input for column \"{}\" of type {type_name}: {text}",
                column.name
            ),
        )
    }
}

/// The error of a row whose primary key another row already has.
fn unique_violation(table: &TableDef, values: &[ScalarValue]) -> SqlError {
    let columns: Vec<&str> = table
        .primary_key
        .iter()
        .map(|&i| table.columns[i].name.as_str())
        .collect();
    let shown: Vec<String> = table
        .primary_key
        .iter()
        .map(|&i| values[i].to_string())
        .collect();
    SqlError::new(
        sqlstate::UNIQUE_VIOLATION,
        format!(
            "duplicate key value violates unique constraint \"{}_pkey\"",
            table.name
        ),
    )
    .with_detail(format!(
        "Key ({})=({}) already exists.",
        columns.join(", "),
        shown.join(", ")
    ))
}

impl Session {
    pub fn new(engine: Arc<Engine>, user: String, database: String) -> Session {
        let mut settings: HashMap<String, String> = default_settings()
            .into_iter()
            .map(|(k, v)| (k.to_lowercase(), v.to_string()))
            .collect();
        // OmenDB's own settings: readable with SHOW, not reported to clients at startup.
        settings.insert(
            READ_PATH_SETTING.to_string(),
            ReadPath::default().name().to_string(),
        );
        Session {
            engine,
            runtime: Arc::new(RuntimeEnv::default()),
            datafusion: None,
            registered_tables: Vec::new(),
            txn: None,
            explicit: false,
            failed: false,
            implicit_block: false,
            settings,
            notices: Vec::new(),
            user,
            database,
        }
    }

    /// The ReadyForQuery status byte: idle, in a transaction, or in a failed transaction.
    pub fn transaction_status(&self) -> u8 {
        match (self.explicit, self.failed) {
            (false, _) => b'I',
            (true, false) => b'T',
            (true, true) => b'E',
        }
    }

    pub fn setting(&self, name: &str) -> Option<&String> {
        self.settings.get(&name.to_lowercase())
    }

    /// Starts an implicit transaction block: the statements of one multi-statement Query
    /// message run as one transaction, as in PostgreSQL, unless they open their own.
    pub fn begin_implicit_block(&mut self) {
        if !self.explicit {
            self.implicit_block = true;
        }
    }

    /// Ends the implicit block: commits it if every statement succeeded, else drops it. A
    /// BEGIN inside the block made it explicit, and then it stays open.
    pub async fn end_implicit_block(&mut self, success: bool) -> Result<(), SqlError> {
        if !std::mem::take(&mut self.implicit_block) || self.explicit {
            return Ok(());
        }
        match self.txn.take() {
            Some(txn) if success => self.engine.commit(txn).await,
            _ => Ok(()),
        }
    }

    pub fn take_notices(&mut self) -> Vec<SqlError> {
        std::mem::take(&mut self.notices)
    }

    fn txn(&mut self) -> &mut Txn {
        if self.txn.is_none() {
            self.txn = Some(self.engine.begin());
        }
        self.txn.as_mut().expect("just started")
    }

    /// Marks an explicit transaction failed after an error outside `execute` (e.g. in
    /// the protocol layer).
    pub fn fail_transaction(&mut self) {
        if self.explicit {
            self.failed = true;
        }
    }

    pub async fn execute(
        &mut self,
        stmt: &Statement,
        params: &[ScalarValue],
    ) -> Result<Outcome, SqlError> {
        match stmt {
            Statement::StartTransaction { .. } => {
                if !self.explicit {
                    self.explicit = true;
                    self.failed = false;
                }
                return Ok(Outcome::Command("BEGIN".into()));
            }
            Statement::Commit { .. } => {
                let failed = self.failed;
                self.explicit = false;
                self.failed = false;
                let txn = self.txn.take();
                if failed {
                    return Ok(Outcome::Command("ROLLBACK".into()));
                }
                if let Some(txn) = txn {
                    self.engine.commit(txn).await?;
                }
                return Ok(Outcome::Command("COMMIT".into()));
            }
            Statement::Rollback {
                savepoint: None, ..
            } => {
                self.explicit = false;
                self.failed = false;
                self.txn = None;
                return Ok(Outcome::Command("ROLLBACK".into()));
            }
            Statement::Vacuum(_) if self.engine.is_read_only() => {
                return Err(read_only_error("VACUUM"));
            }
            Statement::Vacuum(vacuum) => return self.vacuum(vacuum).await,
            _ => {}
        }
        if self.failed {
            return Err(SqlError::new(
                sqlstate::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let result = self.execute_in_transaction(stmt, params).await;
        if let Ok(Outcome::CopyIn(_)) = result {
            // The statement ends when its data has been read (`copy_end`).
            return result;
        }
        self.end_statement(result).await
    }

    /// What follows a statement's execution: in an explicit transaction an error fails
    /// it; in an implicit block an error drops the block (which commits at its end);
    /// otherwise the statement's own transaction commits.
    async fn end_statement(
        &mut self,
        result: Result<Outcome, SqlError>,
    ) -> Result<Outcome, SqlError> {
        if self.explicit {
            if result.is_err() {
                self.failed = true;
            }
            return result;
        }
        if self.implicit_block {
            if result.is_err() {
                self.txn = None;
            }
            return result;
        }
        let txn = self.txn.take();
        let outcome = result?;
        if let Some(txn) = txn {
            self.engine.commit(txn).await?;
        }
        Ok(outcome)
    }

    async fn execute_in_transaction(
        &mut self,
        stmt: &Statement,
        params: &[ScalarValue],
    ) -> Result<Outcome, SqlError> {
        if self.engine.is_read_only() {
            let write = match stmt {
                Statement::Insert(_) => Some("INSERT"),
                Statement::Update(_) => Some("UPDATE"),
                Statement::Delete(_) => Some("DELETE"),
                Statement::CreateTable(_) => Some("CREATE TABLE"),
                Statement::Drop { .. } => Some("DROP"),
                Statement::Copy { to: false, .. } => Some("COPY FROM"),
                _ => None,
            };
            if let Some(write) = write {
                return Err(read_only_error(write));
            }
        }
        match stmt {
            Statement::Query(query) => {
                let (schema, batches) = self.run_query(stmt, params, None).await?;
                let names = output_names(query, &schema);
                let n_rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                Ok(Outcome::Rows {
                    schema,
                    names,
                    batches,
                    tag: format!("SELECT {n_rows}"),
                })
            }
            Statement::Explain { .. } => {
                let (schema, batches) = self.run_query(stmt, params, None).await?;
                let names = schema.fields().iter().map(|f| f.name().clone()).collect();
                Ok(Outcome::Rows {
                    schema,
                    names,
                    batches,
                    tag: "EXPLAIN".into(),
                })
            }
            Statement::Insert(insert) => self.insert(stmt, insert, params).await,
            Statement::Update(update) => self.update(update, params).await,
            Statement::Delete(delete) => self.delete(delete, params).await,
            Statement::CreateTable(create) => self.create_table(create),
            Statement::Drop {
                object_type: ObjectType::Table,
                if_exists,
                names,
                ..
            } => self.drop_tables(names, *if_exists),
            Statement::Copy { .. } => self.copy_from_stdin(stmt),
            Statement::Set(set) => self.set(set),
            Statement::ShowVariable { variable } => self.show(variable),
            Statement::Rollback {
                savepoint: Some(_), ..
            }
            | Statement::Savepoint { .. } => Err(SqlError::unsupported("SAVEPOINT")),
            other => {
                let text = other.to_string();
                let verb: String = text
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                Err(SqlError::unsupported(format!("the statement {verb}")))
            }
        }
    }

    /// `VACUUM [FULL] [table]`: has the pageserver write out everything committed so far
    /// and rebuild the storage of the table (or of every table) changed since its last
    /// image layer, so that reads start from fresh row and column pages instead of merging
    /// changes. Like PostgreSQL's, it runs outside transaction blocks only.
    async fn vacuum(&mut self, vacuum: &ast::VacuumStatement) -> Result<Outcome, SqlError> {
        if self.explicit || self.implicit_block {
            if self.explicit {
                self.failed = true;
            }
            return Err(SqlError::new(
                sqlstate::ACTIVE_SQL_TRANSACTION,
                "VACUUM cannot run inside a transaction block",
            ));
        }
        if vacuum.sort_only
            || vacuum.delete_only
            || vacuum.reindex
            || vacuum.recluster
            || vacuum.threshold.is_some()
            || vacuum.boost
        {
            return Err(SqlError::unsupported(format!("{vacuum}")));
        }
        let table = match &vacuum.table_name {
            Some(name) => {
                let table = self.lookup(name).map(|t| t.id);
                self.txn = None;
                Some(table?)
            }
            None => None,
        };
        let lsn = self.engine.snapshot_lsn();
        self.engine
            .pageserver
            .compact(table, lsn)
            .await
            .map_err(pageserver_error)?;
        Ok(Outcome::Command("VACUUM".into()))
    }

    /// The DataFusion context for the next statement: built once per session (functions,
    /// settings), with every table registered again for this statement's snapshot, overlay
    /// and key column. The context is this session's alone, so re-registering is safe.
    fn context(&mut self, key_table: Option<&str>) -> Result<SessionContext, SqlError> {
        let ctx = match &self.datafusion {
            Some(ctx) => ctx.clone(),
            None => {
                let mut config = SessionConfig::new()
                    .with_target_partitions(2)
                    .with_information_schema(false);
                config.options_mut().sql_parser.parse_float_as_decimal = true;
                let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
                crate::pgcompat::register_functions(&ctx, &self.database);
                self.datafusion = Some(ctx.clone());
                ctx
            }
        };
        let client = self.engine.pageserver.clone();
        let read_path = self
            .settings
            .get(READ_PATH_SETTING)
            .and_then(|value| ReadPath::parse(value))
            .unwrap_or_default();
        let txn = self.txn.get_or_insert_with(|| self.engine.begin());
        for name in std::mem::take(&mut self.registered_tables) {
            ctx.deregister_table(TableReference::bare(name))
                .map_err(from_datafusion)?;
        }
        for (name, def) in &txn.catalog.tables {
            let provider = OmenTable::new(
                client.clone(),
                def.clone(),
                txn.snapshot,
                txn.overlay(def.id),
                key_table == Some(name.as_str()),
                read_path,
            );
            ctx.register_table(TableReference::bare(name.clone()), Arc::new(provider))
                .map_err(from_datafusion)?;
            self.registered_tables.push(name.clone());
        }
        Ok(ctx)
    }

    async fn plan(
        &mut self,
        stmt: &Statement,
        key_table: Option<&str>,
    ) -> Result<(SessionContext, LogicalPlan), SqlError> {
        let ctx = self.context(key_table)?;
        let df_statement = datafusion::sql::parser::Statement::Statement(Box::new(stmt.clone()));
        let plan = ctx
            .state()
            .statement_to_plan(df_statement)
            .await
            .map_err(from_datafusion)?;
        let plan = crate::pgcompat::rewrite(plan).map_err(from_datafusion)?;
        Ok((ctx, plan))
    }

    async fn run_plan(
        ctx: &SessionContext,
        plan: LogicalPlan,
        params: &[ScalarValue],
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let plan = if params.is_empty() {
            plan
        } else {
            plan.with_param_values(params.to_vec())
                .map_err(from_datafusion)?
        };
        let frame = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(from_datafusion)?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.map_err(from_datafusion)?;
        Ok((schema, batches))
    }

    async fn run_query(
        &mut self,
        stmt: &Statement,
        params: &[ScalarValue],
        key_table: Option<&str>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let (ctx, plan) = self.plan(stmt, key_table).await?;
        Self::run_plan(&ctx, plan, params).await
    }

    /// Parameter types and result columns of a statement, without running it.
    ///
    /// Outside an explicit transaction this plans against a snapshot taken for the purpose
    /// and dropped afterwards, so a prepared statement runs later at a fresh snapshot.
    pub async fn describe(&mut self, stmt: &Statement) -> Result<Description, SqlError> {
        let had_transaction = self.txn.is_some();
        let description = self.describe_in_transaction(stmt).await;
        if !had_transaction && !self.explicit {
            self.txn = None;
        }
        description
    }

    async fn describe_in_transaction(&mut self, stmt: &Statement) -> Result<Description, SqlError> {
        let mut description = Description {
            param_types: Vec::new(),
            columns: None,
        };
        let plan_types = |plan: &LogicalPlan| -> Result<Vec<Option<Field>>, SqlError> {
            let mut out = Vec::new();
            for (name, data_type) in plan.get_parameter_types().map_err(from_datafusion)? {
                let idx = placeholder_index(&name).ok_or_else(|| {
                    SqlError::new(
                        sqlstate::SYNTAX_ERROR,
                        format!("there is no parameter {name}"),
                    )
                })?;
                set_param(
                    &mut out,
                    idx,
                    data_type.map(|t| Field::new("", t, true)),
                    true,
                );
            }
            Ok(out)
        };
        match stmt {
            Statement::Query(query) => {
                let (_, plan) = self.plan(stmt, None).await?;
                description.param_types = plan_types(&plan)?;
                // LIMIT $n and OFFSET $n are bigints, as in PostgreSQL.
                if let Some(ast::LimitClause::LimitOffset { limit, offset, .. }) =
                    &query.limit_clause
                {
                    for expr in limit.iter().chain(offset.iter().map(|o| &o.value)) {
                        if let Some(idx) = expr_placeholder(expr) {
                            set_param(
                                &mut description.param_types,
                                idx,
                                Some(Field::new("", DataType::Int64, true)),
                                false,
                            );
                        }
                    }
                }
                let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
                let names = output_names(query, &schema);
                description.columns = Some((schema, names));
            }
            Statement::Insert(insert) => {
                let (_, plan) = self.plan(stmt, None).await?;
                description.param_types = plan_types(&plan)?;
                // A bare `$n` in VALUES takes its target column's type (varchar(n) included).
                if let (ast::TableObject::TableName(name), Some(source)) =
                    (&insert.table, &insert.source)
                {
                    let table = self.lookup(name)?;
                    let targets: Vec<usize> = if insert.columns.is_empty() {
                        (0..table.columns.len()).collect()
                    } else {
                        insert
                            .columns
                            .iter()
                            .filter_map(|c| c.0.last().and_then(|p| p.as_ident()).map(ident_name))
                            .filter_map(|c| table.column_index(&c))
                            .collect()
                    };
                    if let SetExpr::Values(values) = source.body.as_ref() {
                        for row in &values.rows {
                            for (expr, &column) in row.content.iter().zip(&targets) {
                                if let Some(idx) = expr_placeholder(expr) {
                                    set_param(
                                        &mut description.param_types,
                                        idx,
                                        column_param(&table.columns[column]),
                                        true,
                                    );
                                }
                            }
                        }
                    }
                }
            }
            Statement::Update(update) => {
                let (table, select, assigned) = self.update_select(update)?;
                let (_, plan) = self.plan(&select, Some(&table.name)).await?;
                description.param_types = plan_types(&plan)?;
                // `SET col = $n` takes the column's type.
                for (assignment, &column) in update.assignments.iter().zip(&assigned) {
                    if let Some(idx) = expr_placeholder(&assignment.value) {
                        set_param(
                            &mut description.param_types,
                            idx,
                            column_param(&table.columns[column]),
                            true,
                        );
                    }
                }
            }
            Statement::Delete(delete) => {
                let (table, select) = self.delete_select(delete)?;
                let (_, plan) = self.plan(&select, Some(&table.name)).await?;
                description.param_types = plan_types(&plan)?;
            }
            Statement::Explain { .. } => {
                let (_, plan) = self.plan(stmt, None).await?;
                description.param_types = plan_types(&plan)?;
                let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
                let names = schema.fields().iter().map(|f| f.name().clone()).collect();
                description.columns = Some((schema, names));
            }
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(ident_name)
                    .collect::<Vec<_>>()
                    .join(".");
                let schema = Arc::new(Schema::new(vec![Field::new(&name, DataType::Utf8, true)]));
                description.columns = Some((schema, vec![name]));
            }
            _ => {}
        }
        Ok(description)
    }

    fn lookup(&mut self, name: &ObjectName) -> Result<Arc<TableDef>, SqlError> {
        let name = table_name(name)?;
        self.txn()
            .catalog
            .get(&name)
            .cloned()
            .ok_or_else(|| undefined_table(&name))
    }

    /// Validates one row against the table's constraints and returns its storage key.
    fn check_row(
        &self,
        table: &TableDef,
        values: &[ScalarValue],
    ) -> Result<Option<Bytes>, SqlError> {
        for (column, value) in table.columns.iter().zip(values) {
            if value.is_null() {
                if column.not_null {
                    return Err(SqlError::new(
                        sqlstate::NOT_NULL_VIOLATION,
                        format!(
                            "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                            column.name, table.name
                        ),
                    ));
                }
                continue;
            }
            if let (ColumnType::Varchar(Some(max)), ScalarValue::Utf8(Some(text))) =
                (&column.column_type, value)
            {
                if text.chars().count() > *max as usize {
                    return Err(SqlError::new(
                        sqlstate::STRING_DATA_RIGHT_TRUNCATION,
                        format!("value too long for type character varying({max})"),
                    ));
                }
            }
        }
        if table.primary_key.is_empty() {
            return Ok(None);
        }
        let key_values: Vec<ScalarValue> = table
            .primary_key
            .iter()
            .map(|&i| values[i].clone())
            .collect();
        let mut key = Vec::new();
        rowcodec::encode_key(&key_values, &mut key).map_err(SqlError::internal)?;
        Ok(Some(Bytes::from(key)))
    }

    /// Fails with 23505 if a row with `key` exists in the transaction's view.
    async fn check_unique(
        &mut self,
        table: &TableDef,
        key: &Bytes,
        values: &[ScalarValue],
    ) -> Result<(), SqlError> {
        let txn = self.txn();
        let exists = match txn.writes.get(&(table.id, key.clone())) {
            Some(value) => value.is_some(),
            None => {
                let snapshot = txn.snapshot;
                self.engine
                    .pageserver
                    .get_row(table.id, key.clone(), snapshot)
                    .await
                    .map_err(pageserver_error)?
                    .is_some()
            }
        };
        match exists {
            true => Err(unique_violation(table, values)),
            false => Ok(()),
        }
    }

    /// Checks new rows of `table` (values in table order, already of the columns' types)
    /// and stores them in the transaction: NOT NULL, lengths, and primary-key uniqueness
    /// against the transaction's own writes and its snapshot. The keys the snapshot must
    /// answer for are looked up in one pipelined exchange with the pageserver. Returns the
    /// bytes of keys and rows stored; on a bad row, its index and the error (the rows
    /// before it are stored, as the statement fails anyway).
    async fn store_rows(
        &mut self,
        table: &TableDef,
        rows: &[Vec<ScalarValue>],
    ) -> Result<usize, (usize, SqlError)> {
        let mut keys = Vec::with_capacity(rows.len());
        let mut bad_row = None;
        for (i, values) in rows.iter().enumerate() {
            match self.check_row(table, values) {
                Ok(key) => keys.push(key),
                Err(e) => {
                    bad_row = Some((i, e));
                    break;
                }
            }
        }
        let txn = self.txn();
        let snapshot = txn.snapshot;
        let lookups: Vec<Bytes> = keys
            .iter()
            .flatten()
            .filter(|key| !txn.writes.contains_key(&(table.id, (*key).clone())))
            .cloned()
            .collect();
        let found = self
            .engine
            .pageserver
            .get_rows(table.id, &lookups, snapshot)
            .await
            .map_err(|e| (0, pageserver_error(e)))?;
        let existing: std::collections::HashSet<&Bytes> = lookups
            .iter()
            .zip(&found)
            .filter(|(_, value)| value.is_some())
            .map(|(key, _)| key)
            .collect();
        let mut bytes = 0;
        for (i, key) in keys.into_iter().enumerate() {
            let key = match key {
                Some(key) => {
                    let exists = match self.txn().writes.get(&(table.id, key.clone())) {
                        Some(value) => value.is_some(),
                        None => existing.contains(&key),
                    };
                    if exists {
                        return Err((i, unique_violation(table, &rows[i])));
                    }
                    key
                }
                None => self.row_id_key(),
            };
            bytes += self.put_row(table, key, &rows[i]).map_err(|e| (i, e))?;
        }
        match bad_row {
            Some(bad) => Err(bad),
            None => Ok(bytes),
        }
    }

    /// Buffers a row in the transaction; returns the bytes of its key and row.
    fn put_row(
        &mut self,
        table: &TableDef,
        key: Bytes,
        values: &[ScalarValue],
    ) -> Result<usize, SqlError> {
        let mut row = Vec::new();
        rowcodec::encode_row(values, &mut row).map_err(SqlError::internal)?;
        let bytes = key.len() + row.len();
        self.txn()
            .writes
            .insert((table.id, key), Some(Bytes::from(row)));
        Ok(bytes)
    }

    fn row_id_key(&self) -> Bytes {
        Bytes::copy_from_slice(&self.engine.unique_id().to_be_bytes())
    }

    /// Casts each column of `batch` to the table's column types, in table order.
    fn cast_columns(table: &TableDef, columns: &[ArrayRef]) -> Result<Vec<ArrayRef>, SqlError> {
        table
            .columns
            .iter()
            .zip(columns)
            .map(|(column, array)| {
                let target = column.column_type.arrow_type();
                if array.data_type() == &target {
                    Ok(array.clone())
                } else if target == DataType::Binary && is_text_type(array.data_type()) {
                    bytea_from_text(column, array)
                } else {
                    cast_with_options(array, &target, &cast_options())
                        .map_err(|e| value_error(column, e))
                }
            })
            .collect()
    }

    async fn insert(
        &mut self,
        stmt: &Statement,
        insert: &ast::Insert,
        params: &[ScalarValue],
    ) -> Result<Outcome, SqlError> {
        if insert.returning.is_some() {
            return Err(SqlError::unsupported("INSERT … RETURNING"));
        }
        if insert.on.is_some() {
            return Err(SqlError::unsupported("INSERT … ON CONFLICT"));
        }
        let ast::TableObject::TableName(name) = &insert.table else {
            return Err(SqlError::unsupported("INSERT INTO a table function"));
        };
        let table = self.lookup(name)?;
        // DataFusion plans the rows to insert: column list, defaults (NULL) and casts.
        let (ctx, plan) = self.plan(stmt, None).await?;
        let LogicalPlan::Dml(DmlStatement {
            op: WriteOp::Insert(_),
            input,
            ..
        }) = plan
        else {
            return Err(SqlError::internal("INSERT did not plan as an insert"));
        };
        let (_, batches) = Self::run_plan(&ctx, input.as_ref().clone(), params).await?;
        let mut n_rows = 0;
        for batch in batches {
            if batch.num_columns() != table.columns.len() {
                return Err(SqlError::internal(
                    "INSERT produced a row of the wrong width",
                ));
            }
            let columns = Self::cast_columns(&table, batch.columns())?;
            let rows = (0..batch.num_rows())
                .map(|row| row_values(&columns, row))
                .collect::<Result<Vec<_>, _>>()?;
            self.store_rows(&table, &rows).await.map_err(|(_, e)| e)?;
            n_rows += rows.len();
        }
        Ok(Outcome::Command(format!("INSERT 0 {n_rows}")))
    }

    /// The SELECT that finds an UPDATE's rows: key, current columns, then new values.
    fn update_select(
        &mut self,
        update: &ast::Update,
    ) -> Result<(Arc<TableDef>, Statement, Vec<usize>), SqlError> {
        if update.returning.is_some() {
            return Err(SqlError::unsupported("UPDATE … RETURNING"));
        }
        if update.from.is_some() || !update.table.joins.is_empty() {
            return Err(SqlError::unsupported("UPDATE … FROM"));
        }
        let TableFactor::Table { name, .. } = &update.table.relation else {
            return Err(SqlError::unsupported("UPDATE of this kind of relation"));
        };
        let table = self.lookup(name)?;
        let mut select_list = vec![quote_ident(KEY_COLUMN)];
        select_list.extend(table.columns.iter().map(|c| quote_ident(&c.name)));
        let mut assigned = Vec::new();
        for (i, assignment) in update.assignments.iter().enumerate() {
            let AssignmentTarget::ColumnName(column) = &assignment.target else {
                return Err(SqlError::unsupported("assigning to a tuple of columns"));
            };
            let column_name = column
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(ident_name)
                .unwrap_or_default();
            let idx = table.column_index(&column_name).ok_or_else(|| {
                SqlError::new(
                    sqlstate::UNDEFINED_COLUMN,
                    format!(
                        "column \"{column_name}\" of relation \"{}\" does not exist",
                        table.name
                    ),
                )
            })?;
            if assigned.contains(&idx) {
                return Err(SqlError::new(
                    sqlstate::SYNTAX_ERROR,
                    format!("multiple assignments to same column \"{column_name}\""),
                ));
            }
            assigned.push(idx);
            select_list.push(format!("({}) AS \"__omendb_new_{i}\"", assignment.value));
        }
        let mut sql = format!("SELECT {} FROM {}", select_list.join(", "), update.table);
        if let Some(selection) = &update.selection {
            sql.push_str(&format!(" WHERE {selection}"));
        }
        let mut statements = parse_sql(&sql)?;
        let select = statements
            .pop()
            .ok_or_else(|| SqlError::internal("empty UPDATE plan"))?;
        Ok((table, select, assigned))
    }

    async fn update(
        &mut self,
        update: &ast::Update,
        params: &[ScalarValue],
    ) -> Result<Outcome, SqlError> {
        let (table, select, assigned) = self.update_select(update)?;
        let (_, batches) = self.run_query(&select, params, Some(&table.name)).await?;
        let n_columns = table.columns.len();
        let mut n_rows = 0;
        for batch in batches {
            let keys = key_array(&batch)?;
            let mut columns: Vec<ArrayRef> = batch.columns()[1..=n_columns].to_vec();
            for (i, &idx) in assigned.iter().enumerate() {
                columns[idx] = batch.column(1 + n_columns + i).clone();
            }
            let columns = Self::cast_columns(&table, &columns)?;
            for row in 0..batch.num_rows() {
                let old_key = Bytes::copy_from_slice(keys.value(row));
                let values = row_values(&columns, row)?;
                let key = match self.check_row(&table, &values)? {
                    Some(new_key) if new_key != old_key => {
                        self.check_unique(&table, &new_key, &values).await?;
                        self.txn().writes.insert((table.id, old_key), None);
                        new_key
                    }
                    _ => old_key,
                };
                self.put_row(&table, key, &values)?;
                n_rows += 1;
            }
        }
        Ok(Outcome::Command(format!("UPDATE {n_rows}")))
    }

    fn delete_select(
        &mut self,
        delete: &ast::Delete,
    ) -> Result<(Arc<TableDef>, Statement), SqlError> {
        if delete.returning.is_some() {
            return Err(SqlError::unsupported("DELETE … RETURNING"));
        }
        if delete.using.is_some() || delete.limit.is_some() {
            return Err(SqlError::unsupported("DELETE … USING"));
        }
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
        let [relation] = from.as_slice() else {
            return Err(SqlError::unsupported("DELETE from several tables"));
        };
        let TableFactor::Table { name, .. } = &relation.relation else {
            return Err(SqlError::unsupported("DELETE from this kind of relation"));
        };
        if !relation.joins.is_empty() {
            return Err(SqlError::unsupported("DELETE with a join"));
        }
        let table = self.lookup(name)?;
        let mut sql = format!("SELECT {} FROM {relation}", quote_ident(KEY_COLUMN));
        if let Some(selection) = &delete.selection {
            sql.push_str(&format!(" WHERE {selection}"));
        }
        let mut statements = parse_sql(&sql)?;
        let select = statements
            .pop()
            .ok_or_else(|| SqlError::internal("empty DELETE plan"))?;
        Ok((table, select))
    }

    async fn delete(
        &mut self,
        delete: &ast::Delete,
        params: &[ScalarValue],
    ) -> Result<Outcome, SqlError> {
        let (table, select) = self.delete_select(delete)?;
        let (_, batches) = self.run_query(&select, params, Some(&table.name)).await?;
        let mut n_rows = 0;
        for batch in batches {
            let keys = key_array(&batch)?;
            for row in 0..keys.len() {
                self.txn()
                    .writes
                    .insert((table.id, Bytes::copy_from_slice(keys.value(row))), None);
                n_rows += 1;
            }
        }
        Ok(Outcome::Command(format!("DELETE {n_rows}")))
    }

    fn create_table(&mut self, create: &ast::CreateTable) -> Result<Outcome, SqlError> {
        if create.query.is_some() {
            return Err(SqlError::unsupported("CREATE TABLE … AS"));
        }
        if create.temporary {
            return Err(SqlError::unsupported("CREATE TEMPORARY TABLE"));
        }
        let name = table_name(&create.name)?;
        if self.txn().catalog.get(&name).is_some() {
            if create.if_not_exists {
                self.notices.push(SqlError::new(
                    sqlstate::DUPLICATE_TABLE,
                    format!("relation \"{name}\" already exists, skipping"),
                ));
                return Ok(Outcome::Command("CREATE TABLE".into()));
            }
            return Err(SqlError::new(
                sqlstate::DUPLICATE_TABLE,
                format!("relation \"{name}\" already exists"),
            ));
        }
        let mut columns: Vec<ColumnDef> = Vec::new();
        let mut primary_key: Option<Vec<usize>> = None;
        let multiple_keys = || {
            SqlError::new(
                sqlstate::INVALID_TABLE_DEFINITION,
                format!("multiple primary keys for table \"{name}\" are not allowed"),
            )
        };
        for column in &create.columns {
            let column_name = ident_name(&column.name);
            if columns.iter().any(|c| c.name == column_name) {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_COLUMN,
                    format!("column \"{column_name}\" specified more than once"),
                ));
            }
            let column_type = ColumnType::from_sql(&column.data_type)
                .map_err(|e| SqlError::new(sqlstate::FEATURE_NOT_SUPPORTED, e.to_string()))?;
            let mut not_null = false;
            for option in &column.options {
                match &option.option {
                    ColumnOption::Null => {}
                    ColumnOption::NotNull => not_null = true,
                    ColumnOption::PrimaryKey(_) => {
                        if primary_key.is_some() {
                            return Err(multiple_keys());
                        }
                        primary_key = Some(vec![columns.len()]);
                    }
                    other => {
                        return Err(SqlError::unsupported(format!("the column option {other}")))
                    }
                }
            }
            columns.push(ColumnDef {
                name: column_name,
                column_type,
                not_null,
            });
        }
        for constraint in &create.constraints {
            match constraint {
                TableConstraint::PrimaryKey(pk) => {
                    if primary_key.is_some() {
                        return Err(multiple_keys());
                    }
                    let mut indexes = Vec::new();
                    for index_column in &pk.columns {
                        let Expr::Identifier(ident) = &index_column.column.expr else {
                            return Err(SqlError::unsupported("a primary key on an expression"));
                        };
                        let column_name = ident_name(ident);
                        let idx = columns
                            .iter()
                            .position(|c| c.name == column_name)
                            .ok_or_else(|| {
                                SqlError::new(
                                    sqlstate::UNDEFINED_COLUMN,
                                    format!("column \"{column_name}\" named in key does not exist"),
                                )
                            })?;
                        indexes.push(idx);
                    }
                    primary_key = Some(indexes);
                }
                other => {
                    return Err(SqlError::unsupported(format!(
                        "the table constraint {other}"
                    )))
                }
            }
        }
        let primary_key = primary_key.unwrap_or_default();
        for &idx in &primary_key {
            columns[idx].not_null = true;
        }
        let txn = self.txn();
        let id = txn.catalog.next_table_id;
        txn.put_table_def(TableDef {
            id,
            name,
            columns,
            primary_key,
        });
        Ok(Outcome::Command("CREATE TABLE".into()))
    }

    fn drop_tables(&mut self, names: &[ObjectName], if_exists: bool) -> Result<Outcome, SqlError> {
        let mut tables = Vec::new();
        for name in names {
            let name = table_name(name)?;
            match self.txn().catalog.get(&name) {
                Some(def) => tables.push(def.clone()),
                None if if_exists => self.notices.push(SqlError::new(
                    sqlstate::SUCCESSFUL_COMPLETION,
                    format!("table \"{name}\" does not exist, skipping"),
                )),
                None => {
                    return Err(SqlError::new(
                        sqlstate::UNDEFINED_TABLE,
                        format!("table \"{name}\" does not exist"),
                    ))
                }
            }
        }
        for def in tables {
            self.txn().drop_table(&def);
        }
        Ok(Outcome::Command("DROP TABLE".into()))
    }

    fn set(&mut self, set: &ast::Set) -> Result<Outcome, SqlError> {
        if let ast::Set::SingleAssignment {
            variable, values, ..
        } = set
        {
            let name = variable.to_string().to_lowercase();
            let value = values
                .iter()
                .map(|v| match v {
                    Expr::Value(v) => match &v.value {
                        ast::Value::SingleQuotedString(s) => s.clone(),
                        other => other.to_string(),
                    },
                    Expr::Identifier(ident) => ident.value.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let value = match name.as_str() {
                READ_PATH_SETTING => match ReadPath::parse(&value) {
                    Some(read_path) => read_path.name().to_string(),
                    None => {
                        return Err(SqlError::new(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!("invalid value for parameter \"{name}\": \"{value}\""),
                        )
                        .with_detail(format!("Available values: {}.", ReadPath::NAMES.join(", "))))
                    }
                },
                _ => value,
            };
            self.settings.insert(name, value);
        }
        Ok(Outcome::Command("SET".into()))
    }

    fn show(&mut self, variable: &[Ident]) -> Result<Outcome, SqlError> {
        let name = variable
            .iter()
            .map(|i| i.value.clone())
            .collect::<Vec<_>>()
            .join(".");
        let value = self.setting(&name).cloned().ok_or_else(|| {
            SqlError::new(
                sqlstate::UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"{name}\""),
            )
        })?;
        let column = name.to_lowercase();
        let schema = Arc::new(Schema::new(vec![Field::new(&column, DataType::Utf8, true)]));
        let array: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec![value]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![array]).map_err(SqlError::internal)?;
        Ok(Outcome::Rows {
            schema,
            names: vec![column],
            batches: vec![batch],
            tag: "SHOW".into(),
        })
    }
}
