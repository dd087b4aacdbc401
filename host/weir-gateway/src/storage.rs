//! Where the gateway keeps results: files on local disk, served back under `/results/{name}`.

use std::path::{Path, PathBuf};

/// Extension for a MIME type, and the type served back for an extension.
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

/// Result objects on local disk.
#[derive(Debug, Clone)]
pub struct ResultStore {
    dir: PathBuf,
}

impl ResultStore {
    /// A store in `dir` (created when missing).
    pub fn open(dir: &Path) -> std::io::Result<ResultStore> {
        std::fs::create_dir_all(dir)?;
        Ok(ResultStore {
            dir: dir.to_owned(),
        })
    }

    /// Store `data`; returns the object's name.
    pub async fn put(&self, content_type: &str, data: &[u8]) -> std::io::Result<String> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let ext = TYPES
            .iter()
            .find(|(_, t)| *t == essence)
            .map_or("bin", |(e, _)| *e);
        let name = format!("{:032x}.{ext}", rand::random::<u128>());
        // Write under a temporary name, then rename: readers never see half a file.
        let tmp = self.dir.join(format!(".{name}.part"));
        tokio::fs::write(&tmp, data).await?;
        tokio::fs::rename(&tmp, self.dir.join(&name)).await?;
        Ok(name)
    }

    /// Read object `name` with its content type; `None` for names this store never made.
    pub async fn get(&self, name: &str) -> Option<(&'static str, Vec<u8>)> {
        let (stem, ext) = name.split_once('.')?;
        if stem.len() != 32 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let content_type = TYPES.iter().find(|(e, _)| *e == ext).map(|(_, t)| *t)?;
        let data = tokio::fs::read(self.dir.join(name)).await.ok()?;
        Some((content_type, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_round_trip_and_odd_names_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ResultStore::open(dir.path()).expect("open");
        let name = store.put("image/png", b"png bytes").await.expect("put");
        assert!(name.ends_with(".png"));
        assert_eq!(
            store.get(&name).await,
            Some(("image/png", b"png bytes".to_vec()))
        );
        assert_eq!(store.get("../../etc/passwd").await, None);
        assert_eq!(store.get(&name.replace(".png", ".exe")).await, None);
    }
}
