//! A deliberately tiny HTTP/1.0 responder for `/metrics` (Prometheus text) and
//! `/snapshot.ppm` (the source's current frame; `/snapshot.ppm?display=N` for display N when
//! there are several). One request per connection, bounded in size and time.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use scanoutd_ring::FrameBus;
use spice_server::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 8 * 1024;

/// Serve until the task is aborted. `source_start_unix_ms` is exported so a frame can be
/// re-rendered from its timestamp strip.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    buses: Vec<FrameBus>,
    source_start_unix_ms: u64,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let buses = buses.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                handle(stream, &metrics, &buses, source_start_unix_ms),
            )
            .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "metrics request: {e}"),
                Err(_) => tracing::debug!(%peer, "metrics request timed out"),
            }
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    buses: &[FrameBus],
    start_ms: u64,
) -> std::io::Result<()> {
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
    // `display="N"` labels only when there are several displays.
    let label = |i: usize, sep: &str| {
        if buses.len() > 1 {
            format!("{sep}display=\"{i}\"")
        } else {
            String::new()
        }
    };
    match path {
        "/metrics" => {
            let mut body = String::with_capacity(4096);
            let _ = writeln!(
                body,
                "# HELP scanoutd_frames_produced_total Frames the source published."
            );
            let _ = writeln!(body, "# TYPE scanoutd_frames_produced_total counter");
            for (i, bus) in buses.iter().enumerate() {
                let l = label(i, "");
                let l = if l.is_empty() { l } else { format!("{{{l}}}") };
                let _ = writeln!(
                    body,
                    "scanoutd_frames_produced_total{l} {}",
                    bus.stats().published
                );
            }
            let _ = writeln!(body, "# HELP scanoutd_frames_dropped_total Source frames not published, by reason (ring_full: every ring slot was held by a reader).");
            let _ = writeln!(body, "# TYPE scanoutd_frames_dropped_total counter");
            for (i, bus) in buses.iter().enumerate() {
                let _ = writeln!(
                    body,
                    "scanoutd_frames_dropped_total{{reason=\"ring_full\"{}}} {}",
                    label(i, ","),
                    bus.stats().dropped_ring_full
                );
            }
            let _ = writeln!(body, "# HELP scanoutd_source_start_unix_ms When the source's animation clock was 0 (Unix ms).");
            let _ = writeln!(body, "# TYPE scanoutd_source_start_unix_ms gauge");
            let _ = writeln!(body, "scanoutd_source_start_unix_ms {start_ms}");
            metrics.render(&mut body);
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
                    let body = ppm(&f);
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
