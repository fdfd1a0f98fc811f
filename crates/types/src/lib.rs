//! Plain data types shared by every scanoutd crate: frames, damage rectangles, cursor shapes
//! and input events. No I/O, no clocks, no allocation beyond what the values themselves own.
#![forbid(unsafe_code)]

mod cursor;
mod damage;
mod dmabuf;
mod frame;
mod input;
mod video;

pub use cursor::{CursorError, CursorShape, CursorState, MAX_CURSOR_SIDE};
pub use damage::{Damage, Rect, MAX_DAMAGE_RECTS};
pub use dmabuf::{
    Dmabuf, DmabufError, DmabufPlane, Fourcc, DRM_FORMAT_MOD_INVALID, DRM_FORMAT_MOD_LINEAR,
    MAX_DMABUF_PLANES, MAX_DMABUF_SIDE, MAX_DMABUF_STRIDE,
};
pub use frame::{half_size, unix_ms, Frame, BYTES_PER_PIXEL};
pub use input::{InputEvent, InputSink, MouseButton, NullInputSink};
pub use video::{Codec, EncodedFrame, EncoderError, EncoderFactory, NoEncoders, VideoEncoder};
