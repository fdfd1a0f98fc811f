//! Per-client video rate control. Pure logic: time is passed in.
//!
//! Signals:
//! - **Socket backpressure.** The display socket has a small unsent-data limit
//!   (TCP_NOTSENT_LOWAT), so a write that takes long means the link is full; the bytes it
//!   moved over the time it took is a throughput sample. The target is cut to 80 % of it at
//!   once (at most every 200 ms), so a bandwidth drop is followed within a frame or two.
//! - **Client reports** (STREAM_REPORT): late frames cut the target by a quarter.
//! - **Quiet time**: after 1 s without a cut (3 s after one) the target climbs by 10 %, up to
//!   the maximum, so it recovers within seconds without oscillating.
//!
//! Pacing: after a frame of `B` bytes the next one may go `B / target` later. When the encoder
//! cannot shrink frames below what the target allows at the full frame rate, the frame rate
//! drops instead of the queue growing — quality per frame is kept above a floor by never
//! setting the encoder below `min_kbps`.

use std::time::{Duration, Instant};

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

pub struct RateControl {
    limits: RateLimits,
    target_kbps: u32,
    last_cut: Option<Instant>,
    last_raise: Instant,
    next_send: Instant,
    cuts: u64,
}

const CUT_INTERVAL: Duration = Duration::from_millis(200);

impl RateControl {
    pub fn new(limits: RateLimits, now: Instant) -> Self {
        let start = limits.start_kbps.clamp(limits.min_kbps, limits.max_kbps);
        RateControl {
            limits,
            target_kbps: start,
            last_cut: None,
            last_raise: now,
            next_send: now,
            cuts: 0,
        }
    }

    pub fn target_kbps(&self) -> u32 {
        self.target_kbps
    }

    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// Whether the client's budget allows sending a frame now.
    pub fn may_send(&self, now: Instant) -> bool {
        now >= self.next_send
    }

    /// When the next frame may go.
    pub fn next_send(&self) -> Instant {
        self.next_send
    }

    fn cut_to(&mut self, now: Instant, kbps: u32) -> bool {
        if self
            .last_cut
            .is_some_and(|t| now.duration_since(t) < CUT_INTERVAL)
        {
            return false;
        }
        let new = kbps.clamp(self.limits.min_kbps, self.limits.max_kbps);
        if new >= self.target_kbps {
            return false;
        }
        self.target_kbps = new;
        self.last_cut = Some(now);
        self.cuts += 1;
        true
    }

    /// A frame of `bytes` was written, which took `write_time`. `frame_period` is the source's.
    /// Returns true when the target changed.
    pub fn on_sent(
        &mut self,
        now: Instant,
        bytes: usize,
        write_time: Duration,
        frame_period: Duration,
    ) -> bool {
        let bits = bytes as u64 * 8;
        // Pace the next frame by this one's size at the target rate.
        let budget = Duration::from_micros(bits * 1000 / u64::from(self.target_kbps.max(1)));
        self.next_send = now + budget.saturating_sub(frame_period / 4);
        // A write that blocked for a good part of a frame period means the link is full.
        if write_time > frame_period / 2 && bytes > 0 {
            let kbps = (bits as f64 / write_time.as_secs_f64() / 1000.0) as u32;
            return self.cut_to(now, kbps.saturating_mul(4) / 5);
        }
        false
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
        if late {
            return self.cut_to(now, self.target_kbps.saturating_mul(3) / 4);
        }
        false
    }

    /// Called regularly. Returns true when the target changed.
    pub fn on_tick(&mut self, now: Instant) -> bool {
        let quiet = match self.last_cut {
            Some(t) => now.duration_since(t) >= Duration::from_secs(3),
            None => true,
        };
        if quiet
            && now.duration_since(self.last_raise) >= Duration::from_secs(1)
            && self.target_kbps < self.limits.max_kbps
        {
            self.target_kbps =
                (self.target_kbps + self.target_kbps / 10 + 1).min(self.limits.max_kbps);
            self.last_raise = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(16);

    #[test]
    fn backpressure_cuts_at_once_and_recovery_is_gradual() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), t0);
        assert_eq!(rc.target_kbps(), 8000);
        // 50 KB took 100 ms: a 4 Mbit/s link.
        assert!(rc.on_sent(t0, 50_000, Duration::from_millis(100), P));
        assert_eq!(rc.target_kbps(), 3200);
        // A second sample within 200 ms does not cut again.
        assert!(!rc.on_sent(
            t0 + Duration::from_millis(100),
            50_000,
            Duration::from_millis(300),
            P
        ));
        // Fast writes never cut.
        assert!(!rc.on_sent(
            t0 + Duration::from_millis(500),
            50_000,
            Duration::from_millis(1),
            P
        ));
        // No raise during the 3 s after a cut, then +10 % per second.
        let mut t = t0;
        for _ in 0..28 {
            t += Duration::from_millis(100);
            assert!(!rc.on_tick(t));
        }
        t += Duration::from_millis(300);
        assert!(rc.on_tick(t));
        assert_eq!(rc.target_kbps(), 3521);
        assert!(
            !rc.on_tick(t + Duration::from_millis(500)),
            "at most once a second"
        );
        // Up to the maximum, never beyond.
        for i in 1..100 {
            rc.on_tick(t + Duration::from_secs(i));
        }
        assert_eq!(rc.target_kbps(), 20000);
    }

    #[test]
    fn pacing_follows_frame_size() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(
            RateLimits {
                start_kbps: 1000,
                ..RateLimits::default()
            },
            t0,
        );
        assert!(rc.may_send(t0));
        // 25 KB at 1 Mbit/s = 200 ms, less a quarter frame of slack.
        rc.on_sent(t0, 25_000, Duration::ZERO, P);
        assert!(!rc.may_send(t0 + Duration::from_millis(100)));
        assert!(rc.may_send(t0 + Duration::from_millis(200)));
    }

    #[test]
    fn reports_cut_only_on_sustained_lateness() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), t0);
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

    #[test]
    fn never_below_the_minimum() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits::default(), t0);
        rc.on_sent(t0, 1000, Duration::from_secs(10), P);
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
        MmTuner {
            margin_ms: initial_ms.clamp(5, 400),
            min_ms: 5,
            max_ms: 400,
            target_ms: 10,
            late_reports: 0,
            early_reports: 0,
            last_change: None,
        }
    }

    pub fn margin_ms(&self) -> u32 {
        self.margin_ms
    }

    /// A report arrived. Returns the new D when it changed.
    pub fn on_report(
        &mut self,
        now: Instant,
        mjpeg: bool,
        last_frame_delay: i32,
        num_drops: u32,
    ) -> Option<u32> {
        let late = last_frame_delay < 0 || (mjpeg && num_drops > 0 && num_drops != u32::MAX);
        let early = last_frame_delay > 3 * self.target_ms;
        self.late_reports = if late { self.late_reports + 1 } else { 0 };
        self.early_reports = if early { self.early_reports + 1 } else { 0 };
        let since = self
            .last_change
            .map_or(Duration::MAX, |t| now.duration_since(t));
        let new =
            if late && (mjpeg || self.late_reports >= 2) && since >= Duration::from_millis(500) {
                let step = (self.target_ms - last_frame_delay).clamp(5, 100) as u32;
                (self.margin_ms + step).min(self.max_ms)
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
        assert_eq!(m.on_report(t0, true, -3, 2), Some(23));
        // Not again within half a second.
        assert_eq!(
            m.on_report(t0 + Duration::from_millis(100), true, -1, 1),
            None
        );
        assert_eq!(
            m.on_report(t0 + Duration::from_millis(700), true, -1, 1),
            Some(34)
        );
    }

    #[test]
    fn gstreamer_codecs_need_two_late_reports_and_large_margins_shrink_slowly() {
        let t0 = Instant::now();
        let mut m = MmTuner::new(20);
        assert_eq!(m.on_report(t0, false, -4, 5), None);
        assert_eq!(m.on_report(t0, false, -4, 5), Some(34));
        // Comfortably early: lowered only after three such reports and two quiet seconds.
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(m.on_report(t1, false, 60, 0), None);
        assert_eq!(m.on_report(t1, false, 60, 0), None);
        assert_eq!(
            m.on_report(t1, false, 60, 0),
            Some(5),
            "34 - 50, floored at 5"
        );
        // A margin near the target is left alone.
        for i in 0..10 {
            assert_eq!(
                m.on_report(t1 + Duration::from_secs(3 + i), false, 12, 0),
                None
            );
        }
    }

    #[test]
    fn the_unsupported_stream_report_is_not_lateness() {
        let mut m = MmTuner::new(20);
        assert_eq!(m.on_report(Instant::now(), true, 5, u32::MAX), None);
    }
}
