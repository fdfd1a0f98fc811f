//! Link stage (§1): link header, link message/reply, the server-side [`LinkAcceptor`] state
//! machine and client-side helpers.
//!
//! Server flow:
//!
//! 1. feed received bytes to [`LinkAcceptor::feed`] until it yields [`LinkEvent::Link`];
//! 2. either send [`LinkAcceptor::error_reply`] and close, or send [`LinkAcceptor::reply`];
//! 3. keep feeding until [`LinkEvent::Ticket`]; decrypt and check it;
//! 4. send [`link_result`]; the channel is now in the data stage (any bytes left after the
//!    ticket already belong to it).

use crate::consts::{Caps, LinkError, AUTH_MECHANISM_SPICE, COMMON_CAP_PROTOCOL_AUTH_SELECTION};
use crate::error::Error;
use crate::wire::{len_u32, put_u32, put_u8, Reader};

/// `"REDQ"`, the link magic.
pub const LINK_MAGIC: [u8; 4] = *b"REDQ";
/// The only protocol major version spice-gtk accepts.
pub const LINK_MAJOR_VERSION: u32 = 2;
/// The protocol minor version we send.
pub const LINK_MINOR_VERSION: u32 = 2;
/// Size of [`LinkHeader`] on the wire.
pub const LINK_HEADER_LEN: usize = 16;
/// Fixed part of [`LinkMess`] (before the capability words).
pub const LINK_MESS_LEN: usize = 18;
/// Fixed part of [`LinkReply`] (before the capability words).
pub const LINK_REPLY_LEN: usize = 178;
/// Smallest link message body a server accepts.
pub const LINK_MIN_SIZE: u32 = 18;
/// Largest link message body a server accepts (and the bound on a reply a client accepts).
pub const LINK_MAX_SIZE: u32 = 4096;
/// Length of the DER SubjectPublicKeyInfo of an RSA-1024 key.
pub const PUB_KEY_LEN: usize = 162;
/// Length of the RSA-OAEP encrypted ticket.
pub const TICKET_LEN: usize = 128;

/// SpiceLinkHeader (16 bytes): magic, major, minor, size of what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHeader {
    /// Major version (2).
    pub major: u32,
    /// Minor version (2).
    pub minor: u32,
    /// Number of bytes that follow the header.
    pub size: u32,
}

impl LinkHeader {
    /// A version 2.2 header announcing `size` bytes.
    pub fn new(size: u32) -> Self {
        LinkHeader {
            major: LINK_MAJOR_VERSION,
            minor: LINK_MINOR_VERSION,
            size,
        }
    }

    /// The 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; LINK_HEADER_LEN] {
        let mut b = [0u8; LINK_HEADER_LEN];
        b[0..4].copy_from_slice(&LINK_MAGIC);
        b[4..8].copy_from_slice(&self.major.to_le_bytes());
        b[8..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    /// Appends the 16 wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// Decodes the first 16 bytes of `input`, checking the magic and the major version.
    pub fn decode(input: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(input, "link header");
        let magic: [u8; 4] = r.array_n()?;
        if magic != LINK_MAGIC {
            return Err(Error::InvalidMagic);
        }
        let major = r.u32()?;
        let minor = r.u32()?;
        let size = r.u32()?;
        if major != LINK_MAJOR_VERSION {
            return Err(Error::VersionMismatch(major));
        }
        Ok(LinkHeader { major, minor, size })
    }
}

fn encode_caps(out: &mut Vec<u8>, caps: &Caps) {
    for w in caps.words() {
        put_u32(out, *w);
    }
}

/// Reads the two cap lists of a link message/reply body, validating counts and offset.
fn decode_caps(
    body: &[u8],
    fixed_len: usize,
    num_common: u32,
    num_channel: u32,
    caps_offset: u32,
) -> Result<(Caps, Caps), Error> {
    if num_common == 0 && num_channel == 0 {
        // Like spice-server and spice-gtk: the offset only matters when there are caps
        // (error replies carry an offset of 0).
        return Ok((Caps::new(), Caps::new()));
    }
    let offset = usize::try_from(caps_offset).map_err(|_| Error::InvalidData("caps offset"))?;
    if offset < fixed_len {
        return Err(Error::InvalidData("caps offset inside the fixed part"));
    }
    let words = u64::from(num_common) + u64::from(num_channel);
    let end = words
        .checked_mul(4)
        .and_then(|n| n.checked_add(offset as u64))
        .ok_or(Error::InvalidData("caps overflow"))?;
    if end > body.len() as u64 {
        return Err(Error::InvalidData("caps exceed the message size"));
    }
    let caps_bytes = body
        .get(offset..)
        .ok_or(Error::InvalidData("caps offset"))?;
    let mut r = Reader::new(caps_bytes, "link caps");
    let mut read_list = |n: u32| -> Result<Caps, Error> {
        let n = n as usize;
        r.ensure_items(n, 4)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(r.u32()?);
        }
        Ok(Caps::from_words(v))
    };
    let common = read_list(num_common)?;
    let channel = read_list(num_channel)?;
    Ok((common, channel))
}

/// SpiceLinkMess (client → server): which channel to link, plus capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMess {
    /// 0 for the first main channel, otherwise the session id from MAIN_INIT.
    pub connection_id: u32,
    /// Channel type (see [`crate::ChannelType`]); kept raw so unknown types can be refused.
    pub channel_type: u8,
    /// Channel id.
    pub channel_id: u8,
    /// Common capabilities.
    pub common_caps: Caps,
    /// Channel-specific capabilities.
    pub channel_caps: Caps,
}

impl LinkMess {
    /// Length of the body (fixed part plus caps).
    pub fn body_len(&self) -> usize {
        LINK_MESS_LEN + 4 * (self.common_caps.len() + self.channel_caps.len())
    }

    /// Appends the body (no link header); caps_offset is 18.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.connection_id);
        put_u8(out, self.channel_type);
        put_u8(out, self.channel_id);
        put_u32(out, len_u32(self.common_caps.len()));
        put_u32(out, len_u32(self.channel_caps.len()));
        put_u32(out, LINK_MESS_LEN as u32);
        encode_caps(out, &self.common_caps);
        encode_caps(out, &self.channel_caps);
    }

    /// Link header followed by the body: what a client sends first.
    pub fn encode_with_header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LINK_HEADER_LEN + self.body_len());
        LinkHeader::new(len_u32(self.body_len())).encode(&mut out);
        self.encode(&mut out);
        out
    }

    /// Decodes a body (the `size` bytes after the link header).
    pub fn decode(body: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body, "link message");
        let connection_id = r.u32()?;
        let channel_type = r.u8()?;
        let channel_id = r.u8()?;
        let num_common = r.u32()?;
        let num_channel = r.u32()?;
        let caps_offset = r.u32()?;
        let (common_caps, channel_caps) =
            decode_caps(body, LINK_MESS_LEN, num_common, num_channel, caps_offset)?;
        Ok(LinkMess {
            connection_id,
            channel_type,
            channel_id,
            common_caps,
            channel_caps,
        })
    }
}

/// SpiceLinkReply (server → client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReply {
    /// SpiceLinkErr as a raw value (0 = OK; see [`LinkError`]).
    pub error: u32,
    /// DER SubjectPublicKeyInfo of an RSA-1024 key (all zero in error replies).
    pub pub_key: [u8; PUB_KEY_LEN],
    /// Server common capabilities.
    pub common_caps: Caps,
    /// Server channel capabilities.
    pub channel_caps: Caps,
}

impl LinkReply {
    /// Length of the body (fixed part plus caps).
    pub fn body_len(&self) -> usize {
        LINK_REPLY_LEN + 4 * (self.common_caps.len() + self.channel_caps.len())
    }

    /// Appends the body (no link header); caps_offset is 178.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.error);
        out.extend_from_slice(&self.pub_key);
        put_u32(out, len_u32(self.common_caps.len()));
        put_u32(out, len_u32(self.channel_caps.len()));
        put_u32(out, LINK_REPLY_LEN as u32);
        encode_caps(out, &self.common_caps);
        encode_caps(out, &self.channel_caps);
    }

    /// Link header followed by the body: what a server sends after the link message.
    pub fn encode_with_header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LINK_HEADER_LEN + self.body_len());
        LinkHeader::new(len_u32(self.body_len())).encode(&mut out);
        self.encode(&mut out);
        out
    }

    /// Decodes a body (the `size` bytes after the link header).
    pub fn decode(body: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body, "link reply");
        let error = r.u32()?;
        let pub_key: [u8; PUB_KEY_LEN] = r.array_n()?;
        let num_common = r.u32()?;
        let num_channel = r.u32()?;
        let caps_offset = r.u32()?;
        let (common_caps, channel_caps) =
            decode_caps(body, LINK_REPLY_LEN, num_common, num_channel, caps_offset)?;
        Ok(LinkReply {
            error,
            pub_key,
            common_caps,
            channel_caps,
        })
    }

    /// The error as a [`LinkError`], if it is a known value.
    pub fn link_error(&self) -> Option<LinkError> {
        LinkError::from_u32(self.error)
    }
}

/// What [`LinkAcceptor::feed`] completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The client's link message arrived; answer with [`LinkAcceptor::reply`] or
    /// [`LinkAcceptor::error_reply`].
    Link(LinkMess),
    /// The auth mechanism word (when auth selection was advertised) and the encrypted ticket.
    Ticket {
        /// The mechanism word, `Some(1)` when PROTOCOL_AUTH_SELECTION was advertised.
        mechanism: Option<u32>,
        /// The 128-byte RSA-OAEP ciphertext.
        ticket: [u8; TICKET_LEN],
    },
}

/// A link-stage failure: what to send back and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link failed ({code:?}): {error}")]
pub struct LinkFailure {
    /// The code to send to the client: as an [`LinkAcceptor::error_reply`] before the reply
    /// was sent, otherwise as a [`link_result`].
    pub code: LinkError,
    /// Why.
    pub error: Error,
}

impl LinkFailure {
    fn from_error(error: Error) -> Self {
        let code = match error {
            Error::InvalidMagic => LinkError::InvalidMagic,
            Error::VersionMismatch(_) => LinkError::VersionMismatch,
            _ => LinkError::InvalidData,
        };
        LinkFailure { code, error }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AwaitLink,
    AwaitReply,
    AwaitTicket { auth_selection: bool },
    Done,
    Failed(LinkFailure),
}

/// Server-side, sans-io link-stage state machine for one channel connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAcceptor {
    state: State,
}

impl Default for LinkAcceptor {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkAcceptor {
    /// A fresh acceptor waiting for the link header.
    pub fn new() -> Self {
        LinkAcceptor {
            state: State::AwaitLink,
        }
    }

    /// Whether the ticket has been received (the link stage is over apart from the result).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the bytes received so far, starting at the first not-yet-consumed byte.
    ///
    /// Returns how many bytes were consumed and the event completed, if any. Incomplete input
    /// gives `Ok((0, None))`; so does any input while waiting for [`LinkAcceptor::reply`] and
    /// after the ticket (those bytes are not the acceptor's). Once failed, every later call
    /// returns the same failure.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<LinkEvent>), LinkFailure> {
        let res = match self.state {
            State::AwaitLink => self.feed_link(input),
            State::AwaitTicket { auth_selection } => self.feed_ticket(input, auth_selection),
            State::AwaitReply | State::Done => Ok((0, None)),
            State::Failed(ref f) => return Err(f.clone()),
        };
        if let Err(f) = &res {
            self.state = State::Failed(f.clone());
        }
        res
    }

    fn feed_link(&mut self, input: &[u8]) -> Result<(usize, Option<LinkEvent>), LinkFailure> {
        // Reject a bad magic as soon as its first bytes are visible.
        let n = input.len().min(LINK_MAGIC.len());
        if input.get(..n) != LINK_MAGIC.get(..n) {
            return Err(LinkFailure::from_error(Error::InvalidMagic));
        }
        if input.len() < LINK_HEADER_LEN {
            return Ok((0, None));
        }
        let header = LinkHeader::decode(input).map_err(LinkFailure::from_error)?;
        if header.size < LINK_MIN_SIZE || header.size > LINK_MAX_SIZE {
            return Err(LinkFailure::from_error(Error::InvalidData(
                "link message size out of range",
            )));
        }
        let total = LINK_HEADER_LEN + header.size as usize;
        let Some(body) = input.get(LINK_HEADER_LEN..total) else {
            return Ok((0, None));
        };
        let mess = LinkMess::decode(body).map_err(|e| {
            LinkFailure::from_error(match e {
                Error::Truncated { .. } => Error::InvalidData("link message truncated"),
                other => other,
            })
        })?;
        self.state = State::AwaitReply;
        Ok((total, Some(LinkEvent::Link(mess))))
    }

    fn feed_ticket(
        &mut self,
        input: &[u8],
        auth_selection: bool,
    ) -> Result<(usize, Option<LinkEvent>), LinkFailure> {
        let mut r = Reader::new(input, "ticket");
        let mechanism = if auth_selection {
            let Ok(m) = r.u32() else {
                return Ok((0, None));
            };
            // Fail on the word alone: a SASL client waits for us and never sends a ticket.
            if m != AUTH_MECHANISM_SPICE {
                return Err(LinkFailure::from_error(Error::InvalidData(
                    "unsupported auth mechanism",
                )));
            }
            Some(m)
        } else {
            None
        };
        let Ok(ticket) = r.array_n::<TICKET_LEN>() else {
            return Ok((0, None));
        };
        let consumed = if auth_selection { 4 } else { 0 } + TICKET_LEN;
        self.state = State::Done;
        Ok((consumed, Some(LinkEvent::Ticket { mechanism, ticket })))
    }

    /// After a [`LinkEvent::Link`]: the bytes of LinkHeader + LinkReply(OK) to send.
    ///
    /// Remembers whether `common_caps` advertises PROTOCOL_AUTH_SELECTION, which decides
    /// whether a mechanism word precedes the ticket. Advertise
    /// `COMMON_CAP_PROTOCOL_AUTH_SELECTION | AUTH_SPICE | MINI_HEADER` (0x0B), never SASL.
    pub fn reply(
        &mut self,
        pub_key: &[u8; PUB_KEY_LEN],
        common_caps: &Caps,
        channel_caps: &Caps,
    ) -> Vec<u8> {
        let reply = LinkReply {
            error: LinkError::Ok.as_u32(),
            pub_key: *pub_key,
            common_caps: common_caps.clone(),
            channel_caps: channel_caps.clone(),
        };
        self.state = State::AwaitTicket {
            auth_selection: common_caps.has(COMMON_CAP_PROTOCOL_AUTH_SELECTION),
        };
        reply.encode_with_header()
    }

    /// A full LinkHeader + LinkReply with `error` set and every other field (caps_offset
    /// included) zero, as spice-server sends it.
    pub fn error_reply(code: LinkError) -> Vec<u8> {
        let mut out = Vec::with_capacity(LINK_HEADER_LEN + LINK_REPLY_LEN);
        LinkHeader::new(LINK_REPLY_LEN as u32).encode(&mut out);
        put_u32(&mut out, code.as_u32());
        out.resize(LINK_HEADER_LEN + LINK_REPLY_LEN, 0);
        out
    }
}

/// The 4-byte link result the server sends after checking the ticket.
pub fn link_result(code: LinkError) -> [u8; 4] {
    code.as_u32().to_le_bytes()
}

// ---- client side (for test clients) ----

/// Client side: decodes the server's LinkHeader + LinkReply from the start of `input`.
///
/// `Ok(None)` means more bytes are needed; otherwise returns the bytes consumed and the reply
/// (whose `error` may be non-zero). A reply body below 178 or above 4096 bytes is an error.
pub fn decode_link_reply(input: &[u8]) -> Result<Option<(usize, LinkReply)>, Error> {
    let n = input.len().min(LINK_MAGIC.len());
    if input.get(..n) != LINK_MAGIC.get(..n) {
        return Err(Error::InvalidMagic);
    }
    if input.len() < LINK_HEADER_LEN {
        return Ok(None);
    }
    let header = LinkHeader::decode(input)?;
    if (header.size as usize) < LINK_REPLY_LEN || header.size > LINK_MAX_SIZE {
        return Err(Error::InvalidData("link reply size out of range"));
    }
    let total = LINK_HEADER_LEN + header.size as usize;
    let Some(body) = input.get(LINK_HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((total, LinkReply::decode(body)?)))
}

/// Client side: the bytes sent after the reply: the mechanism word 1 (only when the server
/// advertised PROTOCOL_AUTH_SELECTION) followed by the 128-byte ticket.
pub fn auth_bytes(server_common_caps: &Caps, ticket: &[u8; TICKET_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + TICKET_LEN);
    if server_common_caps.has(COMMON_CAP_PROTOCOL_AUTH_SELECTION) {
        put_u32(&mut out, AUTH_MECHANISM_SPICE);
    }
    out.extend_from_slice(ticket);
    out
}

/// Client side: the link result word at the start of `input`, or `None` if fewer than 4
/// bytes are available. Compare with [`LinkError::from_u32`].
pub fn decode_link_result(input: &[u8]) -> Option<u32> {
    let b: [u8; 4] = input.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}
