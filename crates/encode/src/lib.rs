//! GStreamer video encoding for scanoutd.
//!
//! * [`PipelineSpec`]: one encoder family (element, low-latency properties, rate control,
//!   output caps), loaded from the `pipelines/*.toml` files compiled into the crate
//!   ([`builtin_specs`]) or from a directory that overrides them ([`load_specs`]).
//! * [`discover`]: which specs work on this machine (element installed and a one-frame test
//!   encode succeeds), hardware first, then by rank; [`best_for`] picks one per codec.
//! * [`Encoder`]: a synchronous BGRx-in, access-unit-out pipeline with forced keyframes and
//!   run-time bitrate changes. Callers run it on their own thread.
//! * [`check`]: test pictures, PSNR and a reference decoder for tests.
#![forbid(unsafe_code)]

pub mod bitstream;
pub mod check;
mod discover;
mod encoder;
mod error;
mod factory;
mod props;
mod spec;

pub use discover::{best_for, discover, Probe, ProbeStatus, PROBE_TIMEOUT};
pub use encoder::{EncodedFrame, Encoder, EncoderConfig, ENCODE_TIMEOUT, MAX_IN_FLIGHT};
pub use error::EncodeError;
pub use factory::GstEncoderFactory;
pub use spec::{
    builtin_specs, by_codec, load_specs, BitrateControl, BitrateUnit, Codec, InputFormat,
    ParserSpec, PipelineSpec, Placeholders, QualityControl,
};

/// Initialises GStreamer (idempotent; called by everything in this crate that needs it).
pub fn init() -> Result<(), EncodeError> {
    gstreamer::init().map_err(|e| EncodeError::Init(e.to_string()))
}
