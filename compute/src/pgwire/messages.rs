//! PostgreSQL v3 wire protocol messages: decoding what a client sends (the untyped startup
//! packet, then typed frontend messages) and encoding what the server answers.
//!
//! This module knows framing and field layout only; the connection state machine, SQL and
//! authentication policy live above it.
//!
//! Limits and guarantees:
//! - Nothing here panics on bytes from the socket. Every length, count and string is checked;
//!   bad input becomes [`ProtocolError::Malformed`] naming the message and the field.
//! - Length fields are checked before anything is allocated, against [`STARTUP_BYTES_MAX`],
//!   [`MESSAGE_BYTES_MAX`] and, for messages that are only a few names long, the smaller limits
//!   PostgreSQL also applies. Bodies grow as bytes arrive, so a client that announces a huge
//!   message and then stalls costs no memory.
//! - Text fields must be NUL-terminated UTF-8 (OmenDB speaks UTF-8 only).
//! - After any error from [`read_startup`] or [`read_message`] the stream may sit in the middle
//!   of a message: the caller should send a FATAL error and close, as PostgreSQL does.
//! - Counts of parameters and format codes are unsigned 16-bit, as PostgreSQL reads them
//!   (`pq_getmsgint(.., 2)`), so up to 65535 bind parameters are accepted.
//! - Format codes are passed through unchecked; rejecting codes other than 0 and 1 is the
//!   caller's job (PostgreSQL reports that as an ordinary error, not a protocol violation).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest startup packet body accepted (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const STARTUP_BYTES_MAX: usize = 10_000;
/// Largest frontend message body accepted (Query, Parse, Bind, CopyData).
pub const MESSAGE_BYTES_MAX: usize = 256 << 20;
/// Largest body of messages that carry at most a name or an error text (Describe, Execute,
/// Close, Sync, Flush, Terminate, CopyDone, CopyFail): PostgreSQL's `PQ_SMALL_MESSAGE_LIMIT`.
/// A bogus length on these is then caught without waiting for megabytes.
pub const SMALL_MESSAGE_BYTES_MAX: usize = 10_000;
/// Largest password / SASL message body: PostgreSQL's `PG_MAX_AUTH_TOKEN_LENGTH`.
pub const PASSWORD_BYTES_MAX: usize = 65_535;

/// Protocol version 3.0 as sent in the startup packet.
pub const PROTOCOL_3_0: u32 = 3 << 16;
const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678; // 80877102
const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679; // 80877103
const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680; // 80877104

/// Largest backend message body a client can frame: the length field is a signed Int32.
const BACKEND_BODY_MAX: usize = i32::MAX as usize - 4;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("I/O error on the client connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid frontend message: {0}")]
    Malformed(String),
    #[error("frontend message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported frontend protocol {}.{}: server supports 3.0", .0 >> 16, .0 & 0xffff)]
    UnsupportedVersion(u32),
    #[error("invalid frontend message type {}", tag_name(*.0))]
    UnknownMessage(u8),
}

/// A message tag as a character when printable, else in hex (garbage is common here: a TLS
/// ClientHello sent to a plain-text port, for instance).
fn tag_name(tag: u8) -> String {
    match tag.is_ascii_graphic() {
        true => format!("'{}'", tag as char),
        false => format!("0x{tag:02x}"),
    }
}

fn malformed(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed(msg.into())
}

/// Says where the stream ended when a read stops short; other I/O errors pass through.
fn eof_in(what: &'static str) -> impl Fn(std::io::Error) -> ProtocolError {
    move |e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("connection closed in the middle of {what}"),
        )),
        _ => ProtocolError::Io(e),
    }
}

/// Big-endian integer readers for [`Reader`], one per type.
macro_rules! int_readers {
    ($($t:ident),*) => {$(
        fn $t(&mut self, field: &str) -> Result<$t, ProtocolError> {
            Ok($t::from_be_bytes(self.array(field)?))
        }
    )*};
}

/// Bounds-checked reader over one message body; every error names the message and field.
struct Reader {
    buf: Bytes,
    pos: usize,
    what: &'static str,
}

impl Reader {
    fn new(buf: Bytes, what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn err(&self, msg: impl fmt::Display) -> ProtocolError {
        malformed(format!("{}: {}", self.what, msg))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, as a zero-copy slice of the body.
    fn take(&mut self, n: usize, field: &str) -> Result<Bytes, ProtocolError> {
        let left = self.remaining();
        if n > left {
            return Err(self.err(format_args!(
                "truncated {field}: needs {n} bytes, {left} left"
            )));
        }
        self.pos += n;
        Ok(self.buf.slice(self.pos - n..self.pos))
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.take(N, field)?);
        Ok(out)
    }

    int_readers!(u8, i16, u16, i32, u32);

    /// A UInt16 count of items of at least `size` bytes each, checked against the bytes left
    /// so that a lying count cannot make us reserve memory.
    fn count(&mut self, field: &str, size: usize) -> Result<usize, ProtocolError> {
        let n = self.u16(field)? as usize;
        if n * size > self.remaining() {
            return Err(self.err(format_args!("{field} {n} does not fit in the message")));
        }
        Ok(n)
    }

    /// A NUL-terminated UTF-8 string.
    fn cstr(&mut self, field: &str) -> Result<String, ProtocolError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.err(format_args!("{field} is missing its NUL terminator")));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|e| self.err(format_args!("{field} is not valid UTF-8 ({e})")))?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    /// PostgreSQL's `pq_getmsgend`: a message with bytes left over is a protocol violation.
    fn finish(self) -> Result<(), ProtocolError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.err(format_args!("{n} unexpected bytes after the last field"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Startup
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum StartupRequest {
    /// Code 80877103: the client asks for TLS; answer with one byte ('N' to refuse).
    SslRequest,
    /// Code 80877104: the client asks for GSSAPI encryption; answer with one byte.
    GssEncRequest,
    /// Code 80877102, sent on a fresh connection to cancel a query on another one.
    Cancel { process_id: i32, secret_key: i32 },
    /// Major version 3; a minor version above 0 should be answered with
    /// [`BackendBuffer::negotiate_protocol_version`]. Parameters keep the client's order;
    /// `user` is required by PostgreSQL but checking that is the caller's job.
    Startup {
        protocol_version: u32,
        params: Vec<(String, String)>,
    },
}

/// Reads one startup-phase packet (Int32 length including itself, Int32 code, payload).
/// Returns `Ok(None)` if the peer closed before sending any byte (port probes do that).
pub async fn read_startup<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<StartupRequest>, ProtocolError> {
    let mut len = [0u8; 4];
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..])
        .await
        .map_err(eof_in("the startup packet length"))?;
    let len = i32::from_be_bytes(len);
    // The body must at least hold the 4-byte code; PostgreSQL checks the same two bounds.
    if !(8..=i32::MAX).contains(&len) {
        return Err(malformed(format!("invalid startup packet length {len}")));
    }
    let body_len = len as usize - 4;
    if body_len > STARTUP_BYTES_MAX {
        return Err(ProtocolError::TooLarge {
            len: body_len,
            max: STARTUP_BYTES_MAX,
        });
    }
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body)
        .await
        .map_err(eof_in("the startup packet"))?;
    parse_startup(&body).map(Some)
}

/// Decodes a startup packet body (everything after the length field).
pub fn parse_startup(body: &[u8]) -> Result<StartupRequest, ProtocolError> {
    let mut r = Reader::new(Bytes::copy_from_slice(body), "startup packet");
    let code = r.u32("protocol version")?;
    let request = match code {
        SSL_REQUEST_CODE => StartupRequest::SslRequest,
        GSSENC_REQUEST_CODE => StartupRequest::GssEncRequest,
        CANCEL_REQUEST_CODE => StartupRequest::Cancel {
            process_id: r.i32("cancel process id")?,
            secret_key: r.i32("cancel secret key")?,
        },
        _ if code >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let name = r.cstr("parameter name (or the empty-name terminator)")?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr("parameter value")?;
                params.push((name, value));
            }
            StartupRequest::Startup {
                protocol_version: code,
                params,
            }
        }
        _ => return Err(ProtocolError::UnsupportedVersion(code)),
    };
    r.finish()?;
    Ok(request)
}

// ---------------------------------------------------------------------------------------------
// Frontend messages
// ---------------------------------------------------------------------------------------------

/// What Describe and Close refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// 'S': a prepared statement.
    Statement,
    /// 'P': a portal.
    Portal,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FrontendMessage {
    /// 'Q': simple query.
    Query(String),
    /// 'P'. A parameter type of 0 means "infer it".
    Parse {
        name: String,
        query: String,
        param_types: Vec<u32>,
    },
    /// 'B'. `param_formats` has 0 entries (all text), 1 (applies to all) or one per parameter.
    Bind {
        portal: String,
        statement: String,
        param_formats: Vec<i16>,
        params: Vec<Option<Bytes>>,
        result_formats: Vec<i16>,
    },
    /// 'D'.
    Describe { kind: TargetKind, name: String },
    /// 'E'. `max_rows` of 0 (or negative) means no limit.
    Execute { portal: String, max_rows: i32 },
    /// 'C'.
    Close { kind: TargetKind, name: String },
    /// 'S'.
    Sync,
    /// 'H'.
    Flush,
    /// 'X'.
    Terminate,
    /// 'd'.
    CopyData(Bytes),
    /// 'c'.
    CopyDone,
    /// 'f': the client aborts COPY FROM STDIN with this reason.
    CopyFail(String),
    /// 'p': PasswordMessage, SASLInitialResponse or SASLResponse; which one depends on the
    /// authentication request sent, so the raw body is kept.
    Password(Bytes),
}

/// Largest body accepted for a message tag, or `None` for tags this server does not know.
fn body_limit(tag: u8) -> Option<usize> {
    match tag {
        b'Q' | b'P' | b'B' | b'd' => Some(MESSAGE_BYTES_MAX),
        b'D' | b'E' | b'C' | b'S' | b'H' | b'X' | b'c' | b'f' => Some(SMALL_MESSAGE_BYTES_MAX),
        b'p' => Some(PASSWORD_BYTES_MAX),
        _ => None,
    }
}

/// Reads one typed message (Byte1 tag, Int32 length including itself, body).
/// Returns `Ok(None)` if the peer closed cleanly between messages.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<FrontendMessage>, ProtocolError> {
    let mut tag = [0u8; 1];
    if r.read(&mut tag).await? == 0 {
        return Ok(None);
    }
    let tag = tag[0];
    // Rejecting an unknown tag before trusting its length: such a stream is garbage anyway.
    let max = body_limit(tag).ok_or(ProtocolError::UnknownMessage(tag))?;
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(eof_in("a message header"))?;
    let len = i32::from_be_bytes(len);
    if len < 4 {
        return Err(malformed(format!(
            "message {} has invalid length {len}",
            tag_name(tag)
        )));
    }
    let body_len = len as usize - 4;
    if body_len > max {
        return Err(ProtocolError::TooLarge { len: body_len, max });
    }
    // Grow the buffer as bytes arrive rather than allocating the announced length up front.
    let mut body = Vec::with_capacity(body_len.min(64 << 10));
    (&mut *r)
        .take(body_len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() < body_len {
        return Err(eof_in("a message body")(
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    parse_body(tag, Bytes::from(body)).map(Some)
}

/// Decodes the body of a typed frontend message. Pure; no size limits are applied here.
pub fn parse_message(tag: u8, body: &[u8]) -> Result<FrontendMessage, ProtocolError> {
    parse_body(tag, Bytes::copy_from_slice(body))
}

fn parse_target(r: &mut Reader) -> Result<(TargetKind, String), ProtocolError> {
    let kind = match r.u8("target kind")? {
        b'S' => TargetKind::Statement,
        b'P' => TargetKind::Portal,
        other => {
            return Err(r.err(format_args!(
                "target kind must be 'S' or 'P', got {}",
                tag_name(other)
            )))
        }
    };
    Ok((kind, r.cstr("name")?))
}

fn parse_formats(r: &mut Reader, what: &str) -> Result<Vec<i16>, ProtocolError> {
    let n = r.count(&format!("{what} format code count"), 2)?;
    (0..n).map(|_| r.i16("format code")).collect()
}

fn parse_body(tag: u8, body: Bytes) -> Result<FrontendMessage, ProtocolError> {
    use FrontendMessage as M;
    let what = match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'D' => "Describe",
        b'E' => "Execute",
        b'C' => "Close",
        b'S' => "Sync",
        b'H' => "Flush",
        b'X' => "Terminate",
        b'd' => return Ok(M::CopyData(body)),
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'p' => return Ok(M::Password(body)),
        _ => return Err(ProtocolError::UnknownMessage(tag)),
    };
    let mut r = Reader::new(body, what);
    let msg = match tag {
        b'Q' => M::Query(r.cstr("query string")?),
        b'P' => {
            let name = r.cstr("statement name")?;
            let query = r.cstr("query string")?;
            let n = r.count("parameter type count", 4)?;
            let param_types = (0..n)
                .map(|_| r.u32("parameter type"))
                .collect::<Result<_, _>>()?;
            M::Parse {
                name,
                query,
                param_types,
            }
        }
        b'B' => {
            let portal = r.cstr("portal name")?;
            let statement = r.cstr("statement name")?;
            let param_formats = parse_formats(&mut r, "parameter")?;
            let n = r.count("parameter count", 4)?; // each has at least its length
            if !(param_formats.len() <= 1 || param_formats.len() == n) {
                return Err(r.err(format_args!(
                    "{} parameter format codes for {n} parameters (must be 0, 1 or {n})",
                    param_formats.len()
                )));
            }
            let mut params = Vec::with_capacity(n);
            for i in 0..n {
                match r.i32("parameter length")? {
                    -1 => params.push(None),
                    len if len < 0 => {
                        return Err(r.err(format_args!("parameter {} has length {len}", i + 1)))
                    }
                    len => params.push(Some(r.take(len as usize, "parameter value")?)),
                }
            }
            let result_formats = parse_formats(&mut r, "result")?;
            M::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            }
        }
        b'D' | b'C' => {
            let (kind, name) = parse_target(&mut r)?;
            if tag == b'D' {
                M::Describe { kind, name }
            } else {
                M::Close { kind, name }
            }
        }
        b'E' => M::Execute {
            portal: r.cstr("portal name")?,
            max_rows: r.i32("row limit")?,
        },
        b'S' => M::Sync,
        b'H' => M::Flush,
        b'X' => M::Terminate,
        b'c' => M::CopyDone,
        _ => M::CopyFail(r.cstr("error message")?), // only 'f' is left
    };
    r.finish()?;
    Ok(msg)
}

// ---------------------------------------------------------------------------------------------
// Backend messages
// ---------------------------------------------------------------------------------------------

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    /// Table OID, or 0 when the column is not a plain table column.
    pub table_oid: u32,
    /// Attribute number within that table, or 0.
    pub column_attr: i16,
    pub type_oid: u32,
    /// pg_type.typlen: -1 for varlena types, -2 for C strings.
    pub type_len: i16,
    /// pg_attribute.atttypmod; -1 when there is none.
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// "ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "DEBUG", "INFO" or "LOG".
    pub severity: &'static str,
    /// Five-character SQLSTATE.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the query string.
    pub position: Option<u32>,
    /// Where the error happened (CONTEXT).
    pub context: Option<String>,
}

impl ErrorFields {
    /// An ERROR with just a code and a message.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "ERROR",
            code: code.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
            context: None,
        }
    }
}

/// Writes a string and its NUL terminator. An interior NUL would end the string early on the
/// client and desynchronise every later field, so such bytes are dropped.
fn put_cstr(buf: &mut BytesMut, s: &str) {
    for piece in s.split('\0') {
        buf.put_slice(piece.as_bytes());
    }
    buf.put_u8(0);
}

/// Backend messages that are only a tag and the length 4, one method each.
macro_rules! empty_messages {
    ($($name:ident = $tag:literal),* $(,)?) => {$(
        pub fn $name(&mut self) {
            self.buf.put_slice(&[$tag, 0, 0, 0, 4]);
        }
    )*};
}

/// Appends backend messages to a buffer; the caller flushes it to the socket.
#[derive(Debug, Default)]
pub struct BackendBuffer {
    pub buf: BytesMut,
}

impl BackendBuffer {
    pub fn new() -> Self {
        BackendBuffer {
            buf: BytesMut::with_capacity(8 << 10),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes buffered, to decide when to flush during large results.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Everything buffered so far, leaving the buffer empty (its spare capacity is kept).
    pub fn take(&mut self) -> BytesMut {
        self.buf.split()
    }

    /// Starts a message: tag and a length placeholder patched by [`Self::end`].
    fn begin(&mut self, tag: u8) -> usize {
        let start = self.buf.len();
        self.buf.put_u8(tag);
        self.buf.put_i32(0);
        start
    }

    fn end(&mut self, start: usize) {
        self.end_with_limit(start, BACKEND_BODY_MAX);
    }

    /// Patches the length of the message begun at `start`. A message too big for the Int32
    /// length field is replaced by an ErrorResponse, so the stream stays framed and the client
    /// learns why instead of hanging or misparsing.
    fn end_with_limit(&mut self, start: usize, max_body: usize) {
        let Some(body) = self.buf.len().checked_sub(start + 5) else {
            // Only reachable if a value_with closure truncated the buffer.
            tracing::error!("pgwire: backend buffer shrank under an unfinished message");
            return;
        };
        if body > max_body {
            let why = format!("message of {body} bytes exceeds the protocol limit of {max_body}");
            return self.replace_with_too_large(start, why);
        }
        let len = (body + 4) as i32; // fits: body <= i32::MAX - 4
        self.buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }

    fn replace_with_too_large(&mut self, start: usize, why: String) {
        let tag = tag_name(self.buf.get(start).copied().unwrap_or(b'?'));
        tracing::error!(tag, "pgwire: backend message dropped: {why}");
        self.buf.truncate(start);
        self.error_response(&ErrorFields::error("54000", why));
    }

    empty_messages! {
        empty_query_response = b'I', parse_complete = b'1', bind_complete = b'2',
        close_complete = b'3', no_data = b'n', portal_suspended = b's', copy_done = b'c',
    }

    pub fn authentication_ok(&mut self) {
        self.authentication(0);
    }

    pub fn authentication_cleartext_password(&mut self) {
        self.authentication(3);
    }

    fn authentication(&mut self, code: i32) {
        self.buf.put_u8(b'R');
        self.buf.put_i32(8);
        self.buf.put_i32(code);
    }

    /// The single unframed byte answering SSLRequest or GSSENCRequest with "not supported".
    pub fn refuse_encryption(&mut self) {
        self.buf.put_u8(b'N');
    }

    /// NegotiateProtocolVersion: the newest version the server supports for the requested
    /// major version, and the `_pq_.` options it did not recognise.
    pub fn negotiate_protocol_version(&mut self, version: u32, unrecognized: &[&str]) {
        let start = self.begin(b'v');
        self.buf.put_u32(version);
        self.buf.put_u32(unrecognized.len() as u32);
        for o in unrecognized {
            put_cstr(&mut self.buf, o);
        }
        self.end(start);
    }

    pub fn parameter_status(&mut self, name: &str, value: &str) {
        let start = self.begin(b'S');
        put_cstr(&mut self.buf, name);
        put_cstr(&mut self.buf, value);
        self.end(start);
    }

    pub fn backend_key_data(&mut self, process_id: i32, secret_key: i32) {
        self.buf.put_u8(b'K');
        self.buf.put_i32(12);
        self.buf.put_i32(process_id);
        self.buf.put_i32(secret_key);
    }

    /// `status`: b'I' idle, b'T' in a transaction block, b'E' in a failed transaction block.
    pub fn ready_for_query(&mut self, status: u8) {
        self.buf.put_u8(b'Z');
        self.buf.put_i32(5);
        self.buf.put_u8(status);
    }

    pub fn row_description(&mut self, fields: &[FieldDescription]) {
        let start = self.begin(b'T');
        // Clients read the count as unsigned 16-bit; more columns cannot be described.
        let Ok(n) = u16::try_from(fields.len()) else {
            let why = format!(
                "{} columns exceed the protocol limit of 65535",
                fields.len()
            );
            return self.replace_with_too_large(start, why);
        };
        self.buf.put_u16(n);
        for f in fields {
            put_cstr(&mut self.buf, &f.name);
            self.buf.put_u32(f.table_oid);
            self.buf.put_i16(f.column_attr);
            self.buf.put_u32(f.type_oid);
            self.buf.put_i16(f.type_len);
            self.buf.put_i32(f.type_modifier);
            self.buf.put_i16(f.format);
        }
        self.end(start);
    }

    /// Starts a DataRow; write exactly `n_columns` values, then call
    /// [`DataRowWriter::finish`] (dropping the writer finishes it too).
    pub fn begin_data_row(&mut self, n_columns: i16) -> DataRowWriter<'_> {
        let start = self.begin(b'D');
        self.buf.put_i16(n_columns);
        DataRowWriter {
            out: self,
            start,
            declared: n_columns,
            written: 0,
        }
    }

    pub fn command_complete(&mut self, tag: &str) {
        let start = self.begin(b'C');
        put_cstr(&mut self.buf, tag);
        self.end(start);
    }

    pub fn error_response(&mut self, e: &ErrorFields) {
        self.error_or_notice(b'E', e);
    }

    pub fn notice_response(&mut self, e: &ErrorFields) {
        self.error_or_notice(b'N', e);
    }

    fn error_or_notice(&mut self, tag: u8, e: &ErrorFields) {
        let start = self.begin(tag);
        // 'S' may be localised, 'V' never is (PostgreSQL 9.6+); we send the same text in both.
        let mut field = |code: u8, value: &str| {
            self.buf.put_u8(code);
            put_cstr(&mut self.buf, value);
        };
        field(b'S', e.severity);
        field(b'V', e.severity);
        field(b'C', &e.code);
        field(b'M', &e.message);
        if let Some(d) = &e.detail {
            field(b'D', d);
        }
        if let Some(h) = &e.hint {
            field(b'H', h);
        }
        if let Some(p) = e.position {
            field(b'P', &p.to_string());
        }
        if let Some(w) = &e.context {
            field(b'W', w);
        }
        self.buf.put_u8(0);
        self.end(start);
    }

    pub fn parameter_description(&mut self, type_oids: &[u32]) {
        let start = self.begin(b't');
        let Ok(n) = u16::try_from(type_oids.len()) else {
            let why = format!(
                "{} parameters exceed the protocol limit of 65535",
                type_oids.len()
            );
            return self.replace_with_too_large(start, why);
        };
        self.buf.put_u16(n);
        for oid in type_oids {
            self.buf.put_u32(*oid);
        }
        self.end(start);
    }

    /// CopyInResponse for COPY FROM STDIN: `format` 0 (text or CSV) or 1 (binary), for
    /// the whole data and each of its columns.
    pub fn copy_in_response(&mut self, format: i16, n_columns: i16) {
        self.copy_response(b'G', format, n_columns);
    }

    /// CopyOutResponse for text-format COPY TO STDOUT.
    pub fn copy_out_response(&mut self, n_columns: i16) {
        self.copy_response(b'H', 0, n_columns);
    }

    fn copy_response(&mut self, tag: u8, format: i16, n_columns: i16) {
        let start = self.begin(tag);
        self.buf.put_u8(format as u8);
        let n = n_columns.max(0);
        self.buf.put_i16(n);
        for _ in 0..n {
            self.buf.put_i16(format);
        }
        self.end(start);
    }

    pub fn copy_data(&mut self, data: &[u8]) {
        let start = self.begin(b'd');
        self.buf.put_slice(data);
        self.end(start);
    }
}

/// Writes the columns of one DataRow straight into the [`BackendBuffer`], avoiding an
/// intermediate allocation per row. Lengths are patched in place once known.
pub struct DataRowWriter<'a> {
    out: &'a mut BackendBuffer,
    start: usize,
    declared: i16,
    written: usize,
}

impl DataRowWriter<'_> {
    pub fn null(&mut self) {
        self.out.buf.put_i32(-1);
        self.written += 1;
    }

    pub fn value(&mut self, bytes: &[u8]) {
        // An oversized value makes the whole message oversized; `end` then replaces it.
        self.out
            .buf
            .put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
        self.out.buf.put_slice(bytes);
        self.written += 1;
    }

    /// Writes a value by appending to the buffer; `f` must only append.
    pub fn value_with(&mut self, f: impl FnOnce(&mut BytesMut)) {
        let at = self.out.buf.len();
        self.out.buf.put_i32(0);
        f(&mut self.out.buf);
        self.written += 1;
        if let Some(n) = self.out.buf.len().checked_sub(at + 4) {
            let n = i32::try_from(n).unwrap_or(i32::MAX);
            self.out.buf[at..at + 4].copy_from_slice(&n.to_be_bytes());
        }
    }

    /// Patches the message length. Also done on drop, so a forgotten `finish` cannot leave
    /// an unframed message in the buffer.
    pub fn finish(self) {}
}

impl Drop for DataRowWriter<'_> {
    fn drop(&mut self) {
        let (start, written) = (self.start, self.written);
        if self.out.buf.len() < start + 7 {
            tracing::error!("pgwire: backend buffer shrank under an unfinished DataRow");
            return;
        }
        // The client trusts the count to walk the columns; write the true one so a caller bug
        // at worst shows up as a column mismatch rather than a corrupted stream.
        if written != self.declared as usize {
            tracing::warn!(
                declared = self.declared,
                written,
                "pgwire: DataRow column count mismatch"
            );
            let Ok(n) = u16::try_from(written) else {
                let why = format!("{written} columns exceed the protocol limit of 65535");
                return self.out.replace_with_too_large(start, why);
            };
            self.out.buf[start + 5..start + 7].copy_from_slice(&n.to_be_bytes());
        }
        self.out.end(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FrontendMessage as M;

    /// Frames a message the way a client would: optional tag, Int32 length, body.
    fn frame(tag: Option<u8>, body: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = tag.into_iter().collect();
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// The error's Debug form, for compact exact assertions.
    fn err<T: fmt::Debug>(r: Result<T, ProtocolError>) -> String {
        format!("{:?}", r.expect_err("expected an error"))
    }

    fn is_malformed<T: fmt::Debug>(r: Result<T, ProtocolError>) -> bool {
        matches!(r, Err(ProtocolError::Malformed(_)))
    }

    /// A Bind body: UInt16 counts, Int32 lengths (-1 for NULL).
    fn bind_body(formats: &[i16], params: &[Option<&[u8]>], results: &[i16]) -> Vec<u8> {
        let mut b = b"portal\0stmt\0".to_vec();
        b.extend((formats.len() as u16).to_be_bytes());
        formats.iter().for_each(|f| b.extend(f.to_be_bytes()));
        b.extend((params.len() as u16).to_be_bytes());
        for p in params {
            b.extend(p.map_or(-1, |v| v.len() as i32).to_be_bytes());
            b.extend(p.unwrap_or_default());
        }
        b.extend((results.len() as u16).to_be_bytes());
        results.iter().for_each(|f| b.extend(f.to_be_bytes()));
        b
    }

    /// One valid body per frontend message type, with what it decodes to.
    fn samples() -> Vec<(u8, Vec<u8>, M)> {
        let s = |s: &str| s.to_owned();
        let (stmt, portal) = (TargetKind::Statement, TargetKind::Portal);
        let params = vec![
            Some(Bytes::from_static(b"\0\0\0\x2a")),
            None,
            Some(Bytes::new()),
        ];
        let bind = bind_body(&[1], &[Some(b"\0\0\0\x2a"), None, Some(b"")], &[0, 1]);
        vec![
            (b'Q', b"SELECT 1\0".to_vec(), M::Query(s("SELECT 1"))),
            (
                b'P',
                b"s1\0SELECT $1, $2\0\0\x02\0\0\0\x17\0\0\0\0".to_vec(),
                {
                    let (name, query) = (s("s1"), s("SELECT $1, $2"));
                    M::Parse {
                        name,
                        query,
                        param_types: vec![23, 0],
                    }
                },
            ),
            (b'B', bind, {
                let (portal, statement) = (s("portal"), s("stmt"));
                let (param_formats, result_formats) = (vec![1], vec![0, 1]);
                M::Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                }
            }),
            (
                b'D',
                b"Sst\0".to_vec(),
                M::Describe {
                    kind: stmt,
                    name: s("st"),
                },
            ),
            (
                b'D',
                b"P\0".to_vec(),
                M::Describe {
                    kind: portal,
                    name: s(""),
                },
            ),
            (
                b'E',
                b"p\0\0\0\0\x0a".to_vec(),
                M::Execute {
                    portal: s("p"),
                    max_rows: 10,
                },
            ),
            (
                b'C',
                b"Pp\0".to_vec(),
                M::Close {
                    kind: portal,
                    name: s("p"),
                },
            ),
            (b'S', vec![], M::Sync),
            (b'H', vec![], M::Flush),
            (b'X', vec![], M::Terminate),
            (
                b'd',
                b"1\tx\n".to_vec(),
                M::CopyData(Bytes::from_static(b"1\tx\n")),
            ),
            (b'c', vec![], M::CopyDone),
            (b'f', b"aborted\0".to_vec(), M::CopyFail(s("aborted"))),
            (
                b'p',
                b"pw\0".to_vec(),
                M::Password(Bytes::from_static(b"pw\0")),
            ),
        ]
    }

    #[test]
    fn parses_every_frontend_message() {
        for (tag, body, expected) in samples() {
            assert_eq!(parse_message(tag, &body).unwrap(), expected);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        for (tag, body, _) in samples() {
            if matches!(tag, b'd' | b'p') {
                continue; // raw bodies: any length is valid
            }
            for cut in 0..body.len() {
                let r = parse_message(tag, &body[..cut]);
                assert!(is_malformed(r), "{} cut at {cut}", tag as char);
            }
            let long = [&body[..], b"x"].concat();
            assert!(is_malformed(parse_message(tag, &long)), "{}+1", tag as char);
        }
    }

    #[test]
    fn bad_fields_are_malformed_with_a_clear_message() {
        let three: [Option<&[u8]>; 3] = [Some(b"a"), None, Some(b"c")];
        let mut negative = bind_body(&[], &[None], &[]);
        negative[16..20].copy_from_slice(&(-2i32).to_be_bytes());
        let mut past_end = negative.clone();
        past_end[16..20].copy_from_slice(&1000i32.to_be_bytes());
        let cases: Vec<(u8, Vec<u8>, &str)> = vec![
            (
                b'Q',
                b"SELECT 1".to_vec(),
                "Query: query string is missing its NUL terminator",
            ),
            (
                b'Q',
                b"SELECT \xff\0".to_vec(),
                "Query: query string is not valid UTF-8",
            ),
            (
                b'D',
                b"Xname\0".to_vec(),
                "Describe: target kind must be 'S' or 'P', got 'X'",
            ),
            (
                b'S',
                b"\0".to_vec(),
                "Sync: 1 unexpected bytes after the last field",
            ),
            (
                b'B',
                b"\0\0\xff\xff".to_vec(),
                "parameter format code count 65535 does not fit",
            ),
            (
                b'P',
                b"\0q\0\0\x09\0\0\0\0".to_vec(),
                "parameter type count 9 does not fit",
            ),
            (
                b'B',
                bind_body(&[0, 0], &three, &[]),
                "2 parameter format codes for 3 parameters",
            ),
            (
                b'B',
                bind_body(&[0, 1], &[], &[]),
                "2 parameter format codes for 0 parameters",
            ),
            (b'B', negative, "Bind: parameter 1 has length -2"),
            (
                b'B',
                past_end,
                "truncated parameter value: needs 1000 bytes, 2 left",
            ),
        ];
        for (tag, body, expected) in cases {
            let e = err(parse_message(tag, &body));
            assert!(e.starts_with("Malformed(") && e.contains(expected), "{e}");
        }
        // 0, 1 or one format per parameter are all fine.
        for formats in [&[][..], &[1], &[0, 1, 0]] {
            assert!(parse_message(b'B', &bind_body(formats, &three, &[])).is_ok());
        }
    }

    #[test]
    fn unknown_tags() {
        for tag in [b'F', b'A', 0, 0x16, 0xff] {
            assert_eq!(
                err(parse_message(tag, b"")),
                format!("UnknownMessage({tag})")
            );
        }
        let shown = |t| ProtocolError::UnknownMessage(t).to_string();
        assert!(shown(0x16).ends_with("type 0x16") && shown(b'F').ends_with("type 'F'"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = 0x2545_f491_4f6c_dd1du64; // xorshift: deterministic, no extra dependency
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let tags = b"QPBDECSHXdcfpZ\0";
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len > 4 && next() % 2 == 0 {
                body[len / 2] = 0; // a NUL gets parsers past their first string
            }
            let _ = parse_message(tags[(next() % tags.len() as u64) as usize], &body);
            let _ = parse_startup(&body);
        }
    }

    #[tokio::test]
    async fn read_message_back_to_back_then_eof() {
        let mut wire = frame(Some(b'Q'), b"SELECT 1\0");
        wire.extend(frame(Some(b'B'), &bind_body(&[], &[Some(b"hi")], &[1])));
        wire.extend(frame(Some(b'S'), b""));
        let mut r: &[u8] = &wire;
        let q = read_message(&mut r).await.unwrap();
        assert_eq!(q, Some(M::Query("SELECT 1".into())));
        let Some(M::Bind { params, .. }) = read_message(&mut r).await.unwrap() else {
            panic!("expected Bind");
        };
        assert_eq!(params, vec![Some(Bytes::from_static(b"hi"))]);
        assert_eq!(read_message(&mut r).await.unwrap(), Some(M::Sync));
        assert_eq!(read_message(&mut r).await.unwrap(), None);
        assert_eq!(read_message(&mut r).await.unwrap(), None);
        // A well-framed message with an invalid body.
        assert!(is_malformed(
            read_message(&mut &frame(Some(b'S'), b"junk")[..]).await
        ));
    }

    #[tokio::test]
    async fn read_message_eof_mid_message_is_an_error() {
        let wire = frame(Some(b'Q'), b"SELECT 1\0");
        for cut in 1..wire.len() {
            let e = err(read_message(&mut &wire[..cut]).await);
            assert!(
                e.starts_with("Io(") && e.contains("UnexpectedEof"),
                "{cut}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn read_message_checks_length_before_reading() {
        // Only headers: limits must trip without waiting for a body.
        let header = |tag: u8, len: usize| [&[tag][..], &(len as i32).to_be_bytes()].concat();
        for len in [0, 3, usize::MAX, 1 << 31] {
            assert!(is_malformed(
                read_message(&mut &header(b'Q', len)[..]).await
            ));
        }
        let too_large = |len, max| format!("TooLarge {{ len: {len}, max: {max} }}");
        let max = MESSAGE_BYTES_MAX;
        let r = read_message(&mut &header(b'd', max + 5)[..]).await;
        assert_eq!(err(r), too_large(max + 1, max));
        let r = read_message(&mut &header(b'S', 20_004)[..]).await;
        assert_eq!(err(r), too_large(20_000, SMALL_MESSAGE_BYTES_MAX));
        let r = read_message(&mut &header(b'p', 70_004)[..]).await;
        assert_eq!(err(r), too_large(70_000, PASSWORD_BYTES_MAX));
        // An unknown tag (here a TLS ClientHello) is rejected before its length is read.
        let r = read_message(&mut &b"\x16\x03\x01"[..]).await;
        assert_eq!(err(r), "UnknownMessage(22)");
    }

    fn startup_body(code: u32, rest: &[u8]) -> Vec<u8> {
        [&code.to_be_bytes()[..], rest].concat()
    }

    #[tokio::test]
    async fn read_startup_variants() {
        let mut wire = frame(
            None,
            &startup_body(196608, b"user\0al\0database\0db\0opt\0\0\0"),
        );
        wire.extend(frame(None, &80877103u32.to_be_bytes()));
        wire.extend(frame(None, &80877104u32.to_be_bytes()));
        let key = [0, 0, 0, 42, 0xff, 0xff, 0xff, 0xf9];
        wire.extend(frame(None, &startup_body(80877102, &key)));
        wire.extend(frame(None, &startup_body(196610, b"user\0u\0\0")));
        let mut r: &[u8] = &wire;
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let params = pairs(&[("user", "al"), ("database", "db"), ("opt", "")]);
        let startup = |protocol_version, params| StartupRequest::Startup {
            protocol_version,
            params,
        };
        let expected = [
            startup(PROTOCOL_3_0, params),
            StartupRequest::SslRequest,
            StartupRequest::GssEncRequest,
            StartupRequest::Cancel {
                process_id: 42,
                secret_key: -7,
            },
            // A newer 3.x minor version is passed up for the caller to negotiate down.
            startup(PROTOCOL_3_0 + 2, pairs(&[("user", "u")])),
        ];
        for e in expected {
            assert_eq!(read_startup(&mut r).await.unwrap(), Some(e));
        }
        assert_eq!(read_startup(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn read_startup_rejects_bad_packets() {
        let v3 = |rest: &[u8]| startup_body(PROTOCOL_3_0, rest);
        let bad_bodies = [
            v3(b"user\0alice\0"),            // no terminator
            v3(b"user\0alice\0\0extra"),     // bytes after the terminator
            v3(b"user\0"),                   // name without value
            v3(b"user\0al"),                 // unterminated value
            v3(b"us\xffer\0alice\0\0"),      // not UTF-8
            v3(b""),                         // not even the terminator
            startup_body(80877103, &[0; 4]), // SSLRequest with a payload
            startup_body(80877102, &[0; 4]), // CancelRequest without its key
        ];
        for body in bad_bodies {
            let r = read_startup(&mut &frame(None, &body)[..]).await;
            assert!(is_malformed(r), "{body:?}");
        }
        for version in [2 << 16, 4 << 16, (1234 << 16) | 9999] {
            let r = read_startup(&mut &frame(None, &startup_body(version, b"\0"))[..]).await;
            assert_eq!(err(r), format!("UnsupportedVersion({version})"));
        }
        let shown = ProtocolError::UnsupportedVersion(2 << 16).to_string();
        assert!(shown.contains("protocol 2.0"), "{shown}");
        for len in [0i32, 4, 7, -8] {
            assert!(is_malformed(
                read_startup(&mut &len.to_be_bytes()[..]).await
            ));
        }
        // Too large, from the length alone: no body follows.
        let r = read_startup(&mut &(STARTUP_BYTES_MAX as i32 + 5).to_be_bytes()[..]).await;
        assert_eq!(err(r), "TooLarge { len: 10001, max: 10000 }");
        // Exactly at the limit is accepted.
        let mut body = v3(b"user\0");
        body.resize(STARTUP_BYTES_MAX - 2, b'a');
        body.extend_from_slice(b"\0\0");
        assert!(read_startup(&mut &frame(None, &body)[..]).await.is_ok());
        // EOF inside the length or the body.
        let full = frame(None, &80877103u32.to_be_bytes());
        for cut in 1..full.len() {
            let e = err(read_startup(&mut &full[..cut]).await);
            assert!(e.contains("UnexpectedEof"), "{cut}: {e}");
        }
    }

    #[test]
    fn backend_messages_byte_for_byte() {
        let mut b = BackendBuffer::new();
        assert!(b.is_empty());
        let mut error = ErrorFields::error("42P01", "relation \"t\" does not exist");
        error.position = Some(15);
        let (detail, hint) = (Some("d".into()), Some("h".into()));
        let notice = ErrorFields {
            severity: "NOTICE",
            detail,
            hint,
            ..ErrorFields::error("00000", "m")
        };
        let (name, table_oid, column_attr, type_oid) = ("id".into(), 16384, 1, 23);
        let (type_len, type_modifier, format) = (4, -1, 0);
        let field = FieldDescription {
            name,
            table_oid,
            column_attr,
            type_oid,
            type_len,
            type_modifier,
            format,
        };
        b.ready_for_query(b'I');
        b.authentication_ok();
        b.authentication_cleartext_password();
        b.parameter_status("client_encoding", "UTF8");
        b.backend_key_data(0x01020304, -1);
        b.command_complete("SELECT 1");
        b.command_complete("a\0b"); // an interior NUL is dropped
        b.empty_query_response();
        b.parse_complete();
        b.bind_complete();
        b.close_complete();
        b.no_data();
        b.portal_suspended();
        b.copy_done();
        b.copy_data(b"1\n");
        b.parameter_description(&[23, 25]);
        b.copy_in_response(0, 2);
        b.copy_in_response(1, 1);
        b.copy_out_response(0);
        b.refuse_encryption();
        b.negotiate_protocol_version(PROTOCOL_3_0, &["_pq_.a"]);
        b.row_description(&[]);
        b.row_description(&[field]);
        b.error_response(&error);
        b.notice_response(&notice);
        let expected: [&[u8]; 25] = [
            b"Z\0\0\0\x05I",
            b"R\0\0\0\x08\0\0\0\0",
            b"R\0\0\0\x08\0\0\0\x03",
            b"S\0\0\0\x19client_encoding\0UTF8\0",
            b"K\0\0\0\x0c\x01\x02\x03\x04\xff\xff\xff\xff",
            b"C\0\0\0\x0dSELECT 1\0",
            b"C\0\0\0\x07ab\0",
            b"I\0\0\0\x04",
            b"1\0\0\0\x04",
            b"2\0\0\0\x04",
            b"3\0\0\0\x04",
            b"n\0\0\0\x04",
            b"s\0\0\0\x04",
            b"c\0\0\0\x04",
            b"d\0\0\0\x061\n",
            b"t\0\0\0\x0e\0\x02\0\0\0\x17\0\0\0\x19",
            b"G\0\0\0\x0b\0\0\x02\0\0\0\0",
            b"G\0\0\0\x09\x01\0\x01\0\x01",
            b"H\0\0\0\x07\0\0\0",
            b"N",
            b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.a\0",
            b"T\0\0\0\x06\0\0",
            b"T\0\0\0\x1b\0\x01id\0\0\0\x40\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
            b"E\0\0\0\x3bSERROR\0VERROR\0C42P01\0Mrelation \"t\" does not exist\0P15\0\0",
            b"N\0\0\0\x25SNOTICE\0VNOTICE\0C00000\0Mm\0Dd\0Hh\0\0",
        ];
        let out = b.take();
        assert!(b.is_empty());
        let mut rest = &out[..];
        for e in expected {
            let n = e.len().min(rest.len());
            assert_eq!(&rest[..n], e, "{}", String::from_utf8_lossy(e));
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn data_row_patches_lengths() {
        let mut b = BackendBuffer::new();
        let mut row = b.begin_data_row(3);
        row.null();
        row.value(b"42");
        row.value_with(|buf| buf.extend_from_slice(b"hello"));
        row.finish();
        assert_eq!(
            &b.take()[..],
            b"D\0\0\0\x19\0\x03\xff\xff\xff\xff\0\0\0\x0242\0\0\0\x05hello"
        );
        // Dropping without finish still frames it; an empty value_with is a zero-length value.
        b.begin_data_row(1).value_with(|_| {});
        // A wrong declared count is replaced by the number of values actually written.
        b.begin_data_row(5).value(b"x");
        assert_eq!(
            &b.take()[..],
            b"D\0\0\0\x0a\0\x01\0\0\0\0D\0\0\0\x0b\0\x01\0\0\0\x01x"
        );
    }

    #[test]
    fn oversized_message_becomes_an_error_response() {
        let mut b = BackendBuffer::new();
        b.ready_for_query(b'I');
        let start = b.begin(b'd');
        b.buf.put_slice(&[7; 100]);
        b.end_with_limit(start, 99);
        let mut expected = BackendBuffer::new();
        expected.ready_for_query(b'I');
        let why = "message of 100 bytes exceeds the protocol limit of 99";
        expected.error_response(&ErrorFields::error("54000", why));
        assert_eq!(b.take(), expected.take());
    }
}
