//! Which endpoint a connection wants, from what the client sent.
//!
//! A client names its endpoint in one of three places, as with Neon's proxy: the TLS
//! server name (`ep-abc.<domain>`), the startup `options` (`endpoint=ep-abc`), or, for
//! clients that can send neither, the password (`endpoint=ep-abc;<password>`). All the
//! places a client used must name the same endpoint.
//!
//! Pure functions, no I/O. Every endpoint id returned satisfies `is_endpoint_id`. Error
//! texts are meant for the client's ErrorResponse.

use std::fmt;
use std::net::IpAddr;

/// The longest endpoint id, in bytes: a DNS label's limit, since the id is one.
const ENDPOINT_ID_BYTES_MAX: usize = 63;
/// The shortest endpoint id, in bytes: `ep-` and one character.
const ENDPOINT_ID_BYTES_MIN: usize = 4;
const ENDPOINT_ID_PREFIX: &str = "ep-";
/// The option word (and the password prefix) that names an endpoint.
const ENDPOINT_OPTION: &str = "endpoint=";

/// Where the endpoint id came from (for error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    Sni,
    Options,
    Password,
}

impl RouteSource {
    /// The source as the subject of a sentence.
    fn subject(self) -> &'static str {
        match self {
            RouteSource::Sni => "the TLS server name",
            RouteSource::Options => "the options",
            RouteSource::Password => "the password",
        }
    }

    /// "names" or "name", agreeing with `subject`.
    fn verb(self) -> &'static str {
        match self {
            RouteSource::Options => "name",
            RouteSource::Sni | RouteSource::Password => "names",
        }
    }
}

impl fmt::Display for RouteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subject())
    }
}

/// Why the endpoint could not be told.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// Something names an endpoint in a form that is not valid; the text says what.
    #[error("{0}")]
    Malformed(String),
    /// Two places name different endpoints (or one place names two).
    #[error("{}", mismatch_message(first, second))]
    Mismatch {
        first: (String, RouteSource),
        second: (String, RouteSource),
    },
}

fn mismatch_message(first: &(String, RouteSource), second: &(String, RouteSource)) -> String {
    let ((a, a_source), (b, b_source)) = (first, second);
    if a_source == b_source {
        format!(
            "inconsistent endpoint: {} {} both {a} and {b}",
            a_source.subject(),
            a_source.verb()
        )
    } else {
        format!(
            "inconsistent endpoint: {} {} {a} but {} {} {b}",
            a_source.subject(),
            a_source.verb(),
            b_source.subject(),
            b_source.verb()
        )
    }
}

/// Whether `s` is an endpoint id: `ep-` then lowercase letters, digits and dashes, 4 to
/// 63 bytes (it must fit in one DNS label), not ending with a dash.
pub fn is_endpoint_id(s: &str) -> bool {
    (ENDPOINT_ID_BYTES_MIN..=ENDPOINT_ID_BYTES_MAX).contains(&s.len())
        && s.starts_with(ENDPOINT_ID_PREFIX)
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The endpoint a TLS server name names: `<endpoint>.<domain>` → `Some(endpoint)`.
///
/// A server name not under the domain, equal to it, or an IP address gives `None`: the
/// client connected by address or by the bare domain and must name the endpoint some
/// other way. A server name under the domain whose part before it is not one endpoint id
/// is an error. Both names are compared lowercased (DNS names are case-insensitive), and
/// a trailing dot on either is ignored. An empty domain matches no server name.
pub fn endpoint_from_sni(server_name: &str, domain: &str) -> Result<Option<String>, RouteError> {
    let server_name = server_name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if domain.is_empty() || server_name.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    let Some(label) = server_name
        .strip_suffix(domain.as_str())
        .and_then(|rest| rest.strip_suffix('.'))
    else {
        // The bare domain, or a name elsewhere (a label boundary is required, so
        // `xexample.com` is not under `example.com`).
        return Ok(None);
    };
    if is_endpoint_id(label) {
        Ok(Some(label.to_string()))
    } else {
        Err(RouteError::Malformed(format!(
            "unknown endpoint form in the TLS server name {server_name}: expected \
             ep-<id>.{domain}"
        )))
    }
}

/// Splits the startup `options` value into the endpoint it names and the options left for
/// the compute.
///
/// The value is split into words as PostgreSQL does (`pg_split_opts`: whitespace
/// separates, a backslash makes the next character literal). The endpoint may be named as
/// `endpoint=<id>` (Neon's form), `-c endpoint=<id>`, `-cendpoint=<id>` or
/// `--endpoint=<id>`; each such word (with its `-c`) is removed and the rest re-joined
/// with single spaces, backslashes before whitespace and backslashes. When no endpoint is
/// named the value comes back unchanged. Naming the same endpoint twice is fine; two
/// different ones, or a value that is not an endpoint id, is an error.
pub fn split_options(options: &str) -> Result<(Option<String>, String), RouteError> {
    let words = split_words(options);
    let mut endpoint: Option<String> = None;
    let mut kept: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        // `-c` takes the next word as its value, as PostgreSQL's getopt does, whatever
        // that word looks like.
        let (value, used) = if word == "-c" && i + 1 < words.len() {
            (words[i + 1].strip_prefix(ENDPOINT_OPTION), &words[i..i + 2])
        } else {
            let value = word
                .strip_prefix(ENDPOINT_OPTION)
                .or_else(|| word.strip_prefix("-cendpoint="))
                .or_else(|| word.strip_prefix("--endpoint="));
            (value, &words[i..i + 1])
        };
        match value {
            Some(id) => {
                if !is_endpoint_id(id) {
                    return Err(RouteError::Malformed(format!(
                        "invalid endpoint id {id:?} in the options: expected ep- followed \
                         by lowercase letters, digits and dashes"
                    )));
                }
                match &endpoint {
                    Some(first) if first != id => {
                        return Err(RouteError::Mismatch {
                            first: (first.clone(), RouteSource::Options),
                            second: (id.to_string(), RouteSource::Options),
                        })
                    }
                    _ => endpoint = Some(id.to_string()),
                }
            }
            None => kept.extend(used.iter().map(String::as_str)),
        }
        i += used.len();
    }
    match endpoint {
        None => Ok((None, options.to_string())),
        Some(id) => Ok((Some(id), join_words(&kept))),
    }
}

/// Splits an options value into words as PostgreSQL's `pg_split_opts` does. A backslash
/// at the very end escapes nothing and is dropped, as there.
fn split_words(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|c| is_pg_space(*c)).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !is_pg_space(*c)) {
            if c == '\\' {
                if let Some(escaped) = chars.next() {
                    word.push(escaped);
                }
            } else {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// The characters C's `isspace` accepts in the C locale, which PostgreSQL splits on.
fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Joins words so that `split_words` gives them back. Empty words cannot be written and
/// are left out.
fn join_words(words: &[&str]) -> String {
    let mut out = String::new();
    for word in words.iter().filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            if c == '\\' || is_pg_space(c) {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// Splits a password of the form `endpoint=<id>;<password>` (Neon's fallback for clients
/// that can send neither a TLS server name nor options) into the id and the real
/// password. Any other password, including one whose `<id>` is not an endpoint id, gives
/// `None` and is taken as it is.
pub fn split_password(password: &str) -> Option<(String, String)> {
    let (id, rest) = password.strip_prefix(ENDPOINT_OPTION)?.split_once(';')?;
    is_endpoint_id(id).then(|| (id.to_string(), rest.to_string()))
}

/// The endpoint a connection wants, from all the places that name one.
///
/// `sni` is the endpoint id `endpoint_from_sni` returned (not the raw server name),
/// `options` the raw startup `options` value and `password` the raw password. All that
/// name an endpoint must name the same one; the first of them (in the order server name,
/// options, password) is returned with its source. None naming one gives `Ok(None)`.
pub fn resolve(
    sni: Option<&str>,
    options: Option<&str>,
    password: Option<&str>,
) -> Result<Option<(String, RouteSource)>, RouteError> {
    let mut named: Vec<(String, RouteSource)> = Vec::with_capacity(3);
    if let Some(id) = sni {
        if !is_endpoint_id(id) {
            return Err(RouteError::Malformed(format!(
                "invalid endpoint id {id:?} in the TLS server name"
            )));
        }
        named.push((id.to_string(), RouteSource::Sni));
    }
    if let Some(options) = options {
        if let (Some(id), _) = split_options(options)? {
            named.push((id, RouteSource::Options));
        }
    }
    if let Some((id, _)) = password.and_then(split_password) {
        named.push((id, RouteSource::Password));
    }
    let mut named = named.into_iter();
    let Some(first) = named.next() else {
        return Ok(None);
    };
    for other in named {
        if other.0 != first.0 {
            return Err(RouteError::Mismatch {
                first,
                second: other,
            });
        }
    }
    Ok(Some(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn endpoint_ids() {
        let long_ok = format!("ep-{}", "a".repeat(60));
        let too_long = format!("ep-{}", "a".repeat(61));
        let cases: &[(&str, bool)] = &[
            ("ep-abc", true),
            ("ep-a", true),
            ("ep-cool-darkness-123456", true),
            ("ep-0", true),
            ("ep--a", true),
            (&long_ok, true),
            (&too_long, false),
            ("ep-", false),
            ("ep-abc-", false),
            ("ep-ABC", false),
            ("EP-abc", false),
            ("ep_abc", false),
            ("abc", false),
            ("", false),
            ("ep-a.b", false),
            ("ep-a b", false),
            ("ep-ä", false),
        ];
        for (s, expected) in cases {
            assert_eq!(is_endpoint_id(s), *expected, "{s:?}");
        }
    }

    #[test]
    fn sni() {
        type Case<'a> = (&'a str, &'a str, Result<Option<String>, ()>);
        let cases: &[Case] = &[
            ("ep-abc.example.com", "example.com", Ok(some("ep-abc"))),
            ("EP-ABC.Example.COM", "example.com", Ok(some("ep-abc"))),
            ("ep-abc.example.com", "EXAMPLE.com", Ok(some("ep-abc"))),
            ("ep-abc.example.com.", "example.com", Ok(some("ep-abc"))),
            ("ep-abc.example.com", ".example.com.", Ok(some("ep-abc"))),
            ("example.com", "example.com", Ok(None)),
            ("EXAMPLE.COM", "example.com", Ok(None)),
            ("ep-abc.other.com", "example.com", Ok(None)),
            ("ep-abc.xexample.com", "example.com", Ok(None)),
            ("ep-abcexample.com", "example.com", Ok(None)),
            ("localhost", "example.com", Ok(None)),
            ("127.0.0.1", "example.com", Ok(None)),
            ("::1", "example.com", Ok(None)),
            ("ep-abc.example.com", "", Ok(None)),
            ("abc.example.com", "example.com", Err(())),
            ("ep-.example.com", "example.com", Err(())),
            (".example.com", "example.com", Err(())),
            ("a.ep-abc.example.com", "example.com", Err(())),
            ("ep_abc.example.com", "example.com", Err(())),
        ];
        for (name, domain, expected) in cases {
            let got = endpoint_from_sni(name, domain);
            match (expected, &got) {
                (Ok(e), Ok(g)) => assert_eq!(e, g, "{name} under {domain}"),
                (Err(()), Err(RouteError::Malformed(m))) => {
                    assert!(m.contains("TLS server name"), "{m}")
                }
                _ => panic!("{name} under {domain}: {got:?}"),
            }
        }
    }

    #[test]
    fn options() {
        type Case<'a> = (&'a str, Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            ("", None, ""),
            ("-c search_path=x", None, "-c search_path=x"),
            // Unchanged, odd spacing and all, when no endpoint is named.
            ("  -c a=b\t", None, "  -c a=b\t"),
            ("endpoint=ep-abc", Some("ep-abc"), ""),
            ("  endpoint=ep-abc  ", Some("ep-abc"), ""),
            (
                "endpoint=ep-abc -c search_path=x",
                Some("ep-abc"),
                "-c search_path=x",
            ),
            (
                "-c search_path=x endpoint=ep-abc",
                Some("ep-abc"),
                "-c search_path=x",
            ),
            ("-c endpoint=ep-abc -c a=b", Some("ep-abc"), "-c a=b"),
            ("-cendpoint=ep-abc -ca=b", Some("ep-abc"), "-ca=b"),
            ("--endpoint=ep-abc --a=b", Some("ep-abc"), "--a=b"),
            ("endpoint=ep-abc\tendpoint=ep-abc", Some("ep-abc"), ""),
            // `-c` takes the next word whatever it is, so the endpoint is the later one.
            ("-c -c endpoint=ep-abc", Some("ep-abc"), "-c -c"),
            // `-c` at the end keeps nothing from after it.
            ("endpoint=ep-abc -c", Some("ep-abc"), "-c"),
            // Escapes: an escaped space stays in its word and is escaped again.
            (
                r"-c application_name=my\ app endpoint=ep-abc",
                Some("ep-abc"),
                r"-c application_name=my\ app",
            ),
            (r"-c a=b\\c endpoint=ep-abc", Some("ep-abc"), r"-c a=b\\c"),
            (r"-c a=\b endpoint=ep-abc", Some("ep-abc"), "-c a=b"),
            // A word that merely contains the text is not the option.
            ("xendpoint=ep-abc", None, "xendpoint=ep-abc"),
            ("-c xendpoint=ep-abc", None, "-c xendpoint=ep-abc"),
        ];
        for (input, id, rest) in cases {
            match split_options(input) {
                Ok((got_id, got_rest)) => {
                    assert_eq!(got_id.as_deref(), *id, "{input:?}");
                    assert_eq!(got_rest, *rest, "{input:?}");
                }
                Err(e) => panic!("{input:?}: {e}"),
            }
        }

        let bad = [
            "endpoint=",
            "endpoint=abc",
            "endpoint=EP-ABC",
            "-c endpoint=ep-",
            "--endpoint=ep-a;b",
            // An escaped space keeps the next word in the endpoint's: not an id.
            r"endpoint=ep-abc\ -c a=b",
        ];
        for input in bad {
            match split_options(input) {
                Err(RouteError::Malformed(m)) => assert!(m.contains("invalid endpoint id"), "{m}"),
                other => panic!("{input:?}: {other:?}"),
            }
        }

        let err = split_options("endpoint=ep-a -c endpoint=ep-b").unwrap_err();
        assert_eq!(
            err,
            RouteError::Mismatch {
                first: ("ep-a".into(), RouteSource::Options),
                second: ("ep-b".into(), RouteSource::Options),
            }
        );
        assert_eq!(
            err.to_string(),
            "inconsistent endpoint: the options name both ep-a and ep-b"
        );
    }

    #[test]
    fn words_split_like_postgres() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   ", &[]),
            ("a b", &["a", "b"]),
            (" \t\n\x0b\x0c\ra \r\n b ", &["a", "b"]),
            (r"a\ b", &["a b"]),
            (r"a\\ b", &[r"a\", "b"]),
            (r"\a", &["a"]),
            // A backslash at the end is dropped, leaving an empty word.
            ("a \\", &["a", ""]),
            ("ä ö", &["ä", "ö"]),
        ];
        for (input, expected) in cases {
            assert_eq!(split_words(input), *expected, "{input:?}");
        }
        assert_eq!(
            join_words(&["a b", r"c\d", "", "e\tf"]),
            "a\\ b c\\\\d e\\\tf"
        );
    }

    #[test]
    fn passwords() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("endpoint=ep-abc;secret", Some(("ep-abc", "secret"))),
            ("endpoint=ep-abc;se;cr;et", Some(("ep-abc", "se;cr;et"))),
            ("endpoint=ep-abc;", Some(("ep-abc", ""))),
            ("endpoint=ep-abc$secret", None),
            ("endpoint=ep-abc", None),
            ("endpoint=abc;secret", None),
            ("endpoint=;secret", None),
            ("Endpoint=ep-abc;secret", None),
            ("secret", None),
            ("", None),
            (" endpoint=ep-abc;secret", None),
        ];
        for (input, expected) in cases {
            let expected = expected.map(|(a, b)| (a.to_string(), b.to_string()));
            assert_eq!(split_password(input), expected, "{input:?}");
        }
    }

    #[test]
    fn resolving() {
        use RouteSource::*;
        assert_eq!(resolve(None, None, None), Ok(None));
        assert_eq!(resolve(None, Some("-c a=b"), Some("secret")), Ok(None));
        assert_eq!(
            resolve(Some("ep-a"), None, None),
            Ok(Some(("ep-a".into(), Sni)))
        );
        assert_eq!(
            resolve(None, Some("endpoint=ep-a"), None),
            Ok(Some(("ep-a".into(), Options)))
        );
        assert_eq!(
            resolve(None, None, Some("endpoint=ep-a;pw")),
            Ok(Some(("ep-a".into(), Password)))
        );
        assert_eq!(
            resolve(
                Some("ep-a"),
                Some("endpoint=ep-a"),
                Some("endpoint=ep-a;pw")
            ),
            Ok(Some(("ep-a".into(), Sni)))
        );
        assert_eq!(
            resolve(None, Some("endpoint=ep-a"), Some("endpoint=ep-a;pw")),
            Ok(Some(("ep-a".into(), Options)))
        );

        let err = resolve(Some("ep-a"), Some("endpoint=ep-b"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "inconsistent endpoint: the TLS server name names ep-a but the options name ep-b"
        );
        let err = resolve(Some("ep-a"), None, Some("endpoint=ep-b;pw")).unwrap_err();
        assert_eq!(
            err,
            RouteError::Mismatch {
                first: ("ep-a".into(), Sni),
                second: ("ep-b".into(), Password)
            }
        );
        assert_eq!(
            err.to_string(),
            "inconsistent endpoint: the TLS server name names ep-a but the password names ep-b"
        );
        let err = resolve(None, Some("endpoint=ep-a"), Some("endpoint=ep-b;pw")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "inconsistent endpoint: the options name ep-a but the password names ep-b"
        );
        // The server name agrees with the options but not with the password.
        assert!(matches!(
            resolve(Some("ep-a"), Some("endpoint=ep-a"), Some("endpoint=ep-c;x")),
            Err(RouteError::Mismatch { .. })
        ));
        assert!(matches!(
            resolve(Some("ep-"), None, None),
            Err(RouteError::Malformed(_))
        ));
        assert!(matches!(
            resolve(None, Some("endpoint=nope"), None),
            Err(RouteError::Malformed(_))
        ));
    }

    /// xorshift64: deterministic, good enough to shuffle test inputs.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random option strings with one endpoint inserted among random words: the endpoint
    /// comes back and the other words come back in order.
    #[test]
    fn random_options() {
        const ALPHABET: &[char] = &[
            'a', 'b', 'z', '0', '9', '-', '_', '=', '.', ',', ' ', '\t', '\\', 'ä',
        ];
        const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
        const SPACES: &[&str] = &[" ", "  ", "\t", " \n "];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..500 {
            let mut words: Vec<String> = Vec::new();
            for _ in 0..rng.below(8) {
                let word: String = (0..1 + rng.below(10))
                    .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                    .collect();
                // `-c` alone would take the endpoint word as its value; it is covered by
                // the table above.
                if word != "-c" {
                    words.push(word);
                }
            }
            let mut id = String::from("ep-");
            for _ in 0..1 + rng.below(20) {
                id.push(char::from(ID_ALPHABET[rng.below(ID_ALPHABET.len())]));
            }
            while id.ends_with('-') {
                id.pop();
            }
            if id == "ep" {
                id.push_str("-x");
            }
            let endpoint_words = match rng.below(4) {
                0 => vec![format!("endpoint={id}")],
                1 => vec!["-c".to_string(), format!("endpoint={id}")],
                2 => vec![format!("-cendpoint={id}")],
                _ => vec![format!("--endpoint={id}")],
            };
            let at = rng.below(words.len() + 1);

            let mut all: Vec<String> = words.clone();
            all.splice(at..at, endpoint_words);
            let mut options = String::new();
            for word in &all {
                options.push_str(SPACES[rng.below(SPACES.len())]);
                let refs = [word.as_str()];
                options.push_str(&join_words(&refs));
            }
            options.push_str(SPACES[rng.below(SPACES.len())]);

            let (got_id, rest) = split_options(&options)
                .unwrap_or_else(|e| panic!("round {round}: {options:?}: {e}"));
            assert_eq!(
                got_id.as_deref(),
                Some(id.as_str()),
                "round {round}: {options:?}"
            );
            assert_eq!(split_words(&rest), words, "round {round}: {options:?}");
        }
    }
}
