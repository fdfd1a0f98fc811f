//! A deliberately tiny HTTP/1.0 responder for `/metrics` (Prometheus text) and
//! `/snapshot.ppm` (the source's current frame; `/snapshot.ppm?display=N` for display N when
//! there are several). One request per connection, bounded in size and time.

use std::sync::Arc;
use std::time::Duration;

use scanoutd_ring::FrameBus;
use spice_server::{write_family, MetricKind, Metrics};

use crate::source_metrics::MetricsSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 8 * 1024;

/// What the endpoint serves.
#[derive(Clone)]
pub struct Pages {
    pub metrics: Arc<Metrics>,
    /// One bus per display.
    pub buses: Vec<FrameBus>,
    /// Exported so a demo frame can be re-rendered from its timestamp strip.
    pub source_start_unix_ms: u64,
    /// The source's own metrics (QEMU connection, GPU worker).
    pub sources: Vec<Arc<dyn MetricsSource>>,
}

/// Serve until the task is aborted.
pub async fn serve(listener: TcpListener, pages: Pages) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pages = pages.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), handle(stream, &pages)).await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "metrics request: {e}"),
                Err(_) => tracing::debug!(%peer, "metrics request timed out"),
            }
        });
    }
}

/// The `/metrics` page: the ring's and the source's families, then the SPICE server's.
pub fn metrics_page(pages: &Pages) -> String {
    let buses = &pages.buses;
    // `display="N"` labels only when there are several displays.
    let label = |i: usize| {
        if buses.len() > 1 {
            format!("display=\"{i}\"")
        } else {
            String::new()
        }
    };
    let mut body = String::with_capacity(8192);
    write_family(
        &mut body,
        "scanoutd_frames_produced_total",
        MetricKind::Counter,
        "Frames the source published.",
        buses
            .iter()
            .enumerate()
            .map(|(i, bus)| (label(i), bus.stats().published)),
    );
    write_family(
        &mut body,
        "scanoutd_frames_dropped_total",
        MetricKind::Counter,
        "Source frames not published, by reason (ring_full: every ring slot was held by a reader; the frame's changes went out with a later one).",
        buses.iter().enumerate().map(|(i, bus)| {
            let l = label(i);
            let sep = if l.is_empty() { "" } else { "," };
            (
                format!("reason=\"ring_full\"{sep}{l}"),
                bus.stats().dropped_ring_full,
            )
        }),
    );
    write_family(
        &mut body,
        "scanoutd_ring_sync_bytes_total",
        MetricKind::Counter,
        "Pixel bytes the frame ring copied to bring a slot up to the newest picture before the source drew into it (only what changed since the slot's picture).",
        buses
            .iter()
            .enumerate()
            .map(|(i, bus)| (label(i), bus.stats().sync_bytes)),
    );
    write_family(
        &mut body,
        "scanoutd_source_start_unix_ms",
        MetricKind::Gauge,
        "When the source's animation clock was 0 (Unix ms).",
        [("", pages.source_start_unix_ms)],
    );
    for s in &pages.sources {
        s.render(&mut body);
    }
    pages.metrics.render(&mut body);
    body
}

async fn handle(mut stream: TcpStream, pages: &Pages) -> std::io::Result<()> {
    let buses = &pages.buses;
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
        if req.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"too large\n",
            )
            .await;
        }
    }
    let line = req.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        )
        .await;
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    match path {
        "/metrics" => {
            let body = metrics_page(pages);
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4",
                body.as_bytes(),
            )
            .await
        }
        "/snapshot.ppm" => match snapshot_display(query)
            .and_then(|i| buses.get(i))
            .map(FrameBus::latest)
        {
            None => {
                respond(
                    &mut stream,
                    "404 Not Found",
                    "text/plain",
                    b"no such display\n",
                )
                .await
            }
            Some(latest) => match latest {
                Some(f) => {
                    // Convert on a blocking thread and drop the frame (its ring slot) before
                    // the network write: a slow reader must never pin a slot.
                    let body = tokio::task::spawn_blocking(move || ppm(&f))
                        .await
                        .map_err(std::io::Error::other)?;
                    respond(&mut stream, "200 OK", "image/x-portable-pixmap", &body).await
                }
                None => {
                    respond(
                        &mut stream,
                        "503 Service Unavailable",
                        "text/plain",
                        b"no frame yet\n",
                    )
                    .await
                }
            },
        },
        "/" => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain",
                b"scanoutd: see /metrics and /snapshot.ppm\n",
            )
            .await
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// The display a snapshot query names (`display=N`; display 0 without one).
fn snapshot_display(query: &str) -> Option<usize> {
    match query.split('&').find_map(|kv| kv.strip_prefix("display=")) {
        Some(n) => n.parse().ok(),
        None => Some(0),
    }
}

/// A binary PPM (P6) of a BGRx frame.
pub fn ppm(f: &scanoutd_types::Frame) -> Vec<u8> {
    let mut body = format!("P6\n{} {}\n255\n", f.width, f.height).into_bytes();
    body.reserve(f.width as usize * f.height as usize * 3);
    for y in 0..f.height as usize {
        let row = &f.data[y * f.stride..y * f.stride + f.width as usize * 4];
        for px in row.chunks_exact(4) {
            body.extend_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanoutd_types::{Damage, Frame};
    use tokio::io::AsyncReadExt;

    fn pages(buses: Vec<FrameBus>) -> Pages {
        Pages {
            metrics: Metrics::new(),
            buses,
            source_start_unix_ms: 1_700_000_000_000,
            sources: vec![
                crate::source_metrics::QemuMetrics::new(2),
                Arc::new(crate::source_metrics::GpuMetrics(Arc::new(
                    scanoutd_gpu::WorkerStats::default,
                ))),
            ],
        }
    }

    #[test]
    fn the_metrics_page_is_well_formed() {
        let buses = vec![FrameBus::new(), FrameBus::new()];
        buses[1].publish(Arc::new(Frame::new(16, 16)), &Damage::full(16, 16));
        let text = metrics_page(&pages(buses));
        assert_eq!(
            scanoutd_testkit::prometheus::lint(&text),
            Vec::<String>::new(),
            "{text}"
        );
        use scanoutd_testkit::prometheus::sample_value;
        assert_eq!(
            sample_value(&text, "scanoutd_frames_produced_total", &["display=\"1\""]),
            Some(1.0)
        );
        assert_eq!(
            sample_value(
                &text,
                "scanoutd_frames_dropped_total",
                &["reason=\"ring_full\"", "display=\"0\""]
            ),
            Some(0.0)
        );
        for family in [
            "scanoutd_qemu_dmabuf_failed_total",
            "scanoutd_gpu_jobs_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} counter")),
                "{family}"
            );
        }
    }

    /// Start a snapshot request and read its response head, then stop reading: the body (a
    /// 4K picture, 25 MB) cannot fit in the socket buffers, so the server's write stays blocked.
    async fn stalled_snapshot(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /snapshot.ppm HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
                .await
                .expect("no response head within 5 s")
                .unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.0 200 OK"), "{head:?}");
        s
    }

    /// Snapshot readers that stop reading never hold a ring slot: with three of them
    /// stalled mid-body (one per published frame, so the old code pinned all three slots),
    /// the source still publishes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_snapshot_reader_holds_no_ring_slot() {
        let (w, h) = (3840, 2160);
        let bus = FrameBus::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, pages(vec![bus.clone()])));
        let mut readers = Vec::new();
        for i in 0..3u8 {
            let r = bus.try_write(w, h, |f| {
                f.data[0] = i;
                Damage::full(w, h)
            });
            assert_eq!(r, scanoutd_ring::WriteOutcome::Published);
            readers.push(stalled_snapshot(addr).await);
        }
        for i in 0..3u8 {
            let r = bus.try_write(w, h, |f| {
                f.data[1] = i;
                Damage::full(w, h)
            });
            assert_eq!(
                r,
                scanoutd_ring::WriteOutcome::Published,
                "write {i}: every ring slot is held by a stalled snapshot reader"
            );
        }
        assert_eq!(bus.stats().dropped_ring_full, 0);
        drop(readers);
        server.abort();
    }
}
