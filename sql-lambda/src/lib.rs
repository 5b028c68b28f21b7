//! SQL over HTTP as an AWS Lambda function: the proxy's `POST /sql` handler
//! ([`control_plane::sql_over_http`]) behind a Lambda function URL or an API Gateway HTTP
//! API.
//!
//! ```text
//! Lambda event (function URL / API Gateway v2 or v1: headers, body, isBase64Encoded)
//!   ─▶ parse_request (Neon-Connection-String, {"query","params"} or {"queries"})
//!   ─▶ TCP to the connection string's host:port ─▶ SSLRequest ─▶ TLS (sslmode)
//!   ─▶ StartupMessage, SCRAM-SHA-256 ─▶ statements ─▶ {statusCode, headers, body}
//! ```
//!
//! Unlike the proxy's handler, which reaches computes directly, this one is a client of an
//! OmenDB proxy (or any PostgreSQL server): it connects to the host in the connection
//! string, so the endpoint is found there as for any wire client (TLS server name,
//! `options=endpoint=`, or the password). `sslmode`: `disable` (plain TCP), `require` (the
//! default, as in Neon's strings; encrypted, certificate not checked, as libpq does), or
//! `verify-ca`/`verify-full` (certificate checked against `sslrootcert`, or the bundle in
//! `SSL_CERT_FILE`, or the system's; both check the host name).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use control_plane::pgclient::{Connection, Startup};
use control_plane::sql_over_http::{
    self, SqlAnswer, Target, CONNECTION_STRING_HEADER, SQL_REQUEST_BYTES_MAX,
};
use lambda_runtime::LambdaEvent;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting to the database (TCP and TLS) may take, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// The port when the connection string names none.
pub const DEFAULT_PORT: u16 = 5432;
/// Certificate bundles tried, in order, when neither `sslrootcert` nor `SSL_CERT_FILE`
/// names one (Debian/Ubuntu, then Amazon Linux/RHEL, the Lambda images' base).
const SYSTEM_CA_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The Lambda handler: answers any event with an HTTP-shaped response.
pub async fn handler(event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    Ok(respond(&event.payload).await)
}

/// The function URL response for `event`.
pub async fn respond(event: &Value) -> Value {
    let answer = answer(event).await;
    json!({
        "statusCode": answer.status,
        "headers": {"content-type": "application/json"},
        "body": answer.body.to_string(),
        "isBase64Encoded": false,
    })
}

async fn answer(event: &Value) -> SqlAnswer {
    let method = event["requestContext"]["http"]["method"]
        .as_str()
        .or_else(|| event["httpMethod"].as_str());
    if method.is_some_and(|m| !m.eq_ignore_ascii_case("POST")) {
        return SqlAnswer::error(405, "08P01", "SQL over HTTP takes POST requests");
    }
    let headers = event["headers"].as_object();
    let header = |name: &str| {
        headers?
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| value.as_str())
            .map(str::to_string)
    };
    let text = event["body"].as_str().unwrap_or("");
    let body = if event["isBase64Encoded"].as_bool() == Some(true) {
        match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(body) => body,
            Err(e) => {
                return SqlAnswer::error(400, "08P01", format!("the body is not base64: {e}"))
            }
        }
    } else {
        text.as_bytes().to_vec()
    };
    if body.len() > SQL_REQUEST_BYTES_MAX {
        return SqlAnswer::error(
            400,
            "08P01",
            format!("the request body is larger than {SQL_REQUEST_BYTES_MAX} bytes"),
        );
    }
    let request = match sql_over_http::parse_request(header, &body) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    let Some(url) = header(CONNECTION_STRING_HEADER) else {
        return SqlAnswer::error(400, "08P01", "missing the Neon-Connection-String header");
    };
    let target = match sql_over_http::parse_connection_string(&url) {
        Ok(target) => target,
        Err(e) => return SqlAnswer::error(400, "08P01", format!("invalid connection string: {e}")),
    };
    match connect(&target).await {
        Ok(connection) => sql_over_http::execute(connection, &request).await,
        Err(answer) => answer,
    }
}

/// A byte stream to the database, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects and authenticates as the connection string says (to `hostaddr` when given,
/// as libpq does, with `host` still the TLS server name).
pub async fn connect(target: &Target) -> Result<Connection<Box<dyn Stream>>, SqlAnswer> {
    tls_verification(target)?;
    let port = target.port.unwrap_or(DEFAULT_PORT);
    let address = target.param("hostaddr").unwrap_or(&target.host);
    let tcp = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        TcpStream::connect((address, port)),
    )
    .await
    .map_err(|_| unreachable(format!("connecting to {address}:{port} timed out")))?
    .map_err(|e| unreachable(format!("cannot connect to {address}:{port}: {e}")))?;
    connect_over(tcp, target).await
}

/// What `sslmode` asks for: `None` no TLS, `Some(verify)` TLS checking the certificate or
/// not.
fn tls_verification(target: &Target) -> Result<Option<bool>, SqlAnswer> {
    match target.param("sslmode").unwrap_or("require") {
        "disable" => Ok(None),
        "allow" | "prefer" | "require" => Ok(Some(false)),
        "verify-ca" | "verify-full" => Ok(Some(true)),
        other => Err(SqlAnswer::error(
            400,
            "08P01",
            format!("unknown sslmode {other:?}: disable, require, verify-ca or verify-full"),
        )),
    }
}

fn unreachable(message: String) -> SqlAnswer {
    SqlAnswer::error(503, "08001", message)
}

/// Starts a session over an open TCP connection: TLS as `sslmode` says, then the startup
/// and authentication.
pub async fn connect_over(
    mut tcp: TcpStream,
    target: &Target,
) -> Result<Connection<Box<dyn Stream>>, SqlAnswer> {
    let sslmode = target.param("sslmode").unwrap_or("require");
    let verify = tls_verification(target)?;
    let _ = tcp.set_nodelay(true);
    let securing = async {
        let Some(verify) = verify else {
            return Ok(Box::new(tcp) as Box<dyn Stream>);
        };
        // SSLRequest: length 8, code 80877103.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .map_err(|e| unreachable(format!("sending SSLRequest: {e}")))?;
        let answer = tcp
            .read_u8()
            .await
            .map_err(|e| unreachable(format!("reading the SSLRequest answer: {e}")))?;
        if answer != b'S' {
            return Err(unreachable(format!(
                "{} does not accept TLS (sslmode={sslmode})",
                target.host
            )));
        }
        let config = client_config(verify, target.param("sslrootcert"))?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| SqlAnswer::error(400, "08P01", format!("invalid host name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS with {}: {e}", target.host)))?;
        Ok(Box::new(tls) as Box<dyn Stream>)
    };
    let stream = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), securing)
        .await
        .map_err(|_| {
            unreachable(format!(
                "the TLS handshake with {} took longer than {CONNECT_TIMEOUT_MS} ms",
                target.host
            ))
        })??;
    let startup = Startup {
        user: target.user.clone(),
        database: target.database.clone(),
        options: target.options.clone(),
        password: Some(target.password.clone()),
        application_name: Some("omendb-sql-lambda".into()),
    };
    Connection::connect(stream, &startup)
        .await
        .map_err(SqlAnswer::from_client)
}

/// The TLS client configuration: verifying against the roots of `rootcert` (or the
/// environment's or system's bundle), or encrypting without checking the certificate.
fn client_config(
    verify: bool,
    rootcert: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, SqlAnswer> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SqlAnswer::error(500, "XX000", format!("TLS set-up: {e}")))?;
    if !verify {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        ));
    }
    let env_bundle = std::env::var("SSL_CERT_FILE").ok();
    let path = rootcert
        .map(str::to_string)
        .or(env_bundle)
        .or_else(|| {
            SYSTEM_CA_BUNDLES
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| p.to_string())
        })
        .ok_or_else(|| {
            SqlAnswer::error(
                400,
                "08P01",
                "sslmode verify-full needs sslrootcert=<file> (no system certificate bundle found)",
            )
        })?;
    let chain = control_plane::proxy::tls::read_chain(std::path::Path::new(&path))
        .map_err(|e| SqlAnswer::error(400, "08P01", format!("sslrootcert: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in chain {
        roots
            .add(cert)
            .map_err(|e| SqlAnswer::error(400, "08P01", format!("sslrootcert {path}: {e}")))?;
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// `sslmode=require`: the handshake's signatures are checked (the peer holds the key of
/// the certificate it shows) but not who issued the certificate, as libpq does.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events that never reach a database are answered from the event alone.
    #[tokio::test]
    async fn malformed_events_get_clear_answers() {
        let cases = [
            (
                json!({"requestContext": {"http": {"method": "GET"}}}),
                405,
                "08P01",
            ),
            (json!({"body": "not json"}), 400, "08P01"),
            (json!({"body": "{\"query\": \"SELECT 1\"}"}), 400, "08P01"),
            (
                json!({"body": "%%%", "isBase64Encoded": true}),
                400,
                "08P01",
            ),
            (
                json!({"headers": {"neon-connection-string": "mysql://x"}, "body": "{\"query\": \"SELECT 1\"}"}),
                400,
                "08P01",
            ),
            (
                json!({"headers": {"Neon-Connection-String": "postgres://u:p@h/d?sslmode=sometimes"}, "body": "{\"query\": \"SELECT 1\"}"}),
                400,
                "08P01",
            ),
        ];
        for (event, status, code) in cases {
            let response = respond(&event).await;
            assert_eq!(response["statusCode"], status, "{event}: {response}");
            let body: Value =
                serde_json::from_str(response["body"].as_str().expect("body")).expect("JSON body");
            assert_eq!(body["code"], code, "{event}: {body}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_database_is_503() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let event = json!({
            "headers": {"neon-connection-string": format!("postgres://u:p@127.0.0.1:{port}/d")},
            "body": "{\"query\": \"SELECT 1\"}",
        });
        let response = respond(&event).await;
        assert_eq!(response["statusCode"], 503, "{response}");
    }
}
