//! Protocol numbers: channel types, link errors, capability bits, message types and enums.

/// SPICE channel types (§1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ChannelType {
    /// Session control, agent, mouse mode, mm-time.
    Main = 1,
    /// Surfaces, drawing and video streams.
    Display = 2,
    /// Keyboard and mouse.
    Inputs = 3,
    /// Pointer shape and position.
    Cursor = 4,
    /// Audio out.
    Playback = 5,
    /// Audio in.
    Record = 6,
    /// Obsolete.
    Tunnel = 7,
    /// Smartcard.
    Smartcard = 8,
    /// USB redirection.
    Usbredir = 9,
    /// Named spicevmc ports.
    Port = 10,
    /// Folder sharing.
    Webdav = 11,
}

impl ChannelType {
    /// Every channel type, in numeric order.
    pub const ALL: [ChannelType; 11] = [
        ChannelType::Main,
        ChannelType::Display,
        ChannelType::Inputs,
        ChannelType::Cursor,
        ChannelType::Playback,
        ChannelType::Record,
        ChannelType::Tunnel,
        ChannelType::Smartcard,
        ChannelType::Usbredir,
        ChannelType::Port,
        ChannelType::Webdav,
    ];

    /// The channel type for a wire value, if known.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| *c as u8 == v)
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// A lower-case name for logs.
    pub fn name(self) -> &'static str {
        match self {
            ChannelType::Main => "main",
            ChannelType::Display => "display",
            ChannelType::Inputs => "inputs",
            ChannelType::Cursor => "cursor",
            ChannelType::Playback => "playback",
            ChannelType::Record => "record",
            ChannelType::Tunnel => "tunnel",
            ChannelType::Smartcard => "smartcard",
            ChannelType::Usbredir => "usbredir",
            ChannelType::Port => "port",
            ChannelType::Webdav => "webdav",
        }
    }
}

/// SpiceLinkErr (§1.8): link reply `error` field and the final link result word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum LinkError {
    /// Success.
    Ok = 0,
    /// Generic error.
    Error = 1,
    /// Bad link magic.
    InvalidMagic = 2,
    /// Malformed link message or unsupported auth mechanism.
    InvalidData = 3,
    /// Major version is not 2.
    VersionMismatch = 4,
    /// The channel requires TLS.
    NeedSecured = 5,
    /// The channel must not use TLS.
    NeedUnsecured = 6,
    /// Bad ticket / password.
    PermissionDenied = 7,
    /// Unknown connection (session) id.
    BadConnectionId = 8,
    /// The requested channel type/id does not exist.
    ChannelNotAvailable = 9,
}

impl LinkError {
    /// The error for a wire value, if known.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => LinkError::Ok,
            1 => LinkError::Error,
            2 => LinkError::InvalidMagic,
            3 => LinkError::InvalidData,
            4 => LinkError::VersionMismatch,
            5 => LinkError::NeedSecured,
            6 => LinkError::NeedUnsecured,
            7 => LinkError::PermissionDenied,
            8 => LinkError::BadConnectionId,
            9 => LinkError::ChannelNotAvailable,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// SpiceVideoCodecType (§4.7.1), the `codec_type` byte of STREAM_CREATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum VideoCodec {
    /// Motion JPEG.
    Mjpeg = 1,
    /// VP8.
    Vp8 = 2,
    /// H.264 (Annex-B).
    H264 = 3,
    /// VP9.
    Vp9 = 4,
    /// H.265 (Annex-B).
    H265 = 5,
}

impl VideoCodec {
    /// The codec for a wire value, if known.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => VideoCodec::Mjpeg,
            2 => VideoCodec::Vp8,
            3 => VideoCodec::H264,
            4 => VideoCodec::Vp9,
            5 => VideoCodec::H265,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The display channel cap bit with which a client says it can decode this codec.
    pub fn display_cap(self) -> u32 {
        match self {
            VideoCodec::Mjpeg => DISPLAY_CAP_CODEC_MJPEG,
            VideoCodec::Vp8 => DISPLAY_CAP_CODEC_VP8,
            VideoCodec::H264 => DISPLAY_CAP_CODEC_H264,
            VideoCodec::Vp9 => DISPLAY_CAP_CODEC_VP9,
            VideoCodec::H265 => DISPLAY_CAP_CODEC_H265,
        }
    }
}

/// A capability bitmap: bit `n` lives in word `n / 32`, mask `1 << (n % 32)` (§1.4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Caps(Vec<u32>);

impl Caps {
    /// The largest bit [`Caps::set`] accepts (keeps the bitmap small).
    pub const MAX_BIT: u32 = 1023;

    /// An empty set (zero words on the wire).
    pub fn new() -> Self {
        Caps(Vec::new())
    }

    /// A set holding exactly these words.
    pub fn from_words(words: Vec<u32>) -> Self {
        Caps(words)
    }

    /// A set with the given bits set.
    pub fn from_bits(bits: &[u32]) -> Self {
        let mut c = Caps::new();
        for &b in bits {
            c.set(b);
        }
        c
    }

    /// Whether bit `bit` is set.
    pub fn has(&self, bit: u32) -> bool {
        let word = usize::try_from(bit / 32).unwrap_or(usize::MAX);
        self.0
            .get(word)
            .is_some_and(|w| w & (1u32 << (bit % 32)) != 0)
    }

    /// Sets bit `bit`, growing the word list as needed. Bits above [`Caps::MAX_BIT`] are ignored.
    pub fn set(&mut self, bit: u32) {
        if bit > Self::MAX_BIT {
            return;
        }
        let word = (bit / 32) as usize;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        if let Some(w) = self.0.get_mut(word) {
            *w |= 1u32 << (bit % 32);
        }
    }

    /// Builder form of [`Caps::set`].
    pub fn with(mut self, bit: u32) -> Self {
        self.set(bit);
        self
    }

    /// The words as sent on the wire.
    pub fn words(&self) -> &[u32] {
        &self.0
    }

    /// Number of u32 words.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no words at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---- capability bits (§1.5) ----

/// Common cap: the client sends an auth-mechanism word before the ticket.
pub const COMMON_CAP_PROTOCOL_AUTH_SELECTION: u32 = 0;
/// Common cap: RSA ticket authentication.
pub const COMMON_CAP_AUTH_SPICE: u32 = 1;
/// Common cap: SASL authentication (do not advertise: the client would pick it).
pub const COMMON_CAP_AUTH_SASL: u32 = 2;
/// Common cap: 6-byte mini data header.
pub const COMMON_CAP_MINI_HEADER: u32 = 3;

/// Main cap: semi-seamless migration.
pub const MAIN_CAP_SEMI_SEAMLESS_MIGRATE: u32 = 0;
/// Main cap: NAME and UUID messages.
pub const MAIN_CAP_NAME_AND_UUID: u32 = 1;
/// Main cap: AGENT_CONNECTED_TOKENS.
pub const MAIN_CAP_AGENT_CONNECTED_TOKENS: u32 = 2;
/// Main cap: seamless migration.
pub const MAIN_CAP_SEAMLESS_MIGRATE: u32 = 3;

/// Display cap: client accepts STREAM_DATA_SIZED.
pub const DISPLAY_CAP_SIZED_STREAM: u32 = 0;
/// Display cap: MONITORS_CONFIG (server: "I will send it").
pub const DISPLAY_CAP_MONITORS_CONFIG: u32 = 1;
/// Display cap: DRAW_COMPOSITE.
pub const DISPLAY_CAP_COMPOSITE: u32 = 2;
/// Display cap: A8 surfaces.
pub const DISPLAY_CAP_A8_SURFACE: u32 = 3;
/// Display cap: STREAM_REPORT / STREAM_ACTIVATE_REPORT.
pub const DISPLAY_CAP_STREAM_REPORT: u32 = 4;
/// Display cap: LZ4 images (client).
pub const DISPLAY_CAP_LZ4_COMPRESSION: u32 = 5;
/// Display cap: server accepts PREFERRED_COMPRESSION.
pub const DISPLAY_CAP_PREF_COMPRESSION: u32 = 6;
/// Display cap: GL scanout (client; only usable on a Unix socket).
pub const DISPLAY_CAP_GL_SCANOUT: u32 = 7;
/// Display cap: client knows codecs other than MJPEG.
pub const DISPLAY_CAP_MULTI_CODEC: u32 = 8;
/// Display cap: client decodes MJPEG.
pub const DISPLAY_CAP_CODEC_MJPEG: u32 = 9;
/// Display cap: client decodes VP8.
pub const DISPLAY_CAP_CODEC_VP8: u32 = 10;
/// Display cap: client decodes H.264.
pub const DISPLAY_CAP_CODEC_H264: u32 = 11;
/// Display cap: server accepts PREFERRED_VIDEO_CODEC_TYPE.
pub const DISPLAY_CAP_PREF_VIDEO_CODEC_TYPE: u32 = 12;
/// Display cap: client decodes VP9.
pub const DISPLAY_CAP_CODEC_VP9: u32 = 13;
/// Display cap: client decodes H.265.
pub const DISPLAY_CAP_CODEC_H265: u32 = 14;

/// Inputs cap (server): client may send KEY_SCANCODE.
pub const INPUTS_CAP_KEY_SCANCODE: u32 = 0;

/// Playback cap: CELT 0.5.1.
pub const PLAYBACK_CAP_CELT_0_5_1: u32 = 0;
/// Playback cap: volume.
pub const PLAYBACK_CAP_VOLUME: u32 = 1;
/// Playback cap: latency.
pub const PLAYBACK_CAP_LATENCY: u32 = 2;
/// Playback cap: Opus.
pub const PLAYBACK_CAP_OPUS: u32 = 3;

/// Auth mechanism word for RSA tickets (equals [`COMMON_CAP_AUTH_SPICE`]).
pub const AUTH_MECHANISM_SPICE: u32 = 1;
/// Auth mechanism word for SASL (equals [`COMMON_CAP_AUTH_SASL`]).
pub const AUTH_MECHANISM_SASL: u32 = 2;

// ---- message type numbers (§2.2, §3.1, §4.1, §5, §6) ----

/// Base messages server → client, valid on every channel.
pub mod base_server {
    /// MIGRATE.
    pub const MIGRATE: u16 = 1;
    /// MIGRATE_DATA.
    pub const MIGRATE_DATA: u16 = 2;
    /// SET_ACK.
    pub const SET_ACK: u16 = 3;
    /// PING.
    pub const PING: u16 = 4;
    /// WAIT_FOR_CHANNELS.
    pub const WAIT_FOR_CHANNELS: u16 = 5;
    /// DISCONNECTING.
    pub const DISCONNECTING: u16 = 6;
    /// NOTIFY.
    pub const NOTIFY: u16 = 7;
    /// LIST (sub-message list).
    pub const LIST: u16 = 8;
}

/// Base messages client → server, valid on every channel.
pub mod base_client {
    /// ACK_SYNC.
    pub const ACK_SYNC: u16 = 1;
    /// ACK.
    pub const ACK: u16 = 2;
    /// PONG.
    pub const PONG: u16 = 3;
    /// MIGRATE_FLUSH_MARK.
    pub const MIGRATE_FLUSH_MARK: u16 = 4;
    /// MIGRATE_DATA.
    pub const MIGRATE_DATA: u16 = 5;
    /// DISCONNECTING.
    pub const DISCONNECTING: u16 = 6;
}

/// Main channel, server → client.
pub mod main_server {
    /// MIGRATE_BEGIN.
    pub const MIGRATE_BEGIN: u16 = 101;
    /// MIGRATE_CANCEL.
    pub const MIGRATE_CANCEL: u16 = 102;
    /// INIT.
    pub const INIT: u16 = 103;
    /// CHANNELS_LIST.
    pub const CHANNELS_LIST: u16 = 104;
    /// MOUSE_MODE.
    pub const MOUSE_MODE: u16 = 105;
    /// MULTI_MEDIA_TIME.
    pub const MULTI_MEDIA_TIME: u16 = 106;
    /// AGENT_CONNECTED.
    pub const AGENT_CONNECTED: u16 = 107;
    /// AGENT_DISCONNECTED.
    pub const AGENT_DISCONNECTED: u16 = 108;
    /// AGENT_DATA.
    pub const AGENT_DATA: u16 = 109;
    /// AGENT_TOKEN.
    pub const AGENT_TOKEN: u16 = 110;
    /// MIGRATE_SWITCH_HOST.
    pub const MIGRATE_SWITCH_HOST: u16 = 111;
    /// MIGRATE_END.
    pub const MIGRATE_END: u16 = 112;
    /// NAME.
    pub const NAME: u16 = 113;
    /// UUID.
    pub const UUID: u16 = 114;
    /// AGENT_CONNECTED_TOKENS.
    pub const AGENT_CONNECTED_TOKENS: u16 = 115;
}

/// Main channel, client → server.
pub mod main_client {
    /// CLIENT_INFO.
    pub const CLIENT_INFO: u16 = 101;
    /// MIGRATE_CONNECTED.
    pub const MIGRATE_CONNECTED: u16 = 102;
    /// MIGRATE_CONNECT_ERROR.
    pub const MIGRATE_CONNECT_ERROR: u16 = 103;
    /// ATTACH_CHANNELS.
    pub const ATTACH_CHANNELS: u16 = 104;
    /// MOUSE_MODE_REQUEST.
    pub const MOUSE_MODE_REQUEST: u16 = 105;
    /// AGENT_START.
    pub const AGENT_START: u16 = 106;
    /// AGENT_DATA.
    pub const AGENT_DATA: u16 = 107;
    /// AGENT_TOKEN.
    pub const AGENT_TOKEN: u16 = 108;
}

/// Display channel, server → client.
pub mod display_server {
    /// MODE (legacy).
    pub const MODE: u16 = 101;
    /// MARK.
    pub const MARK: u16 = 102;
    /// RESET.
    pub const RESET: u16 = 103;
    /// COPY_BITS.
    pub const COPY_BITS: u16 = 104;
    /// INVAL_LIST.
    pub const INVAL_LIST: u16 = 105;
    /// INVAL_ALL_PIXMAPS.
    pub const INVAL_ALL_PIXMAPS: u16 = 106;
    /// INVAL_PALETTE.
    pub const INVAL_PALETTE: u16 = 107;
    /// INVAL_ALL_PALETTES.
    pub const INVAL_ALL_PALETTES: u16 = 108;
    /// STREAM_CREATE.
    pub const STREAM_CREATE: u16 = 122;
    /// STREAM_DATA.
    pub const STREAM_DATA: u16 = 123;
    /// STREAM_CLIP.
    pub const STREAM_CLIP: u16 = 124;
    /// STREAM_DESTROY.
    pub const STREAM_DESTROY: u16 = 125;
    /// STREAM_DESTROY_ALL.
    pub const STREAM_DESTROY_ALL: u16 = 126;
    /// DRAW_FILL.
    pub const DRAW_FILL: u16 = 302;
    /// DRAW_OPAQUE.
    pub const DRAW_OPAQUE: u16 = 303;
    /// DRAW_COPY.
    pub const DRAW_COPY: u16 = 304;
    /// SURFACE_CREATE.
    pub const SURFACE_CREATE: u16 = 314;
    /// SURFACE_DESTROY.
    pub const SURFACE_DESTROY: u16 = 315;
    /// STREAM_DATA_SIZED.
    pub const STREAM_DATA_SIZED: u16 = 316;
    /// MONITORS_CONFIG.
    pub const MONITORS_CONFIG: u16 = 317;
    /// STREAM_ACTIVATE_REPORT.
    pub const STREAM_ACTIVATE_REPORT: u16 = 319;
    /// GL_SCANOUT_UNIX.
    pub const GL_SCANOUT_UNIX: u16 = 320;
    /// GL_DRAW.
    pub const GL_DRAW: u16 = 321;
}

/// Display channel, client → server.
pub mod display_client {
    /// INIT.
    pub const INIT: u16 = 101;
    /// STREAM_REPORT.
    pub const STREAM_REPORT: u16 = 102;
    /// PREFERRED_COMPRESSION.
    pub const PREFERRED_COMPRESSION: u16 = 103;
    /// GL_DRAW_DONE.
    pub const GL_DRAW_DONE: u16 = 104;
    /// PREFERRED_VIDEO_CODEC_TYPE.
    pub const PREFERRED_VIDEO_CODEC_TYPE: u16 = 105;
}

/// Inputs channel, server → client.
pub mod inputs_server {
    /// INIT.
    pub const INIT: u16 = 101;
    /// KEY_MODIFIERS.
    pub const KEY_MODIFIERS: u16 = 102;
    /// MOUSE_MOTION_ACK.
    pub const MOUSE_MOTION_ACK: u16 = 111;
}

/// Inputs channel, client → server.
pub mod inputs_client {
    /// KEY_DOWN.
    pub const KEY_DOWN: u16 = 101;
    /// KEY_UP.
    pub const KEY_UP: u16 = 102;
    /// KEY_MODIFIERS.
    pub const KEY_MODIFIERS: u16 = 103;
    /// KEY_SCANCODE.
    pub const KEY_SCANCODE: u16 = 104;
    /// MOUSE_MOTION.
    pub const MOUSE_MOTION: u16 = 111;
    /// MOUSE_POSITION.
    pub const MOUSE_POSITION: u16 = 112;
    /// MOUSE_PRESS.
    pub const MOUSE_PRESS: u16 = 113;
    /// MOUSE_RELEASE.
    pub const MOUSE_RELEASE: u16 = 114;
}

/// Cursor channel, server → client.
pub mod cursor_server {
    /// INIT.
    pub const INIT: u16 = 101;
    /// RESET.
    pub const RESET: u16 = 102;
    /// SET.
    pub const SET: u16 = 103;
    /// MOVE.
    pub const MOVE: u16 = 104;
    /// HIDE.
    pub const HIDE: u16 = 105;
    /// TRAIL.
    pub const TRAIL: u16 = 106;
    /// INVAL_ONE.
    pub const INVAL_ONE: u16 = 107;
    /// INVAL_ALL.
    pub const INVAL_ALL: u16 = 108;
}

// ---- misc enums and flags ----

/// Mouse mode: server (relative motion).
pub const MOUSE_MODE_SERVER: u16 = 1;
/// Mouse mode: client (absolute positions).
pub const MOUSE_MODE_CLIENT: u16 = 2;

/// Surface format 32-bit xRGB (use this one).
pub const SURFACE_FMT_32_XRGB: u32 = 32;
/// Surface format 32-bit ARGB.
pub const SURFACE_FMT_32_ARGB: u32 = 96;
/// Surface flag: primary surface.
pub const SURFACE_FLAG_PRIMARY: u32 = 1;
/// Surface flag: streaming mode hint (only for MULTI_CODEC clients).
pub const SURFACE_FLAG_STREAMING_MODE: u32 = 2;

/// Image type BITMAP.
pub const IMAGE_TYPE_BITMAP: u8 = 0;
/// Image type JPEG.
pub const IMAGE_TYPE_JPEG: u8 = 105;
/// Image type LZ4.
pub const IMAGE_TYPE_LZ4: u8 = 109;

/// Bitmap format 16-bit x1r5g5b5.
pub const BITMAP_FMT_16BIT: u8 = 6;
/// Bitmap format 24-bit (B, G, R).
pub const BITMAP_FMT_24BIT: u8 = 7;
/// Bitmap format 32-bit (B, G, R, X).
pub const BITMAP_FMT_32BIT: u8 = 8;
/// Bitmap format RGBA (B, G, R, A).
pub const BITMAP_FMT_RGBA: u8 = 9;
/// Bitmap flag: palette comes from the cache (the palette field is a u64 id).
pub const BITMAP_FLAG_PAL_FROM_CACHE: u8 = 2;
/// Bitmap flag: first row is the top row.
pub const BITMAP_FLAG_TOP_DOWN: u8 = 4;

/// Rop descriptor OP_PUT.
pub const ROPD_OP_PUT: u16 = 8;
/// Scale mode: interpolate.
pub const IMAGE_SCALE_MODE_INTERPOLATE: u8 = 0;
/// Scale mode: nearest.
pub const IMAGE_SCALE_MODE_NEAREST: u8 = 1;

/// Stream flag: frames are top-down (always set it).
pub const STREAM_FLAG_TOP_DOWN: u8 = 1;

/// Cursor flag: no cursor (hidden; no header follows).
pub const CURSOR_FLAG_NONE: u16 = 1;
/// Cursor flag: cache this shape.
pub const CURSOR_FLAG_CACHE_ME: u16 = 2;
/// Cursor flag: shape comes from the cache.
pub const CURSOR_FLAG_FROM_CACHE: u16 = 4;
/// Cursor type ALPHA (B, G, R, A; top-down).
pub const CURSOR_TYPE_ALPHA: u8 = 0;
/// Cursor type MONO.
pub const CURSOR_TYPE_MONO: u8 = 1;

/// Keyboard modifier: scroll lock.
pub const KEY_MODIFIER_SCROLL_LOCK: u16 = 1;
/// Keyboard modifier: num lock.
pub const KEY_MODIFIER_NUM_LOCK: u16 = 2;
/// Keyboard modifier: caps lock.
pub const KEY_MODIFIER_CAPS_LOCK: u16 = 4;

/// Mouse button: left.
pub const MOUSE_BUTTON_LEFT: u8 = 1;
/// Mouse button: middle.
pub const MOUSE_BUTTON_MIDDLE: u8 = 2;
/// Mouse button: right.
pub const MOUSE_BUTTON_RIGHT: u8 = 3;
/// Mouse button: wheel up.
pub const MOUSE_BUTTON_UP: u8 = 4;
/// Mouse button: wheel down.
pub const MOUSE_BUTTON_DOWN: u8 = 5;
/// Mouse button: side.
pub const MOUSE_BUTTON_SIDE: u8 = 6;
/// Mouse button: extra.
pub const MOUSE_BUTTON_EXTRA: u8 = 7;
/// buttons_state mask: left.
pub const MOUSE_BUTTON_MASK_LEFT: u16 = 1;
/// buttons_state mask: middle.
pub const MOUSE_BUTTON_MASK_MIDDLE: u16 = 2;
/// buttons_state mask: right.
pub const MOUSE_BUTTON_MASK_RIGHT: u16 = 4;
/// buttons_state mask: side.
pub const MOUSE_BUTTON_MASK_SIDE: u16 = 32;
/// buttons_state mask: extra.
pub const MOUSE_BUTTON_MASK_EXTRA: u16 = 64;

/// NOTIFY severity: info.
pub const NOTIFY_SEVERITY_INFO: u32 = 0;
/// NOTIFY severity: warning.
pub const NOTIFY_SEVERITY_WARN: u32 = 1;
/// NOTIFY severity: error.
pub const NOTIFY_SEVERITY_ERROR: u32 = 2;
/// NOTIFY visibility: low.
pub const NOTIFY_VISIBILITY_LOW: u32 = 0;
/// NOTIFY visibility: medium.
pub const NOTIFY_VISIBILITY_MEDIUM: u32 = 1;
/// NOTIFY visibility: high.
pub const NOTIFY_VISIBILITY_HIGH: u32 = 2;
