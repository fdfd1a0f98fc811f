//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading pipeline specs, building an encoder or encoding.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// `gst::init` failed (no GStreamer registry, broken installation).
    #[error("GStreamer initialisation failed: {0}")]
    Init(String),

    /// A pipeline spec file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A pipeline spec is not valid TOML or does not match the format.
    #[error("invalid pipeline spec {origin}: {reason}")]
    Spec { origin: String, reason: String },

    /// The spec names an element that is not installed (or registers nothing on this machine).
    #[error("element {element} not installed")]
    ElementMissing { element: String },

    /// Building or starting the pipeline failed before any data flowed.
    #[error("cannot build pipeline for {spec}: {reason}")]
    Build { spec: String, reason: String },

    /// An element posted an error on the bus (negotiation failure, encoder error, ...).
    #[error("{element}: {message}{}", debug.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Pipeline {
        element: String,
        message: String,
        debug: Option<String>,
    },

    /// The frame handed to `submit` does not match the encoder's configuration.
    #[error("invalid frame: {0}")]
    InvalidFrame(String),

    /// Too many frames were submitted without being pulled.
    #[error("{in_flight} frames submitted and not pulled; pull before submitting more")]
    Backlog { in_flight: usize },

    /// Pushing into the pipeline failed (the pipeline is flushing, at EOS or broken).
    #[error("pipeline refused the frame: {0}")]
    Flow(String),
}
