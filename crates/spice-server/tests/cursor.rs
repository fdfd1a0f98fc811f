//! The cursor channel against a fed `CursorState` watch, seen through the test client's
//! model of spice-gtk's cursor handling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scanoutd_ring::FrameBus;
use scanoutd_testkit::{Channel, ClientError, CursorEvent, CursorView, TestClient};
use scanoutd_types::{CursorShape, CursorState, Damage, Frame, NoEncoders, NullInputSink};
use spice_proto::consts::MOUSE_MODE_SERVER;
use spice_proto::{Caps, ChannelType, ClientMsg, ServerMsg};
use spice_server::{Metrics, ServerConfig, SpiceServer};
use tokio::net::TcpListener;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(10);

struct Harness {
    addr: SocketAddr,
    server: Arc<SpiceServer>,
    bus: FrameBus,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

async fn start(cursor: Option<watch::Receiver<CursorState>>) -> Harness {
    let bus = FrameBus::new();
    let (cfg, input, enc, metrics) = (
        ServerConfig::default(),
        Arc::new(NullInputSink),
        Arc::new(NoEncoders),
        Metrics::new(),
    );
    let server = match cursor {
        Some(rx) => SpiceServer::with_cursor(cfg, bus.clone(), input, enc, metrics, rx),
        None => SpiceServer::new(cfg, bus.clone(), input, enc, metrics),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    Harness { addr, server, bus }
}

/// A `side`×`side` shape whose pixels depend on `seed`, with hot spot (1, 2).
fn shape(side: u32, seed: u32) -> Arc<CursorShape> {
    let px = (0..side * side)
        .flat_map(|i| {
            (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(0x9E37_79B9)).to_le_bytes()
        })
        .collect();
    Arc::new(CursorShape::new(side, side, 1, 2, px).unwrap())
}

fn state(shape: &Arc<CursorShape>, x: i32, y: i32, visible: bool) -> CursorState {
    CursorState {
        shape: Some(Arc::clone(shape)),
        x,
        y,
        visible,
    }
}

fn assert_shows(view: &CursorView, s: &CursorShape) {
    let img = view.shape.as_ref().expect("the client has a shape");
    assert_eq!(
        (img.width, img.height, img.hot_x, img.hot_y),
        (s.width, s.height, s.hot_x, s.hot_y)
    );
    assert!(img.bgra == s.pixels, "the client's cursor pixels differ");
}

/// A client (main, display, inputs) plus its cursor channel, INIT applied.
async fn client_with_cursor(addr: SocketAddr) -> (TestClient, Channel, CursorView) {
    let client = TestClient::connect(addr, "").await.unwrap();
    let mut ch = Channel::link(
        addr,
        ChannelType::Cursor,
        client.session_id,
        "",
        Caps::default(),
    )
    .await
    .unwrap();
    let mut view = CursorView::default();
    view.pump_until(&mut ch, T, |v| v.init_done).await.unwrap();
    (client, ch, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shape_move_hide_reach_the_client_in_client_mouse_mode() {
    let a = shape(64, 1);
    let (tx, rx) = watch::channel(state(&a, 10, 20, true));
    let h = start(Some(rx)).await;
    let (_client, mut ch, mut view) = client_with_cursor(h.addr).await;
    assert_eq!(view.events, vec![CursorEvent::Init { visible: true }]);
    assert_shows(&view, &a);
    assert!(view.visible);
    assert_eq!(view.position, Some((10, 20)));

    // A new shape: SET with its pixels.
    let b = shape(24, 2);
    tx.send_replace(state(&b, 10, 20, true));
    view.pump_until(&mut ch, T, |v| v.events.len() == 2)
        .await
        .unwrap();
    assert!(matches!(
        view.events[1],
        CursorEvent::Set {
            from_cache: false,
            ..
        }
    ));
    assert_shows(&view, &b);

    // Only the position changes: in client mode the client draws its own pointer, nothing is
    // sent. Then the guest hides it: HIDE.
    tx.send_replace(state(&b, 30, 40, true));
    tokio::time::sleep(Duration::from_millis(50)).await; // longer than the send interval
    tx.send_replace(state(&b, 30, 40, false));
    view.pump_until(&mut ch, T, |v| !v.visible).await.unwrap();
    assert_eq!(view.events[2..], [CursorEvent::Hide]);

    // Shown again somewhere else: MOVE (which is what makes spice-gtk show it again).
    tx.send_replace(state(&b, 50, 60, true));
    view.pump_until(&mut ch, T, |v| v.visible).await.unwrap();
    assert_eq!(view.events[3..], [CursorEvent::Move(50, 60)]);

    // The first shape again: from the client's cache, no pixels resent.
    tx.send_replace(state(&a, 50, 60, true));
    view.pump_until(&mut ch, T, |v| v.events.len() == 5)
        .await
        .unwrap();
    assert!(matches!(
        view.events[4],
        CursorEvent::Set {
            from_cache: true,
            ..
        }
    ));
    assert_shows(&view, &a);

    // The source goes away: the channel stays up with the last shape.
    drop(tx);
    let r = ch.recv(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(ClientError::Timeout(_))), "{r:?}");
    assert_shows(&view, &a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mouse_mode_gets_positions_coalesced() {
    let a = shape(32, 3);
    let (tx, rx) = watch::channel(state(&a, 0, 0, true));
    let h = start(Some(rx)).await;
    let (mut client, mut ch, mut view) = client_with_cursor(h.addr).await;

    client
        .main
        .send(&ClientMsg::MainMouseModeRequest(MOUSE_MODE_SERVER))
        .await
        .unwrap();
    client
        .main
        .recv_until(
            T,
            |m| matches!(m, ServerMsg::MouseMode { current, .. } if *current == MOUSE_MODE_SERVER),
        )
        .await
        .unwrap();
    // Switching to server mode places the pointer.
    view.pump_until(&mut ch, T, |v| v.events.contains(&CursorEvent::Move(0, 0)))
        .await
        .unwrap();

    // 200 positions in a burst: the client gets the last one, and far fewer messages.
    for i in 1..=200 {
        tx.send_replace(state(&a, i, 2 * i, true));
    }
    view.pump_until(&mut ch, T, |v| v.position == Some((200, 400)))
        .await
        .unwrap();
    let moves = view
        .events
        .iter()
        .filter(|e| matches!(e, CursorEvent::Move(..)))
        .count();
    assert!(moves <= 20, "{moves} MOVEs for one burst");
    // Out-of-range positions are clamped to the wire's i16.
    tx.send_replace(state(&a, 1 << 20, -(1 << 20), true));
    view.pump_until(&mut ch, T, |v| v.position == Some((i16::MAX, i16::MIN)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_feed_or_a_shape_the_client_gets_the_default_arrow() {
    let arrow = CursorShape::arrow();
    let h = start(None).await;
    let (_c, _ch, view) = client_with_cursor(h.addr).await;
    assert_shows(&view, &arrow);
    assert!(view.visible);

    // A feed whose source has no shape yet; a shape that breaks the rules also gives the arrow.
    let (tx, rx) = watch::channel(CursorState::default());
    let h = start(Some(rx)).await;
    let (_c, mut ch, mut view) = client_with_cursor(h.addr).await;
    assert_shows(&view, &arrow);
    let mut bad = (*shape(16, 4)).clone();
    bad.width = 300;
    tx.send_replace(CursorState {
        shape: Some(Arc::new(bad)),
        ..CursorState::default()
    });
    let good = shape(16, 5);
    tx.send_replace(state(&good, 0, 0, true));
    view.pump_until(&mut ch, T, |v| v.events.len() == 2)
        .await
        .unwrap();
    assert_shows(&view, &good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_cursor_channel_still_gets_frames() {
    let (tx, rx) = watch::channel(CursorState::default());
    let h = start(Some(rx)).await;
    let mut client = TestClient::connect(h.addr, "").await.unwrap();
    // Linked, never read: its socket fills with 256 KiB shapes.
    let _stuck = Channel::link(
        h.addr,
        ChannelType::Cursor,
        client.session_id,
        "",
        Caps::default(),
    )
    .await
    .unwrap();
    let feeder = tokio::spawn(async move {
        for seed in 0..60 {
            tx.send_replace(state(&shape(256, seed), 0, 0, true));
            tokio::time::sleep(Duration::from_millis(12)).await;
        }
        tx
    });
    for seq in 1..=10u64 {
        let mut f = Frame::new(64, 48);
        f.seq = seq;
        f.data.fill(seq as u8);
        h.bus.publish(Arc::new(f), &Damage::full(64, 48));
        client
            .pump_until(T, |s| {
                s.width == 64 && s.pixel(5, 5) == u32::from_le_bytes([seq as u8; 4]) & 0xFF_FFFF
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let _tx = feeder.await.unwrap();
}
