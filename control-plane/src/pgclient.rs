//! A small PostgreSQL client for the proxy's SQL over HTTP and the tools around it.
//!
//! It speaks protocol 3.0 over any byte stream (a TCP socket to a compute, TLS to a proxy):
//! start-up with trust, cleartext or SCRAM-SHA-256 authentication, then queries in the
//! extended protocol with every parameter and every result column in text format, the way
//! Neon's serverless driver sends parameters and reads rows. An ErrorResponse is kept with
//! all its fields, so an HTTP caller sees what a wire client would.
//!
//! ```text
//! StartupMessage ─▶ (AuthenticationSASL ⇄ SASLInitialResponse/SASLResponse)? ─▶ AuthenticationOk
//!                ◀─ ParameterStatus*, BackendKeyData, ReadyForQuery
//! Parse, Bind(text), Describe(portal), Execute, Sync ─▶
//!                ◀─ ParseComplete, BindComplete, RowDescription|NoData, DataRow*, CommandComplete, ReadyForQuery
//! ```

use std::collections::BTreeMap;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::proxy::protocol::{encode_startup, read_message, ProtocolError};
use crate::scram;

/// The largest message accepted from the server (a DataRow of a wide row, say).
pub const SERVER_MESSAGE_MAX_BYTES: usize = 64 << 20;

/// Why a connection or query failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered with an ErrorResponse.
    #[error("{0}")]
    Server(PgError),
    /// The result is larger than the caller allows.
    #[error("the result exceeds {max_bytes} bytes")]
    TooLarge { max_bytes: usize },
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Io(e) => ClientError::Io(e),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// The fields of an ErrorResponse, by their one-byte codes (`S`everity, `C`ode, `M`essage,
/// `D`etail, `H`int, `P`osition, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgError {
    pub fields: BTreeMap<u8, String>,
}

impl PgError {
    pub fn field(&self, code: u8) -> Option<&str> {
        self.fields.get(&code).map(String::as_str)
    }

    pub fn code(&self) -> &str {
        self.field(b'C').unwrap_or("XX000")
    }

    pub fn message(&self) -> &str {
        self.field(b'M').unwrap_or("")
    }

    fn parse(body: &[u8]) -> PgError {
        let mut fields = BTreeMap::new();
        let mut rest = body;
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            fields.insert(code, String::from_utf8_lossy(&tail[..end]).into_owned());
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        PgError { fields }
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.field(b'S').unwrap_or("ERROR"),
            self.message(),
            self.code()
        )
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub table_oid: u32,
    pub column_id: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

/// What one statement returned: its columns (none for a command), its rows in text form
/// (`None` = NULL), and its command tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub fields: Vec<Field>,
    pub rows: Vec<Vec<Option<String>>>,
    /// The CommandComplete tag (`SELECT 2`, `INSERT 0 1`); empty for an empty query.
    pub tag: String,
}

impl QueryResult {
    /// The tag's first word (`SELECT`, `INSERT`, ...).
    pub fn command(&self) -> &str {
        self.tag.split(' ').next().unwrap_or("")
    }

    /// The tag's row count (its last word), if it has one.
    pub fn row_count(&self) -> Option<u64> {
        let mut words = self.tag.split(' ');
        let first = words.next()?;
        let last = words.next_back()?;
        (last != first).then(|| last.parse().ok()).flatten()
    }
}

/// What a connection starts with.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub user: String,
    pub database: String,
    /// The startup `options` parameter, if any.
    pub options: Option<String>,
    /// Asked for by cleartext or SCRAM authentication; trust needs none.
    pub password: Option<String>,
    pub application_name: Option<String>,
}

/// A connection after start-up, ready for queries.
pub struct Connection<S> {
    stream: BufReader<S>,
    /// The server's BackendKeyData (process id, secret key), for cancelling.
    pub backend_key: Option<(i32, i32)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends the StartupMessage, authenticates, and waits for ReadyForQuery.
    pub async fn connect(stream: S, startup: &Startup) -> Result<Connection<S>, ClientError> {
        let mut params = vec![
            ("user".to_string(), startup.user.clone()),
            ("database".to_string(), startup.database.clone()),
            ("client_encoding".to_string(), "UTF8".to_string()),
        ];
        if let Some(options) = &startup.options {
            params.push(("options".into(), options.clone()));
        }
        if let Some(name) = &startup.application_name {
            params.push(("application_name".into(), name.clone()));
        }
        let mut connection = Connection {
            stream: BufReader::new(stream),
            backend_key: None,
        };
        connection.send(&encode_startup(&params)).await?;
        connection.authenticate(startup).await?;
        loop {
            let (kind, body) = connection.read().await?;
            match kind {
                b'K' if body.len() == 8 => {
                    let pid = i32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
                    let key = i32::from_be_bytes(body[4..8].try_into().expect("4 bytes"));
                    connection.backend_key = Some((pid, key));
                }
                b'S' | b'N' | b'K' => {}
                b'Z' => return Ok(connection),
                b'E' => return Err(ClientError::Server(PgError::parse(&body))),
                other => return Err(unexpected(other, "start-up")),
            }
        }
    }

    async fn authenticate(&mut self, startup: &Startup) -> Result<(), ClientError> {
        let password = || {
            startup.password.as_deref().ok_or_else(|| {
                ClientError::Protocol("the server asks for a password and none was given".into())
            })
        };
        let mut scram: Option<(String, scram::ClientProof)> = None;
        loop {
            let (kind, body) = self.read().await?;
            match kind {
                b'E' => return Err(ClientError::Server(PgError::parse(&body))),
                b'R' => {}
                other => return Err(unexpected(other, "authentication")),
            }
            let Some((code, data)) = body.split_first_chunk::<4>() else {
                return Err(ClientError::Protocol("short authentication message".into()));
            };
            match i32::from_be_bytes(*code) {
                0 => return Ok(()),
                3 => {
                    let mut message = vec![b'p', 0, 0, 0, 0];
                    message.extend_from_slice(password()?.as_bytes());
                    message.push(0);
                    self.send(&with_length(message)).await?;
                }
                10 => {
                    let mechanisms: Vec<&[u8]> =
                        data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    if !mechanisms.contains(&&b"SCRAM-SHA-256"[..]) {
                        return Err(ClientError::Protocol(format!(
                            "the server offers no SASL mechanism this client knows: {:?}",
                            mechanisms
                                .iter()
                                .map(|m| String::from_utf8_lossy(m))
                                .collect::<Vec<_>>()
                        )));
                    }
                    password()?;
                    let client_first_bare = format!("n=,r={}", scram::client_nonce());
                    let first = format!("n,,{client_first_bare}");
                    let mut message = vec![b'p', 0, 0, 0, 0];
                    message.extend_from_slice(b"SCRAM-SHA-256\0");
                    message.extend_from_slice(&(first.len() as i32).to_be_bytes());
                    message.extend_from_slice(first.as_bytes());
                    self.send(&with_length(message)).await?;
                    scram = Some((client_first_bare, placeholder_proof()));
                }
                11 => {
                    let Some((client_first_bare, proof)) = scram.as_mut() else {
                        return Err(ClientError::Protocol("SASLContinue before SASL".into()));
                    };
                    let server_first = std::str::from_utf8(data).map_err(|_| {
                        ClientError::Protocol("the server-first-message is not UTF-8".into())
                    })?;
                    *proof =
                        scram::client_proof(password()?, "n,,", client_first_bare, server_first)
                            .map_err(|e| ClientError::Protocol(format!("SCRAM: {e}")))?;
                    let mut message = vec![b'p', 0, 0, 0, 0];
                    message.extend_from_slice(proof.client_final.as_bytes());
                    self.send(&with_length(message)).await?;
                }
                12 => {
                    let Some((_, proof)) = scram.as_ref() else {
                        return Err(ClientError::Protocol("SASLFinal before SASL".into()));
                    };
                    if data != proof.expected_server_final.as_bytes() {
                        return Err(ClientError::Protocol(
                            "the server's SCRAM signature is wrong: it does not know the password"
                                .into(),
                        ));
                    }
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "authentication method {other} is not supported"
                    )))
                }
            }
        }
    }

    /// Runs one statement with text parameters (`None` = NULL); every result column comes
    /// back as text. Rows beyond `max_bytes` of text in all fail the query (the server's
    /// remaining answer is read and dropped, so the connection stays usable).
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[Option<String>],
        max_bytes: usize,
    ) -> Result<QueryResult, ClientError> {
        let n_params = i16::try_from(params.len()).map_err(|_| {
            ClientError::Protocol(format!("{} parameters is too many", params.len()))
        })?;
        let mut out = Vec::with_capacity(64 + sql.len());
        // Parse: unnamed statement, parameter types left to the server.
        let mut parse = vec![b'P', 0, 0, 0, 0, 0];
        parse.extend_from_slice(sql.as_bytes());
        parse.push(0);
        parse.extend_from_slice(&0i16.to_be_bytes());
        out.extend(with_length(parse));
        // Bind: unnamed portal; every parameter and every result column in text.
        let mut bind = vec![b'B', 0, 0, 0, 0, 0, 0];
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&n_params.to_be_bytes());
        for param in params {
            match param {
                Some(text) => {
                    let len = i32::try_from(text.len()).map_err(|_| {
                        ClientError::Protocol("a parameter is larger than 2 GiB".into())
                    })?;
                    bind.extend_from_slice(&len.to_be_bytes());
                    bind.extend_from_slice(text.as_bytes());
                }
                None => bind.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        bind.extend_from_slice(&0i16.to_be_bytes());
        out.extend(with_length(bind));
        out.extend(with_length(vec![b'D', 0, 0, 0, 0, b'P', 0]));
        out.extend(with_length(vec![b'E', 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        out.extend(with_length(vec![b'S', 0, 0, 0, 0]));
        self.send(&out).await?;

        let mut result = QueryResult::default();
        let mut failure: Option<ClientError> = None;
        let mut bytes = 0usize;
        loop {
            let (kind, body) = self.read().await?;
            match kind {
                b'1' | b'2' | b'n' | b'N' | b'S' | b'A' | b's' | b'I' => {}
                b'T' => result.fields = parse_row_description(&body)?,
                b'D' if failure.is_none() => {
                    let row = parse_data_row(&body, result.fields.len())?;
                    bytes += body.len();
                    if bytes > max_bytes {
                        failure = Some(ClientError::TooLarge { max_bytes });
                        result.rows.clear();
                    } else {
                        result.rows.push(row);
                    }
                }
                b'D' => {}
                b'C' => {
                    result.tag = cstring(&body);
                }
                b'E' => failure = Some(ClientError::Server(PgError::parse(&body))),
                b'Z' => break,
                other => return Err(unexpected(other, "a query")),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    /// Runs statements without parameters in the simple protocol (`BEGIN`, `COMMIT`).
    pub async fn simple(&mut self, sql: &str) -> Result<(), ClientError> {
        let mut message = vec![b'Q', 0, 0, 0, 0];
        message.extend_from_slice(sql.as_bytes());
        message.push(0);
        self.send(&with_length(message)).await?;
        let mut failure = None;
        loop {
            let (kind, body) = self.read().await?;
            match kind {
                b'E' => failure = Some(ClientError::Server(PgError::parse(&body))),
                b'Z' => break,
                _ => {}
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Sends Terminate and closes the stream.
    pub async fn close(mut self) {
        let _ = self.send(&[b'X', 0, 0, 0, 4]).await;
        let _ = self.stream.get_mut().shutdown().await;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await?;
        Ok(())
    }

    async fn read(&mut self) -> Result<(u8, Vec<u8>), ClientError> {
        Ok(read_message(&mut self.stream, SERVER_MESSAGE_MAX_BYTES).await?)
    }
}

/// Stands in for the proof until the server-first-message arrives.
fn placeholder_proof() -> scram::ClientProof {
    scram::ClientProof {
        client_final: String::new(),
        expected_server_final: String::new(),
    }
}

fn unexpected(kind: u8, during: &str) -> ClientError {
    ClientError::Protocol(format!(
        "unexpected message {:?} during {during}",
        char::from(kind)
    ))
}

/// Fills in the length word of a message built with four placeholder bytes after its type.
fn with_length(mut message: Vec<u8>) -> Vec<u8> {
    let len = (message.len() - 1) as i32;
    message[1..5].copy_from_slice(&len.to_be_bytes());
    message
}

fn cstring(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A cursor over a message body that fails instead of panicking on short input.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ClientError> {
        if self.0.len() < n {
            return Err(ClientError::Protocol(
                "a server message is truncated".into(),
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, ClientError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn i32(&mut self) -> Result<i32, ClientError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn cstring(&mut self) -> Result<String, ClientError> {
        let end = self.0.iter().position(|&b| b == 0).ok_or_else(|| {
            ClientError::Protocol("a string in a server message has no end".into())
        })?;
        let text = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
}

fn parse_row_description(body: &[u8]) -> Result<Vec<Field>, ClientError> {
    let mut body = Body(body);
    let n = body.i16()?;
    let mut fields = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        fields.push(Field {
            name: body.cstring()?,
            table_oid: body.i32()? as u32,
            column_id: body.i16()?,
            type_oid: body.i32()? as u32,
            type_size: body.i16()?,
            type_modifier: body.i32()?,
            format: body.i16()?,
        });
    }
    Ok(fields)
}

fn parse_data_row(body: &[u8], n_fields: usize) -> Result<Vec<Option<String>>, ClientError> {
    let mut body = Body(body);
    let n = body.i16()?;
    if n as usize != n_fields {
        return Err(ClientError::Protocol(format!(
            "a row has {n} values for {n_fields} columns"
        )));
    }
    let mut row = Vec::with_capacity(n_fields);
    for _ in 0..n {
        let len = body.i32()?;
        row.push(if len < 0 {
            None
        } else {
            Some(String::from_utf8_lossy(body.take(len as usize)?).into_owned())
        });
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_give_command_and_row_count() {
        let result = |tag: &str| QueryResult {
            tag: tag.into(),
            ..QueryResult::default()
        };
        assert_eq!(result("SELECT 3").command(), "SELECT");
        assert_eq!(result("SELECT 3").row_count(), Some(3));
        assert_eq!(result("INSERT 0 2").row_count(), Some(2));
        assert_eq!(result("CREATE TABLE").row_count(), None);
        assert_eq!(result("BEGIN").row_count(), None);
        assert_eq!(result("").command(), "");
    }

    #[test]
    fn error_fields_are_kept_and_short_messages_fail_cleanly() {
        let body = b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0P15\0\0";
        let error = PgError::parse(body);
        assert_eq!(error.code(), "42P01");
        assert_eq!(error.message(), "relation \"x\" does not exist");
        assert_eq!(error.field(b'P'), Some("15"));
        // Truncated or garbled bodies never panic.
        for cut in 0..body.len() {
            let _ = PgError::parse(&body[..cut]);
        }
        let description = {
            let mut b = vec![0, 1];
            b.extend_from_slice(b"n\0");
            b.extend_from_slice(&[
                0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0,
            ]);
            b
        };
        let fields = parse_row_description(&description).unwrap();
        assert_eq!(fields[0].name, "n");
        assert_eq!(fields[0].type_oid, 23);
        for cut in 0..description.len() {
            assert!(parse_row_description(&description[..cut]).is_err());
        }
        let row = [0, 2, 0, 0, 0, 1, b'7', 255, 255, 255, 255];
        assert_eq!(
            parse_data_row(&row, 2).unwrap(),
            vec![Some("7".to_string()), None]
        );
        assert!(parse_data_row(&row, 3).is_err());
        for cut in 0..row.len() {
            assert!(parse_data_row(&row[..cut], 2).is_err());
        }
    }
}
