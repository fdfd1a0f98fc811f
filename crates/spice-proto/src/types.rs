//! Wire sub-structures shared by several messages (§4.2, §4.4, §4.7, §6).

use crate::consts::{CURSOR_FLAG_NONE, ROPD_OP_PUT};
use crate::error::Error;
use crate::image::Image;
use crate::wire::{
    len_u32, patch_u32, put_i16, put_i32, put_u16, put_u32, put_u64, put_u8, Reader,
};

/// A Rect on the wire: `top, left, bottom, right` (i32 each); right/bottom exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SpiceRect {
    /// First row.
    pub top: i32,
    /// First column.
    pub left: i32,
    /// Row after the last one.
    pub bottom: i32,
    /// Column after the last one.
    pub right: i32,
}

impl SpiceRect {
    /// Size on the wire.
    pub const WIRE_LEN: usize = 16;

    /// A rect from its four edges in wire order.
    pub const fn new(top: i32, left: i32, bottom: i32, right: i32) -> Self {
        SpiceRect {
            top,
            left,
            bottom,
            right,
        }
    }

    /// A rect from position and size (saturating).
    pub fn from_xywh(x: i32, y: i32, width: u32, height: u32) -> Self {
        let w = i32::try_from(width).unwrap_or(i32::MAX);
        let h = i32::try_from(height).unwrap_or(i32::MAX);
        SpiceRect {
            top: y,
            left: x,
            bottom: y.saturating_add(h),
            right: x.saturating_add(w),
        }
    }

    /// `right - left`, or 0 if negative.
    pub fn width(&self) -> u32 {
        u32::try_from(i64::from(self.right) - i64::from(self.left)).unwrap_or(0)
    }

    /// `bottom - top`, or 0 if negative.
    pub fn height(&self) -> u32 {
        u32::try_from(i64::from(self.bottom) - i64::from(self.top)).unwrap_or(0)
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_i32(out, self.top);
        put_i32(out, self.left);
        put_i32(out, self.bottom);
        put_i32(out, self.right);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(SpiceRect {
            top: r.i32()?,
            left: r.i32()?,
            bottom: r.i32()?,
            right: r.i32()?,
        })
    }
}

/// A Clip: nothing, or inline rects (`type:u8`, then `num:u32` + rects for RECTS).
///
/// `Rects(vec![])` clips everything away: nothing is drawn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Clip {
    /// No clipping (type 0).
    #[default]
    None,
    /// Draw only inside these rects (type 1).
    Rects(Vec<SpiceRect>),
}

impl Clip {
    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Clip::None => 1,
            Clip::Rects(r) => 5 + 16 * r.len(),
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Clip::None => put_u8(out, 0),
            Clip::Rects(rects) => {
                put_u8(out, 1);
                put_u32(out, len_u32(rects.len()));
                for r in rects {
                    r.encode(out);
                }
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        match r.u8()? {
            0 => Ok(Clip::None),
            1 => {
                let n = r.u32()? as usize;
                r.ensure_items(n, SpiceRect::WIRE_LEN)?;
                let mut rects = Vec::with_capacity(n);
                for _ in 0..n {
                    rects.push(SpiceRect::decode(r)?);
                }
                Ok(Clip::Rects(rects))
            }
            _ => Err(Error::InvalidData("clip type")),
        }
    }
}

/// A fill brush. Only NONE and SOLID are supported (PATTERN decodes as an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Brush {
    /// No brush (type 0).
    #[default]
    None,
    /// Solid colour `0x00RRGGBB` on 32-bit surfaces (type 1).
    Solid(u32),
}

/// Writes an empty QMask (flags 0, pos 0, bitmap NULL).
fn encode_no_mask(out: &mut Vec<u8>) {
    put_u8(out, 0);
    put_i32(out, 0);
    put_i32(out, 0);
    put_u32(out, 0);
}

/// Reads and ignores a QMask (13 bytes).
fn skip_mask(r: &mut Reader<'_>) -> Result<(), Error> {
    r.bytes(13).map(|_| ())
}

/// DRAW_FILL (302): DisplayBase + Brush + rop + QMask (always encoded empty; ignored on decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawFill {
    /// Target surface.
    pub surface_id: u32,
    /// Destination box.
    pub bbox: SpiceRect,
    /// Clip.
    pub clip: Clip,
    /// Brush.
    pub brush: Brush,
    /// Rop descriptor (8 = OP_PUT).
    pub rop: u16,
}

impl DrawFill {
    /// A solid OP_PUT fill of `bbox` with colour `0x00RRGGBB`, no clip.
    pub fn solid(surface_id: u32, bbox: SpiceRect, color: u32) -> Self {
        DrawFill {
            surface_id,
            bbox,
            clip: Clip::None,
            brush: Brush::Solid(color),
            rop: ROPD_OP_PUT,
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.surface_id);
        self.bbox.encode(out);
        self.clip.encode(out);
        match self.brush {
            Brush::None => put_u8(out, 0),
            Brush::Solid(c) => {
                put_u8(out, 1);
                put_u32(out, c);
            }
        }
        put_u16(out, self.rop);
        encode_no_mask(out);
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body, "DRAW_FILL");
        let surface_id = r.u32()?;
        let bbox = SpiceRect::decode(&mut r)?;
        let clip = Clip::decode(&mut r)?;
        let brush = match r.u8()? {
            0 => Brush::None,
            1 => Brush::Solid(r.u32()?),
            2 => return Err(Error::Unsupported("pattern brush")),
            _ => return Err(Error::InvalidData("brush type")),
        };
        let rop = r.u16()?;
        skip_mask(&mut r)?;
        Ok(DrawFill {
            surface_id,
            bbox,
            clip,
            brush,
            rop,
        })
    }
}

/// DRAW_COPY (304): DisplayBase + Copy, with the source [`Image`] following the fixed part.
///
/// The mask is always encoded empty and ignored on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawCopy {
    /// Target surface.
    pub surface_id: u32,
    /// Destination box.
    pub bbox: SpiceRect,
    /// Clip.
    pub clip: Clip,
    /// Region of the image to copy (usually `0, 0, h, w`).
    pub src_area: SpiceRect,
    /// Rop descriptor (8 = OP_PUT).
    pub rop: u16,
    /// Scale mode (0 interpolate, 1 nearest); used only when sizes differ.
    pub scale_mode: u8,
    /// The source image.
    pub image: Image,
}

impl DrawCopy {
    /// An OP_PUT copy of the whole `image` to `(x, y)` on `surface_id`, no clip.
    pub fn put(surface_id: u32, x: i32, y: i32, image: Image) -> Self {
        DrawCopy {
            surface_id,
            bbox: SpiceRect::from_xywh(x, y, image.width, image.height),
            clip: Clip::None,
            src_area: SpiceRect::from_xywh(0, 0, image.width, image.height),
            rop: ROPD_OP_PUT,
            scale_mode: 0,
            image,
        }
    }

    /// Body offset of the image: 57 with no clip, `57 + 4 + 16n` with n clip rects.
    pub fn image_offset(&self) -> usize {
        56 + self.clip.wire_len()
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        put_u32(out, self.surface_id);
        self.bbox.encode(out);
        self.clip.encode(out);
        let ptr_at = out.len();
        put_u32(out, 0);
        self.src_area.encode(out);
        put_u16(out, self.rop);
        put_u8(out, self.scale_mode);
        encode_no_mask(out);
        let image_offset = len_u32(out.len().saturating_sub(start));
        patch_u32(out, ptr_at, image_offset);
        self.image.encode(out);
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body, "DRAW_COPY");
        let surface_id = r.u32()?;
        let bbox = SpiceRect::decode(&mut r)?;
        let clip = Clip::decode(&mut r)?;
        let src_bitmap = r.u32()?;
        let src_area = SpiceRect::decode(&mut r)?;
        let rop = r.u16()?;
        let scale_mode = r.u8()?;
        skip_mask(&mut r)?;
        if src_bitmap == 0 {
            return Err(Error::InvalidData("DRAW_COPY without a source image"));
        }
        let image_bytes = usize::try_from(src_bitmap)
            .ok()
            .and_then(|off| body.get(off..))
            .ok_or(Error::InvalidData("DRAW_COPY image pointer out of range"))?;
        let image = Image::decode(&mut Reader::new(image_bytes, "image"))?;
        Ok(DrawCopy {
            surface_id,
            bbox,
            clip,
            src_area,
            rop,
            scale_mode,
            image,
        })
    }
}

/// MAIN_INIT body (§3.2): eight u32 fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MainInit {
    /// Non-zero session id; the connection_id of every other channel.
    pub session_id: u32,
    /// Number of display channels.
    pub display_channels_hint: u32,
    /// Bitmask: 1 server, 2 client.
    pub supported_mouse_modes: u32,
    /// 1 or 2.
    pub current_mouse_mode: u32,
    /// 0/1.
    pub agent_connected: u32,
    /// Agent tokens granted to the client.
    pub agent_tokens: u32,
    /// Initial client mm clock (ms).
    pub multi_media_time: u32,
    /// QXL RAM size hint.
    pub ram_hint: u32,
}

impl MainInit {
    /// Size on the wire.
    pub const WIRE_LEN: usize = 32;

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.session_id,
            self.display_channels_hint,
            self.supported_mouse_modes,
            self.current_mouse_mode,
            self.agent_connected,
            self.agent_tokens,
            self.multi_media_time,
            self.ram_hint,
        ] {
            put_u32(out, v);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(MainInit {
            session_id: r.u32()?,
            display_channels_hint: r.u32()?,
            supported_mouse_modes: r.u32()?,
            current_mouse_mode: r.u32()?,
            agent_connected: r.u32()?,
            agent_tokens: r.u32()?,
            multi_media_time: r.u32()?,
            ram_hint: r.u32()?,
        })
    }
}

/// One MONITORS_CONFIG head (28 bytes; width/height come before x/y).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Head {
    /// Monitor id (must be < max_allowed).
    pub monitor_id: u32,
    /// Surface (0 for the widget).
    pub surface_id: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// X offset on the surface.
    pub x: u32,
    /// Y offset on the surface.
    pub y: u32,
    /// Flags (0).
    pub flags: u32,
}

impl Head {
    /// Size on the wire.
    pub const WIRE_LEN: usize = 28;

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.monitor_id,
            self.surface_id,
            self.width,
            self.height,
            self.x,
            self.y,
            self.flags,
        ] {
            put_u32(out, v);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(Head {
            monitor_id: r.u32()?,
            surface_id: r.u32()?,
            width: r.u32()?,
            height: r.u32()?,
            x: r.u32()?,
            y: r.u32()?,
            flags: r.u32()?,
        })
    }
}

/// MSGC STREAM_REPORT body (§4.7.6, 32 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StreamReport {
    /// Stream id.
    pub stream_id: u32,
    /// The unique id from STREAM_ACTIVATE_REPORT.
    pub unique_id: u32,
    /// mm_time of the first frame in the report window.
    pub start_frame_mm_time: u32,
    /// mm_time of the last frame in the report window.
    pub end_frame_mm_time: u32,
    /// Frames in the window (0 with `num_drops == u32::MAX`: stream cannot be decoded).
    pub num_frames: u32,
    /// Frames that arrived late.
    pub num_drops: u32,
    /// Margin of the last frame (frame mm_time − client mm_time), ms.
    pub last_frame_delay: i32,
    /// Playback latency, or `u32::MAX` without audio.
    pub audio_delay: u32,
}

impl StreamReport {
    /// Size on the wire.
    pub const WIRE_LEN: usize = 32;

    /// Whether this is the "stream does not exist / cannot be decoded" report.
    pub fn is_unsupported_stream(&self) -> bool {
        self.num_frames == 0 && self.num_drops == u32::MAX
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.stream_id);
        put_u32(out, self.unique_id);
        put_u32(out, self.start_frame_mm_time);
        put_u32(out, self.end_frame_mm_time);
        put_u32(out, self.num_frames);
        put_u32(out, self.num_drops);
        put_i32(out, self.last_frame_delay);
        put_u32(out, self.audio_delay);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(StreamReport {
            stream_id: r.u32()?,
            unique_id: r.u32()?,
            start_frame_mm_time: r.u32()?,
            end_frame_mm_time: r.u32()?,
            num_frames: r.u32()?,
            num_drops: r.u32()?,
            last_frame_delay: r.i32()?,
            audio_delay: r.u32()?,
        })
    }
}

/// CursorHeader (17 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CursorHeader {
    /// Shape id (cache key).
    pub unique: u64,
    /// Cursor type (0 = ALPHA).
    pub ty: u8,
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
    /// Hot spot x.
    pub hot_x: u16,
    /// Hot spot y.
    pub hot_y: u16,
}

impl CursorHeader {
    /// Size on the wire.
    pub const WIRE_LEN: usize = 17;
}

/// A Cursor: flags, a header unless flags has NONE, then shape data to the end of the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// 1 NONE, 2 CACHE_ME, 4 FROM_CACHE.
    pub flags: u16,
    /// Present exactly when NONE is clear (encoded as zeros if missing).
    pub header: Option<CursorHeader>,
    /// Shape data (ALPHA: w×h B,G,R,A top-down).
    pub data: Vec<u8>,
}

impl Cursor {
    /// The "no cursor" value (flags NONE): the client hides its pointer.
    pub fn none() -> Self {
        Cursor {
            flags: CURSOR_FLAG_NONE,
            header: None,
            data: Vec::new(),
        }
    }

    /// An ALPHA cursor from `width*height*4` bytes of B, G, R, A (top-down).
    pub fn alpha(
        unique: u64,
        width: u16,
        height: u16,
        hot_x: u16,
        hot_y: u16,
        bgra: Vec<u8>,
    ) -> Self {
        Cursor {
            flags: 0,
            header: Some(CursorHeader {
                unique,
                ty: crate::consts::CURSOR_TYPE_ALPHA,
                width,
                height,
                hot_x,
                hot_y,
            }),
            data: bgra,
        }
    }

    /// The same shape with CACHE_ME set: the client keeps it under `header.unique` (until
    /// INVAL_ONE, INVAL_ALL, RESET or INIT).
    pub fn cache_me(mut self) -> Self {
        self.flags |= crate::consts::CURSOR_FLAG_CACHE_ME;
        self
    }

    /// A shape the client cached earlier (FROM_CACHE): the header names it by `unique`, no
    /// pixel data follows.
    pub fn from_cache(header: CursorHeader) -> Self {
        Cursor {
            flags: crate::consts::CURSOR_FLAG_FROM_CACHE,
            header: Some(header),
            data: Vec::new(),
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u16(out, self.flags);
        if self.flags & CURSOR_FLAG_NONE == 0 {
            let h = self.header.unwrap_or_default();
            put_u64(out, h.unique);
            put_u8(out, h.ty);
            put_u16(out, h.width);
            put_u16(out, h.height);
            put_u16(out, h.hot_x);
            put_u16(out, h.hot_y);
        }
        out.extend_from_slice(&self.data);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        let flags = r.u16()?;
        let header = if flags & CURSOR_FLAG_NONE == 0 {
            Some(CursorHeader {
                unique: r.u64()?,
                ty: r.u8()?,
                width: r.u16()?,
                height: r.u16()?,
                hot_x: r.u16()?,
                hot_y: r.u16()?,
            })
        } else {
            None
        };
        Ok(Cursor {
            flags,
            header,
            data: r.rest().to_vec(),
        })
    }
}

pub(crate) fn encode_point16(out: &mut Vec<u8>, p: (i16, i16)) {
    put_i16(out, p.0);
    put_i16(out, p.1);
}

pub(crate) fn decode_point16(r: &mut Reader<'_>) -> Result<(i16, i16), Error> {
    Ok((r.i16()?, r.i16()?))
}
