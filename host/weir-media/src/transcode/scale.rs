//! Scaling decoded frames to YUV 4:2:0 at a fixed size.

use ff::format::Pixel;
use ff::frame;
use ff::software::scaling;
use ffmpeg_next as ff;

use super::{ffe, TranscodeError};

/// A scaler to YUV 4:2:0 at a fixed output size; its swscale context is rebuilt only when the
/// source's pixel format or size changes.
pub(crate) struct ToYuv420 {
    width: u32,
    height: u32,
    ctx: Option<(scaling::Context, (Pixel, u32, u32))>,
}

impl ToYuv420 {
    /// A scaler to `width`×`height`.
    pub(crate) fn new(width: u32, height: u32) -> Self {
        ToYuv420 {
            width,
            height,
            ctx: None,
        }
    }

    /// `src` scaled and converted to the output size and format.
    pub(crate) fn scale(&mut self, src: &frame::Video) -> Result<frame::Video, TranscodeError> {
        let key = (src.format(), src.width(), src.height());
        if self.ctx.as_ref().is_none_or(|(_, k)| *k != key) {
            let ctx = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::YUV420P,
                self.width,
                self.height,
                scaling::Flags::BILINEAR,
            )
            .map_err(ffe(format!(
                "creating a scaler from {:?} {}x{}",
                key.0, key.1, key.2
            )))?;
            self.ctx = Some((ctx, key));
        }
        let mut out = frame::Video::new(Pixel::YUV420P, self.width, self.height);
        if let Some((ctx, _)) = self.ctx.as_mut() {
            ctx.run(src, &mut out).map_err(ffe("scaling"))?;
        }
        Ok(out)
    }
}
