//! Integration tests: the real server on 127.0.0.1, driven by the in-tree test client and by
//! raw sockets sending bad input.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scanoutd_ring::FrameBus;
use scanoutd_testkit::{default_display_caps, Channel, ClientError, TestClient};
use scanoutd_types::{Damage, Frame, InputEvent, InputSink, MouseButton, NoEncoders, Rect};
use spice_proto::{ChannelType, ClientMsg, LinkError, ServerMsg};
use spice_server::{Metrics, ServerConfig, SpiceServer, Ticketing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recorder(Mutex<Vec<InputEvent>>);

impl InputSink for Recorder {
    fn input(&self, event: InputEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn events(&self) -> Vec<InputEvent> {
        self.0.lock().unwrap().clone()
    }
}

struct Harness {
    addr: SocketAddr,
    server: Arc<SpiceServer>,
    bus: FrameBus,
    input: Arc<Recorder>,
    metrics: Arc<Metrics>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

async fn start(cfg: ServerConfig) -> Harness {
    let bus = FrameBus::new();
    let input = Arc::new(Recorder::default());
    let metrics = Metrics::new();
    let server = SpiceServer::new(
        cfg,
        bus.clone(),
        input.clone(),
        Arc::new(NoEncoders),
        metrics.clone(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    Harness {
        addr,
        server,
        bus,
        input,
        metrics,
    }
}

/// A frame whose every pixel depends on (x, y, seq); `noise` makes it incompressible.
fn pattern(w: u32, h: u32, seq: u64, noise: bool) -> Frame {
    let mut f = Frame::new(w, h);
    f.seq = seq;
    let mut s = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for y in 0..h {
        for x in 0..w {
            let o = (y * w + x) as usize * 4;
            let v = if noise {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u32
            } else {
                (x * 3 + y * 7 + seq as u32 * 11) | ((x / 16 + y / 16) << 16)
            };
            f.data[o..o + 3].copy_from_slice(&v.to_le_bytes()[..3]);
        }
    }
    f
}

fn assert_surface_eq(client: &TestClient, frame: &Frame) {
    let s = &client.surface;
    assert_eq!((s.width, s.height), (frame.width, frame.height));
    for y in 0..frame.height {
        for x in 0..frame.width {
            assert_eq!(s.pixel(x, y), frame.pixel(x, y), "pixel ({x},{y}) differs");
        }
    }
}

fn surface_matches(s: &scanoutd_testkit::Surface, frame: &Frame) -> bool {
    s.width == frame.width
        && s.height == frame.height
        && (0..frame.height).all(|y| (0..frame.width).all(|x| s.pixel(x, y) == frame.pixel(x, y)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_is_pixel_exact_with_lz4_and_raw() {
    let h = start(ServerConfig::default()).await;
    let frame = pattern(320, 200, 1, false);
    h.bus
        .publish(Arc::new(frame.clone()), &Damage::full(320, 200));

    let mut lz4 = TestClient::connect(h.addr, "").await.unwrap();
    lz4.wait_ready(T).await.unwrap();
    assert_surface_eq(&lz4, &frame);

    let mut caps = default_display_caps();
    caps = spice_proto::Caps::from_words(caps.words().iter().map(|w| w & !(1 << 5)).collect());
    let mut raw = TestClient::connect_with_caps(h.addr, "", caps)
        .await
        .unwrap();
    raw.wait_ready(T).await.unwrap();
    assert_surface_eq(&raw, &frame);
}

/// Values of the per-client series `name` in the server's metrics.
fn per_client(h: &Harness, name: &str) -> Vec<f64> {
    let mut text = String::new();
    h.metrics.render(&mut text);
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_time_the_path_and_a_client_that_never_answers_is_not_held() {
    let h = start(ServerConfig::default()).await;
    h.bus
        .publish(Arc::new(pattern(96, 64, 1, false)), &Damage::full(96, 64));
    let mut good = TestClient::connect(h.addr, "").await.unwrap();
    let mut deaf = TestClient::connect(h.addr, "").await.unwrap();
    deaf.display.answer_pings = false;
    good.wait_ready(T).await.unwrap();
    deaf.wait_ready(T).await.unwrap();
    // Both follow a picture that changes every 50 ms for 5 s: the gate (nothing more sent
    // while what is in flight is unanswered) holds the deaf one at most for the first few
    // seconds, never for good.
    let mut last = None;
    for seq in 2..=100u64 {
        let f = pattern(96, 64, seq, false);
        h.bus.publish(Arc::new(f.clone()), &Damage::full(96, 64));
        last = Some(f);
        let until = tokio::time::Instant::now() + Duration::from_millis(50);
        for c in [&mut good, &mut deaf] {
            while let Ok(Ok(m)) = tokio::time::timeout_at(until, c.display.recv(T)).await {
                c.surface.apply(&m).unwrap();
            }
        }
    }
    let want = last.unwrap();
    for c in [&mut good, &mut deaf] {
        c.pump_until(T, |s| surface_matches(s, &want))
            .await
            .unwrap();
    }
    let pongs = per_client(&h, "scanoutd_client_pongs_total");
    assert_eq!(pongs.len(), 2, "{pongs:?}");
    assert!(
        pongs.contains(&0.0),
        "the deaf client answered nothing: {pongs:?}"
    );
    assert!(
        pongs.iter().any(|p| *p >= 20.0),
        "the other one's path was timed all along: {pongs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_updates_reach_the_client() {
    let h = start(ServerConfig::default()).await;
    let mut frame = pattern(256, 128, 1, false);
    h.bus
        .publish(Arc::new(frame.clone()), &Damage::full(256, 128));
    let mut c = TestClient::connect(h.addr, "").await.unwrap();
    c.wait_ready(T).await.unwrap();
    let draws_before = c.surface.draws;

    // Change one rectangle only.
    let r = Rect::new(30, 40, 50, 20);
    for y in r.y..r.bottom() {
        for x in r.x..r.right() {
            let o = (y * 256 + x) as usize * 4;
            frame.data[o..o + 3].copy_from_slice(&[0x10, 0x20, 0x30]);
        }
    }
    let mut d = Damage::new();
    d.add(r);
    h.bus.publish(Arc::new(frame.clone()), &d);
    let want = frame.clone();
    c.pump_until(T, |s| surface_matches(s, &want))
        .await
        .unwrap();
    assert!(c.surface.draws > draws_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_right_one_accepted() {
    let h = start(ServerConfig {
        ticketing: Ticketing::password("secret").unwrap(),
        ..ServerConfig::default()
    })
    .await;
    h.bus
        .publish(Arc::new(pattern(64, 64, 1, false)), &Damage::full(64, 64));

    let err = TestClient::connect(h.addr, "wrong")
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, ClientError::Refused(Some(LinkError::PermissionDenied))),
        "{err}"
    );
    let err = TestClient::connect(h.addr, "")
        .await
        .err()
        .expect("refused");
    assert!(matches!(
        err,
        ClientError::Refused(Some(LinkError::PermissionDenied))
    ));
    assert_eq!(h.metrics.auth_failures(), 2);

    let mut ok = TestClient::connect(h.addr, "secret").await.unwrap();
    ok.wait_ready(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_all_receive_frames() {
    let h = start(ServerConfig::default()).await;
    h.bus
        .publish(Arc::new(pattern(128, 96, 1, false)), &Damage::full(128, 96));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = TestClient::connect(h.addr, "").await.unwrap();
        c.wait_ready(T).await.unwrap();
        clients.push(c);
    }
    assert_eq!(h.metrics.connected_clients(), 4);
    let last = pattern(128, 96, 9, false);
    h.bus
        .publish(Arc::new(last.clone()), &Damage::full(128, 96));
    for c in &mut clients {
        let want = last.clone();
        c.pump_until(T, |s| surface_matches(s, &want))
            .await
            .unwrap();
    }
    drop(clients);
    // Sessions end when their main channel closes.
    for _ in 0..100 {
        if h.metrics.connected_clients() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.metrics.connected_clients(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_reaches_the_source_and_motion_is_acked() {
    let h = start(ServerConfig::default()).await;
    h.bus
        .publish(Arc::new(pattern(64, 64, 1, false)), &Damage::full(64, 64));
    let mut c = TestClient::connect(h.addr, "").await.unwrap();
    c.input(&ClientMsg::KeyDown(0x1E)).await.unwrap();
    c.input(&ClientMsg::KeyUp(0x9E)).await.unwrap();
    // Right arrow as one KEY_SCANCODE message: E0 4D E0 CD.
    c.input(&ClientMsg::KeyScancode(vec![0xE0, 0x4D, 0xE0, 0xCD]))
        .await
        .unwrap();
    // Right Ctrl as KEY_DOWN with the extended bytes in a u32: E0 1D.
    c.input(&ClientMsg::KeyDown(u32::from_le_bytes([0xE0, 0x1D, 0, 0])))
        .await
        .unwrap();
    for i in 0..8 {
        c.input(&ClientMsg::MousePosition {
            x: 10 + i,
            y: 20,
            buttons: 0,
            display_id: 0,
        })
        .await
        .unwrap();
    }
    c.input(&ClientMsg::MousePress {
        button: 1,
        buttons: 1,
    })
    .await
    .unwrap();
    c.input(&ClientMsg::MouseRelease {
        button: 1,
        buttons: 0,
    })
    .await
    .unwrap();
    c.input(&ClientMsg::KeyModifiers(2)).await.unwrap();

    let inputs = c.inputs.as_mut().unwrap();
    for _ in 0..2 {
        inputs
            .recv_until(T, |m| matches!(m, ServerMsg::MouseMotionAck))
            .await
            .expect("one MOUSE_MOTION_ACK per 4 positions");
    }
    for _ in 0..200 {
        if h.input.events().len() >= 16 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ev = h.input.events();
    use InputEvent::*;
    let keys: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Key { scancode, pressed } => Some((*scancode, *pressed)),
            _ => None,
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            (0x1E, true),
            (0x1E, false),
            (0x14D, true),
            (0x14D, false),
            (0x11D, true)
        ]
    );
    assert!(ev.contains(&MouseMove {
        x: 17,
        y: 20,
        display: 0
    }));
    assert!(ev.contains(&Button {
        button: MouseButton::Left,
        pressed: true
    }));
    assert!(ev.contains(&Button {
        button: MouseButton::Left,
        pressed: false
    }));
    assert!(ev.contains(&KeyModifiers(2)));
}

/// Read whatever the server sends until it closes; returns the bytes. Fails if it stays open.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let r = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "the server kept a bad connection open");
    out
}

/// The LinkReply error word of an error reply (16-byte header, then the u32).
fn reply_error(bytes: &[u8]) -> Option<u32> {
    bytes
        .get(16..20)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
}

async fn still_serves(h: &Harness) {
    let mut c = TestClient::connect(h.addr, "")
        .await
        .expect("server still accepts clients");
    c.wait_ready(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_links_get_clear_errors_and_do_not_hurt_others() {
    let h = start(ServerConfig {
        link_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    })
    .await;
    h.bus
        .publish(Arc::new(pattern(64, 64, 1, false)), &Damage::full(64, 64));
    let mut watcher = TestClient::connect(h.addr, "").await.unwrap();
    watcher.wait_ready(T).await.unwrap();

    // Bad magic.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        reply_error(&read_to_close(&mut s).await),
        Some(LinkError::InvalidMagic as u32)
    );

    // Wrong major version.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut hdr = b"REDQ".to_vec();
    hdr.extend_from_slice(&3u32.to_le_bytes());
    hdr.extend_from_slice(&2u32.to_le_bytes());
    hdr.extend_from_slice(&26u32.to_le_bytes());
    s.write_all(&hdr).await.unwrap();
    assert_eq!(
        reply_error(&read_to_close(&mut s).await),
        Some(LinkError::VersionMismatch as u32)
    );

    // Oversized link message.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut hdr = b"REDQ".to_vec();
    for v in [2u32, 2, 1_000_000] {
        hdr.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&hdr).await.unwrap();
    assert_eq!(
        reply_error(&read_to_close(&mut s).await),
        Some(LinkError::InvalidData as u32)
    );

    // Capability counts that run past the end of the message.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut m = b"REDQ".to_vec();
    for v in [2u32, 2, 18] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&[1, 0]);
    for v in [1000u32, 0, 18] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&m).await.unwrap();
    assert_eq!(
        reply_error(&read_to_close(&mut s).await),
        Some(LinkError::InvalidData as u32)
    );

    // Truncated link message, then silence: dropped at the link timeout.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(&m[..20]).await.unwrap();
    read_to_close(&mut s).await;

    // Random bytes.
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..20 {
        let mut junk = Vec::new();
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk.push(x as u8);
        }
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        let _ = s.write_all(&junk).await;
        read_to_close(&mut s).await;
    }

    // A channel for a session that does not exist.
    let err = Channel::link(
        h.addr,
        ChannelType::Display,
        0xdead_beef,
        "",
        default_display_caps(),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(err, ClientError::Refused(Some(LinkError::BadConnectionId))),
        "{err}"
    );

    assert!(
        h.metrics.connected_clients() == 1,
        "only the watcher is connected"
    );
    still_serves(&h).await;
    // The watcher's session is unaffected: a new frame still reaches it.
    let f = pattern(64, 64, 2, false);
    h.bus.publish(Arc::new(f.clone()), &Damage::full(64, 64));
    watcher
        .pump_until(T, |s| surface_matches(s, &f))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_drop_only_that_client() {
    let h = start(ServerConfig::default()).await;
    h.bus
        .publish(Arc::new(pattern(64, 64, 1, false)), &Damage::full(64, 64));
    let mut watcher = TestClient::connect(h.addr, "").await.unwrap();
    watcher.wait_ready(T).await.unwrap();

    // Unknown message types are tolerated.
    let mut c = TestClient::connect(h.addr, "").await.unwrap();
    let mut raw = Vec::new();
    spice_proto::encode_header(999, 3, &mut raw);
    raw.extend_from_slice(&[1, 2, 3]);
    c.inputs
        .as_mut()
        .unwrap()
        .stream
        .write_all(&raw)
        .await
        .unwrap();
    c.input(&ClientMsg::KeyDown(0x10)).await.unwrap();
    for _ in 0..200 {
        if h.input.events().contains(&InputEvent::Key {
            scancode: 0x10,
            pressed: true,
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.input.events().contains(&InputEvent::Key {
        scancode: 0x10,
        pressed: true
    }));

    // A known message with a body too short for it.
    let mut raw = Vec::new();
    spice_proto::encode_header(101, 2, &mut raw); // KEY_DOWN needs 4 bytes
    raw.extend_from_slice(&[1, 2]);
    let inputs = c.inputs.as_mut().unwrap();
    inputs.stream.write_all(&raw).await.unwrap();
    read_to_close(&mut inputs.stream).await;

    // A length far past any sane message, on the main channel: the session ends.
    let mut raw = Vec::new();
    spice_proto::encode_header(104, 500_000_000, &mut raw);
    c.main.stream.write_all(&raw).await.unwrap();
    read_to_close(&mut c.main.stream).await;
    read_to_close(&mut c.display.stream).await;
    assert!(h.metrics.protocol_errors() >= 2);

    let f = pattern(64, 64, 3, false);
    h.bus.publish(Arc::new(f.clone()), &Damage::full(64, 64));
    watcher
        .pump_until(T, |s| surface_matches(s, &f))
        .await
        .unwrap();
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_coalesced_then_dropped() {
    let h = start(ServerConfig {
        stall_timeout: Duration::from_millis(1500),
        ..ServerConfig::default()
    })
    .await;
    let (w, hgt) = (512, 512);
    h.bus
        .publish(Arc::new(pattern(w, hgt, 0, true)), &Damage::full(w, hgt));
    let mut watcher = TestClient::connect(h.addr, "").await.unwrap();
    watcher.wait_ready(T).await.unwrap();

    // The stalled client links everything, then never reads its display channel again.
    let stalled = TestClient::connect(h.addr, "").await.unwrap();
    let sid = stalled.session_id;

    // Publish incompressible full frames (1 MiB each) far faster than anyone could read them
    // through a stalled socket, while the watcher keeps up.
    let mut last = None;
    for seq in 1..=60u64 {
        let f = Arc::new(pattern(w, hgt, seq, true));
        h.bus.publish(f.clone(), &Damage::full(w, hgt));
        last = Some(f);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = last.unwrap();
    watcher
        .pump_until(T, |s| surface_matches(s, &last))
        .await
        .unwrap();

    // The stalled client got coalesced updates, then was disconnected; the watcher was not.
    let mut dropped = false;
    for _ in 0..300 {
        if h.metrics.stalled_disconnects() >= 1 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped, "the stalled client was never disconnected");
    // Its session is gone once the stalled display channel closed and main follows.
    drop(stalled);
    for _ in 0..200 {
        if h.metrics.client(sid).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.metrics.client(sid).is_none());
    let f = pattern(w, hgt, 99, true);
    h.bus.publish(Arc::new(f.clone()), &Damage::full(w, hgt));
    watcher
        .pump_until(T, |s| surface_matches(s, &f))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_fewer_newer_updates() {
    let h = start(ServerConfig::default()).await;
    let (w, hgt) = (400, 300);
    h.bus
        .publish(Arc::new(pattern(w, hgt, 0, true)), &Damage::full(w, hgt));
    let mut c = TestClient::connect(h.addr, "").await.unwrap();
    c.wait_ready(T).await.unwrap();
    let stats = h.metrics.client(c.session_id).unwrap();
    // 100 frames published while the client does not read; then it catches up.
    for seq in 1..=100u64 {
        h.bus
            .publish(Arc::new(pattern(w, hgt, seq, true)), &Damage::full(w, hgt));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = pattern(w, hgt, 100, true);
    c.pump_until(T, |s| surface_matches(s, &last))
        .await
        .unwrap();
    let sent = stats
        .updates_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let coalesced = stats
        .coalesced_updates
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(coalesced > 0, "nothing was coalesced ({sent} updates sent)");
    assert!(sent + coalesced >= 100);
    assert!(sent < 100, "every frame was sent separately");
}

/// A deterministic encoder: each "frame" is a header (keyframe flag, width, height) plus a
/// checksum of the pixels, so tests can see what was encoded without a real codec.
struct FakeEncoder {
    codec: scanoutd_types::Codec,
    w: u32,
    h: u32,
    log: Arc<Mutex<Vec<String>>>,
    /// Fail every encode from this frame on (counting from 0).
    fail_from: Option<u32>,
    frames: u32,
}

impl scanoutd_types::VideoEncoder for FakeEncoder {
    fn encode(
        &mut self,
        bgrx: &[u8],
        stride: usize,
        pts_ms: u64,
        force_keyframe: bool,
    ) -> Result<Option<scanoutd_types::EncodedFrame>, scanoutd_types::EncoderError> {
        assert_eq!(stride, self.w as usize * 4);
        assert_eq!(bgrx.len(), stride * self.h as usize);
        self.frames += 1;
        if self.fail_from.is_some_and(|n| self.frames > n) {
            return Err(scanoutd_types::EncoderError(format!(
                "{} broke mid-stream",
                self.codec
            )));
        }
        let sum: u64 = bgrx.iter().map(|b| u64::from(*b)).sum();
        let mut data = vec![force_keyframe as u8];
        data.extend_from_slice(&self.w.to_le_bytes());
        data.extend_from_slice(&self.h.to_le_bytes());
        data.extend_from_slice(&sum.to_le_bytes());
        Ok(Some(scanoutd_types::EncodedFrame {
            data,
            keyframe: force_keyframe,
            pts_ms,
            encode_time: Duration::from_millis(1),
        }))
    }
    fn set_bitrate(&mut self, kbps: u32) -> Result<(), scanoutd_types::EncoderError> {
        self.log.lock().unwrap().push(format!("bitrate {kbps}"));
        Ok(())
    }
    fn codec(&self) -> scanoutd_types::Codec {
        self.codec
    }
    fn name(&self) -> &str {
        "fake"
    }
}

/// Encodes everything but `broken`, which fails to start; `fails_after` starts, then fails
/// after that many frames.
struct FakeFactory {
    broken: Option<scanoutd_types::Codec>,
    log: Arc<Mutex<Vec<String>>>,
    fails_after: Option<(scanoutd_types::Codec, u32)>,
}

impl scanoutd_types::EncoderFactory for FakeFactory {
    fn codecs(&self) -> Vec<scanoutd_types::Codec> {
        scanoutd_types::Codec::ALL.to_vec()
    }
    fn create(
        &self,
        codec: scanoutd_types::Codec,
        width: u32,
        height: u32,
        _fps: u32,
        _kbps: u32,
    ) -> Result<Box<dyn scanoutd_types::VideoEncoder>, scanoutd_types::EncoderError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("create {codec} {width}x{height}"));
        if Some(codec) == self.broken {
            return Err(scanoutd_types::EncoderError(format!("{codec} is broken")));
        }
        Ok(Box::new(FakeEncoder {
            codec,
            w: width,
            h: height,
            log: self.log.clone(),
            fail_from: self
                .fails_after
                .and_then(|(c, n)| (c == codec).then_some(n)),
            frames: 0,
        }))
    }
}

/// Paint a moving block (like a video) over a static background.
fn paint_block(f: &mut Frame, r: Rect, seq: u64) {
    for y in r.y..r.bottom() {
        for x in r.x..r.right() {
            let o = (y * f.width + x) as usize * 4;
            let v = (x as u64 * 5 + y as u64 * 3 + seq * 17) as u32;
            f.data[o..o + 3].copy_from_slice(&v.to_le_bytes()[..3]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_motion_streams_then_turns_sharp_again() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let bus = FrameBus::new();
    let input = Arc::new(Recorder::default());
    let metrics = Metrics::new();
    let factory = Arc::new(FakeFactory {
        broken: Some(scanoutd_types::Codec::H264),
        log: log.clone(),
        fails_after: None,
    });
    let server = SpiceServer::new(
        ServerConfig::default(),
        bus.clone(),
        input,
        factory,
        metrics.clone(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });

    let (w, h) = (640, 480);
    let mut frame = pattern(w, h, 0, false);
    bus.publish(Arc::new(frame.clone()), &Damage::full(w, h));
    let mut c = TestClient::connect(addr, "").await.unwrap();
    c.wait_ready(T).await.unwrap();

    // 1.5 s of a 200x150 block changing at 60 fps; a small cursor-like change elsewhere.
    let video = Rect::new(100, 120, 200, 150);
    let pump = {
        let bus = bus.clone();
        let mut frame = frame.clone();
        tokio::spawn(async move {
            for seq in 1..=90u64 {
                paint_block(&mut frame, video, seq);
                let mut d = Damage::new();
                d.add(video);
                bus.publish(Arc::new(frame.clone()), &d);
                tokio::time::sleep(Duration::from_millis(16)).await;
            }
            frame
        })
    };
    let mut created = None;
    let mut data = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while data.len() < 10 && tokio::time::Instant::now() < deadline {
        let m = c.display.recv(T).await.unwrap();
        match &m {
            ServerMsg::StreamCreate {
                id,
                codec_type,
                flags,
                dest,
                ..
            } => {
                created = Some((*id, *codec_type, *flags, *dest));
            }
            ServerMsg::StreamData { id, data: d, .. } => {
                assert_eq!(Some(*id), created.map(|c| c.0));
                data.push(d.clone());
            }
            _ => {}
        }
        c.surface.apply(&m).unwrap();
    }
    let (_, codec, flags, dest) = created.expect("a stream was created");
    assert_eq!(
        codec,
        spice_proto::VideoCodec::Vp8 as u8,
        "H.264 failed to start: next codec"
    );
    assert_eq!(flags & 1, 1, "TOP_DOWN");
    assert!(
        dest.left <= 100 && dest.top <= 120 && dest.right >= 300 && dest.bottom >= 270,
        "{dest:?}"
    );
    assert!(
        (dest.right - dest.left) * (dest.bottom - dest.top) < 2 * 200 * 150,
        "stream is not much larger than the video"
    );
    assert_eq!(data[0][0], 1, "the first stream frame is a keyframe");
    assert!(
        data[1..].iter().all(|d| d[0] == 0),
        "later frames are not forced keyframes"
    );
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("create h264")));

    // Motion stops: the stream is destroyed and its area redrawn losslessly.
    frame = pump.await.unwrap();
    let want = frame.clone();
    let mut destroyed = false;
    let deadline = tokio::time::Instant::now() + T;
    while tokio::time::Instant::now() < deadline {
        let m = c.display.recv(T).await.unwrap();
        if matches!(m, ServerMsg::StreamDestroy(_)) {
            destroyed = true;
        }
        c.surface.apply(&m).unwrap();
        if destroyed && surface_matches(&c.surface, &want) {
            break;
        }
    }
    assert!(destroyed, "the stream was destroyed when motion stopped");
    assert_surface_eq(&c, &want);
    let stats = metrics.client(c.session_id).unwrap();
    assert!(
        stats
            .frames_encoded
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 10
    );
    assert!(stats.capture_to_send_ms.count() >= 10);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_off_never_streams() {
    let bus = FrameBus::new();
    let factory = Arc::new(FakeFactory {
        broken: None,
        log: Arc::new(Mutex::new(Vec::new())),
        fails_after: None,
    });
    let cfg = ServerConfig {
        stream_mode: spice_server::StreamMode::Off,
        ..ServerConfig::default()
    };
    let server = SpiceServer::new(
        cfg,
        bus.clone(),
        Arc::new(Recorder::default()),
        factory,
        Metrics::new(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    let (w, h) = (320, 240);
    let mut frame = pattern(w, h, 0, false);
    bus.publish(Arc::new(frame.clone()), &Damage::full(w, h));
    let mut c = TestClient::connect(addr, "").await.unwrap();
    c.wait_ready(T).await.unwrap();
    let video = Rect::new(10, 10, 200, 150);
    for seq in 1..=60u64 {
        paint_block(&mut frame, video, seq);
        let mut d = Damage::new();
        d.add(video);
        bus.publish(Arc::new(frame.clone()), &d);
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
    let want = frame.clone();
    let deadline = tokio::time::Instant::now() + T;
    while !surface_matches(&c.surface, &want) && tokio::time::Instant::now() < deadline {
        let m = c.display.recv(T).await.unwrap();
        assert!(
            !matches!(m, ServerMsg::StreamCreate { .. }),
            "streamed with --codec off"
        );
        c.surface.apply(&m).unwrap();
    }
    assert_surface_eq(&c, &want);
    server.shutdown();
}

/// A server on the fake encoders, its bus, and a linked client showing a `w` x `h` picture.
async fn stream_rig(
    factory: FakeFactory,
    w: u32,
    h: u32,
) -> (Arc<SpiceServer>, FrameBus, Frame, TestClient) {
    let bus = FrameBus::new();
    let server = SpiceServer::new(
        ServerConfig::default(),
        bus.clone(),
        Arc::new(Recorder::default()),
        Arc::new(factory),
        Metrics::new(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    let frame = pattern(w, h, 0, false);
    bus.publish(Arc::new(frame.clone()), &Damage::full(w, h));
    let c = TestClient::connect(addr, "").await.unwrap();
    (server, bus, frame, c)
}

fn rect_of(r: &spice_proto::SpiceRect) -> Rect {
    Rect::new(
        r.left as u32,
        r.top as u32,
        (r.right - r.left) as u32,
        (r.bottom - r.top) as u32,
    )
}

/// When an encoder fails mid-stream the client gets STREAM_DESTROY and a lossless redraw of
/// the stream's area, then a stream in the next codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_failing_mid_stream_gets_a_lossless_redraw_then_the_next_codec() {
    let factory = FakeFactory {
        broken: None,
        log: Arc::new(Mutex::new(Vec::new())),
        fails_after: Some((scanoutd_types::Codec::H264, 5)),
    };
    let (server, bus, mut frame, mut c) = stream_rig(factory, 640, 480).await;
    c.wait_ready(T).await.unwrap();
    let video = Rect::new(100, 120, 200, 150);
    let pump = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for seq in 1..=150u64 {
                paint_block(&mut frame, video, seq);
                bus.publish(Arc::new(frame.clone()), &{
                    let mut d = Damage::new();
                    d.add(video);
                    d
                });
                tokio::time::sleep(Duration::from_millis(16)).await;
            }
        })
    };
    let mut log: Vec<ServerMsg> = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    let second_stream = |log: &[ServerMsg]| {
        log.iter()
            .filter(|m| matches!(m, ServerMsg::StreamCreate { .. }))
            .count()
            >= 2
    };
    while !second_stream(&log) && tokio::time::Instant::now() < deadline {
        let m = c.display.recv(T).await.unwrap();
        c.surface.apply(&m).unwrap();
        log.push(m);
    }
    pump.abort();
    let creates: Vec<(usize, u8, Rect)> = log
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            ServerMsg::StreamCreate {
                codec_type, dest, ..
            } => Some((i, *codec_type, rect_of(dest))),
            _ => None,
        })
        .collect();
    assert!(
        creates.len() >= 2,
        "no second stream after the encoder failed"
    );
    let (first, second) = (creates[0], creates[1]);
    assert_eq!(first.1, spice_proto::VideoCodec::H264 as u8);
    assert_eq!(
        second.1,
        spice_proto::VideoCodec::Vp8 as u8,
        "the next codec"
    );
    let between = &log[first.0 + 1..second.0];
    let destroy = between
        .iter()
        .position(|m| matches!(m, ServerMsg::StreamDestroy(_)))
        .expect("STREAM_DESTROY before the next stream");
    let redrawn = between[destroy..]
        .iter()
        .any(|m| matches!(m, ServerMsg::DrawCopy(d) if rect_of(&d.bbox).contains(&first.2)));
    assert!(
        redrawn,
        "the failed stream's area {:?} was not redrawn losslessly",
        first.2
    );
    server.shutdown();
}

/// When a stream regrows (a moving object leaves its region), the old stream's area outside
/// the new one (if any) is redrawn losslessly with the new stream, so the client never shows a stale
/// picture of the old one beside the new stream while the new one's first frame decodes; what
/// the new stream covers its keyframe repaints (no redraw of it to cross a slow link first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regrown_stream_redraws_the_old_area_losslessly() {
    let factory = FakeFactory {
        broken: None,
        log: Arc::new(Mutex::new(Vec::new())),
        fails_after: None,
    };
    let (server, bus, mut frame, mut c) = stream_rig(factory, 800, 600).await;
    c.wait_ready(T).await.unwrap();
    let pump = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0..240u32 {
                let block = Rect::new(40 + i * 2, 200, 200, 150);
                paint_block(&mut frame, block, u64::from(i) + 1);
                let mut d = Damage::new();
                d.add(Rect::new(
                    block.x.saturating_sub(2),
                    block.y,
                    block.w + 2,
                    block.h,
                ));
                bus.publish(Arc::new(frame.clone()), &d);
                tokio::time::sleep(Duration::from_millis(16)).await;
            }
        })
    };
    let mut log: Vec<ServerMsg> = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    let creates = |log: &[ServerMsg]| {
        log.iter()
            .filter(|m| matches!(m, ServerMsg::StreamCreate { .. }))
            .count()
    };
    while creates(&log) < 2 && tokio::time::Instant::now() < deadline {
        let m = c.display.recv(T).await.unwrap();
        c.surface.apply(&m).unwrap();
        log.push(m);
    }
    pump.abort();
    let idx: Vec<(usize, Rect)> = log
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            ServerMsg::StreamCreate { dest, .. } => Some((i, rect_of(dest))),
            _ => None,
        })
        .collect();
    assert!(idx.len() >= 2, "the stream never regrew");
    let (old, new) = (idx[0], idx[1]);
    assert_ne!(old.1, new.1, "a regrow changes the region");
    let between = &log[old.0 + 1..new.0];
    let destroy = between
        .iter()
        .position(|m| matches!(m, ServerMsg::StreamDestroy(_)))
        .expect("the old stream is destroyed");
    // The part of the old area the new stream does not cover is redrawn (every pixel of it),
    // before the new stream; what the new one covers is left to its first frame.
    let draws: Vec<Rect> = between[destroy..]
        .iter()
        .filter_map(|m| match m {
            ServerMsg::DrawCopy(d) => Some(rect_of(&d.bbox)),
            _ => None,
        })
        .collect();
    // (A region only grows, so here nothing is left; a region that ends is redrawn whole:
    // sustained_motion_streams_then_turns_sharp_again.)
    let left = old.1.subtract(&new.1);
    for part in &left {
        for y in part.y..part.bottom() {
            for x in part.x..part.right() {
                assert!(
                    draws.iter().any(|d| d.contains(&Rect::new(x, y, 1, 1))),
                    "pixel ({x},{y}) of the old stream's area {:?} outside the new {:?} was not redrawn: {draws:?}",
                    old.1,
                    new.1
                );
            }
        }
    }
    assert!(
        draws.iter().all(|d| d.intersect(&new.1).is_none()),
        "the new stream's area is not redrawn: {draws:?}"
    );
    server.shutdown();
}

/// A server on the fake encoders (logging into `log`) with `cfg`, its bus and its address,
/// with a picture of `w` x `h` published and a task painting a moving full-area block every
/// `period` (aborted by the caller).
async fn full_frame_rig(
    cfg: ServerConfig,
    log: Arc<Mutex<Vec<String>>>,
    (w, h): (u32, u32),
    period: Duration,
) -> (Arc<SpiceServer>, SocketAddr, tokio::task::JoinHandle<()>) {
    let bus = FrameBus::new();
    let server = SpiceServer::new(
        cfg,
        bus.clone(),
        Arc::new(Recorder::default()),
        Arc::new(FakeFactory {
            broken: None,
            log,
            fails_after: None,
        }),
        Metrics::new(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    let mut frame = pattern(w, h, 0, false);
    bus.publish(Arc::new(frame.clone()), &Damage::full(w, h));
    let pump = tokio::spawn(async move {
        for seq in 1..=400u64 {
            paint_block(&mut frame, Rect::new(0, 0, w, h), seq);
            bus.publish(Arc::new(frame.clone()), &Damage::full(w, h));
            tokio::time::sleep(period).await;
        }
    });
    (server, addr, pump)
}

/// Clients of one display on the same tier share one encoder: it is created once, and every
/// client's stream starts with a keyframe, also a client that joins a running stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_tier_share_one_encoder_and_a_late_client_starts_on_a_keyframe() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let cfg = ServerConfig {
        stream_mode: spice_server::StreamMode::FullFrame,
        ..ServerConfig::default()
    };
    let (server, addr, pump) =
        full_frame_rig(cfg, log.clone(), (320, 240), Duration::from_millis(16)).await;
    /// The first `n` STREAM_DATA payloads a client gets.
    async fn stream_frames(c: &mut TestClient, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + T;
        while out.len() < n && tokio::time::Instant::now() < deadline {
            let m = c.display.recv(T).await.unwrap();
            if let ServerMsg::StreamData { data, .. } = &m {
                out.push(data.clone());
            }
            c.surface.apply(&m).unwrap();
        }
        assert_eq!(out.len(), n, "stream frames within {T:?}");
        out
    }
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = TestClient::connect(addr, "").await.unwrap();
        c.wait_ready(T).await.unwrap();
        clients.push(c);
    }
    for c in &mut clients {
        let f = stream_frames(c, 5).await;
        assert_eq!(f[0][0], 1, "a client's first stream frame is a keyframe");
    }
    // A client joining the running stream starts on a keyframe too.
    let mut late = TestClient::connect(addr, "").await.unwrap();
    late.wait_ready(T).await.unwrap();
    assert_eq!(stream_frames(&mut late, 3).await[0][0], 1);
    let creates = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("create "))
        .count();
    assert_eq!(
        creates,
        1,
        "one shared encoder for four clients: {:?}",
        log.lock().unwrap()
    );
    let hub = server.hub(0).unwrap().stats();
    let encoded = hub
        .frames_encoded
        .load(std::sync::atomic::Ordering::Relaxed);
    let per_client: u64 = clients
        .iter()
        .chain(std::iter::once(&late))
        .filter_map(|c| server.metrics().client(c.session_id))
        .map(|s| s.frames_encoded.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(
        encoded > 0 && per_client >= 3 * 5 + 3,
        "{encoded} encoded, {per_client} delivered"
    );
    pump.abort();
    server.shutdown();
}

/// Frame rate before resolution: a link that cannot give the full size 10 readable frames a
/// second gets the stream encoded at half resolution, shown by the client over the full area
/// (STREAM_CREATE's stream size is half its destination's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_too_slow_for_the_full_size_gets_a_half_resolution_stream() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let cfg = ServerConfig {
        stream_mode: spice_server::StreamMode::FullFrame,
        // 150 kbit/s gives 1280x720 about 5 readable frames a second.
        rate: spice_server::RateLimits {
            start_kbps: 150,
            min_kbps: 100,
            max_kbps: 150,
        },
        ..ServerConfig::default()
    };
    let (w, h) = (1280, 720);
    let (server, addr, pump) =
        full_frame_rig(cfg, log.clone(), (w, h), Duration::from_millis(33)).await;
    let mut c = TestClient::connect(addr, "").await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let mut created = None;
    let mut data = 0;
    while data < 2 && tokio::time::Instant::now() < deadline {
        let m = c.display.recv(T).await.unwrap();
        match &m {
            ServerMsg::StreamCreate {
                stream_width,
                stream_height,
                src_width,
                dest,
                ..
            } => created = Some((*stream_width, *stream_height, *src_width, rect_of(dest))),
            ServerMsg::StreamData { .. } => data += 1,
            _ => {}
        }
        c.surface.apply(&m).unwrap();
    }
    pump.abort();
    let (sw, sh, srcw, dest) = created.expect("a stream");
    assert_eq!((sw, sh, srcw), (640, 360, 640), "encoded at half size");
    assert_eq!(dest, Rect::new(0, 0, w, h), "shown over the whole area");
    assert!(data >= 2, "frames of it arrive");
    // The encoder was made for the half size (the fake checks every input against it).
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l == "create h264 640x360"),
        "{:?}",
        log.lock().unwrap()
    );
    server.shutdown();
}
