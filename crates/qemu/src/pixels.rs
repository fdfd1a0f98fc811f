//! Pixman formats from QEMU's 2D path, their conversion to BGRx, and the shadow surface that
//! `Scanout` and `Update` messages are applied to.
//!
//! Everything here is pure and validates its input: a malformed message (unknown format, a
//! size of zero or beyond [`MAX_DIMENSION`], a stride shorter than a row, too little data, a
//! negative or overflowing rectangle) is an [`FrameError`], never a panic, and leaves the
//! surface as it was.

use scanoutd_types::{Rect, BYTES_PER_PIXEL};

/// The largest width or height accepted (QEMU's own limit for a 2D surface is lower).
pub const MAX_DIMENSION: u32 = 16384;

/// The most pixels a surface may have: 64 Mi (256 MiB of BGRx), above 8K UHD. A D-Bus message
/// is at most 128 MiB, so no real Scanout comes near.
pub const MAX_PIXELS: u64 = 1 << 26;

/// Why a `Scanout` or `Update` could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported pixman format {0:#010x}")]
    UnknownFormat(u32),
    #[error("bad size {width}x{height} (1..={MAX_DIMENSION} each, at most {MAX_PIXELS} pixels)")]
    BadSize { width: i64, height: i64 },
    #[error("bad rectangle at ({x}, {y}) of {width}x{height}")]
    BadRect {
        x: i64,
        y: i64,
        width: i64,
        height: i64,
    },
    #[error("stride {stride} is shorter than a row of {row} bytes")]
    BadStride { stride: u64, row: u64 },
    #[error("{got} bytes of pixel data, {need} needed")]
    ShortData { need: u64, got: u64 },
}

/// The pixman formats this crate converts. Pixman names describe a native-endian pixel word from
/// its most significant bits down; the byte orders given are those of a little-endian host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// `x8r8g8b8` (0x20020888): bytes B, G, R, X. What QEMU's 2D path sends for VGA-like
    /// devices and Linux guests: a plain copy.
    X8R8G8B8,
    /// `a8r8g8b8` (0x20028888): bytes B, G, R, A (alpha dropped).
    A8R8G8B8,
    /// `x8b8g8r8` (0x20030888): bytes R, G, B, X.
    X8B8G8R8,
    /// `a8b8g8r8` (0x20038888): bytes R, G, B, A.
    A8B8G8R8,
    /// `b8g8r8x8` (0x20080888): bytes X, R, G, B.
    B8G8R8X8,
    /// `b8g8r8a8` (0x20088888): bytes A, R, G, B.
    B8G8R8A8,
    /// `r8g8b8x8` (0x20090888): bytes X, B, G, R.
    R8G8B8X8,
    /// `r8g8b8a8` (0x20098888): bytes A, B, G, R.
    R8G8B8A8,
    /// `x2r10g10b10` (0x20020aaa): 10 bits per channel, the top 8 kept.
    X2R10G10B10,
    /// `a2r10g10b10` (0x20022aaa).
    A2R10G10B10,
    /// `r8g8b8` (0x18020888), 24 bpp: bytes B, G, R.
    R8G8B8,
    /// `b8g8r8` (0x18030888), 24 bpp: bytes R, G, B.
    B8G8R8,
    /// `r5g6b5` (0x10020565), 16 bpp.
    R5G6B5,
    /// `x1r5g5b5` (0x10020555), 16 bpp.
    X1R5G5B5,
}

impl PixelFormat {
    /// The format of a pixman format code, `None` for one this crate does not convert.
    pub fn from_pixman(code: u32) -> Option<Self> {
        Some(match code {
            0x2002_0888 => Self::X8R8G8B8,
            0x2002_8888 => Self::A8R8G8B8,
            0x2003_0888 => Self::X8B8G8R8,
            0x2003_8888 => Self::A8B8G8R8,
            0x2008_0888 => Self::B8G8R8X8,
            0x2008_8888 => Self::B8G8R8A8,
            0x2009_0888 => Self::R8G8B8X8,
            0x2009_8888 => Self::R8G8B8A8,
            0x2002_0aaa => Self::X2R10G10B10,
            0x2002_2aaa => Self::A2R10G10B10,
            0x1802_0888 => Self::R8G8B8,
            0x1803_0888 => Self::B8G8R8,
            0x1002_0565 => Self::R5G6B5,
            0x1002_0555 => Self::X1R5G5B5,
            _ => return None,
        })
    }

    /// The pixman code.
    pub fn pixman(self) -> u32 {
        match self {
            Self::X8R8G8B8 => 0x2002_0888,
            Self::A8R8G8B8 => 0x2002_8888,
            Self::X8B8G8R8 => 0x2003_0888,
            Self::A8B8G8R8 => 0x2003_8888,
            Self::B8G8R8X8 => 0x2008_0888,
            Self::B8G8R8A8 => 0x2008_8888,
            Self::R8G8B8X8 => 0x2009_0888,
            Self::R8G8B8A8 => 0x2009_8888,
            Self::X2R10G10B10 => 0x2002_0aaa,
            Self::A2R10G10B10 => 0x2002_2aaa,
            Self::R8G8B8 => 0x1802_0888,
            Self::B8G8R8 => 0x1803_0888,
            Self::R5G6B5 => 0x1002_0565,
            Self::X1R5G5B5 => 0x1002_0555,
        }
    }

    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::R8G8B8 | Self::B8G8R8 => 3,
            Self::R5G6B5 | Self::X1R5G5B5 => 2,
            _ => 4,
        }
    }

    /// Convert one row of `dst.len() / 4` pixels from `src` (at least that many pixels of this
    /// format) to BGRx. Converted formats get X = 0xff; the copied ones keep their fourth byte.
    fn convert_row(self, src: &[u8], dst: &mut [u8]) {
        let n = dst.len() / BYTES_PER_PIXEL;
        let src = &src[..n * self.bytes_per_pixel()];
        let dst = &mut dst[..n * BYTES_PER_PIXEL];
        match self {
            #[cfg(target_endian = "little")]
            Self::X8R8G8B8 | Self::A8R8G8B8 => dst.copy_from_slice(src),
            #[cfg(target_endian = "little")]
            Self::X8B8G8R8 | Self::A8B8G8R8 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                    d.copy_from_slice(&[s[2], s[1], s[0], 0xff]);
                }
            }
            #[cfg(target_endian = "little")]
            Self::B8G8R8X8 | Self::B8G8R8A8 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                    d.copy_from_slice(&[s[3], s[2], s[1], 0xff]);
                }
            }
            #[cfg(target_endian = "little")]
            Self::R8G8B8X8 | Self::R8G8B8A8 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                    d.copy_from_slice(&[s[1], s[2], s[3], 0xff]);
                }
            }
            // Big-endian hosts: go through the native word, whose layout pixman names.
            #[cfg(not(target_endian = "little"))]
            Self::X8R8G8B8
            | Self::A8R8G8B8
            | Self::X8B8G8R8
            | Self::A8B8G8R8
            | Self::B8G8R8X8
            | Self::B8G8R8A8
            | Self::R8G8B8X8
            | Self::R8G8B8A8 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                    let v = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
                    let (r, g, b) = match self {
                        Self::X8R8G8B8 | Self::A8R8G8B8 => (v >> 16, v >> 8, v),
                        Self::X8B8G8R8 | Self::A8B8G8R8 => (v, v >> 8, v >> 16),
                        Self::B8G8R8X8 | Self::B8G8R8A8 => (v >> 8, v >> 16, v >> 24),
                        _ => (v >> 24, v >> 16, v >> 8),
                    };
                    d.copy_from_slice(&[b as u8, g as u8, r as u8, 0xff]);
                }
            }
            Self::X2R10G10B10 | Self::A2R10G10B10 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                    let v = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
                    d.copy_from_slice(&[(v >> 2) as u8, (v >> 12) as u8, (v >> 22) as u8, 0xff]);
                }
            }
            // 24 bpp pixman formats are byte-addressed words too; on a little-endian host
            // r8g8b8 is B, G, R in memory.
            Self::R8G8B8 | Self::B8G8R8 => {
                let swap = (self == Self::B8G8R8) == cfg!(target_endian = "little");
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(3)) {
                    let (b, g, r) = if swap {
                        (s[2], s[1], s[0])
                    } else {
                        (s[0], s[1], s[2])
                    };
                    d.copy_from_slice(&[b, g, r, 0xff]);
                }
            }
            Self::R5G6B5 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(2)) {
                    let v = u16::from_ne_bytes([s[0], s[1]]);
                    d.copy_from_slice(&[
                        expand5(v & 0x1f),
                        expand6((v >> 5) & 0x3f),
                        expand5((v >> 11) & 0x1f),
                        0xff,
                    ]);
                }
            }
            Self::X1R5G5B5 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(2)) {
                    let v = u16::from_ne_bytes([s[0], s[1]]);
                    d.copy_from_slice(&[
                        expand5(v & 0x1f),
                        expand5((v >> 5) & 0x1f),
                        expand5((v >> 10) & 0x1f),
                        0xff,
                    ]);
                }
            }
        }
    }
}

/// 5-bit channel to 8 bits the way pixman expands it (bit replication).
fn expand5(v: u16) -> u8 {
    ((v << 3) | (v >> 2)) as u8
}

fn expand6(v: u16) -> u8 {
    ((v << 2) | (v >> 4)) as u8
}

pub(crate) fn check_size(width: i64, height: i64) -> Result<(u32, u32), FrameError> {
    let ok = (1..=i64::from(MAX_DIMENSION)).contains(&width)
        && (1..=i64::from(MAX_DIMENSION)).contains(&height)
        && (width as u64) * (height as u64) <= MAX_PIXELS;
    if ok {
        Ok((width as u32, height as u32))
    } else {
        Err(FrameError::BadSize { width, height })
    }
}

/// Validate a block of `width` x `height` pixels of `format` at `stride` in `data`.
fn check_source(
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: u32,
    data: &[u8],
) -> Result<(), FrameError> {
    let row = u64::from(width) * format.bytes_per_pixel() as u64;
    let stride = u64::from(stride);
    if stride < row {
        return Err(FrameError::BadStride { stride, row });
    }
    // The last row need only hold its pixels, not a whole stride.
    let need = stride * (u64::from(height) - 1) + row;
    let got = data.len() as u64;
    if got < need {
        return Err(FrameError::ShortData { need, got });
    }
    Ok(())
}

/// A QEMU console's picture as the listener last saw it: BGRx, tightly packed, rows top down.
///
/// `Scanout` replaces it; `Update` paints a rectangle into it. It is the source of truth from
/// which ring slots are filled, so a frame the ring could not take is not lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surface {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

/// What [`Surface::apply_update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The rectangle whose pixels changed (in surface coordinates): the tight box inside the
    /// update's rectangle, or the whole rectangle when the surface grew; when nothing changed,
    /// the update's rectangle.
    pub rect: Rect,
    /// The surface had to grow to hold the rectangle (QEMU switched to a larger surface
    /// without a new `Scanout`, as VGA text mode does).
    pub grew: bool,
    /// Whether any pixel changed (QEMU resends unchanged areas, e.g. the text cursor cell on
    /// every refresh).
    pub changed: bool,
}

impl Surface {
    /// An empty (0x0) surface.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes per row (always `width * 4`).
    pub fn stride(&self) -> usize {
        self.width as usize * BYTES_PER_PIXEL
    }

    /// The BGRx pixels, `stride() * height()` bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The pixel at (x, y) as `0x00RRGGBB`, `None` outside the surface.
    pub fn pixel(&self, x: u32, y: u32) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let o = y as usize * self.stride() + x as usize * BYTES_PER_PIXEL;
        Some(u32::from_le_bytes([
            self.data[o],
            self.data[o + 1],
            self.data[o + 2],
            0,
        ]))
    }

    /// A `Scanout`: a new surface of `width` x `height` with its whole content. Returns
    /// whether anything changed (the size or any pixel).
    pub fn apply_scanout(
        &mut self,
        width: u32,
        height: u32,
        stride: u32,
        pixman_format: u32,
        data: &[u8],
    ) -> Result<bool, FrameError> {
        let format = PixelFormat::from_pixman(pixman_format)
            .ok_or(FrameError::UnknownFormat(pixman_format))?;
        let (width, height) = check_size(i64::from(width), i64::from(height))?;
        check_source(format, width, height, stride, data)?;
        let row = width as usize * BYTES_PER_PIXEL;
        let resized = (width, height) != (self.width, self.height);
        if resized {
            self.data.clear();
            self.data.resize(row * height as usize, 0);
            self.width = width;
            self.height = height;
        }
        let changed = blit(
            format,
            data,
            stride as usize,
            &mut self.data,
            row,
            0,
            0,
            width,
            height,
        );
        Ok(resized || changed.is_some())
    }

    /// An `Update`: paint a `width` x `height` rectangle at (x, y). A rectangle reaching past
    /// the surface grows it (up to the limits); the new area is black.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_update(
        &mut self,
        x: i32,
        y: i32,
        width: i32,
        height: i32,
        stride: u32,
        pixman_format: u32,
        data: &[u8],
    ) -> Result<Applied, FrameError> {
        let format = PixelFormat::from_pixman(pixman_format)
            .ok_or(FrameError::UnknownFormat(pixman_format))?;
        let bad_rect = || FrameError::BadRect {
            x: x.into(),
            y: y.into(),
            width: width.into(),
            height: height.into(),
        };
        if x < 0 || y < 0 || width <= 0 || height <= 0 {
            return Err(bad_rect());
        }
        let right = i64::from(x) + i64::from(width);
        let bottom = i64::from(y) + i64::from(height);
        if right > i64::from(MAX_DIMENSION) || bottom > i64::from(MAX_DIMENSION) {
            return Err(bad_rect());
        }
        let (w, h) = (width as u32, height as u32);
        check_source(format, w, h, stride, data)?;
        let need_w = (right as u32).max(self.width);
        let need_h = (bottom as u32).max(self.height);
        let grew = need_w != self.width || need_h != self.height;
        if grew {
            check_size(need_w.into(), need_h.into())?;
            self.resize(need_w, need_h);
        }
        let row = self.stride();
        let changed = blit(
            format,
            data,
            stride as usize,
            &mut self.data,
            row,
            x as u32,
            y as u32,
            w,
            h,
        );
        let full = Rect::new(x as u32, y as u32, w, h);
        Ok(Applied {
            rect: if grew { full } else { changed.unwrap_or(full) },
            grew,
            changed: changed.is_some() || grew,
        })
    }

    /// Change the size, keeping the pixels of the overlapping area; new area is black. Sizes
    /// outside the limits are refused.
    pub fn set_size(&mut self, width: u32, height: u32) -> Result<bool, FrameError> {
        let (width, height) = check_size(width.into(), height.into())?;
        if width == self.width && height == self.height {
            return Ok(false);
        }
        self.resize(width, height);
        Ok(true)
    }

    /// Grow to at least `width` x `height` (never shrinks), keeping every pixel; new area is
    /// black. Returns whether the size changed.
    pub fn grow_to(&mut self, width: u32, height: u32) -> Result<bool, FrameError> {
        let (w, h) = (width.max(self.width), height.max(self.height));
        self.set_size(w, h)
    }

    fn resize(&mut self, width: u32, height: u32) {
        let old_row = self.stride();
        let new_row = width as usize * BYTES_PER_PIXEL;
        let mut data = vec![0u8; new_row * height as usize];
        let keep_row = old_row.min(new_row);
        for y in 0..self.height.min(height) as usize {
            data[y * new_row..y * new_row + keep_row]
                .copy_from_slice(&self.data[y * old_row..y * old_row + keep_row]);
        }
        self.data = data;
        self.width = width;
        self.height = height;
    }

    /// Copy `rect` (clamped to both) into `dst`, a BGRx buffer of `dst_width` x `dst_height`
    /// at `dst_stride`. Returns the rectangle copied, `None` when nothing overlapped.
    pub fn copy_rect_to(
        &self,
        rect: Rect,
        dst: &mut [u8],
        dst_stride: usize,
        dst_width: u32,
        dst_height: u32,
    ) -> Option<Rect> {
        let r = rect
            .clamp_to(self.width, self.height)?
            .clamp_to(dst_width, dst_height)?;
        let len = r.w as usize * BYTES_PER_PIXEL;
        let src_stride = self.stride();
        for y in r.y as usize..r.bottom() as usize {
            let s = y * src_stride + r.x as usize * BYTES_PER_PIXEL;
            let d = y * dst_stride + r.x as usize * BYTES_PER_PIXEL;
            let (Some(src), Some(dst)) = (self.data.get(s..s + len), dst.get_mut(d..d + len))
            else {
                return None;
            };
            dst.copy_from_slice(src);
        }
        Some(r)
    }
}

/// Convert a validated `width` x `height` block of `format` into BGRx `dst` at (`dx`, `dy`).
/// Returns whether any byte changed: rows equal to what is there are left alone.
#[allow(clippy::too_many_arguments)]
fn blit(
    format: PixelFormat,
    src: &[u8],
    src_stride: usize,
    dst: &mut [u8],
    dst_stride: usize,
    dx: u32,
    dy: u32,
    width: u32,
    height: u32,
) -> Option<Rect> {
    let src_row = width as usize * format.bytes_per_pixel();
    let dst_row = width as usize * BYTES_PER_PIXEL;
    let direct = cfg!(target_endian = "little")
        && matches!(format, PixelFormat::X8R8G8B8 | PixelFormat::A8R8G8B8);
    let mut scratch = if direct {
        Vec::new()
    } else {
        vec![0u8; dst_row]
    };
    // The box of pixels that really changed: QEMU's VGA reports whole scanlines (and resends
    // unchanged ones), and a tight box keeps a clock or a video window from dirtying the rows'
    // static parts.
    let mut changed: Option<(usize, usize, usize, usize)> = None;
    for y in 0..height as usize {
        let s = &src[y * src_stride..y * src_stride + src_row];
        let d = (dy as usize + y) * dst_stride + dx as usize * BYTES_PER_PIXEL;
        let d = &mut dst[d..d + dst_row];
        let converted: &[u8] = if direct {
            s
        } else {
            format.convert_row(s, &mut scratch);
            &scratch
        };
        if d != converted {
            let px = |(a, b): (&[u8], &[u8])| a != b;
            let pairs = || {
                d.chunks_exact(BYTES_PER_PIXEL)
                    .zip(converted.chunks_exact(BYTES_PER_PIXEL))
            };
            let first = pairs().position(px).unwrap_or(0);
            let last = width as usize - 1 - pairs().rev().position(px).unwrap_or(0);
            d.copy_from_slice(converted);
            changed = Some(match changed {
                None => (first, last, y, y),
                Some((x0, x1, y0, _)) => (x0.min(first), x1.max(last), y0, y),
            });
        }
    }
    changed.map(|(x0, x1, y0, y1)| {
        Rect::new(
            dx + x0 as u32,
            dy + y0 as u32,
            (x1 - x0 + 1) as u32,
            (y1 - y0 + 1) as u32,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XRGB: u32 = 0x2002_0888;

    fn px(s: &Surface, x: u32, y: u32) -> u32 {
        s.pixel(x, y).unwrap()
    }

    #[test]
    fn scanout_xrgb_is_a_copy_and_honours_stride() {
        let mut s = Surface::new();
        // 2x2 at stride 12 (4 bytes of padding per row).
        let mut data = vec![0xAAu8; 24];
        data[0..8].copy_from_slice(&[0x01, 0x02, 0x03, 0, 0x04, 0x05, 0x06, 0]);
        data[12..20].copy_from_slice(&[0x07, 0x08, 0x09, 0, 0x0a, 0x0b, 0x0c, 0]);
        s.apply_scanout(2, 2, 12, XRGB, &data).unwrap();
        assert_eq!((s.width(), s.height(), s.stride()), (2, 2, 8));
        assert_eq!(px(&s, 0, 0), 0x030201);
        assert_eq!(px(&s, 1, 0), 0x060504);
        assert_eq!(px(&s, 0, 1), 0x090807);
        assert_eq!(px(&s, 1, 1), 0x0c0b0a);
        // The last row need not carry its padding.
        assert!(!s.apply_scanout(2, 2, 12, XRGB, &data[..20]).unwrap());
    }

    #[test]
    fn every_format_converts_to_the_same_colour() {
        // The colour R=0x12 G=0x34 B=0x56 in each format (little-endian host byte order).
        let cases: &[(u32, Vec<u8>, u32)] = &[
            (0x2002_0888, vec![0x56, 0x34, 0x12, 0x00], 0x123456),
            (0x2002_8888, vec![0x56, 0x34, 0x12, 0x80], 0x123456),
            (0x2003_0888, vec![0x12, 0x34, 0x56, 0x00], 0x123456),
            (0x2003_8888, vec![0x12, 0x34, 0x56, 0x80], 0x123456),
            (0x2008_0888, vec![0x00, 0x12, 0x34, 0x56], 0x123456),
            (0x2008_8888, vec![0x80, 0x12, 0x34, 0x56], 0x123456),
            (0x2009_0888, vec![0x00, 0x56, 0x34, 0x12], 0x123456),
            (0x2009_8888, vec![0x80, 0x56, 0x34, 0x12], 0x123456),
            (0x1802_0888, vec![0x56, 0x34, 0x12], 0x123456),
            (0x1803_0888, vec![0x12, 0x34, 0x56], 0x123456),
            // 10-bit: R=0x12<<2, G=0x34<<2, B=0x56<<2.
            (
                0x2002_0aaa,
                ((0x12u32 << 22) | (0x34 << 12) | (0x56 << 2))
                    .to_le_bytes()
                    .to_vec(),
                0x123456,
            ),
            // 565: R=31 G=0 B=31 -> magenta; expanded to full 0xff.
            (0x1002_0565, 0xf81fu16.to_le_bytes().to_vec(), 0xff00ff),
            // 565: G=63 -> 0xff, R=B=0.
            (0x1002_0565, 0x07e0u16.to_le_bytes().to_vec(), 0x00ff00),
            // 565: R=16 (10000b) -> 0x84.
            (0x1002_0565, (16u16 << 11).to_le_bytes().to_vec(), 0x840000),
            // 1555: R=31, G=1, B=0.
            (
                0x1002_0555,
                ((31u16 << 10) | (1 << 5)).to_le_bytes().to_vec(),
                0xff0800,
            ),
        ];
        for (code, bytes, want) in cases {
            let f = PixelFormat::from_pixman(*code).unwrap();
            assert_eq!(f.pixman(), *code);
            assert_eq!(bytes.len(), f.bytes_per_pixel());
            let mut s = Surface::new();
            s.apply_scanout(1, 1, bytes.len() as u32, *code, bytes)
                .unwrap();
            assert_eq!(px(&s, 0, 0), *want, "format {code:#x}");
        }
    }

    #[test]
    fn whole_scanlines_with_a_small_change_give_a_tight_rect() {
        let (w, h) = (64u32, 8u32);
        let mut s = Surface::new();
        s.apply_scanout(w, h, w * 4, XRGB, &vec![0u8; (w * h * 4) as usize])
            .unwrap();
        // QEMU's VGA resends rows 2..6 whole; only x 10..=20 of rows 3 and 4 differ.
        let mut rows = vec![0u8; (w * 4 * 4) as usize];
        for y in 1..3usize {
            for x in 10..=20usize {
                rows[y * (w as usize) * 4 + x * 4] = 0xff;
            }
        }
        let a = s
            .apply_update(0, 2, w as i32, 4, w * 4, XRGB, &rows)
            .unwrap();
        assert!(a.changed);
        assert_eq!(a.rect, Rect::new(10, 3, 11, 2));
        assert_eq!(px(&s, 20, 4), 0x0000ff);
    }

    #[test]
    fn update_paints_a_rect_and_grows_when_needed() {
        let mut s = Surface::new();
        s.apply_scanout(4, 2, 16, XRGB, &[0u8; 32]).unwrap();
        let a = s
            .apply_update(1, 1, 2, 1, 8, XRGB, &[1, 1, 1, 0, 2, 2, 2, 0])
            .unwrap();
        assert_eq!(
            a,
            Applied {
                rect: Rect::new(1, 1, 2, 1),
                grew: false,
                changed: true
            }
        );
        assert_eq!(px(&s, 1, 1), 0x010101);
        assert_eq!(px(&s, 2, 1), 0x020202);
        assert_eq!(px(&s, 0, 1), 0);
        // The same pixels again change nothing.
        let a = s
            .apply_update(1, 1, 2, 1, 8, XRGB, &[1, 1, 1, 0, 2, 2, 2, 0])
            .unwrap();
        assert!(!a.changed && !a.grew);
        // Past the surface: it grows, keeping what it had.
        let a = s.apply_update(5, 2, 1, 1, 4, XRGB, &[9, 9, 9, 0]).unwrap();
        assert!(a.grew);
        assert_eq!((s.width(), s.height()), (6, 3));
        assert_eq!(px(&s, 2, 1), 0x020202);
        assert_eq!(px(&s, 5, 2), 0x090909);
        assert_eq!(px(&s, 4, 2), 0);
        // An update before any scanout makes a surface.
        let mut t = Surface::new();
        assert!(
            t.apply_update(0, 0, 1, 1, 4, XRGB, &[1, 2, 3, 0])
                .unwrap()
                .grew
        );
        assert_eq!(px(&t, 0, 0), 0x030201);
    }

    #[test]
    fn malformed_input_is_an_error_and_leaves_the_surface_alone() {
        let mut s = Surface::new();
        s.apply_scanout(2, 2, 8, XRGB, &[7u8; 16]).unwrap();
        let before = s.clone();
        let errs = [
            s.apply_scanout(2, 2, 8, 0x1234_5678, &[0; 16]).unwrap_err(),
            s.apply_scanout(0, 2, 8, XRGB, &[0; 16]).unwrap_err(),
            s.apply_scanout(2, 0, 8, XRGB, &[0; 16]).unwrap_err(),
            s.apply_scanout(u32::MAX, u32::MAX, u32::MAX, XRGB, &[0; 16])
                .unwrap_err(),
            s.apply_scanout(MAX_DIMENSION, MAX_DIMENSION, MAX_DIMENSION * 4, XRGB, &[])
                .unwrap_err(),
            s.apply_scanout(2, 2, 4, XRGB, &[0; 16]).unwrap_err(),
            s.apply_scanout(2, 2, 8, XRGB, &[0; 15]).unwrap_err(),
            s.apply_scanout(2, 2, u32::MAX, XRGB, &[0; 16]).unwrap_err(),
            s.apply_update(-1, 0, 1, 1, 4, XRGB, &[0; 4]).unwrap_err(),
            s.apply_update(0, -5, 1, 1, 4, XRGB, &[0; 4]).unwrap_err(),
            s.apply_update(0, 0, 0, 1, 4, XRGB, &[0; 4]).unwrap_err(),
            s.apply_update(0, 0, 1, -1, 4, XRGB, &[0; 4]).unwrap_err(),
            s.apply_update(i32::MAX, 0, i32::MAX, 1, 4, XRGB, &[0; 4])
                .unwrap_err(),
            s.apply_update(0, i32::MAX, 1, 2, 4, XRGB, &[0; 8])
                .unwrap_err(),
            s.apply_update(MAX_DIMENSION as i32, 0, 1, 1, 4, XRGB, &[0; 4])
                .unwrap_err(),
            s.apply_update(0, 0, 2, 2, 8, XRGB, &[0; 15]).unwrap_err(),
            s.apply_update(0, 0, 2, 2, 7, XRGB, &[0; 16]).unwrap_err(),
            s.apply_update(0, 0, 1, 1, 4, 0, &[0; 4]).unwrap_err(),
            // Growing past the pixel budget.
            s.apply_update(16000, 16000, 1, 1, 4, XRGB, &[0; 4])
                .unwrap_err(),
        ];
        assert_eq!(errs[0], FrameError::UnknownFormat(0x1234_5678));
        assert!(matches!(
            errs[6],
            FrameError::ShortData { need: 16, got: 15 }
        ));
        assert!(matches!(
            errs[5],
            FrameError::BadStride { stride: 4, row: 8 }
        ));
        assert_eq!(s, before);
        for e in &errs {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn set_size_keeps_the_overlap() {
        let mut s = Surface::new();
        s.apply_scanout(2, 2, 8, XRGB, &[5u8; 16]).unwrap();
        assert!(s.set_size(3, 1).unwrap());
        assert_eq!(px(&s, 1, 0), 0x050505);
        assert_eq!(px(&s, 2, 0), 0);
        assert!(s.pixel(0, 1).is_none());
        assert!(!s.set_size(3, 1).unwrap());
        assert!(s.set_size(0, 1).is_err());
        assert!(s.grow_to(2, 2).unwrap());
        assert_eq!((s.width(), s.height()), (3, 2));
        assert_eq!(px(&s, 1, 0), 0x050505);
        assert!(!s.grow_to(1, 1).unwrap());
        assert!(s.grow_to(MAX_DIMENSION + 1, 1).is_err());
    }

    #[test]
    fn copy_rect_clamps() {
        let mut s = Surface::new();
        s.apply_scanout(2, 2, 8, XRGB, &[3u8; 16]).unwrap();
        let mut dst = vec![0u8; 3 * 3 * 4];
        let r = s
            .copy_rect_to(Rect::new(1, 1, 10, 10), &mut dst, 12, 3, 3)
            .unwrap();
        assert_eq!(r, Rect::new(1, 1, 1, 1));
        assert_eq!(&dst[16..20], &[3, 3, 3, 3]);
        assert_eq!(&dst[0..4], &[0, 0, 0, 0]);
        assert!(s
            .copy_rect_to(Rect::new(5, 5, 1, 1), &mut dst, 12, 3, 3)
            .is_none());
        // A destination buffer too short for its claimed size is refused, not indexed past.
        assert!(s
            .copy_rect_to(Rect::new(0, 0, 2, 2), &mut dst[..8], 12, 3, 3)
            .is_none());
    }
}
