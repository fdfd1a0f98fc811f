//! Encoder discovery: which specs work on this machine, best first.

use std::time::{Duration, Instant};

use gstreamer as gst;

use crate::check::test_picture;
use crate::encoder::{Encoder, EncoderConfig};
use crate::spec::{Codec, PipelineSpec};

/// How long a test encode may take to produce its frame.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a spec can be used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeStatus {
    /// The element exists and a one-frame test encode produced output.
    Available {
        /// Wall time of the test encode (pipeline start to first output).
        probe_time: Duration,
    },
    /// Why not: "element vah264enc not installed", "test encode failed: …",
    /// "no output within 2 s".
    Unavailable { reason: String },
}

/// The result of probing one spec.
#[derive(Debug, Clone)]
pub struct Probe {
    pub spec: PipelineSpec,
    pub status: ProbeStatus,
    /// Spec properties this element version did not accept (`name: reason`).
    pub skipped_properties: Vec<String>,
}

impl Probe {
    pub fn is_available(&self) -> bool {
        matches!(self.status, ProbeStatus::Available { .. })
    }

    /// Why the spec is unavailable, if it is.
    pub fn reason(&self) -> Option<&str> {
        match &self.status {
            ProbeStatus::Available { .. } => None,
            ProbeStatus::Unavailable { reason } => Some(reason),
        }
    }
}

/// Probes every spec: the element must exist and encode one small frame (64x64, or the
/// element's minimum size) within [`PROBE_TIMEOUT`]. The result is sorted hardware first, then
/// by rank (highest first). Every unavailable spec is logged once with `tracing::warn`.
pub fn discover(specs: &[PipelineSpec]) -> Vec<Probe> {
    if let Err(e) = crate::init() {
        return specs
            .iter()
            .map(|s| Probe {
                spec: s.clone(),
                status: ProbeStatus::Unavailable {
                    reason: e.to_string(),
                },
                skipped_properties: Vec::new(),
            })
            .collect();
    }
    let mut probes: Vec<Probe> = specs.iter().map(probe_one).collect();
    probes.sort_by_key(|p| {
        (
            std::cmp::Reverse(p.spec.hardware),
            std::cmp::Reverse(p.spec.rank),
        )
    });
    for p in &probes {
        match &p.status {
            ProbeStatus::Available { probe_time } => tracing::info!(
                spec = %p.spec.name, codec = %p.spec.codec, hardware = p.spec.hardware,
                probe_ms = probe_time.as_millis() as u64, "encoder available"),
            // A plugin that is not installed (no such hardware here) is normal; one that is
            // installed but fails its test encode is worth a warning.
            ProbeStatus::Unavailable { reason }
                if gstreamer::ElementFactory::find(&p.spec.element).is_none() =>
            {
                tracing::info!(
                    spec = %p.spec.name, codec = %p.spec.codec, hardware = p.spec.hardware,
                    "encoder unavailable: {reason}")
            }
            ProbeStatus::Unavailable { reason } => tracing::warn!(
                spec = %p.spec.name, codec = %p.spec.codec, hardware = p.spec.hardware,
                "encoder unavailable: {reason}"),
        }
        for s in &p.skipped_properties {
            tracing::warn!(spec = %p.spec.name, "property not applied: {s}");
        }
    }
    probes
}

/// The best available spec for `codec` (probes are in preference order).
pub fn best_for(codec: Codec, probes: &[Probe]) -> Option<&PipelineSpec> {
    probes
        .iter()
        .find(|p| p.spec.codec == codec && p.is_available())
        .map(|p| &p.spec)
}

fn probe_one(spec: &PipelineSpec) -> Probe {
    let unavailable = |reason: String, skipped: Vec<String>| Probe {
        spec: spec.clone(),
        status: ProbeStatus::Unavailable { reason },
        skipped_properties: skipped,
    };
    let Some(factory) = gst::ElementFactory::find(&spec.element) else {
        return unavailable(
            format!("element {} not installed", spec.element),
            Vec::new(),
        );
    };
    let (width, height) = probe_size(&factory);
    let cfg = EncoderConfig {
        width,
        height,
        fps: 30,
        bitrate_kbps: 500,
    };
    let started = Instant::now();
    let mut enc = match Encoder::new(spec, &cfg) {
        Ok(e) => e,
        Err(e @ crate::EncodeError::ElementMissing { .. }) => {
            return unavailable(e.to_string(), Vec::new())
        }
        Err(e) => return unavailable(format!("test encode failed: {e}"), Vec::new()),
    };
    let skipped = enc.skipped_properties().to_vec();
    let picture = test_picture(width, height, 0);
    // Zero-latency encoders answer at once; one that holds frames gets EOS to flush them.
    let first_wait = PROBE_TIMEOUT / 4;
    let result = enc
        .submit(&picture, width as usize * 4, 0, true)
        .and_then(|()| enc.pull(first_wait))
        .and_then(|out| match out {
            Some(frame) => Ok(Some(frame)),
            None => enc
                .finish()
                .and_then(|()| enc.pull(PROBE_TIMEOUT - first_wait)),
        });
    match result {
        Ok(Some(frame)) if !frame.data.is_empty() => Probe {
            spec: spec.clone(),
            status: ProbeStatus::Available {
                probe_time: started.elapsed(),
            },
            skipped_properties: skipped,
        },
        Ok(Some(_)) => unavailable("test encode failed: empty output".into(), skipped),
        Ok(None) => unavailable(
            format!("no output within {} s", PROBE_TIMEOUT.as_secs()),
            skipped,
        ),
        Err(e) => unavailable(format!("test encode failed: {e}"), skipped),
    }
}

/// 64x64, or the element's minimum size from its sink pad template, rounded up to 16.
fn probe_size(factory: &gst::ElementFactory) -> (u32, u32) {
    let mut min = (64_i32, 64_i32);
    for tmpl in factory.static_pad_templates() {
        if tmpl.direction() != gst::PadDirection::Sink {
            continue;
        }
        let caps = tmpl.caps();
        if let Some(s) = caps.structure(0) {
            if let Ok(r) = s.get::<gst::IntRange<i32>>("width") {
                min.0 = min.0.max(r.min());
            }
            if let Ok(r) = s.get::<gst::IntRange<i32>>("height") {
                min.1 = min.1.max(r.min());
            }
        }
    }
    let round = |v: i32| (v.max(1) as u32).div_ceil(16) * 16;
    (round(min.0), round(min.1))
}
