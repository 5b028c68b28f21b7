//! The one way into the object store: every request of the pageserver and the safekeepers
//! goes through [`RemoteStorage`], which retries transient failures a bounded number of
//! times with backoff and counts requests, retries, failures and bytes.
//!
//! Who owns which keys (each component's layout module names its own):
//!
//! ```text
//! tenants/<tenant hex>/timelines/<timeline hex>/...   the pageserver (pageserver::remote_layout)
//! wal/<timeline hex>/...                               the safekeepers ([`wal_objects`])
//! ```
//!
//! Where the objects live is named by a spec ([`RemoteStorage::from_spec`]):
//!
//! ```text
//! /some/folder, file:///some/folder   a local folder (created if missing)
//! s3://bucket[/prefix]                an S3 bucket, or an S3-compatible server through
//!                                     AWS_ENDPOINT; credentials and region from AWS_*
//! ```
//!
//! The local-folder store (`object_store::local::LocalFileSystem`) writes atomically by
//! rename but does not fsync; since callers report what they uploaded as durable (and
//! safekeepers delete their local copy of uploaded WAL), this wrapper fsyncs the file and
//! its folders after each put. S3 acknowledges a put once it is durable, and a create-only
//! put there is a conditional `If-None-Match: *` request. Does I/O.
//!
//! Conditional puts ([`RemoteStorage::put_if`]) replace an object only if it is still at the
//! version a read returned ([`RemoteStorage::get_with_version`]), or create it only if it is
//! absent: a write based on a stale read never replaces a newer object. On S3 they are
//! `If-Match: <etag>` / `If-None-Match: *` requests. The local-folder store does them itself,
//! under a per-key `flock` (which `object_store`'s local store does not support):
//!
//! ```text
//! <root>/<key>                     the object
//! <root>/.locks/<key>#lock         held (flock, exclusive) by a conditional put of <key>;
//!                                  created on first use, never deleted
//! <root>/.locks/<key>#tmp          the conditional put's new bytes before their rename
//! ```
//!
//! `.locks` is reserved: [`RemoteStorage::list`] of a local folder never returns what is under
//! it. Locks order conditional puts of a key among themselves, across processes on the same
//! machine; a plain put or a delete of the same key takes no lock (a conditional create
//! still never replaces an object a plain put created: it is a hard link, not a rename).

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};

pub mod faults;
#[cfg(any(test, feature = "test-support"))]
pub mod moto;
#[cfg(test)]
mod s3_tests;
pub mod wal_objects;

/// Attempts per request (the first one included) before giving up.
pub const ATTEMPTS_MAX: u32 = 3;
/// How long one attempt may take before it counts as failed (and is retried).
pub const REQUEST_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// Pause before the first retry of a request; doubled for each later retry.
pub const BACKOFF_MIN_MS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum RemoteStorageError {
    /// An object store spec that names no store this build can open.
    #[error("object store {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },
    /// A request failed (after its retries, where it was worth retrying).
    #[error("object store {op} of {key} failed: {cause}")]
    ObjectStore {
        op: &'static str,
        key: String,
        cause: object_store::Error,
    },
    /// An object that is not what its name promises.
    #[error("corrupt object {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A download larger than the caller's limit (a corrupt or foreign object).
    #[error("object {key} has {size_bytes} bytes, over the limit of {bytes_max} bytes")]
    TooLarge {
        key: String,
        size_bytes: u64,
        bytes_max: u64,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// This is a bug.
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
}

impl RemoteStorageError {
    /// True when a create-only put failed because the object already existed.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            RemoteStorageError::ObjectStore {
                cause: object_store::Error::AlreadyExists { .. },
                ..
            }
        )
    }

    /// True when a conditional put ([`RemoteStorage::put_if`]) was refused: the object was
    /// not absent, or not at the expected version (any refusal of a conditional put is this
    /// kind, never [`RemoteStorageError::is_already_exists`]).
    pub fn is_precondition_failed(&self) -> bool {
        matches!(
            self,
            RemoteStorageError::ObjectStore {
                cause: object_store::Error::Precondition { .. },
                ..
            }
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RemoteStorageError::ObjectStore {
                cause: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

pub type Result<T, E = RemoteStorageError> = std::result::Result<T, E>;

/// What a put may do to an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    Overwrite,
    /// Fail with an "already exists" error (see [`RemoteStorageError::is_already_exists`]).
    CreateNew,
}

/// The state of an object one read saw (or one conditional put wrote): an opaque token for
/// [`Expected::Version`]. Equal versions of a key mean equal bytes; two writes of equal bytes
/// may or may not give equal versions (S3's ETag and the local store's version are content
/// hashes, an in-memory store counts writes).
///
/// On S3 and other `object_store` stores it is the ETag, with the store's version id if it has
/// one. In a local folder store it is `sha256:<hex>` of the bytes: the local store's own ETag
/// (inode, mtime, size) can come back after a rename (a freed inode is reused, mtime ticks
/// coarsely), and a stale version must never match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectVersion {
    e_tag: String,
    version: Option<String>,
}

impl ObjectVersion {
    /// The version of `bytes` in a local folder store.
    fn of_local_bytes(bytes: &[u8]) -> ObjectVersion {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut e_tag = String::with_capacity(7 + 64);
        e_tag.push_str("sha256:");
        for byte in digest.as_ref() {
            e_tag.push_str(&format!("{byte:02x}"));
        }
        ObjectVersion {
            e_tag,
            version: None,
        }
    }

    /// The version an `object_store` store reported; an error naming `op` and `key` if the
    /// store reported no ETag (it cannot do conditional puts).
    fn reported(
        op: &'static str,
        key: &str,
        e_tag: Option<String>,
        version: Option<String>,
    ) -> Result<ObjectVersion> {
        match e_tag {
            Some(e_tag) => Ok(ObjectVersion { e_tag, version }),
            None => Err(RemoteStorageError::ObjectStore {
                op,
                key: key.to_string(),
                cause: object_store::Error::NotSupported {
                    source: "the store reported no ETag: it cannot do conditional puts".into(),
                },
            }),
        }
    }
}

impl fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{} (version {version})", self.e_tag),
            None => write!(f, "{}", self.e_tag),
        }
    }
}

/// What a conditional put ([`RemoteStorage::put_if`]) expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// No object: the put creates it.
    Absent,
    /// The object at this version (from [`RemoteStorage::get_with_version`] or an earlier
    /// [`RemoteStorage::put_if`]): the put replaces it.
    Version(ObjectVersion),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Absent => write!(f, "no object"),
            Expected::Version(version) => write!(f, "version {version}"),
        }
    }
}

/// Where the objects live, as parsed from a spec (see [`ObjectStoreSpec::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreSpec {
    /// A local folder.
    Local(PathBuf),
    /// An S3 bucket; every key is stored under `prefix` (no leading or trailing `/`; empty
    /// for the bucket's root).
    S3 { bucket: String, prefix: String },
}

impl ObjectStoreSpec {
    /// Parses `/path`, `relative/path`, `file:///abs/path` or `s3://bucket[/prefix]`.
    pub fn parse(spec: &str) -> Result<ObjectStoreSpec> {
        let bad = |reason: &str| RemoteStorageError::BadSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if spec.is_empty() {
            return Err(bad(
                "empty; expected a local folder, file:///abs/path or s3://bucket/prefix",
            ));
        }
        let Some((scheme, rest)) = spec
            .split_once("://")
            .filter(|(scheme, _)| is_url_scheme(scheme))
        else {
            return Ok(ObjectStoreSpec::Local(PathBuf::from(spec)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad("a file:// URL needs an absolute path (file:///abs/path)"));
                }
                Ok(ObjectStoreSpec::Local(PathBuf::from(rest)))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("missing bucket name (expected s3://bucket[/prefix])"));
                }
                if !bucket
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
                {
                    return Err(bad(
                        "a bucket name holds only letters, digits, '.', '-' and '_'",
                    ));
                }
                let prefix = prefix.trim_end_matches('/');
                if !prefix.is_empty() {
                    Path::parse(prefix).map_err(|e| bad(&format!("bad prefix {prefix:?}: {e}")))?;
                }
                Ok(ObjectStoreSpec::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                })
            }
            _ => Err(bad(&format!(
                "unknown scheme {scheme:?}; expected a local folder, file:///abs/path or s3://bucket/prefix"
            ))),
        }
    }
}

/// Whether `s` is a URL scheme (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn is_url_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
}

/// The S3 store for `bucket`, its keys under `prefix`, with the connection settings of
/// `builder` (endpoint, credentials, region).
///
/// Create-only puts are `If-None-Match: *` requests. The client's own retries are off:
/// [`RemoteStorage`] retries, and it must see every failed attempt of a create-only put to
/// tell "already exists" from "my earlier attempt got there" (a hidden retry after a lost
/// response would report an object it wrote itself as someone else's).
fn s3_object_store(
    builder: AmazonS3Builder,
    bucket: &str,
    prefix: &str,
) -> Result<Arc<dyn ObjectStore>> {
    let s3 = builder
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .build()
        .map_err(|cause| RemoteStorageError::ObjectStore {
            op: "open",
            key: format!("s3://{bucket}"),
            cause,
        })?;
    Ok(if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix))
    })
}

/// A listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    bytes_uploaded: AtomicU64,
    bytes_downloaded: AtomicU64,
    conditional_puts: AtomicU64,
    precondition_failures: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteStorageStats {
    /// Attempts made, retries included.
    pub requests: u64,
    pub retries: u64,
    /// Requests that failed for good.
    pub failures: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    /// Calls of [`RemoteStorage::put_if`] (each counted once, whatever its attempts).
    pub conditional_puts: u64,
    /// Conditional puts refused because the object was not as expected (also counted in
    /// `failures`).
    pub precondition_failures: u64,
}

#[derive(Debug, Clone)]
pub struct RemoteStorage {
    store: Arc<dyn ObjectStore>,
    request_timeout: Duration,
    /// Root folder when the store is a local folder: puts are then fsynced.
    local_root: Option<PathBuf>,
    /// The same store as `store` when it is a local folder: it maps keys to files for the
    /// conditional puts this wrapper does itself.
    local_store: Option<Arc<LocalFileSystem>>,
    counters: Arc<Counters>,
}

impl RemoteStorage {
    /// An object store in a local folder, created if missing.
    pub fn local(root: &FsPath) -> Result<RemoteStorage> {
        let io = |source| RemoteStorageError::Io {
            context: format!("opening the object store folder {}", root.display()),
            source,
        };
        std::fs::create_dir_all(root).map_err(io)?;
        let store = LocalFileSystem::new_with_prefix(root).map_err(|cause| {
            RemoteStorageError::ObjectStore {
                op: "open",
                key: root.display().to_string(),
                cause,
            }
        })?;
        let root = std::fs::canonicalize(root).map_err(io)?;
        let store = Arc::new(store);
        Ok(RemoteStorage {
            store: store.clone(),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_DEFAULT_MS),
            local_root: Some(root),
            local_store: Some(store),
            counters: Arc::default(),
        })
    }

    /// The store a spec names (see [`ObjectStoreSpec::parse`]): a local folder, created if
    /// missing, or an S3 bucket whose connection settings come from the environment:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (default `us-east-1`),
    /// `AWS_ENDPOINT` (an S3-compatible server) and `AWS_ALLOW_HTTP`. Opening an S3 store
    /// makes no request.
    pub fn from_spec(spec: &str) -> Result<RemoteStorage> {
        RemoteStorage::from_spec_with(spec, AmazonS3Builder::from_env())
    }

    /// [`RemoteStorage::from_spec`] with the S3 connection settings of `s3_builder` instead
    /// of the environment's.
    pub(crate) fn from_spec_with(spec: &str, s3_builder: AmazonS3Builder) -> Result<RemoteStorage> {
        match ObjectStoreSpec::parse(spec)? {
            ObjectStoreSpec::Local(root) => RemoteStorage::local(&root),
            ObjectStoreSpec::S3 { bucket, prefix } => Ok(RemoteStorage::from_object_store(
                s3_object_store(s3_builder, &bucket, &prefix)?,
            )),
        }
    }

    /// Any `object_store` implementation (S3, an in-memory store, a fault-injecting wrapper).
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> RemoteStorage {
        RemoteStorage {
            store,
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_DEFAULT_MS),
            local_root: None,
            local_store: None,
            counters: Arc::default(),
        }
    }

    /// The same store with another per-attempt timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> RemoteStorage {
        self.request_timeout = timeout;
        self
    }

    pub fn stats(&self) -> RemoteStorageStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RemoteStorageStats {
            requests: load(&self.counters.requests),
            retries: load(&self.counters.retries),
            failures: load(&self.counters.failures),
            bytes_uploaded: load(&self.counters.bytes_uploaded),
            bytes_downloaded: load(&self.counters.bytes_downloaded),
            conditional_puts: load(&self.counters.conditional_puts),
            precondition_failures: load(&self.counters.precondition_failures),
        }
    }

    /// Runs `attempt` until it succeeds, fails with a non-transient error, or has been tried
    /// [`ATTEMPTS_MAX`] times. An attempt that takes longer than the request timeout counts
    /// as a transient failure.
    async fn with_retries<T, F, Fut>(&self, op: &'static str, key: &str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        self.with_retries_noting(op, key, attempt).await.0
    }

    /// [`RemoteStorage::with_retries`], and whether an attempt failed in a way that leaves its
    /// effect unknown (a transient error or a timeout: the request may have been applied).
    async fn with_retries_noting<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: F,
    ) -> (Result<T>, bool)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut backoff = Duration::from_millis(BACKOFF_MIN_MS);
        let mut n_attempts = 0;
        let mut ambiguous = false;
        loop {
            n_attempts += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = match tokio::time::timeout(self.request_timeout, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(object_store::Error::Generic {
                    store: "RemoteStorage",
                    source: format!("timed out after {:?}", self.request_timeout).into(),
                }),
            };
            match outcome {
                Ok(value) => return (Ok(value), ambiguous),
                Err(cause) if is_transient(&cause) && n_attempts < ATTEMPTS_MAX => {
                    tracing::warn!("object store {op} of {key} failed (attempt {n_attempts}), retrying in {backoff:?}: {cause}");
                    ambiguous = true;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(cause) => {
                    ambiguous |= is_transient(&cause);
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    let error = RemoteStorageError::ObjectStore {
                        op,
                        key: key.to_string(),
                        cause,
                    };
                    return (Err(error), ambiguous);
                }
            }
        }
    }

    pub async fn put(&self, key: &str, bytes: Bytes, mode: PutMode) -> Result<()> {
        let path = Path::from(key);
        let n_bytes = bytes.len() as u64;
        let options = || PutOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::CreateNew => object_store::PutMode::Create,
            },
            ..PutOptions::default()
        };
        let (result, ambiguous) = self
            .with_retries_noting("put", key, || {
                self.store
                    .put_opts(&path, PutPayload::from_bytes(bytes.clone()), options())
            })
            .await;
        match result {
            // A create-only put that "already exists" after an attempt whose effect is unknown
            // may have found its own earlier write: it succeeded if the object holds our bytes.
            Err(e) if e.is_already_exists() && ambiguous => {
                let existing = self.get(key, n_bytes).await;
                if !existing.is_ok_and(|existing| existing == bytes) {
                    return Err(e);
                }
            }
            other => {
                other?;
            }
        }
        self.counters
            .bytes_uploaded
            .fetch_add(n_bytes, Ordering::Relaxed);
        if let Some(root) = &self.local_root {
            fsync_in_background(root.join(key)).await?;
        }
        Ok(())
    }

    /// Writes `bytes` under `key` only if the object is as `expected`: absent, or still at
    /// the version a read (or an earlier conditional put) returned. Returns the version now
    /// stored. A refusal is an error for which [`RemoteStorageError::is_precondition_failed`]
    /// holds, naming the key; the object is then left as it was.
    ///
    /// An attempt whose effect is unknown (a timeout, a lost response) and whose retry is
    /// refused may have been our own write: the put succeeded if the object now holds exactly
    /// `bytes` (then it returns the object's current version), and is refused otherwise (also
    /// when the object cannot be read back). A refusal is never turned into a success for
    /// other bytes. As with any put, a put that fails for another reason (retries spent), or
    /// is refused after an attempt whose effect is unknown, may still have been applied: a
    /// caller that must know reads the object again.
    ///
    /// On S3 these are `If-None-Match: *` and `If-Match: <etag>` requests; S3 may answer
    /// `409 Conflict` to one of several concurrent conditional puts of a key: reported as a
    /// refusal too (nothing was written: read again). In a local folder the wrapper does it
    /// under a per-key lock (see the module documentation); a local folder opened with
    /// [`RemoteStorage::from_object_store`] instead can only create conditionally.
    pub async fn put_if(
        &self,
        key: &str,
        bytes: Bytes,
        expected: Expected,
    ) -> Result<ObjectVersion> {
        const OP: &str = "conditional put";
        self.counters
            .conditional_puts
            .fetch_add(1, Ordering::Relaxed);
        let n_bytes = bytes.len() as u64;
        let path = Path::from(key);
        let mut local_files = None;
        let (result, ambiguous) = match (&self.local_root, &self.local_store) {
            (Some(root), Some(local)) => {
                let object = local.path_to_filesystem(&path).map_err(|cause| {
                    RemoteStorageError::ObjectStore {
                        op: OP,
                        key: key.to_string(),
                        cause,
                    }
                })?;
                let files = LocalPutFiles::new(root, object).ok_or_else(|| {
                    RemoteStorageError::Internal(format!(
                        "the file of {key} is not under the store's folder {}",
                        root.display()
                    ))
                })?;
                local_files = Some(files.clone());
                self.with_retries_noting(OP, key, || {
                    let (files, bytes, expected) = (files.clone(), bytes.clone(), expected.clone());
                    let key = key.to_string();
                    async move {
                        tokio::task::spawn_blocking(move || {
                            local_put_if(&files, &bytes, &expected, &key)
                        })
                        .await
                        .map_err(|source| object_store::Error::JoinError { source })?
                    }
                })
                .await
            }
            _ => {
                let mode = match &expected {
                    Expected::Absent => object_store::PutMode::Create,
                    Expected::Version(version) => object_store::PutMode::Update(UpdateVersion {
                        e_tag: Some(version.e_tag.clone()),
                        version: version.version.clone(),
                    }),
                };
                let (result, ambiguous) = self
                    .with_retries_noting(OP, key, || async {
                        let options = PutOptions {
                            mode: mode.clone(),
                            ..PutOptions::default()
                        };
                        let payload = PutPayload::from_bytes(bytes.clone());
                        self.store
                            .put_opts(&path, payload, options)
                            .await
                            .map_err(|e| refusal_as_precondition(e, key, &expected))
                    })
                    .await;
                let result =
                    result.and_then(|put| ObjectVersion::reported(OP, key, put.e_tag, put.version));
                (result, ambiguous)
            }
        };
        let version = match result {
            Ok(version) => version,
            // Refused after an attempt whose effect is unknown: that attempt may have been
            // applied, and the object is ours if it holds our bytes.
            Err(e) if e.is_precondition_failed() && ambiguous => {
                match self.get_with_version(key, n_bytes).await {
                    Ok((existing, version)) if existing == bytes => {
                        if let Some(files) = local_files {
                            // The attempt that wrote it may have failed before its fsync.
                            fsync_in_background(files.object).await?;
                        }
                        version
                    }
                    _ => {
                        self.counters
                            .precondition_failures
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                if e.is_precondition_failed() {
                    self.counters
                        .precondition_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        self.counters
            .bytes_uploaded
            .fetch_add(n_bytes, Ordering::Relaxed);
        Ok(version)
    }

    /// The whole object; an object larger than `bytes_max` is an error, not a download.
    pub async fn get(&self, key: &str, bytes_max: u64) -> Result<Bytes> {
        Ok(self.get_with_meta(key, bytes_max).await?.0)
    }

    /// The whole object (as [`RemoteStorage::get`]) and the version it is at, for a
    /// conditional put that replaces it ([`Expected::Version`]). The version belongs to these
    /// bytes: both come from one response (in a local folder, it is computed from them).
    pub async fn get_with_version(
        &self,
        key: &str,
        bytes_max: u64,
    ) -> Result<(Bytes, ObjectVersion)> {
        let (bytes, meta) = self.get_with_meta(key, bytes_max).await?;
        let version = if self.local_store.is_some() {
            ObjectVersion::of_local_bytes(&bytes)
        } else {
            ObjectVersion::reported("get", key, meta.e_tag, meta.version)?
        };
        Ok((bytes, version))
    }

    /// [`RemoteStorage::get`], and what the store said about the object.
    async fn get_with_meta(&self, key: &str, bytes_max: u64) -> Result<(Bytes, ObjectMeta)> {
        let path = Path::from(key);
        let (bytes, meta) = self
            .with_retries("get", key, || async {
                let result = self.store.get(&path).await?;
                if result.meta.size > bytes_max {
                    return Ok(Err(result.meta.size));
                }
                let meta = result.meta.clone();
                result.bytes().await.map(|bytes| Ok((bytes, meta)))
            })
            .await?
            .map_err(|size_bytes| RemoteStorageError::TooLarge {
                key: key.to_string(),
                size_bytes,
                bytes_max,
            })?;
        self.counters
            .bytes_downloaded
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((bytes, meta))
    }

    /// The bytes `range` of an object: exactly `range.end - range.start` of them. The range
    /// is the limit on bytes: the store must answer with exactly that range, which is
    /// checked before the body is read (a body shorter than promised is a failed attempt,
    /// retried). An object that ends inside the range is
    /// [`RemoteStorageError::Corrupt`]; one that ends before the range starts is an object
    /// store error (which the store reports like a transient failure, so it is retried). An
    /// empty range reads nothing and makes no request; a range that ends before it starts
    /// is an internal error.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.end < range.start {
            return Err(RemoteStorageError::Internal(format!(
                "ranged get of {key} with a backwards range {range:?}"
            )));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let path = Path::from(key);
        let n_bytes = range.end - range.start;
        let short = |got: Range<u64>, size_bytes: u64| RemoteStorageError::Corrupt {
            key: key.to_string(),
            reason: format!(
                "asked for bytes {range:?}, got {got:?} (the object has {size_bytes} bytes)"
            ),
        };
        let bytes = self
            .with_retries("ranged get", key, || async {
                let options = GetOptions::new().with_range(Some(range.clone()));
                let result = self.store.get_opts(&path, options).await?;
                if result.range != range {
                    return Ok(Err((result.range, result.meta.size)));
                }
                let bytes = result.bytes().await?;
                if bytes.len() as u64 != n_bytes {
                    // The store promised the range and sent less: a cut response, worth
                    // another attempt.
                    return Err(object_store::Error::Generic {
                        store: "RemoteStorage",
                        source: format!("a body of {} bytes for {n_bytes}", bytes.len()).into(),
                    });
                }
                Ok(Ok(bytes))
            })
            .await?
            .map_err(|(got, size_bytes)| short(got, size_bytes))?;
        self.counters
            .bytes_downloaded
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Every object whose key starts with the folder `prefix` (recursively). In a local
    /// folder, never the conditional puts' lock files (see the module documentation).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = Path::from(prefix);
        let locks = Path::from(LOCAL_LOCKS_FOLDER);
        let local = self.local_store.is_some();
        self.with_retries("list", prefix, || async {
            let metas: Vec<object_store::ObjectMeta> =
                self.store.list(Some(&path)).try_collect().await?;
            Ok(metas
                .into_iter()
                .filter(|meta| !(local && meta.location.prefix_matches(&locks)))
                .map(|meta| ObjectInfo {
                    key: meta.location.to_string(),
                    size_bytes: meta.size,
                })
                .collect())
        })
        .await
    }

    /// Deletes an object; deleting one that is not there succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = Path::from(key);
        self.with_retries("delete", key, || async {
            match self.store.delete(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        })
        .await
    }
}

/// The folder, directly under a local folder store's root, of the conditional puts' lock and
/// staged files (see the module documentation).
const LOCAL_LOCKS_FOLDER: &str = ".locks";

/// The files of conditional puts of one key into a local folder: the object, its lock file,
/// and where its new bytes are staged (only by the lock's holder). A key's segments never
/// hold `#` (`object_store` escapes it), so `#lock` and `#tmp` name no other key's folder.
#[derive(Debug, Clone)]
struct LocalPutFiles {
    object: PathBuf,
    lock: PathBuf,
    staged: PathBuf,
}

impl LocalPutFiles {
    /// The files for `object`, a file under `root`; `None` if it is not under it.
    fn new(root: &FsPath, object: PathBuf) -> Option<LocalPutFiles> {
        let under_locks = root
            .join(LOCAL_LOCKS_FOLDER)
            .join(object.strip_prefix(root).ok()?);
        let with_suffix = |suffix: &str| {
            let mut name = under_locks.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        Some(LocalPutFiles {
            lock: with_suffix("#lock"),
            staged: with_suffix("#tmp"),
            object,
        })
    }
}

/// One attempt of a conditional put into a local folder. Under the key's lock (an exclusive
/// `flock`, released when the lock file is closed): reads the object's version, refuses if it
/// is not as expected, stages the bytes and fsyncs them, moves them into place (a rename to
/// replace; a hard link to create, which never lands on an object a plain put created
/// meanwhile) and fsyncs the folders. I/O errors are `Generic` (retried), as the local
/// store's own are.
fn local_put_if(
    files: &LocalPutFiles,
    bytes: &[u8],
    expected: &Expected,
    key: &str,
) -> object_store::Result<ObjectVersion> {
    use std::io::{ErrorKind, Write};
    let io = |what: &str, path: &FsPath, e: std::io::Error| object_store::Error::Generic {
        store: "RemoteStorage",
        source: format!("{what} {}: {e}", path.display()).into(),
    };
    let refused = |found: &str| object_store::Error::Precondition {
        path: key.to_string(),
        source: format!("expected {expected}, found {found}").into(),
    };
    let create_parent = |file: &FsPath| match file.parent() {
        Some(folder) => std::fs::create_dir_all(folder).map_err(|e| io("creating", folder, e)),
        None => Ok(()),
    };
    create_parent(&files.lock)?;
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&files.lock)
        .map_err(|e| io("opening", &files.lock, e))?;
    lock.lock().map_err(|e| io("locking", &files.lock, e))?;

    let current = match std::fs::read(&files.object) {
        Ok(current) => Some(ObjectVersion::of_local_bytes(&current)),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", &files.object, e)),
    };
    match (expected, &current) {
        (Expected::Absent, None) => {}
        (Expected::Version(version), Some(current)) if version == current => {}
        (_, Some(current)) => return Err(refused(&format!("version {current}"))),
        (_, None) => return Err(refused("no object")),
    }

    // A staged file left by a crash may be a second name of the object (a create's hard
    // link): unlink it rather than truncate it.
    match std::fs::remove_file(&files.staged) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io("removing", &files.staged, e)),
        _ => {}
    }
    let mut staged = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&files.staged)
        .map_err(|e| io("creating", &files.staged, e))?;
    staged
        .write_all(bytes)
        .and_then(|()| staged.sync_all())
        .map_err(|e| io("writing", &files.staged, e))?;
    drop(staged);
    create_parent(&files.object)?;
    match expected {
        Expected::Absent => {
            let linked = std::fs::hard_link(&files.staged, &files.object);
            let _ = std::fs::remove_file(&files.staged);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(refused("an object written meanwhile by a plain put"))
                }
                Err(e) => return Err(io("linking", &files.object, e)),
            }
        }
        Expected::Version(_) => std::fs::rename(&files.staged, &files.object)
            .map_err(|e| io("renaming onto", &files.object, e))?,
    }
    fsync_file_and_folders(&files.object).map_err(|e| io("fsyncing", &files.object, e))?;
    drop(lock);
    Ok(ObjectVersion::of_local_bytes(bytes))
}

/// A conditional put's refusal, whatever the store called it, as a precondition failure
/// naming `key`: "already exists" (a create onto an object; also S3's `409 Conflict` between
/// concurrent conditional puts, which `object_store` reports so), "not modified", and "not
/// found" when replacing (the object is gone). Other errors are left as they are.
fn refusal_as_precondition(
    error: object_store::Error,
    key: &str,
    expected: &Expected,
) -> object_store::Error {
    match error {
        object_store::Error::AlreadyExists { .. } | object_store::Error::NotModified { .. } => {
            object_store::Error::Precondition {
                path: key.to_string(),
                source: Box::new(error),
            }
        }
        object_store::Error::NotFound { .. } if matches!(expected, Expected::Version(_)) => {
            object_store::Error::Precondition {
                path: key.to_string(),
                source: Box::new(error),
            }
        }
        other => other,
    }
}

/// [`fsync_file_and_folders`] off the async threads.
async fn fsync_in_background(file: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        fsync_file_and_folders(&file).map_err(|source| RemoteStorageError::Io {
            context: format!("fsyncing {}", file.display()),
            source,
        })
    })
    .await
    .map_err(|e| RemoteStorageError::Internal(format!("fsync task failed: {e}")))?
}

/// Errors worth another attempt: the request may succeed if made again. "Not found",
/// "already exists", preconditions, bad paths and permissions will not change.
fn is_transient(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

/// Makes a renamed-into-place file durable: the file, its folder (which holds the new name)
/// and the folder above (which may hold a new folder).
fn fsync_file_and_folders(file: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    let mut folder = file.parent();
    for _ in 0..2 {
        let Some(dir) = folder else { break };
        std::fs::File::open(dir)?.sync_all()?;
        folder = dir.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "omendb-remote-storage-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn specs_name_a_local_folder_or_an_s3_bucket() {
        let s3 = |bucket: &str, prefix: &str| ObjectStoreSpec::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        let local = |path: &str| ObjectStoreSpec::Local(PathBuf::from(path));
        for (spec, parsed) in [
            ("/var/omendb/objects", local("/var/omendb/objects")),
            ("relative/objects", local("relative/objects")),
            ("file:///var/omendb/objects", local("/var/omendb/objects")),
            ("s3://bucket", s3("bucket", "")),
            ("s3://bucket/", s3("bucket", "")),
            (
                "s3://my-bucket.v2/some/prefix",
                s3("my-bucket.v2", "some/prefix"),
            ),
            ("S3://bucket/some/prefix/", s3("bucket", "some/prefix")),
            // Not a URL scheme before "://": a (strange) local path.
            ("./odd://name", local("./odd://name")),
        ] {
            assert_eq!(ObjectStoreSpec::parse(spec).unwrap(), parsed, "{spec}");
        }
        for (spec, reason) in [
            ("", "empty"),
            ("gs://bucket/prefix", "unknown scheme \"gs\""),
            ("http://localhost:9000/bucket", "unknown scheme \"http\""),
            ("s3://", "missing bucket name"),
            ("s3:///prefix", "missing bucket name"),
            ("s3://bucket?x=1/prefix", "bucket name holds only"),
            ("s3://bucket/a//b", "bad prefix"),
            ("s3://bucket/a/../b", "bad prefix"),
            ("file://relative/path", "absolute path"),
        ] {
            let err = ObjectStoreSpec::parse(spec).unwrap_err();
            assert!(
                matches!(err, RemoteStorageError::BadSpec { .. })
                    && err.to_string().contains(reason),
                "{spec}: {err}"
            );
            assert!(RemoteStorage::from_spec(spec).is_err(), "{spec}");
        }
        // Opening an S3 store makes no request: a spec is enough, whatever the environment.
        assert!(RemoteStorage::from_spec("s3://bucket/prefix").is_ok());
        let root = temp_dir("spec");
        let remote = RemoteStorage::from_spec(&format!("file://{}", root.display())).unwrap();
        assert!(remote.local_root.is_some() && root.is_dir());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn put_get_list_delete_and_counters() {
        let root = temp_dir("basic");
        let remote = RemoteStorage::local(&root).unwrap();
        remote
            .put("a/b/one", Bytes::from_static(b"12345"), PutMode::Overwrite)
            .await
            .unwrap();
        remote
            .put("a/two", Bytes::from_static(b"xy"), PutMode::CreateNew)
            .await
            .unwrap();
        let err = remote
            .put("a/two", Bytes::from_static(b"z"), PutMode::CreateNew)
            .await
            .unwrap_err();
        assert!(err.is_already_exists(), "{err}");
        assert_eq!(remote.get("a/two", 100).await.unwrap(), "xy");
        let too_large = remote.get("a/b/one", 4).await.unwrap_err();
        assert!(
            matches!(
                too_large,
                RemoteStorageError::TooLarge { size_bytes: 5, .. }
            ),
            "{too_large}"
        );
        let missing = remote.get("a/missing", 100).await.unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        let mut listed = remote.list("a").await.unwrap();
        listed.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(
            listed,
            vec![
                ObjectInfo {
                    key: "a/b/one".into(),
                    size_bytes: 5
                },
                ObjectInfo {
                    key: "a/two".into(),
                    size_bytes: 2
                }
            ]
        );
        assert!(remote.list("nothing/here").await.unwrap().is_empty());
        remote.delete("a/two").await.unwrap();
        remote.delete("a/two").await.unwrap();
        assert_eq!(remote.list("a").await.unwrap().len(), 1);
        let stats = remote.stats();
        assert_eq!(stats.bytes_uploaded, 7);
        assert_eq!(stats.bytes_downloaded, 2);
        assert_eq!(stats.failures, 2, "already exists and not found");
        assert_eq!(stats.retries, 0, "none of those failures is transient");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn ranged_gets_return_exactly_the_range() {
        let root = temp_dir("ranged");
        let remote = RemoteStorage::local(&root).unwrap();
        let content = Bytes::from((0..100u8).collect::<Vec<u8>>());
        remote
            .put("r/obj", content.clone(), PutMode::Overwrite)
            .await
            .unwrap();
        for range in [10..20, 0..100, 99..100, 0..1] {
            let got = remote.get_range("r/obj", range.clone()).await.unwrap();
            assert_eq!(got, content.slice(range.start as usize..range.end as usize));
        }
        assert_eq!(remote.stats().bytes_downloaded, 10 + 100 + 1 + 1);
        let requests = remote.stats().requests;
        assert!(remote.get_range("r/obj", 7..7).await.unwrap().is_empty());
        assert_eq!(
            remote.stats().requests,
            requests,
            "an empty range asks nothing"
        );
        // An object that ends inside the range: corrupt, not retried, nothing counted.
        let short = remote.get_range("r/obj", 90..110).await.unwrap_err();
        assert!(
            matches!(&short, RemoteStorageError::Corrupt { key, .. } if key == "r/obj"),
            "{short}"
        );
        assert!(short.to_string().contains("100 bytes"), "{short}");
        assert_eq!(remote.stats().retries, 0);
        assert_eq!(remote.stats().bytes_downloaded, 112);
        let backwards = remote
            .get_range("r/obj", Range { start: 20, end: 10 })
            .await
            .unwrap_err();
        assert!(
            matches!(backwards, RemoteStorageError::Internal(_)),
            "{backwards}"
        );
        let missing = remote.get_range("r/missing", 0..10).await.unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        // An object that ends before the range starts: the store's error, naming the key.
        let past_end = remote.get_range("r/obj", 150..160).await.unwrap_err();
        assert!(
            matches!(&past_end, RemoteStorageError::ObjectStore { op: "ranged get", key, .. } if key == "r/obj"),
            "{past_end}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Ranged gets through injected failures and lost responses: retried, and every one that
    /// succeeds returns exactly its range.
    #[tokio::test]
    async fn ranged_gets_through_faults_are_retried_and_exact() {
        use crate::faults::{FaultRates, FaultyStore};
        let content = Bytes::from((0..4096u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        inner
            .put(
                &Path::from("f/obj"),
                PutPayload::from_bytes(content.clone()),
            )
            .await
            .unwrap();
        let faulty = Arc::new(FaultyStore::new(
            inner,
            FaultRates {
                fail_percent: 20,
                lost_response_percent: 20,
                ..FaultRates::default()
            },
            7,
        ));
        let remote = RemoteStorage::from_object_store(faulty.clone());
        let mut n_ok = 0;
        for i in 0..30u64 {
            let range = i * 100..i * 100 + 1 + i * 31;
            if let Ok(got) = remote.get_range("f/obj", range.clone()).await {
                assert_eq!(got, content.slice(range.start as usize..range.end as usize));
                n_ok += 1;
            }
        }
        let stats = remote.stats();
        assert!(n_ok >= 20, "only {n_ok} of 30 ranged gets succeeded");
        assert!(stats.retries > 0, "{stats:?}");
        assert!(
            faulty.counts.failed.load(Ordering::Relaxed) > 0
                && faulty.counts.lost_responses.load(Ordering::Relaxed) > 0,
            "{:?}",
            faulty.counts
        );
    }

    /// Create-only puts through injected failures, timeouts and lost responses: a put that
    /// reports success stored our bytes; a put onto an existing object never replaces it,
    /// even when the retry of a put whose response was lost finds "already exists".
    #[tokio::test]
    async fn create_only_puts_through_faults_never_overwrite() {
        use crate::faults::{FaultRates, FaultyStore};
        for seed in 1..=3u64 {
            let faulty = Arc::new(FaultyStore::new(
                Arc::new(object_store::memory::InMemory::new()),
                FaultRates {
                    fail_percent: 15,
                    slow_percent: 5,
                    lost_response_percent: 20,
                    slow_ms: 200,
                },
                seed,
            ));
            let remote = RemoteStorage::from_object_store(faulty.clone())
                .with_request_timeout(Duration::from_millis(50));
            crate::faults::check_create_only_puts(&faulty, &remote, 40, seed).await;
            assert!(
                faulty.counts.slowed.load(Ordering::Relaxed) > 0,
                "seed {seed}: no request was slowed"
            );
        }
    }

    /// Conditional puts in a local folder: create, update, stale and "absent" refusals (the
    /// object left as it was), versions that change with every write of other bytes, lock
    /// files that listing never returns.
    #[tokio::test]
    async fn conditional_puts_in_a_local_folder() {
        let root = temp_dir("conditional");
        let remote = RemoteStorage::local(&root).unwrap();
        let key = "t/index";
        let (versions, last_bytes) =
            faults::check_conditional_put_rules(&remote, key, "t/missing", 50).await;
        let last = versions.last().unwrap().clone();
        // Equal bytes, equal version (the version is a content hash).
        let again = remote
            .put_if(key, last_bytes, Expected::Version(last.clone()))
            .await
            .unwrap();
        assert_eq!(again, last);

        // A plain put changes the version too: a conditional put based on the old one is
        // refused.
        remote
            .put(key, Bytes::from_static(b"plain"), PutMode::Overwrite)
            .await
            .unwrap();
        let after_plain = remote
            .put_if(key, Bytes::from_static(b"late"), Expected::Version(last))
            .await
            .unwrap_err();
        assert!(faults::refused(&after_plain, key), "{after_plain}");
        assert_eq!(remote.get(key, 100).await.unwrap(), "plain");

        // The lock files are where the module documentation says, and never listed.
        assert!(root.join(".locks/t/index#lock").is_file());
        assert!(root.join(".locks/t/missing#lock").is_file());
        for prefix in ["", "t", ".locks"] {
            let keys: Vec<String> = remote
                .list(prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
            let expected: Vec<String> = if prefix == ".locks" {
                vec![]
            } else {
                vec![key.to_string()]
            };
            assert_eq!(keys, expected, "listing {prefix:?}");
        }
        let stats = remote.stats();
        assert_eq!(stats.conditional_puts, 2 + 3 + 50 + 1 + 1, "{stats:?}");
        assert_eq!(stats.precondition_failures, 4, "{stats:?}");
        assert_eq!(stats.retries, 0, "{stats:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// 8 tasks each add 25 increments to a counter in a local folder through conditional
    /// puts: none is lost, and the tasks did conflict.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_conditional_increments_in_a_local_folder_lose_nothing() {
        let root = temp_dir("increments");
        let remote = RemoteStorage::local(&root).unwrap();
        let outcome =
            crate::faults::check_conditional_increments(&remote, "t/counter", 8, 25).await;
        assert_eq!(outcome.last.total, 200);
        assert_eq!(outcome.acknowledged, 200, "no fault: every put answered");
        assert!(
            outcome.refused > 0,
            "the tasks never conflicted: {outcome:?}"
        );
        let stats = remote.stats();
        assert_eq!(stats.precondition_failures, outcome.refused, "{stats:?}");
        assert_eq!(stats.conditional_puts, 200 + outcome.refused, "{stats:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The same increments through injected failures, timeouts and lost responses over an
    /// in-memory store: none is lost, and the puts that reached the store form one chain
    /// (each one's total is the previous one's plus one: no put replaced a newer object,
    /// none landed twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conditional_increments_through_faults_lose_nothing() {
        use crate::faults::{Counter, FaultRates, FaultyStore};
        let faulty = Arc::new(FaultyStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            FaultRates {
                fail_percent: 15,
                slow_percent: 5,
                lost_response_percent: 20,
                slow_ms: 200,
            },
            11,
        ));
        let remote = RemoteStorage::from_object_store(faulty.clone())
            .with_request_timeout(Duration::from_millis(50));
        let outcome =
            crate::faults::check_conditional_increments(&remote, "t/counter", 8, 25).await;
        faulty.set_rates(FaultRates::default());
        let totals: Vec<u32> = faulty
            .recorded_puts()
            .iter()
            .map(|(key, bytes)| {
                assert_eq!(key, "t/counter");
                Counter::decode(bytes).total
            })
            .collect();
        assert_eq!(totals, (1..=200).collect::<Vec<u32>>());
        assert!(outcome.refused > 0, "{outcome:?}");
        assert!(
            faulty.counts.failed.load(Ordering::Relaxed) > 0
                && faulty.counts.slowed.load(Ordering::Relaxed) > 0
                && faulty.counts.lost_responses.load(Ordering::Relaxed) > 0,
            "{:?}",
            faulty.counts
        );
        assert!(remote.stats().retries > 0, "{:?}", remote.stats());
    }

    /// A conditional put whose first attempt lands but whose response is lost: its retry is
    /// refused, and the put succeeds only if the object still holds its bytes. Another
    /// writer's put between the attempts is a conflict, never a success.
    #[tokio::test]
    async fn conditional_put_after_a_lost_response() {
        use crate::faults::{FaultRates, FaultyStore};
        let lost = FaultRates {
            lost_response_percent: 100,
            ..FaultRates::default()
        };
        for interfere in [false, true] {
            for create in [true, false] {
                let inner = Arc::new(object_store::memory::InMemory::new());
                let faulty = Arc::new(FaultyStore::new(inner.clone(), FaultRates::default(), 3));
                let remote = RemoteStorage::from_object_store(faulty.clone());
                let key = "t/index";
                let expected = if create {
                    Expected::Absent
                } else {
                    let version = remote
                        .put_if(key, Bytes::from_static(b"old"), Expected::Absent)
                        .await
                        .unwrap();
                    Expected::Version(version)
                };
                let n_recorded = faulty.recorded_puts().len();
                faulty.set_rates(lost);
                // The first attempt lands and its response is lost; during the backoff before
                // the retry, the store heals and (maybe) another writer puts other bytes (of
                // the same size: the retry reads them to tell whose they are).
                let other_writer = async {
                    while faulty.recorded_puts().len() == n_recorded {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    faulty.set_rates(FaultRates::default());
                    if interfere {
                        inner
                            .put(&Path::from(key), PutPayload::from_static(b"them"))
                            .await
                            .unwrap();
                    }
                };
                let (result, ()) = tokio::join!(
                    remote.put_if(key, Bytes::from_static(b"mine"), expected),
                    other_writer
                );
                let case = format!("interfere {interfere}, create {create}");
                let (stored, version) = remote.get_with_version(key, 100).await.unwrap();
                if interfere {
                    let e = result.unwrap_err();
                    assert!(
                        e.is_precondition_failed() && e.to_string().contains(key),
                        "{case}: {e}"
                    );
                    assert_eq!(stored, "them", "{case}");
                } else {
                    assert_eq!(result.unwrap(), version, "{case}");
                    assert_eq!(stored, "mine", "{case}");
                }
                assert_eq!(
                    faulty.counts.lost_responses.load(Ordering::Relaxed),
                    1,
                    "{case}"
                );
                assert_eq!(faulty.recorded_puts().len(), n_recorded + 1, "{case}");
                let stats = remote.stats();
                assert_eq!(stats.retries, 1, "{case}: {stats:?}");
                assert_eq!(
                    stats.precondition_failures,
                    u64::from(interfere),
                    "{case}: {stats:?}"
                );
            }
        }
    }
}
