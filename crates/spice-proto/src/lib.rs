//! Sans-io implementation of the SPICE remote-display wire protocol, as spoken by
//! remote-viewer / spice-gtk 0.42.
//!
//! * [`link`]: the link stage (header, link message/reply, [`LinkAcceptor`], ticket);
//! * [`frame`]: mini-header framing ([`decode_frame`], [`encode_header`]) and ACK windows;
//! * [`msg`]: [`ServerMsg`] and [`ClientMsg`] with encoders and decoders;
//! * [`image`]: BITMAP and LZ4 images;
//! * [`input`]: scancode decoding and mouse-motion acks;
//! * [`consts`]: protocol numbers and [`Caps`].
//!
//! Nothing here does I/O, reads clocks or generates randomness. Decoders take bytes and return
//! a value or an [`Error`]; they never panic and bound every allocation by the input size.
//! All integers are little-endian except the LZ4 block lengths inside images.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod consts;
pub mod error;
pub mod frame;
pub mod image;
pub mod input;
pub mod link;
pub mod msg;
pub mod types;
mod wire;

pub use consts::{Caps, ChannelType, LinkError, VideoCodec};
pub use error::Error;
pub use frame::{decode_frame, encode_header, AckCounter, AckWindow, MINI_HEADER_LEN};
pub use image::{decode_image_bgrx, lz4_blocks, lz4_image_payload, Image, ImageData};
pub use input::{scancode_bytes, MotionAck, ScancodeDecoder, SCANCODE_PAUSE};
pub use link::{
    auth_bytes, decode_link_reply, decode_link_result, link_result, LinkAcceptor, LinkEvent,
    LinkFailure, LinkHeader, LinkMess, LinkReply,
};
pub use msg::{ClientMsg, ServerMsg};
pub use types::{
    Brush, Clip, Cursor, CursorHeader, DrawCopy, DrawFill, Head, MainInit, SpiceRect, StreamReport,
};
