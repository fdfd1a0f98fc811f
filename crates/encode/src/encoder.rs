//! One encoder: a GStreamer pipeline built from a [`PipelineSpec`], fed BGRx frames and
//! drained of encoded access units, synchronously.
//!
//! ```text
//! appsrc (is-live, time, caps BGRx WxH@fps) ! videoconvert ! capsfilter (I420|NV12)
//!   ! <encoder> [! <parser>] ! capsfilter (output caps) ! appsink (sync=false)
//! ```

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use crate::bitstream;
use crate::error::EncodeError;
use crate::props::{self, Applied};
use crate::spec::{Codec, PipelineSpec, Placeholders};

/// How long [`Encoder::encode`] waits for the frame it submitted.
pub const ENCODE_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames that may be submitted and not yet pulled before `submit` refuses more.
pub const MAX_IN_FLIGHT: usize = 8;

/// Size and rate of the frames an encoder takes. A size change needs a new encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    pub width: u32,
    pub height: u32,
    /// Nominal frame rate; sets the caps, frame durations and per-frame rate-control budgets.
    pub fps: u32,
    /// Initial target bitrate (for MJPEG mapped to a quality).
    pub bitrate_kbps: u32,
}

pub use scanoutd_types::EncodedFrame;

struct InFlight {
    pts_ns: u64,
    pts_ms: u64,
    submitted: Instant,
}

/// A running encoder pipeline. Synchronous: callers drive it from their own thread.
pub struct Encoder {
    spec: PipelineSpec,
    cfg: EncoderConfig,
    bitrate_kbps: u32,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    appsink: gst_app::AppSink,
    encoder: gst::Element,
    bus: gst::Bus,
    in_flight: VecDeque<InFlight>,
    /// Parameter sets that came in a buffer of their own, prepended to the next picture.
    pending_header: Vec<u8>,
    submitted: u64,
    last_pts_ns: Option<u64>,
    frame_ns: u64,
    failed: Option<(String, String, Option<String>)>,
    skipped: Vec<String>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("spec", &self.spec.name)
            .field("cfg", &self.cfg)
            .field("bitrate_kbps", &self.bitrate_kbps)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Builds the pipeline and sets it PLAYING. Element errors that need data to show up
    /// (caps negotiation, encoder initialisation) are reported by the first `submit`/`pull`.
    pub fn new(spec: &PipelineSpec, cfg: &EncoderConfig) -> Result<Self, EncodeError> {
        crate::init()?;
        if cfg.width == 0 || cfg.height == 0 || cfg.fps == 0 {
            return Err(EncodeError::Build {
                spec: spec.name.clone(),
                reason: format!(
                    "width, height and fps must be non-zero (got {}x{}@{})",
                    cfg.width, cfg.height, cfg.fps
                ),
            });
        }
        let build_err = |reason: String| EncodeError::Build {
            spec: spec.name.clone(),
            reason,
        };
        if gst::ElementFactory::find(&spec.element).is_none() {
            return Err(EncodeError::ElementMissing {
                element: spec.element.clone(),
            });
        }
        let make = |factory: &str| {
            gst::ElementFactory::make(factory)
                .build()
                .map_err(|e| match gst::ElementFactory::find(factory) {
                    None => EncodeError::ElementMissing {
                        element: factory.to_owned(),
                    },
                    Some(_) => build_err(format!("cannot create {factory}: {e}")),
                })
        };

        let in_caps =
            gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, cfg.width, cfg.height)
                .fps(gst::Fraction::new(cfg.fps as i32, 1))
                .par(gst::Fraction::new(1, 1))
                .build()
                .and_then(|info| info.to_caps())
                .map_err(|e| build_err(format!("input caps: {e}")))?;
        let appsrc = gst_app::AppSrc::builder()
            .name("src")
            .caps(&in_caps)
            .is_live(true)
            .format(gst::Format::Time)
            .do_timestamp(false)
            .block(false)
            .max_bytes(0)
            .build();
        let convert = make("videoconvert")?;
        let raw_caps = gst::Caps::builder("video/x-raw")
            .field("format", spec.input_format.as_str())
            .field_if_some("colorimetry", spec.input_colorimetry.as_deref())
            .build();
        let raw_filter = gst::ElementFactory::make("capsfilter")
            .property("caps", raw_caps)
            .build()
            .map_err(|e| build_err(e.to_string()))?;
        let encoder = make(&spec.element)?;
        let parser = match &spec.parser {
            Some(p) => Some((make(&p.element)?, p)),
            None => None,
        };
        let out_caps = gst::Caps::from_str(&spec.output_caps)
            .map_err(|e| build_err(format!("output-caps {:?}: {e}", spec.output_caps)))?;
        let out_filter = gst::ElementFactory::make("capsfilter")
            .property("caps", out_caps)
            .build()
            .map_err(|e| build_err(e.to_string()))?;
        let appsink = gst_app::AppSink::builder()
            .name("sink")
            .sync(false)
            .max_buffers(4)
            .drop(false)
            .build();

        let placeholders = Placeholders {
            width: cfg.width,
            height: cfg.height,
            fps: cfg.fps,
            bitrate_kbps: cfg.bitrate_kbps,
        };
        let mut skipped = Vec::new();
        apply_all(&encoder, &spec.properties, &placeholders, &mut skipped);
        if let Some((el, p)) = &parser {
            apply_all(el, &p.properties, &placeholders, &mut skipped);
        }

        let pipeline = gst::Pipeline::with_name(&format!("encode-{}", spec.name));
        let mut chain: Vec<gst::Element> = vec![
            appsrc.clone().upcast(),
            convert,
            raw_filter,
            encoder.clone(),
        ];
        if let Some((el, _)) = parser {
            chain.push(el);
        }
        chain.push(out_filter);
        chain.push(appsink.clone().upcast());
        pipeline
            .add_many(&chain)
            .map_err(|e| build_err(e.to_string()))?;
        gst::Element::link_many(&chain).map_err(|e| build_err(format!("linking: {e}")))?;

        let bus = pipeline
            .bus()
            .ok_or_else(|| build_err("pipeline has no bus".into()))?;
        let mut enc = Encoder {
            spec: spec.clone(),
            cfg: *cfg,
            bitrate_kbps: cfg.bitrate_kbps,
            pipeline,
            appsrc,
            appsink,
            encoder,
            bus,
            in_flight: VecDeque::new(),
            pending_header: Vec::new(),
            submitted: 0,
            last_pts_ns: None,
            frame_ns: 1_000_000_000 / u64::from(cfg.fps),
            failed: None,
            skipped,
        };
        enc.apply_rate(cfg.bitrate_kbps)?;
        if let Err(e) = enc.pipeline.set_state(gst::State::Playing) {
            enc.check_bus()?;
            return Err(build_err(format!("cannot start: {e}")));
        }
        enc.check_bus()?;
        tracing::debug!(spec = %spec.name, width = cfg.width, height = cfg.height, fps = cfg.fps,
            kbps = cfg.bitrate_kbps, "encoder started");
        Ok(enc)
    }

    /// Submits one BGRx frame. `stride` is the distance between rows in bytes (at least
    /// `width * 4`); the frame must have the configured size. `pts_ms` is the caller's
    /// monotonic time in ms; `force_keyframe` makes this frame a keyframe (IDR with
    /// parameter sets for H.264/H.265).
    pub fn submit(
        &mut self,
        bgrx: &[u8],
        stride: usize,
        pts_ms: u64,
        force_keyframe: bool,
    ) -> Result<(), EncodeError> {
        self.check_bus()?;
        let (w, h) = (self.cfg.width as usize, self.cfg.height as usize);
        let row = w * 4;
        if stride < row {
            return Err(EncodeError::InvalidFrame(format!(
                "stride {stride} is less than width {w} * 4"
            )));
        }
        let needed = stride * (h - 1) + row;
        if bgrx.len() < needed {
            return Err(EncodeError::InvalidFrame(format!(
                "{} bytes given, a {w}x{h} frame with stride {stride} needs {needed}",
                bgrx.len()
            )));
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Err(EncodeError::Backlog {
                in_flight: self.in_flight.len(),
            });
        }
        let submitted = Instant::now();

        let mut buffer =
            gst::Buffer::with_size(row * h).map_err(|e| EncodeError::Flow(e.to_string()))?;
        let mut pts_ns = pts_ms.saturating_mul(1_000_000);
        if let Some(last) = self.last_pts_ns {
            // strictly increasing timestamps, whatever the caller's clock did
            if pts_ns <= last {
                pts_ns = last + 1_000_000;
            }
        }
        {
            let buf = buffer
                .get_mut()
                .ok_or_else(|| EncodeError::Flow("new buffer not writable".into()))?;
            buf.set_pts(gst::ClockTime::from_nseconds(pts_ns));
            buf.set_duration(gst::ClockTime::from_nseconds(self.frame_ns));
            let mut map = buf
                .map_writable()
                .map_err(|e| EncodeError::Flow(e.to_string()))?;
            if stride == row {
                map.copy_from_slice(&bgrx[..row * h]);
            } else {
                for (dst, src) in map.chunks_exact_mut(row).zip(bgrx.chunks(stride)) {
                    dst.copy_from_slice(&src[..row]);
                }
            }
        }

        // The first frame is a keyframe anyway; an event before it would overtake the caps.
        if force_keyframe && self.submitted > 0 {
            let ev = gst_video::DownstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            if !self.appsrc.send_event(ev) {
                tracing::warn!(spec = %self.spec.name, "force-key-unit event refused");
            }
        }
        self.appsrc
            .push_buffer(buffer)
            .map_err(|e| self.flow_error(e))?;
        self.submitted += 1;
        self.last_pts_ns = Some(pts_ns);
        self.in_flight.push_back(InFlight {
            pts_ns,
            pts_ms,
            submitted,
        });
        Ok(())
    }

    /// The next encoded frame, waiting at most `timeout`. `Ok(None)` when nothing came in
    /// time (or the stream ended).
    pub fn pull(&mut self, timeout: Duration) -> Result<Option<EncodedFrame>, EncodeError> {
        self.check_bus()?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = gst::ClockTime::from_nseconds(left.as_nanos().min(u64::MAX as u128) as u64);
            let Some(sample) = self.appsink.try_pull_sample(wait) else {
                self.check_bus()?;
                return Ok(None);
            };
            let Some(buffer) = sample.buffer() else {
                continue;
            };
            let map = buffer
                .map_readable()
                .map_err(|e| EncodeError::Flow(e.to_string()))?;
            let mut data = std::mem::take(&mut self.pending_header);
            data.extend_from_slice(&map);
            drop(map);

            let keyframe = match self.spec.codec {
                Codec::H264 => {
                    if !bitstream::h264_has_picture(&data) {
                        self.pending_header = data; // parameter sets alone: keep for the picture
                        continue;
                    }
                    data = bitstream::aud_first(data, Codec::H264);
                    bitstream::h264_is_idr(&data)
                }
                Codec::H265 => {
                    if !bitstream::h265_has_picture(&data) {
                        self.pending_header = data;
                        continue;
                    }
                    data = bitstream::aud_first(data, Codec::H265);
                    bitstream::h265_is_irap(&data)
                }
                Codec::Mjpeg => true,
                Codec::Vp8 | Codec::Vp9 => !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            };

            let pts_ns = buffer.pts().map(|t| t.nseconds());
            let now = Instant::now();
            let entry = self.take_in_flight(pts_ns);
            let (pts_ms, encode_time) = match entry {
                Some(e) => (e.pts_ms, now.duration_since(e.submitted)),
                None => (pts_ns.map_or(0, |ns| ns / 1_000_000), Duration::ZERO),
            };
            return Ok(Some(EncodedFrame {
                data,
                keyframe,
                pts_ms,
                encode_time,
            }));
        }
    }

    /// Submits a frame and waits (up to [`ENCODE_TIMEOUT`]) for the next encoded frame.
    pub fn encode(
        &mut self,
        bgrx: &[u8],
        stride: usize,
        pts_ms: u64,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        self.submit(bgrx, stride, pts_ms, force_keyframe)?;
        self.pull(ENCODE_TIMEOUT)
    }

    /// Changes the target bitrate while running. For MJPEG the bitrate is mapped to a
    /// quality. Other properties whose value depends on the bitrate (VBV sizes) are updated
    /// where the element allows it while playing.
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<(), EncodeError> {
        self.check_bus()?;
        let kbps = kbps.max(1);
        if kbps == self.bitrate_kbps {
            return Ok(());
        }
        let old = self.placeholders(self.bitrate_kbps);
        let new = self.placeholders(kbps);
        for (name, template) in &self.spec.properties {
            let (Ok(a), Ok(b)) = (old.render(template), new.render(template)) else {
                continue;
            };
            if a == b {
                continue;
            }
            if !props::mutable_in_playing(&self.encoder, name) {
                tracing::debug!(spec = %self.spec.name, property = %name,
                    "bitrate-dependent property not changeable while playing; kept");
                continue;
            }
            if let Err(e) = props::set_from_str(&self.encoder, name, &b) {
                tracing::warn!(spec = %self.spec.name, property = %name, "{e}");
            }
        }
        self.apply_rate(kbps)?;
        tracing::debug!(spec = %self.spec.name, kbps, "bitrate changed");
        Ok(())
    }

    /// The codec this encoder produces.
    pub fn codec(&self) -> Codec {
        self.spec.codec
    }

    /// The name of the pipeline spec it was built from.
    pub fn spec_name(&self) -> &str {
        &self.spec.name
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The current target bitrate.
    pub fn bitrate_kbps(&self) -> u32 {
        self.bitrate_kbps
    }

    /// Properties from the spec that could not be applied (unknown to this element version,
    /// unparseable), as `name: reason`. Each was logged with `tracing::warn` when building.
    pub fn skipped_properties(&self) -> &[String] {
        &self.skipped
    }

    /// Ends the stream: encoders holding frames flush them; `pull` then drains the rest and
    /// returns `Ok(None)` at the end.
    pub fn finish(&mut self) -> Result<(), EncodeError> {
        self.check_bus()?;
        self.appsrc
            .end_of_stream()
            .map(|_| ())
            .map_err(|e| self.flow_error(e))
    }

    fn placeholders(&self, kbps: u32) -> Placeholders {
        Placeholders {
            width: self.cfg.width,
            height: self.cfg.height,
            fps: self.cfg.fps,
            bitrate_kbps: kbps,
        }
    }

    fn apply_rate(&mut self, kbps: u32) -> Result<(), EncodeError> {
        let (property, value) = if let Some(b) = &self.spec.bitrate {
            (b.property.clone(), b.unit.from_kbps(kbps).to_string())
        } else if let Some(q) = &self.spec.quality {
            let pixels_per_s = f64::from(self.cfg.width)
                * f64::from(self.cfg.height)
                * f64::from(self.cfg.fps.max(1));
            let bpp = f64::from(kbps) * 1000.0 / pixels_per_s;
            (q.property.clone(), q.quality_for_bpp(bpp).to_string())
        } else {
            return Ok(());
        };
        match props::set_from_str(&self.encoder, &property, &value) {
            Ok(Applied::Set) => {}
            Ok(Applied::Clamped(v)) => {
                tracing::debug!(spec = %self.spec.name, %property, requested = %value, set = %v,
                    "rate clamped to the element's range");
            }
            Err(reason) => {
                return Err(EncodeError::Build {
                    spec: self.spec.name.clone(),
                    reason: format!("rate control: {reason}"),
                })
            }
        }
        self.bitrate_kbps = kbps;
        Ok(())
    }

    fn take_in_flight(&mut self, pts_ns: Option<u64>) -> Option<InFlight> {
        let Some(pts) = pts_ns else {
            return self.in_flight.pop_front();
        };
        // Frames the encoder dropped (older than this output) are forgotten on the way.
        let mut found = None;
        while let Some(front) = self.in_flight.front() {
            if front.pts_ns > pts {
                break;
            }
            found = self.in_flight.pop_front();
        }
        found.or_else(|| self.in_flight.pop_front())
    }

    fn flow_error(&mut self, e: gst::FlowError) -> EncodeError {
        if let Err(bus) = self.check_bus() {
            return bus;
        }
        EncodeError::Flow(format!("{e:?}"))
    }

    /// Turns the first element error on the bus into an error (and keeps returning it).
    fn check_bus(&mut self) -> Result<(), EncodeError> {
        if self.failed.is_none() {
            while let Some(msg) = self.bus.pop() {
                match msg.view() {
                    gst::MessageView::Error(err) => {
                        let element = msg
                            .src()
                            .map(|s| s.name().to_string())
                            .unwrap_or_else(|| "pipeline".into());
                        let detail = err.debug().map(|d| d.to_string());
                        tracing::warn!(spec = %self.spec.name, %element, error = %err.error(),
                            debug = detail.as_deref().unwrap_or(""), "encoder pipeline error");
                        self.failed = Some((element, err.error().to_string(), detail));
                        break;
                    }
                    gst::MessageView::Warning(w) => {
                        tracing::warn!(spec = %self.spec.name,
                            element = %msg.src().map(|s| s.name().to_string()).unwrap_or_default(),
                            "{}", w.error());
                    }
                    _ => {}
                }
            }
        }
        match &self.failed {
            Some((element, message, debug)) => Err(EncodeError::Pipeline {
                element: element.clone(),
                message: message.clone(),
                debug: debug.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn apply_all(
    el: &gst::Element,
    properties: &[(String, String)],
    placeholders: &Placeholders,
    skipped: &mut Vec<String>,
) {
    let factory = el
        .factory()
        .map(|f| f.name().to_string())
        .unwrap_or_default();
    for (name, template) in properties {
        let value = match placeholders.render(template) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(element = %factory, property = %name, "{e}; skipped");
                skipped.push(format!("{name}: {e}"));
                continue;
            }
        };
        match props::set_from_str(el, name, &value) {
            Ok(Applied::Set) => {}
            Ok(Applied::Clamped(v)) => {
                tracing::debug!(element = %factory, property = %name, requested = %value, set = %v,
                    "clamped to the property's range");
            }
            Err(e) => {
                tracing::warn!(element = %factory, property = %name, value = %value,
                    "{e}; skipped");
                skipped.push(format!("{name}: {e}"));
            }
        }
    }
}
