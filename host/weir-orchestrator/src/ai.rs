//! AI jobs at the AI API's paths (`POST /upscale`, ...): the configured models with their
//! runners and capacity, and the handler that runs one paid job on them.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use weir_models::capacity::Capacity;
use weir_models::{ModelRunner, OutputMedia, RunnerError, RunnerInput, RunnerOutput};
use weir_protocol::ai::{AudioResponse, ImageResponse, Media, MediaFacts};
use weir_protocol::body::{parse_request, ParsedRequest};
use weir_protocol::info::{BALANCE_HEADER, CHARGE_HEADER, MODEL_HEADER};
use weir_protocol::{AiHttpError, Capability};
use weir_runtime::{Price, Registry};

use crate::config::OrchestratorConfig;
use crate::handler::{err, AiBody};
use crate::paid::{Order, PaidJob, Payer, Quote};
use crate::runners;
use crate::Orchestrator;

/// One configured model: its runner, capacity and warm flag.
pub(crate) struct ModelSlot {
    pub(crate) capability: Capability,
    pub(crate) model_id: String,
    pub(crate) kind: &'static str,
    pub(crate) runner: Arc<dyn ModelRunner>,
    pub(crate) capacity: Arc<Capacity>,
    pub(crate) warm: AtomicBool,
    timeout: std::time::Duration,
}

impl ModelSlot {
    /// How long one job may run.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.timeout
    }
}

/// The runners of every model `config` lists, or why one cannot be had.
pub(crate) fn build_models(
    config: &OrchestratorConfig,
    registry: &Arc<Registry>,
) -> Result<Vec<ModelSlot>, crate::OrchestratorError> {
    use crate::OrchestratorError::Config;
    let mut models: Vec<ModelSlot> = Vec::new();
    for entry in &config.models {
        let capability = Capability::from_id(&entry.pipeline).ok_or_else(|| {
            Config(format!(
                "model {}: unknown pipeline `{}` (known: {})",
                entry.model_id,
                entry.pipeline,
                Capability::ALL.map(|c| c.id()).join(", ")
            ))
        })?;
        if entry.capacity == 0 {
            return Err(Config(format!(
                "model {}: capacity must be at least 1",
                entry.model_id
            )));
        }
        if models
            .iter()
            .any(|m| m.capability == capability && m.model_id == entry.model_id)
        {
            return Err(Config(format!(
                "model {} is configured twice for {capability}",
                entry.model_id
            )));
        }
        let runner = runners::build(entry, registry)?;
        models.push(ModelSlot {
            capability,
            model_id: entry.model_id.clone(),
            kind: entry.runner.kind(),
            runner,
            capacity: Capacity::new(entry.capacity),
            warm: AtomicBool::new(entry.warm),
            timeout: entry.timeout(),
        });
    }
    Ok(models)
}

/// Counters and timings of AI jobs.
pub(crate) struct Metrics {
    jobs: IntCounterVec,
    seconds: HistogramVec,
}

impl Metrics {
    /// The metrics, registered in `registry`.
    pub(crate) fn register(registry: &prometheus::Registry) -> Result<Metrics, prometheus::Error> {
        let jobs = IntCounterVec::new(
            Opts::new("weir_orchestrator_jobs_total", "AI jobs by outcome"),
            &["capability", "model", "outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "weir_orchestrator_job_seconds",
                "Time spent running AI jobs",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 18)?),
            &["capability"],
        )?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Metrics { jobs, seconds })
    }
}

/// What one job produces, for the pricing component.
fn output_size(facts: MediaFacts) -> weir_runtime::OutputSize {
    let (width, height) = facts.image.unwrap_or((0, 0));
    weir_runtime::OutputSize::new(width, height, 0, 1)
}

impl Orchestrator {
    /// What the pricing component charges `sender` for `units` of model `m`.
    pub(crate) async fn quote_model(
        &self,
        m: &ModelSlot,
        sender: &str,
        facts: MediaFacts,
        units: u64,
    ) -> Result<Price, String> {
        self.quote_for(
            m.capability.id(),
            &m.model_id,
            &m.capacity,
            sender,
            output_size(facts),
            units,
        )
        .await
    }

    /// The model serving `capability` (`model` when named, the first configured otherwise).
    fn model_slot(
        &self,
        capability: Capability,
        model: Option<&str>,
    ) -> Result<&ModelSlot, AiHttpError> {
        let mut offered = self
            .models()
            .iter()
            .filter(|m| m.capability == capability)
            .peekable();
        if offered.peek().is_none() {
            return Err(err(
                404,
                format!("this orchestrator does not serve {capability}"),
            ));
        }
        match model {
            None => offered.next().ok_or_else(|| {
                err(
                    404,
                    format!("this orchestrator does not serve {capability}"),
                )
            }),
            Some(model) => {
                let names: Vec<&str> = offered.clone().map(|m| m.model_id.as_str()).collect();
                offered.find(|m| m.model_id == model).ok_or_else(|| {
                    err(
                        404,
                        format!(
                            "model `{model}` is not served for {capability} here (served: {})",
                            names.join(", ")
                        ),
                    )
                })
            }
        }
    }

    async fn run_job(
        &self,
        capability: Capability,
        headers: &HeaderMap,
        body: axum::body::Bytes,
    ) -> Result<(RunnerOutput, u64, u64), AiHttpError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let max_file_bytes = self.config().max_file_bytes;
        let parsed = parse_request(capability, content_type, body, max_file_bytes).await?;

        // The payment is checked now and applied together with the job's reservation; a job
        // that ends without a result takes both back, so both sides keep the same balance.
        let payment = self.payment(headers)?;
        let header_model = headers.get(MODEL_HEADER).and_then(|v| v.to_str().ok());
        let model = header_model.or(parsed.model_named.then(|| parsed.request.model_id()));
        let m = self.model_slot(capability, model)?;
        let payer = Payer::for_account(payment, capability.id(), &m.model_id, "job")?;
        self.charge_and_run(m, payer, parsed).await
    }

    async fn charge_and_run(
        &self,
        m: &ModelSlot,
        payer: Payer,
        parsed: ParsedRequest,
    ) -> Result<(RunnerOutput, u64, u64), AiHttpError> {
        let capability = m.capability;
        let units = parsed
            .request
            .units(parsed.facts)
            .map_err(|e| err(400, e))?;
        let what = format!("{capability}/{}", m.model_id);
        let order = Order {
            what: &what,
            model: &m.model_id,
            units,
            id_prefix: "job",
        };
        let quote = Quote::Component {
            capability: capability.id(),
            model: &m.model_id,
            capacity: &m.capacity,
            output: output_size(parsed.facts),
        };
        let take_slot = || {
            m.capacity.try_acquire().map_err(|full| {
                err(
                    503,
                    format!(
                        "insufficient capacity: {capability}/{} runs {} of {} jobs",
                        m.model_id, full.in_flight, full.limit
                    ),
                )
            })
        };
        let mut job = PaidJob::open(self, payer, order, quote, take_slot).await?;
        let input = RunnerInput {
            request: parsed.request,
            files: parsed.files,
            sender: job.payer.payment.sender.clone(),
            units,
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(m.timeout, m.runner.run(input)).await {
            Ok(r) => r,
            Err(_) => Err(RunnerError::Timeout(m.timeout)),
        };
        job.free_slot();
        self.finish_job(m, job, result, started).await
    }

    /// Record a job's outcome, then settle it (charging what was reserved) or release it.
    async fn finish_job(
        &self,
        m: &ModelSlot,
        job: PaidJob,
        result: Result<RunnerOutput, RunnerError>,
        started: Instant,
    ) -> Result<(RunnerOutput, u64, u64), AiHttpError> {
        let capability = m.capability;
        let metrics = self.ai_metrics();
        metrics
            .seconds
            .with_label_values(&[capability.id()])
            .observe(started.elapsed().as_secs_f64());
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                tracing::warn!(%capability, model = %m.model_id, job = %job.id, error = %e, "job failed; reservation released");
                metrics
                    .jobs
                    .with_label_values(&[capability.id(), &m.model_id, "failed"])
                    .inc();
                job.release().await;
                return Err(runner_error(e));
            }
        };
        let (job_id, units, charge) = (job.id.clone(), job.units, job.reserved);
        let balance = job.settle(charge).await?;
        metrics
            .jobs
            .with_label_values(&[capability.id(), &m.model_id, "ok"])
            .inc();
        tracing::info!(%capability, model = %m.model_id, job = %job_id, units, charge, ms = started.elapsed().as_millis() as u64, "job done");
        Ok((output, balance, charge))
    }
}

fn runner_error(e: RunnerError) -> AiHttpError {
    let status = match &e {
        RunnerError::Unavailable(_) => 503,
        RunnerError::Timeout(_) => 504,
        RunnerError::Rejected { status, .. } => *status,
        RunnerError::Failed { .. } => 500,
        RunnerError::BadResponse(_) => 502,
        RunnerError::Unsupported(_) => 501,
    };
    err(status, e.to_string())
}

fn data_url(media: &OutputMedia) -> String {
    format!(
        "data:{};base64,{}",
        media.content_type,
        base64::engine::general_purpose::STANDARD.encode(&media.data)
    )
}

fn body_of(output: RunnerOutput) -> serde_json::Value {
    let to_value = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
    match output {
        RunnerOutput::Media(items) => to_value(serde_json::to_value(ImageResponse {
            images: items
                .iter()
                .map(|m| Media {
                    url: data_url(m),
                    seed: m.seed,
                    nsfw: m.nsfw,
                })
                .collect(),
        })),
        RunnerOutput::Speech(m) => to_value(serde_json::to_value(AudioResponse {
            audio: Media {
                url: data_url(&m),
                seed: m.seed,
                nsfw: m.nsfw,
            },
        })),
        RunnerOutput::Transcript(t) => to_value(serde_json::to_value(t)),
        RunnerOutput::Caption(c) => to_value(serde_json::to_value(c)),
        RunnerOutput::Masks(m) => to_value(serde_json::to_value(m)),
        RunnerOutput::Chat(c) => to_value(serde_json::to_value(c)),
    }
}

/// `POST /{capability}`: one AI job.
pub(crate) async fn job(
    State(o): State<Orchestrator>,
    UrlPath(capability): UrlPath<String>,
    headers: HeaderMap,
    AiBody(body): AiBody,
) -> Response {
    let Some(capability) = Capability::from_id(&capability) else {
        return err(404, format!("no such capability `{capability}`")).into_response();
    };
    match o.run_job(capability, &headers, body).await {
        Ok((output, balance, charge)) => {
            let mut response = Json(body_of(output)).into_response();
            let h = response.headers_mut();
            h.insert(BALANCE_HEADER, HeaderValue::from(balance));
            h.insert(CHARGE_HEADER, HeaderValue::from(charge));
            response
        }
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(%capability, error = %e, "job refused");
            }
            e.into_response()
        }
    }
}
