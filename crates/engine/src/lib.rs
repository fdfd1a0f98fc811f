//! The encoding stage between the frame ring and the SPICE front-end.
//!
//! - [`policy`]: which region of a display is a video stream, decided from the source's damage
//!   (pure, time passed in).
//! - [`delay`]: a client's end-to-end delay from PING/PONG (pure, time passed in).
//! - [`rate`]: per-client rate control and the client clock's margin (pure, time passed in).
//! - [`tier`]: the discrete bitrates shared encoders run at (pure).
//! - [`hub`]: per display, the region and the shared encoders: one encoder per (codec, region,
//!   rate tier), each source frame encoded once for every client of that tier.
//!
//! No GStreamer type crosses this crate: encoders come through `scanoutd_types`'
//! `EncoderFactory`/`VideoEncoder`, and the front-end gets bytes.
#![forbid(unsafe_code)]

pub mod delay;
pub mod hub;
pub mod policy;
pub mod rate;
pub mod tier;

pub use delay::{DelayProbe, DelaySample};
pub use hub::{EncodeHub, Encoded, HubConfig, HubStats, Member, MemberEvent, Region};
pub use policy::{StreamAction, StreamMode, StreamPolicy, StreamTuning};
pub use rate::{MmTuner, RateControl, RateLimits};
pub use tier::tier_kbps;
