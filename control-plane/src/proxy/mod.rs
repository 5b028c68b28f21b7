//! The proxy: one PostgreSQL address for every endpoint of every project.
//!
//! ```text
//! client ──TCP──▶ proxy: SSLRequest? ─▶ TLS (server name → endpoint)
//!                        StartupMessage (options endpoint=…, user)
//!                        which endpoint (routing) ─▶ failed-login limit (rate_limit)
//!                        SCRAM-SHA-256 with the role's secret (scram), or, when only the
//!                          password can name the endpoint, a cleartext password over TLS
//!                        wake the endpoint's compute (the control plane starts it)
//!                        StartupMessage to the compute ─▶ relay its answers ─▶ relay bytes
//! ```
//!
//! The endpoint comes from the TLS server name `<endpoint>.<domain>`, from
//! `options=endpoint=<id>`, or from a password `endpoint=<id>;<password>`; all that name one
//! must agree, or the connection is refused. Every refusal is a PostgreSQL `ErrorResponse`
//! with a SQLSTATE, and nothing reaches a compute before the client has proved it knows the
//! password of a role of the endpoint's own project. An unknown role goes through the same
//! exchange against a mock secret and fails the same way. Computes trust the proxy (they
//! listen on loopback only).
//!
//! `ProxyState` holds what the connections share (those of SQL over HTTP, [`http`],
//! included): failed logins, the cancel keys of open connections (a CancelRequest goes to
//! the compute that issued the key), the connection limit, and the activity counts the
//! control plane suspends idle endpoints by. The control plane itself is reached
//! through [`ControlHandle`] (its task answers in [`answer`]).

pub mod http;
pub mod protocol;
pub mod rate_limit;
pub mod routing;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::scram::{ScramError, ScramExchange, ScramSecret};
use crate::service::{Activity, ApiError, Backend, ControlPlane, EndpointAuth, ErrorKind};
use protocol::{ErrorFields, ProtocolError, StartupPacket};
use rate_limit::FailedLogins;

/// How long a client may take from connecting to being authenticated, in milliseconds
/// (PostgreSQL's `authentication_timeout` is 60 s).
pub const AUTH_TIMEOUT_MS: u64 = 30_000;
/// How often a connection tries to wake its endpoint and reach the compute.
pub const WAKE_ATTEMPTS_MAX: u32 = 3;
/// Pause between those attempts, in milliseconds.
pub const WAKE_RETRY_DELAY_MS: u64 = 100;
/// How long connecting to a woken compute may take, in milliseconds.
pub const COMPUTE_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// The largest message relayed from a compute while it starts a session, in bytes.
pub const COMPUTE_STARTUP_MESSAGE_BYTES_MAX: usize = 1 << 20;
/// The most client connections the proxy serves at once.
pub const CONNECTIONS_MAX: usize = 10_000;

/// How the proxy is set up.
pub struct ProxyConfig {
    /// `None`: SSLRequest is answered 'N'.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Endpoints are `<endpoint>.<domain>` by TLS server name.
    pub domain: String,
    /// Whether a client on plain TCP may send a cleartext password (to name the endpoint in
    /// it). Off by default: the password would cross the network unencrypted.
    pub allow_cleartext_without_tls: bool,
}

/// What the proxy's connections share.
pub struct ProxyState {
    activity: Arc<Activity>,
    failed_logins: Mutex<FailedLogins>,
    /// The mock secrets of unknown roles derive from it; random per process.
    mock_seed: [u8; 32],
    /// Cancel keys of open connections → the compute that issued them.
    cancel_keys: Mutex<HashMap<(i32, i32), SocketAddr>>,
    connections: Arc<tokio::sync::Semaphore>,
    started: Instant,
}

impl ProxyState {
    pub fn new(activity: Arc<Activity>) -> ProxyState {
        let mut mock_seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut mock_seed)
            .expect("the system's random source works");
        ProxyState {
            activity,
            failed_logins: Mutex::new(FailedLogins::new(
                rate_limit::FAILED_LOGINS_MAX,
                rate_limit::FAILED_LOGIN_WINDOW_MS,
                rate_limit::LOCKOUT_MS,
                rate_limit::TRACKED_SOURCES_MAX,
            )),
            mock_seed,
            cancel_keys: Mutex::new(HashMap::new()),
            connections: Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX)),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// A question for the control plane's task.
pub enum ControlCall {
    Auth {
        endpoint: String,
        role: String,
        reply: oneshot::Sender<Result<EndpointAuth, ApiError>>,
    },
    Wake {
        endpoint: String,
        reply: oneshot::Sender<Result<SocketAddr, ApiError>>,
    },
}

/// How the proxy reaches the control plane.
#[derive(Clone)]
pub struct ControlHandle {
    calls: mpsc::Sender<ControlCall>,
}

fn stopping() -> ApiError {
    ApiError {
        kind: ErrorKind::Unavailable,
        message: "the control plane is stopping".into(),
    }
}

impl ControlHandle {
    pub fn new(calls: mpsc::Sender<ControlCall>) -> ControlHandle {
        ControlHandle { calls }
    }

    pub async fn auth(&self, endpoint: &str, role: &str) -> Result<EndpointAuth, ApiError> {
        let (reply, answer) = oneshot::channel();
        let call = ControlCall::Auth {
            endpoint: endpoint.into(),
            role: role.into(),
            reply,
        };
        self.calls.send(call).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    pub async fn wake(&self, endpoint: &str) -> Result<SocketAddr, ApiError> {
        let (reply, answer) = oneshot::channel();
        let call = ControlCall::Wake {
            endpoint: endpoint.into(),
            reply,
        };
        self.calls.send(call).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }
}

/// Answers one [`ControlCall`] in the control plane's task.
pub async fn answer(
    control_plane: &mut ControlPlane,
    backend: &mut impl Backend,
    call: ControlCall,
) {
    match call {
        ControlCall::Auth {
            endpoint,
            role,
            reply,
        } => {
            let _ = reply.send(control_plane.endpoint_auth(&endpoint, &role));
        }
        ControlCall::Wake { endpoint, reply } => {
            let _ = reply.send(control_plane.wake(backend, &endpoint).await);
        }
    }
}

/// Serves PostgreSQL clients on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ProxyConfig>,
    control: ControlHandle,
    state: Arc<ProxyState>,
) {
    let refusal = protocol::error_response(&fatal(
        "53300",
        format!("the proxy serves {CONNECTIONS_MAX} connections, the most it takes"),
    ));
    let refuse = move |mut stream: TcpStream| {
        let refusal = refusal.clone();
        tokio::spawn(async move {
            let _ = stream.write_all(&refusal).await;
        });
    };
    let serve = move |stream, peer, state: Arc<ProxyState>| {
        let (config, control) = (config.clone(), control.clone());
        async move { serve_connection(stream, peer, &config, &control, &state).await }
    };
    accept_loop(listener, state, "client", refuse, serve).await
}

/// Accepts connections on `listener` until the task is aborted: at most [`CONNECTIONS_MAX`]
/// at once (counted with every other listener of the proxy; one more goes to `refuse`),
/// each served by `serve` in a task of its own.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    state: Arc<ProxyState>,
    what: &'static str,
    refuse: impl Fn(TcpStream),
    serve: impl Fn(TcpStream, SocketAddr, Arc<ProxyState>) -> F,
) where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("accepting a {what} connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = state.connections.clone().try_acquire_owned() else {
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = serve(stream, peer, state.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection.await {
                debug!(%peer, "{what} connection ended: {e}");
            }
        });
    }
}

fn fatal(code: &'static str, message: impl Into<String>) -> ErrorFields {
    ErrorFields {
        severity: "FATAL",
        code,
        message: message.into(),
        detail: None,
        hint: None,
    }
}

/// Why a connection was refused: what the client is told.
#[derive(Debug)]
pub(crate) struct Refusal(ErrorFields);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0.code, self.0.message)
    }
}

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Refusal {
        Refusal(fatal(e.sqlstate(), e.to_string()))
    }
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Refusal {
        Refusal(fatal("08006", format!("connection error: {e}")))
    }
}

/// A client stream, plain or TLS.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for T {}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: &ProxyConfig,
    control: &ControlHandle,
    state: &ProxyState,
) -> anyhow::Result<()> {
    let mut stream: Box<dyn ClientStream> = Box::new(stream);
    let mut server_name: Option<String> = None;
    let mut tls = false;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(AUTH_TIMEOUT_MS);
    // The first packets: at most one SSLRequest and one GSSENCRequest before the startup.
    let params = loop {
        let packet =
            match tokio::time::timeout_at(deadline, protocol::read_startup(&mut stream)).await {
                Ok(Ok(packet)) => packet,
                Ok(Err(ProtocolError::Io(e))) => return Err(e.into()),
                Ok(Err(e)) => {
                    let refusal = Refusal::from(e);
                    let _ = stream
                        .write_all(&protocol::error_response(&refusal.0))
                        .await;
                    return Err(anyhow::anyhow!("{refusal}"));
                }
                Err(_) => return Ok(()),
            };
        match packet {
            StartupPacket::SslRequest if !tls => match &config.tls {
                Some(tls_config) => {
                    stream.write_all(b"S").await?;
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config.clone());
                    let accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream))
                        .await
                        .map_err(|_| anyhow::anyhow!("the TLS handshake timed out"))??;
                    server_name = accepted.get_ref().1.server_name().map(str::to_string);
                    tls = true;
                    stream = Box::new(accepted);
                }
                None => stream.write_all(b"N").await?,
            },
            StartupPacket::GssEncRequest => stream.write_all(b"N").await?,
            StartupPacket::SslRequest => {
                let refusal = fatal("08P01", "SSLRequest over an encrypted connection");
                let _ = stream.write_all(&protocol::error_response(&refusal)).await;
                return Ok(());
            }
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                forward_cancel(state, process_id, secret_key).await;
                return Ok(());
            }
            StartupPacket::Startup { params } => break params,
        }
    };
    let session = tokio::time::timeout_at(
        deadline,
        authenticate(
            &mut stream,
            peer.ip(),
            server_name.as_deref(),
            tls,
            params,
            config,
            control,
            state,
        ),
    )
    .await;
    let session = match session {
        Ok(Ok(session)) => session,
        Ok(Err(refusal)) => {
            info!(%peer, "connection refused: {refusal}");
            let _ = stream
                .write_all(&protocol::error_response(&refusal.0))
                .await;
            return Ok(());
        }
        Err(_) => {
            let refusal = fatal("08006", "authentication timed out");
            let _ = stream.write_all(&protocol::error_response(&refusal)).await;
            return Ok(());
        }
    };
    relay(stream, session, control, state).await
}

/// An authenticated client and the endpoint it reaches.
struct Session {
    endpoint: String,
    /// The startup parameters to send the compute (the endpoint taken out of `options`).
    params: Vec<(String, String)>,
}

/// Finds the endpoint and authenticates the client; nothing is sent to a compute here.
#[allow(clippy::too_many_arguments)]
async fn authenticate(
    stream: &mut Box<dyn ClientStream>,
    source: IpAddr,
    server_name: Option<&str>,
    tls: bool,
    params: Vec<(String, String)>,
    config: &ProxyConfig,
    control: &ControlHandle,
    state: &ProxyState,
) -> Result<Session, Refusal> {
    let routing_error = |e: routing::RouteError| Refusal(fatal("08004", e.to_string()));
    let role = protocol::startup_param(&params, "user")
        .unwrap_or("")
        .to_string();
    let sni_endpoint = match server_name {
        Some(name) => routing::endpoint_from_sni(name, &config.domain).map_err(routing_error)?,
        None => None,
    };
    let options = protocol::startup_param(&params, "options").map(str::to_string);
    let (_, options_rest) = match &options {
        Some(options) => routing::split_options(options).map_err(routing_error)?,
        None => (None, String::new()),
    };
    let named = routing::resolve(sni_endpoint.as_deref(), options.as_deref(), None)
        .map_err(routing_error)?;

    // Without a server name or options naming the endpoint, only the password can.
    let (endpoint, cleartext) = match named {
        Some((endpoint, _)) => (endpoint, None),
        None => {
            if !tls && !config.allow_cleartext_without_tls {
                return Err(Refusal(ErrorFields {
                    hint: Some(format!(
                        "connect with TLS to <endpoint>.{}, or add options=endpoint=<endpoint id> \
                         to the connection string, or connect with TLS and give the password as \
                         endpoint=<endpoint id>;<password>",
                        config.domain
                    )),
                    ..fatal("08004", "the endpoint is not specified")
                }));
            }
            stream
                .write_all(&protocol::authentication_cleartext_password())
                .await?;
            let (tag, body) =
                protocol::read_message(stream, protocol::AUTH_MESSAGE_BYTES_MAX).await?;
            if tag != b'p' {
                return Err(Refusal(fatal(
                    "08P01",
                    format!("expected a password message, got {:?}", tag as char),
                )));
            }
            let password = protocol::parse_password(&body)?;
            let Some((endpoint, password)) = routing::split_password(&password) else {
                return Err(Refusal(ErrorFields {
                    hint: Some(format!(
                        "give the password as endpoint=<endpoint id>;<password>, connect with TLS \
                         to <endpoint>.{}, or add options=endpoint=<endpoint id>",
                        config.domain
                    )),
                    ..fatal("08004", "the endpoint is not specified")
                }));
            };
            let full = format!("endpoint={endpoint};{password}");
            routing::resolve(sni_endpoint.as_deref(), options.as_deref(), Some(&full))
                .map_err(routing_error)?;
            (endpoint, Some(password))
        }
    };

    check_lockout(state, &endpoint, source)?;
    let secret = role_secret(control, state, &endpoint, &role).await?;
    let verified = match cleartext {
        Some(password) => secret.verify_password(&password),
        None => scram_exchange(stream, secret).await?,
    };
    record_login(state, &endpoint, &role, source, verified)?;

    let mut compute_params: Vec<(String, String)> = params
        .into_iter()
        .filter(|(name, _)| name != "options")
        .collect();
    if !options_rest.is_empty() {
        compute_params.push(("options".into(), options_rest));
    }
    Ok(Session {
        endpoint,
        params: compute_params,
    })
}

/// Refuses a source locked out of an endpoint by its failed logins (28000).
fn check_lockout(state: &ProxyState, endpoint: &str, source: IpAddr) -> Result<(), Refusal> {
    state
        .failed_logins
        .lock()
        .expect("failed-logins lock")
        .check(endpoint, source, state.now_ms())
        .map_err(|retry_after_ms| {
            Refusal(fatal(
                "28000",
                format!(
                    "too many failed login attempts to endpoint {endpoint} from {source}; try again in {} s",
                    retry_after_ms.div_ceil(1000)
                ),
            ))
        })
}

/// The SCRAM secret of `role` on the endpoint's project; a mock one for an unknown role,
/// so that it fails like a wrong password. An unknown endpoint is 3D000.
async fn role_secret(
    control: &ControlHandle,
    state: &ProxyState,
    endpoint: &str,
    role: &str,
) -> Result<ScramSecret, Refusal> {
    let auth = control
        .auth(endpoint, role)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::NotFound => Refusal(fatal(
                "3D000",
                format!("endpoint {endpoint} does not exist"),
            )),
            _ => Refusal(fatal(
                "57P03",
                format!("cannot authenticate now: {}", e.message),
            )),
        })?;
    Ok(auth
        .secret
        .unwrap_or_else(|| ScramSecret::mock(role, &state.mock_seed)))
}

/// Counts a login against the failed-login limit; a failed one is refused with 28P01.
fn record_login(
    state: &ProxyState,
    endpoint: &str,
    role: &str,
    source: IpAddr,
    verified: bool,
) -> Result<(), Refusal> {
    let mut failed_logins = state.failed_logins.lock().expect("failed-logins lock");
    if verified {
        failed_logins.record_success(endpoint, source);
        return Ok(());
    }
    failed_logins.record_failure(endpoint, source, state.now_ms());
    Err(Refusal(fatal(
        "28P01",
        format!("password authentication failed for user \"{role}\""),
    )))
}

/// Runs SCRAM-SHA-256 with the client; `Ok(false)` when the proof is wrong.
async fn scram_exchange(
    stream: &mut Box<dyn ClientStream>,
    secret: ScramSecret,
) -> Result<bool, Refusal> {
    let mut exchange = ScramExchange::new(secret);
    let protocol_error = |e: ScramError| match e {
        ScramError::WrongPassword => None,
        other => Some(Refusal(fatal("08P01", other.to_string()))),
    };
    stream
        .write_all(&protocol::authentication_sasl(&["SCRAM-SHA-256"]))
        .await?;
    let (tag, body) = protocol::read_message(stream, protocol::AUTH_MESSAGE_BYTES_MAX).await?;
    if tag != b'p' {
        return Err(Refusal(fatal(
            "08P01",
            format!("expected a SASL response, got {:?}", tag as char),
        )));
    }
    let (mechanism, data) = protocol::parse_sasl_initial_response(&body)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(Refusal(fatal(
            "08P01",
            format!("client selected an invalid SASL authentication mechanism: {mechanism}"),
        )));
    }
    let server_first = match exchange.client_first(&data) {
        Ok(message) => message,
        Err(e) => return protocol_error(e).map_or(Ok(false), Err),
    };
    stream
        .write_all(&protocol::authentication_sasl_continue(&server_first))
        .await?;
    let (tag, body) = protocol::read_message(stream, protocol::AUTH_MESSAGE_BYTES_MAX).await?;
    if tag != b'p' {
        return Err(Refusal(fatal(
            "08P01",
            format!("expected a SASL response, got {:?}", tag as char),
        )));
    }
    match exchange.client_final(&body) {
        Ok(server_final) => {
            stream
                .write_all(&protocol::authentication_sasl_final(&server_final))
                .await?;
            Ok(true)
        }
        Err(e) => protocol_error(e).map_or(Ok(false), Err),
    }
}

/// Open-connection count of an endpoint, held while a connection lives.
pub(crate) struct ActivityGuard<'a> {
    activity: &'a Activity,
    endpoint: String,
}

impl Drop for ActivityGuard<'_> {
    fn drop(&mut self) {
        self.activity.close(&self.endpoint);
    }
}

/// Wakes the endpoint, starts the session on its compute and relays bytes both ways.
async fn relay(
    mut client: Box<dyn ClientStream>,
    session: Session,
    control: &ControlHandle,
    state: &ProxyState,
) -> anyhow::Result<()> {
    state.activity.open(&session.endpoint);
    let _guard = ActivityGuard {
        activity: &state.activity,
        endpoint: session.endpoint.clone(),
    };
    let mut compute = match connect_compute(control, &session.endpoint).await {
        Ok(compute) => compute,
        Err(refusal) => {
            warn!(endpoint = %session.endpoint, "cannot reach the compute: {refusal}");
            client
                .write_all(&protocol::error_response(&refusal.0))
                .await?;
            return Ok(());
        }
    };
    let addr = compute.peer_addr()?;
    compute
        .write_all(&protocol::encode_startup(&session.params))
        .await?;
    // The compute's answers up to ReadyForQuery go through one by one, to learn its cancel
    // key; then bytes are relayed as they come.
    let mut cancel_key = None;
    loop {
        let (tag, body) =
            protocol::read_message(&mut compute, COMPUTE_STARTUP_MESSAGE_BYTES_MAX).await?;
        let mut message = Vec::with_capacity(body.len() + 5);
        message.push(tag);
        message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        message.extend_from_slice(&body);
        client.write_all(&message).await?;
        match tag {
            b'K' if body.len() == 8 => {
                let key = (
                    i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                );
                state
                    .cancel_keys
                    .lock()
                    .expect("cancel-key lock")
                    .insert(key, addr);
                cancel_key = Some(key);
            }
            b'Z' | b'E' => break,
            _ => {}
        }
    }
    let result = tokio::io::copy_bidirectional(&mut client, &mut compute).await;
    if let Some(key) = cancel_key {
        state
            .cancel_keys
            .lock()
            .expect("cancel-key lock")
            .remove(&key);
    }
    result.map(|_| ()).map_err(Into::into)
}

/// The control plane's wake-up call, and a connection to the compute, retried a few times
/// (a compute that died since the control plane last looked is started again).
pub(crate) async fn connect_compute(
    control: &ControlHandle,
    endpoint: &str,
) -> Result<TcpStream, Refusal> {
    let mut last = String::new();
    for attempt in 1..=WAKE_ATTEMPTS_MAX {
        match control.wake(endpoint).await {
            Ok(addr) => {
                match tokio::time::timeout(
                    Duration::from_millis(COMPUTE_CONNECT_TIMEOUT_MS),
                    TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(stream);
                    }
                    Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
                    Err(_) => last = format!("connecting to {addr} timed out"),
                }
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(Refusal(fatal(
                    "3D000",
                    format!("endpoint {endpoint} does not exist"),
                )))
            }
            Err(e) => last = e.message,
        }
        if attempt < WAKE_ATTEMPTS_MAX {
            tokio::time::sleep(Duration::from_millis(WAKE_RETRY_DELAY_MS)).await;
        }
    }
    Err(Refusal(fatal(
        "57P03",
        format!("the compute of endpoint {endpoint} is not available: {last}"),
    )))
}

async fn forward_cancel(state: &ProxyState, process_id: i32, secret_key: i32) {
    let addr = state
        .cancel_keys
        .lock()
        .expect("cancel-key lock")
        .get(&(process_id, secret_key))
        .copied();
    // An unknown key is ignored without an answer, as PostgreSQL does.
    if let Some(addr) = addr {
        if let Ok(Ok(mut stream)) = tokio::time::timeout(
            Duration::from_millis(COMPUTE_CONNECT_TIMEOUT_MS),
            TcpStream::connect(addr),
        )
        .await
        {
            let _ = stream
                .write_all(&protocol::encode_cancel(process_id, secret_key))
                .await;
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte).await;
        }
    }
}
