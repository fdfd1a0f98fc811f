//! The crate's error type.

/// Everything that can go wrong while decoding SPICE bytes.
///
/// Decoders never panic; every malformed input ends up as one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ended before the structure named by `what` was complete.
    #[error("truncated {what}: needed {needed} more bytes, {available} available")]
    Truncated {
        /// Which structure was being decoded.
        what: &'static str,
        /// Bytes that were required at the point of failure.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A link header did not start with `"REDQ"`.
    #[error("bad link magic")]
    InvalidMagic,
    /// A link header carried a major version other than 2.
    #[error("unsupported protocol major version {0}")]
    VersionMismatch(u32),
    /// A field holds a value that is inconsistent or not allowed.
    #[error("invalid data: {0}")]
    InvalidData(&'static str),
    /// A message body is larger than the configured bound.
    #[error("message body of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size announced on the wire.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Valid SPICE, but a variant this crate does not implement (e.g. a QUIC image).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// LZ4 block decompression failed.
    #[error("lz4: {0}")]
    Lz4(String),
    /// An API was used in a state where it is not allowed (e.g. feeding a finished acceptor).
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
}
