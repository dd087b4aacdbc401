//! pipeline-chain-rs: a batch pipeline (world `weir:host/pipeline`) that runs a job's input
//! through a chain of the node's models (`weir:host/models.invoke`), each step on the previous
//! step's output, then stores the result in its namespace of the node's object store
//! (`weir:host/storage.put`) and answers it, with the stored object's link as the param
//! `stored` and the number of steps as `steps`.
//!
//! Config: `steps` (`capability/model-id`, comma separated, 1..=8; each granted in the
//! manifest's `[permissions] models`), `store` (`true` or `false`). A step that answers no
//! object, a bad setting or a missing input is an error naming the cause. Live streams are not
//! supported.

use weir_sdk::pipeline::{
    Blob, Error, Guest, Job, JobOutput, Param, ParamValue, Segment, StreamInfo,
};

/// Most steps in a chain.
pub const MAX_STEPS: usize = 8;

/// The `steps` setting as `(capability, model-id)` pairs, or why it is not one.
pub fn parse_steps(setting: &str) -> Result<Vec<(&str, &str)>, String> {
    let steps: Vec<(&str, &str)> = setting
        .split(',')
        .map(str::trim)
        .map(|s| {
            s.split_once('/')
                .filter(|(c, m)| !c.is_empty() && !m.is_empty())
                .ok_or_else(|| format!("step `{s}` must be `capability/model-id`"))
        })
        .collect::<Result<_, _>>()?;
    if steps.len() > MAX_STEPS {
        return Err(format!("{} steps; at most {MAX_STEPS}", steps.len()));
    }
    Ok(steps)
}

/// The file extension objects of `content_type` are stored under.
pub fn extension(content_type: &str) -> &'static str {
    match content_type.split(';').next().unwrap_or("").trim() {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "video/mp4" => "mp4",
        "audio/wav" | "audio/x-wav" => "wav",
        _ => "bin",
    }
}

/// The key a job's result is stored under: `outputs/{id}.{ext}`, the id kept to the
/// characters object keys allow.
pub fn output_key(job_id: &str, content_type: &str) -> String {
    let id: String = job_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(100)
        .collect();
    let id = if id.is_empty() { "job".to_owned() } else { id };
    format!("outputs/{id}.{}", extension(content_type))
}

fn setting(key: &str, default: &str) -> String {
    weir_sdk::config::get(key).unwrap_or_else(|| default.to_owned())
}

// Natively (in `cargo test`) nothing exports it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Chain;

impl Guest for Chain {
    fn run(job: Job) -> Result<JobOutput, Error> {
        let steps_setting = setting("steps", "");
        let steps = parse_steps(&steps_setting).map_err(Error::Config)?;
        let store = match setting("store", "true").as_str() {
            "true" => true,
            "false" => false,
            other => {
                return Err(Error::Config(format!(
                    "store `{other}` must be true or false"
                )))
            }
        };
        // The client's prompt goes to every step; other fields belong to this pipeline.
        let prompt: Vec<Param> = job
            .request
            .params
            .iter()
            .filter(|p| p.name == "prompt")
            .cloned()
            .collect();
        let mut current: Blob =
            job.inputs.into_iter().next().ok_or_else(|| {
                Error::InvalidRequest("no input object to run the chain on".into())
            })?;
        for (i, (capability, model)) in steps.iter().enumerate() {
            let out = weir_sdk::models::invoke(capability, model, &prompt, &[&current])?;
            current = out.blobs.into_iter().next().ok_or_else(|| {
                Error::Internal(format!(
                    "step {} ({capability}/{model}) answered no object",
                    i + 1
                ))
            })?;
        }
        let mut params = vec![Param {
            name: "steps".into(),
            value: ParamValue::Integer(steps.len() as i64),
        }];
        if store {
            let key = output_key(&job.request.id, &current.content_type());
            let link = weir_sdk::storage::put(&key, &current)?;
            params.push(Param {
                name: "stored".into(),
                value: ParamValue::Text(link),
            });
        }
        Ok(JobOutput {
            blobs: vec![current],
            params,
        })
    }

    fn on_start(_info: StreamInfo) -> Result<(), Error> {
        Err(Error::Unsupported(
            "pipeline-chain-rs runs batch jobs only; live streams are not supported".into(),
        ))
    }

    fn on_segment(_segment: Segment) -> Result<Vec<Segment>, Error> {
        Err(Error::Unsupported(
            "pipeline-chain-rs runs batch jobs only".into(),
        ))
    }

    fn on_control(_message: String) -> Result<(), Error> {
        Ok(())
    }

    fn on_stop() {}
}

// Exported only in the component: `cargo test` builds natively, without the exports.
#[cfg(target_arch = "wasm32")]
weir_sdk::pipeline::export_pipeline!(Chain);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_read_and_bad_ones_named() {
        assert_eq!(
            parse_steps("upscale/a/b, upscale/c"),
            Ok(vec![("upscale", "a/b"), ("upscale", "c")])
        );
        assert!(parse_steps("upscale").is_err_and(|e| e.contains("`upscale`")));
        assert!(parse_steps("").is_err());
        let nine = vec!["upscale/m"; 9].join(",");
        assert!(parse_steps(&nine).is_err_and(|e| e.contains("at most 8")));
    }

    #[test]
    fn results_are_stored_under_a_clean_key() {
        assert_eq!(output_key("job-1", "image/png"), "outputs/job-1.png");
        assert_eq!(output_key("../x y", "image/jpeg; q=1"), "outputs/xy.jpg");
        assert_eq!(output_key("", "text/plain"), "outputs/job.bin");
    }
}
