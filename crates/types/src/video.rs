//! The interface between whoever decides to stream (the SPICE server) and whoever encodes
//! (the GStreamer `encode` crate). Defined here so neither depends on the other.

use std::fmt;
use std::time::Duration;

/// A video codec a SPICE client may decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    H264,
    H265,
    Vp8,
    Vp9,
    Mjpeg,
}

impl Codec {
    /// Every codec, in the order the server prefers them when a client decodes several:
    /// H.264 (cheap to encode, decoded everywhere), VP8, VP9, H.265 (the slowest software
    /// encoder), then MJPEG (the largest frames).
    pub const ALL: [Codec; 5] = [
        Codec::H264,
        Codec::Vp8,
        Codec::Vp9,
        Codec::H265,
        Codec::Mjpeg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Vp8 => "vp8",
            Codec::Vp9 => "vp9",
            Codec::Mjpeg => "mjpeg",
        }
    }

    pub fn from_name(s: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Codec::from_name(s)
            .ok_or_else(|| format!("unknown codec {s:?} (expected h264, h265, vp8, vp9 or mjpeg)"))
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One encoded picture: for H.264/H.265 one Annex-B access unit with parameter sets in band
/// on keyframes; for VP8/VP9 one frame; for MJPEG one JPEG image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// The `pts_ms` the frame was submitted with.
    pub pts_ms: u64,
    /// Time spent from submit to output.
    pub encode_time: Duration,
}

/// Why an encoder could not be created or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderError(pub String);

impl fmt::Display for EncoderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncoderError {}

/// A running encoder for one stream of one client. Calls block (they run on a blocking
/// thread, never on the async runtime).
pub trait VideoEncoder: Send {
    /// Encode one BGRx picture of the configured size. `None` when the encoder produced
    /// nothing for it within its own time limit.
    fn encode(
        &mut self,
        bgrx: &[u8],
        stride: usize,
        pts_ms: u64,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncoderError>;
    /// Change the target bitrate while running.
    fn set_bitrate(&mut self, kbps: u32) -> Result<(), EncoderError>;
    fn codec(&self) -> Codec;
    /// The implementation's name (for logs and metrics), e.g. "x264enc".
    fn name(&self) -> &str;
}

/// Makes encoders. Shared by every client.
pub trait EncoderFactory: Send + Sync {
    /// Codecs that can be encoded here, best first.
    fn codecs(&self) -> Vec<Codec>;
    /// An encoder for `width` x `height` (both even) at `fps` and `kbps`.
    fn create(
        &self,
        codec: Codec,
        width: u32,
        height: u32,
        fps: u32,
        kbps: u32,
    ) -> Result<Box<dyn VideoEncoder>, EncoderError>;
}

/// No encoders at all: everything goes out as drawables.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEncoders;

impl EncoderFactory for NoEncoders {
    fn codecs(&self) -> Vec<Codec> {
        Vec::new()
    }

    fn create(
        &self,
        codec: Codec,
        _width: u32,
        _height: u32,
        _fps: u32,
        _kbps: u32,
    ) -> Result<Box<dyn VideoEncoder>, EncoderError> {
        Err(EncoderError(format!("no {codec} encoder is available")))
    }
}
