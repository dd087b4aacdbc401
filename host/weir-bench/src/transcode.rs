//! `weir bench transcode`: Weir's segment transcoder against the `ffmpeg` CLI doing the same
//! decode → scale → x264 work on the same input, in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use weir_media::profile::{default_ladder, Profile};
use weir_media::transcode::{gpu_available, Accel, TranscodeOptions, Transcoder};

/// Source frame rate of the generated clip.
const SOURCE_FPS: u32 = 30;
/// Segment length the source is cut into (seconds), as an ingest would.
const SEGMENT_SECONDS: u32 = 2;
/// Fraction of a machine's capacity planned for streams (Livepeer sizes sessions where the
/// transcode-time / media-time ratio is at most 0.8).
const HEADROOM: f64 = 0.8;

/// Options for the transcode benchmark.
#[derive(Debug, Clone)]
pub struct TranscodeBenchArgs {
    /// Length of the generated 1080p30 source, in seconds.
    pub seconds: u32,
    /// x264 preset for both sides.
    pub preset: String,
    /// Threads for decoding and for each encoder on both sides (0 = let the libraries choose).
    pub threads: usize,
}

/// Runs the benchmark and returns the report.
pub fn run(args: &TranscodeBenchArgs) -> anyhow::Result<String> {
    if !(SEGMENT_SECONDS..=600).contains(&args.seconds) {
        bail!("--seconds must be between {SEGMENT_SECONDS} and 600");
    }
    ffmpeg(&["-version"]).context("the ffmpeg CLI is needed for the transcode benchmark")?;
    let dir = tempfile::Builder::new()
        .prefix("weir-bench-tc-")
        .tempdir()?;
    let src = make_source(dir.path(), args.seconds)?;
    let segments = read_segments(dir.path())?;
    let source_frames = f64::from(args.seconds * SOURCE_FPS);
    let ladder = default_ladder();

    let cpu = time_weir(&segments, &ladder, args, Accel::Cpu)?;
    let cli_secs = time_ffmpeg_cli(&src, dir.path(), &ladder, args)?;

    let weir_fps = source_frames / cpu.seconds;
    let cli_fps = source_frames / cli_secs;
    let rtf = weir_fps / f64::from(SOURCE_FPS);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores_per_stream = if args.threads == 0 {
        cores
    } else {
        args.threads.min(cores)
    };
    let streams = (rtf * cores as f64 / cores_per_stream as f64 * HEADROOM).floor();
    let names: Vec<&str> = ladder.iter().map(|p| p.name.as_str()).collect();

    let mut r = String::new();
    r.push_str(&format!(
        "transcode benchmark: 1080p{SOURCE_FPS} testsrc2, {} s in {} segments of {SEGMENT_SECONDS} s -> {}\n",
        args.seconds,
        segments.len(),
        names.join(" + ")
    ));
    r.push_str(&format!(
        "  x264 preset {}, threads {}, {} CPU cores\n",
        args.preset,
        if args.threads == 0 {
            "auto".to_string()
        } else {
            args.threads.to_string()
        },
        cores
    ));
    r.push_str(&format!(
        "  weir (CPU decode, {}):  {:>7.1} fps  ({:.2} s, {} output frames)\n",
        cpu.decoder, weir_fps, cpu.seconds, cpu.frames
    ));
    r.push_str(&format!(
        "  ffmpeg CLI, same graph: {cli_fps:>7.1} fps  ({cli_secs:.2} s, whole file in one process)\n"
    ));
    r.push_str(&format!(
        "  ratio weir/ffmpeg:      {:.2}\n",
        weir_fps / cli_fps
    ));
    r.push_str(&format!(
        "  real-time factor:       {rtf:.2}x (source frames per second / {SOURCE_FPS})\n"
    ));
    r.push_str(&format!(
        "  sustainable real-time streams on this machine: {streams} \
         (real-time factor x {cores} cores / {cores_per_stream} per stream x {HEADROOM} headroom)\n"
    ));
    r.push_str(&gpu_row(&segments, &ladder, args, source_frames, weir_fps));
    Ok(r)
}

/// Make the 1080p30 source `src.ts` of `seconds` in `dir` and cut it into `seg%04d.ts`
/// segments of [`SEGMENT_SECONDS`], as an ingest would.
fn make_source(dir: &Path, seconds: u32) -> anyhow::Result<PathBuf> {
    let src = dir.join("src.ts");
    let secs = seconds.to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=1920x1080:rate={SOURCE_FPS}"),
        "-t",
        &secs,
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "60",
        "-keyint_min",
        "60",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        path_str(&src)?,
    ])
    .context("making the 1080p30 source")?;
    ffmpeg(&[
        "-i",
        path_str(&src)?,
        "-c",
        "copy",
        "-f",
        "segment",
        "-segment_time",
        &SEGMENT_SECONDS.to_string(),
        "-segment_format",
        "mpegts",
        path_str(&dir.join("seg%04d.ts"))?,
    ])
    .context("cutting the source into segments")?;
    Ok(src)
}

/// The GPU-decode row: frames per second and the ratio to the CPU path's `weir_fps`, or why it
/// is missing.
fn gpu_row(
    segments: &[Vec<u8>],
    ladder: &[Profile],
    args: &TranscodeBenchArgs,
    source_frames: f64,
    weir_fps: f64,
) -> String {
    if !gpu_available() {
        return "  GPU decode path: skipped (no CUDA driver or device)\n".to_string();
    }
    match time_weir(segments, ladder, args, Accel::Cuda) {
        Ok(gpu) => {
            let gpu_fps = source_frames / gpu.seconds;
            format!(
                "  weir (GPU decode, {}): {:>7.1} fps, ratio GPU/CPU path {:.2}\n",
                gpu.decoder,
                gpu_fps,
                gpu_fps / weir_fps
            )
        }
        Err(e) => format!("  GPU decode path failed: {e:#}\n"),
    }
}

struct WeirRun {
    seconds: f64,
    frames: u64,
    decoder: String,
}

fn time_weir(
    segments: &[Vec<u8>],
    ladder: &[Profile],
    args: &TranscodeBenchArgs,
    accel: Accel,
) -> anyhow::Result<WeirRun> {
    let t = Transcoder::new(TranscodeOptions {
        threads: args.threads,
        preset: args.preset.clone(),
        accel,
    })?;
    let mut frames = 0;
    let mut decoder = String::from("none");
    let start = Instant::now();
    for seg in segments {
        let out = t.transcode_detailed(seg, ladder)?;
        frames += out.renditions.iter().map(|r| r.frames).sum::<u64>();
        if let Some(d) = out.decoder {
            decoder = d;
        }
    }
    Ok(WeirRun {
        seconds: start.elapsed().as_secs_f64().max(1e-9),
        frames,
        decoder,
    })
}

/// Times the `ffmpeg` CLI decoding `src` once and encoding every profile (scale with the same
/// bilinear filter, fps conversion, x264 with the same preset, threads, bitrate and GOP).
fn time_ffmpeg_cli(
    src: &Path,
    dir: &Path,
    ladder: &[Profile],
    args: &TranscodeBenchArgs,
) -> anyhow::Result<f64> {
    let threads = args.threads.to_string();
    let mut graph = format!("[0:v]split={}", ladder.len());
    for i in 0..ladder.len() {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, p) in ladder.iter().enumerate() {
        graph.push_str(&format!(
            ";[s{i}]scale={}:{}:flags=bilinear,fps={}/{}[o{i}]",
            p.width, p.height, p.fps, p.fps_den
        ));
    }
    let mut cmd: Vec<String> = vec!["-threads".into(), threads.clone()];
    cmd.extend(["-i".into(), path_str(src)?.to_string()]);
    if args.threads > 0 {
        cmd.extend(["-filter_complex_threads".into(), threads.clone()]);
    }
    cmd.extend(["-filter_complex".into(), graph]);
    for (i, p) in ladder.iter().enumerate() {
        let gop = p.gop_frames().to_string();
        cmd.extend(
            [
                "-map",
                &format!("[o{i}]"),
                "-c:v",
                "libx264",
                "-preset",
                &args.preset,
                "-threads",
                &threads,
                "-b:v",
                &p.bitrate.to_string(),
                "-g",
                &gop,
                "-keyint_min",
                &gop,
                "-sc_threshold",
                "0",
                "-f",
                "mpegts",
                path_str(&dir.join(format!("cli{i}.ts")))?,
            ]
            .map(String::from),
        );
    }
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let start = Instant::now();
    ffmpeg(&refs).context("the ffmpeg CLI transcode")?;
    Ok(start.elapsed().as_secs_f64().max(1e-9))
}

fn read_segments(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg") && n.ends_with(".ts"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("the ffmpeg CLI produced no segments");
    }
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

pub(crate) fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 temporary path {}", p.display()))
}

pub(crate) fn ffmpeg(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .context("running ffmpeg")?;
    if !out.status.success() {
        bail!(
            "ffmpeg failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
