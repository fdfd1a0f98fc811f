//! SpiceImage (§4.6): the BITMAP and LZ4 image types, and helpers to build and decode them.

use crate::consts::{
    BITMAP_FLAG_PAL_FROM_CACHE, BITMAP_FLAG_TOP_DOWN, BITMAP_FMT_32BIT, BITMAP_FMT_RGBA,
    IMAGE_TYPE_BITMAP, IMAGE_TYPE_LZ4,
};
use crate::error::Error;
use crate::wire::{len_u32, put_u32, put_u64, put_u8, Reader};

/// Size of the image descriptor (`id:u64, type:u8, flags:u8, width:u32, height:u32`).
pub const IMAGE_DESCRIPTOR_LEN: usize = 18;
/// Size of the BitmapData header when the palette field is a u32 pointer.
pub const BITMAP_HEADER_LEN: usize = 18;
/// Largest image [`decode_image_bgrx`] will produce (16384 × 16384 × 4 bytes).
pub const MAX_DECODED_IMAGE_BYTES: usize = 16384 * 16384 * 4;

/// An image as carried by DRAW_COPY: descriptor plus one of the supported payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Cache id (only meaningful with cache flags; a minimal server sets none).
    pub id: u64,
    /// Descriptor flags (1 CACHE_ME, 2 HIGH_BITS_SET, 4 CACHE_REPLACE_ME); use 0.
    pub flags: u8,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The payload.
    pub data: ImageData,
}

/// Image payloads this crate encodes and decodes. Other image types are
/// [`Error::Unsupported`] on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageData {
    /// BITMAP (type 0) with no palette. `pixels` must hold `stride * height` bytes; the
    /// bitmap's own width/height fields are the image's.
    Bitmap {
        /// SpiceBitmapFmt (8 = 32BIT).
        format: u8,
        /// 4 = TOP_DOWN (without it rows are bottom-up); 2 = PAL_FROM_CACHE changes the palette
        /// field to a u64.
        flags: u8,
        /// Bytes per stored row.
        stride: u32,
        /// The rows.
        pixels: Vec<u8>,
    },
    /// LZ4 (type 109): `data = [top_down][format][blocks]`.
    Lz4 {
        /// First decoded row is the top one.
        top_down: bool,
        /// SpiceBitmapFmt of the decoded rows (8 = 32BIT).
        format: u8,
        /// One or more `[compressed_len: u32 big-endian][LZ4 block]`.
        payload: Vec<u8>,
    },
}

impl Image {
    /// A 32BIT TOP_DOWN BITMAP from tightly packed BGRx rows (`width * height * 4` bytes).
    pub fn bitmap_bgrx(id: u64, width: u32, height: u32, bgrx_tight: Vec<u8>) -> Self {
        Image {
            id,
            flags: 0,
            width,
            height,
            data: ImageData::Bitmap {
                format: BITMAP_FMT_32BIT,
                flags: BITMAP_FLAG_TOP_DOWN,
                stride: width.saturating_mul(4),
                pixels: bgrx_tight,
            },
        }
    }

    /// A 32BIT top-down LZ4 image (one block) from tightly packed BGRx rows.
    pub fn lz4_bgrx(id: u64, width: u32, height: u32, bgrx_tight: &[u8]) -> Self {
        Image {
            id,
            flags: 0,
            width,
            height,
            data: ImageData::Lz4 {
                top_down: true,
                format: BITMAP_FMT_32BIT,
                payload: lz4_blocks(bgrx_tight),
            },
        }
    }

    /// The image type byte.
    pub fn image_type(&self) -> u8 {
        match self.data {
            ImageData::Bitmap { .. } => IMAGE_TYPE_BITMAP,
            ImageData::Lz4 { .. } => IMAGE_TYPE_LZ4,
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.id);
        put_u8(out, self.image_type());
        put_u8(out, self.flags);
        put_u32(out, self.width);
        put_u32(out, self.height);
        match &self.data {
            ImageData::Bitmap {
                format,
                flags,
                stride,
                pixels,
            } => {
                put_u8(out, *format);
                put_u8(out, *flags);
                put_u32(out, self.width);
                put_u32(out, self.height);
                put_u32(out, *stride);
                if flags & BITMAP_FLAG_PAL_FROM_CACHE != 0 {
                    put_u64(out, 0);
                } else {
                    put_u32(out, 0);
                }
                out.extend_from_slice(pixels);
            }
            ImageData::Lz4 {
                top_down,
                format,
                payload,
            } => {
                put_u32(out, len_u32(payload.len().saturating_add(2)));
                put_u8(out, u8::from(*top_down));
                put_u8(out, *format);
                out.extend_from_slice(payload);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        let id = r.u64()?;
        let ty = r.u8()?;
        let flags = r.u8()?;
        let width = r.u32()?;
        let height = r.u32()?;
        let data = match ty {
            IMAGE_TYPE_BITMAP => {
                let format = r.u8()?;
                let bflags = r.u8()?;
                let x = r.u32()?;
                let y = r.u32()?;
                let stride = r.u32()?;
                if bflags & BITMAP_FLAG_PAL_FROM_CACHE != 0 {
                    r.u64()?;
                } else {
                    r.u32()?;
                }
                if x != width || y != height {
                    return Err(Error::InvalidData(
                        "bitmap size differs from the image size",
                    ));
                }
                let n = (stride as usize)
                    .checked_mul(y as usize)
                    .ok_or(Error::InvalidData("bitmap size overflow"))?;
                ImageData::Bitmap {
                    format,
                    flags: bflags,
                    stride,
                    pixels: r.bytes(n)?.to_vec(),
                }
            }
            IMAGE_TYPE_LZ4 => {
                let size = r.u32()? as usize;
                let data = r.bytes(size)?;
                let (&[top_down, format], payload) = data
                    .split_first_chunk::<2>()
                    .ok_or(Error::InvalidData("lz4 image data shorter than 2 bytes"))?;
                ImageData::Lz4 {
                    top_down: top_down != 0,
                    format,
                    payload: payload.to_vec(),
                }
            }
            _ => return Err(Error::Unsupported("image type")),
        };
        Ok(Image {
            id,
            flags,
            width,
            height,
            data,
        })
    }
}

/// Compresses `data` into one `[len: u32 BE][raw LZ4 block]` (no size prefix in the block).
pub fn lz4_blocks(data: &[u8]) -> Vec<u8> {
    let block = lz4_flex::block::compress(data);
    let mut out = Vec::with_capacity(4 + block.len());
    out.extend_from_slice(&len_u32(block.len()).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// The complete LZ4 image `data`: `[top_down=1][format=8 (32BIT)][len BE u32][one LZ4 block]`
/// for tightly packed top-down BGRx rows.
pub fn lz4_image_payload(bgrx_tight: &[u8]) -> Vec<u8> {
    let blocks = lz4_blocks(bgrx_tight);
    let mut out = Vec::with_capacity(2 + blocks.len());
    out.push(1);
    out.push(BITMAP_FMT_32BIT);
    out.extend_from_slice(&blocks);
    out
}

/// Decodes a 32-bit image into tightly packed top-down BGRx rows (`width * height * 4` bytes).
///
/// Supports BITMAP with format 32BIT or RGBA (honouring stride and TOP_DOWN / bottom-up) and
/// LZ4 with format 32BIT (one or more blocks; a block may reference earlier output). The
/// decoded size is bounded before anything is allocated; LZ4 output must fill the image
/// exactly.
pub fn decode_image_bgrx(img: &Image) -> Result<Vec<u8>, Error> {
    let width = img.width as usize;
    let height = img.height as usize;
    let row_bytes = width
        .checked_mul(4)
        .ok_or(Error::InvalidData("image too wide"))?;
    let total = row_bytes
        .checked_mul(height)
        .ok_or(Error::InvalidData("image too large"))?;
    if total > MAX_DECODED_IMAGE_BYTES {
        return Err(Error::TooLarge {
            size: total,
            max: MAX_DECODED_IMAGE_BYTES,
        });
    }
    if total == 0 {
        return Ok(Vec::new());
    }
    match &img.data {
        ImageData::Bitmap {
            format,
            flags,
            stride,
            pixels,
        } => {
            if *format != BITMAP_FMT_32BIT && *format != BITMAP_FMT_RGBA {
                return Err(Error::Unsupported("bitmap format"));
            }
            let stride = *stride as usize;
            if stride < row_bytes {
                return Err(Error::InvalidData("bitmap stride smaller than a row"));
            }
            let needed = stride
                .checked_mul(height)
                .ok_or(Error::InvalidData("bitmap too large"))?;
            if pixels.len() < needed {
                return Err(Error::Truncated {
                    what: "bitmap pixels",
                    needed,
                    available: pixels.len(),
                });
            }
            let top_down = flags & BITMAP_FLAG_TOP_DOWN != 0;
            let mut out = Vec::with_capacity(total);
            for y in 0..height {
                let src_row = if top_down { y } else { height - 1 - y };
                let start = src_row * stride;
                let row = pixels
                    .get(start..start + row_bytes)
                    .ok_or(Error::InvalidData("bitmap row out of range"))?;
                out.extend_from_slice(row);
            }
            Ok(out)
        }
        ImageData::Lz4 {
            top_down,
            format,
            payload,
        } => {
            if *format != BITMAP_FMT_32BIT {
                return Err(Error::Unsupported("lz4 image format"));
            }
            // An LZ4 block expands at most ~255x; refuse sizes the payload cannot fill
            // before allocating the output.
            let bound = payload.len().saturating_mul(256).saturating_add(64);
            if total > bound {
                return Err(Error::InvalidData(
                    "lz4 image larger than its payload allows",
                ));
            }
            let mut out = vec![0u8; total];
            let mut written = 0usize;
            let mut r = Reader::new(payload, "lz4 blocks");
            while r.remaining() > 0 {
                let len = r.u32_be()? as usize;
                let block = r.bytes(len)?;
                let (prev, rest) = out.split_at_mut(written);
                let dict = prev.get(prev.len().saturating_sub(65536)..).unwrap_or(&[]);
                let n = lz4_flex::block::decompress_into_with_dict(block, rest, dict)
                    .map_err(|e| Error::Lz4(e.to_string()))?;
                written = written
                    .checked_add(n)
                    .filter(|w| *w <= total)
                    .ok_or(Error::InvalidData("lz4 output overflow"))?;
            }
            if written != total {
                return Err(Error::InvalidData("lz4 image shorter than width*height*4"));
            }
            if !*top_down {
                flip_rows(&mut out, row_bytes);
            }
            Ok(out)
        }
    }
}

/// Reverses the order of `row_bytes`-sized rows in place.
fn flip_rows(buf: &mut [u8], row_bytes: usize) {
    if row_bytes == 0 {
        return;
    }
    let rows = buf.len() / row_bytes;
    for i in 0..rows / 2 {
        let j = rows - 1 - i;
        let (a, b) = buf.split_at_mut(j * row_bytes);
        if let (Some(top), Some(bottom)) = (
            a.get_mut(i * row_bytes..(i + 1) * row_bytes),
            b.get_mut(..row_bytes),
        ) {
            top.swap_with_slice(bottom);
        }
    }
}
