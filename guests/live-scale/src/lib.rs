//! live-scale: a live pipeline that re-encodes every segment of a stream to a target height,
//! keeping the source's aspect ratio and frame rate, through the host's transcoder
//! (`transcode.ladder` with one rendition).
//!
//! - Start params: `height` (an integer in 144..=1080, or a numeric string; odd values are
//!   rounded down to even); default: the manifest's `default_height` config, else 240. Other
//!   params are ignored.
//! - Control messages: `{"height": N}` changes the height from the next segment on;
//!   `{"keep":"alive"}` is ignored. A bad message is an `invalid-request` error and leaves the
//!   height as it was.
//! - Batch jobs (`run`) are `unsupported`.

mod settings;

use std::cell::Cell;

use settings::{Control, DEFAULT_HEIGHT, MAX_HEIGHT, MIN_HEIGHT};
use weir_sdk::logging;
use weir_sdk::pipeline::{Error, Guest, Job, JobOutput, Segment, StreamInfo};
use weir_sdk::transcode::ladder;

thread_local! {
    /// The height segments are scaled to; one instance serves one stream.
    static HEIGHT: Cell<u32> = const { Cell::new(DEFAULT_HEIGHT) };
}

/// The manifest's `default_height`, checked like a start param.
fn default_height() -> Result<u32, Error> {
    let raw: i64 = weir_sdk::config::parse_or("default_height", i64::from(DEFAULT_HEIGHT))?;
    settings::check_height(raw).map_err(|_| {
        Error::Config(format!(
            "config `default_height` = {raw} must be within {MIN_HEIGHT}..={MAX_HEIGHT}"
        ))
    })
}

struct LiveScale;

impl Guest for LiveScale {
    fn run(_job: Job) -> Result<JobOutput, Error> {
        Err(Error::Unsupported(
            "live-scale only processes live streams; batch jobs are not supported".into(),
        ))
    }

    fn on_start(info: StreamInfo) -> Result<(), Error> {
        let height = settings::start_height(&info.params, default_height()?)
            .map_err(Error::InvalidRequest)?;
        HEIGHT.with(|h| h.set(height));
        logging::info(&format!("stream {}: scaling to {height}p", info.id));
        Ok(())
    }

    fn on_segment(segment: Segment) -> Result<Vec<Segment>, Error> {
        let info = segment.probe()?;
        let height = HEIGHT.with(Cell::get);
        let rendition = settings::rendition(&info, height)
            .map_err(|e| Error::InvalidRequest(format!("segment {}: {e}", segment.seq())))?;
        ladder(&segment, &[rendition])
    }

    fn on_control(message: String) -> Result<(), Error> {
        match settings::parse_control(&message).map_err(Error::InvalidRequest)? {
            Control::KeepAlive => {}
            Control::Height(height) => {
                let before = HEIGHT.with(|h| h.replace(height));
                if before != height {
                    logging::info(&format!("height {before}p -> {height}p"));
                }
            }
        }
        Ok(())
    }

    fn on_stop() {}
}

weir_sdk::pipeline::export_pipeline!(LiveScale);
