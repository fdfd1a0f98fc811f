//! Several displays (monitors) in one server: one display channel and one cursor channel per
//! display, each with its own frames, and pointer positions tagged with their display.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scanoutd_ring::FrameBus;
use scanoutd_testkit::{Channel, ClientError, CursorView, Surface, TestClient};
use scanoutd_types::{
    CursorShape, CursorState, Damage, Frame, InputEvent, InputSink, NoEncoders, Rect,
};
use spice_proto::{Caps, ChannelType, ClientMsg, LinkError};
use spice_server::{DisplaySource, Metrics, ServerConfig, SpiceServer, MAX_DISPLAYS};
use tokio::net::TcpListener;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recorder(Mutex<Vec<InputEvent>>);

impl InputSink for Recorder {
    fn input(&self, event: InputEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn moves(&self) -> Vec<(u32, u32, u8)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match *e {
                InputEvent::MouseMove { x, y, display } => Some((x, y, display)),
                _ => None,
            })
            .collect()
    }
}

struct Harness {
    addr: SocketAddr,
    server: Arc<SpiceServer>,
    buses: Vec<FrameBus>,
    input: Arc<Recorder>,
    metrics: Arc<Metrics>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

/// A server with one display per bus; display `i` gets cursor feed `cursors[i]` if given.
async fn start(n: usize, cursors: Vec<Option<watch::Receiver<CursorState>>>) -> Harness {
    let buses: Vec<FrameBus> = (0..n).map(|_| FrameBus::new()).collect();
    let input = Arc::new(Recorder::default());
    let metrics = Metrics::new();
    let mut cursors = cursors.into_iter();
    let displays = buses
        .iter()
        .map(|b| DisplaySource {
            bus: b.clone(),
            cursor: cursors.next().flatten(),
        })
        .collect();
    let server = SpiceServer::with_displays(
        ServerConfig::default(),
        displays,
        input.clone(),
        Arc::new(NoEncoders),
        metrics.clone(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    Harness {
        addr,
        server,
        buses,
        input,
        metrics,
    }
}

/// A frame whose pixels depend on (x, y, seed).
fn pattern(w: u32, h: u32, seed: u32) -> Frame {
    let mut f = Frame::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let o = (y * w + x) as usize * 4;
            let v = (x * 3 + y * 7 + seed * 101) ^ (seed << 16);
            f.data[o..o + 3].copy_from_slice(&v.to_le_bytes()[..3]);
        }
    }
    f
}

fn matches(s: &Surface, frame: &Frame) -> bool {
    s.width == frame.width
        && s.height == frame.height
        && (0..frame.height).all(|y| (0..frame.width).all(|x| s.pixel(x, y) == frame.pixel(x, y)))
}

fn publish(bus: &FrameBus, frame: &Frame) {
    bus.publish(
        Arc::new(frame.clone()),
        &Damage::full(frame.width, frame.height),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_displays_are_listed_and_each_shows_its_own_picture() {
    let h = start(2, vec![]).await;
    let a = pattern(320, 200, 1);
    let b = pattern(256, 160, 2);
    publish(&h.buses[0], &a);
    publish(&h.buses[1], &b);

    let mut c = TestClient::connect(h.addr, "").await.unwrap();
    assert_eq!(c.display_channels_hint, 2);
    let (d, i, k) = (
        ChannelType::Display as u8,
        ChannelType::Inputs as u8,
        ChannelType::Cursor as u8,
    );
    assert_eq!(c.channels, vec![(d, 0), (d, 1), (i, 0), (k, 0), (k, 1)]);

    c.wait_ready(T).await.unwrap();
    assert!(matches(&c.surface, &a), "display 0 shows display 0's frame");
    let mut second = c.open_display(1).await.unwrap();
    second.wait_ready(T).await.unwrap();
    assert!(
        matches(&second.surface, &b),
        "display 1 shows display 1's frame"
    );

    // Each channel follows its own bus: a change on display 1 only...
    let b2 = pattern(256, 160, 3);
    publish(&h.buses[1], &b2);
    second
        .pump_until(T, |s| matches(s, &b2))
        .await
        .expect("display 1 updates");
    // ... and a small change on display 0, drawn over display 0's own picture.
    let mut a2 = a.clone();
    let r = Rect::new(10, 20, 30, 40);
    for y in r.y..r.bottom() {
        for x in r.x..r.right() {
            let o = (y * a2.width + x) as usize * 4;
            a2.data[o..o + 3].copy_from_slice(&[1, 2, 3]);
        }
    }
    let mut dmg = Damage::new();
    dmg.add(r);
    h.buses[0].publish(Arc::new(a2.clone()), &dmg);
    c.pump_until(T, |s| matches(s, &a2))
        .await
        .expect("display 0 updates");
    assert!(matches(&second.surface, &b2));

    // Per-display metrics carry a display label.
    let mut text = String::new();
    h.metrics.render(&mut text);
    let sid = c.session_id;
    for disp in 0..2 {
        let line =
            format!("scanoutd_client_updates_sent_total{{client=\"{sid}\",display=\"{disp}\"}}");
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
    // Counted after the write: the client may have the pixels a moment before.
    let s1 = h.metrics.client_display(sid, 1).unwrap();
    let sent = || s1.updates_sent.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + T;
    while sent() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sent() >= 2, "display 1 counted {} updates", sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pointer_positions_carry_their_display_id() {
    let h = start(2, vec![]).await;
    publish(&h.buses[0], &pattern(64, 64, 1));
    publish(&h.buses[1], &pattern(64, 64, 2));
    let mut c = TestClient::connect(h.addr, "").await.unwrap();
    let moves = [(5, 6, 0u8), (7, 8, 1), (9, 10, 1), (11, 12, 0)];
    for (x, y, display_id) in moves {
        c.input(&ClientMsg::MousePosition {
            x,
            y,
            buttons: 0,
            display_id,
        })
        .await
        .unwrap();
    }
    let deadline = tokio::time::Instant::now() + T;
    while h.input.moves().len() < moves.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.input.moves(), moves.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_opens_only_display_0_works() {
    let h = start(2, vec![]).await;
    let a = pattern(200, 100, 4);
    publish(&h.buses[0], &a);
    publish(&h.buses[1], &pattern(100, 50, 5));
    let mut c = TestClient::connect(h.addr, "").await.unwrap();
    c.wait_ready(T).await.unwrap();
    assert!(matches(&c.surface, &a));
    // Display 1 keeps changing; display 0's client never sees any of it.
    for seed in 6..10 {
        publish(&h.buses[1], &pattern(100, 50, seed));
    }
    let a2 = pattern(200, 100, 11);
    publish(&h.buses[0], &a2);
    c.pump_until(T, |s| matches(s, &a2)).await.unwrap();
    c.input(&ClientMsg::MousePosition {
        x: 1,
        y: 2,
        buttons: 0,
        display_id: 0,
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while h.input.moves().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.input.moves(), vec![(1, 2, 0)]);
    // Display 1's stats exist but it sent nothing to this client.
    let s1 = h.metrics.client_display(c.session_id, 1).unwrap();
    assert_eq!(
        s1.updates_sent.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_past_the_display_count_are_refused() {
    let h = start(2, vec![]).await;
    publish(&h.buses[0], &pattern(64, 64, 1));
    let c = TestClient::connect(h.addr, "").await.unwrap();
    for (kind, id) in [
        (ChannelType::Display, 2u8),
        (ChannelType::Cursor, 2),
        (ChannelType::Inputs, 1),
    ] {
        let err = Channel::link_id(h.addr, kind, id, c.session_id, "", Caps::default())
            .await
            .err();
        assert!(
            matches!(
                err,
                Some(ClientError::Refused(Some(LinkError::ChannelNotAvailable)))
            ),
            "{kind:?} {id}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cursor_channel_follows_its_display() {
    let shape = |seed: u8| {
        let px = (0..16 * 16 * 4).map(|i| (i as u8) ^ seed).collect();
        Arc::new(CursorShape::new(16, 16, 1, 1, px).unwrap())
    };
    let (s0, s1) = (shape(0x11), shape(0x22));
    let st = |s: &Arc<CursorShape>, x| CursorState {
        shape: Some(Arc::clone(s)),
        x,
        y: 5,
        visible: true,
    };
    let (_tx0, rx0) = watch::channel(st(&s0, 3));
    let (_tx1, rx1) = watch::channel(st(&s1, 4));
    let h = start(2, vec![Some(rx0), Some(rx1)]).await;
    publish(&h.buses[0], &pattern(64, 64, 1));
    let c = TestClient::connect(h.addr, "").await.unwrap();
    for (id, want, x) in [(0u8, &s0, 3i16), (1, &s1, 4)] {
        let mut ch = Channel::link_id(
            h.addr,
            ChannelType::Cursor,
            id,
            c.session_id,
            "",
            Caps::default(),
        )
        .await
        .unwrap();
        let mut view = CursorView::default();
        view.pump_until(&mut ch, T, |v| v.init_done).await.unwrap();
        let img = view.shape.as_ref().expect("a shape");
        assert!(
            img.bgra == want.pixels,
            "cursor channel {id} shows its display's shape"
        );
        assert_eq!(view.position, Some((x, 5)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_count_is_checked_and_one_display_lists_as_before() {
    let mk = |n: usize| {
        SpiceServer::with_displays(
            ServerConfig::default(),
            (0..n)
                .map(|_| DisplaySource::new(FrameBus::new()))
                .collect(),
            Arc::new(Recorder::default()),
            Arc::new(NoEncoders),
            Metrics::new(),
        )
    };
    assert!(mk(0).is_err());
    assert!(mk(MAX_DISPLAYS + 1).is_err());
    assert_eq!(mk(MAX_DISPLAYS).unwrap().displays(), MAX_DISPLAYS);

    let h = start(1, vec![]).await;
    publish(&h.buses[0], &pattern(64, 64, 1));
    let mut c = TestClient::connect(h.addr, "").await.unwrap();
    assert_eq!(c.display_channels_hint, 1);
    assert_eq!(c.channels, vec![(2, 0), (3, 0), (4, 0)]);
    c.wait_ready(T).await.unwrap();
    // One display: the metrics keep their labels as they were.
    let mut text = String::new();
    h.metrics.render(&mut text);
    assert!(text.contains(&format!(
        "scanoutd_client_updates_sent_total{{client=\"{}\"}}",
        c.session_id
    )));
    assert!(c.open_display(1).await.is_err());
}
