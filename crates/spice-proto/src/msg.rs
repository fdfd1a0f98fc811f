//! Data-stage messages: [`ServerMsg`] (server → client) and [`ClientMsg`] (client → server).
//!
//! Type numbers are per channel and direction: 1..=100 are base messages valid on every
//! channel, channel-specific ones start at 101. Decoding a type unknown for the channel gives
//! `Unknown`; a known type with a short body is an error; trailing bytes are tolerated.

use crate::consts::{
    base_client, base_server, cursor_server, display_client, display_server, inputs_client,
    inputs_server, main_client, main_server, ChannelType,
};
use crate::error::Error;
use crate::frame::{encode_header, MINI_HEADER_LEN};
use crate::types::{
    decode_point16, encode_point16, Clip, Cursor, DrawCopy, DrawFill, Head, MainInit, SpiceRect,
    StreamReport,
};
use crate::wire::{
    len_u32, patch_u32, put_i32, put_i64, put_u16, put_u32, put_u64, put_u8, Reader,
};

/// A message from the server to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    // ---- base (any channel) ----
    /// SET_ACK (3): start an ACK window.
    SetAck {
        /// Generation echoed by ACK_SYNC.
        generation: u32,
        /// Messages per ACK (0 = never).
        window: u32,
    },
    /// PING (4): the client answers PONG with `id` and `timestamp`.
    Ping {
        /// Ping id.
        id: u32,
        /// Server timestamp.
        timestamp: u64,
        /// Padding to the end of the message (used for bandwidth tests).
        data: Vec<u8>,
    },
    /// DISCONNECTING (6).
    Disconnecting {
        /// Time stamp.
        time_stamp: u64,
        /// A [`crate::LinkError`] value.
        reason: u32,
    },
    /// NOTIFY (7).
    Notify {
        /// Time stamp.
        time_stamp: u64,
        /// 0 info, 1 warn, 2 error.
        severity: u32,
        /// 0 low, 1 medium, 2 high.
        visibility: u32,
        /// Message code.
        what: u32,
        /// Text (spice-server appends a NUL).
        message: Vec<u8>,
    },

    // ---- main ----
    /// MAIN INIT (103).
    MainInit(MainInit),
    /// MAIN CHANNELS_LIST (104): `(type, id)` pairs.
    ChannelsList(Vec<(u8, u8)>),
    /// MAIN MOUSE_MODE (105).
    MouseMode {
        /// Bitmask: 1 server, 2 client.
        supported: u16,
        /// Current mode.
        current: u16,
    },
    /// MAIN MULTI_MEDIA_TIME (106): new client mm clock (ms).
    MultiMediaTime(u32),
    /// MAIN AGENT_CONNECTED (107).
    AgentConnected,
    /// MAIN AGENT_DISCONNECTED (108): error code.
    AgentDisconnected(u32),
    /// MAIN AGENT_DATA (109): raw agent stream chunk (≤ 2048 bytes).
    AgentData(Vec<u8>),
    /// MAIN AGENT_TOKEN (110).
    AgentToken(u32),
    /// MAIN NAME (113): name including its NUL.
    Name(Vec<u8>),
    /// MAIN UUID (114).
    Uuid([u8; 16]),
    /// MAIN AGENT_CONNECTED_TOKENS (115).
    AgentConnectedTokens(u32),

    // ---- display ----
    /// DISPLAY MARK (102): the primary is fully drawn.
    Mark,
    /// DISPLAY RESET (103).
    Reset,
    /// DISPLAY INVAL_ALL_PALETTES (108).
    InvalAllPalettes,
    /// DISPLAY STREAM_CREATE (122).
    StreamCreate {
        /// Surface the stream draws on.
        surface_id: u32,
        /// Stream id.
        id: u32,
        /// 1 = TOP_DOWN (always set it).
        flags: u8,
        /// [`crate::VideoCodec`] value.
        codec_type: u8,
        /// Stamp (0).
        stamp: u64,
        /// Informational.
        stream_width: u32,
        /// Informational.
        stream_height: u32,
        /// Informational.
        src_width: u32,
        /// Informational.
        src_height: u32,
        /// Where frames are drawn.
        dest: SpiceRect,
        /// Clip (use None).
        clip: Clip,
    },
    /// DISPLAY STREAM_DATA (123): one complete encoded frame.
    StreamData {
        /// Stream id.
        id: u32,
        /// Presentation time on the client's mm clock.
        mm_time: u32,
        /// The frame.
        data: Vec<u8>,
    },
    /// DISPLAY STREAM_CLIP (124).
    StreamClip {
        /// Stream id.
        id: u32,
        /// New clip.
        clip: Clip,
    },
    /// DISPLAY STREAM_DESTROY (125).
    StreamDestroy(u32),
    /// DISPLAY STREAM_DESTROY_ALL (126).
    StreamDestroyAll,
    /// DISPLAY DRAW_FILL (302).
    DrawFill(DrawFill),
    /// DISPLAY DRAW_COPY (304).
    DrawCopy(DrawCopy),
    /// DISPLAY SURFACE_CREATE (314).
    SurfaceCreate {
        /// 0 for the primary.
        surface_id: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// 32 = 32_xRGB.
        format: u32,
        /// 1 PRIMARY, 2 STREAMING_MODE.
        flags: u32,
    },
    /// DISPLAY SURFACE_DESTROY (315).
    SurfaceDestroy(u32),
    /// DISPLAY STREAM_DATA_SIZED (316): a frame with its own destination.
    StreamDataSized {
        /// Stream id.
        id: u32,
        /// Presentation time.
        mm_time: u32,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// Destination for this frame.
        dest: SpiceRect,
        /// The frame.
        data: Vec<u8>,
    },
    /// DISPLAY MONITORS_CONFIG (317).
    MonitorsConfig {
        /// Maximum number of monitors.
        max_allowed: u16,
        /// Heads (at most 65535 are encoded).
        heads: Vec<Head>,
    },
    /// DISPLAY STREAM_ACTIVATE_REPORT (319).
    StreamActivateReport {
        /// Stream id.
        stream_id: u32,
        /// Id echoed in reports.
        unique_id: u32,
        /// Frames per report.
        max_window_size: u32,
        /// Report at least this often (ms).
        timeout_ms: u32,
    },
    /// DISPLAY GL_SCANOUT_UNIX (320); the fd travels out of band.
    GlScanoutUnix {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Stride.
        stride: u32,
        /// DRM fourcc.
        drm_fourcc: u32,
        /// 1 = Y0TOP.
        flags: u32,
    },
    /// DISPLAY GL_DRAW (321).
    GlDraw {
        /// X.
        x: u32,
        /// Y.
        y: u32,
        /// Width.
        w: u32,
        /// Height.
        h: u32,
    },

    // ---- inputs ----
    /// INPUTS INIT (101): guest LED state.
    InputsInit(u16),
    /// INPUTS KEY_MODIFIERS (102).
    InputsKeyModifiers(u16),
    /// INPUTS MOUSE_MOTION_ACK (111).
    MouseMotionAck,

    // ---- cursor ----
    /// CURSOR INIT (101).
    CursorInit {
        /// Position.
        position: (i16, i16),
        /// Trail length.
        trail_length: u16,
        /// Trail frequency.
        trail_frequency: u16,
        /// Visible.
        visible: bool,
        /// Shape.
        cursor: Cursor,
    },
    /// CURSOR RESET (102).
    CursorReset,
    /// CURSOR SET (103).
    CursorSet {
        /// Position.
        position: (i16, i16),
        /// Visible.
        visible: bool,
        /// Shape.
        cursor: Cursor,
    },
    /// CURSOR MOVE (104): x, y.
    CursorMove(i16, i16),
    /// CURSOR HIDE (105).
    CursorHide,
    /// CURSOR TRAIL (106).
    CursorTrail {
        /// Length.
        length: u16,
        /// Frequency.
        frequency: u16,
    },
    /// CURSOR INVAL_ONE (107).
    CursorInvalOne(u64),
    /// CURSOR INVAL_ALL (108).
    CursorInvalAll,

    /// A type this crate does not model for the channel; `len` is the body length. Encoding
    /// writes `len` zero bytes.
    Unknown {
        /// Message type.
        ty: u16,
        /// Body length.
        len: usize,
    },
}

fn encode_with_header(ty: u16, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let header_at = out.len();
    encode_header(ty, 0, out);
    let body_start = out.len();
    body(out);
    let size = len_u32(out.len().saturating_sub(body_start));
    patch_u32(out, header_at + 2, size);
}

impl ServerMsg {
    /// The message type number.
    pub fn msg_type(&self) -> u16 {
        use ServerMsg as M;
        match self {
            M::SetAck { .. } => base_server::SET_ACK,
            M::Ping { .. } => base_server::PING,
            M::Disconnecting { .. } => base_server::DISCONNECTING,
            M::Notify { .. } => base_server::NOTIFY,
            M::MainInit(_) => main_server::INIT,
            M::ChannelsList(_) => main_server::CHANNELS_LIST,
            M::MouseMode { .. } => main_server::MOUSE_MODE,
            M::MultiMediaTime(_) => main_server::MULTI_MEDIA_TIME,
            M::AgentConnected => main_server::AGENT_CONNECTED,
            M::AgentDisconnected(_) => main_server::AGENT_DISCONNECTED,
            M::AgentData(_) => main_server::AGENT_DATA,
            M::AgentToken(_) => main_server::AGENT_TOKEN,
            M::Name(_) => main_server::NAME,
            M::Uuid(_) => main_server::UUID,
            M::AgentConnectedTokens(_) => main_server::AGENT_CONNECTED_TOKENS,
            M::Mark => display_server::MARK,
            M::Reset => display_server::RESET,
            M::InvalAllPalettes => display_server::INVAL_ALL_PALETTES,
            M::StreamCreate { .. } => display_server::STREAM_CREATE,
            M::StreamData { .. } => display_server::STREAM_DATA,
            M::StreamClip { .. } => display_server::STREAM_CLIP,
            M::StreamDestroy(_) => display_server::STREAM_DESTROY,
            M::StreamDestroyAll => display_server::STREAM_DESTROY_ALL,
            M::DrawFill(_) => display_server::DRAW_FILL,
            M::DrawCopy(_) => display_server::DRAW_COPY,
            M::SurfaceCreate { .. } => display_server::SURFACE_CREATE,
            M::SurfaceDestroy(_) => display_server::SURFACE_DESTROY,
            M::StreamDataSized { .. } => display_server::STREAM_DATA_SIZED,
            M::MonitorsConfig { .. } => display_server::MONITORS_CONFIG,
            M::StreamActivateReport { .. } => display_server::STREAM_ACTIVATE_REPORT,
            M::GlScanoutUnix { .. } => display_server::GL_SCANOUT_UNIX,
            M::GlDraw { .. } => display_server::GL_DRAW,
            M::InputsInit(_) => inputs_server::INIT,
            M::InputsKeyModifiers(_) => inputs_server::KEY_MODIFIERS,
            M::MouseMotionAck => inputs_server::MOUSE_MOTION_ACK,
            M::CursorInit { .. } => cursor_server::INIT,
            M::CursorReset => cursor_server::RESET,
            M::CursorSet { .. } => cursor_server::SET,
            M::CursorMove(..) => cursor_server::MOVE,
            M::CursorHide => cursor_server::HIDE,
            M::CursorTrail { .. } => cursor_server::TRAIL,
            M::CursorInvalOne(_) => cursor_server::INVAL_ONE,
            M::CursorInvalAll => cursor_server::INVAL_ALL,
            M::Unknown { ty, .. } => *ty,
        }
    }

    /// The channel this message belongs to; `None` for base messages and `Unknown`.
    pub fn channel(&self) -> Option<ChannelType> {
        use ServerMsg as M;
        match self {
            M::SetAck { .. }
            | M::Ping { .. }
            | M::Disconnecting { .. }
            | M::Notify { .. }
            | M::Unknown { .. } => None,
            M::MainInit(_)
            | M::ChannelsList(_)
            | M::MouseMode { .. }
            | M::MultiMediaTime(_)
            | M::AgentConnected
            | M::AgentDisconnected(_)
            | M::AgentData(_)
            | M::AgentToken(_)
            | M::Name(_)
            | M::Uuid(_)
            | M::AgentConnectedTokens(_) => Some(ChannelType::Main),
            M::InputsInit(_) | M::InputsKeyModifiers(_) | M::MouseMotionAck => {
                Some(ChannelType::Inputs)
            }
            M::CursorInit { .. }
            | M::CursorReset
            | M::CursorSet { .. }
            | M::CursorMove(..)
            | M::CursorHide
            | M::CursorTrail { .. }
            | M::CursorInvalOne(_)
            | M::CursorInvalAll => Some(ChannelType::Cursor),
            _ => Some(ChannelType::Display),
        }
    }

    /// Appends the mini header and the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let ServerMsg::StreamData { id, mm_time, data } = self {
            // Avoid building the body twice for large frames.
            Self::encode_stream_data(*id, *mm_time, data, out);
            return;
        }
        encode_with_header(self.msg_type(), out, |o| self.encode_body(o));
    }

    /// The encoded message (mini header and body) as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Appends a complete STREAM_DATA message without building a [`ServerMsg`] (no copy of
    /// the frame into an owned vector).
    pub fn encode_stream_data(id: u32, mm_time: u32, frame: &[u8], out: &mut Vec<u8>) {
        out.reserve(MINI_HEADER_LEN + 12 + frame.len());
        encode_header(
            display_server::STREAM_DATA,
            len_u32(frame.len().saturating_add(12)),
            out,
        );
        put_u32(out, id);
        put_u32(out, mm_time);
        put_u32(out, len_u32(frame.len()));
        out.extend_from_slice(frame);
    }

    /// Appends only the body (no header).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        use ServerMsg as M;
        match self {
            M::SetAck { generation, window } => {
                put_u32(out, *generation);
                put_u32(out, *window);
            }
            M::Ping {
                id,
                timestamp,
                data,
            } => {
                put_u32(out, *id);
                put_u64(out, *timestamp);
                out.extend_from_slice(data);
            }
            M::Disconnecting { time_stamp, reason } => {
                put_u64(out, *time_stamp);
                put_u32(out, *reason);
            }
            M::Notify {
                time_stamp,
                severity,
                visibility,
                what,
                message,
            } => {
                put_u64(out, *time_stamp);
                put_u32(out, *severity);
                put_u32(out, *visibility);
                put_u32(out, *what);
                put_u32(out, len_u32(message.len()));
                out.extend_from_slice(message);
            }
            M::MainInit(init) => init.encode(out),
            M::ChannelsList(list) => {
                put_u32(out, len_u32(list.len()));
                for (t, i) in list {
                    put_u8(out, *t);
                    put_u8(out, *i);
                }
            }
            M::MouseMode { supported, current } => {
                put_u16(out, *supported);
                put_u16(out, *current);
            }
            M::MultiMediaTime(v)
            | M::AgentDisconnected(v)
            | M::AgentToken(v)
            | M::AgentConnectedTokens(v)
            | M::StreamDestroy(v)
            | M::SurfaceDestroy(v) => put_u32(out, *v),
            M::AgentData(d) => out.extend_from_slice(d),
            M::Name(name) => {
                put_u32(out, len_u32(name.len()));
                out.extend_from_slice(name);
            }
            M::Uuid(u) => out.extend_from_slice(u),
            M::AgentConnected
            | M::Mark
            | M::Reset
            | M::InvalAllPalettes
            | M::StreamDestroyAll
            | M::MouseMotionAck
            | M::CursorReset
            | M::CursorHide
            | M::CursorInvalAll => {}
            M::StreamCreate {
                surface_id,
                id,
                flags,
                codec_type,
                stamp,
                stream_width,
                stream_height,
                src_width,
                src_height,
                dest,
                clip,
            } => {
                put_u32(out, *surface_id);
                put_u32(out, *id);
                put_u8(out, *flags);
                put_u8(out, *codec_type);
                put_u64(out, *stamp);
                put_u32(out, *stream_width);
                put_u32(out, *stream_height);
                put_u32(out, *src_width);
                put_u32(out, *src_height);
                dest.encode(out);
                clip.encode(out);
            }
            M::StreamData { id, mm_time, data } => {
                put_u32(out, *id);
                put_u32(out, *mm_time);
                put_u32(out, len_u32(data.len()));
                out.extend_from_slice(data);
            }
            M::StreamClip { id, clip } => {
                put_u32(out, *id);
                clip.encode(out);
            }
            M::DrawFill(f) => f.encode(out),
            M::DrawCopy(c) => c.encode(out),
            M::SurfaceCreate {
                surface_id,
                width,
                height,
                format,
                flags,
            } => {
                for v in [*surface_id, *width, *height, *format, *flags] {
                    put_u32(out, v);
                }
            }
            M::StreamDataSized {
                id,
                mm_time,
                width,
                height,
                dest,
                data,
            } => {
                put_u32(out, *id);
                put_u32(out, *mm_time);
                put_u32(out, *width);
                put_u32(out, *height);
                dest.encode(out);
                put_u32(out, len_u32(data.len()));
                out.extend_from_slice(data);
            }
            M::MonitorsConfig { max_allowed, heads } => {
                let n = heads.len().min(usize::from(u16::MAX));
                put_u16(out, n as u16);
                put_u16(out, *max_allowed);
                for h in heads.iter().take(n) {
                    h.encode(out);
                }
            }
            M::StreamActivateReport {
                stream_id,
                unique_id,
                max_window_size,
                timeout_ms,
            } => {
                for v in [*stream_id, *unique_id, *max_window_size, *timeout_ms] {
                    put_u32(out, v);
                }
            }
            M::GlScanoutUnix {
                width,
                height,
                stride,
                drm_fourcc,
                flags,
            } => {
                for v in [*width, *height, *stride, *drm_fourcc, *flags] {
                    put_u32(out, v);
                }
            }
            M::GlDraw { x, y, w, h } => {
                for v in [*x, *y, *w, *h] {
                    put_u32(out, v);
                }
            }
            M::InputsInit(m) | M::InputsKeyModifiers(m) => put_u16(out, *m),
            M::CursorInit {
                position,
                trail_length,
                trail_frequency,
                visible,
                cursor,
            } => {
                encode_point16(out, *position);
                put_u16(out, *trail_length);
                put_u16(out, *trail_frequency);
                put_u8(out, u8::from(*visible));
                cursor.encode(out);
            }
            M::CursorSet {
                position,
                visible,
                cursor,
            } => {
                encode_point16(out, *position);
                put_u8(out, u8::from(*visible));
                cursor.encode(out);
            }
            M::CursorMove(x, y) => encode_point16(out, (*x, *y)),
            M::CursorTrail { length, frequency } => {
                put_u16(out, *length);
                put_u16(out, *frequency);
            }
            M::CursorInvalOne(id) => put_u64(out, *id),
            M::Unknown { len, .. } => out.resize(out.len().saturating_add(*len), 0),
        }
    }

    /// Decodes the body of a message of type `ty` received on a `channel` channel.
    pub fn decode(channel: ChannelType, ty: u16, body: &[u8]) -> Result<ServerMsg, Error> {
        use ServerMsg as M;
        let unknown = M::Unknown {
            ty,
            len: body.len(),
        };
        let mut r = Reader::new(body, server_msg_name(channel, ty));
        let r = &mut r;
        if ty <= 100 {
            return Ok(match ty {
                base_server::SET_ACK => M::SetAck {
                    generation: r.u32()?,
                    window: r.u32()?,
                },
                base_server::PING => M::Ping {
                    id: r.u32()?,
                    timestamp: r.u64()?,
                    data: r.rest().to_vec(),
                },
                base_server::DISCONNECTING => M::Disconnecting {
                    time_stamp: r.u64()?,
                    reason: r.u32()?,
                },
                base_server::NOTIFY => {
                    let time_stamp = r.u64()?;
                    let severity = r.u32()?;
                    let visibility = r.u32()?;
                    let what = r.u32()?;
                    let len = r.u32()? as usize;
                    M::Notify {
                        time_stamp,
                        severity,
                        visibility,
                        what,
                        message: r.bytes(len)?.to_vec(),
                    }
                }
                _ => unknown,
            });
        }
        Ok(match channel {
            ChannelType::Main => match ty {
                main_server::INIT => M::MainInit(MainInit::decode(r)?),
                main_server::CHANNELS_LIST => {
                    let n = r.u32()? as usize;
                    r.ensure_items(n, 2)?;
                    let mut list = Vec::with_capacity(n);
                    for _ in 0..n {
                        list.push((r.u8()?, r.u8()?));
                    }
                    M::ChannelsList(list)
                }
                main_server::MOUSE_MODE => M::MouseMode {
                    supported: r.u16()?,
                    current: r.u16()?,
                },
                main_server::MULTI_MEDIA_TIME => M::MultiMediaTime(r.u32()?),
                main_server::AGENT_CONNECTED => M::AgentConnected,
                main_server::AGENT_DISCONNECTED => M::AgentDisconnected(r.u32()?),
                main_server::AGENT_DATA => M::AgentData(r.rest().to_vec()),
                main_server::AGENT_TOKEN => M::AgentToken(r.u32()?),
                main_server::NAME => {
                    let n = r.u32()? as usize;
                    M::Name(r.bytes(n)?.to_vec())
                }
                main_server::UUID => M::Uuid(r.array_n()?),
                main_server::AGENT_CONNECTED_TOKENS => M::AgentConnectedTokens(r.u32()?),
                _ => unknown,
            },
            ChannelType::Display => match ty {
                display_server::MARK => M::Mark,
                display_server::RESET => M::Reset,
                display_server::INVAL_ALL_PALETTES => M::InvalAllPalettes,
                display_server::STREAM_CREATE => M::StreamCreate {
                    surface_id: r.u32()?,
                    id: r.u32()?,
                    flags: r.u8()?,
                    codec_type: r.u8()?,
                    stamp: r.u64()?,
                    stream_width: r.u32()?,
                    stream_height: r.u32()?,
                    src_width: r.u32()?,
                    src_height: r.u32()?,
                    dest: SpiceRect::decode(r)?,
                    clip: Clip::decode(r)?,
                },
                display_server::STREAM_DATA => {
                    let id = r.u32()?;
                    let mm_time = r.u32()?;
                    let n = r.u32()? as usize;
                    M::StreamData {
                        id,
                        mm_time,
                        data: r.bytes(n)?.to_vec(),
                    }
                }
                display_server::STREAM_CLIP => M::StreamClip {
                    id: r.u32()?,
                    clip: Clip::decode(r)?,
                },
                display_server::STREAM_DESTROY => M::StreamDestroy(r.u32()?),
                display_server::STREAM_DESTROY_ALL => M::StreamDestroyAll,
                display_server::DRAW_FILL => M::DrawFill(DrawFill::decode(body)?),
                display_server::DRAW_COPY => M::DrawCopy(DrawCopy::decode(body)?),
                display_server::SURFACE_CREATE => M::SurfaceCreate {
                    surface_id: r.u32()?,
                    width: r.u32()?,
                    height: r.u32()?,
                    format: r.u32()?,
                    flags: r.u32()?,
                },
                display_server::SURFACE_DESTROY => M::SurfaceDestroy(r.u32()?),
                display_server::STREAM_DATA_SIZED => {
                    let id = r.u32()?;
                    let mm_time = r.u32()?;
                    let width = r.u32()?;
                    let height = r.u32()?;
                    let dest = SpiceRect::decode(r)?;
                    let n = r.u32()? as usize;
                    M::StreamDataSized {
                        id,
                        mm_time,
                        width,
                        height,
                        dest,
                        data: r.bytes(n)?.to_vec(),
                    }
                }
                display_server::MONITORS_CONFIG => {
                    let count = usize::from(r.u16()?);
                    let max_allowed = r.u16()?;
                    r.ensure_items(count, Head::WIRE_LEN)?;
                    let mut heads = Vec::with_capacity(count);
                    for _ in 0..count {
                        heads.push(Head::decode(r)?);
                    }
                    M::MonitorsConfig { max_allowed, heads }
                }
                display_server::STREAM_ACTIVATE_REPORT => M::StreamActivateReport {
                    stream_id: r.u32()?,
                    unique_id: r.u32()?,
                    max_window_size: r.u32()?,
                    timeout_ms: r.u32()?,
                },
                display_server::GL_SCANOUT_UNIX => M::GlScanoutUnix {
                    width: r.u32()?,
                    height: r.u32()?,
                    stride: r.u32()?,
                    drm_fourcc: r.u32()?,
                    flags: r.u32()?,
                },
                display_server::GL_DRAW => M::GlDraw {
                    x: r.u32()?,
                    y: r.u32()?,
                    w: r.u32()?,
                    h: r.u32()?,
                },
                _ => unknown,
            },
            ChannelType::Inputs => match ty {
                inputs_server::INIT => M::InputsInit(r.u16()?),
                inputs_server::KEY_MODIFIERS => M::InputsKeyModifiers(r.u16()?),
                inputs_server::MOUSE_MOTION_ACK => M::MouseMotionAck,
                _ => unknown,
            },
            ChannelType::Cursor => match ty {
                cursor_server::INIT => M::CursorInit {
                    position: decode_point16(r)?,
                    trail_length: r.u16()?,
                    trail_frequency: r.u16()?,
                    visible: r.u8()? != 0,
                    cursor: Cursor::decode(r)?,
                },
                cursor_server::RESET => M::CursorReset,
                cursor_server::SET => M::CursorSet {
                    position: decode_point16(r)?,
                    visible: r.u8()? != 0,
                    cursor: Cursor::decode(r)?,
                },
                cursor_server::MOVE => {
                    let (x, y) = decode_point16(r)?;
                    M::CursorMove(x, y)
                }
                cursor_server::HIDE => M::CursorHide,
                cursor_server::TRAIL => M::CursorTrail {
                    length: r.u16()?,
                    frequency: r.u16()?,
                },
                cursor_server::INVAL_ONE => M::CursorInvalOne(r.u64()?),
                cursor_server::INVAL_ALL => M::CursorInvalAll,
                _ => unknown,
            },
            _ => unknown,
        })
    }
}

/// A static name for error messages.
fn server_msg_name(channel: ChannelType, ty: u16) -> &'static str {
    match (channel, ty) {
        (_, base_server::SET_ACK) => "SET_ACK",
        (_, base_server::PING) => "PING",
        (_, base_server::DISCONNECTING) => "DISCONNECTING",
        (_, base_server::NOTIFY) => "NOTIFY",
        (ChannelType::Main, main_server::INIT) => "MAIN_INIT",
        (ChannelType::Main, main_server::CHANNELS_LIST) => "CHANNELS_LIST",
        (ChannelType::Display, display_server::STREAM_CREATE) => "STREAM_CREATE",
        (ChannelType::Display, display_server::STREAM_DATA) => "STREAM_DATA",
        (ChannelType::Display, display_server::STREAM_DATA_SIZED) => "STREAM_DATA_SIZED",
        (ChannelType::Display, display_server::MONITORS_CONFIG) => "MONITORS_CONFIG",
        (ChannelType::Display, display_server::SURFACE_CREATE) => "SURFACE_CREATE",
        (ChannelType::Cursor, cursor_server::INIT) => "CURSOR_INIT",
        (ChannelType::Cursor, cursor_server::SET) => "CURSOR_SET",
        (ChannelType::Cursor, cursor_server::MOVE) => "CURSOR_MOVE",
        (ChannelType::Cursor, cursor_server::TRAIL) => "CURSOR_TRAIL",
        (ChannelType::Cursor, cursor_server::INVAL_ONE) => "CURSOR_INVAL_ONE",
        _ => "server message",
    }
}

/// A message from the client to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    // ---- base ----
    /// ACK_SYNC (1): answer to SET_ACK.
    AckSync {
        /// The SET_ACK generation.
        generation: u32,
    },
    /// ACK (2): `window` messages received.
    Ack,
    /// PONG (3): echo of a PING.
    Pong {
        /// Ping id.
        id: u32,
        /// Ping timestamp.
        timestamp: u64,
    },
    /// DISCONNECTING (6).
    Disconnecting {
        /// Time stamp.
        time_stamp: u64,
        /// Reason (a link error value).
        reason: u32,
    },

    // ---- main ----
    /// MAIN CLIENT_INFO (101) (not sent by spice-gtk).
    MainClientInfo {
        /// Cache size.
        cache_size: u64,
    },
    /// MAIN ATTACH_CHANNELS (104): answer with CHANNELS_LIST.
    MainAttachChannels,
    /// MAIN MOUSE_MODE_REQUEST (105).
    MainMouseModeRequest(u16),
    /// MAIN AGENT_START (106): tokens granted to the server.
    MainAgentStart(u32),
    /// MAIN AGENT_DATA (107): raw agent stream chunk.
    MainAgentData(Vec<u8>),
    /// MAIN AGENT_TOKEN (108).
    MainAgentToken(u32),

    // ---- display ----
    /// DISPLAY INIT (101, 14 bytes); read and ignore.
    DisplayInit {
        /// Pixmap cache id.
        pixmap_cache_id: u8,
        /// Pixmap cache size (pixels).
        pixmap_cache_size: i64,
        /// GLZ dictionary id.
        glz_dictionary_id: u8,
        /// GLZ window size (pixels).
        glz_window_size: i32,
    },
    /// DISPLAY STREAM_REPORT (102).
    StreamReport(StreamReport),
    /// DISPLAY PREFERRED_COMPRESSION (103).
    PreferredCompression(u8),
    /// DISPLAY GL_DRAW_DONE (104).
    GlDrawDone,
    /// DISPLAY PREFERRED_VIDEO_CODEC_TYPE (105): codecs in preference order (≤ 255 encoded).
    PreferredVideoCodecType(Vec<u8>),

    // ---- inputs ----
    /// INPUTS KEY_DOWN (101): scancode bytes packed little-endian (see
    /// [`crate::input::scancode_bytes`]).
    KeyDown(u32),
    /// INPUTS KEY_UP (102).
    KeyUp(u32),
    /// INPUTS KEY_MODIFIERS (103): client lock state.
    KeyModifiers(u16),
    /// INPUTS KEY_SCANCODE (104): raw set-1 bytes (press then release).
    KeyScancode(Vec<u8>),
    /// INPUTS MOUSE_MOTION (111): relative motion.
    MouseMotion {
        /// Delta x.
        dx: i32,
        /// Delta y.
        dy: i32,
        /// Buttons held.
        buttons: u16,
    },
    /// INPUTS MOUSE_POSITION (112): absolute position.
    MousePosition {
        /// X.
        x: u32,
        /// Y.
        y: u32,
        /// Buttons held.
        buttons: u16,
        /// Monitor / display id.
        display_id: u8,
    },
    /// INPUTS MOUSE_PRESS (113).
    MousePress {
        /// Button (1 left .. 7 extra).
        button: u8,
        /// Buttons held (other buttons).
        buttons: u16,
    },
    /// INPUTS MOUSE_RELEASE (114).
    MouseRelease {
        /// Button.
        button: u8,
        /// Buttons held.
        buttons: u16,
    },

    /// A type this crate does not model for the channel; encoding writes `len` zero bytes.
    Unknown {
        /// Message type.
        ty: u16,
        /// Body length.
        len: usize,
    },
}

impl ClientMsg {
    /// The message type number.
    pub fn msg_type(&self) -> u16 {
        use ClientMsg as M;
        match self {
            M::AckSync { .. } => base_client::ACK_SYNC,
            M::Ack => base_client::ACK,
            M::Pong { .. } => base_client::PONG,
            M::Disconnecting { .. } => base_client::DISCONNECTING,
            M::MainClientInfo { .. } => main_client::CLIENT_INFO,
            M::MainAttachChannels => main_client::ATTACH_CHANNELS,
            M::MainMouseModeRequest(_) => main_client::MOUSE_MODE_REQUEST,
            M::MainAgentStart(_) => main_client::AGENT_START,
            M::MainAgentData(_) => main_client::AGENT_DATA,
            M::MainAgentToken(_) => main_client::AGENT_TOKEN,
            M::DisplayInit { .. } => display_client::INIT,
            M::StreamReport(_) => display_client::STREAM_REPORT,
            M::PreferredCompression(_) => display_client::PREFERRED_COMPRESSION,
            M::GlDrawDone => display_client::GL_DRAW_DONE,
            M::PreferredVideoCodecType(_) => display_client::PREFERRED_VIDEO_CODEC_TYPE,
            M::KeyDown(_) => inputs_client::KEY_DOWN,
            M::KeyUp(_) => inputs_client::KEY_UP,
            M::KeyModifiers(_) => inputs_client::KEY_MODIFIERS,
            M::KeyScancode(_) => inputs_client::KEY_SCANCODE,
            M::MouseMotion { .. } => inputs_client::MOUSE_MOTION,
            M::MousePosition { .. } => inputs_client::MOUSE_POSITION,
            M::MousePress { .. } => inputs_client::MOUSE_PRESS,
            M::MouseRelease { .. } => inputs_client::MOUSE_RELEASE,
            M::Unknown { ty, .. } => *ty,
        }
    }

    /// The channel this message belongs to; `None` for base messages and `Unknown`.
    pub fn channel(&self) -> Option<ChannelType> {
        use ClientMsg as M;
        match self {
            M::AckSync { .. }
            | M::Ack
            | M::Pong { .. }
            | M::Disconnecting { .. }
            | M::Unknown { .. } => None,
            M::MainClientInfo { .. }
            | M::MainAttachChannels
            | M::MainMouseModeRequest(_)
            | M::MainAgentStart(_)
            | M::MainAgentData(_)
            | M::MainAgentToken(_) => Some(ChannelType::Main),
            M::DisplayInit { .. }
            | M::StreamReport(_)
            | M::PreferredCompression(_)
            | M::GlDrawDone
            | M::PreferredVideoCodecType(_) => Some(ChannelType::Display),
            _ => Some(ChannelType::Inputs),
        }
    }

    /// Appends the mini header and the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_with_header(self.msg_type(), out, |o| self.encode_body(o));
    }

    /// The encoded message (mini header and body) as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Appends only the body (no header).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        use ClientMsg as M;
        match self {
            M::AckSync { generation } => put_u32(out, *generation),
            M::Ack | M::MainAttachChannels | M::GlDrawDone => {}
            M::Pong { id, timestamp } => {
                put_u32(out, *id);
                put_u64(out, *timestamp);
            }
            M::Disconnecting { time_stamp, reason } => {
                put_u64(out, *time_stamp);
                put_u32(out, *reason);
            }
            M::MainClientInfo { cache_size } => put_u64(out, *cache_size),
            M::MainMouseModeRequest(m) | M::KeyModifiers(m) => put_u16(out, *m),
            M::MainAgentStart(v) | M::MainAgentToken(v) | M::KeyDown(v) | M::KeyUp(v) => {
                put_u32(out, *v)
            }
            M::MainAgentData(d) | M::KeyScancode(d) => out.extend_from_slice(d),
            M::DisplayInit {
                pixmap_cache_id,
                pixmap_cache_size,
                glz_dictionary_id,
                glz_window_size,
            } => {
                put_u8(out, *pixmap_cache_id);
                put_i64(out, *pixmap_cache_size);
                put_u8(out, *glz_dictionary_id);
                put_i32(out, *glz_window_size);
            }
            M::StreamReport(r) => r.encode(out),
            M::PreferredCompression(c) => put_u8(out, *c),
            M::PreferredVideoCodecType(codecs) => {
                let n = codecs.len().min(usize::from(u8::MAX));
                put_u8(out, n as u8);
                out.extend_from_slice(codecs.get(..n).unwrap_or(&[]));
            }
            M::MouseMotion { dx, dy, buttons } => {
                put_i32(out, *dx);
                put_i32(out, *dy);
                put_u16(out, *buttons);
            }
            M::MousePosition {
                x,
                y,
                buttons,
                display_id,
            } => {
                put_u32(out, *x);
                put_u32(out, *y);
                put_u16(out, *buttons);
                put_u8(out, *display_id);
            }
            M::MousePress { button, buttons } | M::MouseRelease { button, buttons } => {
                put_u8(out, *button);
                put_u16(out, *buttons);
            }
            M::Unknown { len, .. } => out.resize(out.len().saturating_add(*len), 0),
        }
    }

    /// Decodes the body of a message of type `ty` received on a `channel` channel.
    pub fn decode(channel: ChannelType, ty: u16, body: &[u8]) -> Result<ClientMsg, Error> {
        use ClientMsg as M;
        let unknown = M::Unknown {
            ty,
            len: body.len(),
        };
        let mut r = Reader::new(body, client_msg_name(channel, ty));
        let r = &mut r;
        if ty <= 100 {
            return Ok(match ty {
                base_client::ACK_SYNC => M::AckSync {
                    generation: r.u32()?,
                },
                base_client::ACK => M::Ack,
                base_client::PONG => M::Pong {
                    id: r.u32()?,
                    timestamp: r.u64()?,
                },
                base_client::DISCONNECTING => M::Disconnecting {
                    time_stamp: r.u64()?,
                    reason: r.u32()?,
                },
                _ => unknown,
            });
        }
        Ok(match channel {
            ChannelType::Main => match ty {
                main_client::CLIENT_INFO => M::MainClientInfo {
                    cache_size: r.u64()?,
                },
                main_client::ATTACH_CHANNELS => M::MainAttachChannels,
                main_client::MOUSE_MODE_REQUEST => M::MainMouseModeRequest(r.u16()?),
                main_client::AGENT_START => M::MainAgentStart(r.u32()?),
                main_client::AGENT_DATA => M::MainAgentData(r.rest().to_vec()),
                main_client::AGENT_TOKEN => M::MainAgentToken(r.u32()?),
                _ => unknown,
            },
            ChannelType::Display => match ty {
                display_client::INIT => M::DisplayInit {
                    pixmap_cache_id: r.u8()?,
                    pixmap_cache_size: r.i64()?,
                    glz_dictionary_id: r.u8()?,
                    glz_window_size: r.i32()?,
                },
                display_client::STREAM_REPORT => M::StreamReport(StreamReport::decode(r)?),
                display_client::PREFERRED_COMPRESSION => M::PreferredCompression(r.u8()?),
                display_client::GL_DRAW_DONE => M::GlDrawDone,
                display_client::PREFERRED_VIDEO_CODEC_TYPE => {
                    let n = usize::from(r.u8()?);
                    M::PreferredVideoCodecType(r.bytes(n)?.to_vec())
                }
                _ => unknown,
            },
            ChannelType::Inputs => match ty {
                inputs_client::KEY_DOWN => M::KeyDown(r.u32()?),
                inputs_client::KEY_UP => M::KeyUp(r.u32()?),
                inputs_client::KEY_MODIFIERS => M::KeyModifiers(r.u16()?),
                inputs_client::KEY_SCANCODE => M::KeyScancode(r.rest().to_vec()),
                inputs_client::MOUSE_MOTION => M::MouseMotion {
                    dx: r.i32()?,
                    dy: r.i32()?,
                    buttons: r.u16()?,
                },
                inputs_client::MOUSE_POSITION => M::MousePosition {
                    x: r.u32()?,
                    y: r.u32()?,
                    buttons: r.u16()?,
                    display_id: r.u8()?,
                },
                inputs_client::MOUSE_PRESS => M::MousePress {
                    button: r.u8()?,
                    buttons: r.u16()?,
                },
                inputs_client::MOUSE_RELEASE => M::MouseRelease {
                    button: r.u8()?,
                    buttons: r.u16()?,
                },
                _ => unknown,
            },
            _ => unknown,
        })
    }
}

/// A static name for error messages.
fn client_msg_name(channel: ChannelType, ty: u16) -> &'static str {
    match (channel, ty) {
        (_, base_client::ACK_SYNC) => "ACK_SYNC",
        (_, base_client::PONG) => "PONG",
        (_, base_client::DISCONNECTING) => "DISCONNECTING",
        (ChannelType::Display, display_client::INIT) => "DISPLAY_INIT",
        (ChannelType::Display, display_client::STREAM_REPORT) => "STREAM_REPORT",
        (ChannelType::Inputs, inputs_client::KEY_DOWN) => "KEY_DOWN",
        (ChannelType::Inputs, inputs_client::KEY_UP) => "KEY_UP",
        (ChannelType::Inputs, inputs_client::MOUSE_MOTION) => "MOUSE_MOTION",
        (ChannelType::Inputs, inputs_client::MOUSE_POSITION) => "MOUSE_POSITION",
        (ChannelType::Inputs, inputs_client::MOUSE_PRESS) => "MOUSE_PRESS",
        (ChannelType::Inputs, inputs_client::MOUSE_RELEASE) => "MOUSE_RELEASE",
        _ => "client message",
    }
}
