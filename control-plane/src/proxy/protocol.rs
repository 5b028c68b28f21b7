//! The PostgreSQL protocol 3 messages the proxy reads from clients and writes to them.
//!
//! Holds the startup packet (and the SSLRequest, GSSENCRequest and CancelRequest packets
//! that take its place), the typed messages a client sends while it authenticates
//! (password, SASLInitialResponse), and the backend messages the proxy answers with
//! (Authentication*, ErrorResponse).
//!
//! Only `read_startup` and `read_message` do I/O: each reads exactly the bytes of one
//! packet and never more, so a caller that reads an SSLRequest from the raw socket can be
//! sure no byte sent after it (which must be a TLS ClientHello) was consumed. Both check a
//! packet's declared length against a limit before they allocate for it, so a client
//! cannot make the proxy hold more than the limit. Every other function is pure.
//!
//! The encoders assume what the decoders guarantee: names, values and mechanism names
//! hold no NUL byte. `error_response` drops NUL bytes from its texts instead, because its
//! texts may quote what a client sent.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest startup packet accepted, length word included: PostgreSQL's
/// `MAX_STARTUP_PACKET_LENGTH`.
pub const STARTUP_PACKET_BYTES_MAX: usize = 10_000;
/// The longest body of a password or SASL message a client may send before it is
/// authenticated. A SCRAM client-first or client-final message is a few hundred bytes.
pub const AUTH_MESSAGE_BYTES_MAX: usize = 8_192;

/// The smallest valid startup packet: the length word and the code, in bytes.
const STARTUP_HEADER_BYTES: usize = 8;
/// The length of a CancelRequest packet: length word, code, process id, secret key.
const CANCEL_REQUEST_BYTES: usize = 16;
/// Protocol version 3.0 as sent in a startup packet: major in the high 16 bits.
const PROTOCOL_VERSION_3_0: i32 = 3 << 16;
const CANCEL_REQUEST_CODE: i32 = (1234 << 16) | 5678;
const SSL_REQUEST_CODE: i32 = (1234 << 16) | 5679;
const GSSENC_REQUEST_CODE: i32 = (1234 << 16) | 5680;

/// Authentication request codes of the backend's 'R' message.
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT_PASSWORD: i32 = 3;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS (code 80877103); it waits for one byte, 'S' or 'N'.
    SslRequest,
    /// The client asks for GSSAPI encryption (code 80877104); it waits for 'G' or 'N'.
    GssEncRequest,
    /// The client asks to cancel a running query of another connection (code 80877102).
    Cancel { process_id: i32, secret_key: i32 },
    /// A protocol 3 startup: the parameters in the order the client sent them. A name
    /// may appear more than once; PostgreSQL uses the last one (see `startup_param`).
    /// Holds a `user` parameter that is not empty.
    Startup { params: Vec<(String, String)> },
}

/// Why a packet from a client could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The connection failed or ended in the middle of a packet (`UnexpectedEof`).
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes do not form the packet expected; the text reads like PostgreSQL's.
    #[error("{0}")]
    Malformed(String),
    /// The declared length is over the limit (`bytes` as declared, not as read).
    #[error("message of {bytes} bytes is over the limit of {max} bytes")]
    TooLong { bytes: usize, max: usize },
    /// A startup packet for a protocol other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedVersion { major: u16, minor: u16 },
}

impl ProtocolError {
    /// The SQLSTATE PostgreSQL reports for this error, for an `ErrorResponse`.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            // connection_failure: no client will read the answer, but it names the cause.
            ProtocolError::Io(_) => "08006",
            // protocol_violation
            ProtocolError::Malformed(_) | ProtocolError::TooLong { .. } => "08P01",
            // feature_not_supported, as PostgreSQL's ProcessStartupPacket answers.
            ProtocolError::UnsupportedVersion { .. } => "0A000",
        }
    }
}

/// The fields of an ErrorResponse the proxy sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// "FATAL" when the proxy closes the connection after it, "ERROR" otherwise.
    pub severity: &'static str,
    /// The SQLSTATE, five characters.
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// Reads the first packet of a connection: exactly the bytes of one packet.
///
/// Protocol 3.x with any minor version is accepted, as PostgreSQL accepts it (PostgreSQL
/// then answers with NegotiateProtocolVersion). The minor version is not kept: the proxy
/// speaks 3.0 to the compute (`encode_startup`), so a client asking for 3.2 is served
/// 3.0 without being told; its 3.2 additions (longer cancel keys) are optional for it.
pub async fn read_startup<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<StartupPacket, ProtocolError> {
    let declared = reader.read_i32().await?;
    // A negative length is huge once read as unsigned; both are refused the same way.
    let len = usize::try_from(declared).unwrap_or(usize::MAX);
    if len < STARTUP_HEADER_BYTES {
        return Err(ProtocolError::Malformed(format!(
            "invalid length of startup packet: {declared} bytes"
        )));
    }
    if len > STARTUP_PACKET_BYTES_MAX {
        return Err(ProtocolError::TooLong {
            bytes: len,
            max: STARTUP_PACKET_BYTES_MAX,
        });
    }
    let code = reader.read_i32().await?;
    let mut body = vec![0u8; len - STARTUP_HEADER_BYTES];
    reader.read_exact(&mut body).await?;

    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if !body.is_empty() {
                return Err(ProtocolError::Malformed(format!(
                    "invalid length of encryption request packet: {len} bytes"
                )));
            }
            Ok(if code == SSL_REQUEST_CODE {
                StartupPacket::SslRequest
            } else {
                StartupPacket::GssEncRequest
            })
        }
        CANCEL_REQUEST_CODE => {
            // Protocol 3.2 allows longer secret keys; the proxy hands out 4-byte ones
            // only (it speaks 3.0 to computes), so any other length is malformed.
            let [p0, p1, p2, p3, k0, k1, k2, k3] = body[..] else {
                return Err(ProtocolError::Malformed(format!(
                    "invalid length of cancel request packet: {len} bytes"
                )));
            };
            Ok(StartupPacket::Cancel {
                process_id: i32::from_be_bytes([p0, p1, p2, p3]),
                secret_key: i32::from_be_bytes([k0, k1, k2, k3]),
            })
        }
        _ => {
            // Both halves fit in 16 bits by construction.
            let major = ((code as u32) >> 16) as u16;
            let minor = ((code as u32) & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedVersion { major, minor });
            }
            let params = parse_startup_params(&body)?;
            if startup_param(&params, "user").is_none_or(str::is_empty) {
                return Err(ProtocolError::Malformed(
                    "no user name specified in the startup packet".into(),
                ));
            }
            Ok(StartupPacket::Startup { params })
        }
    }
}

/// Parses NUL-terminated name/value pairs ended by an empty name, which must be the
/// last byte, as PostgreSQL's ProcessStartupPacket does.
fn parse_startup_params(body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let layout_error = || {
        ProtocolError::Malformed(
            "invalid startup packet layout: expected terminator as last byte".into(),
        )
    };
    let mut params = Vec::new();
    let mut rest = body;
    loop {
        match rest {
            [] => return Err(layout_error()),
            [0] => return Ok(params),
            [0, ..] => return Err(layout_error()),
            _ => {}
        }
        let (name, after_name) = split_cstring(rest).ok_or_else(layout_error)?;
        let (value, after_value) = split_cstring(after_name).ok_or_else(layout_error)?;
        params.push((
            utf8(name, "startup parameter name")?,
            utf8(value, "startup parameter value")?,
        ));
        rest = after_value;
    }
}

/// Splits `bytes` at its first NUL: the string before it and the bytes after it.
fn split_cstring(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, ProtocolError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ProtocolError::Malformed(format!("invalid UTF-8 in {what}")))
}

/// The value of startup parameter `name`: the last one when the client sent it more than
/// once, because that is the one PostgreSQL uses. Names are case-sensitive.
pub fn startup_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A protocol 3.0 startup packet with `params` in the order given (what the proxy sends
/// to the compute). Names and values must hold no NUL byte.
pub fn encode_startup(params: &[(String, String)]) -> Vec<u8> {
    debug_assert!(params
        .iter()
        .all(|(n, v)| !n.as_bytes().contains(&0) && !v.as_bytes().contains(&0)));
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&PROTOCOL_VERSION_3_0.to_be_bytes());
    for (name, value) in params {
        put_cstring(&mut out, name.as_bytes());
        put_cstring(&mut out, value.as_bytes());
    }
    out.push(0);
    set_length(&mut out, 0);
    out
}

/// A CancelRequest packet.
pub fn encode_cancel(process_id: i32, secret_key: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(CANCEL_REQUEST_BYTES);
    out.extend_from_slice(&(CANCEL_REQUEST_BYTES as i32).to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    out.extend_from_slice(&process_id.to_be_bytes());
    out.extend_from_slice(&secret_key.to_be_bytes());
    out
}

/// Reads one typed message from the client: its type byte and its body (the bytes after
/// the length word). A body over `max_bytes` is refused before it is read, like
/// PostgreSQL's `pq_getmessage(maxlen)`.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<(u8, Vec<u8>), ProtocolError> {
    let kind = reader.read_u8().await?;
    let declared = reader.read_i32().await?;
    // The length counts itself: 4 bytes at least.
    let Some(body_len) = usize::try_from(declared)
        .ok()
        .and_then(|len| len.checked_sub(4))
    else {
        return Err(ProtocolError::Malformed(format!(
            "invalid message length {declared} in message type {:?}",
            char::from(kind)
        )));
    };
    if body_len > max_bytes {
        return Err(ProtocolError::TooLong {
            bytes: body_len,
            max: max_bytes,
        });
    }
    let mut body = vec![0u8; body_len];
    reader.read_exact(&mut body).await?;
    Ok((kind, body))
}

/// AuthenticationSASL: the mechanisms the server offers.
pub fn authentication_sasl(mechanisms: &[&str]) -> Vec<u8> {
    let mut out = auth_header(AUTH_SASL);
    for mechanism in mechanisms {
        put_cstring(&mut out, mechanism.as_bytes());
    }
    out.push(0);
    set_length(&mut out, 1);
    out
}

/// AuthenticationSASLContinue: the server-first message.
pub fn authentication_sasl_continue(data: &[u8]) -> Vec<u8> {
    auth_with_data(AUTH_SASL_CONTINUE, data)
}

/// AuthenticationSASLFinal: the server-final message.
pub fn authentication_sasl_final(data: &[u8]) -> Vec<u8> {
    auth_with_data(AUTH_SASL_FINAL, data)
}

/// AuthenticationCleartextPassword.
pub fn authentication_cleartext_password() -> Vec<u8> {
    auth_with_data(AUTH_CLEARTEXT_PASSWORD, &[])
}

/// AuthenticationOk.
pub fn authentication_ok() -> Vec<u8> {
    auth_with_data(AUTH_OK, &[])
}

/// An ErrorResponse with the severity twice (S, and V which is never translated), the
/// code, the message and, when given, the detail and the hint.
pub fn error_response(fields: &ErrorFields) -> Vec<u8> {
    let mut out = vec![b'E', 0, 0, 0, 0];
    let mut field = |tag: u8, text: &str| {
        out.push(tag);
        // A NUL would end the field early and misalign the ones after it.
        out.extend(text.bytes().filter(|&b| b != 0));
        out.push(0);
    };
    field(b'S', fields.severity);
    field(b'V', fields.severity);
    field(b'C', fields.code);
    field(b'M', &fields.message);
    if let Some(detail) = &fields.detail {
        field(b'D', detail);
    }
    if let Some(hint) = &fields.hint {
        field(b'H', hint);
    }
    out.push(0);
    set_length(&mut out, 1);
    out
}

/// Parses the body of a SASLInitialResponse ('p'): the mechanism and the client's first
/// message. A data length of -1 (no data) gives empty data. Bytes after the data are an
/// error, as in PostgreSQL.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(String, Vec<u8>), ProtocolError> {
    let malformed = |what: &str| {
        ProtocolError::Malformed(format!("invalid SASLInitialResponse message: {what}"))
    };
    let (mechanism, rest) =
        split_cstring(body).ok_or_else(|| malformed("no terminator after the mechanism"))?;
    let mechanism = utf8(mechanism, "SASL mechanism name")?;
    let (len, data) = match rest {
        [a, b, c, d, data @ ..] => (i32::from_be_bytes([*a, *b, *c, *d]), data),
        _ => return Err(malformed("no data length")),
    };
    if len == -1 {
        if !data.is_empty() {
            return Err(malformed("bytes after the end"));
        }
        return Ok((mechanism, Vec::new()));
    }
    let len = usize::try_from(len).map_err(|_| malformed("negative data length"))?;
    if len != data.len() {
        return Err(malformed("data length does not match the message length"));
    }
    Ok((mechanism, data.to_vec()))
}

/// Parses the body of a PasswordMessage ('p'): one NUL-terminated UTF-8 string that ends
/// the body. An empty password is returned as is; authentication refuses it.
pub fn parse_password(body: &[u8]) -> Result<String, ProtocolError> {
    match split_cstring(body) {
        Some((password, [])) => utf8(password, "password"),
        _ => Err(ProtocolError::Malformed(
            "invalid password packet size".into(),
        )),
    }
}

fn auth_header(code: i32) -> Vec<u8> {
    let mut out = vec![b'R', 0, 0, 0, 0];
    out.extend_from_slice(&code.to_be_bytes());
    out
}

fn auth_with_data(code: i32, data: &[u8]) -> Vec<u8> {
    let mut out = auth_header(code);
    out.extend_from_slice(data);
    set_length(&mut out, 1);
    out
}

fn put_cstring(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.push(0);
}

/// Writes the length word at `at`: the bytes from it to the end, itself included.
fn set_length(out: &mut [u8], at: usize) {
    // Every message built here is far below 2 GiB.
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Hands out its bytes one per read, to check that nothing assumes a packet arrives
    /// in one piece.
    struct OneByteReader<'a> {
        data: &'a [u8],
    }

    impl AsyncRead for OneByteReader<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some((&first, rest)) = self.data.split_first() {
                if buf.remaining() > 0 {
                    buf.put_slice(&[first]);
                    self.data = rest;
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// A packet: the length word, then `rest`.
    fn packet(rest: &[u8]) -> Vec<u8> {
        let mut out = ((rest.len() + 4) as i32).to_be_bytes().to_vec();
        out.extend_from_slice(rest);
        out
    }

    async fn startup_of(bytes: &[u8]) -> Result<StartupPacket, ProtocolError> {
        let mut reader = bytes;
        read_startup(&mut reader).await
    }

    #[tokio::test]
    async fn startup_round_trips_in_order() {
        let sent = params(&[
            ("user", "alice"),
            ("database", "db"),
            ("options", "-c search_path=x endpoint=ep-abc"),
            ("application_name", "ünïcode"),
            ("user", "bob"),
        ]);
        let bytes = encode_startup(&sent);
        assert_eq!(&bytes[4..8], &[0, 3, 0, 0]);
        assert_eq!(
            bytes.len(),
            i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
        );
        let read = startup_of(&bytes).await.unwrap();
        assert_eq!(
            read,
            StartupPacket::Startup {
                params: sent.clone()
            }
        );
        // The last of a repeated name wins, as in PostgreSQL.
        assert_eq!(startup_param(&sent, "user"), Some("bob"));
        assert_eq!(startup_param(&sent, "User"), None);
        assert_eq!(startup_param(&sent, "database"), Some("db"));
    }

    #[tokio::test]
    async fn startup_bytes_are_exact() {
        let bytes = encode_startup(&params(&[("user", "u")]));
        assert_eq!(bytes, b"\0\0\0\x10\0\x03\0\0user\0u\0\0");
    }

    #[tokio::test]
    async fn special_codes() {
        assert_eq!(
            startup_of(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .await
                .unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            startup_of(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
                .await
                .unwrap(),
            StartupPacket::GssEncRequest
        );
        let cancel = encode_cancel(-7, 0x0102_0304);
        assert_eq!(
            cancel,
            [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0xff, 0xff, 0xff, 0xf9, 1, 2, 3, 4]
        );
        assert_eq!(
            startup_of(&cancel).await.unwrap(),
            StartupPacket::Cancel {
                process_id: -7,
                secret_key: 0x0102_0304
            }
        );
        // A cancel request with a longer key (protocol 3.2) or a padded SSLRequest.
        let mut long_cancel = cancel.clone();
        long_cancel.extend_from_slice(&[5, 6, 7, 8]);
        long_cancel[3] = 20;
        assert!(matches!(
            startup_of(&long_cancel).await,
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            startup_of(&packet(&[0x04, 0xd2, 0x16, 0x2f, 0])).await,
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn reads_exactly_one_packet() {
        let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        bytes.extend_from_slice(b"\x16\x03\x01");
        let mut reader = &bytes[..];
        assert_eq!(
            read_startup(&mut reader).await.unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(reader, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn one_byte_reads() {
        let sent = params(&[("user", "alice"), ("database", "postgres")]);
        let bytes = encode_startup(&sent);
        let mut reader = OneByteReader { data: &bytes };
        assert_eq!(
            read_startup(&mut reader).await.unwrap(),
            StartupPacket::Startup { params: sent }
        );

        let mut bytes = b"p\0\0\0\x0bsecret\0".to_vec();
        bytes.extend_from_slice(b"trailing");
        let mut reader = OneByteReader { data: &bytes };
        let (kind, body) = read_message(&mut reader, AUTH_MESSAGE_BYTES_MAX)
            .await
            .unwrap();
        assert_eq!((kind, body.as_slice()), (b'p', &b"secret\0"[..]));
        assert_eq!(parse_password(&body).unwrap(), "secret");
        assert_eq!(reader.data, b"trailing");
    }

    #[tokio::test]
    async fn truncated_input_is_io_error() {
        let bytes = encode_startup(&params(&[("user", "alice")]));
        for cut in 0..bytes.len() {
            match startup_of(&bytes[..cut]).await {
                Err(ProtocolError::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof)
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let message = b"p\0\0\0\x0bsecret\0";
        for cut in 0..message.len() {
            let mut reader = &message[..cut];
            assert!(matches!(
                read_message(&mut reader, 100).await,
                Err(ProtocolError::Io(_))
            ));
        }
    }

    #[tokio::test]
    async fn lengths_out_of_range() {
        // Over the limit: refused from the length word alone, before reading the rest.
        let over = (STARTUP_PACKET_BYTES_MAX as i32 + 1).to_be_bytes();
        assert!(matches!(
            startup_of(&over).await,
            Err(ProtocolError::TooLong {
                bytes: 10_001,
                max: 10_000
            })
        ));
        assert!(matches!(
            startup_of(&(-1i32).to_be_bytes()).await,
            Err(ProtocolError::TooLong { .. })
        ));
        // Exactly at the limit is fine.
        let value = "x".repeat(STARTUP_PACKET_BYTES_MAX - 8 - 7);
        let bytes = encode_startup(&params(&[("user", &value)]));
        assert_eq!(bytes.len(), STARTUP_PACKET_BYTES_MAX);
        assert!(startup_of(&bytes).await.is_ok());
        for short in [0u8, 4, 7] {
            assert!(matches!(
                startup_of(&[0, 0, 0, short, 0, 3, 0, 0]).await,
                Err(ProtocolError::Malformed(_))
            ));
        }

        let mut reader = &b"p\0\0\0\x0dtoo long\0"[..];
        assert!(matches!(
            read_message(&mut reader, 8).await,
            Err(ProtocolError::TooLong { bytes: 9, max: 8 })
        ));
        let mut reader = &b"p\0\0\0\x03"[..];
        assert!(matches!(
            read_message(&mut reader, 8).await,
            Err(ProtocolError::Malformed(_))
        ));
        let mut reader = &b"p\xff\xff\xff\xff"[..];
        assert!(matches!(
            read_message(&mut reader, 8).await,
            Err(ProtocolError::Malformed(_))
        ));
        let mut reader = &b"p\0\0\0\x04"[..];
        assert_eq!(read_message(&mut reader, 0).await.unwrap(), (b'p', vec![]));
    }

    #[tokio::test]
    async fn versions() {
        let body = b"user\0u\0\0";
        let with_version = |major: u8, minor: u8| {
            let mut rest = vec![0, major, 0, minor];
            rest.extend_from_slice(body);
            packet(&rest)
        };
        assert!(matches!(
            startup_of(&with_version(2, 0)).await,
            Err(ProtocolError::UnsupportedVersion { major: 2, minor: 0 })
        ));
        assert!(matches!(
            startup_of(&with_version(4, 1)).await,
            Err(ProtocolError::UnsupportedVersion { major: 4, minor: 1 })
        ));
        // 3.2 is accepted (served as 3.0).
        assert!(matches!(
            startup_of(&with_version(3, 2)).await,
            Ok(StartupPacket::Startup { .. })
        ));
        let error = ProtocolError::UnsupportedVersion { major: 2, minor: 0 };
        assert_eq!(
            error.to_string(),
            "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"
        );
        assert_eq!(error.sqlstate(), "0A000");
    }

    #[tokio::test]
    async fn malformed_parameters() {
        let with_body = |body: &[u8]| {
            let mut rest = vec![0, 3, 0, 0];
            rest.extend_from_slice(body);
            packet(&rest)
        };
        let cases: &[(&[u8], &str)] = &[
            // No terminator after the last pair.
            (b"user\0u", "terminator"),
            (b"user\0u\0", "terminator"),
            (b"user\0", "terminator"),
            (b"user", "terminator"),
            // Bytes after the terminator.
            (b"user\0u\0\0x", "terminator"),
            (b"", "terminator"),
            // No user, or an empty one.
            (b"\0", "no user name"),
            (b"database\0d\0\0", "no user name"),
            (b"user\0\0\0", "no user name"),
            (b"user\0\xff\0\0", "UTF-8"),
            (b"\xc3\0u\0user\0u\0\0", "UTF-8"),
        ];
        for (body, expected) in cases {
            match startup_of(&with_body(body)).await {
                Err(ProtocolError::Malformed(m)) => {
                    assert!(m.contains(expected), "{body:?}: {m}")
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
        match startup_of(&with_body(b"database\0d\0\0")).await {
            Err(e) => {
                assert_eq!(
                    e.to_string(),
                    "no user name specified in the startup packet"
                );
                assert_eq!(e.sqlstate(), "08P01");
            }
            Ok(p) => panic!("{p:?}"),
        }
        // An empty value that is not the user is fine.
        assert_eq!(
            startup_of(&with_body(b"user\0u\0options\0\0\0"))
                .await
                .unwrap(),
            StartupPacket::Startup {
                params: params(&[("user", "u"), ("options", "")])
            }
        );
    }

    #[test]
    fn authentication_messages_are_exact() {
        assert_eq!(
            authentication_sasl(&["SCRAM-SHA-256"]),
            b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"
        );
        assert_eq!(
            authentication_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
            b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
        );
        assert_eq!(
            authentication_sasl_continue(b"r=abc,s=xyz,i=4096"),
            b"R\0\0\0\x1a\0\0\0\x0br=abc,s=xyz,i=4096"
        );
        assert_eq!(
            authentication_sasl_final(b"v=abc="),
            b"R\0\0\0\x0e\0\0\0\x0cv=abc="
        );
        assert_eq!(
            authentication_cleartext_password(),
            b"R\0\0\0\x08\0\0\0\x03"
        );
        assert_eq!(authentication_ok(), b"R\0\0\0\x08\0\0\0\0");
    }

    #[test]
    fn error_response_is_exact() {
        let mut fields = ErrorFields {
            severity: "FATAL",
            code: "28P01",
            message: "password authentication failed for user \"u\"".into(),
            detail: None,
            hint: None,
        };
        let mut expected = b"E\0\0\0\x00SFATAL\0VFATAL\0C28P01\0M".to_vec();
        expected.extend_from_slice(b"password authentication failed for user \"u\"\0\0");
        expected[4] = (expected.len() - 1) as u8;
        assert_eq!(error_response(&fields), expected);

        fields.message = "m\0x".into();
        fields.detail = Some("d".into());
        fields.hint = Some("h".into());
        assert_eq!(
            error_response(&fields),
            b"E\0\0\0\x24SFATAL\0VFATAL\0C28P01\0Mmx\0Dd\0Hh\0\0"
        );
        fields.detail = None;
        assert_eq!(
            error_response(&fields),
            b"E\0\0\0\x21SFATAL\0VFATAL\0C28P01\0Mmx\0Hh\0\0"
        );
    }

    #[test]
    fn sasl_initial_response() {
        assert_eq!(
            parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x05n,,n=").unwrap(),
            ("SCRAM-SHA-256".to_string(), b"n,,n=".to_vec())
        );
        assert_eq!(
            parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff").unwrap(),
            ("SCRAM-SHA-256".to_string(), Vec::new())
        );
        assert_eq!(
            parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\0").unwrap(),
            ("SCRAM-SHA-256".to_string(), Vec::new())
        );
        let bad: &[&[u8]] = &[
            b"SCRAM-SHA-256",
            b"SCRAM-SHA-256\0",
            b"SCRAM-SHA-256\0\0\0",
            b"SCRAM-SHA-256\0\0\0\0\x05n,,n",
            b"SCRAM-SHA-256\0\0\0\0\x05n,,n=x",
            b"SCRAM-SHA-256\0\xff\xff\xff\xffx",
            b"SCRAM-SHA-256\0\xff\xff\xff\xfe",
            b"\xff\0\0\0\0\0",
        ];
        for body in bad {
            assert!(
                matches!(
                    parse_sasl_initial_response(body),
                    Err(ProtocolError::Malformed(_))
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn password() {
        assert_eq!(parse_password(b"p4ss;word\0").unwrap(), "p4ss;word");
        assert_eq!(parse_password(b"\0").unwrap(), "");
        for body in [&b""[..], b"abc", b"abc\0x", b"a\0b\0", b"\xff\0"] {
            assert!(
                matches!(parse_password(body), Err(ProtocolError::Malformed(_))),
                "{body:?}"
            );
        }
    }
}
