//! The message loops of the main, display, inputs and cursor channels.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use std::time::{Duration, Instant};

use scanoutd_types::{CursorState, InputEvent, MouseButton};
use spice_proto::{ChannelType, ClientMsg, MainInit, MotionAck, ScancodeDecoder, ServerMsg};
use tokio::sync::watch;

use crate::conn::Conn;
use crate::cursor::CursorTracker;
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
    let cid = mess.channel_id;
    tracing::info!(%peer, session = format_args!("{sid:#010x}"), "{channel:?} channel {cid} connected");
    let result = match channel {
        ChannelType::Main => main_channel(server, &session, &mut conn).await,
        ChannelType::Display => crate::display::run(server, &session, &mut conn, &mess).await,
        ChannelType::Inputs => inputs_channel(server, &session, &mut conn).await,
        ChannelType::Cursor => {
            cursor_channel(server, &session, &mut conn, usize::from(mess.channel_id)).await
        }
        _ => Ok(()),
    };
    match result {
        Ok(()) => {
            tracing::info!(%peer, session = format_args!("{sid:#010x}"), "{channel:?} channel {cid} closed")
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
    let displays = server.displays.len();
    let init = MainInit {
        session_id: session.id,
        display_channels_hint: displays as u32,
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
                    // Display channels 0..N, the inputs channel, cursor channels 0..N (the
                    // client's widget for display N opens the cursor channel with the same
                    // id). At most MAX_DISPLAYS, so every id fits in a u8.
                    let ids = 0..displays.min(crate::MAX_DISPLAYS) as u8;
                    let list = ids
                        .clone()
                        .map(|i| (ChannelType::Display as u8, i))
                        .chain(std::iter::once((ChannelType::Inputs as u8, 0)))
                        .chain(ids.map(|i| (ChannelType::Cursor as u8, i)))
                        .collect();
                    conn.send(&ServerMsg::ChannelsList(list)).await?;
                }
                ClientMsg::MainMouseModeRequest(mode) => {
                    if mode == MOUSE_MODE_SERVER || mode == MOUSE_MODE_CLIENT {
                        if session.mouse_mode.swap(mode, Relaxed) != mode {
                            session.mouse_mode_changed.notify_one();
                        }
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

/// At most one batch of cursor messages per this interval reaches a client; states that
/// arrive in between are coalesced (the newest wins).
const CURSOR_MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Wait for the next cursor state; never resolves without a feed.
async fn cursor_changed(
    feed: &mut Option<watch::Receiver<CursorState>>,
) -> Result<(), watch::error::RecvError> {
    match feed {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// The cursor channel of `display` (its channel id): INIT with that display's current pointer
/// (or the default arrow), then SET / MOVE / HIDE as its [`CursorState`] changes (see
/// `cursor.rs`). The feed is a watch, so nothing queues per client; a client that stops
/// reading stalls only this task.
async fn cursor_channel(
    server: &Arc<SpiceServer>,
    session: &Session,
    conn: &mut Conn,
    display: usize,
) -> Result<(), ServerError> {
    let mut feed = server.displays.get(display).and_then(|d| d.cursor.clone());
    let latest = |feed: &mut Option<watch::Receiver<CursorState>>| {
        feed.as_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default()
    };
    let mut state = latest(&mut feed);
    let (mut tracker, first) = CursorTracker::start(&state, session.mouse_mode.load(Relaxed));
    for m in &first {
        conn.queue(m);
    }
    conn.flush().await?;
    let mut last_sent = Instant::now();
    loop {
        while let Some(msg) = conn.next_message()? {
            if let Some(other) = common(conn, msg) {
                tracing::trace!(peer = %conn.peer, "cursor: ignoring {other:?}");
            }
        }
        tokio::select! {
            _ = session.cancel.cancelled() => return Ok(()),
            r = conn.read_more() => if !r? { return Ok(()) },
            changed = cursor_changed(&mut feed) => match changed {
                Ok(()) => {
                    let wait = CURSOR_MIN_INTERVAL.saturating_sub(last_sent.elapsed());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    state = latest(&mut feed);
                }
                Err(_) => {
                    // The source is gone for good: the client keeps what it has.
                    tracing::debug!(peer = %conn.peer, "cursor feed closed");
                    feed = None;
                }
            },
            _ = session.mouse_mode_changed.notified() => {}
        }
        let msgs = tracker.update(&state, session.mouse_mode.load(Relaxed));
        if !msgs.is_empty() {
            for m in &msgs {
                conn.queue(m);
            }
            conn.flush().await?;
            last_sent = Instant::now();
        }
    }
}
