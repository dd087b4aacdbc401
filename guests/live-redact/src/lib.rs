//! live-redact: a live pipeline that hides a region of every frame — blurs it, paints it over,
//! or outlines it — working on the host's decoded frames (`weir:host/video`): the segment is
//! decoded on the host, the effect runs on the host's pixels, the frames are encoded again with
//! their times and the segment's audio. No pixel crosses into the component.
//!
//! - Start params and control messages (JSON objects) take the same keys: `effect` (`blur`,
//!   `fill`, `outline`), `x`, `y`, `w`, `h` (the region, fractions of the frame), `radius`
//!   (blur, 1..=64 pixels), `color` (`#rrggbb`). Default: blur the centre quarter, radius 16.
//!   A bad value is an `invalid-request` error and changes nothing; `{"keep":"alive"}` is
//!   ignored.
//! - Batch jobs (`run`) are `unsupported`.

mod settings;

use std::cell::Cell;

use settings::{params_object, parse_control, Effect, Settings};
use weir_sdk::logging;
use weir_sdk::pipeline::{Error, Guest, Job, JobOutput, Segment, StreamInfo};
use weir_sdk::video::{self, Color, EncodeSettings, Frame, Rect};

thread_local! {
    /// The stream's settings; one instance serves one stream.
    static SETTINGS: Cell<Settings> = Cell::new(Settings::default());
}

/// Outline width in pixels.
const OUTLINE: u32 = 4;

/// Apply `s` to one frame, in place on the host.
fn redact(frame: &Frame, s: &Settings) -> Result<(), Error> {
    let (x, y, width, height) = s.rect(frame.width(), frame.height());
    let area = Rect {
        x,
        y,
        width,
        height,
    };
    let [r, g, b] = s.color;
    let color = Color { r, g, b };
    match s.effect {
        Effect::Blur => frame.blur(area, s.radius),
        Effect::Fill => frame.fill(area, color),
        Effect::Outline => frame.draw_box(area, color, OUTLINE),
    }
}

struct LiveRedact;

impl Guest for LiveRedact {
    fn run(_job: Job) -> Result<JobOutput, Error> {
        Err(Error::Unsupported(
            "live-redact only processes live streams; batch jobs are not supported".into(),
        ))
    }

    fn on_start(info: StreamInfo) -> Result<(), Error> {
        let s = Settings::default()
            .with(&params_object(&info.params))
            .map_err(Error::InvalidRequest)?;
        SETTINGS.with(|c| c.set(s));
        logging::info(&format!("stream {}: {:?}", info.id, s));
        Ok(())
    }

    fn on_segment(segment: Segment) -> Result<Vec<Segment>, Error> {
        let s = SETTINGS.with(Cell::get);
        let frames = video::decode(&segment)?;
        for frame in &frames {
            redact(frame, &s)?;
        }
        let out = video::encode(
            &segment,
            &frames.iter().collect::<Vec<_>>(),
            EncodeSettings { bitrate: 0 },
        )?;
        Ok(vec![out])
    }

    fn on_control(message: String) -> Result<(), Error> {
        let changes = parse_control(&message).map_err(Error::InvalidRequest)?;
        let next = SETTINGS
            .with(Cell::get)
            .with(&changes)
            .map_err(Error::InvalidRequest)?;
        SETTINGS.with(|c| c.set(next));
        logging::info(&format!("now {next:?}"));
        Ok(())
    }

    fn on_stop() {}
}

weir_sdk::pipeline::export_pipeline!(LiveRedact);
