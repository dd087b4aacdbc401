//! Writing a validated request back to the wire, as a client sends it: what the jobs worker's
//! typed requests become on their way to an orchestrator.

use bytes::Bytes;
use serde_json::Value;

use super::ParsedRequest;
use crate::capability::Capability;
use crate::multipart;

/// A request as a body on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireBody {
    /// Its `Content-Type` (with the boundary of a form).
    pub content_type: String,
    /// Its bytes.
    pub data: Bytes,
}

impl ParsedRequest {
    /// The request as a client sends it: a JSON object, or a `multipart/form-data` form (text
    /// fields, then the files) for a multipart capability. Every field is written with its
    /// validated value, except the model when the request named none, so the reader chooses
    /// it as it would have. Reading the body back gives this request.
    pub fn to_wire(&self) -> Result<WireBody, serde_json::Error> {
        let capability = self.request.capability();
        let Value::Object(mut fields) = serde_json::to_value(&self.request)? else {
            return Err(serde::ser::Error::custom(
                "a request serialises to an object",
            ));
        };
        let Some(Value::Object(mut fields)) = fields.remove("request") else {
            return Err(serde::ser::Error::custom(
                "a request serialises with its fields",
            ));
        };
        fields.retain(|_, v| !v.is_null());
        if !self.model_named {
            fields.remove(if capability == Capability::Llm {
                "model"
            } else {
                "model_id"
            });
        }
        if !capability.is_multipart() {
            return Ok(WireBody {
                content_type: "application/json".to_owned(),
                data: Bytes::from(serde_json::to_vec(&fields)?),
            });
        }
        let text = fields.into_iter().map(|(name, value)| {
            let data = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            multipart::Part {
                headers: vec![(
                    "Content-Disposition".to_owned(),
                    format!("form-data; name=\"{name}\""),
                )],
                data: Bytes::from(data),
            }
        });
        let files = self.files.iter().map(|f| multipart::Part {
            headers: vec![
                (
                    "Content-Disposition".to_owned(),
                    format!(
                        "form-data; name=\"{}\"; filename=\"{}\"",
                        header_safe(&f.field),
                        header_safe(&f.filename)
                    ),
                ),
                ("Content-Type".to_owned(), header_safe(&f.content_type)),
            ],
            data: f.data.clone(),
        });
        let parts: Vec<multipart::Part> = text.chain(files).collect();
        let boundary = multipart::boundary();
        Ok(WireBody {
            content_type: format!("multipart/form-data; boundary={boundary}"),
            data: multipart::write(&boundary, &parts),
        })
    }
}

/// `s` fit for a quoted part header value: quotes and line breaks replaced.
fn header_safe(s: &str) -> String {
    s.replace(['"', '\r', '\n'], "_")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::body::tests::{png, wav};
    use crate::body::{parse_request, BodyError, UploadedFile};

    /// Read `wire` back as `capability` with a 1 MiB file cap.
    async fn read_back(capability: Capability, wire: WireBody) -> ParsedRequest {
        parse_request(capability, Some(&wire.content_type), wire.data, 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{capability}: the written body does not read back: {e}"))
    }

    /// A form request: capability, text fields, the file's part name and bytes.
    type FormCase<'a> = (Capability, &'a [(&'a str, &'a str)], &'a str, &'a [u8]);

    #[tokio::test]
    async fn every_request_written_to_the_wire_reads_back_the_same() {
        let json = [
            (
                Capability::TextToImage,
                r#"{"prompt":"a cat","negative_prompt":"dogs","width":256,"height":128,"guidance_scale":3.5,"seed":7,"safety_check":false,"model_id":"m/x"}"#,
            ),
            (Capability::TextToImage, r#"{"prompt":"no model named"}"#),
            (
                Capability::Llm,
                r#"{"messages":[{"role":"system","content":"be \"brief\""},{"role":"user","content":"hi"}],"max_tokens":9,"temperature":0.25,"top_k":40,"stream":true}"#,
            ),
            (
                Capability::TextToSpeech,
                r#"{"text":"hello","model_id":"t/s"}"#,
            ),
        ];
        for (capability, body) in json {
            let parsed = parse_request(
                capability,
                Some("application/json"),
                Bytes::from(body),
                1 << 20,
            )
            .await
            .expect("a valid body");
            let wire = parsed.to_wire().expect("writable");
            assert_eq!(wire.content_type, "application/json");
            assert_eq!(read_back(capability, wire).await, parsed, "{body}");
        }
        let image = png(64, 48);
        let audio = wav(1500);
        let forms: [FormCase<'_>; 6] = [
            (
                Capability::Upscale,
                &[("prompt", "sharp"), ("seed", "42"), ("model_id", "u/p")],
                "image",
                &image,
            ),
            (
                Capability::ImageToImage,
                &[
                    ("prompt", "paint it"),
                    ("strength", "0.5"),
                    ("safety_check", "false"),
                ],
                "image",
                &image,
            ),
            (
                Capability::ImageToVideo,
                &[
                    ("width", "512"),
                    ("height", "256"),
                    ("fps", "8"),
                    ("noise_aug_strength", "0.125"),
                ],
                "image",
                &image,
            ),
            (
                Capability::AudioToText,
                &[
                    ("return_timestamps", "word"),
                    ("metadata", r#"{"lang":"en"}"#),
                ],
                "audio",
                &audio,
            ),
            (
                Capability::SegmentAnything2,
                &[
                    ("point_coords", "[[1,2]]"),
                    ("point_labels", "[1]"),
                    ("multimask_output", "false"),
                ],
                "image",
                &image,
            ),
            (
                Capability::ImageToText,
                &[("prompt", "what is it")],
                "image",
                &image,
            ),
        ];
        for (capability, fields, part, data) in forms {
            let fields: BTreeMap<String, String> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let files = vec![UploadedFile {
                field: part.to_owned(),
                filename: "in \"put\"".to_owned(),
                content_type: String::new(),
                data: Bytes::copy_from_slice(data),
            }];
            let parsed = ParsedRequest::from_fields(capability, fields.clone(), files)
                .unwrap_or_else(|e| panic!("{capability}: {e}"));
            assert_eq!(parsed.model_named, fields.contains_key("model_id"));
            assert!(parsed.facts.image.is_some() || parsed.facts.audio_millis == Some(1500));
            let wire = parsed.to_wire().expect("writable");
            assert!(wire
                .content_type
                .starts_with("multipart/form-data; boundary="));
            let back = read_back(capability, wire).await;
            // The file name's quotes cannot travel in a quoted header value.
            assert_eq!(back.files[0].filename, "in _put_");
            assert_eq!(
                back.files[0].content_type,
                if part == "image" {
                    "image/png"
                } else {
                    "audio/wav"
                }
            );
            assert_eq!(
                (&back.request, back.model_named, back.facts),
                (&parsed.request, parsed.model_named, parsed.facts),
                "{capability}"
            );
            assert_eq!(back.files[0].data, parsed.files[0].data);
        }
    }

    #[tokio::test]
    async fn fields_and_files_are_validated_as_a_read_form_is() {
        let fields = BTreeMap::from([("strength".to_owned(), "7".to_owned())]);
        let e = ParsedRequest::from_fields(Capability::ImageToImage, fields, Vec::new())
            .expect_err("out of range and missing the image and prompt");
        let BodyError::Invalid(errors) = e else {
            panic!("expected field errors, got {e:?}");
        };
        let locs: Vec<String> = errors.detail.iter().map(|d| d.loc.join(".")).collect();
        assert!(locs.iter().any(|l| l.ends_with("strength")), "{locs:?}");
        assert!(locs.iter().any(|l| l.ends_with("image")), "{locs:?}");
        let files = vec![UploadedFile {
            field: "image".to_owned(),
            filename: "x.gif".to_owned(),
            content_type: "image/gif".to_owned(),
            data: Bytes::from_static(b"GIF89a"),
        }];
        let fields = BTreeMap::from([("prompt".to_owned(), "x".to_owned())]);
        let e = ParsedRequest::from_fields(Capability::ImageToImage, fields, files)
            .expect_err("a GIF is not an image this capability reads");
        assert_eq!(e.status(), 415, "{e}");
    }
}
