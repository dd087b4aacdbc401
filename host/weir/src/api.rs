//! JSON shapes of the admin API, converted to and from the contract's types. Fields are
//! snake_case; the camelCase a JavaScript guest sees (`latencyMs`, `inFlight`, …) is taken too.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use weir_runtime::{
    Candidate, JobRequest, OutputSize, Param, ParamValue, Price, QuoteContext, Role,
};

/// A parameter value in JSON: a string, integer, number or boolean.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum JsonValue {
    /// Boolean.
    Flag(bool),
    /// Integer.
    Integer(i64),
    /// Number.
    Number(f64),
    /// String.
    Text(String),
}

/// `output` of a job request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonOutputSize {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per output.
    pub frames: u32,
    /// Number of outputs.
    pub count: u32,
}

/// A job request in JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonJobRequest {
    /// Request id.
    pub id: String,
    /// Capability id.
    pub capability: String,
    /// Model id.
    pub model: String,
    /// Parameters by name.
    pub params: std::collections::BTreeMap<String, JsonValue>,
    /// Expected output.
    pub output: JsonOutputSize,
    /// Billable units.
    pub units: u64,
    /// Sender / tenant.
    pub sender: String,
}

impl From<JsonJobRequest> for JobRequest {
    fn from(r: JsonJobRequest) -> JobRequest {
        JobRequest {
            id: r.id,
            capability: r.capability,
            model: r.model,
            params: r
                .params
                .into_iter()
                .map(|(name, v)| Param {
                    name,
                    value: match v {
                        JsonValue::Flag(b) => ParamValue::Flag(b),
                        JsonValue::Integer(i) => ParamValue::Integer(i),
                        JsonValue::Number(n) => ParamValue::Number(n),
                        JsonValue::Text(s) => ParamValue::Text(s),
                    },
                })
                .collect(),
            output: OutputSize::new(
                r.output.width,
                r.output.height,
                r.output.frames,
                r.output.count,
            ),
            units: r.units,
            sender: r.sender,
        }
    }
}

/// Scalar outputs as JSON.
pub fn params_to_json(params: Vec<Param>) -> std::collections::BTreeMap<String, JsonValue> {
    params
        .into_iter()
        .map(|p| {
            let v = match p.value {
                ParamValue::Flag(b) => JsonValue::Flag(b),
                ParamValue::Integer(i) => JsonValue::Integer(i),
                ParamValue::Number(n) => JsonValue::Number(n),
                ParamValue::Text(s) => JsonValue::Text(s),
            };
            (p.name, v)
        })
        .collect()
}

/// A price in JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JsonPrice {
    /// Base units per `pixels_per_unit`.
    #[serde(alias = "pricePerUnit")]
    pub price_per_unit: u64,
    /// Units of work one `price_per_unit` buys.
    #[serde(alias = "pixelsPerUnit")]
    pub pixels_per_unit: u64,
    /// Currency label.
    pub currency: String,
}

impl From<Price> for JsonPrice {
    fn from(p: Price) -> JsonPrice {
        JsonPrice {
            price_per_unit: p.price_per_unit,
            pixels_per_unit: p.pixels_per_unit,
            currency: p.currency,
        }
    }
}

impl From<JsonPrice> for Price {
    fn from(p: JsonPrice) -> Price {
        Price {
            price_per_unit: p.price_per_unit,
            pixels_per_unit: p.pixels_per_unit,
            currency: p.currency,
        }
    }
}

/// An orchestrator candidate in JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JsonCandidate {
    /// Orchestrator id.
    pub id: String,
    /// Service URL.
    #[serde(default)]
    pub url: String,
    /// Quoted price.
    pub price: JsonPrice,
    /// Observed latency, ms.
    #[serde(default)]
    #[serde(alias = "latencyMs")]
    pub latency_ms: u32,
    /// Success rate, basis points.
    #[serde(default = "full_success")]
    #[serde(alias = "successBp")]
    pub success_bp: u32,
    /// Region label.
    #[serde(default)]
    pub region: String,
    /// GPU class label.
    #[serde(default)]
    #[serde(alias = "gpuClass")]
    pub gpu_class: String,
    /// Warm models.
    #[serde(default)]
    #[serde(alias = "warmModels")]
    pub warm_models: Vec<String>,
    /// Capacity.
    #[serde(default)]
    pub capacity: u32,
    /// Jobs in flight.
    #[serde(default)]
    #[serde(alias = "inFlight")]
    pub in_flight: u32,
}

fn full_success() -> u32 {
    10_000
}

impl From<JsonCandidate> for Candidate {
    fn from(c: JsonCandidate) -> Candidate {
        Candidate {
            id: c.id,
            url: c.url,
            price: c.price.into(),
            latency_ms: c.latency_ms,
            success_bp: c.success_bp,
            region: c.region,
            gpu_class: c.gpu_class,
            warm_models: c.warm_models,
            capacity: c.capacity,
            in_flight: c.in_flight,
        }
    }
}

/// Quote context in JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JsonQuoteContext {
    /// `orchestrator` or `gateway`.
    #[serde(default = "default_role")]
    pub role: String,
    /// Counterparty id.
    #[serde(default)]
    pub counterparty: String,
    /// Jobs in flight.
    #[serde(default)]
    #[serde(alias = "inFlight")]
    pub in_flight: u32,
    /// Capacity.
    #[serde(default)]
    pub capacity: u32,
}

fn default_role() -> String {
    "orchestrator".to_owned()
}

impl TryFrom<JsonQuoteContext> for QuoteContext {
    type Error = String;
    fn try_from(c: JsonQuoteContext) -> Result<QuoteContext, String> {
        let role = match c.role.as_str() {
            "orchestrator" => Role::Orchestrator,
            "gateway" => Role::Gateway,
            other => {
                return Err(format!(
                    "context.role `{other}` must be `orchestrator` or `gateway`"
                ))
            }
        };
        Ok(QuoteContext {
            role,
            counterparty: c.counterparty,
            in_flight: c.in_flight,
            capacity: c.capacity,
        })
    }
}

/// An input object of a pipeline job, base64-encoded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JsonBlob {
    /// MIME type.
    #[serde(alias = "contentType")]
    pub content_type: String,
    /// Bytes, standard base64.
    #[serde(alias = "dataBase64")]
    pub data_base64: String,
}

impl JsonBlob {
    /// Decode into a host blob.
    pub fn decode(self) -> Result<weir_runtime::media::Blob, String> {
        let data = base64::engine::general_purpose::STANDARD
            .decode(self.data_base64.as_bytes())
            .map_err(|e| format!("data_base64 is not valid base64: {e}"))?;
        Ok(weir_runtime::media::Blob {
            content_type: self.content_type,
            data: data.into(),
        })
    }

    /// Encode a host blob.
    pub fn encode(blob: &weir_runtime::media::Blob) -> JsonBlob {
        JsonBlob {
            content_type: blob.content_type.clone(),
            data_base64: base64::engine::general_purpose::STANDARD.encode(&blob.data),
        }
    }
}

/// Body of `POST /admin/components/{name}/call`; the fields used depend on the component's world.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallRequest {
    /// The job request (every world).
    pub request: JsonJobRequest,
    /// Router: the candidates to rank.
    pub candidates: Vec<JsonCandidate>,
    /// Pricing: the quote context.
    pub context: Option<JsonQuoteContext>,
    /// Pipeline: input objects.
    pub inputs: Vec<JsonBlob>,
}
