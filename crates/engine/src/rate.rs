//! Per-client video rate control. Pure logic: time is passed in.
//!
//! Signals:
//! - **Socket backpressure.** The display socket keeps at most a small amount of unsent data
//!   in the kernel (TCP_NOTSENT_LOWAT), so when the link is full a write blocks (a quarter frame period
//!   or more counts). The rate the
//!   link really carried is measured over the last second of writes (every byte: drawables
//!   and video), and a cut lands at 85 % of it — bounded to between half and 85 % of the
//!   previous target, so one odd sample can neither starve the stream nor leave it too high.
//!   Cuts come at most every 300 ms, so a bandwidth drop is followed within a few frames.
//! - **End-to-end delay** ([`DelayProbe`]: PING/PONG on the display channel). Buffers the
//!   server cannot see (a bloated router, a tunnel, a relay) fill long before its socket
//!   blocks, so the queueing delay above the RTT baseline is the signal that works on every
//!   link: once [`OVERUSE_BUDGET`] of delay above [`OVERUSE_DELAY`] has gathered (late pongs
//!   spaced out, as a full link makes them, not bunched, as a stalled client does) the
//!   target is cut to 85 % of the rate the client was measured to receive (at most every
//!   300 ms, each cut between half and 85 % of the target). And frames (video and drawables
//!   alike) wait while the oldest byte in flight has been on its way longer than the baseline
//!   plus [`GATE_DELAY`]: a queue that built up drains before more joins it, so the picture
//!   the client shows is never older than a small bound, whatever the buffer's depth.
//! - **Client reports** (STREAM_REPORT): sustained late frames cut the target by a quarter,
//!   unless the path is measured to hold no queue (then lateness is not the link's doing).
//! - **Probing**: after 2 s without a cut the target climbs 10 % per second, but only while
//!   the queueing delay is under [`TARGET_DELAY`] and the stream actually uses most of it: an
//!   encoder that needs less than the target (simple content) does not push the target past what
//!   the link has ever carried.
//!
//! Frame rate before quality: each frame gets at least `min_bits_per_pixel` (a picture that
//! stays readable). When the target cannot give every frame that much at the source frame
//! rate, frames are taken less often instead, and the encoder is told the per-frame budget
//! that keeps. Pacing is a token bucket at the target rate, 250 ms deep: a big frame puts the
//! client in debt and the next frame waits until it is paid off; never sooner than the
//! (reduced) frame interval.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::delay::{DelayProbe, DelaySample};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub start_kbps: u32,
    pub min_kbps: u32,
    pub max_kbps: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            start_kbps: 8000,
            min_kbps: 300,
            max_kbps: 20000,
        }
    }
}

/// Bits per pixel per frame below which a desktop picture stops being readable (measured
/// with the demo at 1280x720: ~0.02 leaves a fifth of the frames unreadable).
pub const MIN_BITS_PER_PIXEL: f64 = 0.03;
/// The frame rate is never lowered below this.
const MIN_FPS: f64 = 2.0;
const CUT_INTERVAL: Duration = Duration::from_millis(300);
/// The send budget may run this far ahead, so frame-size variance (a keyframe, a busy
/// frame) does not cost frames while the average stays at the target.
const BUCKET: Duration = Duration::from_millis(250);
const WINDOW: Duration = Duration::from_secs(1);
const CEILING_MEMORY: Duration = Duration::from_secs(5);
/// The quality ceiling never assumes fewer frames per second than this.
const MIN_CEILING_FPS: f64 = 10.0;
/// The queueing delay the control holds the link near: probing upwards stops above it.
pub const TARGET_DELAY: Duration = Duration::from_millis(30);
/// A queueing delay above this is overuse. The target is cut once [`OVERUSE_BUDGET`] of
/// overuse has gathered within [`OVERUSE_WINDOW`], counted as the time between consecutive
/// samples that are both over: a full link makes late pongs come spaced out (each waits for
/// the bytes ahead of it), while a client that stalled for a moment (a busy machine) sends its
/// late pongs all at once when it resumes, which adds almost nothing. The gate keeps the
/// picture fresh either way.
pub const OVERUSE_DELAY: Duration = Duration::from_millis(50);
pub const OVERUSE_BUDGET: Duration = Duration::from_millis(250);
pub const OVERUSE_WINDOW: Duration = Duration::from_secs(2);
/// Nothing more is sent while the oldest byte in flight is older than the baseline RTT plus
/// this. Above what a busy client takes to answer (so its frames stay pipelined), below what
/// a viewer notices.
pub const GATE_DELAY: Duration = Duration::from_millis(150);
/// A client that has not answered its first ping after this long is taken for one that
/// never will (the gate then never holds it); a first picture that takes longer on a slow
/// link only lets a few frames queue behind it.
pub const NO_ANSWER: Duration = Duration::from_secs(15);
/// While frames wait for the gate, the caller looks again this often (a PONG also wakes it).
const GATE_RECHECK: Duration = Duration::from_millis(20);
/// After a cut on delay, the link counts as congested this long (late frames then are the
/// link's doing: they must cut the rate, not raise the client's display delay).
const CONGESTED_FOR: Duration = Duration::from_secs(2);

pub struct RateControl {
    limits: RateLimits,
    target_kbps: u32,
    source_fps: f64,
    /// Pixels of the current stream (0 without one).
    pixels: u64,
    last_cut: Option<Instant>,
    last_raise: Instant,
    /// Token bucket of the send budget, in bits (may go negative after a big frame).
    tokens: f64,
    refilled: Instant,
    /// Earliest time for the next frame at the (possibly reduced) frame rate.
    next_frame: Instant,
    cuts: u64,
    /// Bytes written per flush over the last [`WINDOW`].
    sent: VecDeque<(Instant, usize)>,
    /// What the link carried when it was last found full, kbit/s: probing above it is gentle,
    /// and it is forgotten after [`CEILING_MEMORY`] without congestion.
    ceiling_kbps: Option<u32>,
    /// The current stream's quality ceiling in bits per pixel per frame (0: none).
    max_bpp: f64,
    /// The effective target when [`Self::on_tick`] last looked, to report ceiling moves.
    last_effective: u32,
    /// The frame rate the source was last measured to publish at (a QEMU 2D console
    /// refreshes at ~33 Hz whatever `source_fps` says); `None` before a measurement.
    source_rate: Option<f64>,
    /// PING/PONG: the end-to-end delay and what the client receives.
    probe: DelayProbe,
    /// Overuse gathered: (when, time since the previous sample, which was over too).
    overuse: VecDeque<(Instant, Duration)>,
    /// When the last sample came, and whether it was over [`OVERUSE_DELAY`].
    last_sample: Option<(Instant, bool)>,
    /// The last cut on delay.
    delay_cut: Option<Instant>,
    delay_cuts: u64,
}

impl RateControl {
    pub fn new(limits: RateLimits, source_fps: u32, now: Instant) -> Self {
        let start = limits.start_kbps.clamp(limits.min_kbps, limits.max_kbps);
        RateControl {
            limits,
            target_kbps: start,
            source_fps: f64::from(source_fps.max(1)),
            pixels: 0,
            last_cut: None,
            last_raise: now,
            tokens: 0.0,
            refilled: now,
            next_frame: now,
            cuts: 0,
            sent: VecDeque::new(),
            ceiling_kbps: None,
            max_bpp: 0.0,
            source_rate: None,
            last_effective: start,
            probe: DelayProbe::new(),
            overuse: VecDeque::new(),
            last_sample: None,
            delay_cut: None,
            delay_cuts: 0,
        }
    }

    /// What the link may carry for this client, kbit/s.
    pub fn target_kbps(&self) -> u32 {
        self.effective_kbps()
    }

    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// A stream of `width` x `height` started (or ended, with 0 x 0), without a quality
    /// ceiling.
    pub fn set_stream_size(&mut self, width: u32, height: u32) {
        self.set_stream(width, height, 0.0);
    }

    /// A stream of `width` x `height` started whose bitrate need not exceed `max_bpp` bits per
    /// pixel per frame at the source frame rate (0: no ceiling beyond the limits). The target
    /// drops to the ceiling at once and is never raised above it.
    pub fn set_stream(&mut self, width: u32, height: u32, max_bpp: f64) {
        self.pixels = u64::from(width) * u64::from(height);
        self.max_bpp = if max_bpp.is_finite() {
            max_bpp.max(0.0)
        } else {
            0.0
        };
        self.tokens = self.tokens.min(self.bucket_depth());
    }

    /// What the encoder is asked for: the link estimate, capped by the quality ceiling.
    fn effective_kbps(&self) -> u32 {
        self.target_kbps.min(self.quality_max_kbps())
    }

    /// What the send budget allows: the link estimate. Not the quality ceiling: drawables
    /// outside the stream share the budget, and an encoder overshoots its rate on busy
    /// frames; neither must cost frames on a link with room.
    fn pace_kbps(&self) -> u32 {
        self.target_kbps
    }

    /// The frames per second the source publishes, measured by the caller (not what this
    /// client takes: that depends on the target, and a ceiling following it would spiral).
    pub fn set_source_rate(&mut self, fps: f64) {
        if fps.is_finite() {
            self.source_rate = Some(fps);
        }
    }

    /// The source's measured frame rate within [`MIN_CEILING_FPS`]..=`source_fps`, or
    /// `source_fps` before a measurement.
    fn delivered_fps(&self) -> f64 {
        self.source_rate.map_or(self.source_fps, |f| {
            f.clamp(MIN_CEILING_FPS, self.source_fps)
        })
    }

    /// The highest target this stream is worth: the limits' maximum, or less by the quality
    /// ceiling (never below the minimum).
    pub fn quality_max_kbps(&self) -> u32 {
        if self.pixels == 0 || self.max_bpp <= 0.0 {
            return self.limits.max_kbps;
        }
        let kbps = self.pixels as f64 * self.delivered_fps() * self.max_bpp / 1000.0;
        (kbps.min(f64::from(u32::MAX)) as u32).clamp(self.limits.min_kbps, self.limits.max_kbps)
    }

    /// The frame rate the target allows while keeping every frame readable.
    pub fn frame_rate(&self) -> f64 {
        if self.pixels == 0 {
            return self.source_fps;
        }
        let min_bits = MIN_BITS_PER_PIXEL * self.pixels as f64;
        (f64::from(self.effective_kbps()) * 1000.0 / min_bits).clamp(MIN_FPS, self.source_fps)
    }

    /// The frame rate the link estimate would allow a stream of `pixels` while keeping every
    /// frame readable (to judge another size for the stream).
    pub fn fps_at(&self, pixels: u64) -> f64 {
        let min_bits = MIN_BITS_PER_PIXEL * pixels.max(1) as f64;
        (f64::from(self.target_kbps) * 1000.0 / min_bits).clamp(MIN_FPS, self.source_fps)
    }

    /// The bitrate to configure the encoder with: the encoder spreads it over the source
    /// frame rate, so when fewer frames are taken each must get proportionally more.
    pub fn encoder_kbps(&self) -> u32 {
        let scale = self.source_fps / self.frame_rate();
        ((f64::from(self.effective_kbps()) * scale) as u32)
            .min(self.limits.max_kbps.saturating_mul(8))
    }

    fn bucket_depth(&self) -> f64 {
        f64::from(self.pace_kbps()) * 1000.0 * BUCKET.as_secs_f64()
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + f64::from(self.pace_kbps()) * 1000.0 * dt).min(self.bucket_depth());
        self.refilled = now;
    }

    /// Whether the client's budget allows sending a frame now, and the path is not holding
    /// a queue (see [`GATE_DELAY`]).
    pub fn may_send(&self, now: Instant) -> bool {
        now >= self.next_send() && !self.gated(now)
    }

    /// Whether frames wait for what is in flight to arrive: the oldest byte not yet
    /// acknowledged has been on its way longer than the baseline RTT plus [`GATE_DELAY`].
    /// Never for a client that does not answer pings.
    pub fn gated(&self, now: Instant) -> bool {
        let Some(age) = self.probe.oldest_in_flight(now) else {
            return false;
        };
        if !self.probe.answered() {
            // Before the first PONG (the first picture may take seconds on a slow link) the
            // gate holds, but not for ever: a client that never answers is not judged by delay.
            return age > GATE_DELAY && age < NO_ANSWER;
        }
        age > self.probe.min_rtt().unwrap_or(Duration::ZERO) + GATE_DELAY
    }

    /// When to look again whether a frame may go (a PONG arriving is another reason).
    pub fn wake_at(&self, now: Instant) -> Instant {
        let at = self.next_send();
        if self.gated(now) {
            at.max(now + GATE_RECHECK)
        } else {
            at
        }
    }

    /// When the next frame may go: when the bucket is no longer in debt, and not sooner than
    /// the (possibly reduced) frame interval allows.
    pub fn next_send(&self) -> Instant {
        let debt = if self.tokens < 0.0 {
            Duration::from_secs_f64(-self.tokens / (f64::from(self.pace_kbps().max(1)) * 1000.0))
        } else {
            Duration::ZERO
        };
        (self.refilled + debt).max(self.next_frame)
    }

    /// Bits per second written over the last `span` (everything, not only video).
    fn window_rate(&self, now: Instant, span: Duration) -> Option<f64> {
        let first = self.sent.front()?.0;
        let span = now
            .duration_since(first)
            .min(span)
            .max(Duration::from_millis(100));
        let bytes: usize = self
            .sent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= span)
            .map(|(_, b)| *b)
            .sum();
        Some(bytes as f64 * 8.0 / span.as_secs_f64())
    }

    /// What the link carried lately, kbit/s: what was written over `span`, or what the client
    /// was measured to receive while the path was busy, whichever is more (frames that waited
    /// for the budget or the gate leave the written rate short of the link's).
    fn carried_kbps(&self, now: Instant, span: Duration) -> f64 {
        let written = self.window_rate(now, span).unwrap_or(0.0) / 1000.0;
        written.max(self.probe.link_kbps().unwrap_or(0.0))
    }

    fn cut_to(&mut self, now: Instant, kbps: u32) -> bool {
        if self
            .last_cut
            .is_some_and(|t| now.duration_since(t) < CUT_INTERVAL)
        {
            return false;
        }
        let new = kbps.clamp(self.limits.min_kbps, self.limits.max_kbps);
        if new >= self.effective_kbps() {
            return false;
        }
        self.target_kbps = new;
        self.last_cut = Some(now);
        self.cuts += 1;
        true
    }

    /// The client fell behind its stream (its shared encoder's frames came faster than it took
    /// them, so some were lost and it waits for a keyframe): its link or its budget cannot carry
    /// the stream's rate. Cut to what it carried recently (at most 0.85x, at least 0.5x of the
    /// target). Returns true when the target changed.
    pub fn on_backlog(&mut self, now: Instant) -> bool {
        let carried = self.carried_kbps(now, WINDOW);
        let t = f64::from(self.effective_kbps());
        let kbps = (carried * 0.85).clamp(t * 0.5, t * 0.85);
        let cut = self.cut_to(now, kbps as u32);
        if cut {
            self.ceiling_kbps = Some(carried.max(kbps) as u32);
        }
        cut
    }

    /// An update was written: `bytes` in all (`video` of them a stream frame, if any), which
    /// took `write_time`. `frame_period` is the source's. Returns true when the target changed.
    pub fn on_sent(
        &mut self,
        now: Instant,
        bytes: usize,
        video: Option<usize>,
        write_time: Duration,
        frame_period: Duration,
    ) -> bool {
        self.sent.push_back((now, bytes));
        self.probe.on_written(now, bytes);
        while self
            .sent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            self.sent.pop_front();
        }
        self.refill(now);
        // Everything written uses the link, but debt is bounded like credit: a full-picture
        // redraw (megabytes of drawables) must not hold back video for seconds.
        self.tokens = (self.tokens - bytes as f64 * 8.0).max(-self.bucket_depth());
        if video.is_some() {
            // At the full source rate the source's own cadence paces frames; a gate measured
            // from here (after encoding and writing) would drift against it and skip frames.
            let fps = self.frame_rate();
            self.next_frame = if fps < self.source_fps - 0.5 {
                now + Duration::from_secs_f64(1.0 / fps).saturating_sub(frame_period / 2)
            } else {
                now
            };
        }
        // With only a little unsent data allowed in the kernel, a write that blocks for a
        // quarter of a frame period means a queue is standing: the link is full.
        if write_time > frame_period / 4 && bytes > 0 {
            // While writes block, what went out recently is what the link carries.
            let carried = self.carried_kbps(now, CUT_INTERVAL);
            let t = f64::from(self.pace_kbps());
            let kbps = (carried * 0.85).clamp(t * 0.5, t * 0.85);
            let cut = self.cut_to(now, kbps as u32);
            if cut {
                self.ceiling_kbps = Some(carried as u32);
            }
            return cut;
        }
        false
    }

    /// A PING to queue at the end of the batch about to be written (`idle`: on its own, on a
    /// quiet channel); its bytes are then reported through [`Self::on_sent`].
    pub fn want_ping(&mut self, now: Instant, idle: bool) -> Option<u32> {
        self.probe.want_ping(now, idle)
    }

    /// The PONG of ping `id` arrived. Returns true when the target changed.
    pub fn on_pong(&mut self, now: Instant, id: u32) -> bool {
        let Some(s) = self.probe.on_pong(now, id) else {
            return false;
        };
        self.on_delay(now, s)
    }

    fn on_delay(&mut self, now: Instant, s: DelaySample) -> bool {
        // The first picture measured the link: a stream starts at what it carries, not at a
        // rate whose first keyframe alone would take seconds to cross.
        if let (true, Some(r)) = (s.initial, s.delivery_kbps) {
            let kbps = ((r * 0.85) as u32).clamp(self.limits.min_kbps, self.limits.max_kbps);
            if kbps < self.target_kbps {
                self.target_kbps = kbps;
                self.last_cut = Some(now);
                self.ceiling_kbps = Some(r as u32);
                self.cuts += 1;
                self.delay_cut = Some(now);
                self.delay_cuts += 1;
                return true;
            }
        }
        let over = s.queue_delay > OVERUSE_DELAY;
        if let Some((prev, true)) = self.last_sample {
            if over {
                self.overuse
                    .push_back((now, now.saturating_duration_since(prev)));
            }
        }
        self.last_sample = Some((now, over));
        while self
            .overuse
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > OVERUSE_WINDOW)
        {
            self.overuse.pop_front();
        }
        // Overuse since the last cut decides the next one (what came before it is kept for
        // the gate, which must hold while the queue drains).
        let since_cut = self.delay_cut;
        let gathered: Duration = self
            .overuse
            .iter()
            .filter(|(t, _)| since_cut.is_none_or(|c| *t > c))
            .map(|(_, d)| *d)
            .sum();
        if gathered < OVERUSE_BUDGET {
            return false;
        }
        // What reached the client while the path was busy is what it carries.
        let t = f64::from(self.effective_kbps());
        let received = s.delivery_kbps.or_else(|| self.probe.link_kbps());
        let kbps = received
            .map_or(t * 0.75, |r| r * 0.85)
            .clamp(t * 0.5, t * 0.85);
        let cut = self.cut_to(now, kbps as u32);
        if cut {
            self.ceiling_kbps = Some(received.unwrap_or(kbps) as u32);
            self.delay_cut = Some(now);
            self.delay_cuts += 1;
        }
        cut
    }

    /// Whether the path is (or just was) queueing: late frames are then the link's doing.
    pub fn congested(&self, now: Instant) -> bool {
        self.last_sample.is_some_and(|(_, over)| over)
            || self
                .delay_cut
                .is_some_and(|t| now.duration_since(t) < CONGESTED_FOR)
    }

    /// The RTT baseline, ms (0 before the first PONG).
    pub fn min_rtt_ms(&self) -> u64 {
        self.probe.min_rtt().map_or(0, |d| d.as_millis() as u64)
    }

    /// The last measured queueing delay, ms.
    pub fn queue_delay_ms(&self) -> u64 {
        self.probe
            .last()
            .map_or(0, |s| s.queue_delay.as_millis() as u64)
    }

    /// Cuts made on delay.
    pub fn delay_cuts(&self) -> u64 {
        self.delay_cuts
    }

    /// A STREAM_REPORT arrived. Returns true when the target changed.
    pub fn on_report(
        &mut self,
        now: Instant,
        num_frames: u32,
        num_drops: u32,
        last_frame_delay_ms: i32,
    ) -> bool {
        // Late frames (negative margin) at a small mm-time offset are normal for GStreamer
        // codecs; react only to sustained lateness.
        let late =
            num_frames > 0 && num_drops.saturating_mul(2) > num_frames && last_frame_delay_ms < -50;
        // Frames late while the path holds no queue are late for other reasons (encoding,
        // serialization of big frames, the client's decoder, its display delay): a lower
        // rate would not bring them sooner. The report only counts when the path's delay is
        // unknown (a client that does not answer pings) or high.
        let queueing = self
            .probe
            .last()
            .is_none_or(|s| s.queue_delay > OVERUSE_DELAY)
            || !self.probe.answered();
        if !queueing {
            return false;
        }
        if late {
            return self.cut_to(now, self.effective_kbps().saturating_mul(3) / 4);
        }
        false
    }

    /// Called regularly. Returns true when the target changed.
    pub fn on_tick(&mut self, now: Instant) -> bool {
        // The quality ceiling follows the frame rate the source really delivers.
        let effective = self.effective_kbps();
        let ceiling_moved = effective != self.last_effective;
        self.last_effective = effective;
        let quiet = match self.last_cut {
            Some(t) => now.duration_since(t) >= Duration::from_secs(2),
            None => true,
        };
        // Only probe upwards while the stream really uses most of its budget and the path
        // holds no queue.
        let used = self.window_rate(now, WINDOW).unwrap_or(0.0) / 1000.0
            >= 0.7 * f64::from(self.pace_kbps())
            && self
                .probe
                .last()
                .is_none_or(|s| s.queue_delay <= TARGET_DELAY);
        if self
            .last_cut
            .is_some_and(|c| now.duration_since(c) >= CEILING_MEMORY)
        {
            self.ceiling_kbps = None;
        }
        if quiet
            && used
            && now.duration_since(self.last_raise) >= Duration::from_secs(1)
            && self.target_kbps < self.limits.max_kbps
        {
            // Fast up to 90 % of the capacity last measured, gently beyond it.
            let near_ceiling = self
                .ceiling_kbps
                .is_some_and(|c| u64::from(self.target_kbps) * 10 >= u64::from(c) * 9);
            let step = if near_ceiling {
                self.target_kbps / 20
            } else {
                self.target_kbps / 10
            };
            self.target_kbps = (self.target_kbps + step + 1).min(self.limits.max_kbps);
            self.last_raise = now;
            self.last_effective = self.effective_kbps();
            return true;
        }
        ceiling_moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falling_behind_the_stream_cuts_towards_what_was_carried() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), 30, t0);
        let start = rc.target_kbps();
        // 1 Mbit/s carried over the last window.
        for i in 0..30u64 {
            let t = t0 + Duration::from_millis(10 * i);
            rc.on_sent(
                t,
                1250,
                Some(1250),
                Duration::ZERO,
                Duration::from_millis(33),
            );
        }
        let now = t0 + Duration::from_millis(300);
        assert!(rc.on_backlog(now));
        assert!(rc.target_kbps() < start, "{} < {start}", rc.target_kbps());
        assert!(rc.target_kbps() >= start / 2);
        // Not twice within the cut interval.
        assert!(!rc.on_backlog(now + Duration::from_millis(10)));
    }

    #[test]
    fn a_stream_is_never_given_more_than_its_quality_ceiling() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), 30, t0);
        assert_eq!(rc.target_kbps(), 8000);
        // 608x608 at 30 fps and 0.25 bit/pixel: 2772 kbit/s.
        rc.set_stream(608, 608, 0.25);
        assert_eq!(rc.quality_max_kbps(), 2772);
        assert_eq!(rc.target_kbps(), 2772);
        // A link with room to spare: the budget is used, yet the target stays at the ceiling.
        let mut t = t0;
        for _ in 0..300 {
            t += P;
            rc.on_sent(t, 11_000, Some(11_000), Duration::ZERO, P);
            rc.on_tick(t);
        }
        assert_eq!(rc.target_kbps(), 2772);
        // A source announced at 60 fps that publishes 30 (a QEMU 2D console): the ceiling
        // follows the measured rate, and does not follow what the client takes.
        let mut rc60 = RateControl::new(RateLimits::default(), 60, t);
        rc60.set_stream(608, 608, 0.25);
        assert_eq!(rc60.target_kbps(), 5544);
        rc60.set_source_rate(30.0);
        assert!(rc60.on_tick(t));
        assert_eq!(rc60.target_kbps(), 2772);
        for _ in 0..40 {
            t += P * 4; // a slow client takes every fourth frame
            rc60.on_sent(t, 11_000, Some(11_000), Duration::ZERO, P);
            rc60.on_tick(t);
        }
        assert_eq!(rc60.quality_max_kbps(), 2772);
        // A tiny stream is still allowed the minimum; without a stream the limits apply.
        rc.set_stream(16, 16, 0.25);
        assert_eq!(rc.quality_max_kbps(), RateLimits::default().min_kbps);
        rc.set_stream(0, 0, 0.25);
        assert_eq!(rc.quality_max_kbps(), RateLimits::default().max_kbps);
        rc.set_stream(608, 608, 0.0);
        assert_eq!(rc.quality_max_kbps(), RateLimits::default().max_kbps);
    }

    const P: Duration = Duration::from_millis(33);

    /// Run `secs` seconds at 30 fps over a link of `link_kbps` behind a socket that keeps at
    /// most `LOWAT` bytes unsent: each frame is what the target allows (an encoder that hits
    /// its budget); a write blocks until the unsent queue is back under the low-water mark;
    /// the next frame is taken when the write is done and the budget allows. Returns the
    /// time of the first cut, if any, and the longest a frame's last byte waited in the queue.
    fn run_link(
        rc: &mut RateControl,
        t: &mut Instant,
        secs: u64,
        link_kbps: f64,
    ) -> (Option<Instant>, Duration) {
        const LOWAT: f64 = 16.0 * 1024.0;
        let end = *t + Duration::from_secs(secs);
        let mut queued = 0.0f64; // unsent bytes in the kernel
        let mut first_cut = None;
        let mut worst = Duration::ZERO;
        let drain = |q: f64, d: Duration| (q - link_kbps * 1000.0 / 8.0 * d.as_secs_f64()).max(0.0);
        while *t < end {
            let bytes = (f64::from(rc.target_kbps()) * 1000.0 / 8.0 / 30.0) as usize;
            queued += bytes as f64;
            worst = worst.max(Duration::from_secs_f64(queued * 8.0 / (link_kbps * 1000.0)));
            let write = if queued > LOWAT {
                Duration::from_secs_f64((queued - LOWAT) * 8.0 / (link_kbps * 1000.0))
            } else {
                Duration::ZERO
            };
            queued = drain(queued, write);
            *t += write;
            let before = rc.cuts();
            rc.on_sent(*t, bytes, Some(bytes), write, P);
            if rc.cuts() > before && first_cut.is_none() {
                first_cut = Some(*t);
            }
            rc.on_tick(*t);
            // Wait for the next source frame that the budget allows.
            let next = (*t + P).max(rc.next_send());
            queued = drain(queued, next - *t);
            *t = next;
        }
        (first_cut, worst)
    }

    #[test]
    fn a_full_link_cuts_to_what_it_carried_and_recovers() {
        let mut t = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), 30, t);
        rc.set_stream_size(1280, 720);
        // A fast link: no cut.
        assert_eq!(run_link(&mut rc, &mut t, 2, 100_000.0).0, None);
        assert!(
            rc.target_kbps() >= 8000,
            "probes upwards on a fast, fully used link"
        );
        // The link drops to 4 Mbit/s: the first cut follows within a few frames; the queue a
        // frame waits in stays short (what the viewer feels), and the target neither collapses
        // nor runs far above the link.
        let drop = t;
        let (first, _) = run_link(&mut rc, &mut t, 4, 4000.0);
        let first = first.expect("a cut");
        assert!(
            first - drop <= Duration::from_millis(250),
            "first cut after {:?}",
            first - drop
        );
        for _ in 0..10 {
            let (_, worst) = run_link(&mut rc, &mut t, 1, 4000.0);
            assert!(
                worst <= Duration::from_millis(100),
                "a frame waited {worst:?} in the queue"
            );
            let k = rc.target_kbps();
            assert!((2000..=5000).contains(&k), "target {k} for a 4 Mbit/s link");
        }
        // The link recovers: the target climbs back within seconds.
        run_link(&mut rc, &mut t, 12, 100_000.0);
        assert!(
            rc.target_kbps() >= 7000,
            "recovered to {}",
            rc.target_kbps()
        );
    }

    #[test]
    fn one_cut_never_drops_more_than_half() {
        let mut t = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), 30, t);
        // A single blocked write with hardly anything carried in the window.
        t += P;
        assert!(rc.on_sent(t, 100, Some(100), Duration::from_millis(200), P));
        assert_eq!(rc.target_kbps(), 4000);
        // Not again within 300 ms.
        assert!(!rc.on_sent(
            t + Duration::from_millis(100),
            100,
            Some(100),
            Duration::from_millis(200),
            P
        ));
    }

    #[test]
    fn probing_needs_the_budget_to_be_used() {
        let mut t = Instant::now();
        let mut rc = RateControl::new(
            RateLimits {
                start_kbps: 2000,
                ..RateLimits::default()
            },
            30,
            t,
        );
        let feed = |rc: &mut RateControl, t: &mut Instant, secs: u64, bytes: usize| {
            for _ in 0..secs * 30 {
                *t += P;
                rc.on_sent(*t, bytes, Some(bytes), Duration::ZERO, P);
                rc.on_tick(*t);
            }
        };
        // Simple content: 500 kbit/s of frames, fast writes: the target stays.
        feed(&mut rc, &mut t, 5, 2_000);
        assert_eq!(rc.target_kbps(), 2000);
        // Content that uses the budget (2 Mbit/s = 8.3 KB/frame): +10 %/s.
        feed(&mut rc, &mut t, 5, 8_400);
        assert!(rc.target_kbps() > 2800, "{}", rc.target_kbps());
        assert!(rc.target_kbps() < 3400, "{}", rc.target_kbps());
    }

    #[test]
    fn a_slow_link_lowers_the_frame_rate_not_the_picture() {
        let t = Instant::now();
        let mut rc = RateControl::new(
            RateLimits {
                start_kbps: 300,
                ..RateLimits::default()
            },
            30,
            t,
        );
        rc.set_stream_size(1280, 720);
        // 300 kbit/s cannot give 30 readable 720p frames a second.
        let fps = rc.frame_rate();
        assert!((10.0..11.5).contains(&fps), "{fps}");
        // The encoder is asked for enough bits per frame at its configured 30 fps.
        let per_frame_bits = f64::from(rc.encoder_kbps()) * 1000.0 / 30.0;
        assert!(per_frame_bits >= MIN_BITS_PER_PIXEL * 1280.0 * 720.0 * 0.99);
        // Frames are paced at the reduced rate.
        let mut rc2 = RateControl::new(
            RateLimits {
                start_kbps: 300,
                ..RateLimits::default()
            },
            30,
            t,
        );
        rc2.set_stream_size(1280, 720);
        rc2.on_sent(t, 3_000, Some(3_000), Duration::ZERO, P);
        assert!(!rc2.may_send(t + Duration::from_millis(60)));
        assert!(rc2.may_send(t + Duration::from_millis(100)));
        // A fast link keeps the full frame rate.
        let mut fast = RateControl::new(RateLimits::default(), 30, t);
        fast.set_stream_size(1280, 720);
        assert_eq!(fast.frame_rate(), 30.0);
        assert_eq!(fast.encoder_kbps(), 8000);
    }

    #[test]
    fn frame_size_variance_costs_no_frames() {
        let p60 = Duration::from_micros(16_667);
        let mut t = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), 60, t);
        rc.set_stream_size(1280, 720);
        // Big and small frames averaging just under the 8 Mbit/s target, every source tick.
        for i in 0..240 {
            t += p60;
            assert!(rc.may_send(t), "frame {i} would be skipped");
            let bytes = if i % 2 == 0 { 8_000 } else { 24_000 };
            rc.on_sent(t, bytes, Some(bytes), Duration::ZERO, p60);
        }
        // A sustained excess is still paced: 40 KB per frame is 19 Mbit/s.
        let mut sent = 0;
        for _ in 0..240 {
            t += p60;
            if rc.may_send(t) {
                rc.on_sent(t, 40_000, Some(40_000), Duration::ZERO, p60);
                sent += 1;
            }
        }
        assert!(
            (90..=120).contains(&sent),
            "{sent} of 240 frames at 2.4x the target"
        );
    }

    #[test]
    fn a_huge_redraw_does_not_stall_video() {
        let p30 = Duration::from_millis(33);
        let t = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), 30, t);
        // 3 MB of lossless drawables (the first picture) at an 8 Mbit/s target.
        rc.on_sent(t, 3_000_000, None, Duration::ZERO, p30);
        assert!(
            rc.may_send(t + Duration::from_millis(260)),
            "debt is capped at 250 ms"
        );
    }

    #[test]
    fn reports_cut_only_on_sustained_lateness() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), 30, t0);
        assert!(
            !rc.on_report(t0, 5, 5, -5),
            "slightly late GStreamer frames are normal"
        );
        assert!(rc.on_report(t0, 5, 4, -120));
        assert_eq!(rc.target_kbps(), 6000);
        assert!(
            !rc.on_report(t0 + Duration::from_millis(10), 5, 5, -200),
            "rate limited"
        );
    }

    /// A path with a bottleneck of a given rate (which may change) and a FIFO buffer
    /// `depth` deep (in time at the current rate) in front of it; a batch that finds the buffer
    /// full waits in the server's socket (its write blocks) until it fits. PONGs come back
    /// `base` after a batch's last byte crossed.
    struct Path {
        kbps: f64,
        depth: Duration,
        base: Duration,
        busy_until: Option<Instant>,
    }

    impl Path {
        /// Write `bytes` at `at`: (how long the write blocks, when the last byte arrives).
        fn write(&mut self, at: Instant, bytes: usize) -> (Duration, Instant) {
            let queued = self
                .busy_until
                .map_or(Duration::ZERO, |b| b.saturating_duration_since(at));
            let block = queued.saturating_sub(self.depth);
            let start = self.busy_until.map_or(at, |b| b.max(at));
            let done = start + Duration::from_secs_f64(bytes as f64 * 8.0 / (self.kbps * 1000.0));
            self.busy_until = Some(done);
            (block, done)
        }
    }

    /// What the viewer saw: (capture time, shown time) of each frame delivered.
    struct Run {
        shown: Vec<(Instant, Instant)>,
    }

    impl Run {
        /// Ages of the frames captured in [from, to).
        fn ages(&self, from: Instant, to: Instant) -> Vec<Duration> {
            self.shown
                .iter()
                .filter(|(c, _)| *c >= from && *c < to)
                .map(|(c, s)| *s - *c)
                .collect()
        }
        fn p90(&self, from: Instant, to: Instant) -> Duration {
            let mut a = self.ages(from, to);
            a.sort();
            a.get(a.len() * 9 / 10).copied().unwrap_or(Duration::MAX)
        }
        fn fps(&self, from: Instant, to: Instant) -> f64 {
            self.ages(from, to).len() as f64 / (to - from).as_secs_f64()
        }
    }

    /// Drive `rc` over `path` at 30 fps, 1280x720, for `secs` from `t0`: each source frame is
    /// taken when the budget and the gate allow, sized at what the encoder is told, and a
    /// ping rides on each batch; `step(elapsed, path)` may change the path.
    fn drive(
        rc: &mut RateControl,
        path: &mut Path,
        t0: Instant,
        secs: f64,
        step: &dyn Fn(Duration, &mut Path),
    ) -> Run {
        let mut pongs: VecDeque<(Instant, u32)> = VecDeque::new();
        let mut shown = Vec::new();
        let mut t = t0;
        let mut last_tick = t0;
        let end = t0 + Duration::from_secs_f64(secs);
        while t < end {
            step(t - t0, path);
            while pongs.front().is_some_and(|(at, _)| *at <= t) {
                let (at, id) = pongs.pop_front().unwrap();
                rc.on_pong(at, id);
            }
            if t - last_tick >= Duration::from_millis(100) {
                rc.on_tick(t);
                last_tick = t;
            }
            if rc.may_send(t) {
                let bytes = (f64::from(rc.encoder_kbps()) * 1000.0 / 8.0 / 30.0) as usize;
                let ping = rc.want_ping(t, false);
                let (block, done) = path.write(t, bytes + 18);
                let written = t + block;
                rc.on_sent(written, bytes + 18, Some(bytes), block, P);
                if let Some(id) = ping {
                    pongs.push_back((done + path.base, id));
                }
                shown.push((t, done + path.base / 2));
            }
            t += P;
        }
        Run { shown }
    }

    fn rc_720p(t0: Instant) -> RateControl {
        let mut rc = RateControl::new(RateLimits::default(), 30, t0);
        rc.set_stream_size(1280, 720);
        rc
    }

    #[test]
    fn a_stream_starts_at_what_the_first_picture_measured() {
        let t0 = Instant::now();
        let mut rc = rc_720p(t0);
        let id = rc.want_ping(t0, false).unwrap();
        // A 400 KB first picture that took 6.5 s to arrive: about 490 kbit/s.
        rc.on_sent(
            t0 + Duration::from_millis(10),
            400_000,
            None,
            Duration::ZERO,
            P,
        );
        assert!(
            rc.gated(t0 + Duration::from_secs(1)),
            "nothing joins it meanwhile"
        );
        assert!(rc.on_pong(t0 + Duration::from_millis(6500), id));
        let k = rc.target_kbps();
        assert!((380..=430).contains(&k), "target {k}");
        // On a fast link the first picture changes nothing.
        let mut fast = rc_720p(t0);
        let id = fast.want_ping(t0, false).unwrap();
        fast.on_sent(t0, 3_000_000, None, Duration::ZERO, P);
        assert!(!fast.on_pong(t0 + Duration::from_millis(20), id));
        assert_eq!(fast.target_kbps(), 8000);
    }

    #[test]
    fn a_deep_buffer_is_kept_empty_by_the_delay_signal() {
        let t0 = Instant::now();
        let mut rc = rc_720p(t0);
        // 1.5 Mbit/s behind a 2 s buffer: the socket never blocks.
        let mut path = Path {
            kbps: 1500.0,
            depth: Duration::from_secs(2),
            base: Duration::from_millis(10),
            busy_until: None,
        };
        let run = drive(&mut rc, &mut path, t0, 30.0, &|_, _| {});
        let (from, to) = (t0 + Duration::from_secs(5), t0 + Duration::from_secs(30));
        let p90 = run.p90(from, to);
        let fps = run.fps(from, to);
        assert!(p90 <= Duration::from_millis(250), "p90 age {p90:?}");
        assert!(fps >= 15.0, "{fps} fps");
        // Probing and cutting around the link: within a fifth of it either way.
        let k = rc.target_kbps();
        assert!(
            (700..=1800).contains(&k),
            "target {k} for a 1.5 Mbit/s link"
        );
        assert!(rc.delay_cuts() > 0);
        // Without the delay signal (no pongs: a client that never answers) the same link
        // holds seconds of frames: what the signal is for.
        let mut deaf = rc_720p(t0);
        let mut path = Path {
            kbps: 1500.0,
            depth: Duration::from_secs(2),
            base: Duration::from_millis(10),
            busy_until: None,
        };
        let mut pongs_lost = drive_deaf(&mut deaf, &mut path, t0, 30.0);
        pongs_lost.sort();
        assert!(pongs_lost[pongs_lost.len() / 2] > Duration::from_secs(1));
    }

    /// As [`drive`], for a client that never answers pings: (ages after the first 5 s).
    fn drive_deaf(rc: &mut RateControl, path: &mut Path, t0: Instant, secs: f64) -> Vec<Duration> {
        let mut ages = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs_f64(secs) {
            rc.on_tick(t);
            if rc.may_send(t) {
                let bytes = (f64::from(rc.encoder_kbps()) * 1000.0 / 8.0 / 30.0) as usize;
                let (block, done) = path.write(t, bytes);
                rc.on_sent(t + block, bytes, Some(bytes), block, P);
                if t >= t0 + Duration::from_secs(5) {
                    ages.push(done - t);
                }
            }
            t += P;
        }
        ages
    }

    #[test]
    fn a_slow_deep_link_keeps_frames_young() {
        let t0 = Instant::now();
        let mut rc = rc_720p(t0);
        let mut path = Path {
            kbps: 500.0,
            depth: Duration::from_secs(2),
            base: Duration::from_millis(20),
            busy_until: None,
        };
        let run = drive(&mut rc, &mut path, t0, 30.0, &|_, _| {});
        let (from, to) = (t0 + Duration::from_secs(5), t0 + Duration::from_secs(30));
        let p90 = run.p90(from, to);
        assert!(p90 <= Duration::from_millis(400), "p90 age {p90:?}");
        assert!(run.fps(from, to) >= 5.0, "{} fps", run.fps(from, to));
        assert!(rc.target_kbps() <= 550, "target {}", rc.target_kbps());
    }

    #[test]
    fn a_shallow_buffer_still_works() {
        let t0 = Instant::now();
        let mut rc = rc_720p(t0);
        // 4 Mbit/s with 50 ms of buffer: the socket blocks as well.
        let mut path = Path {
            kbps: 4000.0,
            depth: Duration::from_millis(50),
            base: Duration::from_millis(2),
            busy_until: None,
        };
        let run = drive(&mut rc, &mut path, t0, 20.0, &|_, _| {});
        let (from, to) = (t0 + Duration::from_secs(5), t0 + Duration::from_secs(20));
        assert!(
            run.p90(from, to) <= Duration::from_millis(150),
            "{:?}",
            run.p90(from, to)
        );
        assert!(run.fps(from, to) >= 25.0, "{}", run.fps(from, to));
        let k = rc.target_kbps();
        assert!((2500..=4400).contains(&k), "target {k}");
    }

    #[test]
    fn a_bandwidth_step_down_recovers_within_a_second_and_a_half() {
        let t0 = Instant::now();
        let mut rc = rc_720p(t0);
        // With the default quality ceiling (0.25 bit/pixel: 6.9 Mbit/s at 720p30), as served.
        rc.set_stream(1280, 720, 0.25);
        let mut path = Path {
            kbps: 20_000.0,
            depth: Duration::from_secs(2),
            base: Duration::from_millis(10),
            busy_until: None,
        };
        let step_at = Duration::from_secs(10);
        let run = drive(&mut rc, &mut path, t0, 25.0, &|e, p| {
            p.kbps = if e < step_at { 20_000.0 } else { 2_000.0 };
        });
        let step = t0 + step_at;
        // Before: the full rate, young frames.
        assert!(run.p90(t0 + Duration::from_secs(5), step) <= Duration::from_millis(60));
        // After: the first frame from which every frame for a second is under 300 ms.
        let after: Vec<(Instant, Duration)> = run
            .shown
            .iter()
            .filter(|(c, _)| *c >= step)
            .map(|(c, s)| (*c, *s - *c))
            .collect();
        let back = after
            .iter()
            .position(|(c, _)| {
                after
                    .iter()
                    .filter(|(c2, _)| *c2 >= *c && *c2 < *c + Duration::from_secs(1))
                    .all(|(_, a)| *a < Duration::from_millis(300))
            })
            .map(|i| after[i].0 - step)
            .expect("never recovered");
        assert!(
            back <= Duration::from_millis(1500),
            "back under 300 ms after {back:?}"
        );
        let k = rc.target_kbps();
        assert!((1000..=2200).contains(&k), "target {k} after the step");
        assert!(run.fps(step + Duration::from_secs(5), t0 + Duration::from_secs(25)) >= 15.0);
    }

    #[test]
    fn late_reports_do_not_cut_when_the_path_holds_no_queue() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), 30, t0);
        let id = rc.want_ping(t0, false).unwrap();
        rc.on_sent(t0, 100, None, Duration::ZERO, P);
        rc.on_pong(t0 + Duration::from_millis(5), id);
        assert!(!rc.on_report(t0 + Duration::from_secs(1), 5, 5, -90));
        assert_eq!(rc.target_kbps(), 8000);
    }

    #[test]
    fn never_below_the_minimum() {
        let mut t = Instant::now();
        let mut rc = RateControl::new(
            RateLimits {
                start_kbps: 400,
                ..RateLimits::default()
            },
            30,
            t,
        );
        for _ in 0..20 {
            t += Duration::from_millis(400);
            rc.on_sent(t, 10, Some(10), Duration::from_secs(1), P);
        }
        assert_eq!(rc.target_kbps(), 300);
    }
}

/// Tunes a client's multimedia-clock offset D (how long after capture it shows a frame) from
/// STREAM_REPORT's `last_frame_delay`, which is the margin by which the last frame arrived
/// early. The aim is a small positive margin: frames must not arrive late (the client's
/// MJPEG decoder drops late frames outright; GStreamer codecs count them as drops) and any
/// margin beyond that is pure latency. Late frames raise D at once; a margin that stays large
/// lowers it slowly. Steps are bounded, so the client never sees the large clock jumps that
/// make it reschedule its queues.
/// The most D is raised to for codecs whose late frames the client still shows.
pub const GST_MAX_MARGIN_MS: u32 = 30;
/// The most D is ever raised to by default (`--max-display-delay`).
pub const DEFAULT_MAX_MARGIN_MS: u32 = 100;

pub struct MmTuner {
    margin_ms: u32,
    min_ms: u32,
    max_ms: u32,
    target_ms: i32,
    late_reports: u32,
    early_reports: u32,
    last_change: Option<Instant>,
}

impl MmTuner {
    pub fn new(initial_ms: u32) -> Self {
        Self::with_max(initial_ms, DEFAULT_MAX_MARGIN_MS)
    }

    /// A tuner that never sets D above `max_ms` (at least 5 ms): the client's display delay
    /// is not a buffer for queueing on the link.
    pub fn with_max(initial_ms: u32, max_ms: u32) -> Self {
        let max_ms = max_ms.max(5);
        MmTuner {
            margin_ms: initial_ms.clamp(5, max_ms),
            min_ms: 5,
            max_ms,
            target_ms: 10,
            late_reports: 0,
            early_reports: 0,
            last_change: None,
        }
    }

    pub fn margin_ms(&self) -> u32 {
        self.margin_ms
    }

    /// A report arrived. `congested`: the link is queueing (its rate control says so), so
    /// frames that arrive late are the link's doing and must cut the rate, not raise D.
    /// Returns the new D when it changed.
    pub fn on_report(
        &mut self,
        now: Instant,
        mjpeg: bool,
        last_frame_delay: i32,
        num_drops: u32,
        congested: bool,
    ) -> Option<u32> {
        let late = !congested
            && (last_frame_delay < 0 || (mjpeg && num_drops > 0 && num_drops != u32::MAX));
        let early = last_frame_delay > 3 * self.target_ms;
        self.late_reports = if late { self.late_reports + 1 } else { 0 };
        self.early_reports = if early { self.early_reports + 1 } else { 0 };
        let since = self
            .last_change
            .map_or(Duration::MAX, |t| now.duration_since(t));
        // GStreamer codecs show a late frame anyway (only MJPEG drops it), so for them a
        // larger D would only add latency: raise it just enough to stop counting every frame
        // as late.
        let cap = if mjpeg {
            self.max_ms
        } else {
            GST_MAX_MARGIN_MS.max(self.min_ms)
        };
        let new =
            if late && (mjpeg || self.late_reports >= 2) && since >= Duration::from_millis(500) {
                let step = (self.target_ms - last_frame_delay).clamp(5, 100) as u32;
                (self.margin_ms + step)
                    .min(cap)
                    .max(self.margin_ms.min(cap))
            } else if self.early_reports >= 3 && since >= Duration::from_secs(2) {
                let step = (last_frame_delay - self.target_ms).clamp(1, 100) as u32;
                self.margin_ms.saturating_sub(step).max(self.min_ms)
            } else {
                return None;
            };
        if new == self.margin_ms {
            return None;
        }
        self.margin_ms = new;
        self.last_change = Some(now);
        self.late_reports = 0;
        self.early_reports = 0;
        Some(new)
    }
}

#[cfg(test)]
mod mm_tests {
    use super::*;

    #[test]
    fn late_frames_raise_the_margin_at_once_for_mjpeg() {
        let t0 = Instant::now();
        let mut m = MmTuner::new(10);
        // MJPEG frames arriving 3 ms late are being dropped by the client: raise now.
        assert_eq!(m.on_report(t0, true, -3, 2, false), Some(23));
        // Not again within half a second.
        assert_eq!(
            m.on_report(t0 + Duration::from_millis(100), true, -1, 1, false),
            None
        );
        assert_eq!(
            m.on_report(t0 + Duration::from_millis(700), true, -1, 1, false),
            Some(34)
        );
    }

    #[test]
    fn gstreamer_codecs_need_two_late_reports_and_large_margins_shrink_slowly() {
        let t0 = Instant::now();
        let mut m = MmTuner::new(20);
        assert_eq!(m.on_report(t0, false, -4, 5, false), None);
        assert_eq!(
            m.on_report(t0, false, -4, 5, false),
            Some(30),
            "capped: late H.264 frames are shown anyway"
        );
        assert_eq!(
            m.on_report(t0 + Duration::from_secs(1), false, -40, 5, false),
            None
        );
        assert_eq!(
            m.on_report(t0 + Duration::from_secs(1), false, -40, 5, false),
            None,
            "stays at the cap"
        );
        // Comfortably early: lowered only after three such reports and two quiet seconds.
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(m.on_report(t1, false, 60, 0, false), None);
        assert_eq!(m.on_report(t1, false, 60, 0, false), None);
        assert_eq!(
            m.on_report(t1, false, 60, 0, false),
            Some(5),
            "34 - 50, floored at 5"
        );
        // A margin near the target is left alone.
        for i in 0..10 {
            assert_eq!(
                m.on_report(t1 + Duration::from_secs(3 + i), false, 12, 0, false),
                None
            );
        }
    }

    #[test]
    fn lateness_on_a_congested_link_does_not_raise_the_margin_and_the_margin_is_capped() {
        let t0 = Instant::now();
        let mut m = MmTuner::new(20);
        for i in 0..10 {
            let t = t0 + Duration::from_secs(i);
            assert_eq!(m.on_report(t, true, -300, 5, true), None);
        }
        assert_eq!(m.margin_ms(), 20);
        // Not congested: MJPEG lateness raises it, never past the cap.
        for i in 10..30 {
            m.on_report(t0 + Duration::from_secs(i), true, -300, 5, false);
        }
        assert_eq!(m.margin_ms(), DEFAULT_MAX_MARGIN_MS);
        let mut m = MmTuner::with_max(20, 400);
        for i in 0..30 {
            m.on_report(t0 + Duration::from_secs(i), true, -300, 5, false);
        }
        assert_eq!(m.margin_ms(), 400, "a user may allow more");
        assert_eq!(MmTuner::with_max(500, 50).margin_ms(), 50);
    }

    #[test]
    fn the_unsupported_stream_report_is_not_lateness() {
        let mut m = MmTuner::new(20);
        assert_eq!(m.on_report(Instant::now(), true, 5, u32::MAX, false), None);
    }
}
