//! The end-to-end delay of one client's display channel, measured with SPICE PING/PONG. Pure:
//! time is passed in.
//!
//! A PING rides at the end of each batch the server writes (at most one per [`MIN_PING_GAP`],
//! and one on its own every [`IDLE_PING`] while the channel is quiet). The client answers
//! each when it has read and handled everything before it, so a PONG says: every byte
//! written up to that PING has reached the client, `rtt` after it was written. From that:
//!
//! - **Baseline**: the lowest RTT of the last [`MIN_RTT_WINDOW`], each less its batch's
//!   serialization at the measured link rate (a route that changes is forgotten after that).
//! - **Queueing delay** of a ping: its RTT less the baseline less the time its own batch needs
//!   to cross the link at the measured link rate (a big frame on a slow link is not a queue).
//!   Growth of this means the path is full, whatever the local socket says: buffers the
//!   server cannot see (a bloated router, a tunnel, a relay) fill before its socket blocks.
//! - **Delivery rate**: bytes acknowledged between PONGs at least [`RATE_SPAN`] apart, counted
//!   only while data was in flight the whole time (an idle link says nothing about its
//!   capacity). The link rate is the highest such rate of the last [`RATE_MEMORY`].
//! - **Data in flight**: what was written and not yet acknowledged; its oldest ping's age is
//!   how long the oldest undelivered byte has been on its way.
//!
//! Memory is bounded: at most [`MAX_PENDING`] pings in flight (no more are sent while that
//! many are unanswered), and sample histories of a few seconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Pings unanswered at once, at most.
pub const MAX_PENDING: usize = 64;
/// Pings are at least this far apart when they ride on batches.
pub const MIN_PING_GAP: Duration = Duration::from_millis(10);
/// A quiet channel still gets a ping this often (the baseline stays current).
pub const IDLE_PING: Duration = Duration::from_millis(250);
/// The baseline is the lowest RTT of this long.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(20);
const MIN_RTT_BUCKET: Duration = Duration::from_secs(2);
/// Delivery-rate samples span at least this long.
pub const RATE_SPAN: Duration = Duration::from_millis(150);
/// The link rate is the highest delivery rate of this long.
pub const RATE_MEMORY: Duration = Duration::from_secs(2);
/// Bytes still in flight at the start of a delivery-rate sample for it to count (the link
/// was busy, not idle).
const BUSY_BYTES: u64 = 1500;

/// What one PONG measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelaySample {
    /// From writing the ping to reading its pong.
    pub rtt: Duration,
    /// `rtt` above the baseline and the ping's own batch's serialization.
    pub queue_delay: Duration,
    /// The delivery rate this pong completed, kbit/s (`None`: too short a span, or the link
    /// was idle during it).
    pub delivery_kbps: Option<f64>,
    /// The first answer on this channel. Its delivery rate, when the channel began with a
    /// burst of at least [`INITIAL_BURST`] bytes (the first picture), is what that burst
    /// took to arrive: a first measure of the link before any stream starts.
    pub initial: bool,
}

/// A first batch at least this big measures the link by its own delivery.
pub const INITIAL_BURST: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Ping {
    id: u32,
    sent: Instant,
    /// Stream position just after this ping's batch (`None` until it is written).
    pos: Option<u64>,
    /// Bytes of the batch it rode on.
    batch: u64,
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    at: Instant,
    /// Bytes delivered up to here.
    pos: u64,
    /// Bytes written by then.
    written: u64,
}

#[derive(Debug)]
pub struct DelayProbe {
    next_id: u32,
    pending: VecDeque<Ping>,
    written: u64,
    last_ping: Option<Instant>,
    /// Lowest RTT per [`MIN_RTT_BUCKET`], newest last.
    min_rtt: VecDeque<(Instant, Duration)>,
    acks: VecDeque<Ack>,
    /// Delivery-rate samples (when, kbit/s), newest last.
    rates: VecDeque<(Instant, f64)>,
    last: Option<DelaySample>,
    answered: u64,
    /// When the first ping was asked for (just before the channel's first write).
    started: Option<Instant>,
}

impl Default for DelayProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl DelayProbe {
    pub fn new() -> Self {
        DelayProbe {
            next_id: 1,
            pending: VecDeque::with_capacity(MAX_PENDING),
            written: 0,
            last_ping: None,
            min_rtt: VecDeque::new(),
            acks: VecDeque::new(),
            rates: VecDeque::new(),
            last: None,
            answered: 0,
            started: None,
        }
    }

    /// A ping to queue at the end of the batch about to be written (`idle`: a batch of its
    /// own, on a quiet channel), or `None` when none is due. The caller must then report the
    /// batch's bytes with [`Self::on_written`].
    pub fn want_ping(&mut self, now: Instant, idle: bool) -> Option<u32> {
        if self.pending.len() >= MAX_PENDING {
            return None;
        }
        let gap = if idle { IDLE_PING } else { MIN_PING_GAP };
        if self.last_ping.is_some_and(|t| now.duration_since(t) < gap) {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.pending.push_back(Ping {
            id,
            sent: now,
            pos: None,
            batch: 0,
        });
        self.last_ping = Some(now);
        self.started.get_or_insert(now);
        Some(id)
    }

    /// `bytes` were written (a whole batch, with the ping queued before it, if any).
    pub fn on_written(&mut self, now: Instant, bytes: usize) {
        self.written += bytes as u64;
        // Only the newest pings can still be unwritten.
        for p in self
            .pending
            .iter_mut()
            .rev()
            .take_while(|p| p.pos.is_none())
        {
            p.pos = Some(self.written);
            p.batch = bytes as u64;
            p.sent = now;
        }
    }

    /// Whether the client has ever answered (clients that do not are never judged by delay).
    pub fn answered(&self) -> bool {
        self.answered > 0
    }

    /// The lowest RTT of the last [`MIN_RTT_WINDOW`].
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.iter().map(|(_, d)| *d).min()
    }

    /// The last sample.
    pub fn last(&self) -> Option<DelaySample> {
        self.last
    }

    /// The highest delivery rate of the last [`RATE_MEMORY`], kbit/s.
    pub fn link_kbps(&self) -> Option<f64> {
        self.rates.iter().map(|(_, r)| *r).reduce(f64::max)
    }

    /// How long the oldest byte not yet acknowledged has been on its way (`None`: nothing
    /// written is unanswered).
    pub fn oldest_in_flight(&self, now: Instant) -> Option<Duration> {
        self.pending
            .iter()
            .find(|p| p.pos.is_some())
            .map(|p| now.saturating_duration_since(p.sent))
    }

    /// Bytes written and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.written - self.acks.back().map_or(0, |a| a.pos)
    }

    /// A PONG for `id` arrived. Unknown ids (a duplicate, a ping of another kind) give `None`.
    pub fn on_pong(&mut self, now: Instant, id: u32) -> Option<DelaySample> {
        let i = self.pending.iter().position(|p| p.id == id)?;
        let ping = self.pending[i];
        // Pongs come in order; an earlier ping left unanswered will never be.
        self.pending.drain(..=i);
        let pos = ping.pos?;
        let initial = self.answered == 0;
        self.answered += 1;
        let rtt = now.saturating_duration_since(ping.sent);
        let mut delivery_kbps = self.note_ack(now, pos);
        if let (true, Some(start)) = (initial && pos >= INITIAL_BURST, self.started) {
            // Everything so far took this long to arrive (a lower bound of the link rate:
            // the RTT is in it too).
            let secs = now.duration_since(start).as_secs_f64().max(1e-3);
            let kbps = pos as f64 * 8.0 / secs / 1000.0;
            self.rates.push_back((now, kbps));
            delivery_kbps = Some(kbps);
        }
        let serialize = self.link_kbps().map_or(Duration::ZERO, |k| {
            Duration::from_secs_f64(ping.batch as f64 * 8.0 / (k.max(1.0) * 1000.0))
        });
        // The baseline is the path's own delay, without the time a batch takes to cross it
        // (the first picture's seconds on a slow link are no RTT).
        self.note_rtt(now, rtt.saturating_sub(serialize));
        let base = self.min_rtt().unwrap_or(rtt);
        let sample = DelaySample {
            rtt,
            queue_delay: rtt.saturating_sub(base).saturating_sub(serialize),
            delivery_kbps,
            initial,
        };
        self.last = Some(sample);
        Some(sample)
    }

    fn note_rtt(&mut self, now: Instant, rtt: Duration) {
        match self.min_rtt.back_mut() {
            Some((start, d)) if now.duration_since(*start) < MIN_RTT_BUCKET => {
                *d = (*d).min(rtt);
            }
            _ => self.min_rtt.push_back((now, rtt)),
        }
        while self
            .min_rtt
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > MIN_RTT_WINDOW)
        {
            self.min_rtt.pop_front();
        }
    }

    fn note_ack(&mut self, now: Instant, pos: u64) -> Option<f64> {
        // The latest earlier ack at least RATE_SPAN ago.
        let from = self
            .acks
            .iter()
            .rev()
            .find(|a| now.duration_since(a.at) >= RATE_SPAN)
            .copied();
        self.acks.push_back(Ack {
            at: now,
            pos,
            written: self.written,
        });
        while self.acks.len() > 2
            && self
                .acks
                .get(1)
                .is_some_and(|a| now.duration_since(a.at) > RATE_MEMORY)
        {
            self.acks.pop_front();
        }
        while self
            .rates
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_MEMORY)
        {
            self.rates.pop_front();
        }
        let from = from?;
        // The link was busy only if data was waiting at the start of the span.
        if from.written < from.pos + BUSY_BYTES {
            return None;
        }
        let secs = now.duration_since(from.at).as_secs_f64();
        let kbps = (pos - from.pos) as f64 * 8.0 / secs / 1000.0;
        self.rates.push_back((now, kbps));
        Some(kbps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn pings_ride_on_batches_and_are_bounded() {
        let t0 = Instant::now();
        let mut p = DelayProbe::new();
        let a = p.want_ping(t0, false).unwrap();
        p.on_written(t0, 1000);
        assert_eq!(p.want_ping(t0 + ms(5), false), None, "too soon");
        assert_eq!(
            p.want_ping(t0 + ms(100), true),
            None,
            "not idle long enough"
        );
        let b = p.want_ping(t0 + ms(300), true).unwrap();
        assert_ne!(a, b);
        p.on_written(t0 + ms(300), 20);
        assert_eq!(p.in_flight(), 1020);
        assert_eq!(p.oldest_in_flight(t0 + ms(400)), Some(ms(400)));
        // At most MAX_PENDING unanswered.
        let mut t = t0 + ms(400);
        let mut n = 2;
        while p.want_ping(t, false).is_some() {
            p.on_written(t, 10);
            t += ms(20);
            n += 1;
        }
        assert_eq!(n, MAX_PENDING);
        // The pong of the last one answers every earlier one.
        assert!(!p.answered());
        let last = p.pending.back().unwrap().id;
        let s = p.on_pong(t, last).unwrap();
        assert!(p.answered());
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.oldest_in_flight(t), None);
        assert_eq!(
            s.queue_delay,
            Duration::ZERO,
            "the first sample is the baseline"
        );
        assert_eq!(p.on_pong(t, a), None, "already answered");
        assert_eq!(p.on_pong(t, 999_999), None, "unknown");
    }

    /// A link of `kbps` with `base` one-way-and-back delay and an unbounded FIFO: returns the
    /// pong times of batches written at the given times.
    struct Link {
        kbps: f64,
        base: Duration,
        busy_until: Option<Instant>,
    }

    impl Link {
        fn deliver(&mut self, at: Instant, bytes: usize) -> Instant {
            let start = self.busy_until.map_or(at, |b| b.max(at));
            let done = start + Duration::from_secs_f64(bytes as f64 * 8.0 / (self.kbps * 1000.0));
            self.busy_until = Some(done);
            done + self.base
        }
    }

    #[test]
    fn queueing_delay_rises_when_more_is_sent_than_the_link_carries() {
        let t0 = Instant::now();
        let mut p = DelayProbe::new();
        let mut link = Link {
            kbps: 1500.0,
            base: ms(10),
            busy_until: None,
        };
        let mut pongs: VecDeque<(Instant, u32)> = VecDeque::new();
        let mut last = None;
        let mut drive = |p: &mut DelayProbe, from: u64, to: u64, bytes: usize| {
            for i in from..to {
                let t = t0 + ms(33 * i);
                while pongs.front().is_some_and(|(at, _)| *at <= t) {
                    let (at, id) = pongs.pop_front().unwrap();
                    last = p.on_pong(at, id);
                }
                let id = p.want_ping(t, false).unwrap();
                p.on_written(t, bytes);
                pongs.push_back((link.deliver(t, bytes), id));
            }
            last
        };
        // 30 frames/s of 4 KB (1 Mbit/s) on a 1.5 Mbit/s link: no queue.
        let s = drive(&mut p, 0, 90, 4000).unwrap();
        assert!(s.queue_delay < ms(5), "{s:?}");
        assert!(s.rtt >= ms(10) && s.rtt < ms(40), "{s:?}");
        // 8 KB frames (2 Mbit/s): the queue grows by a third of the time.
        let s = drive(&mut p, 90, 150, 8000).unwrap();
        assert!(s.queue_delay > ms(300), "{s:?}");
        // The link's rate is measured while it is busy.
        let k = p.link_kbps().unwrap();
        assert!((1400.0..1600.0).contains(&k), "{k}");
        assert!(s
            .delivery_kbps
            .is_some_and(|d| (1400.0..1600.0).contains(&d)));
        // The oldest byte in flight has been waiting as long as the queue is deep.
        let oldest = p.oldest_in_flight(t0 + ms(33 * 150)).unwrap();
        assert!(oldest > ms(300), "{oldest:?}");
    }

    #[test]
    fn a_big_batch_on_a_slow_link_is_not_a_queue() {
        let t0 = Instant::now();
        let mut p = DelayProbe::new();
        let mut link = Link {
            kbps: 500.0,
            base: ms(5),
            busy_until: None,
        };
        // Keep the link busy for a while so its rate is known, then drain it.
        let mut t = t0;
        let mut pongs = Vec::new();
        for _ in 0..20 {
            let id = p.want_ping(t, false).unwrap();
            p.on_written(t, 2000);
            pongs.push((link.deliver(t, 2000), id));
            t += ms(20);
        }
        for (at, id) in pongs.drain(..) {
            p.on_pong(at, id);
        }
        assert!(p.link_kbps().is_some());
        // Idle, then one 20 KB keyframe: 320 ms to serialize, no queue ahead of it.
        t = link.busy_until.unwrap() + ms(500);
        let id = p.want_ping(t, true).unwrap();
        p.on_written(t, 20);
        let at = link.deliver(t, 20);
        p.on_pong(at, id);
        t = at + ms(300);
        let id = p.want_ping(t, true).unwrap();
        p.on_written(t, 20_000);
        let at = link.deliver(t, 20_000);
        let s = p.on_pong(at, id).unwrap();
        assert!(s.rtt > ms(300));
        assert!(s.queue_delay < ms(40), "{s:?}");
    }

    #[test]
    fn the_first_picture_measures_the_link() {
        let t0 = Instant::now();
        let mut p = DelayProbe::new();
        let mut link = Link {
            kbps: 500.0,
            base: ms(20),
            busy_until: None,
        };
        // A 400 KB first picture: 6.4 s at 500 kbit/s.
        let id = p.want_ping(t0, false).unwrap();
        p.on_written(t0 + ms(50), 400_000);
        let at = link.deliver(t0, 400_000);
        let s = p.on_pong(at, id).unwrap();
        assert!(s.initial);
        let k = s.delivery_kbps.unwrap();
        assert!((480.0..=500.0).contains(&k), "{k}");
        assert_eq!(p.link_kbps(), Some(k));
        // Its seconds are serialization, not the path's RTT.
        assert!(p.min_rtt().unwrap() < ms(200), "{:?}", p.min_rtt());
        // A small first batch says nothing.
        let mut p = DelayProbe::new();
        let id = p.want_ping(t0, false).unwrap();
        p.on_written(t0, 2_000);
        let s = p.on_pong(t0 + ms(30), id).unwrap();
        assert!(s.initial && s.delivery_kbps.is_none());
    }

    #[test]
    fn the_baseline_forgets_an_old_route() {
        let t0 = Instant::now();
        let mut p = DelayProbe::new();
        let mut t = t0;
        for i in 0..200u64 {
            let id = p.want_ping(t, true).unwrap();
            p.on_written(t, 10);
            // 5 ms for the first 10 s, then 50 ms.
            let rtt = if i < 40 { ms(5) } else { ms(50) };
            p.on_pong(t + rtt, id);
            t += ms(250);
        }
        assert_eq!(p.min_rtt(), Some(ms(50)));
    }
}
