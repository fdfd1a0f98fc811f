//! The shared encoders of one display.
//!
//! An [`EncodeHub`] subscribes to its display's frame ring and decides, from the source's own
//! damage (every frame it publishes, whatever any client takes), which region is a video
//! stream ([`Region`], a `watch`). Clients that stream it [`EncodeHub::join`] the encoder of
//! their (codec, rate tier): one encoder per (codec, region, tier) exists while it has members,
//! and every source frame that touches the region is encoded **once** and handed to all of its
//! members.
//!
//! - An encoder only ever sees frames in order (the hub's own subscriber, newest wins when
//!   encoding falls behind the source), and runs at the pace of its fastest member: a frame is
//!   encoded only when some member has sent what it was given, so a lone client behind a slow
//!   link gets the newest frames without losing any.
//! - A member that falls behind (its queue of encoded frames is full: its link or its pacing
//!   cannot take the tier's frames) loses what is queued and waits for the next keyframe, which
//!   it asks for; keyframes a lagging member asks for are forced at most once per
//!   [`KEYFRAME_MIN_INTERVAL`] per encoder, one for a new member at once. Nothing a slow member
//!   does holds the encoder or another member back.
//! - A member that cannot send now (its budget or its path holds it) says so
//!   ([`Member::set_ready`]); an encoder whose members all wait encodes nothing, so a frame is
//!   encoded when it can go, from the newest source frame.
//! - Memory is bounded: at most [`MEMBER_QUEUE`] encoded frames per member.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use scanoutd_ring::FrameBus;
use scanoutd_types::{half_size, Codec, EncoderFactory, Rect, VideoEncoder};
use tokio::sync::{watch, Notify};

use crate::policy::{StreamAction, StreamMode, StreamPolicy, StreamTuning};

/// Encoded frames a member may have waiting; one more and it is behind.
pub const MEMBER_QUEUE: usize = 3;
/// Keyframes forced for members that fell behind: at most one per this interval per encoder.
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(500);
const TICK: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The display's video region, as decided from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// The stream's rectangle, `None` while nothing streams.
    pub rect: Option<Rect>,
    /// Bumped on every change (a new region, a regrow, a stop, a new surface).
    pub generation: u64,
}

/// How the hub decides streams.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub stream_mode: StreamMode,
    pub tuning: StreamTuning,
    /// The frame rate encoders are created for.
    pub source_fps: u32,
}

/// One encoded frame, shared by every member that gets it.
#[derive(Debug)]
pub struct Encoded {
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// Capture time of the source frame (Unix ms).
    pub capture_ms: u64,
    pub encode_time: Duration,
    /// The source frame's sequence number.
    pub frame_seq: u64,
}

/// What a member gets.
#[derive(Debug, Clone)]
pub enum MemberEvent {
    Frame(Arc<Encoded>),
    /// The encoder failed (it is gone): stream something else.
    Failed(String),
}

/// Counters of a hub.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Encoders created.
    pub encoders_created: AtomicU64,
    /// Source frames encoded (once each, whatever the number of members).
    pub frames_encoded: AtomicU64,
    /// Keyframes forced (new members, members that fell behind).
    pub keyframes_forced: AtomicU64,
    /// Encoded frames a member lost because it was behind.
    pub member_drops: AtomicU64,
    /// Pixel bytes copied out of ring slots as encoder input.
    pub copy_bytes: AtomicU64,
    /// Encoders alive now.
    pub live_encoders: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    codec: Codec,
    rect: Rect,
    kbps: u32,
    /// A client's own encoder (never shared), by a number unique in the hub.
    own: Option<u64>,
    /// Encoded at half resolution ([`scanoutd_types::half_size`]; the client scales it up).
    half: bool,
}

impl Key {
    /// The size frames are encoded at.
    fn encoded_size(&self) -> (u32, u32) {
        if self.half {
            half_size(self.rect.w, self.rect.h)
        } else {
            (self.rect.w, self.rect.h)
        }
    }
}

struct MemberInner {
    queue: Mutex<VecDeque<MemberEvent>>,
    notify: Notify,
    /// Waiting for a keyframe: frames before it are not delivered.
    need_key: AtomicBool,
    /// The shortest interval between frames this member wants, microseconds (0: every
    /// source frame).
    interval_us: AtomicU64,
    /// Times this member fell behind (lost its queue) since it last asked.
    lost: AtomicU64,
    /// The client could send a frame now (its budget and its path allow): only then is a
    /// frame encoded for it, so what it sends is the newest the source has, not one encoded
    /// earlier that waited for its budget.
    ready: AtomicBool,
}

struct Shared {
    key: Key,
    name: String,
    encoder: Mutex<Option<Box<dyn VideoEncoder>>>,
    members: Mutex<Vec<Weak<MemberInner>>>,
    /// A keyframe is due (new member, now; lagging member, when the interval allows).
    join_key: AtomicBool,
    lag_key: AtomicBool,
    last_key: Mutex<Option<Instant>>,
    /// When the last frame was submitted.
    last_encode: Mutex<Option<Instant>>,
    failed: AtomicBool,
    /// A new bitrate for an own encoder, applied before its next frame (0: none).
    new_kbps: AtomicU64,
    /// The bitrate the encoder runs at (or will, from its next frame).
    kbps: AtomicU64,
}

impl Shared {
    /// Whether some member has nothing queued (it sent what it got) and could send now.
    fn someone_ready(&self) -> bool {
        self.live_members()
            .iter()
            .any(|m| m.ready.load(Relaxed) && lock(&m.queue).is_empty())
    }

    /// Whether a frame is due at `now`: the fastest member's interval has passed.
    fn frame_due(&self, now: Instant) -> bool {
        let min_us = self
            .live_members()
            .iter()
            .map(|m| m.interval_us.load(Relaxed))
            .min()
            .unwrap_or(0);
        lock(&self.last_encode).is_none_or(|t| {
            now.duration_since(t) + Duration::from_millis(2) >= Duration::from_micros(min_us)
        })
    }

    fn live_members(&self) -> Vec<Arc<MemberInner>> {
        let mut m = lock(&self.members);
        m.retain(|w| w.strong_count() > 0);
        m.iter().filter_map(Weak::upgrade).collect()
    }

    /// Hand `ev` to every member; a member whose queue is full loses it all and waits for
    /// a keyframe.
    fn deliver(&self, ev: &MemberEvent, stats: &HubStats) {
        for m in self.live_members() {
            let mut q = lock(&m.queue);
            match ev {
                MemberEvent::Frame(f) => {
                    if m.need_key.load(Relaxed) {
                        if !f.keyframe {
                            continue;
                        }
                        m.need_key.store(false, Relaxed);
                    }
                    if q.len() >= MEMBER_QUEUE {
                        stats.member_drops.fetch_add(q.len() as u64 + 1, Relaxed);
                        m.lost.fetch_add(1, Relaxed);
                        q.clear();
                        m.need_key.store(true, Relaxed);
                        self.lag_key.store(true, Relaxed);
                        continue;
                    }
                    q.push_back(ev.clone());
                }
                MemberEvent::Failed(_) => {
                    q.clear();
                    q.push_back(ev.clone());
                }
            }
            drop(q);
            m.notify.notify_one();
        }
    }
}

/// A client's place on a shared encoder. Dropping it leaves; the encoder ends with its last
/// member.
pub struct Member {
    inner: Arc<MemberInner>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("codec", &self.shared.key.codec)
            .field("rect", &self.shared.key.rect)
            .field("kbps", &self.shared.key.kbps)
            .finish()
    }
}

impl Member {
    pub fn codec(&self) -> Codec {
        self.shared.key.codec
    }

    pub fn rect(&self) -> Rect {
        self.shared.key.rect
    }

    /// The tier's bitrate (an own encoder's: the last one set).
    pub fn kbps(&self) -> u32 {
        self.shared.kbps.load(Relaxed) as u32
    }

    /// The size this member's frames are encoded at (the rect's, or half of it).
    pub fn encoded_size(&self) -> (u32, u32) {
        self.shared.key.encoded_size()
    }

    /// Whether this is the client's own encoder ([`EncodeHub::join_own`]).
    pub fn is_own(&self) -> bool {
        self.shared.key.own.is_some()
    }

    /// Change an own encoder's bitrate (applied before its next frame); ignored for a shared
    /// one, whose bitrate is its tier.
    pub fn set_bitrate(&self, kbps: u32) {
        if self.is_own() && kbps > 0 && kbps != self.kbps() {
            self.shared.kbps.store(u64::from(kbps), Relaxed);
            self.shared.new_kbps.store(u64::from(kbps), Relaxed);
        }
    }

    /// The encoder implementation (e.g. "x264enc").
    pub fn encoder_name(&self) -> &str {
        &self.shared.name
    }

    /// How many members the encoder has, this one included.
    pub fn members(&self) -> usize {
        self.shared.live_members().len()
    }

    /// The next encoded frame (or the encoder's failure), without waiting.
    pub fn try_next(&self) -> Option<MemberEvent> {
        lock(&self.inner.queue).pop_front()
    }

    /// Wait for the next encoded frame or the encoder's failure.
    pub async fn next(&self) -> MemberEvent {
        loop {
            let notified = self.inner.notify.notified();
            if let Some(ev) = self.try_next() {
                return ev;
            }
            notified.await;
        }
    }

    /// Whether something is waiting.
    pub fn has_pending(&self) -> bool {
        !lock(&self.inner.queue).is_empty()
    }

    /// The frame rate this member can take (its rate control lowers it on a slow link): the
    /// encoder runs at its fastest member's rate.
    pub fn set_frame_rate(&self, fps: f64) {
        let us = if fps.is_finite() && fps > 0.0 {
            (1e6 / fps) as u64
        } else {
            0
        };
        self.inner.interval_us.store(us, Relaxed);
    }

    /// Whether this client could send a frame now (see [`MemberInner::ready`]); a member is
    /// ready when it joins. A frame is encoded for an encoder only while one of its members
    /// is ready.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Relaxed);
    }

    /// How many times this member fell behind since the last call (its link or budget cannot
    /// take the tier's frames: a congestion signal for its rate control).
    pub fn take_lost(&self) -> u64 {
        self.inner.lost.swap(0, Relaxed)
    }

    /// This client could not send what it got (or lost a frame): drop what is queued and
    /// wait for a keyframe, which is asked for.
    pub fn resync(&self) {
        lock(&self.inner.queue).clear();
        self.inner.need_key.store(true, Relaxed);
        self.shared.lag_key.store(true, Relaxed);
    }
}

/// The shared encoders and the stream region of one display.
pub struct EncodeHub {
    factory: Arc<dyn EncoderFactory>,
    cfg: HubConfig,
    encoders: Mutex<Vec<Arc<Shared>>>,
    /// Serializes joins, so two clients joining at once share one new encoder.
    join_lock: tokio::sync::Mutex<()>,
    region: watch::Sender<Region>,
    closed: Notify,
    stats: HubStats,
}

impl EncodeHub {
    /// A hub for the display fed by `bus`, with its task running on the current tokio runtime
    /// until the bus closes or [`EncodeHub::close`].
    pub fn start(bus: FrameBus, factory: Arc<dyn EncoderFactory>, cfg: HubConfig) -> Arc<Self> {
        let hub = Arc::new(EncodeHub {
            factory,
            cfg,
            encoders: Mutex::new(Vec::new()),
            join_lock: tokio::sync::Mutex::new(()),
            region: watch::channel(Region::default()).0,
            closed: Notify::new(),
            stats: HubStats::default(),
        });
        let weak = Arc::downgrade(&hub);
        let sub = bus.subscribe();
        tokio::spawn(run(weak, sub, cfg));
        hub
    }

    /// The display's stream region.
    pub fn region(&self) -> watch::Receiver<Region> {
        self.region.subscribe()
    }

    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Stop the hub's task.
    pub fn close(&self) {
        self.closed.notify_one();
    }

    /// Join the encoder of (`codec`, `rect`, `kbps`), creating it when there is none. The
    /// member's first frame is a keyframe, forced now.
    pub async fn join(&self, codec: Codec, rect: Rect, kbps: u32) -> Result<Member, String> {
        self.join_as(codec, rect, kbps, false, false).await
    }

    /// An encoder of this client's own (never shared), whose bitrate follows
    /// [`Member::set_bitrate`]: for a client whose link holds it below the shared tiers'
    /// ceiling, so its encoder can follow its rate control exactly.
    pub async fn join_own(&self, codec: Codec, rect: Rect, kbps: u32) -> Result<Member, String> {
        self.join_as(codec, rect, kbps, false, true).await
    }

    /// [`Self::join`] (or with `own`, [`Self::join_own`]); with `half`, frames of `rect` are
    /// encoded at half resolution ([`Member::encoded_size`]), for a link that cannot carry
    /// the full size at a usable frame rate.
    pub async fn join_as(
        &self,
        codec: Codec,
        rect: Rect,
        kbps: u32,
        half: bool,
        own: bool,
    ) -> Result<Member, String> {
        static OWN: AtomicU64 = AtomicU64::new(1);
        self.join_key(Key {
            codec,
            rect,
            kbps,
            own: own.then(|| OWN.fetch_add(1, Relaxed)),
            half,
        })
        .await
    }

    async fn join_key(&self, key: Key) -> Result<Member, String> {
        let _serial = self.join_lock.lock().await;
        let Key {
            codec, rect, kbps, ..
        } = key;
        let (ew, eh) = key.encoded_size();
        let existing = lock(&self.encoders)
            .iter()
            .find(|s| s.key == key && !s.failed.load(Relaxed))
            .cloned();
        let shared = match existing {
            Some(s) => s,
            None => {
                let factory = Arc::clone(&self.factory);
                let fps = self.cfg.source_fps;
                let made =
                    tokio::task::spawn_blocking(move || factory.create(codec, ew, eh, fps, kbps))
                        .await
                        .map_err(|e| format!("encoder start-up task failed: {e}"))?
                        .map_err(|e| e.0)?;
                let s = Arc::new(Shared {
                    key,
                    name: made.name().to_string(),
                    encoder: Mutex::new(Some(made)),
                    members: Mutex::new(Vec::new()),
                    join_key: AtomicBool::new(true),
                    lag_key: AtomicBool::new(false),
                    last_key: Mutex::new(None),
                    last_encode: Mutex::new(None),
                    failed: AtomicBool::new(false),
                    new_kbps: AtomicU64::new(0),
                    kbps: AtomicU64::new(u64::from(kbps)),
                });
                self.stats.encoders_created.fetch_add(1, Relaxed);
                let mut encs = lock(&self.encoders);
                encs.retain(|e| !e.live_members().is_empty() || Arc::ptr_eq(e, &s));
                encs.push(Arc::clone(&s));
                self.stats.live_encoders.store(encs.len() as u64, Relaxed);
                tracing::debug!(%codec, ?rect, kbps, encoder = %s.name, "shared encoder created");
                s
            }
        };
        let inner = Arc::new(MemberInner {
            queue: Mutex::new(VecDeque::with_capacity(MEMBER_QUEUE)),
            notify: Notify::new(),
            need_key: AtomicBool::new(true),
            interval_us: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            ready: AtomicBool::new(true),
        });
        lock(&shared.members).push(Arc::downgrade(&inner));
        shared.join_key.store(true, Relaxed);
        Ok(Member { inner, shared })
    }

    /// Encoders with members; the others are dropped.
    fn live_encoders(&self) -> Vec<Arc<Shared>> {
        let mut encs = lock(&self.encoders);
        encs.retain(|e| !e.failed.load(Relaxed) && !e.live_members().is_empty());
        self.stats.live_encoders.store(encs.len() as u64, Relaxed);
        encs.clone()
    }

    fn set_region(&self, rect: Option<Rect>) {
        self.region.send_modify(|r| {
            r.rect = rect;
            r.generation += 1;
        });
    }
}

/// Whether `s` must force a keyframe now, and note it.
fn take_keyframe_due(s: &Shared, now: Instant) -> bool {
    let mut last = lock(&s.last_key);
    let join = s.join_key.swap(false, Relaxed);
    let lag = s.lag_key.load(Relaxed)
        && last.is_none_or(|t| now.duration_since(t) >= KEYFRAME_MIN_INTERVAL);
    if join || lag {
        s.lag_key.store(false, Relaxed);
        *last = Some(now);
        return true;
    }
    false
}

async fn run(hub: Weak<EncodeHub>, sub: scanoutd_ring::Subscriber, cfg: HubConfig) {
    let mut policy = StreamPolicy::new(cfg.stream_mode, cfg.tuning);
    let mut size = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let Some(h) = hub.upgrade() else { return };
        let update = tokio::select! {
            _ = h.closed.notified() => return,
            _ = tick.tick() => {
                if let StreamAction::Stop(rect) = policy.on_tick(Instant::now()) {
                    tracing::debug!(?rect, "motion stopped: the stream ends");
                    h.set_region(None);
                }
                continue;
            }
            u = sub.next() => u,
        };
        let Some(u) = update else { return };
        let now = Instant::now();
        let dims = (u.frame.width, u.frame.height);
        if u.resized || size != Some(dims) {
            size = Some(dims);
            policy.reset(dims.0, dims.1);
            h.set_region(None);
        }
        match policy.on_update(now, &u.damage) {
            StreamAction::Start(r) | StreamAction::Regrow(r) => h.set_region(Some(r)),
            StreamAction::Stop(_) => h.set_region(None),
            StreamAction::None => {}
        }
        // Encode for every encoder with members whose region changed (or owes a keyframe).
        let mut jobs = Vec::new();
        for s in h.live_encoders() {
            let touched = u
                .damage
                .rects()
                .iter()
                .any(|r| r.intersect(&s.key.rect).is_some());
            let key_due = s.join_key.load(Relaxed) || s.lag_key.load(Relaxed);
            // Only when the region changed, not faster than the fastest member's frame rate,
            // and only when some member has taken what it was given: an encoder runs at the
            // pace of its fastest member (a lone member behind a slow link or a busy client
            // loses nothing: the source's newer frames simply supersede), and only slower
            // members of a shared encoder fall behind. A keyframe that is owed goes out once
            // someone can take it.
            let due = s.someone_ready() && (key_due || (touched && s.frame_due(now)));
            if !due {
                continue;
            }
            let extracted = if s.key.half {
                u.frame.extract_half(s.key.rect)
            } else {
                u.frame.extract(s.key.rect)
            };
            let Some((r, px)) = extracted else {
                continue;
            };
            if r != s.key.rect {
                continue; // the region no longer fits the surface
            }
            h.stats.copy_bytes.fetch_add(px.len() as u64, Relaxed);
            let force = take_keyframe_due(&s, now);
            *lock(&s.last_encode) = Some(now);
            jobs.push((s, px, force));
        }
        let (capture_ms, frame_seq) = (u.frame.capture_ms, u.frame.seq);
        drop(u); // release the ring slot before encoding
        if jobs.is_empty() {
            continue;
        }
        let mut set = tokio::task::JoinSet::new();
        for (s, px, force) in jobs {
            set.spawn_blocking(move || {
                let out = {
                    let mut enc = lock(&s.encoder);
                    let kbps = s.new_kbps.swap(0, Relaxed);
                    if kbps > 0 {
                        if let Some(e) = enc.as_mut() {
                            if let Err(err) = e.set_bitrate(kbps as u32) {
                                tracing::warn!(encoder = %s.name, "setting the bitrate: {}", err.0);
                            }
                        }
                    }
                    enc.as_mut().map(|e| {
                        e.encode(&px, s.key.encoded_size().0 as usize * 4, capture_ms, force)
                    })
                };
                (s, out, force)
            });
        }
        while let Some(done) = set.join_next().await {
            let Ok((s, out, force)) = done else {
                tracing::error!("an encode task failed");
                continue;
            };
            match out {
                Some(Ok(Some(ef))) => {
                    h.stats.frames_encoded.fetch_add(1, Relaxed);
                    if force {
                        h.stats.keyframes_forced.fetch_add(1, Relaxed);
                    }
                    let ev = MemberEvent::Frame(Arc::new(Encoded {
                        data: ef.data,
                        keyframe: ef.keyframe || force,
                        capture_ms,
                        encode_time: ef.encode_time,
                        frame_seq,
                    }));
                    s.deliver(&ev, &h.stats);
                }
                Some(Ok(None)) => {
                    tracing::debug!(codec = %s.key.codec, "the encoder produced nothing for frame {frame_seq}");
                    if force {
                        // The keyframe is still owed.
                        s.join_key.store(true, Relaxed);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(codec = %s.key.codec, encoder = %s.name, "encoder failed: {}", e.0);
                    s.failed.store(true, Relaxed);
                    lock(&s.encoder).take();
                    s.deliver(&MemberEvent::Failed(e.0), &h.stats);
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanoutd_types::{Damage, EncodedFrame, EncoderError, Frame};

    #[derive(Default)]
    struct Log {
        creates: AtomicU64,
        encodes: AtomicU64,
        fail_at: AtomicU64,
        /// Sizes encoders were created at, and the last input's (bytes, stride).
        sizes: Mutex<Vec<(u32, u32)>>,
        input: Mutex<(usize, usize)>,
    }

    struct Fake {
        codec: Codec,
        log: Arc<Log>,
    }

    impl VideoEncoder for Fake {
        fn encode(
            &mut self,
            bgrx: &[u8],
            stride: usize,
            pts_ms: u64,
            force_keyframe: bool,
        ) -> Result<Option<EncodedFrame>, EncoderError> {
            *lock(&self.log.input) = (bgrx.len(), stride);
            let n = self.log.encodes.fetch_add(1, Relaxed) + 1;
            let fail_at = self.log.fail_at.load(Relaxed);
            if fail_at != 0 && n >= fail_at {
                return Err(EncoderError("broken".into()));
            }
            Ok(Some(EncodedFrame {
                data: vec![bgrx[0]],
                keyframe: force_keyframe,
                pts_ms,
                encode_time: Duration::from_millis(1),
            }))
        }
        fn set_bitrate(&mut self, _kbps: u32) -> Result<(), EncoderError> {
            Ok(())
        }
        fn codec(&self) -> Codec {
            self.codec
        }
        fn name(&self) -> &str {
            "fake"
        }
    }

    struct Factory(Arc<Log>);

    impl EncoderFactory for Factory {
        fn codecs(&self) -> Vec<Codec> {
            Codec::ALL.to_vec()
        }
        fn create(
            &self,
            codec: Codec,
            w: u32,
            h: u32,
            _fps: u32,
            _kbps: u32,
        ) -> Result<Box<dyn VideoEncoder>, EncoderError> {
            self.0.creates.fetch_add(1, Relaxed);
            lock(&self.0.sizes).push((w, h));
            Ok(Box::new(Fake {
                codec,
                log: Arc::clone(&self.0),
            }))
        }
    }

    const W: u32 = 64;
    const H: u32 = 32;
    const ALL: Rect = Rect {
        x: 0,
        y: 0,
        w: W,
        h: H,
    };

    fn rig() -> (FrameBus, Arc<EncodeHub>, Arc<Log>) {
        let bus = FrameBus::new();
        let log = Arc::new(Log::default());
        let hub = EncodeHub::start(
            bus.clone(),
            Arc::new(Factory(Arc::clone(&log))),
            HubConfig {
                stream_mode: StreamMode::FullFrame,
                tuning: StreamTuning::default(),
                source_fps: 30,
            },
        );
        (bus, hub, log)
    }

    /// Publish frame `seq` (its first byte names it) and give the hub a moment.
    async fn publish(bus: &FrameBus, seq: u8) {
        let mut f = Frame::new(W, H);
        f.data[0] = seq;
        f.seq = u64::from(seq);
        bus.publish(Arc::new(f), &Damage::full(W, H));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }

    async fn frames(m: &Member, n: usize) -> Vec<Arc<Encoded>> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), m.next()).await {
                Ok(MemberEvent::Frame(f)) => out.push(f),
                Ok(MemberEvent::Failed(e)) => panic!("failed: {e}"),
                Err(_) => panic!("only {} of {n} frames within 5 s", out.len()),
            }
        }
        out
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what} within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_half_resolution_member_gets_its_own_encoder_fed_half_size_frames() {
        let (bus, hub, log) = rig();
        publish(&bus, 1).await;
        let full = hub.join(Codec::H264, ALL, 300).await.unwrap();
        let half = hub
            .join_as(Codec::H264, ALL, 300, true, false)
            .await
            .unwrap();
        assert_eq!(
            log.creates.load(Relaxed),
            2,
            "another size, another encoder"
        );
        assert_eq!(half.encoded_size(), (W / 2, H / 2));
        assert_eq!(full.encoded_size(), (W, H));
        assert_eq!(*lock(&log.sizes), vec![(W, H), (W / 2, H / 2)]);
        drop(full);
        publish(&bus, 2).await;
        frames(&half, 1).await;
        assert_eq!(
            *lock(&log.input),
            ((W / 2 * H / 2 * 4) as usize, (W / 2 * 4) as usize)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_region_follows_the_source() {
        let (bus, hub, _) = rig();
        let mut region = hub.region();
        publish(&bus, 1).await;
        wait_until("a region", || region.borrow_and_update().rect == Some(ALL)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_member_of_a_tier_shares_one_encoder_and_each_frame_is_encoded_once() {
        let (bus, hub, log) = rig();
        publish(&bus, 1).await;
        let mut members = Vec::new();
        for _ in 0..4 {
            members.push(hub.join(Codec::H264, ALL, 3000).await.unwrap());
        }
        assert_eq!(log.creates.load(Relaxed), 1);
        assert_eq!(members[0].members(), 4);
        let mut got: Vec<Vec<Arc<Encoded>>> = vec![Vec::new(); members.len()];
        for seq in 2..=11u8 {
            publish(&bus, seq).await;
            for (m, g) in members.iter().zip(&mut got) {
                g.extend(frames(m, 1).await);
            }
        }
        let mut seen = Vec::new();
        for g in &got {
            assert!(g[0].keyframe, "a member's first frame is a keyframe");
            assert!(g[1..].iter().all(|f| !f.keyframe));
            seen.push(g.iter().map(|f| f.data[0]).collect::<Vec<_>>());
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
        assert_eq!(seen[0], (2..=11).collect::<Vec<u8>>());
        assert_eq!(
            log.encodes.load(Relaxed),
            10,
            "each frame encoded once, not per member"
        );
        assert_eq!(hub.stats().frames_encoded.load(Relaxed), 10);
        // Another tier, another encoder; the last member gone, the encoder goes.
        let low = hub.join(Codec::H264, ALL, 1000).await.unwrap();
        assert_eq!(log.creates.load(Relaxed), 2);
        drop(members);
        publish(&bus, 12).await;
        assert_eq!(frames(&low, 1).await[0].data[0], 12);
        assert_eq!(hub.stats().live_encoders.load(Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_falls_behind_waits_for_a_keyframe_and_slows_nobody() {
        let (bus, hub, _) = rig();
        publish(&bus, 1).await;
        let fast = hub.join(Codec::Vp8, ALL, 3000).await.unwrap();
        let slow = hub.join(Codec::Vp8, ALL, 3000).await.unwrap();
        let mut fast_seen = Vec::new();
        for seq in 2..=9u8 {
            publish(&bus, seq).await;
            // The fast member reads everything (so the hub has taken each frame before the
            // next is published); the slow one reads nothing.
            fast_seen.extend(frames(&fast, 1).await.iter().map(|f| f.data[0]));
        }
        assert_eq!(
            fast_seen,
            (2..=9).collect::<Vec<u8>>(),
            "the fast member lost nothing"
        );
        assert!(hub.stats().member_drops.load(Relaxed) > 0);
        // The slow member resumes on a keyframe (forced once the interval allows).
        tokio::time::sleep(KEYFRAME_MIN_INTERVAL).await;
        let mut keyframes_before = hub.stats().keyframes_forced.load(Relaxed);
        let mut resumed = None;
        for seq in 10..=40u8 {
            publish(&bus, seq).await;
            fast_seen.extend(frames(&fast, 1).await.iter().map(|f| f.data[0]));
            if let Some(MemberEvent::Frame(f)) = slow.try_next() {
                resumed = Some(f);
                break;
            }
        }
        let f = resumed.expect("the slow member got frames again");
        assert!(
            f.keyframe,
            "after falling behind, a member starts again on a keyframe"
        );
        keyframes_before = hub.stats().keyframes_forced.load(Relaxed) - keyframes_before;
        assert!(keyframes_before >= 1);
        // The fast member's frames stayed in order, none lost.
        assert!(
            fast_seen.windows(2).all(|w| w[1] == w[0] + 1),
            "{fast_seen:?}"
        );
    }

    /// A lone member that takes frames slowly loses none: the encoder waits for it, newer
    /// source frames supersede the ones it could not take, and no keyframe is needed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_encoder_runs_at_the_pace_of_its_fastest_member() {
        let (bus, hub, log) = rig();
        publish(&bus, 1).await;
        let m = hub.join(Codec::H264, ALL, 3000).await.unwrap();
        publish(&bus, 2).await;
        assert_eq!(frames(&m, 1).await[0].data[0], 2);
        for seq in 3..=8u8 {
            publish(&bus, seq).await; // not read: only the first of these is encoded
        }
        let got = frames(&m, 1).await[0].data[0];
        assert!((3..=8).contains(&got), "{got}");
        assert!(m.try_next().is_none(), "nothing else was queued");
        publish(&bus, 9).await;
        let next = frames(&m, 1).await;
        assert_eq!(next[0].data[0], 9);
        assert!(!next[0].keyframe, "no resync was needed");
        assert_eq!(hub.stats().member_drops.load(Relaxed), 0);
        assert_eq!(log.encodes.load(Relaxed), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_encoder_tells_its_members_and_is_not_reused() {
        let (bus, hub, log) = rig();
        publish(&bus, 1).await;
        log.fail_at.store(3, Relaxed);
        let m = hub.join(Codec::H265, ALL, 3000).await.unwrap();
        let mut failed = None;
        for seq in 2..=8u8 {
            publish(&bus, seq).await;
            while let Some(ev) = m.try_next() {
                if let MemberEvent::Failed(e) = ev {
                    failed = Some(e);
                }
            }
        }
        assert_eq!(failed.as_deref(), Some("broken"));
        log.fail_at.store(0, Relaxed);
        let again = hub.join(Codec::H265, ALL, 3000).await.unwrap();
        assert_eq!(
            log.creates.load(Relaxed),
            2,
            "a new encoder, not the failed one"
        );
        publish(&bus, 9).await;
        assert_eq!(frames(&again, 1).await[0].data[0], 9);
    }
}
