//! Bring-your-own-compute wire types with Livepeer's field names: capability registration,
//! the `Livepeer` job header, stream start/update answers and live video-to-video.
//!
//! A BYOC capability is priced per second of work: `price_per_unit / price_scaling` base units
//! of `currency` per second, advertised in `/info` as a model `byoc` of the capability with
//! `pixels_per_unit = price_scaling`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Header carrying the base64 JSON [`JobRequest`].
pub const JOB_HEADER: &str = "livepeer";
/// Header with the sender's balance after a BYOC job (Livepeer's name).
pub const LIVEPEER_BALANCE_HEADER: &str = "livepeer-balance";
/// Header naming the stream on worker `stream/params` and `stream/stop` calls.
pub const STREAM_ID_HEADER: &str = "x-stream-id";
/// The model id BYOC capabilities are advertised under.
pub const BYOC_MODEL: &str = "byoc";
/// Largest accepted `Livepeer` header.
pub const MAX_JOB_HEADER_BYTES: usize = 16 * 1024;
/// Longest accepted `timeout_seconds`.
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;

/// `POST /capability/register` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterCapability {
    /// Capability name (`[a-z0-9_-]`, 1..=64).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The worker's base URL.
    pub url: String,
    /// Concurrent jobs and streams the worker takes.
    pub capacity: u32,
    /// Base units per `price_scaling` seconds.
    #[serde(default)]
    pub price_per_unit: u64,
    /// Seconds per `price_per_unit` (at least 1; default 1).
    #[serde(default = "one")]
    pub price_scaling: u64,
    /// Currency label (default `WEI`).
    #[serde(default)]
    pub currency: String,
    /// Bearer token the worker expects on calls from the orchestrator.
    #[serde(default)]
    pub token: Option<String>,
}

fn one() -> u64 {
    1
}

/// Whether `name` is a valid capability name.
pub fn valid_capability_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl RegisterCapability {
    /// Check every field; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_capability_name(&self.name) {
            return Err(format!(
                "name `{}` is not a capability name (1 to 64 of a-z, 0-9, `-`, `_`)",
                self.name
            ));
        }
        if crate::Capability::from_id(&self.name).is_some() || self.name == "transcode" {
            return Err(format!(
                "name `{}` is a built-in capability; pick another",
                self.name
            ));
        }
        let url = self.url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(format!("url `{}` is not an http(s) URL", self.url));
        }
        if self.capacity == 0 || self.capacity > 10_000 {
            return Err(format!(
                "capacity {} is out of range (1 to 10000)",
                self.capacity
            ));
        }
        if self.price_scaling == 0 {
            return Err("price_scaling must be at least 1".to_owned());
        }
        if self.description.len() > 1024 {
            return Err("description is longer than 1024 bytes".to_owned());
        }
        Ok(())
    }
}

/// Orchestrators a job may or may not go to (`parameters.orchestrators`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorFilter {
    /// Only these (service URLs), when not empty.
    #[serde(default)]
    pub include: Vec<String>,
    /// Never these.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `JobRequest.parameters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobParameters {
    /// Which orchestrators may take it.
    #[serde(default)]
    pub orchestrators: OrchestratorFilter,
    /// Streams: the client sends video (default true).
    #[serde(default)]
    pub enable_video_ingress: Option<bool>,
    /// Streams: the worker sends video back (default true).
    #[serde(default)]
    pub enable_video_egress: Option<bool>,
    /// Streams: the worker sends JSONL data.
    #[serde(default)]
    pub enable_data_output: Option<bool>,
}

/// The `Livepeer` header of a BYOC job or stream, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Client's id for the job.
    #[serde(default)]
    pub id: String,
    /// Opaque request (a JSON string), passed to the worker.
    #[serde(default)]
    pub request: String,
    /// A JSON string holding [`JobParameters`] (may be empty).
    #[serde(default)]
    pub parameters: String,
    /// Capability name.
    pub capability: String,
    /// Deadline of the job.
    pub timeout_seconds: u64,
    /// Sender, filled by the gateway.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sender: String,
    /// Signature, filled by the gateway (payments are carried separately in Weir).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
}

impl JobRequest {
    /// Decode the `Livepeer` header value (standard or URL-safe base64 of JSON).
    pub fn from_header(value: &str) -> Result<JobRequest, String> {
        if value.len() > MAX_JOB_HEADER_BYTES {
            return Err(format!(
                "the Livepeer header is longer than {MAX_JOB_HEADER_BYTES} bytes"
            ));
        }
        let value = value.trim();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(value)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value))
            .map_err(|e| format!("the Livepeer header is not base64: {e}"))?;
        let job: JobRequest = serde_json::from_slice(&raw)
            .map_err(|e| format!("the Livepeer header is not a job request: {e}"))?;
        job.validate()?;
        Ok(job)
    }

    /// The job request in a request's `Livepeer` header; a missing or bad header is a 400.
    #[cfg(feature = "axum")]
    pub fn from_headers(headers: &http::HeaderMap) -> Result<JobRequest, crate::AiHttpError> {
        let value = headers
            .get(JOB_HEADER)
            .ok_or_else(|| {
                crate::AiHttpError::new(
                    400,
                    "missing the Livepeer header (base64 JSON job request)",
                )
            })?
            .to_str()
            .map_err(|_| crate::AiHttpError::new(400, "the Livepeer header is not ASCII"))?;
        JobRequest::from_header(value).map_err(|e| crate::AiHttpError::new(400, e))
    }

    /// Encode as a `Livepeer` header value.
    pub fn to_header(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Check the fields.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_capability_name(&self.capability) {
            return Err(format!(
                "capability `{}` is not a capability name",
                self.capability
            ));
        }
        if self.timeout_seconds == 0 || self.timeout_seconds > MAX_TIMEOUT_SECONDS {
            return Err(format!(
                "timeout_seconds {} is out of range (1 to {MAX_TIMEOUT_SECONDS})",
                self.timeout_seconds
            ));
        }
        if self.id.len() > 128 {
            return Err("id is longer than 128 bytes".to_owned());
        }
        self.params()?;
        Ok(())
    }

    /// The parsed `parameters` (empty means none).
    pub fn params(&self) -> Result<JobParameters, String> {
        if self.parameters.trim().is_empty() {
            return Ok(JobParameters::default());
        }
        serde_json::from_str(&self.parameters)
            .map_err(|e| format!("parameters is not a parameters object: {e}"))
    }
}

/// Body of the gateway's `POST /process/stream/start`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStart {
    /// A name for the stream (free text).
    #[serde(default)]
    pub stream_name: String,
    /// Where to push the output over RTMP as well (not supported yet: must be empty).
    #[serde(default)]
    pub rtmp_output: String,
    /// The stream id to use (generated when empty).
    #[serde(default)]
    pub stream_id: String,
    /// Start parameters for the worker.
    #[serde(default)]
    pub params: serde_json::Value,
}

/// What the gateway answers to a stream start: where to send and read everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamUrls {
    /// The stream id.
    pub stream_id: String,
    /// RTMP ingest.
    pub rtmp_url: String,
    /// WHIP ingest (empty: not offered by this gateway).
    pub whip_url: String,
    /// WHEP egress (empty: not offered by this gateway).
    pub whep_url: String,
    /// Where the output is pushed over RTMP (empty: none).
    pub rtmp_output_url: String,
    /// HLS playlist of the output.
    pub hls_url: String,
    /// `POST` new params here.
    pub update_url: String,
    /// `GET` the stream's state here.
    pub status_url: String,
    /// `GET` the worker's JSONL data as server-sent events here.
    pub data_url: String,
    /// `POST` here to stop.
    pub stop_url: String,
}

/// The trickle channels of one stream, as one side sees them (URLs carry their tokens).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChannels {
    /// Input video: where the gateway publishes (or, for the worker, reads).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub publish_url: String,
    /// Output video: where the gateway reads (or, for the worker, publishes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subscribe_url: String,
    /// Control messages.
    pub control_url: String,
    /// Events.
    pub events_url: String,
    /// JSONL data.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_url: String,
    /// Livepeer's name for the stream's channel prefix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest_id: String,
}

/// What the orchestrator sends the worker's `POST {url}/stream/start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStreamStart {
    /// The gateway's id of the stream.
    pub gateway_request_id: String,
    /// The stream id.
    pub stream_id: String,
    /// Input video to read (`subscribe_url`, from the worker's side).
    pub subscribe_url: String,
    /// Where to publish output video.
    pub publish_url: String,
    /// Control messages to read.
    pub control_url: String,
    /// Where to publish events.
    pub events_url: String,
    /// Where to publish JSONL data.
    pub data_url: String,
    /// Start parameters.
    pub params: serde_json::Value,
    /// The opaque request of the job header.
    pub request: String,
}

/// Livepeer's `POST /live-video-to-video` body (orchestrator side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveVideoToVideo {
    /// The capability (pipeline) to run.
    pub model_id: String,
    /// Start parameters.
    #[serde(default)]
    pub params: serde_json::Value,
    /// The gateway's request id.
    #[serde(default)]
    pub gateway_request_id: String,
    /// Stream id.
    #[serde(default)]
    pub stream_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> RegisterCapability {
        RegisterCapability {
            name: "echo".into(),
            description: String::new(),
            url: "http://127.0.0.1:9000".into(),
            capacity: 2,
            price_per_unit: 10,
            price_scaling: 1,
            currency: "WEI".into(),
            token: None,
        }
    }

    #[test]
    fn registration_is_validated() {
        assert!(register().validate().is_ok());
        for bad in [
            RegisterCapability {
                name: "Bad Name".into(),
                ..register()
            },
            RegisterCapability {
                name: "upscale".into(),
                ..register()
            },
            RegisterCapability {
                url: "ftp://x".into(),
                ..register()
            },
            RegisterCapability {
                capacity: 0,
                ..register()
            },
            RegisterCapability {
                price_scaling: 0,
                ..register()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let parsed: RegisterCapability =
            serde_json::from_str(r#"{"name":"x","url":"http://a:1","capacity":1}"#)
                .expect("defaults");
        assert_eq!(parsed.price_scaling, 1);
    }

    #[test]
    fn job_header_round_trips_and_rejects_garbage() {
        let job = JobRequest {
            id: "j1".into(),
            request: "{}".into(),
            parameters: r#"{"orchestrators":{"exclude":["http://x"]}}"#.into(),
            capability: "echo".into(),
            timeout_seconds: 30,
            sender: String::new(),
            sig: String::new(),
        };
        let back = JobRequest::from_header(&job.to_header()).expect("round trip");
        assert_eq!(back, job);
        assert_eq!(
            back.params().expect("params").orchestrators.exclude,
            vec!["http://x".to_owned()]
        );
        assert!(JobRequest::from_header("!!!").is_err());
        let no_timeout = JobRequest {
            timeout_seconds: 0,
            ..job.clone()
        };
        assert!(JobRequest::from_header(&no_timeout.to_header())
            .expect_err("0 s")
            .contains("timeout_seconds"));
        let bad_params = JobRequest {
            parameters: "[1]".into(),
            ..job
        };
        assert!(JobRequest::from_header(&bad_params.to_header()).is_err());
    }
}
