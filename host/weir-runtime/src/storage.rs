//! Object storage for components (`weir:host/storage`).
//!
//! A component stores and reads objects only under its own namespace,
//! `components/{name}/{key}`, where `name` is its manifest name (so a new version of it finds
//! what the old one stored) and `key` follows the object store's key rules
//! ([`weir_storage::validate_key`]). An object may be at most the manifest's
//! `limits.storage_object_kib`. The node gives the runtime its object store once with
//! [`crate::Runtime::provide_storage`]; until then both calls answer `unsupported`.
//!
//! Guest calls run on blocking threads (see [`crate::LoadedComponent::run_async`]); a storage
//! call waits there for the async object store, never longer than what is left of the guest
//! call's deadline.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_storage::{Storage, StorageError};

use crate::bindings::types::Error as GuestError;
use crate::media::Blob;

/// Where objects of component `name` live in the node's object store.
pub const NAMESPACE_PREFIX: &str = "components";

/// Object storage as components see it: keys are already namespaced and checked, sizes within
/// the component's limit. Calls block the (blocking-pool) thread until `deadline` at most.
pub trait ComponentStorage: Send + Sync {
    /// Store `blob` under `key`; returns a URL that serves it without credentials.
    fn put(&self, key: &str, blob: &Blob, deadline: Instant) -> Result<String, GuestError>;
    /// The object under `key`, `None` when there is none.
    fn get(&self, key: &str, deadline: Instant) -> Result<Option<Blob>, GuestError>;
}

/// Where components find the node's object store (set once, possibly after they loaded).
pub(crate) type StorageSlot = Arc<OnceLock<Arc<dyn ComponentStorage>>>;

/// The full key of a component's object: `components/{component}/{key}`, or a clear
/// invalid-request error naming the rule `key` breaks.
pub(crate) fn namespaced(component: &str, key: &str) -> Result<String, GuestError> {
    weir_storage::validate_key(key).map_err(|e| {
        GuestError::InvalidRequest(format!("storage of component `{component}`: {e}"))
    })?;
    let full = format!("{NAMESPACE_PREFIX}/{component}/{key}");
    if full.len() > weir_storage::MAX_KEY_LEN {
        return Err(GuestError::InvalidRequest(format!(
            "storage of component `{component}`: key {key:?} is too long ({} characters; at most {})",
            key.len(),
            weir_storage::MAX_KEY_LEN - (full.len() - key.len())
        )));
    }
    Ok(full)
}

/// The node's object store ([`weir_storage::Storage`]: local disk or S3) serving components.
pub struct ObjectStorage {
    storage: Storage,
    handle: tokio::runtime::Handle,
    link_lifetime: Duration,
}

impl ObjectStorage {
    /// Serve components from `storage`, running its I/O on `handle`'s runtime; the URLs `put`
    /// answers stay valid for `link_lifetime`.
    pub fn new(
        storage: Storage,
        handle: tokio::runtime::Handle,
        link_lifetime: Duration,
    ) -> ObjectStorage {
        ObjectStorage {
            storage,
            handle,
            link_lifetime,
        }
    }

    /// Run `work` on the async runtime until `deadline`, its error made a guest error.
    fn wait<T: Send + 'static>(
        &self,
        what: &str,
        deadline: Instant,
        work: impl std::future::Future<Output = Result<T, StorageError>> + Send + 'static,
    ) -> Result<T, GuestError> {
        let what = format!("storage {what}");
        let label = what.clone();
        crate::blocking::run_until(&self.handle, &what, deadline, async move {
            work.await.map_err(|e| {
                if e.is_invalid_input() {
                    GuestError::InvalidRequest(format!("{label}: {e}"))
                } else {
                    GuestError::Internal(format!("{label}: {e}"))
                }
            })
        })
    }
}

impl ComponentStorage for ObjectStorage {
    fn put(&self, key: &str, blob: &Blob, deadline: Instant) -> Result<String, GuestError> {
        let storage = self.storage.clone();
        let (key, content_type) = (key.to_owned(), blob.content_type.clone());
        let data = Bytes::from_owner(blob.data.clone());
        let lifetime = self.link_lifetime;
        let (url, _) = self.wait("put", deadline, async move {
            storage.put(&key, &content_type, data).await?;
            storage.signed_url(&key, lifetime).await
        })?;
        Ok(url)
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Option<Blob>, GuestError> {
        let storage = self.storage.clone();
        let key = key.to_owned();
        let object = self.wait("get", deadline, async move { storage.get(&key).await })?;
        Ok(object.map(|o| Blob {
            content_type: o.content_type,
            data: Arc::from(o.data.as_ref()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_put_under_the_components_namespace_and_checked() {
        assert_eq!(
            namespaced("blur", "masks/1.png").ok(),
            Some("components/blur/masks/1.png".to_owned())
        );
        for bad in ["../other/x", "/abs", "a//b", "", "sp ace", "a/./b"] {
            let err = namespaced("blur", bad).expect_err(bad);
            assert!(
                matches!(&err, GuestError::InvalidRequest(m) if m.contains("invalid object key")),
                "{bad}: {err:?}"
            );
        }
        let long = "k".repeat(weir_storage::MAX_KEY_LEN - "components/blur/".len() + 1);
        let err = namespaced("blur", &long).expect_err("too long with the namespace");
        assert!(
            matches!(&err, GuestError::InvalidRequest(m) if m.contains("at most 496")),
            "{err:?}"
        );
        assert!(namespaced("blur", &long[1..]).is_ok());
    }

    /// Components' storage over local disk at `dir`, and the runtime its I/O runs on.
    fn local_objects(dir: &std::path::Path) -> (ObjectStorage, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let storage = rt
            .block_on(Storage::open(
                &weir_storage::StorageConfig::Local { dir: dir.into() },
                "http://node.test",
                b"link key",
            ))
            .expect("open");
        let objects = ObjectStorage::new(storage, rt.handle().clone(), Duration::from_secs(60));
        (objects, rt)
    }

    fn blob(content_type: &str, data: &[u8]) -> Blob {
        Blob {
            content_type: content_type.to_owned(),
            data: Arc::from(data),
        }
    }

    #[test]
    fn an_object_put_from_a_blocking_thread_reads_back_with_a_signed_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _rt) = local_objects(dir.path());
        let png = blob("image/png", b"\x89PNG pixels");
        let deadline = Instant::now() + Duration::from_secs(5);
        let url = store
            .put("components/blur/a.png", &png, deadline)
            .expect("put");
        assert!(
            url.starts_with("http://node.test/objects/components/blur/a.png?expires="),
            "{url}"
        );
        let back = store
            .get("components/blur/a.png", deadline)
            .expect("get")
            .expect("stored");
        assert_eq!(
            (back.content_type.as_str(), &*back.data),
            ("image/png", &b"\x89PNG pixels"[..])
        );
        assert!(store
            .get("components/blur/none.png", deadline)
            .expect("get")
            .is_none());
        let bad_type = blob("", b"\x89PNG pixels");
        let err = store
            .put("components/blur/b.png", &bad_type, deadline)
            .expect_err("empty content type");
        assert!(matches!(err, GuestError::InvalidRequest(_)), "{err:?}");
    }

    #[test]
    fn a_call_past_its_deadline_is_refused_without_touching_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _rt) = local_objects(dir.path());
        let err = store
            .put(
                "components/x/late.txt",
                &blob("text/plain", b"late"),
                Instant::now(),
            )
            .expect_err("no time left");
        assert!(
            matches!(&err, GuestError::Internal(m) if m.contains("deadline has passed")),
            "{err:?}"
        );
        assert!(!dir.path().join("components/x/late.txt").exists());
    }

    #[test]
    fn a_store_that_never_answers_fails_the_call_at_its_deadline() {
        // An S3 endpoint that accepts connections and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let storage = rt
            .block_on(Storage::open(
                &weir_storage::StorageConfig::S3 {
                    endpoint: Some(endpoint),
                    bucket: "b".to_owned(),
                    region: "us-east-1".to_owned(),
                    access_key: "k".to_owned(),
                    secret_key: "s".to_owned(),
                    prefix: None,
                    allow_http: true,
                },
                "http://node.test",
                b"link key",
            ))
            .expect("open");
        let store = ObjectStorage::new(storage, rt.handle().clone(), Duration::from_secs(60));
        let started = Instant::now();
        let err = store
            .get("components/x/y", started + Duration::from_millis(300))
            .expect_err("no answer");
        let took = started.elapsed();
        assert!(
            matches!(&err, GuestError::Internal(m) if m.contains("no answer within")),
            "{err:?}"
        );
        assert!(took < Duration::from_secs(5), "waited {took:?}");
    }
}
