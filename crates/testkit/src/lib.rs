//! A small SPICE client for tests. It speaks the link stage (with a real RSA-OAEP ticket),
//! decodes every server message with `spice-proto`, and keeps a local copy of the primary
//! surface by applying DRAW_COPY updates, so a test can compare pixels with the source.
//!
//! Every wait is bounded by a timeout: a test never hangs on a silent server.
#![forbid(unsafe_code)]

pub mod prometheus;
pub mod require;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, RsaPublicKey};
use spice_proto::{
    decode_frame, decode_image_bgrx, decode_link_reply, decode_link_result, Caps, ChannelType,
    ClientMsg, LinkError, LinkMess, ServerMsg,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] spice_proto::Error),
    #[error("the server refused the link: {0:?}")]
    Refused(Option<LinkError>),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("bad public key: {0}")]
    Key(String),
}

/// One linked channel.
pub struct Channel {
    pub stream: TcpStream,
    pub kind: ChannelType,
    rbuf: BytesMut,
    /// The server's capabilities from its link reply.
    pub server_common_caps: Caps,
    pub server_channel_caps: Caps,
    /// Answer PINGs with PONGs as they are read (true, as spice-gtk; false: a client that
    /// never answers).
    pub answer_pings: bool,
}

/// The display capabilities spice-gtk 0.42 sends (0x6FBF) minus GL_SCANOUT.
pub fn default_display_caps() -> Caps {
    let mut c = Caps::default();
    for bit in [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 13, 14] {
        c.set(bit);
    }
    c
}

/// Common caps spice-gtk sends: AUTH_SELECTION and MINI_HEADER (no SASL).
pub fn default_common_caps() -> Caps {
    let mut c = Caps::default();
    c.set(spice_proto::consts::COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    c.set(spice_proto::consts::COMMON_CAP_MINI_HEADER);
    c
}

impl Channel {
    /// Connect and link one channel (id 0). `password` is sent as the ticket ("" for none).
    pub async fn link(
        addr: SocketAddr,
        kind: ChannelType,
        connection_id: u32,
        password: &str,
        channel_caps: Caps,
    ) -> Result<Channel, ClientError> {
        Self::link_id(addr, kind, 0, connection_id, password, channel_caps).await
    }

    /// Connect and link channel `channel_id` of type `kind`.
    pub async fn link_id(
        addr: SocketAddr,
        kind: ChannelType,
        channel_id: u8,
        connection_id: u32,
        password: &str,
        channel_caps: Caps,
    ) -> Result<Channel, ClientError> {
        let mut stream = timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connect".into()))??;
        stream.set_nodelay(true)?;
        let mess = LinkMess {
            connection_id,
            channel_type: kind as u8,
            channel_id,
            common_caps: default_common_caps(),
            channel_caps,
        };
        stream.write_all(&mess.encode_with_header()).await?;
        let mut rbuf = BytesMut::new();
        let reply = loop {
            if let Some((n, reply)) = decode_link_reply(&rbuf)? {
                rbuf.advance(n);
                break reply;
            }
            read_some(&mut stream, &mut rbuf, "link reply").await?;
        };
        if reply.error != 0 {
            return Err(ClientError::Refused(LinkError::from_u32(reply.error)));
        }
        let key = RsaPublicKey::from_public_key_der(&reply.pub_key)
            .map_err(|e| ClientError::Key(e.to_string()))?;
        let mut plain = password.as_bytes().to_vec();
        plain.push(0);
        let ct = key
            .encrypt(&mut rand::thread_rng(), Oaep::new::<sha1::Sha1>(), &plain)
            .map_err(|e| ClientError::Key(e.to_string()))?;
        let ticket: [u8; 128] = ct
            .try_into()
            .map_err(|_| ClientError::Key("ticket is not 128 bytes".into()))?;
        stream
            .write_all(&spice_proto::auth_bytes(&reply.common_caps, &ticket))
            .await?;
        let result = loop {
            if let Some(r) = decode_link_result(&rbuf) {
                rbuf.advance(4);
                break r;
            }
            read_some(&mut stream, &mut rbuf, "link result").await?;
        };
        if result != 0 {
            return Err(ClientError::Refused(LinkError::from_u32(result)));
        }
        Ok(Channel {
            stream,
            kind,
            rbuf,
            server_common_caps: reply.common_caps,
            server_channel_caps: reply.channel_caps,
            answer_pings: true,
        })
    }

    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next server message, waiting at most `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Result<ServerMsg, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((ty, start, total)) = decode_frame(&self.rbuf, 512 * 1024 * 1024)? {
                let msg = ServerMsg::decode(self.kind, ty, &self.rbuf[start..total]);
                self.rbuf.advance(total);
                let msg = msg?;
                // As spice-gtk does: a PING is answered when it is read, after everything
                // before it.
                if let (true, ServerMsg::Ping { id, timestamp, .. }) = (self.answer_pings, &msg) {
                    self.send(&ClientMsg::Pong {
                        id: *id,
                        timestamp: *timestamp,
                    })
                    .await?;
                }
                return Ok(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(ClientError::Timeout(format!("a {:?} message", self.kind))),
                Ok(Ok(0)) => return Err(ClientError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Receive until `pred` accepts a message; returns it.
    pub async fn recv_until(
        &mut self,
        wait: Duration,
        mut pred: impl FnMut(&ServerMsg) -> bool,
    ) -> Result<ServerMsg, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.recv(left).await?;
            if pred(&m) {
                return Ok(m);
            }
        }
    }
}

async fn read_some(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    what: &str,
) -> Result<(), ClientError> {
    match timeout(Duration::from_secs(10), stream.read_buf(buf)).await {
        Err(_) => Err(ClientError::Timeout(what.into())),
        Ok(Ok(0)) => Err(ClientError::Closed),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// The client's copy of the primary surface (BGRx, tight rows).
#[derive(Debug, Clone, Default)]
pub struct Surface {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
    /// A MONITORS_CONFIG and a MARK arrived after the surface was created (what the stock
    /// widget needs before it shows anything).
    pub monitors_config: bool,
    pub marked: bool,
    pub draws: u64,
}

impl Surface {
    /// Apply one display message. Errors on a draw the stock client would reject.
    pub fn apply(&mut self, msg: &ServerMsg) -> Result<(), ClientError> {
        match msg {
            ServerMsg::SurfaceCreate { width, height, .. } => {
                *self = Surface {
                    width: *width,
                    height: *height,
                    pixels: vec![0; *width as usize * *height as usize * 4],
                    ..Surface::default()
                };
            }
            ServerMsg::MonitorsConfig { .. } => self.monitors_config = true,
            ServerMsg::Mark => self.marked = true,
            ServerMsg::DrawCopy(dc) => {
                let img = decode_image_bgrx(&dc.image)?;
                let (iw, _ih) = (dc.image.width as usize, dc.image.height as usize);
                let b = &dc.bbox;
                if b.left < 0
                    || b.top < 0
                    || b.right as u32 > self.width
                    || b.bottom as u32 > self.height
                {
                    return Err(ClientError::Protocol(spice_proto::Error::InvalidData(
                        "draw outside the surface",
                    )));
                }
                let (x0, y0) = (b.left as usize, b.top as usize);
                let w = (b.right - b.left) as usize;
                let h = (b.bottom - b.top) as usize;
                let (sx, sy) = (dc.src_area.left as usize, dc.src_area.top as usize);
                for row in 0..h {
                    let src = ((sy + row) * iw + sx) * 4;
                    let dst = ((y0 + row) * self.width as usize + x0) * 4;
                    let (Some(s), Some(_)) =
                        (img.get(src..src + w * 4), self.pixels.get(dst..dst + w * 4))
                    else {
                        return Err(ClientError::Protocol(spice_proto::Error::InvalidData(
                            "image smaller than its draw",
                        )));
                    };
                    self.pixels[dst..dst + w * 4].copy_from_slice(s);
                }
                self.draws += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// RGB of pixel (x, y) as 0xRRGGBB.
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        let o = (y as usize * self.width as usize + x as usize) * 4;
        u32::from_le_bytes([self.pixels[o], self.pixels[o + 1], self.pixels[o + 2], 0])
    }
}

/// Apply display messages from `channel` to `surface` until `pred(surface)` holds; errors
/// after `wait`.
async fn pump_surface(
    channel: &mut Channel,
    surface: &mut Surface,
    wait: Duration,
    mut pred: impl FnMut(&Surface) -> bool,
) -> Result<(), ClientError> {
    let deadline = Instant::now() + wait;
    loop {
        if pred(surface) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout("the surface condition".into()));
        }
        let m = channel.recv(left).await?;
        surface.apply(&m)?;
    }
}

fn surface_ready(s: &Surface) -> bool {
    s.width > 0 && s.marked && s.monitors_config
}

/// One more display channel of a [`TestClient`] (a second monitor) and its surface.
pub struct DisplayView {
    pub id: u8,
    pub channel: Channel,
    pub surface: Surface,
}

impl DisplayView {
    /// Apply display messages until `pred(surface)` holds; errors after `wait`.
    pub async fn pump_until(
        &mut self,
        wait: Duration,
        pred: impl FnMut(&Surface) -> bool,
    ) -> Result<(), ClientError> {
        pump_surface(&mut self.channel, &mut self.surface, wait, pred).await
    }

    /// Wait for the primary surface to be created, drawn, configured and marked.
    pub async fn wait_ready(&mut self, wait: Duration) -> Result<(), ClientError> {
        self.pump_until(wait, surface_ready).await
    }
}

/// A whole client: main channel plus display (and optionally inputs) channels.
pub struct TestClient {
    pub session_id: u32,
    pub main: Channel,
    pub display: Channel,
    pub inputs: Option<Channel>,
    pub surface: Surface,
    /// The server's CHANNELS_LIST: (type, id) pairs.
    pub channels: Vec<(u8, u8)>,
    /// MAIN_INIT's display_channels_hint.
    pub display_channels_hint: u32,
    addr: SocketAddr,
    password: String,
}

impl TestClient {
    /// Link main, wait for INIT, attach, then link the display and inputs channels.
    pub async fn connect(addr: SocketAddr, password: &str) -> Result<TestClient, ClientError> {
        Self::connect_with_caps(addr, password, default_display_caps()).await
    }

    pub async fn connect_with_caps(
        addr: SocketAddr,
        password: &str,
        display_caps: Caps,
    ) -> Result<TestClient, ClientError> {
        let mut main = Channel::link(addr, ChannelType::Main, 0, password, Caps::default()).await?;
        let init = main
            .recv_until(Duration::from_secs(10), |m| {
                matches!(m, ServerMsg::MainInit(_))
            })
            .await?;
        let ServerMsg::MainInit(init) = init else {
            unreachable!()
        };
        main.send(&ClientMsg::MainAttachChannels).await?;
        let list = main
            .recv_until(Duration::from_secs(10), |m| {
                matches!(m, ServerMsg::ChannelsList(_))
            })
            .await?;
        let ServerMsg::ChannelsList(channels) = list else {
            unreachable!()
        };
        let display = Channel::link(
            addr,
            ChannelType::Display,
            init.session_id,
            password,
            display_caps,
        )
        .await?;
        let mut inputs = Channel::link(
            addr,
            ChannelType::Inputs,
            init.session_id,
            password,
            Caps::default(),
        )
        .await?;
        inputs
            .recv_until(Duration::from_secs(10), |m| {
                matches!(m, ServerMsg::InputsInit(_))
            })
            .await?;
        Ok(TestClient {
            session_id: init.session_id,
            main,
            display,
            inputs: Some(inputs),
            surface: Surface::default(),
            channels,
            display_channels_hint: init.display_channels_hint,
            addr,
            password: password.to_owned(),
        })
    }

    /// Link display channel `id` of this session (a further monitor), with the display caps
    /// spice-gtk sends.
    pub async fn open_display(&self, id: u8) -> Result<DisplayView, ClientError> {
        let channel = Channel::link_id(
            self.addr,
            ChannelType::Display,
            id,
            self.session_id,
            &self.password,
            default_display_caps(),
        )
        .await?;
        Ok(DisplayView {
            id,
            channel,
            surface: Surface::default(),
        })
    }

    /// Apply display messages until `pred(surface)` holds; errors after `wait`.
    pub async fn pump_until(
        &mut self,
        wait: Duration,
        pred: impl FnMut(&Surface) -> bool,
    ) -> Result<(), ClientError> {
        pump_surface(&mut self.display, &mut self.surface, wait, pred).await
    }

    /// Wait for the primary surface to be created, drawn, configured and marked.
    pub async fn wait_ready(&mut self, wait: Duration) -> Result<(), ClientError> {
        self.pump_until(wait, surface_ready).await
    }

    /// Send an input-channel message.
    pub async fn input(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        match &mut self.inputs {
            Some(ch) => ch.send(msg).await,
            None => Err(ClientError::Closed),
        }
    }
}

/// A cursor image as a cursor channel carries it (ALPHA: B, G, R, A bytes, top-down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorImage {
    pub width: u16,
    pub height: u16,
    pub hot_x: u16,
    pub hot_y: u16,
    pub bgra: Vec<u8>,
}

/// One cursor-channel message as the client understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorEvent {
    Init {
        visible: bool,
    },
    /// A SET (or the shape of INIT is not repeated here); `from_cache` when it named a cached
    /// shape.
    Set {
        unique: u64,
        from_cache: bool,
    },
    Move(i16, i16),
    Hide,
    Reset,
    InvalOne(u64),
    InvalAll,
}

/// What a stock client (spice-gtk 0.42 with its widget in client mouse mode) would show from
/// the cursor messages it received: the shape cache, the shape, visibility and position.
/// Messages spice-gtk would reject (SET before INIT, a FROM_CACHE id it does not have, a
/// second INIT, a non-ALPHA shape) are errors.
#[derive(Debug, Clone, Default)]
pub struct CursorView {
    pub init_done: bool,
    /// `None` after a NONE cursor.
    pub shape: Option<CursorImage>,
    pub visible: bool,
    /// The last MOVE (or INIT) position.
    pub position: Option<(i16, i16)>,
    pub events: Vec<CursorEvent>,
    pub cache: std::collections::HashMap<u64, CursorImage>,
}

impl CursorView {
    fn bad(what: &'static str) -> ClientError {
        ClientError::Protocol(spice_proto::Error::InvalidData(what))
    }

    fn take_shape(&mut self, c: &spice_proto::Cursor) -> Result<Option<CursorImage>, ClientError> {
        use spice_proto::consts::{
            CURSOR_FLAG_CACHE_ME, CURSOR_FLAG_FROM_CACHE, CURSOR_FLAG_NONE, CURSOR_TYPE_ALPHA,
        };
        if c.flags & CURSOR_FLAG_NONE != 0 {
            return Ok(None);
        }
        let h = c
            .header
            .ok_or_else(|| Self::bad("cursor without a header"))?;
        if c.flags & CURSOR_FLAG_FROM_CACHE != 0 {
            return match self.cache.get(&h.unique) {
                Some(img) => Ok(Some(img.clone())),
                None => Err(Self::bad(
                    "FROM_CACHE names a shape the client does not have",
                )),
            };
        }
        if h.ty != CURSOR_TYPE_ALPHA {
            return Err(Self::bad("not an ALPHA cursor"));
        }
        if c.data.len() != h.width as usize * h.height as usize * 4 || c.data.is_empty() {
            return Err(Self::bad("ALPHA cursor data does not match its size"));
        }
        let img = CursorImage {
            width: h.width,
            height: h.height,
            hot_x: h.hot_x,
            hot_y: h.hot_y,
            bgra: c.data.clone(),
        };
        if c.flags & CURSOR_FLAG_CACHE_ME != 0 {
            self.cache.insert(h.unique, img.clone());
        }
        Ok(Some(img))
    }

    /// Apply one cursor-channel message.
    pub fn apply(&mut self, msg: &ServerMsg) -> Result<(), ClientError> {
        match msg {
            ServerMsg::CursorInit {
                position,
                visible,
                cursor,
                ..
            } => {
                if self.init_done {
                    return Err(Self::bad("a second CURSOR_INIT"));
                }
                self.cache.clear();
                self.shape = self.take_shape(cursor)?;
                self.init_done = true;
                self.visible = *visible && self.shape.is_some();
                self.position = Some(*position);
                self.events.push(CursorEvent::Init { visible: *visible });
            }
            ServerMsg::CursorSet { cursor, .. } => {
                if !self.init_done {
                    return Err(Self::bad("CURSOR_SET before INIT"));
                }
                let unique = cursor.header.map_or(0, |h| h.unique);
                let from_cache = cursor.flags & spice_proto::consts::CURSOR_FLAG_FROM_CACHE != 0;
                self.shape = self.take_shape(cursor)?;
                // The widget in client mode shows the new shape (and hides on NONE).
                self.visible = self.shape.is_some();
                self.events.push(CursorEvent::Set { unique, from_cache });
            }
            ServerMsg::CursorMove(x, y) => {
                if !self.init_done {
                    return Err(Self::bad("CURSOR_MOVE before INIT"));
                }
                self.position = Some((*x, *y));
                self.visible = self.shape.is_some();
                self.events.push(CursorEvent::Move(*x, *y));
            }
            ServerMsg::CursorHide => {
                self.visible = false;
                self.events.push(CursorEvent::Hide);
            }
            ServerMsg::CursorReset => {
                self.cache.clear();
                self.init_done = false;
                self.events.push(CursorEvent::Reset);
            }
            ServerMsg::CursorInvalOne(id) => {
                self.cache.remove(id);
                self.events.push(CursorEvent::InvalOne(*id));
            }
            ServerMsg::CursorInvalAll => {
                self.cache.clear();
                self.events.push(CursorEvent::InvalAll);
            }
            _ => {}
        }
        Ok(())
    }

    /// Apply messages from a cursor `channel` until `pred(self)` holds; errors after `wait`.
    pub async fn pump_until(
        &mut self,
        channel: &mut Channel,
        wait: Duration,
        mut pred: impl FnMut(&CursorView) -> bool,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            if pred(self) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout("the cursor condition".into()));
            }
            let m = channel.recv(left).await?;
            self.apply(&m)?;
        }
    }
}
