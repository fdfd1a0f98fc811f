//! Metrics of the parts behind the frame ring: the QEMU connection (`QemuStats` of each
//! console, summed over reconnections) and the GPU worker (`WorkerStats`), rendered on
//! `/metrics` beside the SPICE server's.

use std::sync::{Arc, Mutex};

use scanoutd_gpu::WorkerStats;
use scanoutd_qemu::{QemuHead, QemuStats};
use spice_server::{write_family, MetricKind};

/// Something that appends its families to the `/metrics` page.
pub trait MetricsSource: Send + Sync {
    fn render(&self, out: &mut String);
}

/// Reads one field of [`QemuStats`].
type QemuGetter = fn(&QemuStats) -> u64;

/// Per-console QEMU counters (`display` label when there are several consoles), summed over
/// every connection so far, so they never go down when QEMU restarts.
const QEMU_COUNTERS: [(&str, &str, QemuGetter); 11] = [
    (
        "scanoutd_qemu_scanouts_total",
        "Scanouts (new surfaces) QEMU sent, shared-memory and GL ones included.",
        |s| s.scanouts + s.dmabuf_scanouts,
    ),
    (
        "scanoutd_qemu_updates_total",
        "Updates QEMU sent (inline, shared memory and GL).",
        |s| s.updates + s.dmabuf_updates,
    ),
    (
        "scanoutd_qemu_map_updates_total",
        "Updates read from a surface QEMU shares as memory (Listener.Unix.Map).",
        |s| s.map_updates,
    ),
    (
        "scanoutd_qemu_dmabuf_scanouts_total",
        "GL scanouts (ScanoutDMABUF) QEMU sent.",
        |s| s.dmabuf_scanouts,
    ),
    (
        "scanoutd_qemu_dmabuf_updates_total",
        "GL updates (UpdateDMABUF) QEMU sent.",
        |s| s.dmabuf_updates,
    ),
    (
        "scanoutd_qemu_dmabuf_failed_total",
        "GL frames dropped: the GPU read failed, was refused (busy) or timed out; QEMU was answered anyway.",
        |s| s.dmabuf_failed,
    ),
    (
        "scanoutd_qemu_frame_errors_total",
        "Malformed frame messages from QEMU that were refused.",
        |s| s.frame_errors,
    ),
    (
        "scanoutd_qemu_surface_grown_total",
        "Updates that reached past the surface and grew it.",
        |s| s.surface_grown,
    ),
    (
        "scanoutd_qemu_frames_published_total",
        "Frames the QEMU source wrote into the frame ring.",
        |s| s.frames_published,
    ),
    (
        "scanoutd_qemu_input_sent_total",
        "Input calls QEMU accepted (keyboard and mouse, every console).",
        |s| s.input_sent,
    ),
    (
        "scanoutd_qemu_input_dropped_total",
        "Input events dropped: QEMU refused them, they have no QEMU equivalent, or the queue was full or closed.",
        |s| s.input_failed + s.input_skipped + s.input_dropped,
    ),
];

#[derive(Default)]
struct QemuState {
    connected: bool,
    connections: u64,
    /// The final counters of every earlier connection, per display.
    past: Vec<QemuStats>,
    /// The consoles of the current connection, in display order.
    live: Vec<QemuHead>,
}

/// The QEMU source's metrics; `qemu_source::run` reports connections and their ends.
#[derive(Default)]
pub struct QemuMetrics {
    state: Mutex<QemuState>,
    displays: usize,
}

impl QemuMetrics {
    pub fn new(displays: usize) -> Arc<Self> {
        Arc::new(QemuMetrics {
            state: Mutex::default(),
            displays: displays.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QemuState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection came up with these consoles (display order).
    pub fn connected(&self, heads: &[QemuHead]) {
        let mut st = self.lock();
        st.connected = true;
        st.connections += 1;
        st.live = heads.to_vec();
    }

    /// The current connection ended: its counters become part of the totals.
    pub fn disconnected(&self) {
        let mut st = self.lock();
        st.connected = false;
        let finals: Vec<QemuStats> = st.live.drain(..).map(|h| h.stats()).collect();
        st.past = fold(&st.past, &finals);
    }

    /// Per display: (the totals of past connections plus the live one, the live one alone).
    fn snapshot(&self) -> (bool, u64, Vec<(Totals, Option<QemuStats>)>) {
        let st = self.lock();
        let live: Vec<QemuStats> = st.live.iter().map(QemuHead::stats).collect();
        let rows = (0..self.displays)
            .map(|i| {
                let past = st.past.get(i).copied().unwrap_or_default();
                let now = live.get(i).copied();
                (Totals { past, now }, now)
            })
            .collect();
        (st.connected, st.connections, rows)
    }
}

/// A display's counters: earlier connections and the live one.
struct Totals {
    past: QemuStats,
    now: Option<QemuStats>,
}

impl Totals {
    fn total(&self, get: QemuGetter) -> u64 {
        get(&self.past) + self.now.as_ref().map_or(0, get)
    }
}

/// `past` with `finals` added, field by field (the counters that are summed).
fn fold(past: &[QemuStats], finals: &[QemuStats]) -> Vec<QemuStats> {
    let n = past.len().max(finals.len());
    (0..n)
        .map(|i| {
            let a = past.get(i).copied().unwrap_or_default();
            let b = finals.get(i).copied().unwrap_or_default();
            QemuStats {
                scanouts: a.scanouts + b.scanouts,
                updates: a.updates + b.updates,
                map_scanouts: a.map_scanouts + b.map_scanouts,
                map_updates: a.map_updates + b.map_updates,
                frame_errors: a.frame_errors + b.frame_errors,
                surface_grown: a.surface_grown + b.surface_grown,
                frames_published: a.frames_published + b.frames_published,
                input_sent: a.input_sent + b.input_sent,
                input_failed: a.input_failed + b.input_failed,
                input_skipped: a.input_skipped + b.input_skipped,
                input_dropped: a.input_dropped + b.input_dropped,
                dmabuf_scanouts: a.dmabuf_scanouts + b.dmabuf_scanouts,
                dmabuf_updates: a.dmabuf_updates + b.dmabuf_updates,
                dmabuf_failed: a.dmabuf_failed + b.dmabuf_failed,
                dmabuf_max_hold_us: a.dmabuf_max_hold_us.max(b.dmabuf_max_hold_us),
                ..QemuStats::default()
            }
        })
        .collect()
}

impl MetricsSource for QemuMetrics {
    fn render(&self, out: &mut String) {
        let (connected, connections, rows) = self.snapshot();
        let multi = rows.len() > 1;
        let label = |i: usize| {
            if multi {
                format!("display=\"{i}\"")
            } else {
                String::new()
            }
        };
        write_family(
            out,
            "scanoutd_qemu_connected",
            MetricKind::Gauge,
            "1 while scanoutd is connected to QEMU's display, else 0.",
            [("", u64::from(connected))],
        );
        write_family(
            out,
            "scanoutd_qemu_connections_total",
            MetricKind::Counter,
            "Connections made to QEMU's display (1 + reconnections after QEMU came back).",
            [("", connections)],
        );
        for (name, help, get) in QEMU_COUNTERS {
            // Input goes through one queue for every console: export it once.
            if name.starts_with("scanoutd_qemu_input_") {
                let v = rows.first().map_or(0, |(t, _)| t.total(get));
                write_family(out, name, MetricKind::Counter, help, [("", v)]);
                continue;
            }
            write_family(
                out,
                name,
                MetricKind::Counter,
                help,
                rows.iter()
                    .enumerate()
                    .map(|(i, (t, _))| (label(i), t.total(get))),
            );
        }
        write_family(
            out,
            "scanoutd_qemu_shared_memory",
            MetricKind::Gauge,
            "1 while the console's surface comes through shared memory (ScanoutMap).",
            rows.iter()
                .enumerate()
                .map(|(i, (_, now))| (label(i), u64::from(now.is_some_and(|s| s.shared_memory)))),
        );
        write_family(
            out,
            "scanoutd_qemu_dmabuf_max_hold_ms",
            MetricKind::Gauge,
            "The longest QEMU waited for the reply to an UpdateDMABUF, ms (every connection).",
            rows.iter().enumerate().map(|(i, (t, now))| {
                let us = t
                    .past
                    .dmabuf_max_hold_us
                    .max(now.map_or(0, |s| s.dmabuf_max_hold_us));
                (label(i), us as f64 / 1000.0)
            }),
        );
    }
}

/// The encoding stage of each display: shared encoders and what they did.
pub struct StageMetrics(pub Arc<spice_server::SpiceServer>);

impl MetricsSource for StageMetrics {
    fn render(&self, out: &mut String) {
        let n = self.0.displays();
        let hubs: Vec<_> = (0..n)
            .filter_map(|i| self.0.hub(i).map(|h| (i, h)))
            .collect();
        let label = |i: usize| {
            if n > 1 {
                format!("display=\"{i}\"")
            } else {
                String::new()
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        type Get = fn(&spice_server::HubStats) -> u64;
        let families: [(&str, MetricKind, &str, Get); 6] = [
            (
                "scanoutd_stream_encoders",
                MetricKind::Gauge,
                "Shared video encoders running now (one per codec, region and rate tier, whatever the number of clients on it).",
                |s| s.live_encoders.load(Relaxed),
            ),
            (
                "scanoutd_stream_encoders_created_total",
                MetricKind::Counter,
                "Shared video encoders created.",
                |s| s.encoders_created.load(Relaxed),
            ),
            (
                "scanoutd_stream_frames_encoded_total",
                MetricKind::Counter,
                "Source frames encoded by the shared encoders (once per encoder, not per client).",
                |s| s.frames_encoded.load(Relaxed),
            ),
            (
                "scanoutd_stream_keyframes_forced_total",
                MetricKind::Counter,
                "Keyframes forced: a client joined a running encoder, or one fell behind.",
                |s| s.keyframes_forced.load(Relaxed),
            ),
            (
                "scanoutd_stream_member_drops_total",
                MetricKind::Counter,
                "Encoded frames a client lost because it was behind (it waited for a keyframe).",
                |s| s.member_drops.load(Relaxed),
            ),
            (
                "scanoutd_stream_copy_bytes_total",
                MetricKind::Counter,
                "Pixel bytes copied out of the frame ring as encoder input (once per encoded frame, not per client).",
                |s| s.copy_bytes.load(Relaxed),
            ),
        ];
        for (name, kind, help, get) in families {
            write_family(
                out,
                name,
                kind,
                help,
                hubs.iter().map(|(i, h)| (label(*i), get(h.stats()))),
            );
        }
    }
}

/// The GPU worker's metrics (the GPU path for GL guests).
pub struct GpuMetrics(pub Arc<dyn Fn() -> WorkerStats + Send + Sync>);

impl MetricsSource for GpuMetrics {
    fn render(&self, out: &mut String) {
        render_gpu(out, &(self.0)());
    }
}

/// The families of one [`WorkerStats`].
pub fn render_gpu(out: &mut String, s: &WorkerStats) {
    write_family(
        out,
        "scanoutd_gpu_jobs_total",
        MetricKind::Counter,
        "GPU jobs (dmabuf reads), by result: completed, failed, or rejected because the queue was full.",
        [
            ("result=\"completed\"", s.completed),
            ("result=\"failed\"", s.failed),
            ("result=\"rejected\"", s.rejected),
        ],
    );
    write_family(
        out,
        "scanoutd_gpu_job_max_ms",
        MetricKind::Gauge,
        "The longest GPU job so far, ms.",
        [("", s.max_job.as_secs_f64() * 1000.0)],
    );
    write_family(
        out,
        "scanoutd_gpu_imports_total",
        MetricKind::Counter,
        "dmabuf imports, by whether the import cache answered them.",
        [
            ("cached=\"false\"", s.gpu.imports),
            ("cached=\"true\"", s.gpu.import_hits),
        ],
    );
    write_family(
        out,
        "scanoutd_gpu_import_failures_total",
        MetricKind::Counter,
        "dmabuf imports the GPU refused.",
        [("", s.gpu.import_failures)],
    );
    write_family(
        out,
        "scanoutd_gpu_readback_bytes_total",
        MetricKind::Counter,
        "Pixel bytes read back from the GPU into CPU memory.",
        [("", s.gpu.bytes_read)],
    );
    write_family(
        out,
        "scanoutd_gpu_live_textures",
        MetricKind::Gauge,
        "GL textures alive now (cached imports and uploads).",
        [("", s.gpu.live_textures)],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanoutd_testkit::prometheus::{lint, sample_value};

    #[test]
    fn qemu_counters_add_up_over_connections_and_are_well_formed() {
        let m = QemuMetrics::new(2);
        let mut out = String::new();
        m.render(&mut out);
        assert_eq!(lint(&out), Vec::<String>::new(), "{out}");
        assert_eq!(
            sample_value(&out, "scanoutd_qemu_connected", &[]),
            Some(0.0)
        );
        assert_eq!(
            sample_value(
                &out,
                "scanoutd_qemu_dmabuf_failed_total",
                &["display=\"1\""]
            ),
            Some(0.0)
        );

        // Two earlier connections' counters, folded.
        let a = QemuStats {
            updates: 10,
            frames_published: 9,
            dmabuf_updates: 5,
            dmabuf_failed: 2,
            dmabuf_max_hold_us: 7_000,
            input_sent: 4,
            input_dropped: 1,
            ..QemuStats::default()
        };
        let folded = fold(&fold(&[], &[a, a]), &[a]);
        m.lock().past = folded;
        m.lock().connections = 2;
        let mut out = String::new();
        m.render(&mut out);
        assert_eq!(lint(&out), Vec::<String>::new(), "{out}");
        let v = |name: &str, labels: &[&str]| sample_value(&out, name, labels);
        assert_eq!(
            v("scanoutd_qemu_dmabuf_failed_total", &["display=\"0\""]),
            Some(4.0)
        );
        assert_eq!(
            v("scanoutd_qemu_dmabuf_failed_total", &["display=\"1\""]),
            Some(2.0)
        );
        assert_eq!(
            v("scanoutd_qemu_updates_total", &["display=\"0\""]),
            Some(30.0)
        );
        assert_eq!(
            v("scanoutd_qemu_frames_published_total", &["display=\"1\""]),
            Some(9.0)
        );
        assert_eq!(v("scanoutd_qemu_input_sent_total", &[]), Some(8.0));
        assert_eq!(v("scanoutd_qemu_input_dropped_total", &[]), Some(2.0));
        assert_eq!(
            v("scanoutd_qemu_dmabuf_max_hold_ms", &["display=\"0\""]),
            Some(7.0)
        );
        assert_eq!(v("scanoutd_qemu_connections_total", &[]), Some(2.0));
    }

    #[test]
    fn gpu_counters_are_exported() {
        let s = WorkerStats {
            completed: 5,
            failed: 2,
            rejected: 3,
            max_job: std::time::Duration::from_micros(1500),
            gpu: scanoutd_gpu::GpuStats {
                imports: 1,
                import_hits: 4,
                bytes_read: 4096,
                ..Default::default()
            },
            ..Default::default()
        };
        let m = GpuMetrics(Arc::new(move || s));
        let mut out = String::new();
        m.render(&mut out);
        assert_eq!(lint(&out), Vec::<String>::new(), "{out}");
        let v = |name: &str, labels: &[&str]| sample_value(&out, name, labels);
        assert_eq!(
            v("scanoutd_gpu_jobs_total", &["result=\"failed\""]),
            Some(2.0)
        );
        assert_eq!(
            v("scanoutd_gpu_jobs_total", &["result=\"rejected\""]),
            Some(3.0)
        );
        assert_eq!(
            v("scanoutd_gpu_imports_total", &["cached=\"true\""]),
            Some(4.0)
        );
        assert_eq!(v("scanoutd_gpu_readback_bytes_total", &[]), Some(4096.0));
        assert_eq!(v("scanoutd_gpu_job_max_ms", &[]), Some(1.5));
    }
}
