//! The rules of names and values the control plane accepts, and the ids, passwords and
//! tokens it makes: role names, passwords, idle timeouts, branch points (`--at`), random ids
//! from the system's secure source, token hashes, percent-encoding. No I/O.

use ids::Lsn;
use pageserver_api::BranchPoint;
use ring::rand::SecureRandom;

use super::model::{api_error, ApiError, ErrorKind};
use super::{
    IDLE_TIMEOUT_SECS_MAX, ID_RANDOM_CHARS, PASSWORD_BYTES_MAX, PASSWORD_CHARS,
    ROLE_NAME_BYTES_MAX, TOKEN_RANDOM_CHARS,
};

type Result<T> = std::result::Result<T, ApiError>;

/// Characters of generated ids.
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Characters of generated passwords and tokens.
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `n` characters of `alphabet` from the system's secure random source (rejection sampling,
/// so every character is equally likely).
fn random_chars(alphabet: &[u8], n: usize) -> String {
    let rng = ring::rand::SystemRandom::new();
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill(&mut buf)
            .expect("the system's random source works");
        for &b in &buf {
            if (b as usize) < limit && out.len() < n {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_chars(ID_ALPHABET, ID_RANDOM_CHARS))
}

pub fn new_password() -> String {
    random_chars(SECRET_ALPHABET, PASSWORD_CHARS)
}

pub fn new_token() -> String {
    format!(
        "omendb_{}",
        random_chars(SECRET_ALPHABET, TOKEN_RANDOM_CHARS)
    )
}

/// The hex SHA-256 of a token: what the store keeps.
pub fn token_hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a role name: `[a-z_][a-z0-9_]*`, at most 63 bytes (an unquoted PostgreSQL name).
pub fn validate_role_name(name: &str) -> std::result::Result<(), String> {
    let bytes = name.as_bytes();
    match bytes.first() {
        None => return Err("a role name cannot be empty".into()),
        Some(b) if !(b.is_ascii_lowercase() || *b == b'_') => {
            return Err(format!(
                "role name {name:?} must start with a lowercase letter or '_'"
            ))
        }
        _ => {}
    }
    if bytes.len() > ROLE_NAME_BYTES_MAX {
        return Err(format!(
            "role name {name:?} is {} bytes long; the limit is {ROLE_NAME_BYTES_MAX}",
            bytes.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    {
        return Err(format!(
            "role name {name:?} contains {bad:?}; use lowercase letters, digits and '_'"
        ));
    }
    Ok(())
}

pub(super) fn validate_password(password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(api_error(
            ErrorKind::BadRequest,
            "a password cannot be empty",
        ));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(api_error(
            ErrorKind::BadRequest,
            format!("a password is at most {PASSWORD_BYTES_MAX} bytes"),
        ));
    }
    if password.contains('\0') {
        return Err(api_error(
            ErrorKind::BadRequest,
            "a password cannot contain NUL",
        ));
    }
    Ok(())
}

pub(super) fn validate_idle_timeout(secs: u64) -> Result<u64> {
    if secs > IDLE_TIMEOUT_SECS_MAX {
        return Err(api_error(
            ErrorKind::BadRequest,
            format!("idle_timeout_secs is at most {IDLE_TIMEOUT_SECS_MAX} (0: never suspend)"),
        ));
    }
    Ok(secs)
}

/// Parses a branch point: absent is the parent's latest commit; `HI/LO` in hex (`0/16B3748`)
/// an LSN; otherwise an RFC 3339 time in UTC (`2024-05-01T12:00:00Z`, fractions of a second
/// allowed, the `Z` optional).
pub fn parse_branch_point(at: Option<&str>) -> std::result::Result<BranchPoint, String> {
    let Some(at) = at else {
        return Ok(BranchPoint::Latest);
    };
    if at.contains('/') {
        return at
            .parse::<Lsn>()
            .map(BranchPoint::Lsn)
            .map_err(|e| format!("--at {at:?} is not an LSN: {e}"));
    }
    let time = check_rfc3339_tail(at)
        .and_then(|()| humantime::parse_rfc3339_weak(at))
        .map_err(|e| {
            format!(
                "--at {at:?} is neither an LSN (like 0/16B3748) nor an RFC 3339 time in UTC \
             (like 2024-05-01T12:00:00Z): {e}"
            )
        })?;
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("--at {at:?} is before 1970"))?;
    let unix_us = u64::try_from(since_epoch.as_micros())
        .map_err(|_| format!("--at {at:?} is too far in the future"))?;
    Ok(BranchPoint::Timestamp { unix_us })
}

/// What `humantime::parse_rfc3339_weak` lets through after the seconds unchecked (it
/// ignores anything after a `Z`): the rest must be `[.digits][Z|+00:00]`.
fn check_rfc3339_tail(at: &str) -> std::result::Result<(), humantime::TimestampError> {
    let Some(mut tail) = at.get(19..) else {
        return Ok(()); // Too short, or not ASCII: the parser refuses it.
    };
    if let Some(fraction) = tail.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        tail = &fraction[digits..];
    }
    match tail {
        "" | "Z" | "+00:00" => Ok(()),
        _ => Err(humantime::TimestampError::InvalidFormat),
    }
}

/// Percent-encodes a connection-string or URL path component (RFC 3986 unreserved characters stay).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_points_parse_from_lsns_and_rfc3339_times() {
        assert_eq!(parse_branch_point(None), Ok(BranchPoint::Latest));
        assert_eq!(
            parse_branch_point(Some("0/16B3748")),
            Ok(BranchPoint::Lsn(Lsn(0x16B3748)))
        );
        assert_eq!(
            parse_branch_point(Some("1/0")),
            Ok(BranchPoint::Lsn(Lsn(1 << 32)))
        );
        let expected = BranchPoint::Timestamp {
            unix_us: 1_714_564_800_000_000,
        };
        for time in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01 12:00:00",
            "2024-05-01T12:00:00+00:00",
        ] {
            assert_eq!(parse_branch_point(Some(time)), Ok(expected), "{time}");
        }
        assert_eq!(
            parse_branch_point(Some("2024-05-01T12:00:00.123456Z")),
            Ok(BranchPoint::Timestamp {
                unix_us: 1_714_564_800_123_456
            })
        );
        for (bad, says) in [
            ("0/xyz", "not an LSN"),
            ("/", "not an LSN"),
            ("yesterday", "neither an LSN"),
            ("2024-05-01T12:00:00+02:00", "neither an LSN"),
            ("2024-13-01T12:00:00Z", "neither an LSN"),
            ("1969-12-31T23:59:59Z", "neither an LSN"),
            ("2024-05-01T12:00:00Zé", "neither an LSN"),
            ("2024-05-01T12:00:00Z tomorrow", "neither an LSN"),
            ("2024-05-01T12:00:00.5+00:00x", "neither an LSN"),
            ("2024-05-01T12:00:0é", "neither an LSN"),
            ("", "neither an LSN"),
        ] {
            let message = parse_branch_point(Some(bad)).unwrap_err();
            assert!(message.contains(says), "{bad:?}: {message}");
        }
    }

    #[test]
    fn role_names_ids_and_tokens_follow_their_rules() {
        for good in ["omendb", "_x", "app_1", &"a".repeat(63)] {
            assert_eq!(validate_role_name(good), Ok(()), "{good:?}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("1a", "start with"),
            ("A", "start with"),
            ("a-b", "contains '-'"),
            (&"a".repeat(64), "the limit is 63"),
        ] {
            let error = validate_role_name(bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
        let id = new_id("ep");
        assert!(crate::proxy::routing::is_endpoint_id(&id), "{id}");
        assert_ne!(new_id("ep"), id);
        let token = new_token();
        assert_eq!(token.len(), "omendb_".len() + TOKEN_RANDOM_CHARS);
        assert_eq!(token_hash(&token), token_hash(&token));
        assert_ne!(token_hash(&token), token_hash(&new_token()));
        assert_eq!(token_hash(&token).len(), 64);
    }
}
