//! Decoded video frames held by the host (`weir:host/video`).
//!
//! A [`Frame`] lives in the instance's resource table; guests hold handles. [`FrameBudget`]
//! caps what one instance holds at once ([`MAX_FRAMES`] frames, [`MAX_FRAME_BYTES`] bytes of
//! pixels): a call that would pass it is refused and makes nothing. Dropping a handle returns
//! its share; when an instance ends its table, and every frame in it, goes with it.
//! Decoding and encoding go through the node's [`crate::MediaSource`] (the runtime does not link
//! FFmpeg); the pixel operations are in [`ops`].

mod host;
mod image;
pub(crate) mod ops;

use crate::bindings::video::Color;
pub use crate::bindings::video::PixelFormat;
use crate::GuestError;

/// The most frames one instance holds at once.
pub const MAX_FRAMES: usize = 1024;

/// The most bytes of pixels one instance holds at once (256 MiB).
pub const MAX_FRAME_BYTES: u64 = 256 << 20;

/// The largest frame width and height, in pixels.
pub const MAX_SIDE: u32 = 4096;

/// One decoded picture held by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel layout.
    pub format: PixelFormat,
    /// Presentation time in 90 kHz ticks.
    pub pts: i64,
    /// Packed rows, `width * height * bytes_per_pixel` bytes.
    pub data: Vec<u8>,
}

impl PixelFormat {
    /// Bytes one pixel takes.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb24 => 3,
            PixelFormat::Gray8 => 1,
        }
    }
}

/// An 8-bit RGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rgb(pub u8, pub u8, pub u8);

impl From<Color> for Rgb {
    fn from(c: Color) -> Rgb {
        Rgb(c.r, c.g, c.b)
    }
}

/// How many frames, and bytes of them, one instance may still make.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameBudget {
    frames: usize,
    bytes: u64,
}

impl FrameBudget {
    /// Frames and bytes still free.
    pub(crate) fn room(&self) -> (usize, u64) {
        (
            MAX_FRAMES.saturating_sub(self.frames),
            MAX_FRAME_BYTES.saturating_sub(self.bytes),
        )
    }

    /// Count a frame of `bytes` in, or say why it does not fit.
    pub(crate) fn admit(&mut self, bytes: u64) -> Result<(), GuestError> {
        self.check(bytes)?;
        self.frames += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// Why a frame of `bytes` would not fit, if it would not (counts nothing).
    pub(crate) fn check(&self, bytes: u64) -> Result<(), GuestError> {
        if self.frames >= MAX_FRAMES {
            return Err(GuestError::InvalidRequest(format!(
                "video: this instance already holds {MAX_FRAMES} frames, the most it may; drop frames it no longer needs"
            )));
        }
        if self.bytes + bytes > MAX_FRAME_BYTES {
            return Err(GuestError::InvalidRequest(format!(
                "video: a {bytes}-byte frame would pass the {} MiB of frames this instance may hold ({} MiB held); drop frames it no longer needs",
                MAX_FRAME_BYTES >> 20,
                self.bytes >> 20
            )));
        }
        Ok(())
    }

    /// Count a dropped frame of `bytes` out.
    pub(crate) fn release(&mut self, bytes: u64) {
        self.frames = self.frames.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// Why a `width`×`height` frame cannot exist, if it cannot.
pub(crate) fn check_size(width: u32, height: u32) -> Result<(), GuestError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(GuestError::InvalidRequest(format!(
            "video: a frame is 1..={MAX_SIDE} pixels on a side, not {width}x{height}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_caps_and_returns_what_is_dropped() {
        let mut b = FrameBudget::default();
        assert!(b.admit(MAX_FRAME_BYTES).is_ok());
        assert!(b.admit(1).is_err(), "bytes cap");
        b.release(MAX_FRAME_BYTES);
        assert_eq!(b.room(), (MAX_FRAMES, MAX_FRAME_BYTES));
        for _ in 0..MAX_FRAMES {
            b.admit(1).expect("room");
        }
        let e = b.admit(1).unwrap_err();
        assert!(
            matches!(e, GuestError::InvalidRequest(ref m) if m.contains("1024 frames")),
            "{e:?}"
        );
        b.release(1);
        assert!(b.admit(1).is_ok());
    }

    #[test]
    fn sizes_are_checked() {
        assert!(check_size(1, 1).is_ok());
        assert!(check_size(4096, 4096).is_ok());
        assert!(check_size(0, 5).is_err());
        assert!(check_size(4097, 5).is_err());
    }
}
