//! Linux dmabuf descriptions: what QEMU's `ScanoutDMABUF` hands over (fds, layout, format).
//! The fds are owned here; nothing in this module reads them (the GPU crate does).

use std::fmt;
use std::os::fd::OwnedFd;

/// The largest dmabuf side accepted, in pixels.
pub const MAX_DMABUF_SIDE: u32 = 8192;
/// The most memory planes a dmabuf may have (the EGL import attributes go up to plane 3).
pub const MAX_DMABUF_PLANES: usize = 4;
/// The largest row pitch accepted, in bytes: twice the tight pitch of the widest 32-bpp row,
/// which leaves room for any driver alignment.
pub const MAX_DMABUF_STRIDE: u32 = MAX_DMABUF_SIDE * 4 * 2;

/// `DRM_FORMAT_MOD_LINEAR`: plain rows, `stride` bytes apart.
pub const DRM_FORMAT_MOD_LINEAR: u64 = 0;
/// `DRM_FORMAT_MOD_INVALID`: the layout is implicit (driver-private); import it without an
/// explicit modifier. QEMU ≥ 10.1 sends it for modifiers it does not know.
pub const DRM_FORMAT_MOD_INVALID: u64 = 0x00ff_ffff_ffff_ffff;

/// A DRM fourcc format code (`drm_fourcc.h`): four ASCII characters, little-endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fourcc(pub u32);

impl Fourcc {
    /// `XR24`: 32-bit, bytes B, G, R, X in memory (little-endian `0xXXRRGGBB`).
    pub const XRGB8888: Fourcc = Fourcc::from_chars(*b"XR24");
    /// `AR24`: 32-bit, bytes B, G, R, A.
    pub const ARGB8888: Fourcc = Fourcc::from_chars(*b"AR24");
    /// `XB24`: 32-bit, bytes R, G, B, X.
    pub const XBGR8888: Fourcc = Fourcc::from_chars(*b"XB24");
    /// `AB24`: 32-bit, bytes R, G, B, A (what GL's `RGBA8` exports as).
    pub const ABGR8888: Fourcc = Fourcc::from_chars(*b"AB24");

    /// The code for four characters, e.g. `Fourcc::from_chars(*b"XR24")`.
    pub const fn from_chars(c: [u8; 4]) -> Fourcc {
        Fourcc(u32::from_le_bytes(c))
    }

    /// Bytes per pixel of the first plane for the formats this project handles; `None` for
    /// any other code.
    pub const fn bytes_per_pixel(self) -> Option<u32> {
        match self {
            Fourcc::XRGB8888 | Fourcc::ARGB8888 | Fourcc::XBGR8888 | Fourcc::ABGR8888 => Some(4),
            _ => None,
        }
    }
}

impl fmt::Display for Fourcc {
    /// The four characters when they are printable ASCII, else the hex value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0.to_le_bytes();
        if c.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            c.iter().try_for_each(|&b| write!(f, "{}", b as char))
        } else {
            write!(f, "{:#010x}", self.0)
        }
    }
}

impl fmt::Debug for Fourcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fourcc({self})")
    }
}

/// One memory plane: the fd holding it and where its rows are.
#[derive(Debug)]
pub struct DmabufPlane {
    pub fd: OwnedFd,
    /// Byte offset of the first row in the buffer.
    pub offset: u32,
    /// Bytes from one row to the next (the pitch).
    pub stride: u32,
}

/// A dmabuf scanout as QEMU describes it (`ScanoutDMABUF`: one plane, no x/y offset).
///
/// `y0_top` follows QEMU: **`false` = an ordinary top-down image** (memory row 0 is the top),
/// **`true` = stored bottom-up** (memory row 0 is the bottom, GL's convention), so a reader
/// must flip it vertically.
#[derive(Debug)]
pub struct Dmabuf {
    /// 1..=[`MAX_DMABUF_PLANES`] planes; QEMU sends one.
    pub planes: Vec<DmabufPlane>,
    pub width: u32,
    pub height: u32,
    pub fourcc: Fourcc,
    /// DRM format modifier; [`DRM_FORMAT_MOD_INVALID`] for an implicit layout.
    pub modifier: u64,
    pub y0_top: bool,
}

/// Why a dmabuf description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmabufError {
    #[error("dmabuf size {width}x{height} is outside 1..={MAX_DMABUF_SIDE} per side")]
    BadSize { width: u32, height: u32 },
    #[error("dmabuf has {0} planes (1..={MAX_DMABUF_PLANES} allowed)")]
    BadPlaneCount(usize),
    #[error("unsupported dmabuf format {0}")]
    UnknownFourcc(Fourcc),
    #[error("dmabuf stride {stride} is below {min} ({width} pixels of {bpp} bytes) or above {MAX_DMABUF_STRIDE}")]
    BadStride {
        stride: u32,
        min: u32,
        width: u32,
        bpp: u32,
    },
    #[error(
        "dmabuf plane {plane} ends beyond 4 GiB (offset {offset}, stride {stride}, {height} rows)"
    )]
    TooLarge {
        plane: usize,
        offset: u32,
        stride: u32,
        height: u32,
    },
}

impl Dmabuf {
    /// The single-plane buffer QEMU's `ScanoutDMABUF` describes, checked with
    /// [`Dmabuf::validate`].
    pub fn single_plane(
        fd: OwnedFd,
        width: u32,
        height: u32,
        stride: u32,
        fourcc: Fourcc,
        modifier: u64,
        y0_top: bool,
    ) -> Result<Dmabuf, DmabufError> {
        let d = Dmabuf {
            planes: vec![DmabufPlane {
                fd,
                offset: 0,
                stride,
            }],
            width,
            height,
            fourcc,
            modifier,
            y0_top,
        };
        d.validate()?;
        Ok(d)
    }

    /// Whether the description is one this project handles: 1..=[`MAX_DMABUF_SIDE`] per side,
    /// 1..=[`MAX_DMABUF_PLANES`] planes, a known 32-bpp fourcc, a first-plane stride of at
    /// least `width * 4` (and at most [`MAX_DMABUF_STRIDE`]), and every plane's
    /// `offset + stride * height` within 4 GiB. Whether the fd is big enough is for the
    /// importer to check (it needs I/O).
    pub fn validate(&self) -> Result<(), DmabufError> {
        let side = 1..=MAX_DMABUF_SIDE;
        if !side.contains(&self.width) || !side.contains(&self.height) {
            return Err(DmabufError::BadSize {
                width: self.width,
                height: self.height,
            });
        }
        if !(1..=MAX_DMABUF_PLANES).contains(&self.planes.len()) {
            return Err(DmabufError::BadPlaneCount(self.planes.len()));
        }
        let Some(bpp) = self.fourcc.bytes_per_pixel() else {
            return Err(DmabufError::UnknownFourcc(self.fourcc));
        };
        let min = self.width * bpp; // ≤ 8192 * 4: no overflow
        let stride = self.planes[0].stride;
        if stride < min || stride > MAX_DMABUF_STRIDE {
            return Err(DmabufError::BadStride {
                stride,
                min,
                width: self.width,
                bpp,
            });
        }
        for (i, p) in self.planes.iter().enumerate() {
            let end = u64::from(p.offset) + u64::from(p.stride) * u64::from(self.height);
            if end > u64::from(u32::MAX) {
                return Err(DmabufError::TooLarge {
                    plane: i,
                    offset: p.offset,
                    stride: p.stride,
                    height: self.height,
                });
            }
        }
        Ok(())
    }

    /// Bytes the first plane must span for a linear layout: from its offset to the end of
    /// the last row's pixels.
    pub fn linear_extent(&self) -> u64 {
        let Some(p) = self.planes.first() else {
            return 0;
        };
        let bpp = u64::from(self.fourcc.bytes_per_pixel().unwrap_or(4));
        u64::from(p.offset)
            + u64::from(p.stride) * u64::from(self.height.saturating_sub(1))
            + u64::from(self.width) * bpp
    }

    /// Whether the modifier is explicit (anything but [`DRM_FORMAT_MOD_INVALID`]).
    pub fn has_explicit_modifier(&self) -> bool {
        self.modifier != DRM_FORMAT_MOD_INVALID
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        // Any fd will do: validation never reads it.
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn buf(width: u32, height: u32, stride: u32, fourcc: Fourcc) -> Dmabuf {
        Dmabuf {
            planes: vec![DmabufPlane {
                fd: fd(),
                offset: 0,
                stride,
            }],
            width,
            height,
            fourcc,
            modifier: DRM_FORMAT_MOD_LINEAR,
            y0_top: false,
        }
    }

    #[test]
    fn fourcc_codes_and_names() {
        assert_eq!(Fourcc::XRGB8888.0, 0x3432_5258);
        assert_eq!(Fourcc::ABGR8888.0, 0x3432_4241);
        assert_eq!(Fourcc::XRGB8888.to_string(), "XR24");
        assert_eq!(format!("{:?}", Fourcc::XBGR8888), "Fourcc(XB24)");
        assert_eq!(Fourcc(1).to_string(), "0x00000001");
        assert_eq!(Fourcc::from_chars(*b"NV12").bytes_per_pixel(), None);
    }

    #[test]
    fn validate_accepts_good_buffers() {
        for f in [
            Fourcc::XRGB8888,
            Fourcc::ARGB8888,
            Fourcc::XBGR8888,
            Fourcc::ABGR8888,
        ] {
            buf(1920, 1080, 1920 * 4, f).validate().unwrap();
        }
        buf(8192, 8192, 8192 * 4, Fourcc::XRGB8888)
            .validate()
            .unwrap();
        buf(1, 1, 256, Fourcc::XRGB8888).validate().unwrap();
        let d = Dmabuf::single_plane(fd(), 640, 480, 2560, Fourcc::XRGB8888, 0, true).unwrap();
        assert_eq!(d.linear_extent(), 2560 * 479 + 2560);
        assert!(d.has_explicit_modifier());
    }

    #[test]
    fn validate_rejects_bad_buffers() {
        assert!(matches!(
            buf(0, 10, 0, Fourcc::XRGB8888).validate(),
            Err(DmabufError::BadSize { .. })
        ));
        assert!(matches!(
            buf(8193, 10, 8193 * 4, Fourcc::XRGB8888).validate(),
            Err(DmabufError::BadSize { .. })
        ));
        assert!(matches!(
            buf(10, 10, 39, Fourcc::XRGB8888).validate(),
            Err(DmabufError::BadStride { .. })
        ));
        assert!(matches!(
            buf(10, 10, MAX_DMABUF_STRIDE + 4, Fourcc::XRGB8888).validate(),
            Err(DmabufError::BadStride { .. })
        ));
        assert_eq!(
            buf(10, 10, 40, Fourcc::from_chars(*b"NV12")).validate(),
            Err(DmabufError::UnknownFourcc(Fourcc::from_chars(*b"NV12")))
        );
        let mut none = buf(10, 10, 40, Fourcc::XRGB8888);
        none.planes.clear();
        assert_eq!(none.validate(), Err(DmabufError::BadPlaneCount(0)));
        let mut far = buf(10, 10, 40, Fourcc::XRGB8888);
        far.planes[0].offset = u32::MAX - 100;
        assert!(matches!(far.validate(), Err(DmabufError::TooLarge { .. })));
        let e = buf(10, 10, 40, Fourcc::from_chars(*b"NV12"))
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "unsupported dmabuf format NV12");
    }

    #[test]
    fn mod_invalid_is_implicit() {
        let mut d = buf(4, 4, 16, Fourcc::XRGB8888);
        d.modifier = DRM_FORMAT_MOD_INVALID;
        assert!(!d.has_explicit_modifier());
        d.validate().unwrap();
    }
}
