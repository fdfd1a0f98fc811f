//! Clipped drawing primitives on a BGRx buffer. Coordinates are signed so shapes may hang off
//! any edge; everything is clipped to the canvas's clip rectangle (itself inside the surface).

use scanoutd_types::{Rect, BYTES_PER_PIXEL};

use crate::font::{glyph, ADVANCE, GLYPH_H, GLYPH_W};

/// `0xRRGGBB` as the four bytes of one BGRx pixel (X is written as 0, like a fresh `Frame`).
#[inline]
pub(crate) fn bgrx(color: u32) -> [u8; 4] {
    [color as u8, (color >> 8) as u8, (color >> 16) as u8, 0]
}

pub(crate) struct Canvas<'a> {
    buf: &'a mut [u8],
    stride: usize,
    width: u32,
    height: u32,
    clip: Rect,
}

impl<'a> Canvas<'a> {
    /// A canvas over `buf` (rows of `stride` bytes). Rows the buffer is too short to hold, and
    /// columns past what `stride` allows, are treated as outside the surface.
    pub(crate) fn new(
        buf: &'a mut [u8],
        stride: usize,
        width: u32,
        height: u32,
        clip: Rect,
    ) -> Self {
        let width = width.min((stride / BYTES_PER_PIXEL).min(u32::MAX as usize) as u32);
        let row_bytes = width as usize * BYTES_PER_PIXEL;
        let rows_held = if buf.len() < row_bytes || stride == 0 {
            0
        } else {
            (buf.len() - row_bytes) / stride + 1
        };
        let height = height.min(rows_held.min(u32::MAX as usize) as u32);
        let clip = clip.clamp_to(width, height).unwrap_or_default();
        Canvas {
            buf,
            stride,
            width,
            height,
            clip,
        }
    }

    /// Narrow the clip to `r` (within the surface); returns the previous clip for `restore_clip`.
    pub(crate) fn narrow_clip(&mut self, r: Rect) -> Rect {
        let old = self.clip;
        self.clip = old.intersect(&r).unwrap_or_default();
        old
    }

    pub(crate) fn restore_clip(&mut self, old: Rect) {
        self.clip = old.clamp_to(self.width, self.height).unwrap_or_default();
    }

    /// The part of a signed rectangle inside the clip, as `(x0, y0, x1, y1)` (exclusive ends).
    #[inline]
    pub(crate) fn clipped(
        &self,
        x: i64,
        y: i64,
        w: i64,
        h: i64,
    ) -> Option<(usize, usize, usize, usize)> {
        if w <= 0 || h <= 0 {
            return None;
        }
        let c = self.clip;
        let x0 = x.max(c.x as i64);
        let y0 = y.max(c.y as i64);
        let x1 = x.saturating_add(w).min(c.right() as i64);
        let y1 = y.saturating_add(h).min(c.bottom() as i64);
        (x1 > x0 && y1 > y0).then_some((x0 as usize, y0 as usize, x1 as usize, y1 as usize))
    }

    #[inline]
    fn row(&mut self, y: usize, x0: usize, x1: usize) -> &mut [u8] {
        let start = y * self.stride + x0 * BYTES_PER_PIXEL;
        &mut self.buf[start..start + (x1 - x0) * BYTES_PER_PIXEL]
    }

    /// Fill a rectangle with one colour.
    pub(crate) fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, color: u32) {
        let Some((x0, y0, x1, y1)) = self.clipped(x, y, w, h) else {
            return;
        };
        let px = bgrx(color);
        for yy in y0..y1 {
            for p in self.row(yy, x0, x1).chunks_exact_mut(BYTES_PER_PIXEL) {
                p.copy_from_slice(&px);
            }
        }
    }

    /// Fill each row of a rectangle with the colour `row_color(y)` (absolute y).
    pub(crate) fn fill_rows(
        &mut self,
        x: i64,
        y: i64,
        w: i64,
        h: i64,
        row_color: impl Fn(u32) -> u32,
    ) {
        let Some((x0, y0, x1, y1)) = self.clipped(x, y, w, h) else {
            return;
        };
        for yy in y0..y1 {
            let px = bgrx(row_color(yy as u32));
            for p in self.row(yy, x0, x1).chunks_exact_mut(BYTES_PER_PIXEL) {
                p.copy_from_slice(&px);
            }
        }
    }

    /// Set every pixel of a rectangle to `f(x, y)` (absolute coordinates).
    pub(crate) fn shade(
        &mut self,
        x: i64,
        y: i64,
        w: i64,
        h: i64,
        mut f: impl FnMut(u32, u32) -> u32,
    ) {
        let Some((x0, y0, x1, y1)) = self.clipped(x, y, w, h) else {
            return;
        };
        for yy in y0..y1 {
            for (i, p) in self
                .row(yy, x0, x1)
                .chunks_exact_mut(BYTES_PER_PIXEL)
                .enumerate()
            {
                p.copy_from_slice(&bgrx(f((x0 + i) as u32, yy as u32)));
            }
        }
    }

    /// A 1-pixel rectangle outline.
    pub(crate) fn outline(&mut self, x: i64, y: i64, w: i64, h: i64, color: u32) {
        self.fill(x, y, w, 1, color);
        self.fill(x, y + h - 1, w, 1, color);
        self.fill(x, y, 1, h, color);
        self.fill(x + w - 1, y, 1, h, color);
    }

    /// Draw `text` with the 5x7 font, each font pixel `scale` x `scale` screen pixels, top-left
    /// corner at (x, y). Only the glyph pixels are drawn (transparent background).
    pub(crate) fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, color: u32) {
        let n = text.chars().count() as i64;
        if self
            .clipped(x, y, n * ADVANCE * scale, GLYPH_H * scale)
            .is_none()
        {
            return;
        }
        for (i, ch) in text.chars().enumerate() {
            let gx = x + i as i64 * ADVANCE * scale;
            if ch == ' '
                || self
                    .clipped(gx, y, GLYPH_W * scale, GLYPH_H * scale)
                    .is_none()
            {
                continue;
            }
            for (row, bits) in glyph(ch).iter().enumerate() {
                let gy = y + row as i64 * scale;
                // Draw horizontal runs of set bits as single fills.
                let mut col = 0;
                while col < GLYPH_W {
                    if bits & (0x10 >> col) == 0 {
                        col += 1;
                        continue;
                    }
                    let start = col;
                    while col < GLYPH_W && bits & (0x10 >> col) != 0 {
                        col += 1;
                    }
                    self.fill(gx + start * scale, gy, (col - start) * scale, scale, color);
                }
            }
        }
    }

    /// A disc of diameter `d` with its bounding box at (`x`, `y`); `color` gives each row's
    /// colour (row 0 at the top).
    pub(crate) fn disc(&mut self, x: i64, y: i64, d: i64, color: impl Fn(i64) -> u32) {
        for row in 0..d {
            // Pixel centres (2c+1-d)/2 inside the circle of radius d/2, in half-pixel units.
            let dy = 2 * row + 1 - d;
            let Some(c0) = (0..d / 2).find(|col| {
                let dx = 2 * col + 1 - d;
                dx * dx + dy * dy <= d * d
            }) else {
                continue;
            };
            self.fill(x + c0, y + row, d - 2 * c0, 1, color(row));
        }
    }

    /// A dark outlined box over `r` with one line of yellow double-size text, vertically
    /// centred; text that does not fit loses its end, or its start with `keep_tail`.
    pub(crate) fn text_box(&mut self, r: Rect, text: &str, keep_tail: bool) {
        let (x, y, w, h) = (
            i64::from(r.x),
            i64::from(r.y),
            i64::from(r.w),
            i64::from(r.h),
        );
        self.fill(x, y, w, h, 0x10_1418);
        self.outline(x, y, w, h, 0x5A_6470);
        let max_chars = ((w - 16) / 12).max(0) as usize;
        let skip = if keep_tail {
            text.chars().count().saturating_sub(max_chars)
        } else {
            0
        };
        let shown: String = text.chars().skip(skip).take(max_chars).collect();
        self.text(x + 8, y + (h - 14) / 2, &shown, 2, 0xFF_D84A);
    }
}

/// Pixel width of `text` at `scale` (without trailing spacing).
pub(crate) fn text_width(text: &str, scale: i64) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * ADVANCE - (ADVANCE - GLYPH_W)) * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_clips_to_clip_rect_and_surface() {
        let mut buf = vec![0u8; 10 * 4 * 10];
        let mut c = Canvas::new(&mut buf, 40, 10, 10, Rect::new(2, 2, 100, 3));
        c.fill(-5, -5, 100, 100, 0xFFFFFF);
        for y in 0..10usize {
            for x in 0..10usize {
                let on = buf[y * 40 + x * 4] == 0xFF;
                assert_eq!(on, (2..10).contains(&x) && (2..5).contains(&y), "({x},{y})");
            }
        }
    }

    #[test]
    fn short_buffer_is_not_overrun() {
        let mut buf = vec![0u8; 10 * 4 * 3 + 8];
        let mut c = Canvas::new(&mut buf, 40, 10, 10, Rect::new(0, 0, 10, 10));
        c.fill(0, 0, 10, 10, 0x123456);
        c.text(0, 0, "HELLO", 3, 0xFFFFFF);
        assert_eq!(&buf[buf.len() - 8..], &[0; 8]);
    }
}
