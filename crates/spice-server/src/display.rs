//! The display channel of one client: the primary surface, drawables for static or small
//! changes, and a video stream for a region that keeps changing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scanoutd_engine::{tier_kbps, EncodeHub, Member, MemberEvent, Region};
use scanoutd_ring::{FrameBus, Update};
use scanoutd_types::{half_size, unix_ms, Codec, Frame, Rect};
use spice_proto::consts::{
    DISPLAY_CAP_LZ4_COMPRESSION, DISPLAY_CAP_STREAM_REPORT, ROPD_OP_PUT, STREAM_FLAG_TOP_DOWN,
    SURFACE_FLAG_PRIMARY, SURFACE_FMT_32_XRGB,
};
use spice_proto::{Caps, ClientMsg, Clip, DrawCopy, Head, Image, LinkMess, ServerMsg, SpiceRect};
use tokio::sync::watch;

use crate::conn::Conn;
use crate::rate::RateControl;
use crate::stream::{codec_candidates, spice_codec};
use crate::{ClientStats, Compression, ServerError, Session, SpiceServer};

/// SpiceImageCompression OFF, as sent in PREFERRED_COMPRESSION.
const IMAGE_COMPRESSION_OFF: u8 = 1;
/// STREAM_ACTIVATE_REPORT: a report every 5 frames or every second, like spice-server.
const REPORT_WINDOW: u32 = 5;
const REPORT_TIMEOUT_MS: u32 = 1000;
const TICK: Duration = Duration::from_millis(100);

static IMAGE_IDS: AtomicU64 = AtomicU64::new(1);

/// A DRAW_COPY of `rect` of `frame` onto the primary surface.
pub(crate) fn draw_copy(frame: &Frame, rect: Rect, lz4: bool) -> Option<ServerMsg> {
    let (r, pixels) = frame.extract(rect)?;
    let id = IMAGE_IDS.fetch_add(1, Relaxed);
    let image = if lz4 {
        Image::lz4_bgrx(id, r.w, r.h, &pixels)
    } else {
        Image::bitmap_bgrx(id, r.w, r.h, pixels)
    };
    Some(ServerMsg::DrawCopy(DrawCopy {
        surface_id: 0,
        bbox: spice_rect(r),
        clip: Clip::None,
        src_area: SpiceRect {
            top: 0,
            left: 0,
            bottom: r.h as i32,
            right: r.w as i32,
        },
        rop: ROPD_OP_PUT,
        scale_mode: 0,
        image,
    }))
}

/// A PING for the delay probe (the timestamp is informative: pongs are matched by id).
fn ping(id: u32) -> ServerMsg {
    ServerMsg::Ping {
        id,
        timestamp: unix_ms(),
        data: Vec::new(),
    }
}

fn spice_rect(r: Rect) -> SpiceRect {
    SpiceRect {
        top: r.y as i32,
        left: r.x as i32,
        bottom: r.bottom() as i32,
        right: r.right() as i32,
    }
}

/// This client's stream: its SPICE stream id and its place on the display's shared encoder.
struct Stream {
    id: u32,
    rect: Rect,
    codec: Codec,
    member: Member,
    /// Encoded at half resolution (the link cannot carry the full size at a usable rate).
    half: bool,
    /// Since when the link has called for the other resolution.
    rescale_since: Option<Instant>,
    /// When the member last changed tiers.
    tier_since: Instant,
    /// Since when the client's target has been below its tier (it moves down when that lasts).
    below_since: Option<Instant>,
    started: Instant,
}

/// Below this frame rate at full size (what the link allows with readable frames), a stream
/// is encoded at half resolution (a quarter of the pixels: four times the frame rate), and
/// back at full size from [`SCALE_UP_FPS`], each after [`SCALE_HOLD`].
const SCALE_DOWN_FPS: f64 = 10.0;
const SCALE_UP_FPS: f64 = 15.0;
const SCALE_HOLD: Duration = Duration::from_secs(3);

/// A new stream's reports are not read as congestion for this long.
const STREAM_WARMUP: Duration = Duration::from_secs(2);

/// How long a client stays in a tier before it may move up again.
const TIER_UP_HOLD: Duration = Duration::from_secs(2);
/// How long a client's target must stay below its tier before it moves down; a target below
/// half the tier moves it at once. A moment of congestion (a keyframe, a burst of drawables)
/// must not split a tier: every move costs a keyframe.
const TIER_DOWN_HOLD: Duration = Duration::from_millis(1500);

struct Display<'a> {
    server: &'a Arc<SpiceServer>,
    session: &'a Session,
    /// Which display (channel id) this is, and its frames.
    id: u8,
    bus: &'a FrameBus,
    /// The display's encoding stage: its stream region and shared encoders.
    hub: Arc<EncodeHub>,
    region: watch::Receiver<Region>,
    stats: Arc<ClientStats>,
    client_caps: Caps,
    lz4: bool,
    reports: bool,
    surface: Option<(u32, u32)>,
    stream: Option<Stream>,
    /// No codec works for this client: everything goes as drawables.
    drawables_only: bool,
    /// The next send is a whole-picture burst (a new surface): not a congestion signal.
    bulk: bool,
    next_stream_id: u32,
    client_pref: Vec<u8>,
    failed: Vec<Codec>,
    rate: RateControl,
    frame_period: Duration,
    /// The bus's publish count and when it was read: the rate the source really produces
    /// (independent of what this client takes) sets the stream's quality ceiling.
    published_at: (u64, Instant),
}

/// The next event of `stream`'s member; never, without a stream.
async fn next_encoded(stream: &Option<Stream>) -> MemberEvent {
    match stream {
        Some(st) => st.member.next().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn run(
    server: &Arc<SpiceServer>,
    session: &Session,
    conn: &mut Conn,
    mess: &LinkMess,
) -> Result<(), ServerError> {
    let client_caps = mess.channel_caps.clone();
    let id = mess.channel_id;
    let (Some(source), Some(stats)) = (
        server.displays.get(usize::from(id)),
        session.stats.get(usize::from(id)),
    ) else {
        // The link stage refuses ids past the display count.
        return Err(ServerError::Config(format!("no display {id}")));
    };
    let now = Instant::now();
    let hub = Arc::clone(&server.hubs[usize::from(id)]);
    let region = hub.region();
    let mut d = Display {
        server,
        session,
        id,
        bus: &source.bus,
        hub,
        region,
        stats: Arc::clone(stats),
        lz4: client_caps.has(DISPLAY_CAP_LZ4_COMPRESSION)
            && server.cfg.compression == Compression::Auto,
        reports: client_caps.has(DISPLAY_CAP_STREAM_REPORT),
        client_caps,
        surface: None,
        stream: None,
        drawables_only: false,
        bulk: false,
        next_stream_id: 0,
        client_pref: Vec::new(),
        failed: Vec::new(),
        rate: RateControl::new(server.cfg.rate, server.cfg.source_fps, now),
        frame_period: Duration::from_secs_f64(1.0 / f64::from(server.cfg.source_fps.max(1))),
        published_at: (source.bus.published(), now),
    };
    let sub = source.bus.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result = async {
        loop {
            while let Some(msg) = conn.next_message()? {
                d.on_message(conn, msg).await?;
            }
            // The client's budget and its path (nothing more joins a queue on the way until
            // it drains) decide when it may take a frame, video and drawables alike; frames
            // published meanwhile are merged (dropped before any encoding), and the shared
            // encoder encodes nothing for it until it may send (encoded frames wait in the
            // member's short queue; the hub resyncs it with a keyframe when it overflows).
            let now = Instant::now();
            let paced = !d.rate.may_send(now);
            if let Some(st) = &d.stream {
                st.member.set_ready(!paced);
            }
            let wake = tokio::time::Instant::from_std(d.rate.wake_at(now));
            tokio::select! {
                biased;
                _ = session.cancel.cancelled() => return Ok(()),
                r = conn.read_more() => if !r? { return Ok(()) },
                r = d.region.changed() => {
                    if r.is_err() {
                        tracing::info!(peer = %conn.peer, display = id, "the display's encoding stage ended");
                        return Ok(());
                    }
                    d.on_region(conn).await?;
                }
                _ = tick.tick() => d.on_tick(conn).await?,
                _ = tokio::time::sleep_until(wake), if paced => {}
                ev = next_encoded(&d.stream), if !paced => d.on_encoded(conn, ev).await?,
                u = sub.next(), if !paced => {
                    let Some(u) = u else {
                        tracing::info!(peer = %conn.peer, display = id, "the display source ended");
                        return Ok(());
                    };
                    d.on_update(conn, u).await?;
                }
            }
        }
    }
    .await;
    d.stats.set_stream(None, 0);
    result
}

impl Display<'_> {
    async fn on_message(&mut self, conn: &mut Conn, msg: ClientMsg) -> Result<(), ServerError> {
        if let ClientMsg::Pong { id, .. } = msg {
            // Everything written before that ping has reached the client.
            let cut = self.rate.on_pong(Instant::now(), id);
            self.stats.pongs.fetch_add(1, Relaxed);
            self.stats.rtt_min_ms.store(self.rate.min_rtt_ms(), Relaxed);
            self.stats
                .queue_delay_ms
                .store(self.rate.queue_delay_ms(), Relaxed);
            if cut {
                self.stats.delay_cuts.fetch_add(1, Relaxed);
                tracing::debug!(peer = %conn.peer, display = self.id, "the path queues ({} ms above a {} ms RTT): target now {} kbit/s, {:.1} fps", self.rate.queue_delay_ms(), self.rate.min_rtt_ms(), self.rate.target_kbps(), self.rate.frame_rate());
                self.apply_bitrate(conn).await;
            }
            return Ok(());
        }
        let Some(msg) = crate::channels::common(conn, msg) else {
            return Ok(());
        };
        match msg {
            ClientMsg::DisplayInit { .. } | ClientMsg::GlDrawDone => {}
            ClientMsg::PreferredCompression(c) => {
                self.lz4 = self.client_caps.has(DISPLAY_CAP_LZ4_COMPRESSION)
                    && self.server.cfg.compression == Compression::Auto
                    && c != IMAGE_COMPRESSION_OFF;
                tracing::debug!(peer = %conn.peer, "client prefers image compression {c}; lz4 = {}", self.lz4);
            }
            ClientMsg::PreferredVideoCodecType(list) => {
                tracing::info!(peer = %conn.peer, "client prefers video codecs {list:?}");
                self.client_pref = list;
                // A running stream in a codec the client now ranks lower is restarted in the
                // one it prefers (on that codec's shared encoder).
                let best = self.candidates().first().copied();
                if let (Some(st), Some(best)) = (&self.stream, best) {
                    if st.codec != best {
                        let rect = st.rect;
                        self.end_stream(conn, true);
                        self.start_stream(conn, rect).await;
                        let capture_ms = self.bus.latest().map_or(0, |f| f.capture_ms);
                        self.send(conn, 0, capture_ms, None).await?;
                    }
                }
            }
            ClientMsg::StreamReport(r) => {
                let Some(st) = &self.stream else {
                    return Ok(());
                };
                if r.stream_id != st.id || r.unique_id != st.id + 1 {
                    return Ok(()); // a report about an earlier stream
                }
                if r.is_unsupported_stream() {
                    tracing::warn!(peer = %conn.peer, "the client cannot decode {} streams; trying another codec", st.codec);
                    let (rect, codec) = (st.rect, st.codec);
                    self.failed.push(codec);
                    self.end_stream(conn, true);
                    self.start_stream(conn, rect).await;
                    let capture_ms = self.bus.latest().map_or(0, |f| f.capture_ms);
                    self.send(conn, 0, capture_ms, None).await?;
                } else {
                    tracing::trace!(peer = %conn.peer, "stream report: {r:?}");
                    let mjpeg = st.codec == Codec::Mjpeg;
                    // One clock per client: every display channel's reports tune it.
                    let tuned = self
                        .session
                        .mm
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .on_report(
                            Instant::now(),
                            mjpeg,
                            r.last_frame_delay,
                            r.num_drops,
                            self.rate.congested(Instant::now()),
                        );
                    if let Some(d) = tuned {
                        tracing::debug!(peer = %conn.peer, display = self.id, "client reports a frame margin of {} ms: frames now due {d} ms after capture", r.last_frame_delay);
                        self.session.mm_margin_ms.store(d, Relaxed);
                        self.session.mm_changed.notify_one();
                        for s in &self.session.stats {
                            s.mm_margin_ms.store(u64::from(d), Relaxed);
                        }
                    }
                    // A new stream's first reports measure the client's decoder starting up
                    // (its first frames are late whatever the link): they tune the client's
                    // clock, not the rate.
                    let warming = st.started.elapsed() < STREAM_WARMUP;
                    if !warming
                        && self.rate.on_report(
                            Instant::now(),
                            r.num_frames,
                            r.num_drops,
                            r.last_frame_delay,
                        )
                    {
                        self.apply_bitrate(conn).await;
                    }
                }
            }
            other => tracing::trace!(peer = %conn.peer, "display: ignoring {other:?}"),
        }
        Ok(())
    }

    /// The encoder this client's stream should run on: `(kbps, own)`. A client whose link
    /// carries the stream's quality ceiling (down to the ladder's level below it) shares the
    /// display's encoder of that level (a fixed ladder, so clients whose ceilings differ a
    /// little share one); a client whose link holds it below gets an encoder of its own at
    /// exactly what its rate control asks, following it (scaled up, as the encoder bitrate
    /// is, when the frame rate is lowered).
    fn wanted_stream(&self) -> (u32, bool) {
        let limits = self.server.cfg.rate;
        let effective = self.rate.target_kbps().max(1);
        let ceiling = self.rate.quality_max_kbps();
        // The shared level: the ladder's highest at or below the ceiling.
        let top = tier_kbps(ceiling, ceiling, limits.max_kbps, limits.min_kbps);
        if effective < top {
            return (self.rate.encoder_kbps().max(1), true);
        }
        let tier = tier_kbps(effective, ceiling, limits.max_kbps, limits.min_kbps);
        let scale = f64::from(self.rate.encoder_kbps()) / f64::from(effective);
        ((f64::from(tier) * scale.max(1.0)).round() as u32, false)
    }

    async fn apply_bitrate(&mut self, conn: &Conn) {
        self.stats
            .bitrate_kbps
            .store(u64::from(self.rate.target_kbps()), Relaxed);
        let (want, own) = self.wanted_stream();
        let fps = self.rate.frame_rate();
        let Some(st) = &mut self.stream else { return };
        st.member.set_frame_rate(fps);
        if own && st.member.is_own() {
            // Its own encoder follows the rate control, as a private one always did.
            st.member.set_bitrate(want);
            self.stats.tier_kbps.store(u64::from(want), Relaxed);
            st.below_since = None;
            return;
        }
        let have = st.member.kbps();
        let now = Instant::now();
        if own == st.member.is_own() && want == have {
            st.below_since = None;
            return;
        }
        if want >= have {
            st.below_since = None;
        } else if want.saturating_mul(2) >= have {
            let since = *st.below_since.get_or_insert(now);
            if now.duration_since(since) < TIER_DOWN_HOLD {
                return;
            }
        }
        if want > have && now.duration_since(st.tier_since) < TIER_UP_HOLD {
            return;
        }
        // Another encoder: the same SPICE stream continues from its next keyframe (forced
        // for a new member).
        let joined = self
            .hub
            .join_as(st.codec, st.rect, want, st.half, own)
            .await;
        match joined {
            Ok(m) => {
                tracing::debug!(peer = %conn.peer, display = self.id, "stream moves from {have} to {want} kbit/s ({}; {} clients there)", if own { "its own encoder" } else { "a shared tier" }, m.members());
                m.set_frame_rate(fps);
                self.stats.tier_kbps.store(u64::from(m.kbps()), Relaxed);
                st.member = m;
                st.tier_since = now;
                st.below_since = None;
            }
            Err(e) => {
                tracing::warn!(peer = %conn.peer, "cannot move to a {want} kbit/s encoder: {e}")
            }
        }
    }

    async fn on_tick(&mut self, conn: &mut Conn) -> Result<(), ServerError> {
        let now = Instant::now();
        let (count, since) = self.published_at;
        let dt = now.duration_since(since);
        if dt >= Duration::from_secs(1) {
            let published = self.bus.published();
            let fps = published.saturating_sub(count) as f64 / dt.as_secs_f64();
            self.rate.set_source_rate(fps);
            self.published_at = (published, now);
        }
        // The tier is re-evaluated every tick, not only when the target changes: the quality
        // ceiling follows the measured source rate, and a client that joined on a lower tier
        // moves up to its peers' once its hold is over.
        self.rate.on_tick(now);
        self.apply_bitrate(conn).await;
        self.check_scale(conn, now).await?;
        // A quiet channel still measures its path, so the RTT baseline stays current.
        if conn.out_len() == 0 {
            if let Some(id) = self.rate.want_ping(now, true) {
                conn.queue(&ping(id));
                let sent = conn.flush().await?;
                self.stats.bytes_sent.fetch_add(sent as u64, Relaxed);
                self.rate.on_sent(
                    Instant::now(),
                    sent,
                    None,
                    Duration::ZERO,
                    self.frame_period,
                );
            }
        }
        Ok(())
    }

    /// Frame rate before resolution: a stream the link can give fewer than
    /// [`SCALE_DOWN_FPS`] readable frames a second at full size is restarted at half
    /// resolution (the client scales it up), and at full size again once the link allows
    /// [`SCALE_UP_FPS`]; either only after [`SCALE_HOLD`].
    async fn check_scale(&mut self, conn: &mut Conn, now: Instant) -> Result<(), ServerError> {
        let Some(st) = &mut self.stream else {
            return Ok(());
        };
        let full_fps = self
            .rate
            .fps_at(u64::from(st.rect.w) * u64::from(st.rect.h));
        let want_half = if st.half {
            full_fps < SCALE_UP_FPS
        } else {
            full_fps < SCALE_DOWN_FPS
        };
        if want_half == st.half {
            st.rescale_since = None;
            return Ok(());
        }
        let since = *st.rescale_since.get_or_insert(now);
        if now.duration_since(since) < SCALE_HOLD {
            return Ok(());
        }
        let rect = st.rect;
        tracing::info!(peer = %conn.peer, display = self.id, "the link allows {full_fps:.1} readable frames/s at full size: the stream goes on at {} resolution", if want_half { "half" } else { "full" });
        // The new stream covers the same area; its first frame (a keyframe) replaces the
        // picture, so no lossless redraw in between.
        self.end_stream(conn, false);
        self.start_stream(conn, rect).await;
        let capture_ms = self.bus.latest().map_or(0, |f| f.capture_ms);
        self.send(conn, 0, capture_ms, None).await
    }

    /// The display's stream region changed (decided by the encoding stage from the source):
    /// follow it. A stream that ends or moves has its area redrawn losslessly with the change.
    async fn on_region(&mut self, conn: &mut Conn) -> Result<(), ServerError> {
        let region = *self.region.borrow_and_update();
        let current = self.stream.as_ref().map(|s| s.rect);
        if self.surface.is_none() || current == region.rect {
            return Ok(());
        }
        let had = self.stream.is_some();
        if had {
            tracing::debug!(peer = %conn.peer, display = self.id, "stream region {current:?} -> {:?}", region.rect);
            // What the new stream will cover its first frame (a keyframe) repaints: only the
            // rest of the old area is redrawn losslessly (on a slow link a redraw of the whole
            // old area would hold the new stream back by its size).
            self.end_stream_except(conn, region.rect);
        }
        if let Some(rect) = region.rect {
            self.start_stream(conn, rect).await;
            if let (Some(old), None) = (current, &self.stream) {
                // No stream after all: the part left out must be sharp too.
                if let Some(frame) = self.bus.latest() {
                    if let Some(both) = old.intersect(&rect) {
                        self.queue_draw(conn, &frame, both);
                    }
                }
            }
        }
        if had || self.stream.is_some() {
            let capture_ms = self.bus.latest().map_or(0, |f| f.capture_ms);
            self.send(conn, 0, capture_ms, None).await?;
        }
        Ok(())
    }

    /// Queue a DRAW_COPY of `rect` of `frame`, counting the pixel bytes copied out of the slot.
    fn queue_draw(&self, conn: &mut Conn, frame: &Frame, rect: Rect) {
        if let Some(r) = rect.clamp_to(frame.width, frame.height) {
            self.stats
                .copy_bytes
                .fetch_add(u64::from(r.w) * u64::from(r.h) * 4, Relaxed);
        }
        if let Some(m) = draw_copy(frame, rect, self.lz4) {
            conn.queue(&m);
        }
    }

    /// Queue the primary surface and its first full picture.
    fn create_surface(&mut self, conn: &mut Conn, frame: &Frame) {
        let (w, h) = (frame.width, frame.height);
        if self.stream.is_some() {
            self.end_stream(conn, false);
        }
        if self.surface.is_some() {
            conn.queue(&ServerMsg::SurfaceDestroy(0));
        }
        conn.queue(&ServerMsg::SurfaceCreate {
            surface_id: 0,
            width: w,
            height: h,
            format: SURFACE_FMT_32_XRGB,
            flags: SURFACE_FLAG_PRIMARY,
        });
        self.queue_draw(conn, frame, frame.bounds());
        // The widget shows nothing until a MONITORS_CONFIG (we advertise the cap) and a MARK
        // arrive after the primary surface.
        conn.queue(&ServerMsg::MonitorsConfig {
            max_allowed: 1,
            heads: vec![Head {
                monitor_id: 0,
                surface_id: 0,
                width: w,
                height: h,
                x: 0,
                y: 0,
                flags: 0,
            }],
        });
        conn.queue(&ServerMsg::Mark);
        self.surface = Some((w, h));
    }

    /// Codecs to try for this client, best first, without those that failed.
    fn candidates(&self) -> Vec<Codec> {
        let available = self.server.encoders.codecs();
        let order: Vec<Codec> = self
            .server
            .cfg
            .codecs
            .iter()
            .copied()
            .filter(|c| available.contains(c) && !self.failed.contains(c))
            .collect();
        codec_candidates(&order, &self.client_caps, &self.client_pref)
    }

    /// Start a stream over `rect` on the display's shared encoder of this client's codec and
    /// tier, trying codecs in order. Falls back to drawables for good when none works for this
    /// client.
    async fn start_stream(&mut self, conn: &mut Conn, rect: Rect) {
        if self.drawables_only || rect.w == 0 || rect.h == 0 {
            return;
        }
        if let Some((w, h)) = self.surface {
            if rect.right() > w || rect.bottom() > h {
                return; // a region of an earlier surface
            }
        }
        for codec in self.candidates() {
            // The stream's size sets its quality ceiling (and how far the frame rate may be
            // lowered to keep frames readable) before the tier is chosen.
            let factor = if codec == Codec::Mjpeg {
                crate::MJPEG_BPP_FACTOR
            } else {
                1.0
            };
            let bpp = self.server.cfg.stream_max_bits_per_pixel * factor;
            self.rate.set_stream(rect.w, rect.h, bpp);
            // Frame rate before resolution: half size only when the link cannot give the
            // full size a usable frame rate.
            let half = self.rate.frame_rate() < SCALE_DOWN_FPS && rect.w >= 64 && rect.h >= 64;
            let (ew, eh) = if half {
                half_size(rect.w, rect.h)
            } else {
                (rect.w, rect.h)
            };
            self.rate.set_stream(ew, eh, bpp);
            let (kbps, own) = self.wanted_stream();
            let joined = self.hub.join_as(codec, rect, kbps, half, own).await;
            let member = match joined {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(peer = %conn.peer, "cannot start a {codec} encoder: {e}; trying the next codec");
                    self.failed.push(codec);
                    continue;
                }
            };
            member.set_frame_rate(self.rate.frame_rate());
            let (w, h) = member.encoded_size();
            let id = self.next_stream_id;
            self.next_stream_id = (id + 1) % 64;
            conn.queue(&ServerMsg::StreamCreate {
                surface_id: 0,
                id,
                flags: STREAM_FLAG_TOP_DOWN,
                codec_type: spice_codec(codec) as u8,
                stamp: 0,
                stream_width: w,
                stream_height: h,
                src_width: w,
                src_height: h,
                dest: spice_rect(rect),
                clip: Clip::None,
            });
            if self.reports {
                conn.queue(&ServerMsg::StreamActivateReport {
                    stream_id: id,
                    unique_id: id + 1,
                    max_window_size: REPORT_WINDOW,
                    timeout_ms: REPORT_TIMEOUT_MS,
                });
            }
            tracing::info!(peer = %conn.peer, display = self.id, "streaming {rect:?} as {codec} ({}, encoded at {w}x{h}) at {} kbit/s, a tier of {} kbit/s shared by {} client(s)", member.encoder_name(), self.rate.target_kbps(), member.kbps(), member.members());
            self.stats.set_stream(Some(codec), self.rate.target_kbps());
            self.stats
                .tier_kbps
                .store(u64::from(member.kbps()), Relaxed);
            self.stream = Some(Stream {
                id,
                rect,
                codec,
                member,
                half,
                rescale_since: None,
                tier_since: Instant::now(),
                below_since: None,
                started: Instant::now(),
            });
            return;
        }
        tracing::info!(peer = %conn.peer, "no video codec works for this client; sending drawables only");
        self.rate.set_stream_size(0, 0);
        self.drawables_only = true;
    }

    /// Destroy the stream and redraw its area from the newest frame, losslessly, but for
    /// what `keep` covers.
    fn end_stream_except(&mut self, conn: &mut Conn, keep: Option<Rect>) {
        let Some(old) = self.destroy_stream(conn) else {
            return;
        };
        let parts = match keep {
            Some(k) => old.subtract(&k),
            None => vec![old],
        };
        if let Some(frame) = self.bus.latest() {
            for p in parts {
                self.queue_draw(conn, &frame, p);
            }
        }
    }

    /// Destroy the stream; with `lossless`, redraw its area from the newest frame so text is
    /// sharp again.
    fn end_stream(&mut self, conn: &mut Conn, lossless: bool) {
        if lossless {
            self.end_stream_except(conn, None);
        } else {
            self.destroy_stream(conn);
        }
    }

    /// STREAM_DESTROY the stream, if any; returns its area.
    fn destroy_stream(&mut self, conn: &mut Conn) -> Option<Rect> {
        let st = self.stream.take()?;
        conn.queue(&ServerMsg::StreamDestroy(st.id));
        self.rate.set_stream_size(0, 0);
        self.stats.set_stream(None, 0);
        self.stats.tier_kbps.store(0, Relaxed);
        Some(st.rect)
    }

    async fn on_update(&mut self, conn: &mut Conn, u: Update) -> Result<(), ServerError> {
        let Update {
            frame,
            damage,
            coalesced,
            resized,
        } = u;
        let capture_ms = frame.capture_ms;
        if resized || self.surface != Some((frame.width, frame.height)) {
            self.create_surface(conn, &frame);
            // Release the ring slot before the (possibly slow) network write.
            drop(frame);
            // A client that arrives while the display streams joins the stream at once (its
            // first frame is a keyframe).
            let region = *self.region.borrow_and_update();
            if let Some(rect) = region.rect {
                self.start_stream(conn, rect).await;
            }
            // The whole picture is a burst, not a measure of the link: account for its bytes
            // but do not read a full link into its write time.
            self.bulk = true;
            self.send(conn, coalesced, capture_ms, None).await?;
            return Ok(());
        }
        let stream_rect = self.stream.as_ref().map(|s| s.rect);
        for r in damage.rects() {
            let parts = match stream_rect {
                Some(sr) => r.subtract(&sr),
                None => vec![*r],
            };
            for p in parts {
                self.queue_draw(conn, &frame, p);
            }
        }
        drop(frame);
        self.send(conn, coalesced, capture_ms, None).await
    }

    /// An encoded frame of this client's stream (from the shared encoder): queue it as
    /// STREAM_DATA and send it. A failed encoder gets a lossless redraw and the next codec.
    async fn on_encoded(&mut self, conn: &mut Conn, ev: MemberEvent) -> Result<(), ServerError> {
        let Some(st) = &self.stream else {
            return Ok(());
        };
        match ev {
            MemberEvent::Frame(f) => {
                if st.member.take_lost() > 0 && self.rate.on_backlog(Instant::now()) {
                    tracing::debug!(peer = %conn.peer, "fell behind the stream: target now {} kbit/s", self.rate.target_kbps());
                    self.apply_bitrate(conn).await;
                }
                let Some(st) = &self.stream else {
                    return Ok(());
                };
                let mm = self.server.capture_mm_time(f.capture_ms);
                let before = conn.out_len();
                ServerMsg::encode_stream_data(st.id, mm, &f.data, conn.out());
                let bytes = conn.out_len() - before;
                self.stats.frames_encoded.fetch_add(1, Relaxed);
                self.stats
                    .encode_ms
                    .observe(f.encode_time.as_secs_f64() * 1000.0);
                self.send(conn, 0, f.capture_ms, Some(bytes)).await
            }
            MemberEvent::Failed(e) => {
                let (codec, rect) = (st.codec, st.rect);
                tracing::warn!(peer = %conn.peer, "{codec} encoder failed: {e}; falling back");
                self.failed.push(codec);
                self.end_stream(conn, true);
                self.start_stream(conn, rect).await;
                let capture_ms = self.bus.latest().map_or(0, |f| f.capture_ms);
                self.send(conn, 0, capture_ms, None).await
            }
        }
    }

    /// Flush what was queued for an update and account for it.
    async fn send(
        &mut self,
        conn: &mut Conn,
        coalesced: u64,
        capture_ms: u64,
        stream_bytes: Option<usize>,
    ) -> Result<(), ServerError> {
        let start = Instant::now();
        // A ping rides at the end of the batch: its pong says the whole batch arrived.
        if conn.out_len() > 0 {
            if let Some(id) = self.rate.want_ping(start, false) {
                conn.queue(&ping(id));
            }
        }
        let sent = conn.flush().await?;
        let now = Instant::now();
        let write_time = if std::mem::take(&mut self.bulk) {
            Duration::ZERO
        } else {
            now - start
        };
        let s = &self.stats;
        s.updates_sent.fetch_add(1, Relaxed);
        s.coalesced_updates.fetch_add(coalesced, Relaxed);
        s.bytes_sent.fetch_add(sent as u64, Relaxed);
        if stream_bytes.is_some() {
            s.stream_frames_sent.fetch_add(1, Relaxed);
            let age = unix_ms().saturating_sub(capture_ms);
            s.capture_to_send_ms.observe(age as f64);
        }
        if self
            .rate
            .on_sent(now, sent, stream_bytes, write_time, self.frame_period)
        {
            tracing::debug!(
                peer = %conn.peer,
                "link is full: target now {} kbit/s, {:.1} fps",
                self.rate.target_kbps(),
                self.rate.frame_rate()
            );
            self.apply_bitrate(conn).await;
        }
        Ok(())
    }
}
