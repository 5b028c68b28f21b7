//! One client connection: startup, the simple and extended query protocols, and error
//! recovery, on top of [`super::messages`] and [`crate::session::Session`].
//!
//! After an error in the extended protocol, messages are discarded until Sync, as
//! PostgreSQL does. A malformed message closes this connection only.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::Statement;
use futures::FutureExt;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::messages::{
    read_message, read_startup, BackendBuffer, ErrorFields, FieldDescription, FrontendMessage,
    StartupRequest, TargetKind,
};
use crate::engine::Engine;
use crate::error::{sqlstate, SqlError};
use crate::pgtypes;
use crate::session::{default_settings, parse_sql, CopyEnd, CopyIn, Description, Outcome, Session};

type Reader = BufReader<OwnedReadHalf>;
type Writer = OwnedWriteHalf;

/// Output is written to the socket whenever this much is buffered.
pub const OUTPUT_FLUSH_BYTES: usize = 64 << 10;

/// Parameters of unknown type are sent as text.
const TEXT_OID: u32 = 25;

static NEXT_PROCESS_ID: AtomicI32 = AtomicI32::new(1000);

struct Prepared {
    statement: Option<Statement>,
    declared_types: Vec<u32>,
    description: Option<Arc<Description>>,
}

struct Portal {
    statement: Option<Statement>,
    params: Vec<ScalarValue>,
    result_formats: Vec<i16>,
    description: Option<Arc<Description>>,
    /// Rows left over from an Execute with a row limit.
    pending: Option<PendingRows>,
}

struct PendingRows {
    batches: Vec<RecordBatch>,
    batch_idx: usize,
    row_idx: usize,
    sent: usize,
    tag: String,
}

fn error_fields(e: &SqlError) -> ErrorFields {
    ErrorFields {
        severity: "ERROR",
        code: e.code.to_string(),
        message: e.message.clone(),
        detail: e.detail.clone(),
        hint: e.hint.clone(),
        position: None,
        context: e.context.clone(),
    }
}

struct Connection {
    out: BackendBuffer,
    session: Session,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    /// The client went away (or broke the protocol) during a COPY.
    closed: bool,
}

/// Serves one client until it disconnects.
pub async fn serve_connection(stream: TcpStream, engine: Arc<Engine>) {
    let peer = stream.peer_addr().ok();
    stream.set_nodelay(true).ok();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let params = loop {
        match read_startup(&mut reader).await {
            Ok(Some(StartupRequest::SslRequest)) | Ok(Some(StartupRequest::GssEncRequest)) => {
                if writer.write_all(b"N").await.is_err() {
                    return;
                }
            }
            Ok(Some(StartupRequest::Startup { params, .. })) => break params,
            Ok(Some(StartupRequest::Cancel { .. })) | Ok(None) => return,
            Err(e) => {
                debug!(?peer, "bad startup packet: {e}");
                let mut out = BackendBuffer::new();
                out.error_response(&ErrorFields {
                    severity: "FATAL",
                    code: sqlstate::PROTOCOL_VIOLATION.into(),
                    message: format!("invalid startup packet: {e}"),
                    detail: None,
                    hint: None,
                    position: None,
                    context: None,
                });
                let _ = writer.write_all(&out.take()).await;
                return;
            }
        }
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let user = param("user").unwrap_or_else(|| "omendb".into());
    let mut conn = Connection {
        out: BackendBuffer::new(),
        session: Session::new(
            engine,
            user.clone(),
            param("database").unwrap_or_else(|| user.clone()),
        ),
        statements: HashMap::new(),
        portals: HashMap::new(),
        closed: false,
    };
    conn.out.authentication_ok();
    for (name, value) in default_settings() {
        let value = match name {
            "application_name" => param("application_name").unwrap_or_default(),
            _ => value.to_string(),
        };
        conn.out.parameter_status(name, &value);
    }
    conn.out.parameter_status("session_authorization", &user);
    let process_id = NEXT_PROCESS_ID.fetch_add(1, Ordering::Relaxed);
    conn.out
        .backend_key_data(process_id, process_id.wrapping_mul(7919));
    conn.out.ready_for_query(b'I');
    if writer.write_all(&conn.out.take()).await.is_err() {
        return;
    }
    info!(?peer, %user, "connection started");

    let mut skip_until_sync = false;
    loop {
        let message = match read_message(&mut reader).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(e) => {
                debug!(?peer, "protocol error: {e}");
                conn.out.error_response(&ErrorFields {
                    severity: "FATAL",
                    code: sqlstate::PROTOCOL_VIOLATION.into(),
                    message: format!("protocol error: {e}"),
                    detail: None,
                    hint: None,
                    position: None,
                    context: None,
                });
                let _ = writer.write_all(&conn.out.take()).await;
                break;
            }
        };
        let mut flush = false;
        match message {
            FrontendMessage::Terminate => break,
            FrontendMessage::Query(sql) => {
                skip_until_sync = false;
                conn.simple_query(&sql, &mut reader, &mut writer).await;
                flush = true;
            }
            FrontendMessage::Sync => {
                skip_until_sync = false;
                if !conn.session_in_transaction() {
                    conn.portals.clear();
                }
                conn.out.ready_for_query(conn.session.transaction_status());
                flush = true;
            }
            FrontendMessage::Flush => flush = true,
            _ if skip_until_sync => {}
            message => {
                if let Err(e) = conn.extended(message, &mut reader, &mut writer).await {
                    conn.session.fail_transaction();
                    conn.out.error_response(&error_fields(&e));
                    skip_until_sync = true;
                }
            }
        }
        if flush || conn.out.buf.len() >= OUTPUT_FLUSH_BYTES || conn.closed {
            if writer.write_all(&conn.out.take()).await.is_err() {
                break;
            }
        }
        if conn.closed {
            break;
        }
    }
    info!(?peer, "connection ended");
}

impl Connection {
    fn session_in_transaction(&self) -> bool {
        self.session.transaction_status() != b'I'
    }

    async fn flush_if_large(&mut self, writer: &mut Writer) {
        if self.out.buf.len() >= OUTPUT_FLUSH_BYTES {
            let _ = writer.write_all(&self.out.take()).await;
        }
    }

    fn send_notices(&mut self) {
        for notice in self.session.take_notices() {
            self.out.notice_response(&ErrorFields {
                severity: "NOTICE",
                code: notice.code.to_string(),
                message: notice.message,
                detail: notice.detail,
                hint: notice.hint,
                position: None,
                context: notice.context,
            });
        }
    }

    fn row_description(&mut self, schema: &SchemaRef, names: &[String], formats: &[i16]) {
        let fields: Vec<FieldDescription> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let pg_type = pgtypes::pg_type_for_field(field);
                FieldDescription {
                    name: names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| field.name().clone()),
                    table_oid: 0,
                    column_attr: 0,
                    type_oid: pg_type.oid,
                    type_len: pg_type.typlen,
                    type_modifier: pg_type.typmod,
                    format: format_for(formats, i),
                }
            })
            .collect();
        self.out.row_description(&fields);
    }

    /// Writes rows; stops after `limit` rows (0 = no limit) and returns whether all were sent.
    async fn data_rows(
        &mut self,
        pending: &mut PendingRows,
        formats: &[i16],
        limit: usize,
        writer: &mut Writer,
    ) -> Result<bool, SqlError> {
        let mut scratch = BytesMut::new();
        let mut n_sent = 0;
        while pending.batch_idx < pending.batches.len() {
            let batch = pending.batches[pending.batch_idx].clone();
            while pending.row_idx < batch.num_rows() {
                if limit > 0 && n_sent == limit {
                    return Ok(false);
                }
                let row = pending.row_idx;
                let mut data_row = self.out.begin_data_row(batch.num_columns() as i16);
                for (i, column) in batch.columns().iter().enumerate() {
                    if column.is_null(row) {
                        data_row.null();
                        continue;
                    }
                    scratch.clear();
                    let encoded = if format_for(formats, i) == 1 {
                        pgtypes::encode_binary(column.as_ref(), row, &mut scratch)
                    } else {
                        pgtypes::encode_text(column.as_ref(), row, &mut scratch)
                    };
                    if let Err(e) = encoded {
                        data_row.null();
                        data_row.finish();
                        return Err(SqlError::internal(format!("could not encode a value: {e}")));
                    }
                    data_row.value(&scratch);
                }
                data_row.finish();
                pending.row_idx += 1;
                pending.sent += 1;
                n_sent += 1;
                self.flush_if_large(writer).await;
            }
            pending.batch_idx += 1;
            pending.row_idx = 0;
        }
        Ok(true)
    }

    async fn simple_query(&mut self, sql: &str, reader: &mut Reader, writer: &mut Writer) {
        let statements = match parse_sql(sql) {
            Ok(statements) => statements,
            Err(e) => {
                self.session.fail_transaction();
                self.out.error_response(&error_fields(&e));
                self.out.ready_for_query(self.session.transaction_status());
                return;
            }
        };
        if statements.is_empty() {
            self.out.empty_query_response();
        }
        let implicit_block = statements.len() > 1;
        if implicit_block {
            self.session.begin_implicit_block();
        }
        let mut success = true;
        for statement in &statements {
            let mut result = execute_guarded(&mut self.session, statement, &[]).await;
            if let Ok(Outcome::CopyIn(copy)) = result {
                result = self.copy_in(copy, reader, writer).await;
            }
            self.send_notices();
            match result {
                Ok(Outcome::Command(tag)) => self.out.command_complete(&tag),
                Ok(Outcome::Rows {
                    schema,
                    names,
                    batches,
                    tag,
                }) => {
                    self.row_description(&schema, &names, &[]);
                    let mut pending = PendingRows {
                        batches,
                        batch_idx: 0,
                        row_idx: 0,
                        sent: 0,
                        tag,
                    };
                    match self.data_rows(&mut pending, &[], 0, writer).await {
                        Ok(_) => self.out.command_complete(&pending.tag),
                        Err(e) => {
                            self.session.fail_transaction();
                            self.out.error_response(&error_fields(&e));
                            success = false;
                            break;
                        }
                    }
                }
                Ok(Outcome::CopyIn(_)) => {
                    let e = SqlError::internal("a COPY was left unfinished");
                    self.out.error_response(&error_fields(&e));
                    success = false;
                    break;
                }
                Err(e) => {
                    self.out.error_response(&error_fields(&e));
                    success = false;
                    break;
                }
            }
        }
        if implicit_block {
            if let Err(e) = self.session.end_implicit_block(success).await {
                self.out.error_response(&error_fields(&e));
            }
        }
        self.out.ready_for_query(self.session.transaction_status());
    }

    /// Copy-in mode: announces the COPY, feeds each CopyData payload to the session until
    /// CopyDone or CopyFail, and ends the statement. Flush and Sync are ignored meanwhile,
    /// as PostgreSQL does (clients may send them without noticing the statement was a
    /// COPY); any other message fails the COPY. After a failure the client's remaining
    /// CopyData, CopyDone and CopyFail messages are dropped by the main loop.
    async fn copy_in(
        &mut self,
        mut copy: Box<CopyIn>,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Outcome, SqlError> {
        self.out
            .copy_in_response(copy.format_code(), copy.n_fields() as i16);
        if writer.write_all(&self.out.take()).await.is_err() {
            self.closed = true;
            return self.end_copy(copy, CopyEnd::Failed(client_gone())).await;
        }
        let end = loop {
            match read_message(reader).await {
                Ok(Some(FrontendMessage::CopyData(data))) => {
                    let stored = AssertUnwindSafe(self.session.copy_data(&mut copy, &data))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|panic| Err(panic_error(&mut self.session, panic)));
                    if let Err(e) = stored {
                        break CopyEnd::Failed(e);
                    }
                }
                Ok(Some(FrontendMessage::CopyDone)) => break CopyEnd::Done,
                Ok(Some(FrontendMessage::CopyFail(message))) => {
                    break CopyEnd::Failed(SqlError::new(
                        sqlstate::QUERY_CANCELED,
                        format!("COPY from stdin failed: {message}"),
                    ))
                }
                Ok(Some(FrontendMessage::Flush | FrontendMessage::Sync)) => {}
                Ok(Some(other)) => {
                    break CopyEnd::Failed(SqlError::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!(
                            "unexpected message during COPY from stdin: {}",
                            message_name(&other)
                        ),
                    ))
                }
                Ok(None) | Err(_) => {
                    self.closed = true;
                    break CopyEnd::Failed(client_gone());
                }
            }
        };
        self.end_copy(copy, end).await
    }

    async fn end_copy(&mut self, copy: Box<CopyIn>, end: CopyEnd) -> Result<Outcome, SqlError> {
        AssertUnwindSafe(self.session.copy_end(copy, end))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panic_error(&mut self.session, panic)))
    }

    async fn describe_statement(&mut self, name: &str) -> Result<Arc<Description>, SqlError> {
        let prepared = self
            .statements
            .get(name)
            .ok_or_else(|| unknown_statement(name))?;
        if let Some(description) = &prepared.description {
            return Ok(description.clone());
        }
        let description = match &prepared.statement {
            Some(statement) => {
                let statement = statement.clone();
                Arc::new(describe_guarded(&mut self.session, &statement).await?)
            }
            None => Arc::new(Description {
                param_types: Vec::new(),
                columns: None,
            }),
        };
        if let Some(prepared) = self.statements.get_mut(name) {
            prepared.description = Some(description.clone());
        }
        Ok(description)
    }

    /// Parameter type OIDs: the client's declared ones, else the inferred ones.
    fn param_oids(prepared: &Prepared, description: &Description) -> Vec<u32> {
        let n = prepared
            .declared_types
            .len()
            .max(description.param_types.len());
        (0..n)
            .map(|i| match prepared.declared_types.get(i) {
                Some(&oid) if oid != 0 => oid,
                _ => description
                    .param_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .map_or(TEXT_OID, |field| pgtypes::pg_type_for_field(&field).oid),
            })
            .collect()
    }

    async fn extended(
        &mut self,
        message: FrontendMessage,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<(), SqlError> {
        match message {
            FrontendMessage::Parse {
                name,
                query,
                param_types,
            } => {
                let mut statements = parse_sql(&query)?;
                if statements.len() > 1 {
                    return Err(SqlError::new(
                        sqlstate::SYNTAX_ERROR,
                        "cannot insert multiple commands into a prepared statement",
                    ));
                }
                if !name.is_empty() && self.statements.contains_key(&name) {
                    return Err(SqlError::new(
                        "42P05",
                        format!("prepared statement \"{name}\" already exists"),
                    ));
                }
                let statement = statements.pop();
                self.statements.insert(
                    name.clone(),
                    Prepared {
                        statement,
                        declared_types: param_types,
                        description: None,
                    },
                );
                // PostgreSQL checks names and types at Parse: so do we, for queries and DML.
                if let Err(e) = self.describe_statement(&name).await {
                    self.statements.remove(&name);
                    return Err(e);
                }
                self.out.parse_complete();
            }
            FrontendMessage::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            } => {
                let description = self.describe_statement(&statement).await?;
                let prepared = self
                    .statements
                    .get(&statement)
                    .ok_or_else(|| unknown_statement(&statement))?;
                let oids = Self::param_oids(prepared, &description);
                if params.len() != oids.len() {
                    return Err(SqlError::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!(
                            "bind message supplies {} parameters, but prepared statement \"{statement}\" requires {}",
                            params.len(),
                            oids.len()
                        ),
                    ));
                }
                let mut values = Vec::with_capacity(params.len());
                for (i, param) in params.iter().enumerate() {
                    let format = format_for(&param_formats, i);
                    let value = match param {
                        None => {
                            let data_type = description
                                .param_types
                                .get(i)
                                .cloned()
                                .flatten()
                                .map_or(DataType::Utf8, |field| field.data_type().clone());
                            ScalarValue::try_from(&data_type).map_err(SqlError::internal)?
                        }
                        Some(bytes) => pgtypes::decode_param(oids[i], format, bytes)
                            .map_err(|e| SqlError::new(e.sqlstate(), e.message().to_string()))?,
                    };
                    values.push(value);
                }
                let statement = prepared.statement.clone();
                self.portals.insert(
                    portal,
                    Portal {
                        statement,
                        params: values,
                        result_formats,
                        description: Some(description),
                        pending: None,
                    },
                );
                self.out.bind_complete();
            }
            FrontendMessage::Describe {
                kind: TargetKind::Statement,
                name,
            } => {
                let description = self.describe_statement(&name).await?;
                let prepared = self
                    .statements
                    .get(&name)
                    .ok_or_else(|| unknown_statement(&name))?;
                let oids = Self::param_oids(prepared, &description);
                self.out.parameter_description(&oids);
                match &description.columns {
                    Some((schema, names)) => self.row_description(schema, names, &[]),
                    None => self.out.no_data(),
                }
            }
            FrontendMessage::Describe {
                kind: TargetKind::Portal,
                name,
            } => {
                let portal = self
                    .portals
                    .get(&name)
                    .ok_or_else(|| unknown_portal(&name))?;
                let formats = portal.result_formats.clone();
                match portal.description.as_ref().and_then(|d| d.columns.clone()) {
                    Some((schema, names)) => self.row_description(&schema, &names, &formats),
                    None => self.out.no_data(),
                }
            }
            FrontendMessage::Execute {
                portal: name,
                max_rows,
            } => {
                let portal = self
                    .portals
                    .get_mut(&name)
                    .ok_or_else(|| unknown_portal(&name))?;
                let formats = portal.result_formats.clone();
                let mut pending = match portal.pending.take() {
                    Some(pending) => pending,
                    None => {
                        let Some(statement) = portal.statement.clone() else {
                            self.out.empty_query_response();
                            return Ok(());
                        };
                        let params = portal.params.clone();
                        let described = portal.description.as_ref().and_then(|d| d.columns.clone());
                        let mut result =
                            execute_guarded(&mut self.session, &statement, &params).await;
                        if let Ok(Outcome::CopyIn(copy)) = result {
                            result = self.copy_in(copy, reader, writer).await;
                        }
                        self.send_notices();
                        match result? {
                            Outcome::CopyIn(_) => {
                                return Err(SqlError::internal("a COPY was left unfinished"))
                            }
                            Outcome::Command(tag) => {
                                self.out.command_complete(&tag);
                                return Ok(());
                            }
                            Outcome::Rows { schema, .. }
                                if !same_row_shape(described.as_ref().map(|(s, _)| s), &schema) =>
                            {
                                return Err(SqlError::new(
                                    sqlstate::FEATURE_NOT_SUPPORTED,
                                    "cached plan must not change result type",
                                ));
                            }
                            Outcome::Rows { batches, tag, .. } => PendingRows {
                                batches,
                                batch_idx: 0,
                                row_idx: 0,
                                sent: 0,
                                tag,
                            },
                        }
                    }
                };
                let limit = if max_rows > 0 { max_rows as usize } else { 0 };
                if self
                    .data_rows(&mut pending, &formats, limit, writer)
                    .await?
                {
                    let tag = if pending.tag.starts_with("SELECT") {
                        format!("SELECT {}", pending.sent)
                    } else {
                        pending.tag.clone()
                    };
                    self.out.command_complete(&tag);
                } else {
                    self.out.portal_suspended();
                    if let Some(portal) = self.portals.get_mut(&name) {
                        portal.pending = Some(pending);
                    }
                }
            }
            FrontendMessage::Close { kind, name } => {
                match kind {
                    TargetKind::Statement => self.statements.remove(&name).map(|_| ()),
                    TargetKind::Portal => self.portals.remove(&name).map(|_| ()),
                };
                self.out.close_complete();
            }
            FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail(_) => {}
            other => {
                return Err(SqlError::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("unexpected message {other:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// A panic while running a statement becomes an internal error for this client; the
/// transaction it was in is marked failed.
fn panic_error(session: &mut Session, panic: Box<dyn std::any::Any + Send>) -> SqlError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!("statement panicked: {what}");
    session.fail_transaction();
    SqlError::internal(format!(
        "internal error while running the statement: {what}"
    ))
}

async fn execute_guarded(
    session: &mut Session,
    statement: &Statement,
    params: &[ScalarValue],
) -> Result<Outcome, SqlError> {
    let result = AssertUnwindSafe(session.execute(statement, params))
        .catch_unwind()
        .await;
    result.unwrap_or_else(|panic| Err(panic_error(session, panic)))
}

async fn describe_guarded(
    session: &mut Session,
    statement: &Statement,
) -> Result<Description, SqlError> {
    let result = AssertUnwindSafe(session.describe(statement))
        .catch_unwind()
        .await;
    result.unwrap_or_else(|panic| Err(panic_error(session, panic)))
}

/// Whether rows of `actual` can be sent under the RowDescription made from `described`: the
/// same number of columns with the same PostgreSQL types. A table dropped and created again
/// with other columns between Describe and Execute changes this.
fn same_row_shape(described: Option<&SchemaRef>, actual: &SchemaRef) -> bool {
    let Some(described) = described else {
        return false;
    };
    described.fields().len() == actual.fields().len()
        && described
            .fields()
            .iter()
            .zip(actual.fields())
            .all(|(a, b)| pgtypes::pg_type_for_field(a).oid == pgtypes::pg_type_for_field(b).oid)
}

fn client_gone() -> SqlError {
    SqlError::new(
        sqlstate::CONNECTION_FAILURE,
        "unexpected EOF on client connection with an open transaction",
    )
}

/// A frontend message's name, for errors (without its contents).
fn message_name(message: &FrontendMessage) -> &'static str {
    match message {
        FrontendMessage::Query(_) => "Query",
        FrontendMessage::Parse { .. } => "Parse",
        FrontendMessage::Bind { .. } => "Bind",
        FrontendMessage::Describe { .. } => "Describe",
        FrontendMessage::Execute { .. } => "Execute",
        FrontendMessage::Close { .. } => "Close",
        FrontendMessage::Terminate => "Terminate",
        _ => "another message",
    }
}

fn format_for(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [single] => *single,
        many => many.get(i).copied().unwrap_or(0),
    }
}

fn unknown_statement(name: &str) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_SQL_STATEMENT_NAME,
        format!("prepared statement \"{name}\" does not exist"),
    )
}

fn unknown_portal(name: &str) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_CURSOR_NAME,
        format!("portal \"{name}\" does not exist"),
    )
}
