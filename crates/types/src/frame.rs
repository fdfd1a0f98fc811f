//! CPU-side frames.

use crate::Rect;

/// Every CPU frame is 32-bit BGRx: bytes B, G, R, X in memory (little-endian `0xXXRRGGBB`),
/// which is SPICE's 32BIT bitmap format and most guests' scanout format.
pub const BYTES_PER_PIXEL: usize = 4;

/// The wall clock in Unix milliseconds, the unit of [`Frame::capture_ms`] (0 if the clock is
/// before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One complete picture of a display, BGRx, rows top to bottom.
///
/// `clone_from` reuses the destination's pixel buffer (no allocation when it is large
/// enough), which is what the frame ring relies on to recycle its slots.
#[derive(PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// Bytes per row, at least `width * 4`.
    pub stride: usize,
    pub data: Vec<u8>,
    /// Capture time, Unix milliseconds.
    pub capture_ms: u64,
    /// Sequence number from the source, increasing by one per produced frame.
    pub seq: u64,
}

impl Clone for Frame {
    fn clone(&self) -> Self {
        Frame {
            width: self.width,
            height: self.height,
            stride: self.stride,
            data: self.data.clone(),
            capture_ms: self.capture_ms,
            seq: self.seq,
        }
    }

    /// Copy `source` into `self`, keeping `self`'s buffer when it has the capacity (a derived
    /// `clone_from` would allocate a whole new frame).
    fn clone_from(&mut self, source: &Self) {
        self.width = source.width;
        self.height = source.height;
        self.stride = source.stride;
        self.data.clone_from(&source.data);
        self.capture_ms = source.capture_ms;
        self.seq = source.seq;
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("stride", &self.stride)
            .field("capture_ms", &self.capture_ms)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Frame {
    /// A black frame with a tight stride.
    pub fn new(width: u32, height: u32) -> Self {
        let stride = width as usize * BYTES_PER_PIXEL;
        Frame {
            width,
            height,
            stride,
            data: vec![0; stride * height as usize],
            capture_ms: 0,
            seq: 0,
        }
    }

    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// The pixel at (x, y) as `0x00RRGGBB`. Panics on out-of-range coordinates, like indexing.
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        let o = y as usize * self.stride + x as usize * BYTES_PER_PIXEL;
        u32::from_le_bytes([self.data[o], self.data[o + 1], self.data[o + 2], 0])
    }

    /// Copy the pixels of `rect` (clamped to both frames) from `src`, which has the same size,
    /// into the same place of `self`. Returns the bytes copied (0 when the sizes differ or
    /// nothing is left of `rect`).
    pub fn copy_rect_from(&mut self, src: &Frame, rect: Rect) -> usize {
        if (src.width, src.height) != (self.width, self.height) {
            return 0;
        }
        let Some(r) = rect.clamp_to(self.width, self.height) else {
            return 0;
        };
        let row = r.w as usize * BYTES_PER_PIXEL;
        for y in r.y as usize..r.bottom() as usize {
            let s = y * src.stride + r.x as usize * BYTES_PER_PIXEL;
            let d = y * self.stride + r.x as usize * BYTES_PER_PIXEL;
            self.data[d..d + row].copy_from_slice(&src.data[s..s + row]);
        }
        row * r.h as usize
    }

    /// Copy the pixels of `rect` (clamped to the frame) out as tightly packed BGRx rows.
    /// Returns the clamped rectangle with its pixels; `None` when nothing is left.
    pub fn extract(&self, rect: Rect) -> Option<(Rect, Vec<u8>)> {
        let r = rect.clamp_to(self.width, self.height)?;
        let row = r.w as usize * BYTES_PER_PIXEL;
        let mut out = Vec::with_capacity(row * r.h as usize);
        for y in r.y..r.bottom() {
            let start = y as usize * self.stride + r.x as usize * BYTES_PER_PIXEL;
            out.extend_from_slice(&self.data[start..start + row]);
        }
        Some((r, out))
    }
}

/// The size `w` x `h` has at half resolution: halved, even (encoders need even sizes), at
/// least 2.
pub fn half_size(w: u32, h: u32) -> (u32, u32) {
    (((w / 2) & !1).max(2), ((h / 2) & !1).max(2))
}

impl Frame {
    /// The pixels of `rect` (which must lie inside the frame) at half resolution
    /// ([`half_size`]), each the average of a 2x2 block, as tightly packed BGRx rows: for a
    /// stream encoded smaller than it is shown when the link cannot carry its full size.
    pub fn extract_half(&self, rect: Rect) -> Option<(Rect, Vec<u8>)> {
        let r = rect.clamp_to(self.width, self.height)?;
        if r != rect || r.w < 4 || r.h < 4 {
            return None;
        }
        let (w2, h2) = half_size(r.w, r.h);
        let mut out = vec![0u8; w2 as usize * h2 as usize * BYTES_PER_PIXEL];
        for y in 0..h2 as usize {
            let row0 = (r.y as usize + 2 * y) * self.stride + r.x as usize * BYTES_PER_PIXEL;
            let row1 = row0 + self.stride;
            let dst =
                &mut out[y * w2 as usize * BYTES_PER_PIXEL..][..w2 as usize * BYTES_PER_PIXEL];
            for (x, px) in dst.chunks_exact_mut(BYTES_PER_PIXEL).enumerate() {
                let a = row0 + 2 * x * BYTES_PER_PIXEL;
                let b = row1 + 2 * x * BYTES_PER_PIXEL;
                for (c, out) in px.iter_mut().take(3).enumerate() {
                    let sum = u16::from(self.data[a + c])
                        + u16::from(self.data[a + BYTES_PER_PIXEL + c])
                        + u16::from(self.data[b + c])
                        + u16::from(self.data[b + BYTES_PER_PIXEL + c]);
                    *out = ((sum + 2) / 4) as u8;
                }
            }
        }
        Some((r, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_resolution_averages_2x2_blocks() {
        let mut f = Frame::new(8, 6);
        for y in 0..6u32 {
            for x in 0..8u32 {
                let o = y as usize * f.stride + x as usize * 4;
                f.data[o] = (x * 10 + y) as u8;
                f.data[o + 1] = 200;
                f.data[o + 2] = if (x + y) % 2 == 0 { 255 } else { 1 };
            }
        }
        assert_eq!(half_size(8, 6), (4, 2));
        assert_eq!(half_size(1280, 720), (640, 360));
        assert_eq!(half_size(1916, 1080), (958, 540));
        let (r, px) = f.extract_half(Rect::new(2, 0, 6, 6)).unwrap();
        assert_eq!(r, Rect::new(2, 0, 6, 6));
        // 6x6 -> 3x3 -> even: 2x2.
        assert_eq!(px.len(), 2 * 2 * 4);
        // Block (2..4, 0..2): blue 20,21,30,31 -> 25.5 -> 26; green 200; red avg(255,1) = 128.
        assert_eq!(&px[0..3], &[26, 200, 128]);
        // Block (4..6, 2..4): 42,43,52,53 -> 47.5 -> 48.
        assert_eq!(px[(2 + 1) * 4], 48);
        assert_eq!(
            f.extract_half(Rect::new(6, 0, 6, 6)),
            None,
            "outside the frame"
        );
    }

    #[test]
    fn copy_rect_from_copies_only_the_rect() {
        let mut src = Frame::new(4, 3);
        src.data
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        let mut dst = Frame::new(4, 3);
        assert_eq!(dst.copy_rect_from(&src, Rect::new(1, 1, 2, 5)), 2 * 2 * 4);
        for y in 0..3 {
            for x in 0..4 {
                let want = if (1..3).contains(&x) && y >= 1 {
                    src.pixel(x, y)
                } else {
                    0
                };
                assert_eq!(dst.pixel(x, y), want, "({x}, {y})");
            }
        }
        assert_eq!(
            dst.copy_rect_from(&Frame::new(2, 2), Rect::new(0, 0, 1, 1)),
            0
        );
        assert_eq!(dst.copy_rect_from(&src, Rect::new(9, 9, 1, 1)), 0);
    }

    #[test]
    fn extract_clamps_and_packs_rows() {
        let mut f = Frame::new(4, 3);
        for y in 0..3u32 {
            for x in 0..4u32 {
                let o = y as usize * f.stride + x as usize * 4;
                f.data[o] = (y * 4 + x) as u8;
            }
        }
        let (r, px) = f.extract(Rect::new(2, 1, 10, 10)).unwrap();
        assert_eq!(r, Rect::new(2, 1, 2, 2));
        let blues: Vec<u8> = px.chunks(4).map(|p| p[0]).collect();
        assert_eq!(blues, vec![6, 7, 10, 11]);
        assert!(f.extract(Rect::new(4, 0, 1, 1)).is_none());
    }

    #[test]
    fn pixel_reads_bgrx() {
        let mut f = Frame::new(1, 1);
        f.data.copy_from_slice(&[0x33, 0x22, 0x11, 0xff]);
        assert_eq!(f.pixel(0, 0), 0x112233);
    }
}
