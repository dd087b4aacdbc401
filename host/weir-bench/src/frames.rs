//! `weir bench frames`: a pipeline working on decoded frames (`weir:host/video`) against the
//! `ffmpeg` CLI doing the same work on the same segment, in the same run.
//!
//! The first-party `live-redact` component blurs the centre quarter of every frame of a 2 s
//! segment (decoded on the host, blurred on the host's pixels, encoded with x264 veryfast CRF 23,
//! no B-frames, audio copied). The CLI runs decode → crop + boxblur (radius 16, three passes) +
//! overlay → the same x264 settings on the same file. Both sides use one thread. A third row is
//! the host's decode and encode alone (no component, no blur), so the component's and the
//! blur's share shows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use weir_media::transcode::{
    decode_rgb, encode_rgb, DecodeRoom, RgbFrame, RgbView, TranscodeOptions, Transcoder,
};
use weir_runtime::media::Segment;
use weir_runtime::{Manifest, NoLedger, Runtime, RuntimeConfig, RuntimeMetrics, StreamInfo};

use crate::transcode::{ffmpeg, path_str};

/// Frame rate and length of the generated segments.
const FPS: u32 = 30;
const SECONDS: u32 = 2;

/// Arguments of `weir bench frames`.
#[derive(Debug, Clone, clap::Args)]
pub struct FramesArgs {
    /// Directory with the default components (`live-redact`).
    #[arg(long, default_value = "build/components")]
    components: PathBuf,
    /// Frame sizes, `WxH` separated by commas.
    #[arg(long, default_value = "640x360,1280x720")]
    sizes: String,
    /// Segments measured on each path (after one warm-up each).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Run the benchmark and print its report.
pub fn run(args: FramesArgs) -> anyhow::Result<()> {
    ffmpeg(&["-version"]).context("the ffmpeg CLI is needed for the frames benchmark")?;
    let rounds = args.rounds.clamp(1, 100);
    let dir = tempfile::Builder::new()
        .prefix("weir-bench-frames-")
        .tempdir()?;
    let metrics = RuntimeMetrics::new(&prometheus::Registry::new())?;
    let runtime = Runtime::new(RuntimeConfig::default(), Arc::new(NoLedger), metrics)?;
    let transcoder = Transcoder::new(TranscodeOptions {
        threads: 1,
        ..Default::default()
    })?;
    runtime.provide_media(Arc::new(weir_orchestrator::transcode::GuestMedia::new(
        Arc::new(transcoder),
    )));
    let manifest = Manifest::load(&args.components.join("live-redact.toml"))
        .context("live-redact (build it with `make guests`)")?;
    let component = runtime.load(manifest, &args.components)?;
    println!(
        "weir bench frames: live-redact (blur the centre quarter, radius 16) on {SECONDS} s segments of testsrc2 at {FPS} fps + AAC; x264 veryfast CRF 23, 1 thread each side; p50 of {rounds} segments"
    );
    for size in args.sizes.split(',') {
        let (w, h) = parse_size(size)?;
        let source = make_segment(dir.path(), w, h)?;
        let data = std::fs::read(&source)?;
        let segment = Segment {
            seq: 1,
            duration_ms: SECONDS * 1000,
            content_type: "video/mp2t".to_owned(),
            data: data.clone().into(),
        };
        let mut stream = component.start_stream(StreamInfo {
            id: format!("bench-{size}"),
            capability: "live-redact".to_owned(),
            params: Vec::new(),
        })?;
        let guest = p50(rounds, || {
            let out = stream.on_segment(segment.clone())?;
            if out.len() != 1 || out[0].data.is_empty() {
                bail!("live-redact answered {} segments", out.len());
            }
            Ok(())
        })?;
        stream.stop()?;
        let native = p50(rounds, || host_codec(&data))?;
        let out = dir.path().join("cli.ts");
        let cli = p50(rounds, || cli_redact(&source, &out, w, h))?;
        let frames = f64::from(FPS * SECONDS);
        println!(
            "  {w}x{h}: component {:>7.1} ms/segment ({:>5.1} fps, real-time x{:.2}) | host decode+encode alone {:>7.1} ms | ffmpeg CLI {:>7.1} ms ({:>5.1} fps) | component / CLI {:.2}x",
            ms(guest),
            frames / guest.as_secs_f64(),
            f64::from(SECONDS) / guest.as_secs_f64(),
            ms(native),
            ms(cli),
            frames / cli.as_secs_f64(),
            guest.as_secs_f64() / cli.as_secs_f64(),
        );
    }
    Ok(())
}

/// The host's decode and encode of `data` with nothing in between.
fn host_codec(data: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let room = DecodeRoom {
        frames: 1024,
        bytes: 1 << 30,
    };
    let frames = decode_rgb(data, room, deadline)?;
    let views: Vec<RgbView<'_>> = frames.iter().map(RgbFrame::view).collect();
    encode_rgb(data, &views, 0, deadline)?;
    Ok(())
}

/// The CLI doing live-redact's default work on `source`.
fn cli_redact(source: &Path, out: &Path, w: u32, h: u32) -> anyhow::Result<()> {
    let graph = format!(
        "[0:v]split[base][part];[part]crop={}:{}:{}:{},boxblur=16:3[blurred];[base][blurred]overlay={}:{}",
        w / 2,
        h / 2,
        w / 4,
        h / 4,
        w / 4,
        h / 4
    );
    ffmpeg(&[
        "-threads",
        "1",
        "-i",
        path_str(source)?,
        "-filter_threads",
        "1",
        "-filter_complex",
        &graph,
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "23",
        "-bf",
        "0",
        "-threads",
        "1",
        "-c:a",
        "copy",
        "-f",
        "mpegts",
        path_str(out)?,
    ])
}

fn make_segment(dir: &Path, w: u32, h: u32) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("src-{w}x{h}.ts"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={w}x{h}:rate={FPS}"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:sample_rate=48000",
        "-t",
        &SECONDS.to_string(),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-f",
        "mpegts",
        path_str(&path)?,
    ])
    .with_context(|| format!("making the {w}x{h} segment"))?;
    Ok(path)
}

fn parse_size(size: &str) -> anyhow::Result<(u32, u32)> {
    let parsed = size
        .trim()
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
    match parsed {
        Some((w, h))
            if (16..=3840).contains(&w) && (16..=2160).contains(&h) && w % 2 == 0 && h % 2 == 0 =>
        {
            Ok((w, h))
        }
        _ => bail!("--sizes: {size:?} is not an even WxH within 16x16..3840x2160"),
    }
}

/// The median of `rounds` timed runs of `f`, after one untimed.
fn p50(rounds: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    f()?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
