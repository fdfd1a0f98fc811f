//! The message loops of the main, display, inputs and cursor channels.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use scanoutd_ring::Update;
use scanoutd_types::{Frame, InputEvent, MouseButton, Rect};
use spice_proto::{
    ChannelType, ClientMsg, Clip, Cursor, CursorHeader, DrawCopy, Head, Image, MainInit, MotionAck,
    ScancodeDecoder, ServerMsg, SpiceRect,
};

use crate::conn::Conn;
use crate::link::Linked;
use crate::{Compression, ServerError, Session, SpiceServer, MOUSE_MODE_CLIENT, MOUSE_MODE_SERVER};

use spice_proto::consts::{ROPD_OP_PUT, SURFACE_FLAG_PRIMARY, SURFACE_FMT_32_XRGB};

/// SpiceImageCompression OFF, as sent in PREFERRED_COMPRESSION.
const IMAGE_COMPRESSION_OFF: u8 = 1;

static IMAGE_IDS: AtomicU64 = AtomicU64::new(1);

/// Run a linked channel until it ends; tidy up the session when the main channel goes.
pub(crate) async fn run(server: &Arc<SpiceServer>, linked: Linked) {
    let Linked {
        stream,
        peer,
        channel,
        mess,
        session,
        leftover,
        owns_session,
    } = linked;
    let mut conn = Conn::new(
        stream,
        channel,
        peer,
        leftover,
        Arc::clone(&server.metrics),
        server.cfg.stall_timeout,
        server.cfg.max_client_message,
    );
    let sid = session.id;
    tracing::info!(%peer, session = format_args!("{sid:#010x}"), "{channel:?} channel connected");
    let result = match channel {
        ChannelType::Main => main_channel(server, &session, &mut conn).await,
        ChannelType::Display => display_channel(server, &session, &mut conn, &mess).await,
        ChannelType::Inputs => inputs_channel(server, &session, &mut conn).await,
        ChannelType::Cursor => cursor_channel(&session, &mut conn).await,
        _ => Ok(()),
    };
    match result {
        Ok(()) => {
            tracing::info!(%peer, session = format_args!("{sid:#010x}"), "{channel:?} channel closed")
        }
        Err(ServerError::Protocol(e)) => {
            server.metrics.protocol_error();
            tracing::warn!(%peer, session = format_args!("{sid:#010x}"), "{channel:?} channel: malformed message from the client, disconnecting it: {e}");
        }
        Err(e) => {
            tracing::warn!(%peer, session = format_args!("{sid:#010x}"), "{channel:?} channel: {e}; disconnecting")
        }
    }
    if owns_session {
        // The main channel ends the session: close its other channels and forget it.
        session.cancel.cancel();
        server
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sid);
        server.metrics.client_gone(sid);
        tracing::info!(%peer, session = format_args!("{sid:#010x}"), "client disconnected");
    }
}

/// Handle the messages every channel may receive. Returns the message back when it is
/// channel-specific.
fn common(conn: &Conn, msg: ClientMsg) -> Option<ClientMsg> {
    match msg {
        ClientMsg::AckSync { .. } | ClientMsg::Ack | ClientMsg::Pong { .. } => None,
        ClientMsg::Disconnecting { reason, .. } => {
            tracing::debug!(peer = %conn.peer, "{:?}: client is disconnecting (reason {reason})", conn.channel);
            None
        }
        ClientMsg::Unknown { ty, len } => {
            tracing::debug!(peer = %conn.peer, "{:?}: ignoring unknown message type {ty} ({len} bytes)", conn.channel);
            None
        }
        other => Some(other),
    }
}

async fn main_channel(
    server: &Arc<SpiceServer>,
    session: &Session,
    conn: &mut Conn,
) -> Result<(), ServerError> {
    let init = MainInit {
        session_id: session.id,
        display_channels_hint: 1,
        supported_mouse_modes: (MOUSE_MODE_SERVER | MOUSE_MODE_CLIENT) as u32,
        current_mouse_mode: session.mouse_mode.load(Relaxed) as u32,
        agent_connected: 0,
        agent_tokens: 10,
        // Read the clock just before writing (the client sets its clock when it processes
        // this message).
        multi_media_time: server.mm_time().wrapping_sub(server.cfg.mm_time_margin_ms),
        ram_hint: 64 * 1024 * 1024,
    };
    conn.send(&ServerMsg::MainInit(init)).await?;
    loop {
        while let Some(msg) = conn.next_message()? {
            let Some(msg) = common(conn, msg) else {
                continue;
            };
            match msg {
                ClientMsg::MainAttachChannels => {
                    let list = vec![
                        (ChannelType::Display as u8, 0),
                        (ChannelType::Inputs as u8, 0),
                        (ChannelType::Cursor as u8, 0),
                    ];
                    conn.send(&ServerMsg::ChannelsList(list)).await?;
                }
                ClientMsg::MainMouseModeRequest(mode) => {
                    if mode == MOUSE_MODE_SERVER || mode == MOUSE_MODE_CLIENT {
                        session.mouse_mode.store(mode, Relaxed);
                    } else {
                        tracing::debug!(peer = %conn.peer, "ignoring mouse mode request {mode}");
                    }
                    conn.send(&ServerMsg::MouseMode {
                        supported: MOUSE_MODE_SERVER | MOUSE_MODE_CLIENT,
                        current: session.mouse_mode.load(Relaxed),
                    })
                    .await?;
                }
                other => tracing::trace!(peer = %conn.peer, "main: ignoring {other:?}"),
            }
        }
        tokio::select! {
            _ = session.cancel.cancelled() => return Ok(()),
            r = conn.read_more() => if !r? { return Ok(()) },
        }
    }
}

/// A DRAW_COPY of `rect` of `frame` onto the primary surface.
fn draw_copy(frame: &Frame, rect: Rect, lz4: bool) -> Option<ServerMsg> {
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

fn spice_rect(r: Rect) -> SpiceRect {
    SpiceRect {
        top: r.y as i32,
        left: r.x as i32,
        bottom: r.bottom() as i32,
        right: r.right() as i32,
    }
}

struct DisplayState {
    surface: Option<(u32, u32)>,
    lz4: bool,
}

impl DisplayState {
    /// Queue the messages for one update from the frame bus.
    fn queue_update(&mut self, conn: &mut Conn, u: &Update) {
        let (w, h) = (u.frame.width, u.frame.height);
        if u.resized || self.surface != Some((w, h)) {
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
            if let Some(m) = draw_copy(&u.frame, u.frame.bounds(), self.lz4) {
                conn.queue(&m);
            }
            // The widget shows nothing until a MONITORS_CONFIG (we advertise the cap) and a
            // MARK arrive after the primary surface.
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
            return;
        }
        for r in u.damage.rects() {
            if let Some(m) = draw_copy(&u.frame, *r, self.lz4) {
                conn.queue(&m);
            }
        }
    }
}

async fn display_channel(
    server: &Arc<SpiceServer>,
    session: &Session,
    conn: &mut Conn,
    mess: &spice_proto::LinkMess,
) -> Result<(), ServerError> {
    let client_lz4 = mess
        .channel_caps
        .has(spice_proto::consts::DISPLAY_CAP_LZ4_COMPRESSION);
    let mut st = DisplayState {
        surface: None,
        lz4: client_lz4 && server.cfg.compression == Compression::Auto,
    };
    let sub = server.bus.subscribe();
    let stats = Arc::clone(&session.stats);
    loop {
        while let Some(msg) = conn.next_message()? {
            let Some(msg) = common(conn, msg) else {
                continue;
            };
            match msg {
                ClientMsg::DisplayInit { .. } => {}
                ClientMsg::PreferredCompression(c) => {
                    st.lz4 = client_lz4
                        && server.cfg.compression == Compression::Auto
                        && c != IMAGE_COMPRESSION_OFF;
                    tracing::debug!(peer = %conn.peer, "client prefers compression {c}; lz4 = {}", st.lz4);
                }
                other => tracing::trace!(peer = %conn.peer, "display: ignoring {other:?}"),
            }
        }
        tokio::select! {
            _ = session.cancel.cancelled() => return Ok(()),
            r = conn.read_more() => if !r? { return Ok(()) },
            u = sub.next() => {
                let Some(u) = u else {
                    tracing::info!(peer = %conn.peer, "the display source ended");
                    return Ok(());
                };
                st.queue_update(conn, &u);
                let sent = conn.flush().await?;
                stats.updates_sent.fetch_add(1, Relaxed);
                stats.coalesced_updates.fetch_add(u.coalesced, Relaxed);
                stats.bytes_sent.fetch_add(sent as u64, Relaxed);
            }
        }
    }
}

async fn inputs_channel(
    server: &Arc<SpiceServer>,
    session: &Session,
    conn: &mut Conn,
) -> Result<(), ServerError> {
    conn.send(&ServerMsg::InputsInit(0)).await?;
    let mut keys = ScancodeDecoder::new();
    let mut motion = MotionAck::default();
    let sink = &server.input;
    loop {
        while let Some(msg) = conn.next_message()? {
            let Some(msg) = common(conn, msg) else {
                continue;
            };
            let mut key_bytes = |bytes: &mut dyn Iterator<Item = u8>| {
                for b in bytes {
                    if let Some((scancode, pressed)) = keys.feed(b) {
                        sink.input(InputEvent::Key { scancode, pressed });
                    }
                }
            };
            match msg {
                ClientMsg::KeyDown(code) | ClientMsg::KeyUp(code) => {
                    key_bytes(&mut spice_proto::scancode_bytes(code));
                }
                ClientMsg::KeyScancode(bytes) => key_bytes(&mut bytes.into_iter()),
                ClientMsg::KeyModifiers(m) => sink.input(InputEvent::KeyModifiers(m)),
                ClientMsg::MousePosition {
                    x, y, display_id, ..
                } => {
                    sink.input(InputEvent::MouseMove {
                        x,
                        y,
                        display: display_id,
                    });
                    if motion.on_motion() {
                        conn.queue(&ServerMsg::MouseMotionAck);
                    }
                }
                ClientMsg::MouseMotion { dx, dy, .. } => {
                    sink.input(InputEvent::MouseMotion { dx, dy });
                    if motion.on_motion() {
                        conn.queue(&ServerMsg::MouseMotionAck);
                    }
                }
                ClientMsg::MousePress { button, .. } | ClientMsg::MouseRelease { button, .. } => {
                    let pressed = matches!(msg, ClientMsg::MousePress { .. });
                    match MouseButton::from_spice(button) {
                        Some(button) => sink.input(InputEvent::Button { button, pressed }),
                        None => {
                            tracing::debug!(peer = %conn.peer, "ignoring mouse button {button}")
                        }
                    }
                }
                other => tracing::trace!(peer = %conn.peer, "inputs: ignoring {other:?}"),
            }
        }
        conn.flush().await?;
        tokio::select! {
            _ = session.cancel.cancelled() => return Ok(()),
            r = conn.read_more() => if !r? { return Ok(()) },
        }
    }
}

/// A plain 32x32 arrow pointer (white with a black outline), ALPHA format.
fn default_cursor() -> Cursor {
    const N: usize = 32;
    let mut px = vec![0u8; N * N * 4];
    let inside =
        |x: i32, y: i32| (0..=18).contains(&y) && x >= 0 && x <= y * 2 / 3 && !(y == 18 && x > 0);
    for y in 0..N as i32 {
        for x in 0..N as i32 {
            let o = (y as usize * N + x as usize) * 4;
            if inside(x, y) {
                let edge = !inside(x - 1, y)
                    || !inside(x + 1, y)
                    || !inside(x, y - 1)
                    || !inside(x, y + 1);
                let c = if edge { 0x00 } else { 0xff };
                px[o..o + 4].copy_from_slice(&[c, c, c, 0xff]);
            }
        }
    }
    Cursor {
        flags: 0,
        header: Some(CursorHeader {
            unique: 1,
            ty: 0, // ALPHA
            width: N as u16,
            height: N as u16,
            hot_x: 0,
            hot_y: 0,
        }),
        data: px,
    }
}

async fn cursor_channel(session: &Session, conn: &mut Conn) -> Result<(), ServerError> {
    conn.send(&ServerMsg::CursorInit {
        position: (0, 0),
        trail_length: 0,
        trail_frequency: 0,
        visible: true,
        cursor: default_cursor(),
    })
    .await?;
    loop {
        while let Some(msg) = conn.next_message()? {
            if let Some(other) = common(conn, msg) {
                tracing::trace!(peer = %conn.peer, "cursor: ignoring {other:?}");
            }
        }
        tokio::select! {
            _ = session.cancel.cancelled() => return Ok(()),
            r = conn.read_more() => if !r? { return Ok(()) },
        }
    }
}
