//! Frames to and from image objects (`frame.to-image`, `frame.from-image`), so a frame can go
//! to a model that takes images and come back without its pixels entering the guest.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, ImageReader, Limits};

use super::{check_size, Frame, PixelFormat, MAX_SIDE};

/// The most memory decoding one image may take (a 4096×4096 RGBA image and change).
const MAX_DECODE_BYTES: u64 = 80 << 20;

/// An `rgb24` frame from PNG, JPEG or WebP bytes (time 0).
pub(crate) fn frame_from_image(bytes: &[u8]) -> Result<Frame, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("from-image: cannot read the image: {e}"))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| {
        format!("from-image: not a PNG, JPEG or WebP image within {MAX_SIDE}x{MAX_SIDE}: {e}")
    })?;
    let rgb = decoded.into_rgb8();
    // Every operation assumes a frame has pixels; an image format that allows an empty
    // picture must not make one.
    check_size(rgb.width(), rgb.height()).map_err(|_| {
        format!(
            "from-image: the image is {}x{}, not 1..={MAX_SIDE} pixels on a side",
            rgb.width(),
            rgb.height()
        )
    })?;
    Ok(Frame {
        width: rgb.width(),
        height: rgb.height(),
        format: PixelFormat::Rgb24,
        pts: 0,
        data: rgb.into_raw(),
    })
}

/// `frame` as PNG bytes (fast compression: frames are large and short-lived).
pub(crate) fn frame_to_png(frame: &Frame) -> Result<Vec<u8>, String> {
    let color = match frame.format {
        PixelFormat::Rgb24 => ExtendedColorType::Rgb8,
        PixelFormat::Gray8 => ExtendedColorType::L8,
    };
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
        .write_image(&frame.data, frame.width, frame.height, color)
        .map_err(|e| format!("to-image: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::Rgb;

    #[test]
    fn a_frame_survives_png_both_ways() {
        let mut f = Frame::filled(7, 5, PixelFormat::Rgb24, Rgb(10, 20, 30));
        f.data[0] = 255;
        let png = frame_to_png(&f).expect("png");
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(
            frame_from_image(&png).expect("decoded"),
            Frame { pts: 0, ..f }
        );
        let grey = Frame::filled(3, 2, PixelFormat::Gray8, Rgb(255, 255, 255));
        let back = frame_from_image(&frame_to_png(&grey).expect("png")).expect("decoded");
        assert_eq!((back.format, back.data.len()), (PixelFormat::Rgb24, 18));
        assert!(back.data.iter().all(|&b| b == 255));
    }

    #[test]
    fn garbage_and_oversized_images_are_refused() {
        assert!(frame_from_image(b"not an image").is_err());
        assert!(frame_from_image(&[]).is_err());
        let wide = Frame::filled(4097, 1, PixelFormat::Gray8, Rgb(0, 0, 0));
        let e = frame_from_image(&frame_to_png(&wide).expect("png")).unwrap_err();
        assert!(e.contains("4096"), "{e}");
    }
}
