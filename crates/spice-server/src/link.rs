//! The link stage of one connection: link message, reply with a fresh RSA key, ticket, result.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rand::Rng;
use spice_proto::{link_result, Caps, ChannelType, LinkAcceptor, LinkError, LinkEvent, LinkMess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{ticket_matches, TICKET_LEN};
use crate::rate::MmTuner;
use crate::{ServerError, Session, SpiceServer, MOUSE_MODE_CLIENT};

/// A channel that completed its link stage.
pub(crate) struct Linked {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub channel: ChannelType,
    pub mess: LinkMess,
    pub session: Arc<Session>,
    /// Bytes the client sent after its ticket, already read.
    pub leftover: BytesMut,
    /// Whether this link created the session (the main channel).
    pub owns_session: bool,
}

pub(crate) fn common_caps() -> Caps {
    let mut c = Caps::default();
    c.set(spice_proto::consts::COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    c.set(spice_proto::consts::COMMON_CAP_AUTH_SPICE);
    c.set(spice_proto::consts::COMMON_CAP_MINI_HEADER);
    c
}

pub(crate) fn channel_caps(ch: ChannelType) -> Caps {
    let mut c = Caps::default();
    match ch {
        ChannelType::Display => {
            c.set(spice_proto::consts::DISPLAY_CAP_MONITORS_CONFIG);
            c.set(spice_proto::consts::DISPLAY_CAP_PREF_COMPRESSION);
            c.set(spice_proto::consts::DISPLAY_CAP_STREAM_REPORT);
            c.set(spice_proto::consts::DISPLAY_CAP_PREF_VIDEO_CODEC_TYPE);
        }
        ChannelType::Inputs => c.set(spice_proto::consts::INPUTS_CAP_KEY_SCANCODE),
        _ => {}
    }
    c
}

async fn read_some(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    what: &str,
) -> Result<(), ServerError> {
    if buf.len() > 64 * 1024 {
        return Err(ServerError::Link {
            code: LinkError::InvalidData,
            reason: format!("{what}: too much data"),
        });
    }
    let n = stream.read_buf(buf).await?;
    if n == 0 {
        return Err(ServerError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("client closed the connection before sending its {what}"),
        )));
    }
    Ok(())
}

async fn refuse(stream: &mut TcpStream, code: LinkError, reason: String) -> ServerError {
    let _ = stream.write_all(&LinkAcceptor::error_reply(code)).await;
    ServerError::Link { code, reason }
}

/// Run the link stage on a fresh connection.
pub(crate) async fn accept(
    server: &Arc<SpiceServer>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<Linked, ServerError> {
    let mut acc = LinkAcceptor::new();
    let mut buf = BytesMut::with_capacity(512);

    // 1. Link header + message.
    let mess = loop {
        match acc.feed(&buf) {
            Ok((n, Some(LinkEvent::Link(m)))) => {
                buf.advance(n);
                break m;
            }
            Ok((n, Some(LinkEvent::Ticket { .. }))) => {
                buf.advance(n);
                return Err(refuse(
                    &mut stream,
                    LinkError::InvalidData,
                    "ticket before link".into(),
                )
                .await);
            }
            Ok((n, None)) => {
                buf.advance(n);
                read_some(&mut stream, &mut buf, "link message").await?;
            }
            Err(f) => {
                return Err(refuse(&mut stream, f.code, f.error.to_string()).await);
            }
        }
    };

    let Some(channel) = ChannelType::from_u8(mess.channel_type) else {
        return Err(refuse(
            &mut stream,
            LinkError::ChannelNotAvailable,
            format!("unknown channel type {}", mess.channel_type),
        )
        .await);
    };
    if !mess
        .common_caps
        .has(spice_proto::consts::COMMON_CAP_MINI_HEADER)
    {
        return Err(refuse(
            &mut stream,
            LinkError::InvalidData,
            "client does not support the mini data header".into(),
        )
        .await);
    }

    // 2. Which session does this channel belong to?
    let (session, owns_session) = match channel {
        ChannelType::Main => {
            let n = server
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            if n >= server.cfg.max_clients {
                return Err(refuse(
                    &mut stream,
                    LinkError::Error,
                    format!("{n} clients already connected (--max-clients)"),
                )
                .await);
            }
            (None, true)
        }
        ChannelType::Display | ChannelType::Inputs | ChannelType::Cursor => {
            // One display and one cursor channel per display; one inputs channel.
            let count = match channel {
                ChannelType::Inputs => 1,
                _ => server.displays.len(),
            };
            if usize::from(mess.channel_id) >= count {
                return Err(refuse(
                    &mut stream,
                    LinkError::ChannelNotAvailable,
                    format!("{channel:?} channel {} does not exist", mess.channel_id),
                )
                .await);
            }
            match server.session(mess.connection_id) {
                Some(s) => (Some(s), false),
                None => {
                    return Err(refuse(
                        &mut stream,
                        LinkError::BadConnectionId,
                        format!("no session {:#x}", mess.connection_id),
                    )
                    .await)
                }
            }
        }
        other => {
            return Err(refuse(
                &mut stream,
                LinkError::ChannelNotAvailable,
                format!("{other:?} channel is not served"),
            )
            .await)
        }
    };

    // 3. Reply with a fresh key, read and check the ticket.
    let key = server.keys.take().await?;
    let reply = acc.reply(key.public_der(), &common_caps(), &channel_caps(channel));
    stream.write_all(&reply).await?;

    let ticket = loop {
        match acc.feed(&buf) {
            Ok((n, Some(LinkEvent::Ticket { ticket, .. }))) => {
                buf.advance(n);
                break ticket;
            }
            Ok((n, Some(LinkEvent::Link(_)))) => {
                buf.advance(n);
                return Err(refuse(
                    &mut stream,
                    LinkError::InvalidData,
                    "second link message".into(),
                )
                .await);
            }
            Ok((n, None)) => {
                buf.advance(n);
                if let Err(e) = read_some(&mut stream, &mut buf, "ticket").await {
                    // spice-gtk silently drops the link when it cannot parse our public key;
                    // say so, since the client's user only sees a generic error.
                    return Err(ServerError::Auth(format!(
                        "{e} (a client that rejects the server's public key closes here)"
                    )));
                }
            }
            Err(f) => {
                stream.write_all(&link_result(f.code)).await.ok();
                return Err(ServerError::Link {
                    code: f.code,
                    reason: f.error.to_string(),
                });
            }
        }
    };
    let ticket: &[u8; TICKET_LEN] = &ticket;
    // One RSA-1024 private-key operation: well under a millisecond, fine inline.
    let plain = key.decrypt(ticket);
    if !ticket_matches(&server.cfg.ticketing, plain.as_deref()) {
        server.metrics.auth_failure();
        stream
            .write_all(&link_result(LinkError::PermissionDenied))
            .await
            .ok();
        return Err(ServerError::Auth(format!(
            "{channel:?} channel: wrong password from {peer}"
        )));
    }
    stream.write_all(&link_result(LinkError::Ok)).await?;

    let session = match session {
        Some(s) => s,
        None => new_session(server),
    };
    Ok(Linked {
        stream,
        peer,
        channel,
        mess,
        session,
        leftover: buf,
        owns_session,
    })
}

fn new_session(server: &Arc<SpiceServer>) -> Arc<Session> {
    let mut sessions = server.sessions.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::thread_rng();
    let id = loop {
        let id: u32 = rng.gen();
        if id != 0 && !sessions.contains_key(&id) {
            break id;
        }
    };
    let session = Arc::new(Session {
        id,
        cancel: server.shutdown.child_token(),
        stats: server
            .metrics
            .client_connected_displays(id, server.displays.len()),
        mouse_mode: AtomicU16::new(MOUSE_MODE_CLIENT),
        mm_margin_ms: AtomicU32::new(server.cfg.mm_time_margin_ms),
        mm_changed: tokio::sync::Notify::new(),
        mm: std::sync::Mutex::new(MmTuner::with_max(
            server.cfg.mm_time_margin_ms,
            server.cfg.mm_time_max_ms,
        )),
        mouse_mode_changed: tokio::sync::Notify::new(),
    });
    for s in &session.stats {
        s.mm_margin_ms.store(
            u64::from(server.cfg.mm_time_margin_ms),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    sessions.insert(id, Arc::clone(&session));
    session
}
