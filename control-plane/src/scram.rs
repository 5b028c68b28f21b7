//! The server side of SCRAM-SHA-256 (RFC 5802 with RFC 7677's SHA-256), as PostgreSQL 15's
//! `auth-scram.c` does it.
//!
//! The proxy authenticates clients (psql, libpq, tokio-postgres) against a stored
//! [`ScramSecret`] with a [`ScramExchange`]; the control plane makes secrets from passwords
//! with [`ScramSecret::from_password`] and stores their text form, which is the same as
//! PostgreSQL's `pg_authid.rolpassword`. This module is pure computation: it does no I/O and
//! knows nothing of the wire protocol's framing. The caller carries the SASL payloads
//! (`AuthenticationSASL`, `SASLInitialResponse`, `AuthenticationSASLContinue`,
//! `SASLResponse`, `AuthenticationSASLFinal`) to and from the client.
//!
//! ```text
//!   client                                            server (ScramExchange)
//!     |  SASLInitialResponse "SCRAM-SHA-256":            |
//!     |    client-first  n,,n=,r=<cnonce>  ------------> |  client_first()
//!     |                                                  |
//!     |  <------------ server-first  r=<cnonce><snonce>, |
//!     |                              s=<salt>,i=<iters>  |
//!     |  SASLResponse:                                   |
//!     |    client-final  c=biws,r=<cnonce><snonce>,      |
//!     |                  p=<proof>  -------------------> |  client_final()
//!     |                                                  |    checks the proof
//!     |  <------------------ server-final  v=<signature> |
//!     |  (the client checks the signature, so it knows   |
//!     |   the server holds the secret too)               |
//! ```
//!
//! Not supported: channel binding (`SCRAM-SHA-256-PLUS`, gs2 flag `p=`). Binding the
//! exchange to the TLS channel needs the TLS server certificate's hash
//! (`tls-server-end-point`) at this layer, and the proxy does not offer the `-PLUS`
//! mechanism, so a client asking for it is refused; a client that could bind but saw no
//! `-PLUS` offer says `y,,`, which is accepted, as PostgreSQL does when it offers no `-PLUS`.
//! Authorization identities (`a=`) and mandatory extensions (`m=`) are refused, as
//! PostgreSQL does.

use std::fmt;
use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

/// Iterations PostgreSQL 15 uses for new secrets (its `scram_iterations` default).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// Salt length in bytes PostgreSQL uses (`SCRAM_DEFAULT_SALT_LEN`).
pub const SCRAM_SALT_BYTES: usize = 16;

/// The longest SCRAM message accepted from a client, in bytes. Real messages are far
/// shorter (libpq's client-final is about 110 bytes, and PostgreSQL role names are at most
/// 63 bytes), so this only bounds the work a hostile client can ask for.
pub const SCRAM_MESSAGE_BYTES_MAX: usize = 1024;

/// Random bytes in the server's nonce, before base64 (PostgreSQL's `SCRAM_RAW_NONCE_LEN`).
pub const SCRAM_SERVER_NONCE_BYTES: usize = 18;

/// Length in bytes of SHA-256 output, and so of every SCRAM key, signature and proof.
const SCRAM_KEY_BYTES: usize = 32;

/// The prefix of PostgreSQL's text form of a SCRAM-SHA-256 secret.
const SECRET_PREFIX: &str = "SCRAM-SHA-256$";

/// A stored SCRAM-SHA-256 secret: what the server keeps instead of the password.
///
/// Knowing it lets a server check a client's proof, but not compute one, because a proof
/// needs `ClientKey`, and the secret holds only its hash (`StoredKey`).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iterations; never zero, which the type makes sure of.
    iterations: NonZeroU32,
    salt: Vec<u8>,
    /// SHA-256(ClientKey).
    stored_key: [u8; SCRAM_KEY_BYTES],
    /// HMAC(SaltedPassword, "Server Key").
    server_key: [u8; SCRAM_KEY_BYTES],
}

impl ScramSecret {
    /// Makes a secret from a password with a fresh random salt and [`SCRAM_ITERATIONS`].
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails, which leaves no safe way to
    /// make a salt.
    pub fn from_password(password: &str) -> ScramSecret {
        let mut salt = [0u8; SCRAM_SALT_BYTES];
        fill_random(&mut salt);
        ScramSecret::from_password_with(password, &salt, SCRAM_ITERATIONS)
    }

    /// Makes a secret from a password with the given salt and iteration count.
    ///
    /// # Panics
    ///
    /// If `iterations` is 0, which PBKDF2 does not define; callers pass constants.
    pub fn from_password_with(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let iterations =
            NonZeroU32::new(iterations).expect("SCRAM needs at least one PBKDF2 iteration");
        let (stored_key, server_key) = derive_keys(password, salt, iterations);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key,
            server_key,
        }
    }

    /// A secret nobody knows the password of, the same for the same `role` and `seed`.
    ///
    /// The proxy runs the exchange for a role that does not exist with this secret, so the
    /// client sees the same messages (a salt that does not change between attempts, the
    /// usual iteration count) and the same failure as for a wrong password, and so cannot
    /// tell which roles exist; PostgreSQL does the same (`scram_mock_salt`). `seed` should
    /// be a secret random value kept for the life of the server: were it known, a client
    /// could compute the mock salt and tell a mock from a real role.
    ///
    /// Each part is HMAC-SHA-256 keyed with `seed` over a label and the role name; the keys
    /// are not derived from any password, and finding a `ClientKey` that hashes to the mock
    /// `StoredKey` means inverting SHA-256, so no proof matches.
    pub fn mock(role: &str, seed: &[u8]) -> ScramSecret {
        let key = hmac::Key::new(hmac::HMAC_SHA256, seed);
        let part = |label: &[u8]| -> [u8; SCRAM_KEY_BYTES] {
            // The label and the role are separated by a NUL, which neither contains, so
            // that different (label, role) pairs never give the same input.
            let mut context = hmac::Context::with_key(&key);
            context.update(label);
            context.update(&[0]);
            context.update(role.as_bytes());
            to_key(context.sign().as_ref())
        };
        let salt = part(b"omendb scram mock salt");
        ScramSecret {
            iterations: NonZeroU32::new(SCRAM_ITERATIONS)
                .expect("SCRAM_ITERATIONS is a non-zero constant"),
            salt: salt[..SCRAM_SALT_BYTES].to_vec(),
            stored_key: part(b"omendb scram mock stored key"),
            server_key: part(b"omendb scram mock server key"),
        }
    }

    /// Parses PostgreSQL's text form,
    /// `SCRAM-SHA-256$<iterations>:<salt base64>$<StoredKey base64>:<ServerKey base64>`.
    ///
    /// The error never quotes the text, since it is a secret.
    pub fn parse(text: &str) -> Result<ScramSecret, ScramError> {
        let bad = |why: &str| ScramError::BadSecret(why.to_owned());
        let rest = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| bad("it does not start with \"SCRAM-SHA-256$\""))?;
        let (parameters, keys) = rest
            .split_once('$')
            .ok_or_else(|| bad("it has no '$' between the parameters and the keys"))?;
        let (iterations, salt) = parameters
            .split_once(':')
            .ok_or_else(|| bad("it has no ':' between the iteration count and the salt"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or_else(|| bad("it has no ':' between StoredKey and ServerKey"))?;

        // `u32::from_str` would also take a leading '+', which PostgreSQL never writes.
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the iteration count is not a decimal number"));
        }
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| bad("the iteration count is zero or too large"))?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| bad("the salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(bad("the salt is empty"));
        }
        let decode_key = |text: &str, name: &str| -> Result<[u8; SCRAM_KEY_BYTES], ScramError> {
            let bytes = STANDARD
                .decode(text)
                .map_err(|_| ScramError::BadSecret(format!("{name} is not valid base64")))?;
            <[u8; SCRAM_KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
                ScramError::BadSecret(format!(
                    "{name} is {} bytes long, not {SCRAM_KEY_BYTES}",
                    bytes.len()
                ))
            })
        };
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: decode_key(stored_key, "StoredKey")?,
            server_key: decode_key(server_key, "ServerKey")?,
        })
    }

    /// Checks a cleartext password against the secret, in constant time in the keys (for
    /// the proxy's cleartext fallback and for SQL over HTTP).
    ///
    /// This runs PBKDF2, so it costs as much as making the secret.
    pub fn verify_password(&self, password: &str) -> bool {
        let (stored_key, server_key) = derive_keys(password, &self.salt, self.iterations);
        // `&` rather than `&&`, so that both comparisons always run.
        constant_time_eq(&stored_key, &self.stored_key)
            & constant_time_eq(&server_key, &self.server_key)
    }

    /// The PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations.get()
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
}

/// Writes PostgreSQL's text form, which [`ScramSecret::parse`] reads back.
impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SECRET_PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

/// Shows only the iteration count, so that secrets never reach logs through `{:?}`.
impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// What went wrong in an exchange or with a stored secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message is malformed or out of order (a protocol violation: SQLSTATE
    /// 08P01 upstream).
    #[error("SCRAM protocol violation: {0}")]
    Protocol(String),
    /// The proof does not match: wrong password (SQLSTATE 28P01 upstream).
    #[error("password authentication failed")]
    WrongPassword,
    /// A stored secret that does not parse.
    #[error("invalid SCRAM secret: {0}")]
    BadSecret(String),
}

fn protocol(why: impl Into<String>) -> ScramError {
    ScramError::Protocol(why.into())
}

/// One server-side exchange: [`ScramExchange::client_first`], then
/// [`ScramExchange::client_final`], each exactly once.
pub struct ScramExchange {
    secret: ScramSecret,
    server_nonce: String,
    state: State,
}

/// Where an exchange is. Every step starts by putting `Failed` in place, and puts the next
/// state back only when it succeeds, so that any error leaves the exchange failed.
enum State {
    /// Waiting for the client-first-message.
    Initial,
    /// Sent the server-first-message; waiting for the client-final-message.
    SentServerFirst {
        /// The gs2 header the client sent (`n,,` or `y,,`), which `c=` must repeat.
        gs2_header: &'static str,
        client_first_bare: String,
        server_first: String,
        /// The client's nonce followed by the server's, which `r=` must repeat.
        combined_nonce: String,
    },
    /// The proof was right; the client is authenticated.
    Authenticated,
    /// A step failed or came out of order; every later step fails too.
    Failed,
}

impl ScramExchange {
    /// Starts an exchange with a fresh server nonce: [`SCRAM_SERVER_NONCE_BYTES`] random
    /// bytes, base64, as PostgreSQL makes it.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn new(secret: ScramSecret) -> ScramExchange {
        let mut nonce = [0u8; SCRAM_SERVER_NONCE_BYTES];
        fill_random(&mut nonce);
        ScramExchange::with_nonce(secret, STANDARD.encode(nonce))
    }

    /// Starts an exchange with the given server nonce, which is appended to the client's;
    /// for tests with known answers. It must be printable ASCII without commas.
    pub fn with_nonce(secret: ScramSecret, server_nonce: String) -> ScramExchange {
        debug_assert!(
            !server_nonce.is_empty() && server_nonce.bytes().all(is_printable),
            "a SCRAM nonce must be printable ASCII without commas"
        );
        ScramExchange {
            secret,
            server_nonce,
            state: State::Initial,
        }
    }

    /// Whether the client has proven it knows the password.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated)
    }

    /// Takes the client-first-message (the data of `SASLInitialResponse`) and returns the
    /// server-first-message (`r=<client nonce><server nonce>,s=<salt>,i=<iterations>`).
    pub fn client_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Initial => {}
            _ => return Err(protocol("unexpected client-first-message")),
        }
        let message = message_text(message, "client-first-message")?;
        let client_first = parse_client_first(message)?;
        let combined_nonce = format!("{}{}", client_first.nonce, self.server_nonce);
        let server_first = format!(
            "r={combined_nonce},s={},i={}",
            STANDARD.encode(&self.secret.salt),
            self.secret.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::SentServerFirst {
            gs2_header: client_first.gs2_header,
            client_first_bare: client_first.bare.to_owned(),
            server_first,
            combined_nonce,
        };
        Ok(reply)
    }

    /// Takes the client-final-message (the data of `SASLResponse`) and, when its proof is
    /// right, returns the server-final-message (`v=<server signature>`).
    pub fn client_final(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let (gs2_header, client_first_bare, server_first, combined_nonce) =
            match std::mem::replace(&mut self.state, State::Failed) {
                State::SentServerFirst {
                    gs2_header,
                    client_first_bare,
                    server_first,
                    combined_nonce,
                } => (gs2_header, client_first_bare, server_first, combined_nonce),
                _ => return Err(protocol("unexpected client-final-message")),
            };
        let message = message_text(message, "client-final-message")?;
        let client_final = parse_client_final(message)?;

        // PostgreSQL compares the text, not the decoded bytes, and so do we: a client
        // without channel binding sends exactly base64 of the header it sent before.
        if client_final.channel_binding != STANDARD.encode(gs2_header) {
            return Err(protocol(
                "the channel binding attribute (c=) does not match the gs2 header of the \
                 client-first-message",
            ));
        }
        if client_final.nonce != combined_nonce {
            return Err(protocol(
                "the nonce (r=) does not match the one the server sent",
            ));
        }
        let proof = STANDARD
            .decode(client_final.proof)
            .map_err(|_| protocol("the proof (p=) is not valid base64"))?;
        let proof = <[u8; SCRAM_KEY_BYTES]>::try_from(proof.as_slice()).map_err(|_| {
            protocol(format!(
                "the proof (p=) is {} bytes long, not {SCRAM_KEY_BYTES}",
                proof.len()
            ))
        })?;

        let auth_message = format!(
            "{client_first_bare},{server_first},{}",
            client_final.without_proof
        );
        let stored_key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret.stored_key);
        let client_signature = hmac::sign(&stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (byte, signature) in client_key.iter_mut().zip(client_signature.as_ref()) {
            *byte ^= signature;
        }
        let client_key_hash = to_key(digest::digest(&digest::SHA256, &client_key).as_ref());
        if !constant_time_eq(&client_key_hash, &self.secret.stored_key) {
            return Err(ScramError::WrongPassword);
        }

        let server_key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret.server_key);
        let server_signature = hmac::sign(&server_key, auth_message.as_bytes());
        self.state = State::Authenticated;
        Ok(format!("v={}", STANDARD.encode(server_signature.as_ref())).into_bytes())
    }
}

/// Shows only where the exchange is, never the secret or the nonces.
impl fmt::Debug for ScramExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "Initial",
            State::SentServerFirst { .. } => "SentServerFirst",
            State::Authenticated => "Authenticated",
            State::Failed => "Failed",
        };
        f.debug_struct("ScramExchange")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The parts of a client-first-message the server uses.
struct ClientFirst<'a> {
    /// `n,,` or `y,,`.
    gs2_header: &'static str,
    /// The client-first-message-bare, which goes into the AuthMessage.
    bare: &'a str,
    nonce: &'a str,
}

/// Parses `gs2-header client-first-message-bare`, where the gs2 header is `n,,` or `y,,`
/// and the bare part is `n=<user>,r=<nonce>[,<extensions>]`.
fn parse_client_first(message: &str) -> Result<ClientFirst<'_>, ScramError> {
    let bytes = message.as_bytes();
    let gs2_header = match bytes.first() {
        Some(b'n') => "n,,",
        Some(b'y') => "y,,",
        Some(b'p') => {
            return Err(protocol(
                "the client requires channel binding (SCRAM-SHA-256-PLUS), which is not \
                 supported",
            ))
        }
        _ => return Err(protocol("the channel binding flag is not 'n', 'y' or 'p'")),
    };
    if bytes.get(1) != Some(&b',') {
        return Err(protocol("the channel binding flag is not followed by ','"));
    }
    match bytes.get(2) {
        Some(b',') => {}
        Some(b'a') => {
            return Err(protocol(
                "the client uses an authorization identity (a=), which is not supported",
            ))
        }
        _ => return Err(protocol("the gs2 header does not end with ','")),
    }
    // The first three bytes are ASCII, so index 3 is a character boundary.
    let bare = &message[3..];
    let mut attributes = bare.split(',');

    match attribute(attributes.next())? {
        ('n', _) => {
            // The user name is ignored: PostgreSQL authenticates the user named in the
            // startup message, and libpq sends an empty `n=`.
        }
        ('m', _) => {
            return Err(protocol(
                "the client requires an unsupported SCRAM extension (m=)",
            ))
        }
        _ => return Err(protocol("the user name attribute (n=) is missing")),
    }
    let nonce = match attribute(attributes.next()) {
        Ok(('r', nonce)) => nonce,
        _ => return Err(protocol("the nonce attribute (r=) is missing")),
    };
    if nonce.is_empty() || !nonce.bytes().all(is_printable) {
        return Err(protocol(
            "the client nonce is empty or not printable ASCII without commas",
        ));
    }
    // Optional extensions may follow; like PostgreSQL, the server checks their form and
    // ignores them (the RFC defines none).
    for extension in attributes {
        attribute(Some(extension))?;
    }
    Ok(ClientFirst {
        gs2_header,
        bare,
        nonce,
    })
}

/// The parts of a client-final-message the server uses.
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    proof: &'a str,
    /// The message up to, not including, `,p=`, which goes into the AuthMessage.
    without_proof: &'a str,
}

/// Parses `c=<binding>,r=<nonce>[,<extensions>],p=<proof>`.
fn parse_client_final(message: &str) -> Result<ClientFinal<'_>, ScramError> {
    let (without_proof, proof) = message
        .rsplit_once(',')
        .ok_or_else(|| protocol("the client-final-message has too few attributes"))?;
    let proof = match attribute(Some(proof)) {
        Ok(('p', proof)) => proof,
        _ => return Err(protocol("the proof attribute (p=) is not last")),
    };
    let mut attributes = without_proof.split(',');
    let channel_binding = match attribute(attributes.next()) {
        Ok(('c', value)) => value,
        _ => return Err(protocol("the channel binding attribute (c=) is missing")),
    };
    let nonce = match attribute(attributes.next()) {
        Ok(('r', value)) => value,
        _ => return Err(protocol("the nonce attribute (r=) is missing")),
    };
    // Extensions between the nonce and the proof are checked for form and ignored, as
    // PostgreSQL does; a second proof among them would make "the proof is last" ambiguous.
    for extension in attributes {
        if attribute(Some(extension))?.0 == 'p' {
            return Err(protocol("the client-final-message has more than one proof"));
        }
    }
    Ok(ClientFinal {
        channel_binding,
        nonce,
        proof,
        without_proof,
    })
}

/// Splits one `<letter>=<value>` attribute into its name and value.
fn attribute(part: Option<&str>) -> Result<(char, &str), ScramError> {
    let part = part.ok_or_else(|| protocol("an attribute is missing"))?;
    let bytes = part.as_bytes();
    match (bytes.first(), bytes.get(1)) {
        (Some(&name), Some(b'=')) if name.is_ascii_alphabetic() => {
            // Both bytes are ASCII, so index 2 is a character boundary.
            Ok((char::from(name), &part[2..]))
        }
        _ => Err(protocol("an attribute is not of the form <letter>=<value>")),
    }
}

/// Checks a client message's length and encoding and returns it as text.
fn message_text<'a>(message: &'a [u8], name: &str) -> Result<&'a str, ScramError> {
    if message.len() > SCRAM_MESSAGE_BYTES_MAX {
        return Err(protocol(format!(
            "the {name} is {} bytes long, more than the {SCRAM_MESSAGE_BYTES_MAX} allowed",
            message.len()
        )));
    }
    std::str::from_utf8(message).map_err(|_| protocol(format!("the {name} is not UTF-8")))
}

/// RFC 5802's `printable`: ASCII from '!' to '~' except ','.
fn is_printable(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~') && byte != b','
}

/// Derives (StoredKey, ServerKey) from a password:
///
/// ```text
/// SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations, 32 bytes)
/// ClientKey      = HMAC(SaltedPassword, "Client Key")
/// StoredKey      = SHA-256(ClientKey)
/// ServerKey      = HMAC(SaltedPassword, "Server Key")
/// ```
///
/// The password is used as its UTF-8 bytes. PostgreSQL (and libpq) first apply SASLprep
/// (RFC 4013), which leaves ASCII passwords unchanged; a non-ASCII password that SASLprep
/// would normalize (for example one with compatibility characters or non-ASCII spaces)
/// gives a different secret here than in PostgreSQL.
fn derive_keys(
    password: &str,
    salt: &[u8],
    iterations: NonZeroU32,
) -> ([u8; SCRAM_KEY_BYTES], [u8; SCRAM_KEY_BYTES]) {
    let mut salted_password = [0u8; SCRAM_KEY_BYTES];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut salted_password,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted_password);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = to_key(digest::digest(&digest::SHA256, client_key.as_ref()).as_ref());
    let server_key = to_key(hmac::sign(&key, b"Server Key").as_ref());
    (stored_key, server_key)
}

/// Copies a SHA-256 output (HMAC tag or digest) into a fixed-size array.
fn to_key(bytes: &[u8]) -> [u8; SCRAM_KEY_BYTES] {
    let mut key = [0u8; SCRAM_KEY_BYTES];
    key.copy_from_slice(bytes);
    key
}

/// Compares two keys in time that does not depend on where they differ, so that timing
/// tells an attacker nothing about how close a guess was.
fn constant_time_eq(a: &[u8; SCRAM_KEY_BYTES], b: &[u8; SCRAM_KEY_BYTES]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimizer from turning the fold into an early-exit loop.
    std::hint::black_box(difference) == 0
}

/// What a client's side of the exchange computes, from the password and the
/// server-first-message: the client-final-message to send and the server-final-message a
/// server that knows the secret must answer.
#[derive(Debug)]
pub struct ClientProof {
    pub client_final: String,
    pub expected_server_final: String,
}

/// A fresh client nonce (printable, no commas): 18 random bytes in base64.
pub fn client_nonce() -> String {
    let mut bytes = [0u8; 18];
    fill_random(&mut bytes);
    STANDARD.encode(bytes)
}

/// The client side of SCRAM-SHA-256 (RFC 5802/7677) after the server-first-message:
/// checks that the server's nonce extends the client's (from `client_first_bare`), then
/// derives the proof from `password`. `gs2_header` is what the client-first-message began
/// with (`n,,` without channel binding).
pub fn client_proof(
    password: &str,
    gs2_header: &str,
    client_first_bare: &str,
    server_first: &str,
) -> Result<ClientProof, ScramError> {
    let client_nonce = client_first_bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .ok_or_else(|| protocol("the client-first-message has no nonce"))?;
    let mut nonce = None;
    let mut salt = None;
    let mut iterations = None;
    for attribute in server_first.split(',') {
        match attribute.split_at_checked(2) {
            Some(("r=", value)) => nonce = Some(value),
            Some(("s=", value)) => {
                salt = Some(
                    STANDARD
                        .decode(value)
                        .map_err(|_| protocol("the server's salt is not base64"))?,
                )
            }
            Some(("i=", value)) => {
                iterations = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .and_then(NonZeroU32::new)
                        .ok_or_else(|| {
                            protocol("the server's iteration count is not a positive number")
                        })?,
                )
            }
            _ => {
                return Err(protocol(format!(
                    "unexpected attribute in server-first-message: {attribute:?}"
                )))
            }
        }
    }
    let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
        return Err(protocol("the server-first-message lacks r=, s= or i="));
    };
    if !nonce.starts_with(client_nonce) || nonce.len() == client_nonce.len() {
        return Err(protocol("the server's nonce does not extend the client's"));
    }
    let mut salted_password = [0u8; SCRAM_KEY_BYTES];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut salted_password,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted_password);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");

    let without_proof = format!("c={},r={nonce}", STANDARD.encode(gs2_header));
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
        auth_message.as_bytes(),
    );
    let proof: Vec<u8> = client_key
        .as_ref()
        .iter()
        .zip(client_signature.as_ref())
        .map(|(k, s)| k ^ s)
        .collect();
    let server_signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
        auth_message.as_bytes(),
    );
    Ok(ClientProof {
        client_final: format!("{without_proof},p={}", STANDARD.encode(proof)),
        expected_server_final: format!("v={}", STANDARD.encode(server_signature.as_ref())),
    })
}

/// Fills `bytes` from the operating system's random number generator.
fn fill_random(bytes: &mut [u8]) {
    SystemRandom::new()
        .fill(bytes)
        .expect("the operating system's random number generator failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

    /// The secret of RFC 7677 section 3's example.
    fn rfc_secret() -> ScramSecret {
        let salt = STANDARD.decode(RFC_SALT).expect("the RFC's salt is base64");
        ScramSecret::from_password_with("pencil", &salt, 4096)
    }

    #[test]
    fn rfc_7677_test_vector() {
        let mut exchange = ScramExchange::with_nonce(rfc_secret(), RFC_SERVER_NONCE.to_owned());
        let server_first = exchange
            .client_first(format!("n,,n=user,r={RFC_CLIENT_NONCE}").as_bytes())
            .expect("client-first is accepted");
        assert_eq!(
            String::from_utf8(server_first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        assert!(!exchange.is_authenticated());
        let server_final = exchange
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .expect("the RFC's proof is right");
        assert_eq!(
            String::from_utf8(server_final).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(exchange.is_authenticated());
        assert!(rfc_secret().verify_password("pencil"));
    }

    /// Produced by PostgreSQL 15.18 (Debian 15.18-0+deb12u1): `initdb` into a scratch
    /// folder, then with `SET password_encryption = 'scram-sha-256'` ran
    /// `CREATE ROLE r PASSWORD 'pencil'` and
    /// `SELECT rolpassword FROM pg_authid WHERE rolname = 'r'`.
    const POSTGRES_15_SECRET: &str = "SCRAM-SHA-256$4096:JnQSblYyQiLU8jXX5SPUoA==$\
        xp7oJD76hMFr8OcINNUk/N5t8sG5yrTSPS5+8NQOTFY=:\
        xXVsYn/2BImJka/6Ppzgv6qVkxSxXPA/zdqkDZjCSSU=";

    #[test]
    fn postgres_secret_parses_and_verifies() {
        let secret = ScramSecret::parse(POSTGRES_15_SECRET).expect("PostgreSQL's secret parses");
        assert_eq!(secret.iterations(), 4096);
        assert_eq!(secret.salt().len(), SCRAM_SALT_BYTES);
        assert!(secret.verify_password("pencil"));
        assert!(!secret.verify_password("pencil "));
        assert!(!secret.verify_password("Pencil"));
        assert!(!secret.verify_password(""));
        assert_eq!(secret.to_string(), POSTGRES_15_SECRET);
        // The same password and salt make the same secret here as in PostgreSQL.
        let remade = ScramSecret::from_password_with("pencil", secret.salt(), 4096);
        assert_eq!(remade, secret);
        // A full exchange against PostgreSQL's secret works too.
        assert_eq!(run_exchange(secret.clone(), "pencil", "n,,"), Ok(()));
        assert_eq!(
            run_exchange(secret, "pencil2", "n,,"),
            Err(ScramError::WrongPassword)
        );
    }

    /// Runs a whole exchange with a fresh random server nonce, as a client knowing
    /// `password` would, and checks the server's signature when the server accepts.
    fn run_exchange(
        secret: ScramSecret,
        password: &str,
        gs2_header: &str,
    ) -> Result<(), ScramError> {
        let mut exchange = ScramExchange::new(secret);
        let client_first_bare = "n=,r=fyko+d2lbbFgONRv9qkxdawL";
        let server_first =
            exchange.client_first(format!("{gs2_header}{client_first_bare}").as_bytes())?;
        let server_first = String::from_utf8(server_first).expect("server-first is UTF-8");
        assert!(server_first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"));
        let proof = client_proof(password, gs2_header, client_first_bare, &server_first)
            .expect("the server-first-message is well formed");
        let result = exchange.client_final(proof.client_final.as_bytes());
        assert_eq!(exchange.is_authenticated(), result.is_ok());
        let server_final = result?;
        assert_eq!(
            String::from_utf8(server_final).expect("server-final is UTF-8"),
            proof.expected_server_final,
            "the server's signature proves it holds the secret"
        );
        Ok(())
    }

    #[test]
    fn full_exchange_right_and_wrong_password() {
        let secret = ScramSecret::from_password("correct horse battery staple");
        assert_eq!(
            run_exchange(secret.clone(), "correct horse battery staple", "n,,"),
            Ok(())
        );
        assert_eq!(
            run_exchange(secret.clone(), "correct horse battery staple", "y,,"),
            Ok(())
        );
        assert_eq!(
            run_exchange(secret.clone(), "correct horse battery stapler", "n,,"),
            Err(ScramError::WrongPassword)
        );
        assert_eq!(
            run_exchange(secret, "", "n,,"),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn mock_secret_always_fails_the_same_way() {
        let seed = b"a secret seed of the proxy";
        let mock = ScramSecret::mock("nobody", seed);
        assert_eq!(mock, ScramSecret::mock("nobody", seed), "stable for a role");
        assert_ne!(mock.salt(), ScramSecret::mock("somebody", seed).salt());
        assert_ne!(
            mock.salt(),
            ScramSecret::mock("nobody", b"another seed").salt()
        );
        assert_eq!(mock.iterations(), SCRAM_ITERATIONS);
        assert_eq!(mock.salt().len(), SCRAM_SALT_BYTES);
        for password in ["", "pencil", "nobody", "a secret seed of the proxy"] {
            assert_eq!(
                run_exchange(mock.clone(), password, "n,,"),
                Err(ScramError::WrongPassword)
            );
            assert!(!mock.verify_password(password));
        }
        // The mock also survives the text form, as a stored secret would.
        assert_eq!(ScramSecret::parse(&mock.to_string()), Ok(mock));
    }

    #[test]
    fn from_password_round_trips_and_salts_differ() {
        let first = ScramSecret::from_password("pencil");
        let second = ScramSecret::from_password("pencil");
        assert_eq!(first.iterations(), SCRAM_ITERATIONS);
        assert_eq!(first.salt().len(), SCRAM_SALT_BYTES);
        assert_ne!(first.salt(), second.salt());
        assert_ne!(first, second);
        let text = first.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"));
        let parsed = ScramSecret::parse(&text).expect("our own text form parses");
        assert_eq!(parsed, first);
        assert_eq!(parsed.to_string(), text);
        assert!(parsed.verify_password("pencil"));
        assert!(!parsed.verify_password("pencils"));
    }

    #[test]
    fn debug_does_not_show_keys() {
        let secret = rfc_secret();
        let shown = format!("{secret:?}");
        assert_eq!(shown, "ScramSecret { iterations: 4096, .. }");
        let exchange = ScramExchange::with_nonce(secret, RFC_SERVER_NONCE.to_owned());
        let shown = format!("{exchange:?}");
        assert!(!shown.contains(RFC_SERVER_NONCE));
        assert!(shown.contains("Initial"));
    }

    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_COMBINED_NONCE: &str = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    fn rfc_exchange() -> ScramExchange {
        ScramExchange::with_nonce(rfc_secret(), RFC_SERVER_NONCE.to_owned())
    }

    fn assert_protocol(result: Result<Vec<u8>, ScramError>, case: &str) {
        match result {
            Err(ScramError::Protocol(_)) => {}
            other => panic!("{case}: expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_client_first_is_refused() {
        let oversized = format!("n,,n=,r={}", "a".repeat(SCRAM_MESSAGE_BYTES_MAX));
        let cases: &[(&str, &[u8])] = &[
            (
                "channel binding",
                b"p=tls-server-end-point,,n=,r=rOprNGfwEbeRWgbNEkqO",
            ),
            ("authzid", b"n,a=admin,n=,r=rOprNGfwEbeRWgbNEkqO"),
            ("missing nonce", b"n,,n=user"),
            ("empty nonce", b"n,,n=user,r="),
            ("nonce not printable", b"n,,n=user,r=abc def"),
            ("nonce not first after user", b"n,,n=user,x=1,r=abc"),
            ("missing user", b"n,,r=rOprNGfwEbeRWgbNEkqO"),
            ("mandatory extension", b"n,,m=ext,n=,r=rOprNGfwEbeRWgbNEkqO"),
            ("unknown flag", b"x,,n=,r=abc"),
            ("flag without comma", b"n"),
            ("header without second comma", b"n,n=,r=abc"),
            ("empty", b""),
            ("trailing comma", b"n,,n=,r=abc,"),
            ("malformed extension", b"n,,n=,r=abc,extension"),
            ("oversized", oversized.as_bytes()),
            ("not UTF-8", b"n,,n=\xff\xfe,r=abc"),
        ];
        for (case, message) in cases {
            let mut exchange = rfc_exchange();
            assert_protocol(exchange.client_first(message), case);
            // The exchange stays failed, even for a message that would have been good.
            assert_protocol(exchange.client_first(RFC_CLIENT_FIRST.as_bytes()), case);
            assert!(!exchange.is_authenticated());
        }
        let mut exchange = rfc_exchange();
        match exchange.client_first(b"p=tls-server-end-point,,n=,r=abc") {
            Err(ScramError::Protocol(why)) => assert!(why.contains("channel binding"), "{why}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_client_final_is_refused() {
        let right = format!("c=biws,r={RFC_COMBINED_NONCE},p={RFC_PROOF}");
        let oversized = format!("{right}{}", "A".repeat(SCRAM_MESSAGE_BYTES_MAX));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "wrong c=",
                format!("c=eSws,r={RFC_COMBINED_NONCE},p={RFC_PROOF}").into(),
            ),
            (
                "c= not base64 of the header",
                format!("c=bix,r={RFC_COMBINED_NONCE},p={RFC_PROOF}").into(),
            ),
            (
                "c= with channel binding data",
                format!("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r={RFC_COMBINED_NONCE},p={RFC_PROOF}")
                    .into(),
            ),
            (
                "missing c=",
                format!("r={RFC_COMBINED_NONCE},p={RFC_PROOF}").into(),
            ),
            (
                "wrong combined nonce",
                format!("c=biws,r={RFC_CLIENT_NONCE}x,p={RFC_PROOF}").into(),
            ),
            (
                "client nonce only",
                format!("c=biws,r={RFC_CLIENT_NONCE},p={RFC_PROOF}").into(),
            ),
            ("missing nonce", format!("c=biws,p={RFC_PROOF}").into()),
            (
                "proof not base64",
                format!("c=biws,r={RFC_COMBINED_NONCE},p=not*base64").into(),
            ),
            (
                "proof too short",
                format!("c=biws,r={RFC_COMBINED_NONCE},p=AAAA").into(),
            ),
            (
                "proof too long",
                format!(
                    "c=biws,r={RFC_COMBINED_NONCE},p={}",
                    STANDARD.encode([0u8; 33])
                )
                .into(),
            ),
            (
                "proof not last",
                format!("c=biws,r={RFC_COMBINED_NONCE},p={RFC_PROOF},x=1").into(),
            ),
            (
                "two proofs",
                format!("c=biws,r={RFC_COMBINED_NONCE},p={RFC_PROOF},p={RFC_PROOF}").into(),
            ),
            (
                "missing proof",
                format!("c=biws,r={RFC_COMBINED_NONCE}").into(),
            ),
            ("empty", Vec::new()),
            ("oversized", oversized.into_bytes()),
            ("not UTF-8", b"c=biws,r=\xff,p=AAAA".to_vec()),
        ];
        for (case, message) in &cases {
            let mut exchange = rfc_exchange();
            exchange
                .client_first(RFC_CLIENT_FIRST.as_bytes())
                .expect("the RFC's client-first is accepted");
            assert_protocol(exchange.client_final(message), case);
            // The exchange stays failed, even for the right proof.
            assert_protocol(exchange.client_final(right.as_bytes()), case);
            assert!(!exchange.is_authenticated());
        }
        // A `y,,` client must repeat `y,,` in c=.
        let mut exchange = rfc_exchange();
        exchange
            .client_first(format!("y,,n=user,r={RFC_CLIENT_NONCE}").as_bytes())
            .expect("y,, is accepted");
        assert_protocol(exchange.client_final(right.as_bytes()), "y,, then c=biws");
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        let right = format!("c=biws,r={RFC_COMBINED_NONCE},p={RFC_PROOF}");

        let mut exchange = rfc_exchange();
        assert_protocol(
            exchange.client_final(right.as_bytes()),
            "final before first",
        );
        assert_protocol(
            exchange.client_first(RFC_CLIENT_FIRST.as_bytes()),
            "first after a failed final",
        );

        let mut exchange = rfc_exchange();
        exchange.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_protocol(
            exchange.client_first(RFC_CLIENT_FIRST.as_bytes()),
            "first twice",
        );

        let mut exchange = rfc_exchange();
        exchange.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        exchange.client_final(right.as_bytes()).unwrap();
        assert_protocol(exchange.client_final(right.as_bytes()), "final twice");
        assert!(
            !exchange.is_authenticated(),
            "a repeated step fails the exchange"
        );

        // After a wrong password, the exchange is failed for good.
        let mut exchange = rfc_exchange();
        exchange.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let wrong = format!(
            "c=biws,r={RFC_COMBINED_NONCE},p={}",
            STANDARD.encode([7u8; SCRAM_KEY_BYTES])
        );
        assert_eq!(
            exchange.client_final(wrong.as_bytes()),
            Err(ScramError::WrongPassword)
        );
        assert_protocol(
            exchange.client_final(right.as_bytes()),
            "final after failure",
        );
    }

    #[test]
    fn extensions_are_ignored_like_postgres() {
        // Extensions after the nonce in client-first, and between the nonce and the proof
        // in client-final, are ignored; the client-final one is part of the AuthMessage, so
        // a proof computed without it is wrong, which shows it is not dropped silently.
        let mut exchange = rfc_exchange();
        exchange
            .client_first(format!("{RFC_CLIENT_FIRST},x=ext").as_bytes())
            .expect("an optional extension is ignored");
        let with_extension = format!("c=biws,r={RFC_COMBINED_NONCE},x=ext,p={RFC_PROOF}");
        assert_eq!(
            exchange.client_final(with_extension.as_bytes()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn no_prefix_or_garbage_panics() {
        // Every prefix of good messages, and pseudo-random bytes, give a result, never a
        // panic; the prefixes also cut UTF-8 and base64 in odd places.
        let right_final = format!("c=biws,r={RFC_COMBINED_NONCE},p={RFC_PROOF}");
        for end in 0..=RFC_CLIENT_FIRST.len() {
            let _ = rfc_exchange().client_first(&RFC_CLIENT_FIRST.as_bytes()[..end]);
        }
        for end in 0..right_final.len() {
            let mut exchange = rfc_exchange();
            exchange.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            assert_protocol(
                exchange.client_final(&right_final.as_bytes()[..end]),
                "a cut client-final",
            );
        }
        // A small linear congruential generator keeps the test deterministic.
        let mut state: u64 = 0x5eed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        let alphabet = b"nyp,=arcmx\xffA/+";
        for _ in 0..2000 {
            let length = usize::from(next() % 24);
            let message: Vec<u8> = (0..length)
                .map(|_| alphabet[usize::from(next()) % alphabet.len()])
                .collect();
            let mut exchange = rfc_exchange();
            if exchange.client_first(&message).is_ok() {
                assert_protocol(exchange.client_final(&message), "garbage client-final");
            }
        }
    }

    #[test]
    fn malformed_secrets_are_refused() {
        let key = STANDARD.encode([1u8; SCRAM_KEY_BYTES]);
        let short_key = STANDARD.encode([1u8; 31]);
        let cases = [
            (
                "wrong prefix",
                format!("SCRAM-SHA-1$4096:c2FsdA==${key}:{key}"),
            ),
            (
                "md5 secret",
                "md5c4ca4238a0b923820dcc509a6f75849b".to_owned(),
            ),
            ("empty", String::new()),
            (
                "bad salt base64",
                format!("SCRAM-SHA-256$4096:c2Fsd*==${key}:{key}"),
            ),
            ("empty salt", format!("SCRAM-SHA-256$4096:${key}:{key}")),
            (
                "bad key base64",
                format!("SCRAM-SHA-256$4096:c2FsdA==$!!!!:{key}"),
            ),
            (
                "zero iterations",
                format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
            ),
            (
                "signed iterations",
                format!("SCRAM-SHA-256$+4096:c2FsdA==${key}:{key}"),
            ),
            (
                "huge iterations",
                format!("SCRAM-SHA-256$99999999999:c2FsdA==${key}:{key}"),
            ),
            (
                "no iterations",
                format!("SCRAM-SHA-256$:c2FsdA==${key}:{key}"),
            ),
            (
                "short StoredKey",
                format!("SCRAM-SHA-256$4096:c2FsdA==${short_key}:{key}"),
            ),
            (
                "short ServerKey",
                format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{short_key}"),
            ),
            (
                "missing ServerKey",
                format!("SCRAM-SHA-256$4096:c2FsdA==${key}"),
            ),
            ("missing keys", "SCRAM-SHA-256$4096:c2FsdA==".to_owned()),
            (
                "extra part",
                format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}${key}"),
            ),
        ];
        for (case, text) in &cases {
            match ScramSecret::parse(text) {
                Err(ScramError::BadSecret(why)) => {
                    assert!(!why.contains(&key), "{case}: the error quotes the key");
                }
                other => panic!("{case}: expected BadSecret, got {other:?}"),
            }
        }
        let good = format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}");
        assert!(ScramSecret::parse(&good).is_ok());
    }
}
