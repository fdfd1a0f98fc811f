//! The SPICE server: a tokio driver of the sans-io `spice-proto` crate.
//!
//! One [`SpiceServer`] serves one display (a [`FrameBus`]) or several
//! ([`SpiceServer::with_displays`]: one SPICE display channel and one cursor channel per
//! display, ids 0..N-1, each a monitor of the client) to any number of clients. Each
//! accepted TCP connection is one SPICE channel and runs as its own task: the link stage
//! (RSA ticket auth), then the channel's message loop. The main channel owns a *session*;
//! the display, inputs and cursor channels join it by session id and end with it.
//!
//! Backpressure: a display channel takes updates from its own [`scanoutd_ring::Subscriber`],
//! which coalesces damage while the previous update is still being written, so a slow client
//! receives fewer, newer updates and nothing queues. A client that stops reading entirely is
//! disconnected after [`ServerConfig::stall_timeout`]. Client messages larger than
//! [`ServerConfig::max_client_message`] end the connection.
#![forbid(unsafe_code)]

mod auth;
mod channels;
mod conn;
mod cursor;
mod display;
mod link;
mod metrics;
pub mod stream;
pub use scanoutd_engine::rate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scanoutd_ring::FrameBus;
use scanoutd_types::{Codec, CursorState, EncoderFactory, InputSink};
use spice_proto::LinkError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{Ticketing, MAX_PASSWORD_LEN};
pub use metrics::{write_family, ClientStats, Histogram, MetricKind, Metrics};
pub use rate::{RateLimits, DEFAULT_MAX_MARGIN_MS};
pub use scanoutd_engine::{EncodeHub, HubStats, StreamMode, StreamTuning};

/// The most displays one server serves ([`SpiceServer::with_displays`]).
pub const MAX_DISPLAYS: usize = 16;

/// One display (monitor) the server serves: its frames and, optionally, its pointer.
#[derive(Clone)]
pub struct DisplaySource {
    /// Where the display's frames come from.
    pub bus: FrameBus,
    /// The pointer on this display, followed by the cursor channel with the display's id;
    /// `None`: clients get a default arrow.
    pub cursor: Option<watch::Receiver<CursorState>>,
}

impl DisplaySource {
    /// A display without a pointer feed.
    pub fn new(bus: FrameBus) -> Self {
        DisplaySource { bus, cursor: None }
    }

    /// A display whose cursor channel follows `cursor`.
    pub fn with_cursor(bus: FrameBus, cursor: watch::Receiver<CursorState>) -> Self {
        DisplaySource {
            bus,
            cursor: Some(cursor),
        }
    }
}

impl std::fmt::Debug for DisplaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplaySource")
            .field("cursor", &self.cursor.is_some())
            .finish_non_exhaustive()
    }
}

/// Errors of the server and of single connections.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Protocol(#[from] spice_proto::Error),
    #[error("link refused ({code:?}): {reason}")]
    Link { code: LinkError, reason: String },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("the client stopped reading: a write made no progress for {0:?}")]
    Stalled(Duration),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("crypto failure: {0}")]
    Crypto(String),
}

/// How display updates are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// LZ4 for clients that can decode it, raw bitmaps otherwise; a client's
    /// PREFERRED_COMPRESSION of "off" is honoured.
    #[default]
    Auto,
    /// Never compress (raw 32-bit bitmaps).
    Off,
}

/// Everything the server can be told. Defaults are what `scanoutd serve` uses.
/// Default of [`ServerConfig::stream_max_bits_per_pixel`]. Measured with the test guest's
/// 608x608 video window at 30 fps (x264): 0.27 bit/pixel (3 Mbit/s) gives 34.3 dB, 17 Mbit/s
/// 34.7 dB.
pub const DEFAULT_STREAM_MAX_BITS_PER_PIXEL: f64 = 0.25;
/// MJPEG needs about six times the bits of an inter-frame codec for the same picture.
pub const MJPEG_BPP_FACTOR: f64 = 6.0;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub ticketing: Ticketing,
    /// Most concurrent sessions (clients); further main-channel links are refused.
    pub max_clients: usize,
    /// Most concurrent TCP connections in any state (each client uses about four).
    pub max_connections: usize,
    /// The whole link stage (header, link message, ticket) must finish within this.
    pub link_timeout: Duration,
    /// A client whose socket accepts no bytes for this long is disconnected.
    pub stall_timeout: Duration,
    /// Largest client message body accepted; larger ones end the connection.
    pub max_client_message: usize,
    pub compression: Compression,
    /// How far the client's multimedia clock is set behind the server's (the SPICE "D"):
    /// frames are due `mm_time_margin_ms` after capture.
    pub mm_time_margin_ms: u32,
    /// The most the server ever raises that margin to (late frames on a congested link cut
    /// the bitrate instead): the client's display delay is not a buffer for queueing.
    pub mm_time_max_ms: u32,
    /// When to use video streams.
    pub stream_mode: StreamMode,
    pub stream_tuning: StreamTuning,
    /// Codecs the server may stream with, in order of preference (restricted further to what
    /// the encoder factory can do and what each client decodes).
    pub codecs: Vec<Codec>,
    /// Video bitrate: start, floor and ceiling per client.
    pub rate: RateLimits,
    /// Quality ceiling of a stream's bitrate in bits per pixel per frame (H.264/VP8/VP9/H.265;
    /// MJPEG gets [`MJPEG_BPP_FACTOR`] times more): above it a better link buys no visible
    /// quality, only bandwidth and CPU. 0 turns it off.
    pub stream_max_bits_per_pixel: f64,
    /// The source's frame rate (the encoders are configured with it).
    pub source_fps: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ticketing: Ticketing::Disabled,
            max_clients: 16,
            max_connections: 128,
            link_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            max_client_message: 64 * 1024,
            compression: Compression::Auto,
            mm_time_margin_ms: 20,
            mm_time_max_ms: rate::DEFAULT_MAX_MARGIN_MS,
            stream_mode: StreamMode::Auto,
            stream_tuning: StreamTuning::default(),
            codecs: vec![
                Codec::H264,
                Codec::Vp8,
                Codec::Vp9,
                Codec::H265,
                Codec::Mjpeg,
            ],
            rate: RateLimits::default(),
            stream_max_bits_per_pixel: DEFAULT_STREAM_MAX_BITS_PER_PIXEL,
            source_fps: 60,
        }
    }
}

/// A connected client: the main channel's session and what its other channels share.
pub(crate) struct Session {
    pub id: u32,
    pub cancel: CancellationToken,
    /// One per display channel, indexed by display id.
    pub stats: Vec<Arc<ClientStats>>,
    /// 1 = server (relative), 2 = client (absolute).
    pub mouse_mode: AtomicU16,
    /// This client's multimedia-clock offset D in ms (tuned by its display channel); the
    /// main channel sends MULTI_MEDIA_TIME when `mm_changed` is notified.
    pub mm_margin_ms: AtomicU32,
    pub mm_changed: tokio::sync::Notify,
    /// The client has one multimedia clock for all its display channels: one tuner, fed by
    /// the stream reports of every display channel.
    pub mm: Mutex<rate::MmTuner>,
    /// Notified when `mouse_mode` changes (the cursor channel then re-sends the position).
    pub mouse_mode_changed: tokio::sync::Notify,
}

pub(crate) use spice_proto::consts::{MOUSE_MODE_CLIENT, MOUSE_MODE_SERVER};

/// The server. Create with [`SpiceServer::new`] inside a tokio runtime, then [`serve`].
///
/// [`serve`]: SpiceServer::serve
pub struct SpiceServer {
    pub(crate) cfg: ServerConfig,
    /// Display `i` is display channel `i` and cursor channel `i`; at least one.
    pub(crate) displays: Vec<DisplaySource>,
    pub(crate) input: Arc<dyn InputSink>,
    pub(crate) encoders: Arc<dyn EncoderFactory>,
    /// The encoding stage of each display (its stream region and shared encoders).
    pub(crate) hubs: Vec<Arc<EncodeHub>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) keys: Arc<auth::KeyPool>,
    pub(crate) sessions: Mutex<HashMap<u32, Arc<Session>>>,
    pub(crate) shutdown: CancellationToken,
    tracker: TaskTracker,
    started: Instant,
}

impl SpiceServer {
    pub fn new(
        cfg: ServerConfig,
        bus: FrameBus,
        input: Arc<dyn InputSink>,
        encoders: Arc<dyn EncoderFactory>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Self::build(cfg, vec![DisplaySource::new(bus)], input, encoders, metrics)
    }

    /// Like [`SpiceServer::new`], with the source's pointer: every client's cursor channel
    /// follows `cursor` (shape, position, visibility; latest wins, so a slow client only
    /// skips states). Without it clients get a default arrow.
    pub fn with_cursor(
        cfg: ServerConfig,
        bus: FrameBus,
        input: Arc<dyn InputSink>,
        encoders: Arc<dyn EncoderFactory>,
        metrics: Arc<Metrics>,
        cursor: watch::Receiver<CursorState>,
    ) -> Arc<Self> {
        Self::build(
            cfg,
            vec![DisplaySource::with_cursor(bus, cursor)],
            input,
            encoders,
            metrics,
        )
    }

    /// Several displays, each a monitor of the client: display `i` is served on display
    /// channel `i` (its own surface, streams, encoder and rate control per client) and cursor
    /// channel `i`, all listed in the main channel's channel list. Pointer positions reach
    /// `input` with the display id the client sent them for ([`InputEvent::MouseMove`]'s
    /// `display`). Keyboard and buttons carry no display. At least one display and at most
    /// [`MAX_DISPLAYS`].
    ///
    /// [`InputEvent::MouseMove`]: scanoutd_types::InputEvent::MouseMove
    pub fn with_displays(
        cfg: ServerConfig,
        displays: Vec<DisplaySource>,
        input: Arc<dyn InputSink>,
        encoders: Arc<dyn EncoderFactory>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ServerError> {
        if displays.is_empty() || displays.len() > MAX_DISPLAYS {
            return Err(ServerError::Config(format!(
                "{} displays: between 1 and {MAX_DISPLAYS} are supported",
                displays.len()
            )));
        }
        Ok(Self::build(cfg, displays, input, encoders, metrics))
    }

    fn build(
        cfg: ServerConfig,
        displays: Vec<DisplaySource>,
        input: Arc<dyn InputSink>,
        encoders: Arc<dyn EncoderFactory>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let hub_cfg = scanoutd_engine::HubConfig {
            stream_mode: if cfg.codecs.is_empty() {
                StreamMode::Off
            } else {
                cfg.stream_mode
            },
            tuning: cfg.stream_tuning,
            source_fps: cfg.source_fps,
        };
        let hubs = displays
            .iter()
            .map(|d| EncodeHub::start(d.bus.clone(), Arc::clone(&encoders), hub_cfg))
            .collect();
        Arc::new(SpiceServer {
            cfg,
            displays,
            input,
            hubs,
            encoders,
            metrics,
            keys: auth::KeyPool::start(4),
            sessions: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            started: Instant::now(),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How many displays (display channels) the server serves.
    pub fn displays(&self) -> usize {
        self.displays.len()
    }

    /// The server's multimedia clock: milliseconds since it started, wrapping at 2^32.
    pub fn mm_time(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    /// The server's multimedia clock at the moment a frame was captured (`capture_unix_ms`),
    /// which is what a frame is stamped with: the client shows it `mm_time_margin_ms` later.
    pub fn capture_mm_time(&self, capture_unix_ms: u64) -> u32 {
        let now_unix = scanoutd_types::unix_ms();
        let age = now_unix.saturating_sub(capture_unix_ms).min(10_000) as u32;
        self.mm_time().wrapping_sub(age)
    }

    /// Accept connections on `listener` until [`SpiceServer::shutdown`] is called.
    pub async fn serve(self: &Arc<Self>, listener: TcpListener) -> Result<(), ServerError> {
        let limit = Arc::new(Semaphore::new(self.cfg.max_connections.max(1)));
        loop {
            let (stream, peer) = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of fds and similar: log, back off a little, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                tracing::warn!(%peer, "refusing connection: {} connections already open", self.cfg.max_connections);
                continue; // dropping the stream closes it
            };
            let this = Arc::clone(self);
            self.tracker.spawn(async move {
                this.handle_connection(stream, peer).await;
                drop(permit);
            });
        }
        Ok(())
    }

    /// Stop accepting and close every connection.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        for h in &self.hubs {
            h.close();
        }
    }

    /// The encoding stage of display `i` (its counters: encoders made, frames encoded once
    /// for every client of a tier, keyframes forced, frames members lost).
    pub fn hub(&self, i: usize) -> Option<&Arc<EncodeHub>> {
        self.hubs.get(i)
    }

    /// After [`SpiceServer::shutdown`]: wait up to `timeout` for every connection task to end.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
    }

    async fn handle_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let linked = match tokio::time::timeout(
            self.cfg.link_timeout,
            link::accept(&self, stream, peer),
        )
        .await
        {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                self.metrics.link_failure();
                match &e {
                    ServerError::Auth(_) => tracing::warn!(%peer, "{e}"),
                    _ => tracing::info!(%peer, "link failed: {e}"),
                }
                return;
            }
            Err(_) => {
                self.metrics.link_failure();
                tracing::info!(%peer, "link failed: not completed within {:?}", self.cfg.link_timeout);
                return;
            }
        };
        channels::run(&self, linked).await;
    }

    pub(crate) fn session(&self, id: u32) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}
