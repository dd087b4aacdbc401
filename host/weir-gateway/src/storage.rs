//! The gateway's one object store (`weir-storage`: local disk or S3, by config): the media
//! of AI answers, job inputs and job outputs. AI results are kept under `results/{name}` and
//! served back at `{public_url}/results/{name}`; a job's output is the AI result it ran to.

use axum::body::Bytes;
use weir_storage::{Storage, StorageConfig, StorageError};

use crate::config::GatewayConfig;

/// Extension for a MIME type, and the type a result with that extension is.
const TYPES: &[(&str, &str)] = &[
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("webp", "image/webp"),
    ("gif", "image/gif"),
    ("mp4", "video/mp4"),
    ("webm", "video/webm"),
    ("wav", "audio/wav"),
    ("mp3", "audio/mpeg"),
    ("flac", "audio/flac"),
    ("json", "application/json"),
    ("bin", "application/octet-stream"),
];

/// One medium of an AI answer, stored.
#[derive(Debug, Clone)]
pub(crate) struct StoredResult {
    /// Its key in the object store (`results/{name}`).
    pub key: String,
    /// Its content type.
    pub content_type: String,
    /// Its bytes.
    pub data: Bytes,
}

/// Open the gateway's object store: `[gateway] storage`, or local disk under
/// `<data-dir>/objects`. Local links are signed with `link_key`.
pub(crate) async fn open(config: &GatewayConfig, link_key: &[u8]) -> Result<Storage, StorageError> {
    let storage = config
        .storage
        .clone()
        .unwrap_or_else(|| StorageConfig::Local {
            dir: config.data_dir.join("objects"),
        });
    Storage::open(&storage, &config.public_url, link_key).await
}

/// Store `data` (of `content_type`) as a new AI result.
pub(crate) async fn put_result(
    storage: &Storage,
    content_type: &str,
    data: Bytes,
) -> Result<StoredResult, StorageError> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let (ext, content_type) = TYPES
        .iter()
        .find(|(_, t)| *t == essence)
        .copied()
        .unwrap_or(("bin", "application/octet-stream"));
    let key = format!("results/{:032x}.{ext}", rand::random::<u128>());
    storage.put(&key, content_type, data.clone()).await?;
    Ok(StoredResult {
        key,
        content_type: content_type.to_owned(),
        data,
    })
}

/// The key of result `name` (the last segment of its URL); `None` for names no result has.
pub(crate) fn result_key(name: &str) -> Option<String> {
    let (stem, ext) = name.split_once('.')?;
    let plain = stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit());
    (plain && TYPES.iter().any(|(e, _)| *e == ext)).then(|| format!("results/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_round_trip_and_odd_names_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = StorageConfig::Local {
            dir: dir.path().to_owned(),
        };
        let storage = Storage::open(&config, "http://gw", b"k")
            .await
            .expect("open");
        let stored = put_result(&storage, "image/png", Bytes::from_static(b"png bytes"))
            .await
            .expect("put");
        let name = stored.key.strip_prefix("results/").expect("under results/");
        assert!(name.ends_with(".png"));
        let key = result_key(name).expect("a result name");
        let object = storage.get(&key).await.expect("get").expect("present");
        assert_eq!(object.content_type, "image/png");
        assert_eq!(&object.data[..], b"png bytes");
        let odd = put_result(&storage, "text/x-unknown", Bytes::new())
            .await
            .expect("put");
        assert!(odd.key.ends_with(".bin"));
        assert_eq!(odd.content_type, "application/octet-stream");
        for bad in [
            "../../etc/passwd",
            "x.png",
            &name.replace(".png", ".exe"),
            "",
        ] {
            assert_eq!(result_key(bad), None, "{bad}");
        }
    }
}
