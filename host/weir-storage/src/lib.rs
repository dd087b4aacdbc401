//! Object storage for results and job inputs.
//!
//! Everything goes through the [`object_store`] crate, behind one small [`Storage`] handle:
//!
//! - **local** ([`StorageConfig::Local`]): files under a directory on local disk (the default).
//!   Links to objects point at the gateway (`{public_url}/objects/{key}?expires=…&sig=…`) and are
//!   signed here with HMAC-SHA256; the gateway's `GET /objects/{*key}` handler checks them with
//!   [`Storage::verify_link`].
//! - **s3** ([`StorageConfig::S3`]): any S3-compatible service (AWS S3, SeaweedFS, MinIO, …).
//!   Links are real presigned S3 GET URLs, so clients download straight from the bucket.
//!
//! # Keys
//!
//! Every method takes a key checked by [`validate_key`]: 1 to 512 characters of
//! `[A-Za-z0-9._/-]`, no `..`, no leading or trailing `/`, no `//`. Such keys are safe as file
//! paths and need no escaping in URLs.
//!
//! # Content types
//!
//! On S3 the content type is the object's `Content-Type`. On local disk each object is one file
//! that starts with a one-line header, `weir-object/1 {content_type}\n`, followed by the bytes:
//! the content type and the data are written together (to a temporary file, then renamed), so a
//! reader sees either the whole old object or the whole new one, never half of one, and never
//! data paired with another write's content type.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{
    Attribute, AttributeValue, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
};
use serde::{Deserialize, Serialize};

use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest key [`validate_key`] accepts, in bytes (keys are ASCII).
pub const MAX_KEY_LEN: usize = 512;

/// Longest content type [`Storage::put`] accepts, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;

/// Longest lifetime of an S3 presigned URL (SigV4 allows at most seven days).
pub const MAX_S3_LINK_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The content type reported for S3 objects stored without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Magic at the start of every object file of the local backend.
const LOCAL_MAGIC: &[u8] = b"weir-object/1 ";

/// Which backend, as written in config.
///
/// ```toml
/// [storage]
/// type = "local"
/// dir = "weir-data/objects"
/// ```
///
/// ```toml
/// [storage]
/// type = "s3"
/// endpoint = "http://127.0.0.1:8333"   # leave out for AWS
/// bucket = "weir"
/// region = "us-east-1"                 # the default
/// access_key = "…"
/// secret_key = "…"
/// prefix = "results"                   # optional
/// allow_http = true                    # default false
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StorageConfig {
    /// Files under a directory on local disk (created if missing).
    Local {
        /// The directory that holds the objects.
        dir: PathBuf,
    },
    /// An S3-compatible bucket.
    S3 {
        /// Base URL of the service, e.g. `http://127.0.0.1:8333`; `None` means AWS itself
        /// (`https://s3.{region}.amazonaws.com`). With an endpoint, requests use path-style
        /// addressing (`{endpoint}/{bucket}/{key}`).
        #[serde(default)]
        endpoint: Option<String>,
        /// The bucket; it must already exist.
        bucket: String,
        /// The region used for signing.
        #[serde(default = "default_region")]
        region: String,
        /// Access key id.
        access_key: String,
        /// Secret access key.
        secret_key: String,
        /// Key prefix inside the bucket (e.g. `weir/results`); objects live at
        /// `{prefix}/{key}`.
        #[serde(default)]
        prefix: Option<String>,
        /// Allow a plain-HTTP endpoint (test servers); HTTPS is required otherwise.
        #[serde(default)]
        allow_http: bool,
    },
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

impl StorageConfig {
    /// The backend this config selects: `"local"` or `"s3"`.
    pub fn backend(&self) -> &'static str {
        match self {
            StorageConfig::Local { .. } => "local",
            StorageConfig::S3 { .. } => "s3",
        }
    }
}

impl fmt::Debug for StorageConfig {
    /// Like a derived `Debug`, with the secret key redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::Local { dir } => f.debug_struct("Local").field("dir", dir).finish(),
            StorageConfig::S3 {
                endpoint,
                bucket,
                region,
                access_key,
                secret_key: _,
                prefix,
                allow_http,
            } => f
                .debug_struct("S3")
                .field("endpoint", endpoint)
                .field("bucket", bucket)
                .field("region", region)
                .field("access_key", access_key)
                .field("secret_key", &"<redacted>")
                .field("prefix", prefix)
                .field("allow_http", allow_http)
                .finish(),
        }
    }
}

/// Why [`Storage::verify_link`] refused a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The link's `expires` time has passed (its signature was valid).
    Expired,
    /// The signature is malformed or does not match the key and expiry.
    BadSignature,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::Expired => "the link has expired",
            DenyReason::BadSignature => "the link's signature is invalid",
        })
    }
}

/// What can go wrong. A missing object is not an error: [`Storage::get`] returns `Ok(None)` and
/// [`Storage::delete`] succeeds.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key breaks the rules of [`validate_key`].
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given (cut to 80 characters).
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The content type is empty, too long, or not printable ASCII.
    #[error("invalid content type {content_type:?} for object {key:?}")]
    InvalidContentType {
        /// The key being written.
        key: String,
        /// The content type as given (cut to 80 characters).
        content_type: String,
    },
    /// The configuration (or the arguments to [`Storage::open`]) cannot work.
    #[error("{backend} storage: bad configuration: {message}")]
    Config {
        /// `"local"` or `"s3"`.
        backend: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The backend failed (I/O error, network, access denied, bad signature, …).
    #[error("{backend} storage: {op} {key:?} failed: {source}")]
    Backend {
        /// `"local"` or `"s3"`.
        backend: &'static str,
        /// The operation: `put`, `get`, `delete`, `sign`, `open`.
        op: &'static str,
        /// The key (for `open`, the directory or bucket).
        key: String,
        /// The error from `object_store` (boxed: it is large).
        #[source]
        source: Box<object_store::Error>,
    },
    /// An object read back from disk is not in the local backend's format.
    #[error("{backend} storage: object {key:?} is corrupt: {reason}")]
    Corrupt {
        /// `"local"` or `"s3"`.
        backend: &'static str,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A local link was refused by [`Storage::verify_link`].
    #[error("object link denied: {0}")]
    Denied(DenyReason),
}

impl StorageError {
    /// Whether this is a refused link ([`StorageError::Denied`]): answer 403.
    pub fn is_denied(&self) -> bool {
        matches!(self, StorageError::Denied(_))
    }

    /// Whether the caller's input was at fault (bad key or content type): answer 400.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            StorageError::InvalidKey { .. } | StorageError::InvalidContentType { .. }
        )
    }
}

/// Why [`Storage::read_link`] served no object; [`LinkError::status`] is the HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The link lacks its `expires` or `sig` parameter.
    #[error("this link needs its expires and sig parameters")]
    Unsigned,
    /// The signature is wrong, the link expired, or the key is not a valid key.
    #[error("{0}")]
    Denied(StorageError),
    /// No object under the key (it expired or never existed).
    #[error("the object expired or never existed")]
    NotFound,
    /// The backend failed.
    #[error("{0}")]
    Unavailable(StorageError),
}

impl LinkError {
    /// The HTTP status to answer: 403, 404 or 503.
    pub fn status(&self) -> u16 {
        match self {
            LinkError::Unsigned | LinkError::Denied(_) => 403,
            LinkError::NotFound => 404,
            LinkError::Unavailable(_) => 503,
        }
    }

    /// A short machine-readable code: `unsigned`, `denied`, `not_found`, `storage_unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            LinkError::Unsigned => "unsigned",
            LinkError::Denied(_) => "denied",
            LinkError::NotFound => "not_found",
            LinkError::Unavailable(_) => "storage_unavailable",
        }
    }
}

/// An object read back by [`Storage::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The content type given to [`Storage::put`].
    pub content_type: String,
    /// The bytes.
    pub data: Bytes,
}

/// Check an object key: 1 to 512 characters of `[A-Za-z0-9._/-]`, no `..`, no leading or
/// trailing `/`, no `//`. Every [`Storage`] method calls it.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let reason = if key.is_empty() {
        Some("empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("longer than 512 characters")
    } else if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
    {
        Some("only A-Z a-z 0-9 . _ / - are allowed")
    } else if key.contains("..") {
        Some("contains \"..\"")
    } else if key.starts_with('/') {
        Some("starts with '/'")
    } else if key.ends_with('/') {
        Some("ends with '/'")
    } else if key.contains("//") {
        Some("contains \"//\"")
    } else if key.split('/').any(|segment| segment == ".") {
        Some("has a \".\" path segment")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(StorageError::InvalidKey {
            key: truncate(key),
            reason,
        }),
    }
}

fn validate_content_type(key: &str, content_type: &str) -> Result<(), StorageError> {
    let ok = !content_type.is_empty()
        && content_type.len() <= MAX_CONTENT_TYPE_LEN
        && content_type.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !content_type.starts_with(' ');
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidContentType {
            key: key.to_owned(),
            content_type: truncate(content_type),
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A handle on the configured object store. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    public_url: String,
    signing_key: Vec<u8>,
}

enum Backend {
    Local {
        store: LocalFileSystem,
        dir: PathBuf,
    },
    S3 {
        store: AmazonS3,
        bucket: String,
        prefix: Option<String>,
    },
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Storage");
        match &self.inner.backend {
            Backend::Local { dir, .. } => d.field("backend", &"local").field("dir", dir),
            Backend::S3 { bucket, prefix, .. } => d
                .field("backend", &"s3")
                .field("bucket", bucket)
                .field("prefix", prefix),
        };
        d.field("public_url", &self.inner.public_url).finish()
    }
}

/// A [`StorageError::Config`] for `backend`.
fn config_error(backend: &'static str, message: String) -> StorageError {
    StorageError::Config { backend, message }
}

/// The local backend in `dir` (created if missing), after checking what its links need.
async fn open_local(
    dir: &std::path::Path,
    public_url: &str,
    signing_key: &[u8],
) -> Result<Backend, StorageError> {
    let config_err = |message: String| config_error("local", message);
    if signing_key.is_empty() {
        return Err(config_err("the link signing key is empty".into()));
    }
    if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
        return Err(config_err(format!(
            "public URL {public_url:?} is not an http(s) URL"
        )));
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| config_err(format!("cannot create directory {}: {e}", dir.display())))?;
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|source| StorageError::Backend {
        backend: "local",
        op: "open",
        key: dir.display().to_string(),
        source: Box::new(source),
    })?;
    Ok(Backend::Local {
        store,
        dir: dir.to_path_buf(),
    })
}

/// The S3 settings of a [`StorageConfig::S3`], borrowed.
struct S3Settings<'a> {
    endpoint: Option<&'a str>,
    bucket: &'a str,
    region: &'a str,
    access_key: &'a str,
    secret_key: &'a str,
    prefix: Option<&'a str>,
    allow_http: bool,
}

/// The S3 backend, after checking its settings (the service is not contacted).
fn open_s3(s: S3Settings<'_>) -> Result<Backend, StorageError> {
    let config_err = |message: String| config_error("s3", message);
    let bucket = s.bucket;
    if bucket.is_empty() {
        return Err(config_err("the bucket name is empty".into()));
    }
    if s.access_key.is_empty() || s.secret_key.is_empty() {
        return Err(config_err(format!(
            "bucket {bucket:?}: access_key and secret_key must be set"
        )));
    }
    let prefix = match s.prefix.map(|p| p.trim_matches('/')) {
        None | Some("") => None,
        Some(p) => {
            validate_key(p)
                .map_err(|e| config_err(format!("bucket {bucket:?}: bad prefix: {e}")))?;
            Some(p.to_owned())
        }
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(s.region)
        .with_access_key_id(s.access_key)
        .with_secret_access_key(s.secret_key)
        .with_allow_http(s.allow_http);
    if let Some(endpoint) = s.endpoint {
        builder = builder
            .with_endpoint(endpoint.trim_end_matches('/'))
            .with_virtual_hosted_style_request(false);
    }
    let store = builder.build().map_err(|source| StorageError::Backend {
        backend: "s3",
        op: "open",
        key: bucket.to_owned(),
        source: Box::new(source),
    })?;
    Ok(Backend::S3 {
        store,
        bucket: bucket.to_owned(),
        prefix,
    })
}

impl Storage {
    /// Open the configured backend.
    ///
    /// `public_url` is the gateway's base URL (e.g. `http://127.0.0.1:8935`), used for local
    /// links: `{public_url}/objects/{key}?expires={unix_secs}&sig={hex}`. `signing_key` is the
    /// secret those links are signed with (HMAC-SHA256 over `"{key}\n{expires}"`); it must not
    /// be empty for the local backend.
    ///
    /// Local: creates the directory if missing. S3: checks the settings but does not contact
    /// the service (the bucket must exist; object_store cannot create buckets).
    pub async fn open(
        config: &StorageConfig,
        public_url: &str,
        signing_key: &[u8],
    ) -> Result<Storage, StorageError> {
        let public_url = public_url.trim_end_matches('/').to_owned();
        let backend = match config {
            StorageConfig::Local { dir } => open_local(dir, &public_url, signing_key).await?,
            StorageConfig::S3 {
                endpoint,
                bucket,
                region,
                access_key,
                secret_key,
                prefix,
                allow_http,
            } => open_s3(S3Settings {
                endpoint: endpoint.as_deref(),
                bucket,
                region,
                access_key,
                secret_key,
                prefix: prefix.as_deref(),
                allow_http: *allow_http,
            })?,
        };
        Ok(Storage {
            inner: Arc::new(Inner {
                backend,
                public_url,
                signing_key: signing_key.to_vec(),
            }),
        })
    }

    /// `"local"` or `"s3"`.
    pub fn backend(&self) -> &'static str {
        match self.inner.backend {
            Backend::Local { .. } => "local",
            Backend::S3 { .. } => "s3",
        }
    }

    fn path(&self, key: &str) -> Result<ObjectPath, StorageError> {
        validate_key(key)?;
        let full = match &self.inner.backend {
            Backend::S3 {
                prefix: Some(prefix),
                ..
            } => format!("{prefix}/{key}"),
            _ => key.to_owned(),
        };
        ObjectPath::parse(&full).map_err(|_| StorageError::InvalidKey {
            key: truncate(key),
            reason: "not a valid object path",
        })
    }

    fn backend_err(
        &self,
        op: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> StorageError {
        let backend = self.backend();
        let key = key.to_owned();
        move |source| StorageError::Backend {
            backend,
            op,
            key,
            source: Box::new(source),
        }
    }

    /// Store an object, replacing any object under the same key. Readers never see half an
    /// object: local writes go to a temporary file that is then renamed; S3 puts are atomic.
    pub async fn put(
        &self,
        key: &str,
        content_type: &str,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let path = self.path(key)?;
        validate_content_type(key, content_type)?;
        let len = data.len();
        match &self.inner.backend {
            Backend::Local { store, .. } => {
                let mut header = Vec::with_capacity(LOCAL_MAGIC.len() + content_type.len() + 1);
                header.extend_from_slice(LOCAL_MAGIC);
                header.extend_from_slice(content_type.as_bytes());
                header.push(b'\n');
                let payload = PutPayload::from_iter([Bytes::from(header), data]);
                store
                    .put(&path, payload)
                    .await
                    .map_err(self.backend_err("put", key))?;
            }
            Backend::S3 { store, .. } => {
                let mut attributes = Attributes::new();
                attributes.insert(
                    Attribute::ContentType,
                    AttributeValue::from(content_type.to_owned()),
                );
                let opts = PutOptions {
                    attributes,
                    ..PutOptions::default()
                };
                store
                    .put_opts(&path, PutPayload::from(data), opts)
                    .await
                    .map_err(self.backend_err("put", key))?;
            }
        }
        tracing::debug!(
            backend = self.backend(),
            key,
            content_type,
            len,
            "object stored"
        );
        Ok(())
    }

    /// Read an object; `Ok(None)` when there is none under `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        let path = self.path(key)?;
        let store: &dyn ObjectStore = match &self.inner.backend {
            Backend::Local { store, .. } => store,
            Backend::S3 { store, .. } => store,
        };
        let result = match store.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.backend_err("get", key)(e)),
        };
        let attributes = result.attributes.clone();
        let bytes = match result.bytes().await {
            Ok(bytes) => bytes,
            // Deleted between the request and reading the body.
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.backend_err("get", key)(e)),
        };
        match &self.inner.backend {
            Backend::Local { .. } => parse_local(key, bytes).map(Some),
            Backend::S3 { .. } => Ok(Some(Object {
                content_type: attributes
                    .get(&Attribute::ContentType)
                    .map(|v| v.as_ref().to_owned())
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
                data: bytes,
            })),
        }
    }

    /// Delete an object; deleting a missing one succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        let result = match &self.inner.backend {
            Backend::Local { store, .. } => store.delete(&path).await,
            Backend::S3 { store, .. } => store.delete(&path).await,
        };
        match result {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                tracing::debug!(backend = self.backend(), key, "object deleted");
                Ok(())
            }
            Err(e) => Err(self.backend_err("delete", key)(e)),
        }
    }

    /// A URL a client can GET without credentials until `expires_in` passes, and that moment
    /// in Unix seconds.
    ///
    /// S3: a presigned GET URL (at most [`MAX_S3_LINK_LIFETIME`]). Local: a gateway link,
    /// `{public_url}/objects/{key}?expires={unix_secs}&sig={hex}`, checked by
    /// [`Storage::verify_link`]. The object need not exist yet.
    pub async fn signed_url(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<(String, u64), StorageError> {
        let path = self.path(key)?;
        match &self.inner.backend {
            Backend::Local { .. } => {
                let expires = now_unix().saturating_add(expires_in.as_secs().max(1));
                let sig = hex::encode(self.link_mac(key, expires).finalize().into_bytes());
                let url = format!(
                    "{}/objects/{key}?expires={expires}&sig={sig}",
                    self.inner.public_url
                );
                Ok((url, expires))
            }
            Backend::S3 { store, .. } => {
                if expires_in > MAX_S3_LINK_LIFETIME || expires_in.is_zero() {
                    return Err(StorageError::Config {
                        backend: "s3",
                        message: format!(
                            "link lifetime for {key:?} must be between 1 s and 7 days, not {expires_in:?}"
                        ),
                    });
                }
                let expires_in = Duration::from_secs(expires_in.as_secs().max(1));
                let expires = now_unix().saturating_add(expires_in.as_secs());
                let url = store
                    .signed_url(http::Method::GET, &path, expires_in)
                    .await
                    .map_err(self.backend_err("sign", key))?;
                Ok((url.to_string(), expires))
            }
        }
    }

    fn link_mac(&self, key: &str, expires: u64) -> HmacSha256 {
        #[allow(clippy::expect_used)]
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.inner.signing_key)
            .expect("HMAC takes keys of any length");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// Check a local link's `expires` and `sig` for `key` (the signature in constant time,
    /// then the expiry). Used by the gateway's `GET /objects/{*key}` handler; works whatever
    /// the backend, since it only needs the signing key.
    pub fn verify_link(&self, key: &str, expires: u64, sig: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let sig = hex::decode(sig).map_err(|_| StorageError::Denied(DenyReason::BadSignature))?;
        self.link_mac(key, expires)
            .verify_slice(&sig)
            .map_err(|_| StorageError::Denied(DenyReason::BadSignature))?;
        if now_unix() > expires {
            return Err(StorageError::Denied(DenyReason::Expired));
        }
        Ok(())
    }
}

impl Storage {
    /// The object a signed link (from [`Storage::signed_url`], local backend) names: its
    /// `expires` and `sig` checked by [`Storage::verify_link`], then read. What every handler
    /// of `GET /objects/{key}` calls.
    pub async fn read_link(
        &self,
        key: &str,
        expires: Option<u64>,
        sig: Option<&str>,
    ) -> Result<Object, LinkError> {
        let (Some(expires), Some(sig)) = (expires, sig) else {
            return Err(LinkError::Unsigned);
        };
        self.verify_link(key, expires, sig)
            .map_err(LinkError::Denied)?;
        match self.get(key).await {
            Ok(Some(object)) => Ok(object),
            Ok(None) => Err(LinkError::NotFound),
            Err(e) => Err(LinkError::Unavailable(e)),
        }
    }
}

fn parse_local(key: &str, bytes: Bytes) -> Result<Object, StorageError> {
    let corrupt = |reason| StorageError::Corrupt {
        backend: "local",
        key: key.to_owned(),
        reason,
    };
    if !bytes.starts_with(LOCAL_MAGIC) {
        return Err(corrupt("missing the weir-object header"));
    }
    let limit = (LOCAL_MAGIC.len() + MAX_CONTENT_TYPE_LEN + 1).min(bytes.len());
    let newline = bytes[..limit]
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("unterminated header"))?;
    let content_type = std::str::from_utf8(&bytes[LOCAL_MAGIC.len()..newline])
        .map_err(|_| corrupt("content type is not UTF-8"))?
        .to_owned();
    Ok(Object {
        content_type,
        data: bytes.slice(newline + 1..),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const URL: &str = "http://127.0.0.1:8935";

    async fn local(dir: &std::path::Path) -> Storage {
        let config = StorageConfig::Local {
            dir: dir.join("objects"),
        };
        Storage::open(&config, &format!("{URL}/"), b"link secret")
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn local_round_trip_keeps_content_type() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(tmp.path()).await;
        assert_eq!(storage.backend(), "local");
        assert_eq!(storage.get("jobs/1/out.png").await.unwrap(), None);

        let data = Bytes::from_static(b"\x89PNG\r\n\x1a\nnot really");
        storage
            .put("jobs/1/out.png", "image/png", data.clone())
            .await
            .unwrap();
        let object = storage.get("jobs/1/out.png").await.unwrap().unwrap();
        assert_eq!(object.content_type, "image/png");
        assert_eq!(object.data, data);

        // Replacing changes both the bytes and the type; empty objects work.
        storage
            .put(
                "jobs/1/out.png",
                "application/json; charset=utf-8",
                Bytes::new(),
            )
            .await
            .unwrap();
        let object = storage.get("jobs/1/out.png").await.unwrap().unwrap();
        assert_eq!(object.content_type, "application/json; charset=utf-8");
        assert!(object.data.is_empty());

        // The store is shared between clones.
        let clone = storage.clone();
        clone.delete("jobs/1/out.png").await.unwrap();
        assert_eq!(storage.get("jobs/1/out.png").await.unwrap(), None);
        storage.delete("jobs/1/out.png").await.unwrap();
        storage.delete("never/was").await.unwrap();

        // Nothing but the object files is left behind (no temporary files).
        storage
            .put("a.bin", "x/y", Bytes::from_static(b"1"))
            .await
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("objects"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "jobs")
            .collect();
        assert_eq!(names, ["a.bin"]);
    }

    #[tokio::test]
    async fn local_rejects_bad_content_types_and_corrupt_files() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(tmp.path()).await;
        for bad in ["", "text/plain\nx", " text/plain", "tëxt/plain"] {
            let err = storage
                .put("k", bad, Bytes::from_static(b"x"))
                .await
                .unwrap_err();
            assert!(err.is_invalid_input(), "{bad:?}: {err}");
        }
        std::fs::write(tmp.path().join("objects/raw"), b"no header").unwrap();
        let err = storage.get("raw").await.unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("\"raw\""), "{err}");
    }

    #[test]
    fn keys_are_validated() {
        for good in ["a", "jobs/123/out.png", "A-Z_a.z/0-9", &"k".repeat(512)] {
            validate_key(good).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/../b",
            "a..b",
            "/x",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "a b",
            "a\\b",
            "a?b",
            "é",
            &"k".repeat(513),
        ] {
            let err = validate_key(bad).unwrap_err();
            assert!(matches!(err, StorageError::InvalidKey { .. }), "{bad:?}");
            assert!(err.is_invalid_input());
        }
    }

    #[tokio::test]
    async fn every_method_refuses_invalid_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(tmp.path()).await;
        let long = "k".repeat(513);
        for bad in ["../x", "/x", "a//b", "", long.as_str()] {
            let invalid = |e: StorageError| matches!(e, StorageError::InvalidKey { .. });
            assert!(invalid(
                storage
                    .put(bad, "text/plain", Bytes::from_static(b"x"))
                    .await
                    .unwrap_err()
            ));
            assert!(invalid(storage.get(bad).await.unwrap_err()));
            assert!(invalid(storage.delete(bad).await.unwrap_err()));
            assert!(invalid(
                storage
                    .signed_url(bad, Duration::from_secs(60))
                    .await
                    .unwrap_err()
            ));
            assert!(invalid(
                storage.verify_link(bad, u64::MAX, "00").unwrap_err()
            ));
        }
        // Nothing escaped the directory.
        assert!(!tmp.path().join("x").exists());
    }

    fn query(url: &str) -> (String, u64, String) {
        let (path, query) = url.split_once('?').unwrap();
        let key = path.strip_prefix(&format!("{URL}/objects/")).unwrap();
        let mut expires = None;
        let mut sig = None;
        for pair in query.split('&') {
            match pair.split_once('=').unwrap() {
                ("expires", v) => expires = Some(v.parse().unwrap()),
                ("sig", v) => sig = Some(v.to_owned()),
                other => panic!("unexpected parameter {other:?}"),
            }
        }
        (key.to_owned(), expires.unwrap(), sig.unwrap())
    }

    #[tokio::test]
    async fn local_links_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(tmp.path()).await;
        let before = now_unix();
        let (url, expires_at) = storage
            .signed_url("jobs/7/out.mp4", Duration::from_secs(600))
            .await
            .unwrap();
        let (key, expires, sig) = query(&url);
        assert_eq!(key, "jobs/7/out.mp4");
        assert_eq!(expires, expires_at);
        assert!(expires_at >= before + 600 && expires_at <= now_unix() + 600);
        assert_eq!(sig.len(), 64);

        // Good.
        storage.verify_link(&key, expires, &sig).unwrap();
        storage
            .verify_link(&key, expires, &sig.to_uppercase())
            .unwrap();

        let denied = |r: Result<(), StorageError>| match r {
            Err(StorageError::Denied(reason)) => reason,
            other => panic!("expected Denied, got {other:?}"),
        };
        // Tampered signature, truncated signature, not hex.
        let mut tampered = sig.clone().into_bytes();
        tampered[10] = if tampered[10] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            denied(storage.verify_link(&key, expires, &tampered)),
            DenyReason::BadSignature
        );
        assert_eq!(
            denied(storage.verify_link(&key, expires, &sig[..62])),
            DenyReason::BadSignature
        );
        assert_eq!(
            denied(storage.verify_link(&key, expires, "zz")),
            DenyReason::BadSignature
        );
        assert_eq!(
            denied(storage.verify_link(&key, expires, "")),
            DenyReason::BadSignature
        );
        // Extending the expiry breaks the signature.
        assert_eq!(
            denied(storage.verify_link(&key, expires + 1, &sig)),
            DenyReason::BadSignature
        );
        // Another key.
        assert_eq!(
            denied(storage.verify_link("jobs/7/out2.mp4", expires, &sig)),
            DenyReason::BadSignature
        );
        // Another signing secret.
        let other = Storage::open(
            &StorageConfig::Local {
                dir: tmp.path().join("objects"),
            },
            URL,
            b"another secret",
        )
        .await
        .unwrap();
        assert_eq!(
            denied(other.verify_link(&key, expires, &sig)),
            DenyReason::BadSignature
        );

        // Expired: a correctly signed link whose time has passed.
        let past = now_unix() - 10;
        let old_sig = hex::encode(storage.link_mac(&key, past).finalize().into_bytes());
        assert_eq!(
            denied(storage.verify_link(&key, past, &old_sig)),
            DenyReason::Expired
        );
        let err = storage.verify_link(&key, past, &old_sig).unwrap_err();
        assert!(err.is_denied());
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn open_checks_its_arguments() {
        let tmp = tempfile::tempdir().unwrap();
        let config = StorageConfig::Local {
            dir: tmp.path().to_owned(),
        };
        assert!(matches!(
            Storage::open(&config, URL, b"").await,
            Err(StorageError::Config { .. })
        ));
        assert!(matches!(
            Storage::open(&config, "127.0.0.1:8935", b"k").await,
            Err(StorageError::Config { .. })
        ));
        let s3 = StorageConfig::S3 {
            endpoint: Some("http://127.0.0.1:1".into()),
            bucket: "b".into(),
            region: "us-east-1".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            prefix: Some("../p".into()),
            allow_http: true,
        };
        assert!(matches!(
            Storage::open(&s3, URL, b"k").await,
            Err(StorageError::Config { .. })
        ));
    }

    #[tokio::test]
    async fn s3_links_are_presigned_locally() {
        // Signing needs no server.
        let config = StorageConfig::S3 {
            endpoint: Some("http://127.0.0.1:1/".into()),
            bucket: "weir".into(),
            region: "us-east-1".into(),
            access_key: "AKID".into(),
            secret_key: "secret".into(),
            prefix: Some("/results/".into()),
            allow_http: true,
        };
        let storage = Storage::open(&config, URL, b"k").await.unwrap();
        assert_eq!(storage.backend(), "s3");
        let (url, expires) = storage
            .signed_url("jobs/1/out.png", Duration::from_secs(300))
            .await
            .unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:1/weir/results/jobs/1/out.png?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert!(url.contains("X-Amz-Expires=300"), "{url}");
        assert!(expires >= now_unix() + 299);
        assert!(storage
            .signed_url("k", Duration::from_secs(8 * 24 * 3600))
            .await
            .is_err());
        // The secret never shows in Debug output.
        assert!(!format!("{config:?}").contains("secret\""));
    }

    #[test]
    fn config_parses() {
        let local: StorageConfig = toml::from_str("type = \"local\"\ndir = \"data\"").unwrap();
        assert_eq!(
            local,
            StorageConfig::Local {
                dir: PathBuf::from("data")
            }
        );
        let s3: StorageConfig =
            serde_json::from_str(r#"{"type":"s3","bucket":"b","access_key":"a","secret_key":"s"}"#)
                .unwrap();
        assert_eq!(
            s3,
            StorageConfig::S3 {
                endpoint: None,
                bucket: "b".into(),
                region: "us-east-1".into(),
                access_key: "a".into(),
                secret_key: "s".into(),
                prefix: None,
                allow_http: false,
            }
        );
        assert!(toml::from_str::<StorageConfig>("type = \"local\"\ndir = \"d\"\nx = 1").is_err());
        assert!(toml::from_str::<StorageConfig>("type = \"gcs\"").is_err());
    }

    #[tokio::test]
    async fn a_link_reads_its_object_only_when_signed_and_present() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(tmp.path()).await;
        let data = Bytes::from_static(b"mask");
        storage
            .put("c/m.png", "image/png", data.clone())
            .await
            .unwrap();
        let (url, expires) = storage
            .signed_url("c/m.png", Duration::from_secs(60))
            .await
            .unwrap();
        let sig = url.rsplit("sig=").next().unwrap().to_owned();
        let object = storage
            .read_link("c/m.png", Some(expires), Some(&sig))
            .await
            .unwrap();
        assert_eq!(
            (object.content_type.as_str(), object.data),
            ("image/png", data)
        );
        let refused = |r: Result<Object, LinkError>| {
            let e = r.unwrap_err();
            (e.status(), e.code())
        };
        assert_eq!(
            refused(storage.read_link("c/m.png", None, Some(&sig)).await),
            (403, "unsigned")
        );
        assert_eq!(
            refused(
                storage
                    .read_link("c/other.png", Some(expires), Some(&sig))
                    .await
            ),
            (403, "denied")
        );
        assert_eq!(
            refused(
                storage
                    .read_link("c/m.png", Some(expires + 1), Some(&sig))
                    .await
            ),
            (403, "denied")
        );
        let (gone, expires) = storage
            .signed_url("c/gone.png", Duration::from_secs(60))
            .await
            .unwrap();
        let sig = gone.rsplit("sig=").next().unwrap().to_owned();
        assert_eq!(
            refused(
                storage
                    .read_link("c/gone.png", Some(expires), Some(&sig))
                    .await
            ),
            (404, "not_found")
        );
    }
}
