//! The bridge to the server: an [`EncoderFactory`] over the discovered pipelines.

use scanoutd_types::{Codec, EncodedFrame, EncoderError, EncoderFactory, VideoEncoder};

use crate::{discover, Encoder, EncoderConfig, PipelineSpec, Probe};

/// Makes encoders from the pipelines that passed discovery, best first per codec; when the
/// best one fails to start, the next one of the same codec is tried.
pub struct GstEncoderFactory {
    probes: Vec<Probe>,
}

impl GstEncoderFactory {
    /// Initialise GStreamer and probe every spec (a one-frame test encode each).
    pub fn discover(specs: &[PipelineSpec]) -> Result<Self, crate::EncodeError> {
        crate::init()?;
        Ok(GstEncoderFactory {
            probes: discover(specs),
        })
    }

    /// The probe results, in ranking order.
    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }
}

impl EncoderFactory for GstEncoderFactory {
    fn codecs(&self) -> Vec<Codec> {
        Codec::ALL
            .into_iter()
            .filter(|c| {
                self.probes
                    .iter()
                    .any(|p| p.is_available() && p.spec.codec == *c)
            })
            .collect()
    }

    fn create(
        &self,
        codec: Codec,
        width: u32,
        height: u32,
        fps: u32,
        kbps: u32,
    ) -> Result<Box<dyn VideoEncoder>, EncoderError> {
        let cfg = EncoderConfig {
            width,
            height,
            fps,
            bitrate_kbps: kbps,
        };
        let mut errors = Vec::new();
        for p in self
            .probes
            .iter()
            .filter(|p| p.is_available() && p.spec.codec == codec)
        {
            match Encoder::new(&p.spec, &cfg) {
                Ok(e) => return Ok(Box::new(e)),
                Err(e) => {
                    tracing::warn!("{} failed to start at {width}x{height}: {e}", p.spec.name);
                    errors.push(format!("{}: {e}", p.spec.name));
                }
            }
        }
        Err(EncoderError(if errors.is_empty() {
            format!("no {codec} encoder is available")
        } else {
            errors.join("; ")
        }))
    }
}

impl VideoEncoder for Encoder {
    fn encode(
        &mut self,
        bgrx: &[u8],
        stride: usize,
        pts_ms: u64,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncoderError> {
        Encoder::encode(self, bgrx, stride, pts_ms, force_keyframe)
            .map_err(|e| EncoderError(e.to_string()))
    }

    fn set_bitrate(&mut self, kbps: u32) -> Result<(), EncoderError> {
        Encoder::set_bitrate(self, kbps).map_err(|e| EncoderError(e.to_string()))
    }

    fn codec(&self) -> Codec {
        Encoder::codec(self)
    }

    fn name(&self) -> &str {
        self.spec_name()
    }
}
