//! `POST /sql` on the proxy's HTTP port: SQL over HTTP ([`crate::sql_over_http`]) with the
//! wire protocol's routing and authentication.
//!
//! ```text
//! client ──TCP──▶ first byte 0x16? TLS : plain HTTP (plain only from loopback, unless allowed)
//!   POST /sql, Neon-Connection-String ─▶ endpoint (host label, options, password)
//!   ─▶ failed-login limit ─▶ password checked against the role's SCRAM secret
//!   ─▶ wake the compute ─▶ a fresh session on it ─▶ statements ─▶ JSON
//! ```
//!
//! The password arrives whole, so it is checked against the stored secret directly
//! (the same keys SCRAM would prove); failures count against the same per-endpoint,
//! per-source limit as wire logins. While a request runs, its endpoint counts an open
//! connection, so it is not suspended under it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::{
    accept_loop, check_lockout, connect_compute, record_login, role_secret, routing, ActivityGuard,
    ControlHandle, ProxyConfig, ProxyState, Refusal,
};
use crate::pgclient::{Connection, Startup};
use crate::sql_over_http::{self, SqlAnswer, CONNECTION_STRING_HEADER, SQL_REQUEST_BYTES_MAX};

/// How long a client may take to send a request's headers, in milliseconds.
pub const HTTP_HEADER_TIMEOUT_MS: u64 = 10_000;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Serves SQL over HTTP on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ProxyConfig>,
    control: ControlHandle,
    state: Arc<ProxyState>,
) {
    // Over the connection limit: closed at once (no HTTP answer is read for it).
    let refuse = drop::<TcpStream>;
    let serve = move |stream, peer, state| {
        serve_connection(stream, peer, config.clone(), control.clone(), state)
    };
    accept_loop(listener, state, "HTTP", refuse, serve).await
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ProxyConfig>,
    control: ControlHandle,
    state: Arc<ProxyState>,
) -> anyhow::Result<()> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(
        Duration::from_millis(HTTP_HEADER_TIMEOUT_MS),
        stream.peek(&mut first),
    )
    .await;
    let tls = matches!(peeked, Ok(Ok(1))) && first[0] == TLS_HANDSHAKE_BYTE;
    let context = Arc::new(Context {
        config: config.clone(),
        control,
        state,
        source: peer.ip(),
        tls,
    });
    let service = hyper::service::service_fn(move |request| {
        let context = context.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&context, request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_millis(HTTP_HEADER_TIMEOUT_MS));
    if tls {
        let Some(tls_config) = &config.tls else {
            return Ok(());
        };
        let accepted = tokio::time::timeout(
            Duration::from_millis(HTTP_HEADER_TIMEOUT_MS),
            tokio_rustls::TlsAcceptor::from(tls_config.clone()).accept(stream),
        )
        .await??;
        builder
            .serve_connection(TokioIo::new(accepted), service)
            .await?;
    } else {
        builder
            .serve_connection(TokioIo::new(stream), service)
            .await?;
    }
    Ok(())
}

/// What one connection's requests share.
struct Context {
    config: Arc<ProxyConfig>,
    control: ControlHandle,
    state: Arc<ProxyState>,
    source: IpAddr,
    tls: bool,
}

fn json_response(answer: SqlAnswer) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.body.to_string())))
        .expect("a response with a valid status and header")
}

async fn handle(context: &Context, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/sql" {
        return json_response(SqlAnswer::error(
            404,
            "08P01",
            format!(
                "no such path {}: SQL over HTTP is POST /sql",
                request.uri().path()
            ),
        ));
    }
    if request.method() != Method::POST {
        return json_response(SqlAnswer::error(
            405,
            "08P01",
            "SQL over HTTP takes POST requests",
        ));
    }
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let body = match Limited::new(body, SQL_REQUEST_BYTES_MAX).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return json_response(SqlAnswer::error(
                400,
                "08P01",
                format!(
                    "cannot read the request body (at most {SQL_REQUEST_BYTES_MAX} bytes): {e}"
                ),
            ))
        }
    };
    json_response(answer(context, &header, &body).await)
}

/// A refusal as an HTTP answer: 503 when the compute cannot be reached, 400 otherwise.
fn refused(refusal: Refusal) -> SqlAnswer {
    let status = if refusal.0.code == "57P03" { 503 } else { 400 };
    let mut answer = SqlAnswer::error(status, refusal.0.code, refusal.0.message);
    if let Some(hint) = refusal.0.hint {
        answer.body["hint"] = hint.into();
    }
    answer
}

async fn answer(
    context: &Context,
    header: &impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> SqlAnswer {
    let request = match sql_over_http::parse_request(header, body) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    let Some(url) = header(CONNECTION_STRING_HEADER) else {
        return SqlAnswer::error(
            400,
            "08P01",
            "missing the Neon-Connection-String header (postgres://role:password@<endpoint>.<domain>/db)",
        );
    };
    let target = match sql_over_http::parse_connection_string(&url) {
        Ok(target) => target,
        Err(e) => return SqlAnswer::error(400, "08P01", format!("invalid connection string: {e}")),
    };
    let config = &context.config;
    if !context.tls && !context.source.is_loopback() && !config.allow_cleartext_without_tls {
        return SqlAnswer::error(
            400,
            "08P01",
            "the connection string carries a password: send it over HTTPS",
        );
    }
    let routing_error = |e: routing::RouteError| SqlAnswer::error(400, "08004", e.to_string());
    let host_endpoint = match routing::endpoint_from_sni(&target.host, &config.domain) {
        Ok(endpoint) => endpoint,
        Err(e) => return routing_error(e),
    };
    let options_rest = match &target.options {
        Some(options) => match routing::split_options(options) {
            Ok((_, rest)) => rest,
            Err(e) => return routing_error(e),
        },
        None => String::new(),
    };
    let named = match routing::resolve(
        host_endpoint.as_deref(),
        target.options.as_deref(),
        Some(&target.password),
    ) {
        Ok(named) => named,
        Err(e) => return routing_error(e),
    };
    let Some((endpoint, _)) = named else {
        let mut answer = SqlAnswer::error(400, "08004", "the endpoint is not specified");
        answer.body["hint"] = format!(
            "use the host <endpoint>.{}, or options=endpoint=<endpoint id>, or the password \
             endpoint=<endpoint id>;<password>",
            config.domain
        )
        .into();
        return answer;
    };
    let password = routing::split_password(&target.password)
        .map(|(_, password)| password)
        .unwrap_or_else(|| target.password.clone());

    let state = &context.state;
    let login = async {
        check_lockout(state, &endpoint, context.source)?;
        let secret = role_secret(&context.control, state, &endpoint, &target.user).await?;
        // PBKDF2 with thousands of iterations: off the async workers.
        let verified = tokio::task::spawn_blocking(move || secret.verify_password(&password))
            .await
            .unwrap_or(false);
        record_login(state, &endpoint, &target.user, context.source, verified)
    };
    if let Err(refusal) = login.await {
        return refused(refusal);
    }

    state.activity.open(&endpoint);
    let _guard = ActivityGuard {
        activity: &state.activity,
        endpoint: endpoint.clone(),
    };
    let compute = match connect_compute(&context.control, &endpoint).await {
        Ok(compute) => compute,
        Err(refusal) => return refused(refusal),
    };
    let startup = Startup {
        user: target.user.clone(),
        database: target.database.clone(),
        options: (!options_rest.is_empty()).then_some(options_rest),
        password: None,
        application_name: Some("sql-over-http".into()),
    };
    let connection = match Connection::connect(compute, &startup).await {
        Ok(connection) => connection,
        Err(e) => return SqlAnswer::from_client(e),
    };
    sql_over_http::execute(connection, &request).await
}
