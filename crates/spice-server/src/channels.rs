//! The message loops of the main, display, inputs and cursor channels.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use scanoutd_types::{InputEvent, MouseButton};
use spice_proto::{
    ChannelType, ClientMsg, Cursor, CursorHeader, MainInit, MotionAck, ScancodeDecoder, ServerMsg,
};

use crate::conn::Conn;
use crate::link::Linked;
use crate::{ServerError, Session, SpiceServer, MOUSE_MODE_CLIENT, MOUSE_MODE_SERVER};

/// Unsent bytes the kernel may hold for a display socket.
const DISPLAY_NOTSENT_LOWAT: u32 = 16 * 1024;

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
    if channel == ChannelType::Display {
        // Keep at most this much unsent data in the kernel: a full link then shows up as a
        // slow write (which rate control measures) instead of frames aging in a buffer.
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(DISPLAY_NOTSENT_LOWAT)
        {
            tracing::debug!(%peer, "TCP_NOTSENT_LOWAT: {e}");
        }
    }
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
        ChannelType::Display => crate::display::run(server, &session, &mut conn, &mess).await,
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
pub(crate) fn common(conn: &Conn, msg: ClientMsg) -> Option<ClientMsg> {
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
        multi_media_time: server
            .mm_time()
            .wrapping_sub(session.mm_margin_ms.load(Relaxed)),
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
            _ = session.mm_changed.notified() => {
                // Read the clock just before writing, as for INIT.
                let margin = session.mm_margin_ms.load(Relaxed);
                conn.send(&ServerMsg::MultiMediaTime(server.mm_time().wrapping_sub(margin))).await?;
                tracing::debug!(peer = %conn.peer, "multimedia-time margin now {margin} ms");
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
