//! `weir bench …`: measurements printed as ratios against a reference measured in the same run.
//!
//! The `weir` binary's `bench` subcommand is [`BenchCmd`], run by [`run`]. Each benchmark owns
//! its module: `policy` (WASM policies against the same `weir-policy` code compiled natively),
//! `gateway` (the gateway hop and the ONNX upscaler), `jobs` (durable job submits), `trickle`
//! (the trickle relay), `transcode` and `live` (the transcoder and live latency), `pipeline` (a
//! model run through a pipeline component against the same model served directly).

mod frames;
mod gateway;
mod jobs;
mod live;
mod node;
mod pipeline;
mod policy;
mod transcode;
mod trickle;

use std::path::PathBuf;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Per-decision cost of route + price through WASM policies against the same logic compiled
    /// natively, and hot-reload latency.
    Policy {
        /// Directory with the default components (`default-router`, `default-pricing`).
        #[arg(long, default_value = "build/components")]
        components: PathBuf,
        /// Directory with the JS and Python examples (skipped when absent).
        #[arg(long, default_value = "build/examples")]
        examples: PathBuf,
        /// Decisions measured per warm configuration.
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
        /// Candidates per decision.
        #[arg(long, default_value_t = 16)]
        candidates: usize,
    },
    /// Latency and throughput added by the gateway hop against calling the orchestrator
    /// directly, and the ONNX upscaler against onnxruntime's Python package.
    Gateway(gateway::GatewayBench),
    /// A model (the ONNX upscaler) run through a pipeline component (`weir:host/models`)
    /// against the same model served directly, on the same node and images.
    Pipeline(pipeline::PipelineArgs),
    /// A pipeline on decoded frames (`live-redact` blurring a region through
    /// `weir:host/video`) against the `ffmpeg` CLI doing the same work on the same segment.
    Frames(frames::FramesArgs),
    /// Durable job submits per second and their latency on SQLite and PostgreSQL against raw
    /// `INSERT`s of the same rows.
    Jobs(jobs::JobsArgs),
    /// Trickle relay latency per hop and CPU with many live channels, against a plain TCP
    /// relay under the same load.
    Trickle(trickle::TrickleArgs),
    /// Transcoding a 1080p30 source to the 240p30+360p30 ladder with Weir's transcoder against
    /// the `ffmpeg` CLI running the same graph; then live latency from RTMP publish to listed
    /// segment through a real node.
    Transcode {
        /// Length of the generated source, seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// x264 preset, both sides.
        #[arg(long, default_value = "veryfast")]
        preset: String,
        /// Threads for the decoder and each encoder, both sides (0: the libraries choose).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Directory with the default components, for the live-latency run.
        #[arg(long, default_value = "build/components")]
        components: PathBuf,
        /// Seconds published in real time for the live-latency run (0 skips it).
        #[arg(long, default_value_t = 20)]
        live_seconds: u32,
    },
}

/// Run a benchmark, printing its report to stdout.
///
/// Call it from the `weir` binary: the live-latency half of `transcode` starts the running
/// executable as `weir node`.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Policy {
            components,
            examples,
            iterations,
            candidates,
        } => policy::run(
            &components,
            &examples,
            iterations.max(100),
            candidates.max(1),
        ),
        BenchCmd::Gateway(args) => gateway::run(args),
        BenchCmd::Jobs(args) => jobs::run(args),
        BenchCmd::Pipeline(args) => pipeline::run(args),
        BenchCmd::Frames(args) => frames::run(args),
        BenchCmd::Trickle(args) => trickle::run(args),
        BenchCmd::Transcode {
            seconds,
            preset,
            threads,
            components,
            live_seconds,
        } => {
            let report = transcode::run(&transcode::TranscodeBenchArgs {
                seconds,
                preset,
                threads,
            })?;
            println!("{report}");
            if live_seconds > 0 {
                println!("{}", live::run(&components, live_seconds, 2.0)?);
            }
            Ok(())
        }
    }
}
