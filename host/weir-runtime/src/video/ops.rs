//! Pixel work on host-held frames: the heavy, generic operations `weir:host/video` offers so
//! guests never copy pixels to do them. Every rectangle is clipped to the frame first.

use super::{Frame, PixelFormat, Rgb};

/// The most rows' bytes one `read` copies into guest memory.
pub const MAX_READ_BYTES: usize = 1 << 20;

/// A rectangle clipped to a frame: `[x0, x1) × [y0, y1)`, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clip {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

/// `(x, y, width, height)` clipped to a `w`×`h` frame; `None` when nothing is left.
pub(crate) fn clip(x: i32, y: i32, width: u32, height: u32, w: u32, h: u32) -> Option<Clip> {
    let x0 = i64::from(x).clamp(0, i64::from(w));
    let y0 = i64::from(y).clamp(0, i64::from(h));
    let x1 = (i64::from(x) + i64::from(width)).clamp(0, i64::from(w));
    let y1 = (i64::from(y) + i64::from(height)).clamp(0, i64::from(h));
    (x1 > x0 && y1 > y0).then_some(Clip {
        x0: x0 as usize,
        y0: y0 as usize,
        x1: x1 as usize,
        y1: y1 as usize,
    })
}

/// BT.601 luma of a colour.
pub(crate) fn luma(c: Rgb) -> u8 {
    ((u32::from(c.0) * 299 + u32::from(c.1) * 587 + u32::from(c.2) * 114 + 500) / 1000) as u8
}

/// A colour as the bytes of one pixel of `format`.
fn pixel(format: PixelFormat, c: Rgb) -> ([u8; 3], usize) {
    match format {
        PixelFormat::Rgb24 => ([c.0, c.1, c.2], 3),
        PixelFormat::Gray8 => ([luma(c), 0, 0], 1),
    }
}

impl Frame {
    /// Bytes in one row.
    pub(crate) fn row_bytes(&self) -> usize {
        self.width as usize * self.format.bytes_per_pixel()
    }

    /// A new frame of `width`×`height` in `format` filled with `fill`, time 0.
    pub(crate) fn filled(width: u32, height: u32, format: PixelFormat, fill: Rgb) -> Frame {
        let (px, n) = pixel(format, fill);
        let count = width as usize * height as usize;
        let data = match n {
            1 => vec![px[0]; count],
            _ => px[..n].repeat(count),
        };
        Frame {
            width,
            height,
            format,
            pts: 0,
            data,
        }
    }

    /// Whole rows from `first`, at most `rows` and at most [`MAX_READ_BYTES`] (at least one
    /// row when any is asked for and exists).
    pub(crate) fn read_rows(&self, first: u32, rows: u32) -> Vec<u8> {
        let row = self.row_bytes();
        let first = (first as usize).min(self.height as usize);
        let fit = (MAX_READ_BYTES / row.max(1)).max(1);
        let last = first
            .saturating_add((rows as usize).min(fit))
            .min(self.height as usize);
        self.data[first * row..last * row].to_vec()
    }

    /// Overwrite whole rows from `first` with `data`.
    pub(crate) fn write_rows(&mut self, first: u32, data: &[u8]) -> Result<(), String> {
        let row = self.row_bytes();
        if !data.len().is_multiple_of(row) {
            return Err(format!(
                "write: {} bytes is not a whole number of {row}-byte rows",
                data.len()
            ));
        }
        let start = first as usize * row;
        let end = start.saturating_add(data.len());
        if end > self.data.len() {
            return Err(format!(
                "write: rows {first}..{} pass the frame's last row ({})",
                first as usize + data.len() / row,
                self.height
            ));
        }
        self.data[start..end].copy_from_slice(data);
        Ok(())
    }

    /// A copy scaled to `width`×`height` (bilinear; pixel centres aligned).
    pub(crate) fn scaled(&self, width: u32, height: u32) -> Frame {
        let n = self.format.bytes_per_pixel();
        let (sw, sh) = (self.width as usize, self.height as usize);
        let (dw, dh) = (width as usize, height as usize);
        let mut data = vec![0u8; dw * dh * n];
        let axis = |d: usize, dsize: usize, ssize: usize| {
            let s = ((d as f32 + 0.5) * ssize as f32 / dsize as f32 - 0.5).max(0.0);
            let i0 = (s as usize).min(ssize - 1);
            let i1 = (i0 + 1).min(ssize - 1);
            (i0, i1, s - i0 as f32)
        };
        let xs: Vec<_> = (0..dw).map(|x| axis(x, dw, sw)).collect();
        for y in 0..dh {
            let (y0, y1, fy) = axis(y, dh, sh);
            let (r0, r1) = (y0 * sw * n, y1 * sw * n);
            let out = &mut data[y * dw * n..(y + 1) * dw * n];
            for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
                for c in 0..n {
                    let p = |row: usize, col: usize| f32::from(self.data[row + col * n + c]);
                    let top = p(r0, x0) + (p(r0, x1) - p(r0, x0)) * fx;
                    let bottom = p(r1, x0) + (p(r1, x1) - p(r1, x0)) * fx;
                    out[x * n + c] = (top + (bottom - top) * fy + 0.5) as u8;
                }
            }
        }
        Frame {
            width,
            height,
            format: self.format,
            pts: self.pts,
            data,
        }
    }

    /// A copy of the clipped area.
    pub(crate) fn cropped(&self, area: Clip) -> Frame {
        let n = self.format.bytes_per_pixel();
        let row = self.row_bytes();
        let mut data = Vec::with_capacity((area.x1 - area.x0) * (area.y1 - area.y0) * n);
        for y in area.y0..area.y1 {
            data.extend_from_slice(&self.data[y * row + area.x0 * n..y * row + area.x1 * n]);
        }
        Frame {
            width: (area.x1 - area.x0) as u32,
            height: (area.y1 - area.y0) as u32,
            format: self.format,
            pts: self.pts,
            data,
        }
    }

    /// A copy in `format`.
    pub(crate) fn converted(&self, format: PixelFormat) -> Frame {
        let data = match (self.format, format) {
            (a, b) if a == b => self.data.clone(),
            (PixelFormat::Rgb24, PixelFormat::Gray8) => self
                .data
                .chunks_exact(3)
                .map(|p| luma(Rgb(p[0], p[1], p[2])))
                .collect(),
            _ => self.data.iter().flat_map(|&g| [g, g, g]).collect(),
        };
        Frame {
            format,
            data,
            ..*self
        }
    }

    /// Box-blur the area in place three times with `radius` (edges clamp inside the area).
    /// Rows then columns, each pass a running sum over whole rows, so it reads memory in order.
    pub(crate) fn blur(&mut self, area: Clip, radius: usize) {
        let n = self.format.bytes_per_pixel();
        let row = self.row_bytes();
        let (w, h) = (area.x1 - area.x0, area.y1 - area.y0);
        let span = w * n;
        let mut region = Vec::with_capacity(span * h);
        for y in area.y0..area.y1 {
            region.extend_from_slice(&self.data[y * row + area.x0 * n..y * row + area.x1 * n]);
        }
        let mut scratch = vec![0u8; region.len()];
        let divide = Divider::new(2 * radius + 1);
        let mut padded = Vec::with_capacity(span + 2 * radius * n);
        for _ in 0..3 {
            for (src, dst) in region
                .chunks_exact(span)
                .zip(scratch.chunks_exact_mut(span))
            {
                blur_row(src, dst, n, radius, &divide, &mut padded);
            }
            blur_columns(&scratch, &mut region, span, radius, &divide);
        }
        for (y, line) in (area.y0..area.y1).zip(region.chunks_exact(span)) {
            self.data[y * row + area.x0 * n..y * row + area.x1 * n].copy_from_slice(line);
        }
    }

    /// Paint the area in place.
    pub(crate) fn fill(&mut self, area: Clip, color: Rgb) {
        let (px, n) = pixel(self.format, color);
        let row = self.row_bytes();
        for y in area.y0..area.y1 {
            for x in area.x0..area.x1 {
                let i = y * row + x * n;
                self.data[i..i + n].copy_from_slice(&px[..n]);
            }
        }
    }

    /// Draw the outline of `(x, y, width, height)`, `thickness` pixels inside it, clipped.
    pub(crate) fn draw_box(
        &mut self,
        x: i32,
        y: i32,
        width: u32,
        height: u32,
        color: Rgb,
        thickness: u32,
    ) {
        let t = thickness.min(width).min(height);
        let (w, h) = (self.width, self.height);
        let bottom = y.saturating_add(i32::try_from(height - t).unwrap_or(i32::MAX));
        let right = x.saturating_add(i32::try_from(width - t).unwrap_or(i32::MAX));
        let edges = [
            (x, y, width, t),
            (x, bottom, width, t),
            (x, y, t, height),
            (right, y, t, height),
        ];
        for (ex, ey, ew, eh) in edges {
            if let Some(area) = clip(ex, ey, ew, eh, w, h) {
                self.fill(area, color);
            }
        }
    }

    /// Composite `top` at (`x`, `y`), converted to this frame's format, with `mask` (a `gray8`
    /// frame of `top`'s size) as per-pixel opacity.
    pub(crate) fn overlay(
        &mut self,
        top: &Frame,
        x: i32,
        y: i32,
        mask: Option<&Frame>,
    ) -> Result<(), String> {
        if let Some(m) = mask {
            if m.format != PixelFormat::Gray8 || (m.width, m.height) != (top.width, top.height) {
                return Err(format!(
                    "overlay: the mask must be a gray8 frame of the top frame's size ({}x{}), not a {:?} {}x{}",
                    top.width, top.height, m.format, m.width, m.height
                ));
            }
        }
        let Some(area) = clip(x, y, top.width, top.height, self.width, self.height) else {
            return Ok(());
        };
        let top = if top.format == self.format {
            std::borrow::Cow::Borrowed(top)
        } else {
            std::borrow::Cow::Owned(top.converted(self.format))
        };
        let n = self.format.bytes_per_pixel();
        let (row, top_row) = (self.row_bytes(), top.row_bytes());
        for dy in area.y0..area.y1 {
            let ty = (dy as i64 - i64::from(y)) as usize;
            for dx in area.x0..area.x1 {
                let tx = (dx as i64 - i64::from(x)) as usize;
                let alpha = mask.map_or(255, |m| u32::from(m.data[ty * top.width as usize + tx]));
                for c in 0..n {
                    let d = &mut self.data[dy * row + dx * n + c];
                    let s = u32::from(top.data[ty * top_row + tx * n + c]);
                    *d = ((s * alpha + u32::from(*d) * (255 - alpha) + 127) / 255) as u8;
                }
            }
        }
        Ok(())
    }
}

/// Division by a box's width as a multiply and a shift (exact to rounding for 8-bit sums).
struct Divider {
    mul: u64,
}

impl Divider {
    fn new(width: usize) -> Divider {
        let width = width as u64;
        Divider {
            mul: ((1u64 << 32) + width / 2) / width,
        }
    }

    fn apply(&self, sum: u32) -> u8 {
        ((u64::from(sum) * self.mul + (1 << 31)) >> 32).min(255) as u8
    }
}

/// One horizontal box pass over a row of `n`-channel pixels, edges clamped: the row is padded
/// with copies of its end pixels into `padded`, then one running sum per channel slides along.
fn blur_row(
    src: &[u8],
    dst: &mut [u8],
    n: usize,
    radius: usize,
    divide: &Divider,
    padded: &mut Vec<u8>,
) {
    let len = src.len() / n;
    if len == 0 {
        return;
    }
    padded.clear();
    for _ in 0..radius {
        padded.extend_from_slice(&src[..n]);
    }
    padded.extend_from_slice(src);
    for _ in 0..radius {
        padded.extend_from_slice(&src[src.len() - n..]);
    }
    let window = 2 * radius + 1;
    let mut sums = [0u32; 4];
    for px in padded[..window * n].chunks_exact(n) {
        for (s, &v) in sums.iter_mut().zip(px) {
            *s += u32::from(v);
        }
    }
    for i in 0..len {
        for c in 0..n {
            dst[i * n + c] = divide.apply(sums[c]);
        }
        if i + 1 < len {
            let (add, sub) = ((i + window) * n, i * n);
            for c in 0..n {
                sums[c] = sums[c] + u32::from(padded[add + c]) - u32::from(padded[sub + c]);
            }
        }
    }
}

/// One vertical box pass over `rows` of `span` bytes into `out`, edges clamped: a running sum
/// per byte column, updated a whole row at a time.
fn blur_columns(rows: &[u8], out: &mut [u8], span: usize, radius: usize, divide: &Divider) {
    let h = rows.len() / span;
    let r = radius as isize;
    let line = |y: isize| &rows[y.clamp(0, h as isize - 1) as usize * span..][..span];
    let mut sums = vec![0u32; span];
    for y in -r..=r {
        for (s, &v) in sums.iter_mut().zip(line(y)) {
            *s += u32::from(v);
        }
    }
    for y in 0..h {
        for (o, &s) in out[y * span..(y + 1) * span].iter_mut().zip(&sums) {
            *o = divide.apply(s);
        }
        let (add, sub) = (line(y as isize + r + 1), line(y as isize - r));
        for ((s, &a), &b) in sums.iter_mut().zip(add).zip(sub) {
            *s = *s + u32::from(a) - u32::from(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(w: u32, h: u32, f: impl Fn(usize, usize) -> [u8; 3]) -> Frame {
        let mut data = Vec::new();
        for y in 0..h as usize {
            for x in 0..w as usize {
                data.extend_from_slice(&f(x, y));
            }
        }
        Frame {
            width: w,
            height: h,
            format: PixelFormat::Rgb24,
            pts: 42,
            data,
        }
    }

    fn at(f: &Frame, x: usize, y: usize) -> &[u8] {
        let n = f.format.bytes_per_pixel();
        let i = (y * f.width as usize + x) * n;
        &f.data[i..i + n]
    }

    #[test]
    fn rectangles_clip_to_the_frame() {
        assert_eq!(
            clip(-5, -5, 10, 10, 8, 8),
            Some(Clip {
                x0: 0,
                y0: 0,
                x1: 5,
                y1: 5
            })
        );
        assert_eq!(
            clip(6, 6, 10, 10, 8, 8),
            Some(Clip {
                x0: 6,
                y0: 6,
                x1: 8,
                y1: 8
            })
        );
        assert_eq!(clip(8, 0, 4, 4, 8, 8), None);
        assert_eq!(clip(0, 0, 0, 4, 8, 8), None);
        assert_eq!(clip(i32::MAX, i32::MIN, u32::MAX, u32::MAX, 8, 8), None);
        assert_eq!(
            clip(i32::MIN, i32::MIN, u32::MAX, u32::MAX, 8, 8),
            Some(Clip {
                x0: 0,
                y0: 0,
                x1: 8,
                y1: 8
            })
        );
    }

    #[test]
    fn rows_read_and_write_whole_and_bounded() {
        let mut f = rgb(4, 3, |x, y| [x as u8, y as u8, 0]);
        assert_eq!(f.read_rows(1, 1), vec![0, 1, 0, 1, 1, 0, 2, 1, 0, 3, 1, 0]);
        assert_eq!(f.read_rows(2, 100).len(), 12);
        assert!(f.read_rows(3, 1).is_empty());
        assert!(f.read_rows(u32::MAX, u32::MAX).is_empty());
        assert!(f.write_rows(2, &[9; 12]).is_ok());
        assert_eq!(at(&f, 3, 2), &[9, 9, 9]);
        assert!(f.write_rows(2, &[9; 24]).unwrap_err().contains("last row"));
        assert!(f
            .write_rows(0, &[9; 5])
            .unwrap_err()
            .contains("whole number"));
        assert!(f.write_rows(u32::MAX, &[9; 12]).is_err());
        let big = Frame::filled(4096, 4096, PixelFormat::Rgb24, Rgb(1, 2, 3));
        assert_eq!(
            big.read_rows(0, 4096).len(),
            (MAX_READ_BYTES / (4096 * 3)) * 4096 * 3
        );
    }

    #[test]
    fn scaling_keeps_flat_colour_and_halves_a_ramp() {
        let flat = Frame::filled(10, 6, PixelFormat::Rgb24, Rgb(10, 200, 30));
        let s = flat.scaled(3, 7);
        assert_eq!((s.width, s.height, s.pts), (3, 7, 0));
        assert!(s.data.chunks(3).all(|p| p == [10, 200, 30]));
        let ramp = rgb(4, 1, |x, _| [(x * 60) as u8; 3]);
        let half = ramp.scaled(2, 1);
        assert_eq!(half.data, vec![30, 30, 30, 150, 150, 150]);
        assert_eq!(half.pts, 42);
    }

    #[test]
    fn crop_convert_and_fill_touch_what_they_say() {
        let f = rgb(6, 4, |x, y| [x as u8, y as u8, 7]);
        let c = f.cropped(clip(2, 1, 3, 2, 6, 4).expect("area"));
        assert_eq!((c.width, c.height), (3, 2));
        assert_eq!(at(&c, 0, 0), &[2, 1, 7]);
        assert_eq!(at(&c, 2, 1), &[4, 2, 7]);
        let g = Frame::filled(2, 2, PixelFormat::Rgb24, Rgb(255, 255, 255))
            .converted(PixelFormat::Gray8);
        assert_eq!(g.data, vec![255; 4]);
        assert_eq!(luma(Rgb(255, 0, 0)), 76);
        assert_eq!(g.converted(PixelFormat::Rgb24).data, vec![255; 12]);
        let mut f = f;
        f.fill(clip(-1, -1, 2, 2, 6, 4).expect("area"), Rgb(1, 2, 3));
        assert_eq!(at(&f, 0, 0), &[1, 2, 3]);
        assert_eq!(at(&f, 1, 0), &[1, 0, 7]);
    }

    #[test]
    fn division_by_the_box_width_rounds_like_integer_division() {
        for width in [1usize, 3, 5, 33, 129] {
            let d = Divider::new(width);
            for sum in 0..=(255 * width as u32) {
                let exact = (sum + width as u32 / 2) / width as u32;
                assert_eq!(u32::from(d.apply(sum)), exact, "{sum}/{width}");
            }
        }
    }

    #[test]
    fn blur_of_a_flat_area_is_flat_and_of_a_step_is_monotonic() {
        let mut flat = Frame::filled(9, 7, PixelFormat::Rgb24, Rgb(10, 20, 30));
        flat.blur(clip(0, 0, 9, 7, 9, 7).expect("area"), 3);
        assert!(flat.data.chunks(3).all(|p| p == [10, 20, 30]));
        let mut step = rgb(12, 3, |x, _| if x < 6 { [0; 3] } else { [240; 3] });
        step.blur(clip(0, 0, 12, 3, 12, 3).expect("area"), 2);
        let row: Vec<u8> = (0..12).map(|x| at(&step, x, 1)[0]).collect();
        assert!(row.windows(2).all(|p| p[0] <= p[1]), "{row:?}");
        assert!(row[0] < 20 && row[11] > 220, "{row:?}");
    }

    #[test]
    fn blur_smooths_inside_the_area_only() {
        // A checkerboard: maximal detail.
        let mut f = rgb(
            16,
            16,
            |x, y| if (x + y) % 2 == 0 { [255; 3] } else { [0; 3] },
        );
        f.blur(clip(0, 0, 8, 16, 16, 16).expect("area"), 2);
        let inside = at(&f, 3, 5)[0];
        assert!((100..=155).contains(&inside), "blurred to grey: {inside}");
        assert_eq!(at(&f, 12, 5), &[0; 3], "outside untouched");
        assert_eq!(at(&f, 13, 5), &[255; 3], "outside untouched");
    }

    #[test]
    fn boxes_draw_their_outline_and_overlays_follow_the_mask() {
        let mut f = Frame::filled(10, 10, PixelFormat::Rgb24, Rgb(0, 0, 0));
        f.draw_box(2, 2, 6, 6, Rgb(255, 0, 0), 1);
        assert_eq!(at(&f, 2, 2), &[255, 0, 0]);
        assert_eq!(at(&f, 7, 5), &[255, 0, 0]);
        assert_eq!(at(&f, 5, 7), &[255, 0, 0]);
        assert_eq!(at(&f, 4, 4), &[0, 0, 0], "inside stays");
        f.draw_box(-3, -3, u32::MAX, u32::MAX, Rgb(1, 1, 1), 64);

        let mut base = Frame::filled(4, 4, PixelFormat::Rgb24, Rgb(0, 0, 0));
        let top = Frame::filled(2, 2, PixelFormat::Rgb24, Rgb(200, 100, 50));
        let mut mask = Frame::filled(2, 2, PixelFormat::Gray8, Rgb(0, 0, 0));
        mask.data = vec![255, 0, 128, 0];
        base.overlay(&top, 1, 1, Some(&mask)).expect("overlay");
        assert_eq!(at(&base, 1, 1), &[200, 100, 50]);
        assert_eq!(at(&base, 2, 1), &[0, 0, 0]);
        assert_eq!(at(&base, 1, 2), &[100, 50, 25]);
        base.overlay(&top, -1, 3, None).expect("clipped overlay");
        assert_eq!(at(&base, 0, 3), &[200, 100, 50]);
        let wrong = Frame::filled(3, 3, PixelFormat::Gray8, Rgb(0, 0, 0));
        assert!(base
            .overlay(&top, 0, 0, Some(&wrong))
            .unwrap_err()
            .contains("mask"));
        let grey = Frame::filled(2, 2, PixelFormat::Gray8, Rgb(255, 255, 255));
        base.overlay(&grey, 2, 0, None).expect("converted");
        assert_eq!(at(&base, 3, 0), &[255, 255, 255]);
    }
}
