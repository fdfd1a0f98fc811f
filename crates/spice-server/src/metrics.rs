//! Counters the server keeps, rendered as Prometheus text by whoever serves `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use scanoutd_types::Codec;
use spice_proto::ChannelType;

/// A latency histogram in milliseconds with fixed buckets (Prometheus `le` bounds).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; Histogram::BOUNDS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub const BOUNDS: [f64; 12] = [
        1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 25.0, 33.0, 50.0, 100.0, 250.0, 1000.0,
    ];

    pub fn observe(&self, ms: f64) {
        for (i, b) in Self::BOUNDS.iter().enumerate() {
            if ms <= *b {
                self.counts[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add((ms.max(0.0) * 1000.0) as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in Self::BOUNDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts[i].load(Relaxed)
            );
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {n}");
    }
}

/// The Prometheus type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (its name ends in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// Write one metric family: its HELP and TYPE lines, then one sample per `(labels, value)`
/// (`labels` without braces, e.g. `client="3"`; empty for none). A family with no samples
/// is still declared.
pub fn write_family<L: AsRef<str>, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: MetricKind,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
    for (labels, v) in samples {
        let labels = labels.as_ref();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// The channels the server speaks, in metric label order.
const CHANNELS: [(ChannelType, &str); 4] = [
    (ChannelType::Main, "main"),
    (ChannelType::Display, "display"),
    (ChannelType::Inputs, "inputs"),
    (ChannelType::Cursor, "cursor"),
];

fn channel_index(ch: ChannelType) -> Option<usize> {
    CHANNELS.iter().position(|(c, _)| *c == ch)
}

/// Reads one counter of a [`ClientStats`].
type StatGetter = fn(&ClientStats) -> u64;
/// Reads one histogram of a [`ClientStats`].
type HistGetter = fn(&ClientStats) -> &Histogram;

/// Per-client display counters. Shared between the client's display task and the metrics.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Display updates sent (one per batch of damage taken from the frame bus).
    pub updates_sent: AtomicU64,
    /// Frames merged into a later update because the client was still busy with an earlier one.
    pub coalesced_updates: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Frames the video encoder produced / STREAM_DATA updates sent.
    pub frames_encoded: AtomicU64,
    pub stream_frames_sent: AtomicU64,
    /// Pixel bytes copied out of ring slots for this client (drawables and encoder input).
    pub copy_bytes: AtomicU64,
    /// The bitrate of the shared encoder (rate tier) this client's stream is on (0 without).
    pub tier_kbps: AtomicU64,
    /// Current video target (0 without a stream).
    pub bitrate_kbps: AtomicU64,
    /// The client's multimedia-clock offset D, ms.
    pub mm_margin_ms: AtomicU64,
    /// The display channel's RTT baseline (lowest of the last 20 s), ms, from PING/PONG.
    pub rtt_min_ms: AtomicU64,
    /// The last queueing delay measured above that baseline, ms.
    pub queue_delay_ms: AtomicU64,
    /// Bitrate cuts made because the path queued.
    pub delay_cuts: AtomicU64,
    /// PONGs the client answered on the display channel.
    pub pongs: AtomicU64,
    /// 0 = no stream, otherwise 1 + index in `Codec::ALL`.
    codec: AtomicU8,
    pub encode_ms: Histogram,
    /// From capture to the frame's last byte handed to the socket.
    pub capture_to_send_ms: Histogram,
}

impl ClientStats {
    pub fn set_stream(&self, codec: Option<Codec>, kbps: u32) {
        let v = codec
            .and_then(|c| Codec::ALL.iter().position(|x| *x == c))
            .map_or(0, |i| i as u8 + 1);
        self.codec.store(v, Relaxed);
        self.bitrate_kbps.store(u64::from(kbps), Relaxed);
    }

    /// The codec of the running stream.
    pub fn codec(&self) -> Option<Codec> {
        let v = self.codec.load(Relaxed) as usize;
        v.checked_sub(1).and_then(|i| Codec::ALL.get(i).copied())
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    bytes_sent: [AtomicU64; 4],
    bytes_received: [AtomicU64; 4],
    connected_clients: AtomicI64,
    link_failures: AtomicU64,
    auth_failures: AtomicU64,
    protocol_errors: AtomicU64,
    stalled_disconnects: AtomicU64,
    /// Per session: the stats of each display channel, indexed by display id.
    clients: Mutex<BTreeMap<u32, Vec<Arc<ClientStats>>>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add_sent(&self, ch: ChannelType, n: usize) {
        if let Some(i) = channel_index(ch) {
            self.bytes_sent[i].fetch_add(n as u64, Relaxed);
        }
    }

    pub fn add_received(&self, ch: ChannelType, n: usize) {
        if let Some(i) = channel_index(ch) {
            self.bytes_received[i].fetch_add(n as u64, Relaxed);
        }
    }

    pub fn bytes_sent(&self, ch: ChannelType) -> u64 {
        channel_index(ch).map_or(0, |i| self.bytes_sent[i].load(Relaxed))
    }

    pub fn connected_clients(&self) -> i64 {
        self.connected_clients.load(Relaxed)
    }

    pub fn link_failure(&self) {
        self.link_failures.fetch_add(1, Relaxed);
    }

    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Relaxed);
    }

    pub fn auth_failures(&self) -> u64 {
        self.auth_failures.load(Relaxed)
    }

    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Relaxed);
    }

    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Relaxed)
    }

    pub fn stalled_disconnect(&self) {
        self.stalled_disconnects.fetch_add(1, Relaxed);
    }

    pub fn stalled_disconnects(&self) -> u64 {
        self.stalled_disconnects.load(Relaxed)
    }

    /// A client (session) of a one-display server connected; its stats live until
    /// [`Metrics::client_gone`].
    pub fn client_connected(&self, session: u32) -> Arc<ClientStats> {
        let mut v = self.client_connected_displays(session, 1);
        v.pop().unwrap_or_default()
    }

    /// A client (session) connected to a server with `displays` displays: one set of display
    /// stats per display (at least one). With more than one, the per-client metrics carry a
    /// `display` label.
    pub fn client_connected_displays(
        &self,
        session: u32,
        displays: usize,
    ) -> Vec<Arc<ClientStats>> {
        self.connected_clients.fetch_add(1, Relaxed);
        let stats: Vec<Arc<ClientStats>> = (0..displays.max(1))
            .map(|_| Arc::new(ClientStats::default()))
            .collect();
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session, stats.clone());
        stats
    }

    pub fn client_gone(&self, session: u32) {
        self.connected_clients.fetch_sub(1, Relaxed);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session);
    }

    /// The display stats of a client (of its display 0 on a server with several).
    pub fn client(&self, session: u32) -> Option<Arc<ClientStats>> {
        self.client_display(session, 0)
    }

    /// The stats of one display channel of a client.
    pub fn client_display(&self, session: u32, display: usize) -> Option<Arc<ClientStats>> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&session)
            .and_then(|v| v.get(display))
            .cloned()
    }

    /// Append the Prometheus text exposition of every counter.
    pub fn render(&self, out: &mut String) {
        for (name, help, v) in [
            (
                "scanoutd_bytes_sent_total",
                "Bytes written to clients, by SPICE channel.",
                &self.bytes_sent,
            ),
            (
                "scanoutd_bytes_received_total",
                "Bytes read from clients, by SPICE channel.",
                &self.bytes_received,
            ),
        ] {
            write_family(
                out,
                name,
                MetricKind::Counter,
                help,
                CHANNELS
                    .iter()
                    .zip(v)
                    .map(|((_, ch), n)| (format!("channel=\"{ch}\""), n.load(Relaxed))),
            );
        }
        write_family(
            out,
            "scanoutd_connected_clients",
            MetricKind::Gauge,
            "Connected SPICE clients (sessions).",
            [("", self.connected_clients.load(Relaxed))],
        );
        let counters = [
            (
                "scanoutd_link_failures_total",
                "Connections dropped during the SPICE link stage.",
                &self.link_failures,
            ),
            (
                "scanoutd_auth_failures_total",
                "Links refused for a wrong ticket.",
                &self.auth_failures,
            ),
            (
                "scanoutd_protocol_errors_total",
                "Connections dropped for malformed client messages.",
                &self.protocol_errors,
            ),
            (
                "scanoutd_stalled_disconnects_total",
                "Clients disconnected because they stopped reading.",
                &self.stalled_disconnects,
            ),
        ];
        for (name, help, v) in counters {
            write_family(
                out,
                name,
                MetricKind::Counter,
                help,
                [("", v.load(Relaxed))],
            );
        }
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // (labels, stats) per client and display: `client="ID"`, plus `display="N"` when the
        // server has more than one display.
        let series: Vec<(String, &Arc<ClientStats>)> = clients
            .iter()
            .flat_map(|(id, displays)| {
                let multi = displays.len() > 1;
                displays.iter().enumerate().map(move |(d, s)| {
                    let labels = if multi {
                        format!("client=\"{id}\",display=\"{d}\"")
                    } else {
                        format!("client=\"{id}\"")
                    };
                    (labels, s)
                })
            })
            .collect();
        let per_client: [(&str, MetricKind, &str, StatGetter); 13] = [
            (
                "scanoutd_client_mm_margin_ms",
                MetricKind::Gauge,
                "How long after capture the client shows a video frame (SPICE mm-time offset), ms.",
                |s| s.mm_margin_ms.load(Relaxed),
            ),
            (
                "scanoutd_client_rtt_min_ms",
                MetricKind::Gauge,
                "A client's display-channel RTT baseline (lowest PING/PONG round trip of the last 20 s), ms.",
                |s| s.rtt_min_ms.load(Relaxed),
            ),
            (
                "scanoutd_client_queue_delay_ms",
                MetricKind::Gauge,
                "The last queueing delay measured on a client's path above its RTT baseline, ms.",
                |s| s.queue_delay_ms.load(Relaxed),
            ),
            (
                "scanoutd_client_pongs_total",
                MetricKind::Counter,
                "PONGs a client answered on its display channel (each times the path to it).",
                |s| s.pongs.load(Relaxed),
            ),
            (
                "scanoutd_client_delay_cuts_total",
                MetricKind::Counter,
                "Bitrate cuts made because a client's path queued (end-to-end delay rose).",
                |s| s.delay_cuts.load(Relaxed),
            ),
            (
                "scanoutd_client_updates_sent_total",
                MetricKind::Counter,
                "Display updates sent to a client.",
                |s| s.updates_sent.load(Relaxed),
            ),
            (
                "scanoutd_client_coalesced_updates_total",
                MetricKind::Counter,
                "Frames dropped before encoding or sending: superseded by a newer frame while the client was busy or over its budget.",
                |s| s.coalesced_updates.load(Relaxed),
            ),
            (
                "scanoutd_client_display_bytes_total",
                MetricKind::Counter,
                "Display-channel bytes sent to a client.",
                |s| s.bytes_sent.load(Relaxed),
            ),
            (
                "scanoutd_client_copy_bytes_total",
                MetricKind::Counter,
                "Pixel bytes copied out of the frame ring for a client (drawables and encoder input).",
                |s| s.copy_bytes.load(Relaxed),
            ),
            (
                "scanoutd_client_frames_encoded_total",
                MetricKind::Counter,
                "Video frames encoded for a client.",
                |s| s.frames_encoded.load(Relaxed),
            ),
            (
                "scanoutd_client_stream_frames_sent_total",
                MetricKind::Counter,
                "Video frames (STREAM_DATA) sent to a client.",
                |s| s.stream_frames_sent.load(Relaxed),
            ),
            (
                "scanoutd_client_stream_tier_kbps",
                MetricKind::Gauge,
                "Bitrate of the shared encoder (rate tier) a client's stream is on (0 without a stream).",
                |s| s.tier_kbps.load(Relaxed),
            ),
            (
                "scanoutd_client_bitrate_kbps",
                MetricKind::Gauge,
                "Current video bitrate target of a client (0 without a stream).",
                |s| s.bitrate_kbps.load(Relaxed),
            ),
        ];
        for (name, kind, help, get) in per_client {
            write_family(
                out,
                name,
                kind,
                help,
                series.iter().map(|(labels, s)| (labels, get(s))),
            );
        }
        let _ = writeln!(out, "# HELP scanoutd_client_stream_codec The codec of a client's running stream (1 while it runs).\n# TYPE scanoutd_client_stream_codec gauge");
        for (labels, s) in &series {
            if let Some(c) = s.codec() {
                let _ = writeln!(
                    out,
                    "scanoutd_client_stream_codec{{{labels},codec=\"{c}\"}} 1"
                );
            }
        }
        let hists: [(&str, &str, HistGetter); 2] = [
            (
                "scanoutd_client_encode_ms",
                "Video encode time per frame, ms.",
                |s| &s.encode_ms,
            ),
            (
                "scanoutd_client_capture_to_send_ms",
                "Capture to written-to-socket per video frame, ms.",
                |s| &s.capture_to_send_ms,
            ),
        ];
        for (name, help, get) in hists {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (labels, s) in &series {
                get(s).render(out, name, labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanoutd_testkit::prometheus::{family_type, lint, sample_value};

    #[test]
    fn every_family_is_declared_with_the_type_its_name_says() {
        let m = Metrics::default();
        m.add_sent(ChannelType::Display, 100);
        m.protocol_error();
        let one = m.client_connected(7);
        one.mm_margin_ms.store(25, Relaxed);
        one.set_stream(Some(Codec::H264), 3000);
        one.encode_ms.observe(3.0);
        let two = m.client_connected_displays(8, 2);
        two[1].bitrate_kbps.store(1500, Relaxed);
        let mut out = String::new();
        m.render(&mut out);
        assert_eq!(lint(&out), Vec::<String>::new(), "{out}");
        // Values that go down are gauges, not counters.
        for g in [
            "scanoutd_client_mm_margin_ms",
            "scanoutd_client_bitrate_kbps",
            "scanoutd_connected_clients",
            "scanoutd_client_stream_codec",
        ] {
            assert_eq!(family_type(&out, g).as_deref(), Some("gauge"), "{g}");
        }
        assert_eq!(
            sample_value(&out, "scanoutd_client_mm_margin_ms", &["client=\"7\""]),
            Some(25.0)
        );
        assert_eq!(
            sample_value(
                &out,
                "scanoutd_client_bitrate_kbps",
                &["client=\"8\"", "display=\"1\""]
            ),
            Some(1500.0)
        );
        assert_eq!(
            sample_value(&out, "scanoutd_connected_clients", &[]),
            Some(2.0)
        );
        assert_eq!(
            sample_value(&out, "scanoutd_bytes_sent_total", &["channel=\"display\""]),
            Some(100.0)
        );
    }
}
