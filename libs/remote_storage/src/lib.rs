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

use std::future::Future;
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
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig};

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
}

#[derive(Debug, Clone)]
pub struct RemoteStorage {
    store: Arc<dyn ObjectStore>,
    request_timeout: Duration,
    /// Root folder when the store is a local folder: puts are then fsynced.
    local_root: Option<PathBuf>,
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
        Ok(RemoteStorage {
            store: Arc::new(store),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_DEFAULT_MS),
            local_root: Some(root),
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
            let file = root.join(key);
            tokio::task::spawn_blocking(move || {
                fsync_file_and_folders(&file).map_err(|source| RemoteStorageError::Io {
                    context: format!("fsyncing {}", file.display()),
                    source,
                })
            })
            .await
            .map_err(|e| RemoteStorageError::Internal(format!("fsync task failed: {e}")))??;
        }
        Ok(())
    }

    /// The whole object; an object larger than `bytes_max` is an error, not a download.
    pub async fn get(&self, key: &str, bytes_max: u64) -> Result<Bytes> {
        let path = Path::from(key);
        let bytes = self
            .with_retries("get", key, || async {
                let result = self.store.get(&path).await?;
                if result.meta.size > bytes_max {
                    return Ok(Err(result.meta.size));
                }
                result.bytes().await.map(Ok)
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
        Ok(bytes)
    }

    /// Every object whose key starts with the folder `prefix` (recursively).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = Path::from(prefix);
        self.with_retries("list", prefix, || async {
            let metas: Vec<object_store::ObjectMeta> =
                self.store.list(Some(&path)).try_collect().await?;
            Ok(metas
                .into_iter()
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
}
