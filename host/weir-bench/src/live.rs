//! `weir bench transcode` (second half): end-to-end live latency. A real `weir node` (this
//! binary) on loopback, an `ffmpeg -re` RTMP publisher, and a poller reading the playlists:
//! for each segment, the time from when its last frame was published to when it is listed,
//! for the source and for each rendition of the ladder.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Length of a low-latency HLS part (the node's default `ll_part_ms`).
const PART_SECS: f64 = 0.5;

/// What was measured, per rendition.
struct Listed {
    name: String,
    /// Time from each segment's last frame being published to its listing, seconds.
    delays: Vec<f64>,
    /// The same from its first frame (what the target is set on), seconds.
    from_start: Vec<f64>,
    /// For each low-latency part (0.5 s) of those segments, from its first frame to its being
    /// listed (parts are listed with their segment), seconds.
    parts: Vec<f64>,
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(((s.len() as f64 * q) as usize).min(s.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// `EXTINF` values of a media playlist, in order, and whether it has ended.
fn extinfs(text: &str) -> (Vec<f64>, bool) {
    let v = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|v| v.trim_end_matches(',').parse::<f64>().ok())
        .collect();
    (v, text.contains("#EXT-X-ENDLIST"))
}

/// Publish `seconds` of 720p30 in real time and measure when each segment is listed.
pub fn run(components: &Path, seconds: u32, segment_secs: f64) -> anyhow::Result<String> {
    let data = tempfile::tempdir()?;
    crate::node::place_defaults(components, &data.path().join("components"))?;
    let config = data.path().join("weir.toml");
    std::fs::write(
        &config,
        format!("[gateway]\nopen = true\nrtmp_addr = \"127.0.0.1:0\"\nsegment_secs = {segment_secs}\nhls_window = 100\n"),
    )?;
    let mut node = crate::node::spawn(&config, data.path(), Stdio::null())?;
    let result = measure(&mut node, seconds, segment_secs);
    let _ = node.kill();
    let _ = node.wait();
    result
}

/// Publish to the started `node` and measure; the report as text.
fn measure(
    node: &mut std::process::Child,
    seconds: u32,
    segment_secs: f64,
) -> anyhow::Result<String> {
    let [http, rtmp]: [String; 2] = crate::node::addresses(node, &["http", "rtmp"])?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two addresses"))?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    crate::node::wait_until(&client, &http, "discovering the node's orchestrator", |v| {
        v["orchestrators"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| !o["info"].is_null()))
    })?;

    let started = Instant::now();
    let mut publisher = publish(&rtmp, seconds, segment_secs)?;
    let names = ["source", "P240p30fps16x9", "P360p30fps16x9"];
    let deadline = Duration::from_secs(u64::from(seconds) + 60);
    let (seen, durations) = poll(&client, &http, &names, started, deadline);
    let status = publisher.wait()?;
    if !status.success() {
        bail!("the ffmpeg publisher failed: {status}");
    }
    let listed = listings(&names, &seen, &durations, segment_secs);
    Ok(report(&listed, seconds, segment_secs))
}

/// Start `ffmpeg -re` publishing `seconds` of 720p30 (a keyframe every segment) to `rtmp`.
fn publish(rtmp: &str, seconds: u32, segment_secs: f64) -> anyhow::Result<std::process::Child> {
    let gop = (30.0 * segment_secs).round() as u32;
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
        ])
        .args([
            "-tune",
            "zerolatency",
            "-g",
            &gop.to_string(),
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-f", "flv"])
        .arg(format!("{rtmp}/live/bench"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting the ffmpeg publisher")
}

/// Poll each rendition's playlist every 10 ms until all have ended or `deadline` (from
/// `started`) has passed: when each segment was first seen listed, and the `EXTINF`s.
fn poll(
    client: &reqwest::blocking::Client,
    http: &str,
    names: &[&str],
    started: Instant,
    deadline: Duration,
) -> (Vec<Vec<Duration>>, Vec<Vec<f64>>) {
    // When each segment was first seen listed, per rendition.
    let mut seen: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut durations: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    loop {
        let mut all_ended = true;
        for (i, name) in names.iter().enumerate() {
            let Ok(r) = client
                .get(format!("{http}/stream/bench/{name}.m3u8"))
                .send()
            else {
                all_ended = false;
                continue;
            };
            let (list, ended) = extinfs(&r.text().unwrap_or_default());
            while seen[i].len() < list.len() {
                seen[i].push(started.elapsed());
            }
            durations[i] = list;
            all_ended &= ended;
        }
        if all_ended || started.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (seen, durations)
}

/// Per rendition, the delays measured from when each segment was `seen` and its `durations`.
fn listings(
    names: &[&str],
    seen: &[Vec<Duration>],
    durations: &[Vec<f64>],
    segment_secs: f64,
) -> Vec<Listed> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut end = 0.0;
            let pairs: Vec<(f64, f64)> = durations[i]
                .iter()
                .zip(&seen[i])
                .map(|(d, at)| {
                    end += d;
                    (at.as_secs_f64() - end, at.as_secs_f64() - end + d)
                })
                .skip(1)
                // The last segment is cut when the publisher disconnects, not by a keyframe.
                .take(durations[i].len().saturating_sub(2))
                .collect();
            let parts = pairs
                .iter()
                .flat_map(|&(_, from_start)| {
                    // Parts start every PART_SECS from the segment's first frame.
                    let n = (segment_secs / PART_SECS).ceil() as usize;
                    (0..n).map(move |i| from_start - i as f64 * PART_SECS)
                })
                .collect();
            Listed {
                name: (*name).to_owned(),
                delays: pairs.iter().map(|p| p.0).collect(),
                from_start: pairs.iter().map(|p| p.1).collect(),
                parts,
            }
        })
        .collect()
}

/// The printed report.
fn report(listed: &[Listed], seconds: u32, segment_secs: f64) -> String {
    let mut out = format!(
        "live latency: {seconds} s of 1280x720p30 published with `ffmpeg -re` over RTMP to a \
         `weir node` (gateway + local orchestrator, 240p30+360p30 ladder, {segment_secs} s segments);\n\
         time until a segment is listed (polled every 10 ms), from its last frame being \
         published and from its first (target: <= segment + 0.5 s from the first):\n"
    );
    for l in listed {
        if l.delays.is_empty() {
            out.push_str(&format!("  {:<16} no segments measured\n", l.name));
            continue;
        }
        out.push_str(&format!(
            "  {:<16} segments {:>3}  after last frame p50 {:>5.0} ms max {:>5.0} ms  \
             after first frame p50 {:>5.0} ms max {:>5.0} ms\n",
            l.name,
            l.delays.len(),
            percentile(&l.delays, 0.5) * 1000.0,
            percentile(&l.delays, 1.0) * 1000.0,
            percentile(&l.from_start, 0.5) * 1000.0,
            percentile(&l.from_start, 1.0) * 1000.0,
        ));
        out.push_str(&format!(
            "  {:<16} LL-HLS parts {:>3}  after their first frame p50 {:>5.0} ms max {:>5.0} ms (target <= 1000 ms)\n",
            "",
            l.parts.len(),
            percentile(&l.parts, 0.5) * 1000.0,
            percentile(&l.parts, 1.0) * 1000.0,
        ));
    }
    out
}
