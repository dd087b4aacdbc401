//! Recording live streams to local storage: every segment of the source and of each rendition
//! is kept, with an event playlist per rendition (`#EXT-X-PLAYLIST-TYPE:EVENT`, closed with
//! `#EXT-X-ENDLIST` when the stream ends) and a master playlist, so a recording plays as
//! video on demand from `/recordings/{stream}/index.m3u8`.
//!
//! Layout under the recordings directory: `{stream}/index.m3u8`, `{stream}/{rendition}.m3u8`,
//! `{stream}/{rendition}/{n}.ts`. Playlists are replaced atomically (write, then rename).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

/// One recorded segment.
struct Entry {
    duration: Duration,
    discontinuity: bool,
}

/// A recorded rendition.
#[derive(Default)]
struct Recording {
    entries: Vec<Entry>,
    ended: bool,
}

/// What a master playlist entry needs.
pub(crate) struct RecordedVariant {
    /// Rendition name.
    pub name: String,
    /// Its master playlist entry (the URI is replaced).
    pub variant: weir_media::hls::Variant,
}

/// The recordings of a gateway: writes go, in the order they were asked for, to one
/// background thread (a segment appended before a stream ends is in the playlist that the end
/// closes).
pub(crate) struct Recorder {
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
    /// The files, for reading.
    pub files: Arc<Files>,
}

enum Job {
    Append {
        stream: String,
        rendition: String,
        duration: Duration,
        discontinuity: bool,
        data: Bytes,
    },
    Finish {
        stream: String,
        variants: Vec<RecordedVariant>,
    },
}

impl Recorder {
    /// Recordings under `dir` (created when needed).
    pub fn new(dir: PathBuf) -> Recorder {
        let files = Arc::new(Files {
            dir,
            open: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let writer = files.clone();
        let spawned = std::thread::Builder::new()
            .name("weir-recorder".into())
            .spawn(move || {
                for job in rx {
                    let (stream, outcome) = match job {
                        Job::Append {
                            stream,
                            rendition,
                            duration,
                            discontinuity,
                            data,
                        } => {
                            let r =
                                writer.append(&stream, &rendition, duration, discontinuity, &data);
                            (stream, r)
                        }
                        Job::Finish { stream, variants } => {
                            let r = writer.finish(&stream, &variants);
                            (stream, r)
                        }
                    };
                    if let Err(e) = outcome {
                        tracing::error!(%stream, error = %e, "recording failed");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the recorder; streams are not recorded");
        }
        Recorder {
            jobs: Mutex::new(tx),
            files,
        }
    }

    /// Append a segment to `stream`/`rendition`.
    pub fn append(
        &self,
        stream: &str,
        rendition: &str,
        duration: Duration,
        discontinuity: bool,
        data: Bytes,
    ) {
        self.send(Job::Append {
            stream: stream.to_owned(),
            rendition: rendition.to_owned(),
            duration,
            discontinuity,
            data,
        });
    }

    /// Close every rendition of `stream` and write its master playlist.
    pub fn finish(&self, stream: &str, variants: Vec<RecordedVariant>) {
        self.send(Job::Finish {
            stream: stream.to_owned(),
            variants,
        });
    }

    fn send(&self, job: Job) {
        if self.jobs.lock().send(job).is_err() {
            tracing::error!("the recorder has stopped; segment not recorded");
        }
    }
}

/// The recording files and what is known of the open ones.
pub(crate) struct Files {
    dir: PathBuf,
    open: Mutex<HashMap<(String, String), Recording>>,
}

impl Files {
    /// Append a segment to `stream`/`rendition` and rewrite its playlist. Blocking.
    fn append(
        &self,
        stream: &str,
        rendition: &str,
        duration: Duration,
        discontinuity: bool,
        data: &Bytes,
    ) -> std::io::Result<()> {
        let mut open = self.open.lock();
        let rec = open
            .entry((stream.to_owned(), rendition.to_owned()))
            .or_default();
        rec.ended = false;
        let n = rec.entries.len();
        let dir = self.dir.join(stream).join(rendition);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{n}.ts")), data)?;
        rec.entries.push(Entry {
            duration,
            discontinuity: discontinuity && n > 0,
        });
        self.write_playlist(stream, rendition, rec)
    }

    /// Close every rendition of `stream` (`#EXT-X-ENDLIST`) and write its master playlist.
    fn finish(&self, stream: &str, variants: &[RecordedVariant]) -> std::io::Result<()> {
        let mut open = self.open.lock();
        for ((s, rendition), rec) in open.iter_mut() {
            if s == stream && !rec.ended {
                rec.ended = true;
                self.write_playlist(stream, rendition, rec)?;
            }
        }
        let recorded: Vec<weir_media::hls::Variant> = variants
            .iter()
            .filter(|v| open.contains_key(&(stream.to_owned(), v.name.clone())))
            .map(|v| weir_media::hls::Variant {
                uri: format!("{}.m3u8", v.name),
                ..v.variant.clone()
            })
            .collect();
        if recorded.is_empty() {
            return Ok(());
        }
        replace(
            &self.dir.join(stream).join("index.m3u8"),
            weir_media::hls::master_playlist(&recorded).as_bytes(),
        )
    }

    fn write_playlist(
        &self,
        stream: &str,
        rendition: &str,
        rec: &Recording,
    ) -> std::io::Result<()> {
        let target = rec
            .entries
            .iter()
            .map(|e| e.duration.as_secs_f64().round() as u64)
            .max()
            .unwrap_or(1)
            .max(1);
        let mut text = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n"
        );
        for (n, e) in rec.entries.iter().enumerate() {
            if e.discontinuity {
                text.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let _ = write!(
                text,
                "#EXTINF:{:.3},\n{rendition}/{n}.ts\n",
                e.duration.as_secs_f64()
            );
        }
        if rec.ended {
            text.push_str("#EXT-X-ENDLIST\n");
        }
        replace(
            &self.dir.join(stream).join(format!("{rendition}.m3u8")),
            text.as_bytes(),
        )
    }

    /// The file at `rel` (`{stream}/…`) inside the recordings, if it is one.
    pub fn read(&self, rel: &[&str]) -> Option<(&'static str, Vec<u8>)> {
        let safe = |p: &&str| {
            !p.is_empty()
                && p.len() <= 160
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !p.starts_with('.')
        };
        if rel.is_empty() || !rel.iter().all(safe) {
            return None;
        }
        let path = rel.iter().fold(self.dir.clone(), |p, part| p.join(part));
        let kind = if path.extension().is_some_and(|e| e == "m3u8") {
            "application/vnd.apple.mpegurl"
        } else if path.extension().is_some_and(|e| e == "ts") {
            "video/mp2t"
        } else {
            return None;
        };
        std::fs::read(&path).ok().map(|d| (kind, d))
    }
}

/// Write `data` to `path` through a temporary file and a rename.
fn replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("m3u8.part");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_is_an_event_playlist_closed_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Files {
            dir: dir.path().to_path_buf(),
            open: Mutex::new(HashMap::new()),
        };
        let seg = Bytes::from_static(b"\x47ts");
        r.append("s", "source", Duration::from_secs(2), false, &seg)
            .expect("append");
        r.append("s", "source", Duration::from_millis(1500), true, &seg)
            .expect("append");
        let (kind, text) = r.read(&["s", "source.m3u8"]).expect("playlist");
        assert_eq!(kind, "application/vnd.apple.mpegurl");
        let text = String::from_utf8(text).expect("utf8");
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:EVENT"));
        assert!(
            text.contains("#EXT-X-DISCONTINUITY\n#EXTINF:1.500,\nsource/1.ts\n"),
            "{text}"
        );
        assert!(!text.contains("ENDLIST"));
        assert_eq!(
            r.read(&["s", "source", "1.ts"]).expect("segment").1,
            b"\x47ts"
        );
        r.finish(
            "s",
            &[RecordedVariant {
                name: "source".into(),
                variant: weir_media::hls::Variant {
                    uri: String::new(),
                    bandwidth: 1000,
                    average_bandwidth: None,
                    codecs: "avc1.64001f".into(),
                    resolution: None,
                    frame_rate: None,
                },
            }],
        )
        .expect("finish");
        let text = String::from_utf8(r.read(&["s", "source.m3u8"]).expect("p").1).expect("utf8");
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        let master = String::from_utf8(r.read(&["s", "index.m3u8"]).expect("m").1).expect("utf8");
        assert!(master.contains("\nsource.m3u8\n"), "{master}");
        // Nothing outside the recordings, nothing but playlists and segments.
        assert!(r.read(&["..", "etc"]).is_none());
        assert!(r.read(&["s", "source.m3u8.part"]).is_none());
    }
}
