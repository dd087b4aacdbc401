//! A pipeline that reuses the host's transcoder: each stream segment comes back as the 240p and
//! 360p renditions the host's FFmpeg ladder makes of it (`transcode.ladder`); batch jobs are
//! refused.

use weir_sdk::pipeline::{Error, Guest, Job, JobOutput, Segment, StreamInfo};
use weir_sdk::transcode::{ladder, Rendition};

struct Ladder;

fn rung(name: &str, width: u32, height: u32, bitrate: u32) -> Rendition {
    Rendition {
        name: name.into(),
        width,
        height,
        bitrate,
        fps_num: 30,
        fps_den: 1,
        gop_ms: 0,
    }
}

impl Guest for Ladder {
    fn run(_job: Job) -> Result<JobOutput, Error> {
        Err(Error::Unsupported(
            "this pipeline only transcodes streams".into(),
        ))
    }

    fn on_start(_info: StreamInfo) -> Result<(), Error> {
        Ok(())
    }

    fn on_segment(segment: Segment) -> Result<Vec<Segment>, Error> {
        let info = segment.probe()?;
        if info.codec.is_empty() {
            return Err(Error::Internal("the host probed no codec".into()));
        }
        ladder(
            &segment,
            &[
                rung("P240p30fps16x9", 426, 240, 600_000),
                rung("P360p30fps16x9", 640, 360, 1_200_000),
            ],
        )
    }

    fn on_control(_message: String) -> Result<(), Error> {
        Ok(())
    }

    fn on_stop() {}
}

weir_sdk::pipeline::export_pipeline!(Ladder);
