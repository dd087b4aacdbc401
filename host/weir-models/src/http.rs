//! A runner reached over HTTP that speaks Livepeer's AI runner API: `POST /{capability}` with
//! the same JSON or multipart fields as the public API, `GET /health`.

use std::time::Duration;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::Value;
use weir_protocol::ai::{AiRequest, AudioResponse, ImageResponse, Media, VideoResponse};
use weir_protocol::Capability;

use crate::{BoxFuture, Health, ModelRunner, OutputMedia, RunnerError, RunnerInput, RunnerOutput};

/// Largest response body read from a runner (images and audio arrive inline as data URLs).
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Settings of one HTTP runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRunnerConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// Bearer token the runner expects, if any.
    pub token: Option<String>,
    /// Deadline of one job.
    pub timeout: Duration,
    /// Deadline of a health check.
    pub health_timeout: Duration,
}

/// A runner container reached over HTTP.
#[derive(Debug, Clone)]
pub struct HttpRunner {
    config: HttpRunnerConfig,
    client: reqwest::Client,
}

impl HttpRunner {
    /// A runner at `config.url`.
    pub fn new(config: HttpRunnerConfig) -> Result<HttpRunner, RunnerError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| RunnerError::Unavailable(format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpRunner { config, client })
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.config.url.trim_end_matches('/'))
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn run_inner(&self, input: RunnerInput) -> Result<RunnerOutput, RunnerError> {
        let capability = input.request.capability();
        if let AiRequest::Llm(llm) = &input.request {
            if llm.stream {
                return Err(RunnerError::Unsupported(
                    "streaming LLM answers (server-sent events) through the HTTP runner".to_owned(),
                ));
            }
        }
        let fields = request_fields(&input.request)?;
        let request = self.authorize(self.client.post(self.endpoint(capability.id())));
        let request = if capability.is_multipart() {
            let mut form = reqwest::multipart::Form::new();
            for (name, value) in fields {
                form = form.text(name, form_value(&value));
            }
            for file in input.files {
                let len = file.data.len() as u64;
                let part = reqwest::multipart::Part::stream_with_length(file.data, len)
                    .file_name(file.filename)
                    .mime_str(&file.content_type)
                    .map_err(|e| RunnerError::Rejected {
                        status: 415,
                        message: format!("file `{}`: bad content type: {e}", file.field),
                    })?;
                form = form.part(file.field, part);
            }
            request.multipart(form)
        } else {
            request.json(&Value::Object(fields))
        };
        let body = self.send(request, self.config.timeout).await?;
        self.parse_output(capability, &body).await
    }

    /// Send a request and read a successful body, mapping every failure to a [`RunnerError`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Vec<u8>, RunnerError> {
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| transport_error(e, timeout))?;
        let status = response.status();
        let body = read_limited(response, timeout).await?;
        if status.is_success() {
            return Ok(body);
        }
        let message = error_message(&body);
        if status.is_client_error() {
            Err(RunnerError::Rejected {
                status: status.as_u16(),
                message,
            })
        } else {
            Err(RunnerError::Failed {
                status: status.as_u16(),
                message,
            })
        }
    }

    async fn parse_output(
        &self,
        capability: Capability,
        body: &[u8],
    ) -> Result<RunnerOutput, RunnerError> {
        Ok(match capability {
            Capability::TextToImage | Capability::ImageToImage | Capability::Upscale => {
                let r: ImageResponse = parse(body)?;
                RunnerOutput::Media(self.fetch_all(r.images).await?)
            }
            Capability::ImageToVideo => {
                // The runner answers frames (or one `video/*` object); the orchestrator turns
                // frames into the ONE video Livepeer's gateway returns in `images[]`.
                let r: VideoResponse = parse(body)?;
                RunnerOutput::Media(
                    self.fetch_all(r.frames.into_iter().flatten().collect())
                        .await?,
                )
            }
            Capability::AudioToText => RunnerOutput::Transcript(parse(body)?),
            Capability::ImageToText => RunnerOutput::Caption(parse(body)?),
            Capability::SegmentAnything2 => RunnerOutput::Masks(parse(body)?),
            Capability::Llm => RunnerOutput::Chat(parse(body)?),
            Capability::TextToSpeech => {
                let r: AudioResponse = parse(body)?;
                RunnerOutput::Speech(self.fetch(r.audio).await?)
            }
        })
    }

    async fn fetch_all(&self, media: Vec<Media>) -> Result<Vec<OutputMedia>, RunnerError> {
        if media.is_empty() {
            return Err(RunnerError::BadResponse(
                "the runner returned no media".to_owned(),
            ));
        }
        let mut out = Vec::with_capacity(media.len());
        for m in media {
            out.push(self.fetch(m).await?);
        }
        Ok(out)
    }

    /// Media arrive as `data:` URLs, or as URLs on the runner to fetch.
    async fn fetch(&self, media: Media) -> Result<OutputMedia, RunnerError> {
        let (content_type, data) = match decode_data_url(&media.url) {
            Some(decoded) => decoded?,
            None if media.url.starts_with("http://") || media.url.starts_with("https://") => {
                let response = self
                    .authorize(self.client.get(&media.url))
                    .timeout(self.config.timeout)
                    .send()
                    .await
                    .map_err(|e| transport_error(e, self.config.timeout))?;
                if !response.status().is_success() {
                    return Err(RunnerError::BadResponse(format!(
                        "fetching output {} answered {}",
                        media.url,
                        response.status()
                    )));
                }
                let content_type = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream")
                    .to_owned();
                (
                    content_type,
                    read_limited(response, self.config.timeout).await?,
                )
            }
            None => {
                let shown: String = media.url.chars().take(40).collect();
                return Err(RunnerError::BadResponse(format!(
                    "unsupported output URL `{shown}`"
                )));
            }
        };
        if data.is_empty() {
            return Err(RunnerError::BadResponse("an output is empty".to_owned()));
        }
        Ok(OutputMedia {
            content_type,
            data,
            seed: media.seed,
            nsfw: media.nsfw,
        })
    }
}

impl ModelRunner for HttpRunner {
    fn run(&self, input: RunnerInput) -> BoxFuture<'_, Result<RunnerOutput, RunnerError>> {
        Box::pin(self.run_inner(input))
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let request = self.authorize(self.client.get(self.endpoint("health")));
            match self.send(request, self.config.health_timeout).await {
                Ok(body) => {
                    let status = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
                        v.get("status")
                            .and_then(Value::as_str)
                            .map(str::to_ascii_uppercase)
                    });
                    match status.as_deref() {
                        Some("LOADING") => Health::Loading,
                        Some("ERROR") => Health::Unhealthy("the runner reports ERROR".to_owned()),
                        _ => Health::Ready,
                    }
                }
                Err(e) => Health::Unhealthy(e.to_string()),
            }
        })
    }
}

/// The request's fields as the runner expects them (the public API's names), without nulls.
fn request_fields(request: &AiRequest) -> Result<serde_json::Map<String, Value>, RunnerError> {
    let tagged = serde_json::to_value(request)
        .map_err(|e| RunnerError::BadResponse(format!("encoding the request: {e}")))?;
    match tagged.get("request") {
        Some(Value::Object(map)) => Ok(map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()),
        _ => Err(RunnerError::BadResponse(
            "encoding the request: unexpected shape".to_owned(),
        )),
    }
}

/// A JSON value as a multipart text field.
fn form_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, RunnerError> {
    serde_json::from_slice(body)
        .map_err(|e| RunnerError::BadResponse(format!("unexpected body: {e}")))
}

/// `{"detail":{"msg"}}`, `{"detail":[{msg}]}`, `{"error":{"message"}}`, or the text itself.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.pointer("/detail/msg")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                v.get("detail").and_then(Value::as_array).map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.get("msg").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .or_else(|| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
    });
    let message = from_json.unwrap_or_else(|| text.trim().to_owned());
    message.chars().take(1000).collect()
}

fn transport_error(e: reqwest::Error, timeout: Duration) -> RunnerError {
    if e.is_timeout() {
        RunnerError::Timeout(timeout)
    } else {
        RunnerError::Unavailable(e.to_string())
    }
}

async fn read_limited(
    mut response: reqwest::Response,
    timeout: Duration,
) -> Result<Vec<u8>, RunnerError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, timeout))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(RunnerError::BadResponse(format!(
                "response larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decode `data:[type][;base64],payload`; `None` when `url` is no data URL.
fn decode_data_url(url: &str) -> Option<Result<(String, Vec<u8>), RunnerError>> {
    let rest = url.strip_prefix("data:")?;
    Some((|| {
        let (meta, payload) = rest
            .split_once(',')
            .ok_or_else(|| RunnerError::BadResponse("a data URL has no payload".to_owned()))?;
        let (content_type, is_base64) = match meta.strip_suffix(";base64") {
            Some(ct) => (ct, true),
            None => (meta, false),
        };
        let content_type = if content_type.is_empty() {
            "text/plain"
        } else {
            content_type
        };
        if !is_base64 {
            return Err(RunnerError::BadResponse(
                "data URLs must be base64-encoded".to_owned(),
            ));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|e| {
                RunnerError::BadResponse(format!("a data URL is not valid base64: {e}"))
            })?;
        Ok((content_type.to_owned(), data))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_or_explain() {
        let ok = decode_data_url("data:image/png;base64,aGVsbG8=")
            .expect("data url")
            .expect("valid");
        assert_eq!(ok, ("image/png".to_owned(), b"hello".to_vec()));
        assert!(decode_data_url("https://x/y.png").is_none());
        assert!(decode_data_url("data:image/png;base64,@@@")
            .expect("data url")
            .is_err());
        assert!(decode_data_url("data:image/png,raw")
            .expect("data url")
            .is_err());
        assert!(decode_data_url("data:image/png;base64")
            .expect("data url")
            .is_err());
    }

    #[test]
    fn error_messages_come_from_every_known_shape() {
        assert_eq!(
            error_message(br#"{"detail":{"msg":"model not loaded"}}"#),
            "model not loaded"
        );
        assert_eq!(
            error_message(br#"{"detail":[{"msg":"a"},{"msg":"b"}]}"#),
            "a; b"
        );
        assert_eq!(error_message(br#"{"error":{"message":"boom"}}"#), "boom");
        assert_eq!(error_message(b"  plain text "), "plain text");
    }

    #[test]
    fn requests_become_runner_fields_without_nulls() {
        let r = AiRequest::from_json(Capability::TextToImage, &serde_json::json!({"prompt": "x"}))
            .expect("valid");
        let fields = request_fields(&r).expect("fields");
        assert_eq!(fields["prompt"], "x");
        assert_eq!(fields["width"], 512);
        assert!(!fields.contains_key("seed"));
        assert_eq!(form_value(&fields["safety_check"]), "true");
        assert_eq!(form_value(&fields["prompt"]), "x");
    }
}
