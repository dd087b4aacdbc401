//! `multipart/mixed` bodies: how transcoded renditions travel, one part per rendition, in the
//! shape Livepeer's HTTP push answers with (`Content-Type`, `Content-Disposition`,
//! `Rendition-Name`, `Content-Length` on each part).

use bytes::{BufMut, Bytes, BytesMut};

/// One part of a `multipart/mixed` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's headers, in order (names as written).
    pub headers: Vec<(String, String)>,
    /// The part's bytes.
    pub data: Bytes,
}

impl Part {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a `multipart/mixed` body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The content type is not multipart or names no boundary.
    #[error("not a multipart body with a boundary: `{0}`")]
    NoBoundary(String),
    /// The body is not framed by the boundary.
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
}

/// A fresh boundary string.
pub fn boundary() -> String {
    format!("weir-{:032x}", rand::random::<u128>())
}

/// The body of `parts` framed by `boundary`; `Content-Length` is added to every part.
pub fn write(boundary: &str, parts: &[Part]) -> Bytes {
    let size: usize = parts.iter().map(|p| p.data.len() + 256).sum();
    let mut out = BytesMut::with_capacity(size + 64);
    for p in parts {
        out.put_slice(b"--");
        out.put_slice(boundary.as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in &p.headers {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(format!("Content-Length: {}\r\n\r\n", p.data.len()).as_bytes());
        out.put_slice(&p.data);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"--");
    out.put_slice(boundary.as_bytes());
    out.put_slice(b"--\r\n");
    out.freeze()
}

/// The boundary named in a `multipart/…; boundary=…` content type.
pub fn boundary_of(content_type: &str) -> Result<String, MultipartError> {
    let no = || MultipartError::NoBoundary(content_type.to_owned());
    let (kind, params) = content_type.split_once(';').ok_or_else(no)?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return Err(no());
    }
    params
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or_else(no)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The parts of `body`, framed by `boundary`.
pub fn parse(boundary: &str, body: &Bytes) -> Result<Vec<Part>, MultipartError> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut at = find(body, delim, 0).ok_or(MultipartError::Malformed("no opening boundary"))?;
    let mut parts = Vec::new();
    loop {
        at += delim.len();
        if body.get(at..at + 2) == Some(b"--") {
            return Ok(parts);
        }
        if body.get(at..at + 2) != Some(b"\r\n") {
            return Err(MultipartError::Malformed("boundary not followed by CRLF"));
        }
        at += 2;
        let head_end = find(body, b"\r\n\r\n", at)
            .ok_or(MultipartError::Malformed("part headers not terminated"))?;
        let head = std::str::from_utf8(&body[at..head_end])
            .map_err(|_| MultipartError::Malformed("part headers are not UTF-8"))?;
        let mut headers = Vec::new();
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            let (n, v) = line
                .split_once(':')
                .ok_or(MultipartError::Malformed("part header without a colon"))?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        let start = head_end + 4;
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let end = match length {
            Some(len) => {
                let end = start.checked_add(len).filter(|e| *e <= body.len()).ok_or(
                    MultipartError::Malformed("part shorter than its Content-Length"),
                )?;
                if body.get(end..end + 2) != Some(b"\r\n") {
                    return Err(MultipartError::Malformed(
                        "part longer than its Content-Length",
                    ));
                }
                end
            }
            None => {
                let mut closing = b"\r\n".to_vec();
                closing.extend_from_slice(delim);
                find(body, &closing, start).ok_or(MultipartError::Malformed("unterminated part"))?
            }
        };
        parts.push(Part {
            headers,
            data: body.slice(start..end),
        });
        at = find(body, delim, end).ok_or(MultipartError::Malformed("no closing boundary"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, data: &'static [u8]) -> Part {
        Part {
            headers: vec![
                (
                    "Content-Type".into(),
                    format!("video/MP2T; name=\"{name}\""),
                ),
                ("Rendition-Name".into(), name.into()),
            ],
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn parts_round_trip_even_when_the_data_looks_like_a_boundary() {
        let b = boundary();
        let tricky: &'static [u8] = b"\r\n--not-it\r\n\r\n--";
        let body = write(&b, &[part("a", b"one"), part("b", tricky), part("c", b"")]);
        let parts = parse(&b, &body).expect("parse");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].data, Bytes::from_static(b"one"));
        assert_eq!(parts[1].data, Bytes::from_static(tricky));
        assert_eq!(parts[1].header("rendition-name"), Some("b"));
        assert_eq!(parts[2].data.len(), 0);
    }

    #[test]
    fn the_boundary_is_read_from_the_content_type() {
        assert_eq!(
            boundary_of("multipart/mixed; boundary=\"abc\"").as_deref(),
            Ok("abc")
        );
        assert!(boundary_of("application/json").is_err());
        assert!(boundary_of("multipart/mixed").is_err());
    }

    #[test]
    fn truncated_or_garbage_bodies_are_errors() {
        let b = boundary();
        let body = write(&b, &[part("a", b"0123456789")]);
        let cut = body.slice(..body.len() - 20);
        assert!(parse(&b, &cut).is_err());
        assert!(parse(&b, &Bytes::from_static(b"garbage")).is_err());
    }
}
