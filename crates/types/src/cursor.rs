//! The pointer: its image and where the source shows it. Sources (QEMU) describe it with
//! [`CursorState`]; the SPICE server turns that into cursor-channel messages.

use std::sync::Arc;

/// The largest cursor image side accepted, in pixels (256 × 256 × 4 = 256 KiB at most).
pub const MAX_CURSOR_SIDE: u16 = 256;

/// Why a cursor image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor size {width}x{height} is outside 1..={MAX_CURSOR_SIDE} per side")]
    BadSize { width: u32, height: u32 },
    #[error("cursor {width}x{height} needs {need} bytes of pixels, got {got}")]
    BadLength {
        width: u32,
        height: u32,
        need: usize,
        got: usize,
    },
}

/// A pointer image: `width * height` pixels of BGRA (little-endian `0xAARRGGBB` words, i.e.
/// bytes B, G, R, A), top-down, no padding. The hot spot is the pixel that points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorShape {
    pub width: u16,
    pub height: u16,
    pub hot_x: u16,
    pub hot_y: u16,
    pub pixels: Vec<u8>,
}

impl CursorShape {
    /// A checked image: 1..=[`MAX_CURSOR_SIDE`] per side and exactly `width * height * 4`
    /// bytes; a hot spot outside the image is clamped to its last column / row.
    pub fn new(
        width: u32,
        height: u32,
        hot_x: u32,
        hot_y: u32,
        pixels: Vec<u8>,
    ) -> Result<Self, CursorError> {
        let side = 1..=u32::from(MAX_CURSOR_SIDE);
        if !side.contains(&width) || !side.contains(&height) {
            return Err(CursorError::BadSize { width, height });
        }
        let need = width as usize * height as usize * 4;
        if pixels.len() != need {
            return Err(CursorError::BadLength {
                width,
                height,
                need,
                got: pixels.len(),
            });
        }
        Ok(CursorShape {
            width: width as u16,
            height: height as u16,
            hot_x: hot_x.min(width - 1) as u16,
            hot_y: hot_y.min(height - 1) as u16,
            pixels,
        })
    }

    /// Whether a shape built field by field keeps the rules of [`CursorShape::new`] (the hot
    /// spot excepted, which consumers clamp).
    pub fn check(&self) -> Result<(), CursorError> {
        let (width, height) = (u32::from(self.width), u32::from(self.height));
        if !(1..=MAX_CURSOR_SIDE).contains(&self.width)
            || !(1..=MAX_CURSOR_SIDE).contains(&self.height)
        {
            return Err(CursorError::BadSize { width, height });
        }
        let need = width as usize * height as usize * 4;
        if self.pixels.len() != need {
            return Err(CursorError::BadLength {
                width,
                height,
                need,
                got: self.pixels.len(),
            });
        }
        Ok(())
    }

    /// The pixel at (x, y) as `0xAARRGGBB`; `None` outside the image.
    pub fn pixel(&self, x: u16, y: u16) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let o = (y as usize * self.width as usize + x as usize) * 4;
        let p = self.pixels.get(o..o + 4)?;
        Some(u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
    }

    /// The built-in pointer shown when a source defines none: a 32×32 white arrow with a black
    /// outline, hot spot at its tip (0, 0).
    pub fn arrow() -> Self {
        const N: usize = 32;
        let inside = |x: i32, y: i32| {
            (0..=18).contains(&y) && x >= 0 && x <= y * 2 / 3 && !(y == 18 && x > 0)
        };
        let mut pixels = vec![0u8; N * N * 4];
        for y in 0..N as i32 {
            for x in 0..N as i32 {
                if inside(x, y) {
                    let edge = !inside(x - 1, y)
                        || !inside(x + 1, y)
                        || !inside(x, y - 1)
                        || !inside(x, y + 1);
                    let c = if edge { 0x00 } else { 0xff };
                    let o = (y as usize * N + x as usize) * 4;
                    pixels[o..o + 4].copy_from_slice(&[c, c, c, 0xff]);
                }
            }
        }
        CursorShape {
            width: N as u16,
            height: N as u16,
            hot_x: 0,
            hot_y: 0,
            pixels,
        }
    }
}

/// What a source says about its pointer, shared through a watch channel (latest wins; a
/// consumer that falls behind only ever sees the newest state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorState {
    /// The image; `None` when the source defines none, and clients show a default arrow.
    pub shape: Option<Arc<CursorShape>>,
    /// Where the hot spot is, in display pixels.
    pub x: i32,
    pub y: i32,
    /// Whether the pointer is shown at all (`false`: hidden).
    pub visible: bool,
}

impl Default for CursorState {
    /// No shape of its own, shown: the default arrow.
    fn default() -> Self {
        CursorState {
            shape: None,
            x: 0,
            y: 0,
            visible: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_size_and_length_and_clamps_the_hot_spot() {
        let c = CursorShape::new(2, 1, 7, 9, vec![1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!((c.width, c.height, c.hot_x, c.hot_y), (2, 1, 1, 0));
        assert_eq!(c.pixel(1, 0), Some(0x0807_0605));
        assert_eq!(c.pixel(2, 0), None);
        assert!(c.check().is_ok());

        assert_eq!(
            CursorShape::new(0, 1, 0, 0, vec![]),
            Err(CursorError::BadSize {
                width: 0,
                height: 1
            })
        );
        assert!(CursorShape::new(257, 1, 0, 0, vec![0; 257 * 4]).is_err());
        assert!(CursorShape::new(1, 257, 0, 0, vec![0; 257 * 4]).is_err());
        assert!(CursorShape::new(256, 256, 0, 0, vec![0; 256 * 256 * 4]).is_ok());
        assert!(matches!(
            CursorShape::new(2, 2, 0, 0, vec![0; 15]),
            Err(CursorError::BadLength {
                need: 16,
                got: 15,
                ..
            })
        ));
        assert!(CursorShape::new(2, 2, 0, 0, vec![0; 17]).is_err());

        let mut big = CursorShape::arrow();
        assert!(big.check().is_ok());
        big.width = 512;
        assert!(big.check().is_err());
        let mut short = CursorShape::arrow();
        short.pixels.pop();
        assert!(short.check().is_err());
    }

    #[test]
    fn the_arrow_is_opaque_at_its_tip_and_transparent_elsewhere() {
        let a = CursorShape::arrow();
        assert_eq!((a.width, a.height, a.hot_x, a.hot_y), (32, 32, 0, 0));
        assert_eq!(a.pixel(0, 0), Some(0xff00_0000)); // black outline at the tip
        assert_eq!(a.pixel(3, 10), Some(0xffff_ffff)); // white inside
        assert_eq!(a.pixel(31, 31), Some(0)); // transparent
    }

    #[test]
    fn default_state_shows_the_default_arrow() {
        let s = CursorState::default();
        assert!(s.shape.is_none() && s.visible);
    }
}
