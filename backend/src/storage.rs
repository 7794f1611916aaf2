//! Object storage behind every bucket, through the `object_store` crate.
//!
//! `storage.url` picks the kind of store; each bucket a call names becomes one store:
//!
//! | url                    | bucket `b` is                                   |
//! |------------------------|-------------------------------------------------|
//! | `file:///var/lib/x`    | the directory `/var/lib/x/b` (must exist)        |
//! | `s3://`, `gs://`, `az://` | `s3://b` etc., configured by `storage.options` |
//! | `memory://`            | an in-memory store (unit tests only)            |
//!
//! A remote store answers a guest's call within `storage.call_timeout_secs`, failed or not:
//! half of it bounds each request (connecting, the answer and its body), the other half the
//! retries after a failed one (object_store gives up retrying once that much time has passed).
//! A store that is down or stuck becomes an error the handler sees, not a hang.
//!
//! A local store's directory is created when missing (the default, `/var/lib/nexus/objects`,
//! on a fresh host), so a backend never reports ready on a store that does not exist; if it
//! cannot be created the backend refuses to start, naming it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_channel::wire::Status;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{Attribute, Attributes, ClientOptions, ObjectStore, RetryConfig};

use crate::config::StorageConfig;

/// Errors of the storage layer, each with the S3 status a guest sees.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store URL is not one Nexus supports.
    #[error("Unsupported storage url {0:?}: use file://DIR, s3://, gs://, az:// or memory://")]
    Url(String),
    /// The bucket does not exist.
    #[error("The specified bucket does not exist: {0}")]
    NoSuchBucket(String),
    /// The key cannot be expressed as an object_store path.
    #[error(
        "Object key {0:?} is not supported (empty, '.' or '..' segments, or control characters)"
    )]
    Key(String),
    /// The local store's directory is missing and cannot be created.
    #[error(
        "Cannot create the storage directory {0} (storage.url): create it, or set storage.url"
    )]
    Root(PathBuf, #[source] std::io::Error),
    /// The store could not be built for a bucket.
    #[error("Cannot open bucket {bucket}")]
    Open {
        bucket: String,
        #[source]
        source: object_store::Error,
    },
    /// The store reported an error.
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

impl StorageError {
    /// The status a guest receives for this error.
    pub fn status(&self) -> Status {
        use object_store::Error as E;
        match self {
            StorageError::NoSuchBucket(_) => Status::NoSuchBucket,
            StorageError::Key(_) => Status::InvalidArgument,
            StorageError::Url(_) | StorageError::Root(..) | StorageError::Open { .. } => {
                Status::InternalError
            }
            StorageError::Store(e) => match e {
                E::NotFound { .. } => Status::NoSuchKey,
                E::PermissionDenied { .. } | E::Unauthenticated { .. } => Status::AccessDenied,
                E::Precondition { .. } | E::AlreadyExists { .. } => Status::PreconditionFailed,
                E::NotImplemented { .. } | E::NotSupported { .. } => Status::NotImplemented,
                E::InvalidPath { .. } => Status::InvalidArgument,
                _ => Status::InternalError,
            },
        }
    }

    /// The message a guest receives: S3's wording for the common codes.
    pub fn guest_message(&self) -> String {
        match self.status() {
            Status::NoSuchKey => "The specified key does not exist.".into(),
            Status::NoSuchBucket => "The specified bucket does not exist.".into(),
            Status::AccessDenied => "Access Denied".into(),
            _ => error_chain(self),
        }
    }
}

/// Renders an error with its sources, for logs and error completions.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[derive(Debug)]
enum Kind {
    Local(PathBuf),
    Memory,
    Remote { scheme: String, options: Vec<(String, String)>, call_timeout: Duration },
}

/// How often a remote store's client tries one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Attempts {
    /// object_store's own retries (10 tries within 3 minutes): for guest calls.
    Retried,
    /// Once: for callers that retry themselves (the write-back uploader).
    Once,
}

/// The stores of all buckets, opened on first use.
#[derive(Debug)]
pub struct Storage {
    kind: Kind,
    buckets: Mutex<HashMap<(String, Attempts), Arc<dyn ObjectStore>>>,
}

impl Storage {
    /// Storage as configured.
    pub fn new(config: &StorageConfig) -> Result<Self, StorageError> {
        let url =
            url::Url::parse(&config.url).map_err(|_| StorageError::Url(config.url.clone()))?;
        let kind = match url.scheme() {
            "file" => Kind::Local(local_root(url.path())?),
            "memory" => Kind::Memory,
            scheme @ ("s3" | "gs" | "az") => Kind::Remote {
                scheme: scheme.into(),
                options: config.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                call_timeout: Duration::from_secs(config.call_timeout_secs),
            },
            _ => return Err(StorageError::Url(config.url.clone())),
        };
        Ok(Self { kind, buckets: Mutex::new(HashMap::new()) })
    }

    /// Whether the store lists keys in lexicographic order (S3, GCS, Azure and memory do; a
    /// local directory lists in whatever order the file system gives).
    pub fn lists_in_order(&self) -> bool {
        !matches!(self.kind, Kind::Local(_))
    }

    /// Whether the store keeps `ContentType` and user metadata (the local directory does not).
    pub fn keeps_attributes(&self) -> bool {
        !matches!(self.kind, Kind::Local(_))
    }

    /// The attributes a put sets, those the store keeps.
    pub fn attributes(
        &self,
        content_type: Option<&str>,
        metadata: &BTreeMap<String, String>,
    ) -> Attributes {
        let mut attributes = Attributes::new();
        if !self.keeps_attributes() {
            return attributes;
        }
        if let Some(content_type) = content_type {
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        }
        for (key, value) in metadata {
            attributes.insert(Attribute::Metadata(key.clone().into()), value.clone().into());
        }
        attributes
    }

    /// Whether the ETag of an object stored with one PUT is the MD5 of its bytes, as S3 and GCS
    /// make it (a local directory, Azure and the memory store make their own).
    pub fn etags_are_md5(&self) -> bool {
        matches!(&self.kind, Kind::Remote { scheme, .. } if scheme == "s3" || scheme == "gs")
    }

    /// The store of `bucket` (a name already checked by the wire parser).
    pub fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
        self.bucket_with(bucket, Attempts::Retried)
    }

    /// The store of `bucket` whose client tries each request once, for a caller with its own
    /// retry policy. A local or memory store is the same as [`Storage::bucket`]'s.
    pub fn bucket_tried_once(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
        match self.kind {
            Kind::Remote { .. } => self.bucket_with(bucket, Attempts::Once),
            Kind::Local(_) | Kind::Memory => self.bucket_with(bucket, Attempts::Retried),
        }
    }

    fn bucket_with(
        &self,
        bucket: &str,
        attempts: Attempts,
    ) -> Result<Arc<dyn ObjectStore>, StorageError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let id = (bucket.to_owned(), attempts);
        if let Some(store) = buckets.get(&id) {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = match &self.kind {
            Kind::Local(root) => {
                let dir = root.join(bucket);
                if !dir.is_dir() {
                    return Err(StorageError::NoSuchBucket(bucket.into()));
                }
                let open = |source| StorageError::Open { bucket: bucket.into(), source };
                Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(open)?)
            }
            Kind::Memory => Arc::new(InMemory::new()),
            Kind::Remote { scheme, options, call_timeout } => {
                let url = url::Url::parse(&format!("{scheme}://{bucket}"))
                    .map_err(|_| StorageError::NoSuchBucket(bucket.into()))?;
                let open = |source| StorageError::Open { bucket: bucket.into(), source };
                let (retry, client) = match attempts {
                    Attempts::Retried => {
                        let half = *call_timeout / 2;
                        let retry = RetryConfig { retry_timeout: half, ..RetryConfig::default() };
                        (retry, ClientOptions::new().with_timeout(half))
                    }
                    Attempts::Once => (
                        RetryConfig { max_retries: 0, ..RetryConfig::default() },
                        ClientOptions::new(),
                    ),
                };
                remote_store(scheme, &url, options, retry, client).map_err(open)?
            }
        };
        buckets.insert(id, store.clone());
        Ok(store)
    }
}

/// A remote store built as `object_store::parse_url_opts` builds it (unknown options are
/// ignored the same way), with `retry` and `client` under the user's options (which may still
/// set the client's timeouts).
fn remote_store(
    scheme: &str,
    url: &url::Url,
    options: &[(String, String)],
    retry: RetryConfig,
    client: ClientOptions,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    macro_rules! build {
        ($builder:ty) => {{
            let builder = options.iter().fold(
                <$builder>::new()
                    .with_url(url.to_string())
                    .with_retry(retry)
                    .with_client_options(client),
                |builder, (key, value)| match key.to_ascii_lowercase().parse() {
                    Ok(key) => builder.with_config(key, value),
                    Err(_) => builder,
                },
            );
            Arc::new(builder.build()?) as Arc<dyn ObjectStore>
        }};
    }
    Ok(match scheme {
        "s3" => build!(AmazonS3Builder),
        "gs" => build!(GoogleCloudStorageBuilder),
        _ => build!(MicrosoftAzureBuilder),
    })
}

/// The local store's directory, created if missing.
fn local_root(path: &str) -> Result<PathBuf, StorageError> {
    let root = PathBuf::from(path);
    if !root.is_dir() {
        std::fs::create_dir_all(&root).map_err(|e| StorageError::Root(root.clone(), e))?;
        tracing::info!(dir = %root.display(), "Created the storage directory; buckets are its subdirectories");
    }
    Ok(root)
}

/// The object_store path of an S3 key.
pub fn key_path(key: &str) -> Result<Path, StorageError> {
    Path::parse(key).map_err(|_| StorageError::Key(key.chars().take(256).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> StorageConfig {
        StorageConfig { url: url.into(), ..Default::default() }
    }

    #[test]
    fn local_buckets_are_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("photos")).unwrap();
        let storage = Storage::new(&config(&format!("file://{}", dir.path().display()))).unwrap();
        assert!(storage.bucket("photos").is_ok());
        let missing = storage.bucket("nothere").unwrap_err();
        assert_eq!(missing.status(), Status::NoSuchBucket);
        assert!(!storage.keeps_attributes());
    }

    #[test]
    fn a_missing_local_store_is_created_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("var/lib/objects");
        Storage::new(&config(&format!("file://{}", root.display()))).unwrap();
        assert!(root.is_dir(), "the store's directory exists once the storage is up");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let refused = Storage::new(&config(&format!("file://{}/objects", file.display())));
        let message = error_chain(&refused.unwrap_err());
        assert!(message.starts_with("Cannot create the storage directory"), "{message}");
        assert!(message.contains("a-file/objects"), "{message}");
    }

    #[test]
    fn remote_stores_open_with_and_without_retries() {
        let mut config = config("s3://");
        for (key, value) in [
            ("aws_endpoint", "http://127.0.0.1:9"),
            ("aws_region", "garage"),
            ("aws_access_key_id", "GK00"),
            ("aws_secret_access_key", "secret"),
            ("AWS_ALLOW_HTTP", "true"),
            ("not_an_option", "ignored"),
        ] {
            config.options.insert(key.into(), value.into());
        }
        let storage = Storage::new(&config).unwrap();
        let retried = storage.bucket("photos").unwrap();
        let once = storage.bucket_tried_once("photos").unwrap();
        assert!(!Arc::ptr_eq(&retried, &once));
        assert!(Arc::ptr_eq(&once, &storage.bucket_tried_once("photos").unwrap()));
        assert!(storage.etags_are_md5() && storage.keeps_attributes());
        let metadata = [("k".to_owned(), "v".to_owned())].into();
        assert_eq!(storage.attributes(Some("text/plain"), &metadata).len(), 2);

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("photos")).unwrap();
        let local =
            Storage::new(&self::config(&format!("file://{}", dir.path().display()))).unwrap();
        assert!(Arc::ptr_eq(
            &local.bucket("photos").unwrap(),
            &local.bucket_tried_once("photos").unwrap()
        ));
        assert!(!local.etags_are_md5());
        assert!(local.attributes(Some("text/plain"), &metadata).is_empty());
    }

    /// A guest's call to a store that never answers, or that refuses connections, fails within
    /// `call_timeout_secs` (plus one retry's back-off); the default would take a minute.
    #[tokio::test]
    async fn calls_to_a_stuck_or_refusing_store_fail_within_the_call_timeout() {
        let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        for endpoint in [stuck.local_addr().unwrap(), refusing] {
            let mut config = config("s3://");
            config.call_timeout_secs = 2;
            for (key, value) in [
                ("aws_endpoint", format!("http://{endpoint}")),
                ("aws_region", "garage".into()),
                ("aws_access_key_id", "GK00".into()),
                ("aws_secret_access_key", "secret".into()),
                ("aws_allow_http", "true".into()),
            ] {
                config.options.insert(key.into(), value);
            }
            let store = Storage::new(&config).unwrap().bucket("photos").unwrap();
            let started = std::time::Instant::now();
            let failed = object_store::ObjectStoreExt::get(&store, &key_path("k").unwrap()).await;
            let took = started.elapsed();
            assert!(failed.is_err(), "{endpoint}: {failed:?}");
            assert!(took < Duration::from_millis(3500), "{endpoint}: failed after {took:?}");
        }
        drop(stuck);
    }

    #[test]
    fn rejects_unknown_schemes_and_bad_keys() {
        assert!(matches!(Storage::new(&config("ftp://x")), Err(StorageError::Url(_))));
        assert!(key_path("a/b.txt").is_ok());
        for bad in ["a//b", "../x", "a/./b"] {
            assert_eq!(key_path(bad).unwrap_err().status(), Status::InvalidArgument, "{bad}");
        }
    }
}
