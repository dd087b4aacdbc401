//! The host side of `weir:host/video`: frames in the instance's table, within its budget.

use std::borrow::Cow;

use wasmtime::component::Resource;

use super::image::{frame_from_image, frame_to_png};
use super::ops::clip;
use super::{check_size, Frame, PixelFormat, Rgb};
use crate::bindings::types::Error as GuestError;
use crate::bindings::video::{self, Color, EncodeSettings, Rect};
use crate::host::{unsupported, HostState};
use crate::media::{Blob, Segment};

/// The answer of a host call that may fail for the guest.
type Answer<T> = wasmtime::Result<Result<T, GuestError>>;

/// Largest blur radius and box line, in pixels.
const MAX_RADIUS: u32 = 64;

fn invalid<T>(message: String) -> Answer<T> {
    Ok(Err(GuestError::InvalidRequest(format!("video: {message}"))))
}

impl HostState {
    /// Move a frame into this instance's table if its budget allows.
    fn push_frame(&mut self, frame: Frame) -> Answer<Resource<Frame>> {
        if let Err(e) = self.frames.admit(frame.data.len() as u64) {
            return Ok(Err(e));
        }
        Ok(Ok(self.table.push(frame)?))
    }

    /// Delete a frame from the table and return its share of the budget.
    fn delete_frame(&mut self, handle: Resource<Frame>) -> wasmtime::Result<()> {
        let frame = self.table.delete(handle)?;
        self.frames.release(frame.data.len() as u64);
        Ok(())
    }

    /// A new frame made from `this` by `make`, within the budget.
    fn derive(
        &mut self,
        this: &Resource<Frame>,
        make: impl FnOnce(&Frame) -> Result<Frame, String>,
    ) -> Answer<Resource<Frame>> {
        match make(self.table.get(this)?) {
            Ok(frame) => self.push_frame(frame),
            Err(e) => invalid(e),
        }
    }
}

impl video::Host for HostState {
    fn decode(&mut self, source: Resource<Segment>) -> Answer<Vec<Resource<Frame>>> {
        let Some(media) = self.scope.media.get().cloned() else {
            return unsupported("video decoding (no transcoder on this node)");
        };
        let (frames, bytes) = self.frames.room();
        let decoded = match media.decode(self.table.get(&source)?, frames, bytes, self.deadline) {
            Ok(decoded) => decoded,
            Err(e) => return Ok(Err(e)),
        };
        let mut handles = Vec::with_capacity(decoded.len());
        for frame in decoded {
            match self.push_frame(frame)? {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    for handle in handles {
                        self.delete_frame(handle)?;
                    }
                    return Ok(Err(e));
                }
            }
        }
        Ok(Ok(handles))
    }

    fn encode(
        &mut self,
        source: Resource<Segment>,
        frames: Vec<Resource<Frame>>,
        settings: EncodeSettings,
    ) -> Answer<Resource<Segment>> {
        let Some(media) = self.scope.media.get().cloned() else {
            return unsupported("video encoding (no transcoder on this node)");
        };
        let mut held = Vec::with_capacity(frames.len());
        for handle in &frames {
            let frame = self.table.get(handle)?;
            held.push(match frame.format {
                PixelFormat::Rgb24 => Cow::Borrowed(frame),
                PixelFormat::Gray8 => Cow::Owned(frame.converted(PixelFormat::Rgb24)),
            });
        }
        let refs: Vec<&Frame> = held.iter().map(AsRef::as_ref).collect();
        let encoded = media.encode(self.table.get(&source)?, &refs, &settings, self.deadline);
        drop(held);
        match encoded {
            Ok(segment) => Ok(Ok(self.push_segment(segment)?)),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl video::HostFrame for HostState {
    fn filled(
        &mut self,
        width: u32,
        height: u32,
        format: PixelFormat,
        fill: Color,
    ) -> Answer<Resource<Frame>> {
        if let Err(e) = check_size(width, height) {
            return Ok(Err(e));
        }
        // Refuse before allocating: the budget would refuse the frame anyway.
        let bytes = u64::from(width) * u64::from(height) * format.bytes_per_pixel() as u64;
        if let Err(e) = self.frames.check(bytes) {
            return Ok(Err(e));
        }
        self.push_frame(Frame::filled(width, height, format, fill.into()))
    }

    fn from_image(&mut self, image: Resource<Blob>) -> Answer<Resource<Frame>> {
        let blob = self.table.get(&image)?.clone();
        match frame_from_image(&blob.data) {
            Ok(frame) => self.push_frame(frame),
            Err(e) => invalid(e),
        }
    }

    fn to_image(&mut self, this: Resource<Frame>) -> Answer<Resource<Blob>> {
        match frame_to_png(self.table.get(&this)?) {
            Ok(png) => Ok(Ok(self.push_blob(Blob {
                content_type: "image/png".to_owned(),
                data: png.into(),
            })?)),
            Err(e) => invalid(e),
        }
    }

    fn width(&mut self, this: Resource<Frame>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&this)?.width)
    }

    fn height(&mut self, this: Resource<Frame>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&this)?.height)
    }

    fn format(&mut self, this: Resource<Frame>) -> wasmtime::Result<PixelFormat> {
        Ok(self.table.get(&this)?.format)
    }

    fn pts(&mut self, this: Resource<Frame>) -> wasmtime::Result<i64> {
        Ok(self.table.get(&this)?.pts)
    }

    fn set_pts(&mut self, this: Resource<Frame>, pts: i64) -> wasmtime::Result<()> {
        self.table.get_mut(&this)?.pts = pts;
        Ok(())
    }

    fn read(&mut self, this: Resource<Frame>, first_row: u32, rows: u32) -> Answer<Vec<u8>> {
        Ok(Ok(self.table.get(&this)?.read_rows(first_row, rows)))
    }

    fn write(&mut self, this: Resource<Frame>, first_row: u32, data: Vec<u8>) -> Answer<()> {
        match self.table.get_mut(&this)?.write_rows(first_row, &data) {
            Ok(()) => Ok(Ok(())),
            Err(e) => invalid(e),
        }
    }

    fn scale(&mut self, this: Resource<Frame>, width: u32, height: u32) -> Answer<Resource<Frame>> {
        if let Err(e) = check_size(width, height) {
            return Ok(Err(e));
        }
        let n = self.table.get(&this)?.format.bytes_per_pixel() as u64;
        if let Err(e) = self.frames.check(u64::from(width) * u64::from(height) * n) {
            return Ok(Err(e));
        }
        self.derive(&this, |f| Ok(f.scaled(width, height)))
    }

    fn crop(&mut self, this: Resource<Frame>, area: Rect) -> Answer<Resource<Frame>> {
        self.derive(&this, |f| {
            clip(area.x, area.y, area.width, area.height, f.width, f.height)
                .map(|c| f.cropped(c))
                .ok_or_else(|| {
                    format!(
                        "crop: {area:?} lies outside the {}x{} frame",
                        f.width, f.height
                    )
                })
        })
    }

    fn convert(&mut self, this: Resource<Frame>, format: PixelFormat) -> Answer<Resource<Frame>> {
        self.derive(&this, |f| Ok(f.converted(format)))
    }

    fn blur(&mut self, this: Resource<Frame>, area: Rect, radius: u32) -> Answer<()> {
        if !(1..=MAX_RADIUS).contains(&radius) {
            return invalid(format!("blur: radius {radius} is outside 1..={MAX_RADIUS}"));
        }
        let f = self.table.get_mut(&this)?;
        if let Some(c) = clip(area.x, area.y, area.width, area.height, f.width, f.height) {
            f.blur(c, radius as usize);
        }
        Ok(Ok(()))
    }

    fn fill(&mut self, this: Resource<Frame>, area: Rect, fill: Color) -> Answer<()> {
        let f = self.table.get_mut(&this)?;
        if let Some(c) = clip(area.x, area.y, area.width, area.height, f.width, f.height) {
            f.fill(c, fill.into());
        }
        Ok(Ok(()))
    }

    fn draw_box(
        &mut self,
        this: Resource<Frame>,
        area: Rect,
        line: Color,
        thickness: u32,
    ) -> Answer<()> {
        if !(1..=MAX_RADIUS).contains(&thickness) {
            return invalid(format!(
                "draw-box: thickness {thickness} is outside 1..={MAX_RADIUS}"
            ));
        }
        let f = self.table.get_mut(&this)?;
        f.draw_box(
            area.x,
            area.y,
            area.width,
            area.height,
            Rgb::from(line),
            thickness,
        );
        Ok(Ok(()))
    }

    fn overlay(
        &mut self,
        this: Resource<Frame>,
        top: Resource<Frame>,
        x: i32,
        y: i32,
        mask: Option<Resource<Frame>>,
    ) -> Answer<()> {
        // Copies: `top` or `mask` may be `this` itself.
        let top = self.table.get(&top)?.clone();
        let mask = match &mask {
            Some(m) => Some(self.table.get(m)?.clone()),
            None => None,
        };
        match self
            .table
            .get_mut(&this)?
            .overlay(&top, x, y, mask.as_ref())
        {
            Ok(()) => Ok(Ok(())),
            Err(e) => invalid(e),
        }
    }

    fn drop(&mut self, rep: Resource<Frame>) -> wasmtime::Result<()> {
        self.delete_frame(rep)
    }
}
