//! Packaging demuxed tracks as an fMP4 init segment and parts.

use std::time::Duration;

use bytes::Bytes;

use super::boxes::{fragment, init_segment};
use super::demux::{demux, set_durations, AudioTrack, Sample, VideoTrack};
use super::{
    invalid, Fmp4Part, Fmp4Segment, LlHlsError, AAC_FRAME_SAMPLES, AUDIO_TRACK_ID, VIDEO_TIMESCALE,
    VIDEO_TRACK_ID,
};

/// Repackages one MPEG-TS segment (H.264 and/or ADTS AAC) as fMP4 split into parts of about
/// `part_target`, keeping the TS timestamps. Blocking.
///
/// Parts never split a frame and are at most `part_target` long unless one frame alone is
/// longer; a new part starts at the first frame that would make the current one longer. With
/// video, parts are cut on video frames and each audio frame goes into the part its decode time
/// falls in. The segment should start with an IDR frame (the first part is marked independent
/// only if it does).
pub fn ts_to_fmp4(ts: &[u8], part_target: Duration) -> Result<Fmp4Segment, LlHlsError> {
    let (mut video, mut audio) = demux(ts)?;
    finish_durations(video.as_mut(), audio.as_mut());
    let init = Bytes::from(init_segment(video.as_ref(), audio.as_ref()));

    // Part boundaries on the primary track (video if any, else audio).
    let (primary, scale): (&[Sample], u32) = match (&video, &audio) {
        (Some(v), _) => (&v.samples, VIDEO_TIMESCALE),
        (None, Some(a)) => (&a.samples, a.config.sample_rate),
        (None, None) => return Err(invalid("no media packets")),
    };
    let target = i64::try_from(part_target.as_micros() * u128::from(scale) / 1_000_000)
        .unwrap_or(i64::MAX)
        .max(1);
    let starts = part_starts(primary, target);
    let end = primary
        .last()
        .map_or(primary[0].dts, |s| s.dts.saturating_add(s.duration));
    let first = primary[0].dts;
    let bounds: Vec<(usize, usize)> = starts
        .iter()
        .enumerate()
        .map(|(k, &s)| (s, starts.get(k + 1).copied().unwrap_or(primary.len())))
        .collect();

    // Audio samples per part (only when video leads).
    let audio_ranges = match (&video, &audio) {
        (Some(v), Some(a)) => audio_ranges(v, a, &bounds),
        _ => vec![(0usize, 0usize); bounds.len()],
    };

    let to_duration = |t: i64| {
        Duration::from_nanos(
            u64::try_from(i128::from(t.max(0)) * 1_000_000_000 / i128::from(scale))
                .unwrap_or(u64::MAX),
        )
    };
    let mut parts = Vec::with_capacity(bounds.len());
    for (k, &(s, e)) in bounds.iter().enumerate() {
        let part_end = bounds.get(k + 1).map_or(end, |(n, _)| primary[*n].dts);
        let mut tracks: Vec<(u32, &[Sample])> = Vec::with_capacity(2);
        let independent = match (&video, &audio) {
            (Some(v), a) => {
                tracks.push((VIDEO_TRACK_ID, &v.samples[s..e]));
                if let Some(a) = a {
                    let (from, to) = audio_ranges[k];
                    if to > from {
                        tracks.push((AUDIO_TRACK_ID, &a.samples[from..to]));
                    }
                }
                v.samples[s].key
            }
            (None, Some(a)) => {
                tracks.push((AUDIO_TRACK_ID, &a.samples[s..e]));
                true
            }
            (None, None) => false,
        };
        let ms = u64::try_from(i128::from(primary[s].dts) * 1000 / i128::from(scale)).unwrap_or(0);
        let sequence = (ms % u64::from(u32::MAX)) as u32 + 1;
        parts.push(Fmp4Part {
            duration: to_duration(part_end - primary[s].dts),
            independent,
            data: Bytes::from(fragment(sequence, &tracks)?),
        });
    }
    Ok(Fmp4Segment {
        init,
        parts,
        duration: to_duration(end - first),
        video: video.as_ref().map(VideoTrack::info),
    })
}

/// Fills in the sample durations of both tracks. The last video frame lasts as long as the
/// demuxer says, else as long as the one before it, else one frame at the nominal rate.
fn finish_durations(video: Option<&mut VideoTrack>, audio: Option<&mut AudioTrack>) {
    if let Some(v) = video {
        let previous = match v.samples.as_slice() {
            [.., a, b] => b.dts - a.dts,
            _ => 0,
        };
        let last = [v.last_packet_duration, previous, v.nominal_frame]
            .into_iter()
            .find(|d| *d > 0)
            .unwrap_or(1);
        set_durations(&mut v.samples, last);
    }
    if let Some(a) = audio {
        set_durations(&mut a.samples, AAC_FRAME_SAMPLES);
    }
}

/// The index of the first sample of each part: a new part starts at the first sample that would
/// make the current one longer than `target`.
fn part_starts(primary: &[Sample], target: i64) -> Vec<usize> {
    let mut starts = vec![0usize];
    let mut part_start = primary[0].dts;
    for (i, s) in primary.iter().enumerate().skip(1) {
        if s.dts.saturating_add(s.duration).saturating_sub(part_start) > target {
            starts.push(i);
            part_start = s.dts;
        }
    }
    starts
}

/// The range of audio samples that goes into each part: those whose decode time falls before
/// the next part's first video frame.
fn audio_ranges(v: &VideoTrack, a: &AudioTrack, bounds: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut ranges = vec![(0usize, 0usize); bounds.len()];
    let mut j = 0;
    for (k, range) in ranges.iter_mut().enumerate() {
        let from = j;
        let limit = bounds.get(k + 1).map(|(s, _)| v.samples[*s].dts);
        while j < a.samples.len() && limit.is_none_or(|l| a.times_90k[j] < l) {
            j += 1;
        }
        *range = (from, j);
    }
    ranges
}
