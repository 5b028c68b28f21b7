//! The proxy's TLS certificate and the rustls server configuration made from it.
//!
//! Either the operator gives a PEM certificate chain and private key (`--tls-cert` and
//! `--tls-key`, both or neither), or the proxy uses a self-signed pair kept in its data
//! folder (`tls.crt`, `tls.key`), made on first use for `*.<domain>`, `<domain>`,
//! `localhost` and `127.0.0.1`, so that clients can name an endpoint by TLS server name
//! (`ep-abc.<domain>`) and local clients can trust the one file.
//!
//! Does file I/O: reads the PEM files and writes the self-signed pair. Each file of the
//! pair is written atomically (a temporary file renamed over it, both fsynced), the key
//! first and the certificate last, so a certificate on disk always has its key beside it
//! unless someone removed the key; the key is created with mode 0600 and never exists
//! with wider permissions. One process at a time is expected to make the pair. A stored
//! certificate that no longer covers `<domain>` (the domain changed) is replaced.
//!
//! The configuration uses the ring provider explicitly, because no process-wide default
//! provider is installed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{RootCertStore, ServerConfig};

/// The self-signed certificate's file name in the data folder.
pub const SELF_SIGNED_CERT_FILE: &str = "tls.crt";
/// The self-signed key's file name in the data folder.
pub const SELF_SIGNED_KEY_FILE: &str = "tls.key";
/// The key file's permissions: readable and writable by its owner only.
const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;

/// Why no TLS configuration could be made. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// One of `--tls-cert` and `--tls-key` was given without the other.
    #[error(
        "{given} was given without {missing}: give both, or neither to use a self-signed \
         certificate"
    )]
    MissingFlag {
        given: &'static str,
        missing: &'static str,
    },
    #[error("cannot read the TLS certificate chain in {}: {source}", path.display())]
    ReadCert { path: PathBuf, source: pem::Error },
    #[error(
        "{} holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error("cannot read the TLS private key in {}: {source}", path.display())]
    ReadKey { path: PathBuf, source: pem::Error },
    #[error(
        "{} holds no PEM private key (expected a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE \
         KEY block)",
        path.display()
    )]
    NoKey { path: PathBuf },
    /// The files were read but rustls refuses them (a key that does not match the
    /// certificate, a key of an unsupported kind, a certificate that is not DER).
    #[error(
        "the TLS certificate in {} and the key in {} cannot be used: {source}",
        cert.display(),
        key.display()
    )]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    /// The self-signed certificate is there but its key is not.
    #[error(
        "{} exists but {} does not: remove {} to have a new self-signed pair made",
        cert.display(),
        key.display(),
        cert.display()
    )]
    KeyMissing { cert: PathBuf, key: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a self-signed certificate for {domain:?}: {reason}")]
    Generate { domain: String, reason: String },
}

/// The proxy's TLS server configuration.
///
/// With `cert` and `key` (the `--tls-cert` and `--tls-key` flags), reads the PEM
/// certificate chain and private key from them. With neither, uses the self-signed pair
/// in `dir`, made (with `dir`) on first use for `domain`. No ALPN protocol is configured:
/// a client offering "postgresql" still connects, and so does one that offers none. The
/// proxy only does TLS after an SSLRequest, where PostgreSQL does not require ALPN
/// (its direct TLS, which does, is not served).
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: &Path,
    domain: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.to_path_buf(), key.to_path_buf()),
        (Some(_), None) => {
            return Err(TlsError::MissingFlag {
                given: "--tls-cert",
                missing: "--tls-key",
            })
        }
        (None, Some(_)) => {
            return Err(TlsError::MissingFlag {
                given: "--tls-key",
                missing: "--tls-cert",
            })
        }
        (None, None) => ensure_self_signed(dir, domain)?,
    };
    let chain = read_chain(&cert_path)?;
    let key = read_key(&key_path)?;
    let config_error = |source| TlsError::Config {
        cert: cert_path.clone(),
        key: key_path.clone(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        // Checks that the key is usable and matches the certificate.
        .with_single_cert(chain, key)
        .map_err(config_error)?;
    config.alpn_protocols = Vec::new();
    Ok(Arc::new(config))
}

/// A new self-signed certificate and its key as PEM strings, for `*.<domain>`,
/// `<domain>`, `localhost` and `127.0.0.1`. The key is ECDSA P-256.
pub fn self_signed(domain: &str) -> Result<(String, String), TlsError> {
    let generate_error = |reason: String| TlsError::Generate {
        domain: domain.to_string(),
        reason,
    };
    // A wildcard under an IP address or an empty name would be a meaningless name.
    if domain.parse::<std::net::IpAddr>().is_ok()
        || rustls::pki_types::DnsName::try_from(domain).is_err()
    {
        return Err(generate_error("the domain is not a DNS name".into()));
    }
    let mut names = Vec::with_capacity(4);
    for name in [
        format!("*.{domain}"),
        domain.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ] {
        // The domain may be `localhost` itself; a name twice is pointless.
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| generate_error(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("OmenDB proxy (self-signed) {domain}"),
    );
    let key = rcgen::KeyPair::generate().map_err(|e| generate_error(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| generate_error(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes sure `dir` holds a self-signed pair for `domain` and returns its paths.
fn ensure_self_signed(dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = dir.join(SELF_SIGNED_KEY_FILE);
    let exists = |path: &Path| {
        path.try_exists().map_err(|source| TlsError::Io {
            action: "look for",
            path: path.to_path_buf(),
            source,
        })
    };
    match (exists(&cert_path)?, exists(&key_path)?) {
        (true, true) => {
            if covers(&read_chain(&cert_path)?, domain) {
                return Ok((cert_path, key_path));
            }
            tracing::warn!(
                cert = %cert_path.display(),
                domain,
                "the self-signed TLS certificate does not cover the domain; making a new one"
            );
        }
        (true, false) => {
            return Err(TlsError::KeyMissing {
                cert: cert_path,
                key: key_path,
            })
        }
        // No certificate: never made, or a key left by a creation that was cut short.
        (false, _) => {}
    }
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let (cert_pem, key_pem) = self_signed(domain)?;
    write_atomically(&key_path, key_pem.as_bytes(), KEY_FILE_MODE)?;
    write_atomically(&cert_path, cert_pem.as_bytes(), CERT_FILE_MODE)?;
    tracing::info!(cert = %cert_path.display(), domain, "made a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

/// Whether the first certificate of `chain`, trusted as it is, is valid now for the
/// server name `domain`. A domain that is no server name cannot be checked and counts as
/// covered, since a new certificate could not be made for it either.
fn covers(chain: &[CertificateDer<'static>], domain: &str) -> bool {
    let Ok(name) = ServerName::try_from(domain) else {
        return true;
    };
    let Some(end_entity) = chain.first() else {
        return false;
    };
    let mut roots = RootCertStore::empty();
    if roots.add(end_entity.clone()).is_err() {
        return false;
    }
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(default_provider()))
            .build()
    else {
        return false;
    };
    verifier
        .verify_server_cert(end_entity, &[], &name, &[], UnixTime::now())
        .is_ok()
}

pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::ReadCert {
        path: path.to_path_buf(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        source => TlsError::ReadKey {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder created with
/// `mode`, so that readers see the old file or the whole new one, and a key is never
/// readable by others even for a moment.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    // Unique per process and call, so concurrent writers never share a temporary file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let io_error = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io {
            action,
            path,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        file.write_all(bytes).map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_error("rename a temporary file to", path))
    })();
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable only once the folder is.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fresh folder under the system's temporary folder, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "omendb-proxy-tls-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const DOMAIN: &str = "db.example.test";

    #[test]
    fn self_signed_pair_is_made_once() {
        let dir = TempDir::new("once");
        server_config(None, None, &dir.0, DOMAIN).unwrap();
        let cert_path = dir.0.join(SELF_SIGNED_CERT_FILE);
        let key_path = dir.0.join(SELF_SIGNED_KEY_FILE);
        let cert = fs::read(&cert_path).unwrap();
        let key = fs::read(&key_path).unwrap();
        let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Only the pair is left: no temporary files.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 2);

        server_config(None, None, &dir.0, DOMAIN).unwrap();
        assert_eq!(fs::read(&cert_path).unwrap(), cert);
        assert_eq!(fs::read(&key_path).unwrap(), key);

        // The files work when given by flags too.
        server_config(
            Some(&cert_path),
            Some(&key_path),
            Path::new("/nonexistent"),
            "x",
        )
        .unwrap();

        // Another domain gets a new pair.
        server_config(None, None, &dir.0, "other.example.test").unwrap();
        assert_ne!(fs::read(&cert_path).unwrap(), cert);
        let chain = read_chain(&cert_path).unwrap();
        assert!(covers(&chain, "other.example.test"));
        assert!(!covers(&chain, DOMAIN));
    }

    #[test]
    fn self_signed_names() {
        let (cert, key) = self_signed(DOMAIN).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        for name in [
            "ep-abc.db.example.test",
            "db.example.test",
            "localhost",
            "127.0.0.1",
        ] {
            assert!(covers(&chain, name), "{name}");
        }
        for name in ["a.ep-abc.db.example.test", "example.test", "127.0.0.2"] {
            assert!(!covers(&chain, name), "{name}");
        }
        assert!(self_signed("localhost").is_ok());
        for bad in ["", "127.0.0.1", "bad domain"] {
            assert!(
                matches!(self_signed(bad), Err(TlsError::Generate { .. })),
                "{bad:?}"
            );
        }
    }

    async fn handshake(
        config: Arc<ServerConfig>,
        trusted_cert_pem: &[u8],
        server_name: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Option<String>, std::io::Error> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(trusted_cert_pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut client_config =
            rustls::ClientConfig::builder_with_provider(Arc::new(default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        client_config.alpn_protocols = alpn;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);

        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(server_io).await?;
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            let mut hello = [0u8; 5];
            tls.read_exact(&mut hello).await?;
            assert_eq!(&hello, b"hello");
            tls.write_all(b"world").await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>(sni)
        });
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let client = async {
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"hello").await?;
            tls.flush().await?;
            let mut world = [0u8; 5];
            tls.read_exact(&mut world).await?;
            assert_eq!(&world, b"world");
            Ok::<_, std::io::Error>(())
        };
        let client_result = client.await;
        let server_result = server.await.unwrap();
        client_result?;
        server_result
    }

    #[tokio::test]
    async fn real_handshake() {
        let dir = TempDir::new("handshake");
        let config = server_config(None, None, &dir.0, DOMAIN).unwrap();
        let cert = fs::read(dir.0.join(SELF_SIGNED_CERT_FILE)).unwrap();

        let sni = handshake(config.clone(), &cert, "ep-abc.db.example.test", vec![])
            .await
            .unwrap();
        assert_eq!(sni.as_deref(), Some("ep-abc.db.example.test"));

        // A client offering ALPN "postgresql" connects too.
        let sni = handshake(
            config.clone(),
            &cert,
            "ep-abc.db.example.test",
            vec![b"postgresql".to_vec()],
        )
        .await
        .unwrap();
        assert_eq!(sni.as_deref(), Some("ep-abc.db.example.test"));

        let sni = handshake(config.clone(), &cert, DOMAIN, vec![])
            .await
            .unwrap();
        assert_eq!(sni.as_deref(), Some(DOMAIN));
        let sni = handshake(config.clone(), &cert, "localhost", vec![])
            .await
            .unwrap();
        assert_eq!(sni.as_deref(), Some("localhost"));
        // No server name is sent for an IP address.
        let sni = handshake(config.clone(), &cert, "127.0.0.1", vec![])
            .await
            .unwrap();
        assert_eq!(sni, None);

        // A name the certificate does not cover fails on the client's side.
        assert!(
            handshake(config.clone(), &cert, "ep-abc.other.test", vec![])
                .await
                .is_err()
        );
        // So does a client that does not trust this certificate.
        let (other_cert, _) = self_signed(DOMAIN).unwrap();
        assert!(handshake(
            config,
            other_cert.as_bytes(),
            "ep-abc.db.example.test",
            vec![]
        )
        .await
        .is_err());
    }

    #[test]
    fn flags_must_come_in_pairs() {
        let dir = TempDir::new("flags");
        let some = Path::new("/some/file.pem");
        let err = server_config(Some(some), None, &dir.0, DOMAIN).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--tls-cert was given without --tls-key"),
            "{err}"
        );
        let err = server_config(None, Some(some), &dir.0, DOMAIN).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--tls-key was given without --tls-cert"),
            "{err}"
        );
        // Nothing was made in the data folder.
        assert!(!dir.0.exists());
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = TempDir::new("bad");
        fs::create_dir_all(&dir.0).unwrap();
        let (cert_pem, key_pem) = self_signed(DOMAIN).unwrap();
        let (other_cert_pem, _) = self_signed(DOMAIN).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.0.join(name);
            fs::write(&path, text).unwrap();
            path
        };
        let cert = write("good.crt", &cert_pem);
        let key = write("good.key", &key_pem);
        let other_cert = write("other.crt", &other_cert_pem);
        let bad_base64 = write(
            "bad-base64.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n",
        );
        let unterminated = write("unterminated.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        let not_pem = write("not-pem.txt", "hello\n");
        let bad_key_der = write(
            "bad-der.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let missing = dir.0.join("missing.pem");
        let dir_path = dir.0.clone();
        let config = |c: &Path, k: &Path| server_config(Some(c), Some(k), &dir_path, DOMAIN);

        assert!(config(&cert, &key).is_ok());
        // (certificate file, key file, the file the error must name, what it must say)
        let cases: &[(&Path, &Path, &Path, &str)] = &[
            (
                &bad_base64,
                &key,
                &bad_base64,
                "cannot read the TLS certificate",
            ),
            (
                &unterminated,
                &key,
                &unterminated,
                "cannot read the TLS certificate",
            ),
            (&not_pem, &key, &not_pem, "holds no PEM certificate"),
            (&missing, &key, &missing, "cannot read the TLS certificate"),
            (&cert, &not_pem, &not_pem, "holds no PEM private key"),
            (&cert, &cert, &cert, "holds no PEM private key"),
            (&cert, &missing, &missing, "cannot read the TLS private key"),
            (&cert, &bad_key_der, &bad_key_der, "cannot be used"),
            (&other_cert, &key, &other_cert, "cannot be used"),
        ];
        for (cert, key, path, expected) in cases {
            let message = config(cert, key).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }

        // A corrupt self-signed certificate in the data folder is reported, not replaced.
        let data = dir.0.join("data");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join(SELF_SIGNED_CERT_FILE), "garbage").unwrap();
        fs::write(data.join(SELF_SIGNED_KEY_FILE), &key_pem).unwrap();
        let message = server_config(None, None, &data, DOMAIN)
            .unwrap_err()
            .to_string();
        assert!(message.contains("holds no PEM certificate"), "{message}");
        assert_eq!(
            fs::read_to_string(data.join(SELF_SIGNED_CERT_FILE)).unwrap(),
            "garbage"
        );

        // A certificate without its key is reported; a key without its certificate (a
        // creation cut short) is replaced.
        fs::remove_file(data.join(SELF_SIGNED_KEY_FILE)).unwrap();
        let err = server_config(None, None, &data, DOMAIN).unwrap_err();
        assert!(matches!(err, TlsError::KeyMissing { .. }), "{err}");
        assert!(err.to_string().contains("tls.key does not"), "{err}");
        fs::remove_file(data.join(SELF_SIGNED_CERT_FILE)).unwrap();
        fs::write(data.join(SELF_SIGNED_KEY_FILE), "leftover").unwrap();
        server_config(None, None, &data, DOMAIN).unwrap();
        assert_ne!(
            fs::read_to_string(data.join(SELF_SIGNED_KEY_FILE)).unwrap(),
            "leftover"
        );
    }
}
