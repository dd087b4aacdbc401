//! Reading AI request bodies off the wire: JSON or `multipart/form-data`, with size limits,
//! then validation into an [`AiRequest`], plus the media facts billing needs (image size,
//! audio duration). The gateway and the orchestrator both read bodies with this one function;
//! [`ParsedRequest::to_wire`] writes a validated request back (module `write`).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;

use crate::ai::{AiRequest, FilePart, FormInput, MediaFacts};
use crate::capability::Capability;
use crate::error::{FieldError, ValidationErrors};

mod write;

pub use write::WireBody;

/// Default cap on a whole request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// Largest image (in pixels) accepted for billing and processing.
pub const MAX_IMAGE_PIXELS: u64 = 4096 * 4096;

/// An uploaded file with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    /// Form field name (`image`, `audio`).
    pub field: String,
    /// File name as sent.
    pub filename: String,
    /// MIME type as sent.
    pub content_type: String,
    /// The bytes.
    pub data: Bytes,
}

/// A request read and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    /// The validated request (defaults filled in).
    pub request: AiRequest,
    /// Whether the client named a model (`model_id`, or `model` for `/llm`).
    pub model_named: bool,
    /// Uploaded files.
    pub files: Vec<UploadedFile>,
    /// What decoding the media headers told us.
    pub facts: MediaFacts,
}

impl ParsedRequest {
    /// Validate a JSON body for a JSON `capability`: what [`parse_request`] does once the body
    /// is read, for callers that hold the value already (the jobs worker).
    pub fn from_json(capability: Capability, value: &Value) -> Result<ParsedRequest, BodyError> {
        let key = if capability == Capability::Llm {
            "model"
        } else {
            "model_id"
        };
        let model_named = value
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty());
        let request = AiRequest::from_json(capability, value)?;
        Ok(ParsedRequest {
            request,
            model_named,
            files: Vec::new(),
            facts: MediaFacts::default(),
        })
    }

    /// Validate a form for a multipart `capability` from its text `fields` and uploaded
    /// `files`: what [`parse_request`] does once a multipart body is read (a file's bytes win
    /// over its label), for callers that hold the fields and files already (the jobs worker).
    pub fn from_fields(
        capability: Capability,
        fields: BTreeMap<String, String>,
        mut files: Vec<UploadedFile>,
    ) -> Result<ParsedRequest, BodyError> {
        for f in &mut files {
            if let Some(sniffed) = sniff(&f.data) {
                sniffed.clone_into(&mut f.content_type);
            }
        }
        let form = FormInput {
            fields,
            files: form_files(&files),
            repeated: Default::default(),
        };
        parsed_form(capability, &form, files)
    }
}

/// Validate a read form: the request, whether it named a model, and the media facts.
fn parsed_form(
    capability: Capability,
    form: &FormInput,
    files: Vec<UploadedFile>,
) -> Result<ParsedRequest, BodyError> {
    let model_named = form.fields.get("model_id").is_some_and(|m| !m.is_empty());
    let request = AiRequest::from_form(capability, form).map_err(unsupported_media)?;
    let facts = media_facts(&request, &files)?;
    Ok(ParsedRequest {
        request,
        model_named,
        files,
        facts,
    })
}

/// The form input describing `files`: each file's part name, file name, type and length.
fn form_files(files: &[UploadedFile]) -> BTreeMap<String, FilePart> {
    files
        .iter()
        .map(|f| {
            (
                f.field.clone(),
                FilePart {
                    filename: f.filename.clone(),
                    content_type: f.content_type.clone(),
                    len: f.data.len() as u64,
                },
            )
        })
        .collect()
}

/// Why a body could not be read; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not parseable as the declared format (400).
    #[error("{0}")]
    Malformed(String),
    /// Larger than allowed (413).
    #[error("{0}")]
    TooLarge(String),
    /// Wrong content type, or media in a format that cannot be read (415).
    #[error("{0}")]
    Unsupported(String),
    /// Fields invalid (422).
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl BodyError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::Malformed(_) => 400,
            BodyError::TooLarge(_) => 413,
            BodyError::Unsupported(_) => 415,
            BodyError::Invalid(_) => 422,
        }
    }
}

fn mime_of(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Read and validate `body` for `capability`. `content_type` is the request's header;
/// `max_file_bytes` caps each uploaded file.
pub async fn parse_request(
    capability: Capability,
    content_type: Option<&str>,
    body: Bytes,
    max_file_bytes: usize,
) -> Result<ParsedRequest, BodyError> {
    if body.is_empty() {
        return Err(empty_body(capability));
    }
    let mime = mime_of(content_type);
    if capability.is_multipart() {
        if mime != "multipart/form-data" {
            return Err(BodyError::Unsupported(format!(
                "/{capability} takes a multipart/form-data body (got {:?})",
                content_type.unwrap_or("no content type")
            )));
        }
        let boundary = content_type
            .and_then(|ct| multer::parse_boundary(ct).ok())
            .ok_or_else(|| {
                BodyError::Malformed("multipart body without a boundary parameter".into())
            })?;
        let (form, files) = read_form(body, boundary, max_file_bytes).await?;
        parsed_form(capability, &form, files)
    } else {
        if mime != "application/json" {
            return Err(BodyError::Unsupported(format!(
                "/{capability} takes an application/json body (got {:?})",
                content_type.unwrap_or("no content type")
            )));
        }
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| BodyError::Malformed(format!("body is not valid JSON: {e}")))?;
        ParsedRequest::from_json(capability, &value)
    }
}

/// A request without a body: a 422 listing the required fields it lacks (FastAPI's answer),
/// whatever content type it claims.
fn empty_body(capability: Capability) -> BodyError {
    let result = if capability.is_multipart() {
        AiRequest::from_form(capability, &FormInput::default())
    } else {
        AiRequest::from_json(capability, &Value::Object(serde_json::Map::new()))
    };
    let mut errors = result.err().unwrap_or_default();
    if errors.is_empty() {
        errors.detail.push(FieldError {
            loc: vec!["body".to_owned()],
            msg: "Field required: the request has no body".to_owned(),
            kind: "missing".to_owned(),
        });
    }
    BodyError::Invalid(errors)
}

/// The media type of uploaded bytes a capability can read (PNG, JPEG, WebP, WAV), from their
/// signature; clients often label uploads `application/octet-stream` or not at all.
fn sniff(data: &[u8]) -> Option<&'static str> {
    let image = match imagesize::image_type(data) {
        Ok(imagesize::ImageType::Png) => Some("image/png"),
        Ok(imagesize::ImageType::Jpeg) => Some("image/jpeg"),
        Ok(imagesize::ImageType::Webp) => Some("image/webp"),
        _ => None,
    };
    image.or_else(|| {
        (data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WAVE")
            .then_some("audio/wav")
    })
}

/// An upload of a type the capability does not take is a 415, not a field error.
fn unsupported_media(errors: ValidationErrors) -> BodyError {
    let media: Vec<String> = errors
        .detail
        .iter()
        .filter(|e| e.kind == "unsupported_media_type")
        .map(|e| format!("{}: {}", e.loc.join("."), e.msg))
        .collect();
    if media.is_empty() {
        BodyError::Invalid(errors)
    } else {
        BodyError::Unsupported(media.join("; "))
    }
}

async fn read_form(
    body: Bytes,
    boundary: String,
    max_file_bytes: usize,
) -> Result<(FormInput, Vec<UploadedFile>), BodyError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .per_field(max_file_bytes as u64)
            .whole_stream(u64::MAX),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut fields = BTreeMap::new();
    let mut files = Vec::new();
    let mut file_fields = std::collections::BTreeSet::new();
    let mut repeated = std::collections::BTreeSet::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(form_error(e, max_file_bytes)),
        };
        let name = field.name().unwrap_or("").to_owned();
        if fields.contains_key(&name) || file_fields.contains(&name) {
            repeated.insert(name.clone());
        }
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(|m| m.essence_str().to_owned());
        let data = field
            .bytes()
            .await
            .map_err(|e| form_error(e, max_file_bytes))?;
        match filename {
            Some(filename) => {
                // What the bytes are wins over the label; no label and unknown bytes leave it
                // empty, which validation reports as a field error naming the part.
                let content_type = sniff(&data)
                    .map(str::to_owned)
                    .or(content_type)
                    .unwrap_or_default();
                file_fields.insert(name.clone());
                files.push(UploadedFile {
                    field: name,
                    filename,
                    content_type,
                    data,
                });
            }
            None => {
                let text = String::from_utf8(data.to_vec()).map_err(|_| {
                    BodyError::Malformed(format!("form field `{name}` is not UTF-8 text"))
                })?;
                fields.insert(name, text);
            }
        }
    }
    Ok((
        FormInput {
            fields,
            files: form_files(&files),
            repeated,
        },
        files,
    ))
}

fn form_error(e: multer::Error, max_file_bytes: usize) -> BodyError {
    match e {
        multer::Error::FieldSizeExceeded { field_name, .. } => BodyError::TooLarge(format!(
            "form field `{}` is larger than the {max_file_bytes}-byte limit",
            field_name.unwrap_or_default()
        )),
        other => BodyError::Malformed(format!("malformed multipart body: {other}")),
    }
}

/// Decode enough of the uploaded media to bill the request.
fn media_facts(request: &AiRequest, files: &[UploadedFile]) -> Result<MediaFacts, BodyError> {
    let mut facts = MediaFacts::default();
    for file in files {
        match file.field.as_str() {
            "image" => {
                let size = imagesize::blob_size(&file.data).map_err(|e| {
                    BodyError::Unsupported(format!(
                        "cannot read the uploaded image `{}` ({}): {e}; send PNG, JPEG or WebP",
                        file.filename, file.content_type
                    ))
                })?;
                let kind = imagesize::image_type(&file.data).ok();
                if !matches!(
                    kind,
                    Some(
                        imagesize::ImageType::Png
                            | imagesize::ImageType::Jpeg
                            | imagesize::ImageType::Webp
                    )
                ) {
                    return Err(BodyError::Unsupported(format!(
                        "the uploaded image `{}` is {kind:?}; send PNG, JPEG or WebP",
                        file.filename
                    )));
                }
                let (w, h) = (size.width as u64, size.height as u64);
                if w == 0 || h == 0 || w * h > MAX_IMAGE_PIXELS {
                    return Err(BodyError::TooLarge(format!(
                        "the uploaded image is {w}x{h}; at most {MAX_IMAGE_PIXELS} pixels are accepted"
                    )));
                }
                facts.image = Some((w as u32, h as u32));
            }
            "audio" => {
                facts.audio_millis = Some(wav_millis(&file.data).ok_or_else(|| {
                    BodyError::Unsupported(format!(
                        "cannot read the duration of the uploaded audio `{}` ({}): \
                         billing by duration supports PCM WAV only for now",
                        file.filename, file.content_type
                    ))
                })?);
            }
            _ => {}
        }
    }
    // Make sure billing can be computed before anything else happens.
    request
        .units(facts)
        .map_err(|e| BodyError::Malformed(format!("cannot bill this request: {e}")))?;
    Ok(facts)
}

/// Duration of a RIFF/WAVE file in milliseconds, from its `fmt ` and `data` chunks.
pub fn wav_millis(data: &[u8]) -> Option<u64> {
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12usize;
    let mut byte_rate = None;
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body = pos + 8;
        if id == b"fmt " && body + 12 <= data.len() {
            byte_rate = Some(u32::from_le_bytes(
                data[body + 8..body + 12].try_into().ok()?,
            ));
        } else if id == b"data" {
            let rate = u64::from(byte_rate.filter(|r| *r > 0)?);
            // A streamed WAV may leave the data length unset; fall back to what is present.
            let len = if len == 0 || body + len > data.len() {
                data.len() - body
            } else {
                len
            };
            return Some((len as u64).saturating_mul(1000) / rate);
        }
        pos = body.checked_add(len)?.checked_add(len & 1)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn png(w: u32, h: u32) -> Vec<u8> {
        // A PNG signature and IHDR chunk are all that is needed to read the size.
        let mut v = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
        v.extend_from_slice(b"IHDR");
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    /// A form part: name, optional (file name, content type), bytes.
    type Part<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

    fn multipart(parts: &[Part<'_>]) -> (String, Bytes) {
        let boundary = "XbOuNdArY";
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some((filename, ct)) => {
                    body.extend_from_slice(
                        format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n").as_bytes(),
                    );
                    if !ct.is_empty() {
                        body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
                    }
                    body.extend_from_slice(b"\r\n");
                }
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (
            format!("multipart/form-data; boundary={boundary}"),
            Bytes::from(body),
        )
    }

    #[tokio::test]
    async fn multipart_upscale_reads_fields_files_and_image_size() {
        let img = png(64, 48);
        let (ct, body) = multipart(&[
            ("prompt", None, b"sharper"),
            ("image", Some(("x.png", "image/png")), &img),
        ]);
        let parsed = parse_request(Capability::Upscale, Some(&ct), body, 1 << 20)
            .await
            .expect("valid");
        assert!(!parsed.model_named);
        assert_eq!(parsed.facts.image, Some((64, 48)));
        assert_eq!(parsed.files.len(), 1);
        assert_eq!(parsed.request.units(parsed.facts), Ok(64 * 48));
    }

    /// A declared field sent twice is refused naming it (Livepeer's 422); an unknown part
    /// sent twice is ignored, as unknown parts are.
    #[tokio::test]
    async fn a_repeated_declared_field_is_refused_and_a_repeated_unknown_one_ignored() {
        let img = png(64, 48);
        let (ct, body) = multipart(&[
            ("prompt", None, b"one"),
            ("extra", None, b"a"),
            ("extra", None, b"b"),
            ("image", Some(("x.png", "image/png")), &img),
        ]);
        let parsed = parse_request(Capability::Upscale, Some(&ct), body, 1 << 20).await;
        assert!(parsed.is_ok(), "{:?}", parsed.err());

        for (twice, file) in [("prompt", false), ("image", true)] {
            let mut parts: Vec<Part<'_>> = vec![
                ("prompt", None, b"one"),
                ("image", Some(("x.png", "image/png")), &img),
            ];
            parts.push(if file {
                ("image", Some(("y.png", "image/png")), &img)
            } else {
                ("prompt", None, b"two")
            });
            let (ct, body) = multipart(&parts);
            let e = parse_request(Capability::Upscale, Some(&ct), body, 1 << 20)
                .await
                .expect_err("a repeated field");
            assert_eq!(e.status(), 422, "{e}");
            let BodyError::Invalid(errors) = e else {
                panic!("a field error, got {e}");
            };
            let named: Vec<(&str, &str)> = errors
                .detail
                .iter()
                .map(|f| (f.loc[1].as_str(), f.kind.as_str()))
                .collect();
            assert_eq!(named, [(twice, "duplicate")]);
        }
    }

    #[tokio::test]
    async fn bad_bodies_get_the_right_status() {
        let img = png(64, 48);
        let (ct, body) = multipart(&[
            ("prompt", None, b"x"),
            ("image", Some(("x.png", "image/png")), &img),
        ]);
        let too_big = parse_request(Capability::Upscale, Some(&ct), body, 10)
            .await
            .expect_err("too big");
        assert_eq!(too_big.status(), 413, "{too_big}");

        let (ct, body) = multipart(&[
            ("prompt", None, b"x"),
            ("image", Some(("x.png", "image/png")), b"GIF89a not really"),
        ]);
        let bad = parse_request(Capability::Upscale, Some(&ct), body, 1 << 20)
            .await
            .expect_err("not an image");
        assert_eq!(bad.status(), 415, "{bad}");

        let json = parse_request(
            Capability::Upscale,
            Some("application/json"),
            Bytes::from_static(b"{}"),
            1 << 20,
        )
        .await
        .expect_err("wrong type");
        assert_eq!(json.status(), 415);

        let malformed = parse_request(
            Capability::TextToImage,
            Some("application/json"),
            Bytes::from_static(b"{\"prompt\": "),
            1 << 20,
        )
        .await
        .expect_err("bad json");
        assert_eq!(malformed.status(), 400);

        let invalid = parse_request(
            Capability::TextToImage,
            Some("application/json; charset=utf-8"),
            Bytes::from_static(b"{\"width\": \"wide\"}"),
            1 << 20,
        )
        .await
        .expect_err("invalid");
        assert_eq!(invalid.status(), 422);
        assert!(invalid.to_string().contains("prompt"), "{invalid}");
    }

    #[tokio::test]
    async fn uploads_are_recognised_by_their_bytes_and_empty_bodies_name_the_fields() {
        let img = png(32, 32);
        for label in ["application/octet-stream", "text/plain", ""] {
            let (ct, body) = multipart(&[
                ("prompt", None, b"x"),
                ("image", Some(("x.png", label)), &img),
            ]);
            let parsed = parse_request(Capability::Upscale, Some(&ct), body, 1 << 20)
                .await
                .unwrap_or_else(|e| panic!("a PNG labelled {label:?} is accepted: {e}"));
            assert_eq!(parsed.files[0].content_type, "image/png");
        }

        let (ct, body) = multipart(&[
            ("prompt", None, b"x"),
            ("image", Some(("x.bin", "")), b"not an image"),
        ]);
        let unlabelled = parse_request(Capability::Upscale, Some(&ct), body, 1 << 20)
            .await
            .expect_err("unknown bytes without a type");
        assert_eq!(unlabelled.status(), 422, "{unlabelled}");
        assert!(unlabelled.to_string().contains("image"), "{unlabelled}");

        for (capability, field) in [
            (Capability::Upscale, "image"),
            (Capability::TextToImage, "prompt"),
        ] {
            for content_type in [None, Some("application/json"), Some("multipart/form-data")] {
                let empty = parse_request(capability, content_type, Bytes::new(), 1 << 20)
                    .await
                    .expect_err("no body");
                assert_eq!(empty.status(), 422, "{empty}");
                assert!(empty.to_string().contains(field), "{empty}");
            }
        }
    }

    /// A mono 16 kHz PCM WAV of `millis` of silence.
    pub(super) fn wav(millis: u32) -> Vec<u8> {
        let bytes = millis * 32;
        let mut wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&[1, 0, 1, 0]); // PCM, mono
        wav.extend_from_slice(&16_000u32.to_le_bytes()); // sample rate
        wav.extend_from_slice(&32_000u32.to_le_bytes()); // byte rate
        wav.extend_from_slice(&[2, 0, 16, 0]);
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&bytes.to_le_bytes());
        wav.extend(std::iter::repeat_n(0u8, bytes as usize));
        wav
    }

    #[test]
    fn wav_duration_comes_from_the_header() {
        assert_eq!(wav_millis(&wav(1500)), Some(1500));
        assert_eq!(wav_millis(b"ID3 mp3 data"), None);
    }
}
