//! A live AI stream's data channel: JSON lines from the orchestrator, relayed to the
//! clients reading `/process/stream/{id}/data` as records.

use std::sync::Arc;

use weir_trickle::Subscriber;

use super::AiStream;

/// Longest data record relayed, in bytes; a longer line is dropped.
const MAX_DATA_LINE: usize = 1 << 20;

/// Splits a data segment's body into lines as its chunks arrive, carrying a partial line over
/// to the next chunk; a line longer than [`MAX_DATA_LINE`] is dropped whole.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
    /// Inside a line that went over the cap: skip to its end.
    skipping: bool,
}

impl LineSplitter {
    /// The lines `chunk` completes.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(at);
            rest = &tail[1..];
            if !self.skipping && self.partial.len() + line.len() <= MAX_DATA_LINE {
                self.partial.extend_from_slice(line);
                out.push(String::from_utf8_lossy(&self.partial).into_owned());
            }
            self.partial.clear();
            self.skipping = false;
        }
        if !self.skipping {
            if self.partial.len() + rest.len() > MAX_DATA_LINE {
                tracing::warn!(limit = MAX_DATA_LINE, "data record too long; dropped");
                self.partial.clear();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        out
    }

    /// The unterminated last line of a segment that ended.
    fn finish(&mut self) -> Option<String> {
        let skipped = std::mem::take(&mut self.skipping);
        let line = std::mem::take(&mut self.partial);
        (!skipped && !line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned())
    }
}

/// Relay the JSONL data channel at `url` to the stream's server-sent events, each record as
/// soon as its line is complete (not when its segment ends).
pub(super) async fn relay_data(client: reqwest::Client, url: String, stream: Arc<AiStream>) {
    let mut sub = Subscriber::new(client, url).starting_at(0);
    while let Ok(Some(mut seg)) = sub.next().await {
        let mut lines = LineSplitter::default();
        let complete = loop {
            let chunk = match seg.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break true,
                Err(e) => {
                    // Its unterminated last line may be cut: dropped.
                    tracing::debug!(stream = %stream.id, error = %e, "data segment cut short");
                    break false;
                }
            };
            for line in lines.push(&chunk) {
                send_records(&stream, &line);
            }
        };
        if let Some(line) = lines.finish().filter(|_| complete) {
            send_records(&stream, &line);
        }
    }
}

fn send_records(stream: &AiStream, line: &str) {
    for record in data_records(line) {
        let _ = stream.data.send(Arc::from(record.as_str()));
    }
}

/// The records of a data segment: JSON lines, where a line holding a JSON array of strings
/// (pytrickle's batches) counts as one record per string.
fn data_records(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Vec<String>>(line) {
            Ok(batch) => out.extend(batch),
            Err(_) => out.push(line.to_owned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_batches_are_split_into_records() {
        assert_eq!(
            data_records("{\"a\":1}\n\n[\"x\",\"{\\\"b\\\":2}\"]\n[]\n"),
            vec![
                "{\"a\":1}".to_owned(),
                "x".to_owned(),
                "{\"b\":2}".to_owned()
            ]
        );
    }

    #[test]
    fn data_lines_are_split_as_chunks_arrive_and_capped() {
        let mut lines = LineSplitter::default();
        assert_eq!(
            lines.push(b"{\"a\":1}\n{\"b\""),
            vec!["{\"a\":1}".to_owned()]
        );
        assert!(lines.push(b":2").is_empty());
        assert_eq!(lines.push(b"}\n"), vec!["{\"b\":2}".to_owned()]);
        assert_eq!(lines.push(b"tail"), Vec::<String>::new());
        assert_eq!(lines.finish(), Some("tail".to_owned()));
        assert_eq!(lines.finish(), None);
        // A line over the cap is dropped whole, the next one comes through.
        let long = vec![b'x'; MAX_DATA_LINE];
        assert!(lines.push(&long).is_empty());
        assert!(lines.push(b"xx").is_empty());
        assert_eq!(lines.push(b"x\nok\n"), vec!["ok".to_owned()]);
        assert!(lines.push(&long).is_empty());
        assert!(lines.push(b"x").is_empty());
        assert_eq!(lines.finish(), None);
    }
}
