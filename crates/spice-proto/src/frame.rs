//! Data-stage framing with the 6-byte mini header (§2.1) and the ACK window (§2.3).

use crate::error::Error;
use crate::msg::{ClientMsg, ServerMsg};

/// Size of the mini data header (`type:u16, size:u32`).
pub const MINI_HEADER_LEN: usize = 6;

/// Finds the first complete message in `input`.
///
/// Returns `Ok(None)` while the header or body is incomplete, otherwise
/// `(type, body_start, total_consumed)`: the body is `input[body_start..total_consumed]`
/// (`body_start` is always [`MINI_HEADER_LEN`]). A body size above `max_body` is
/// [`Error::TooLarge`] as soon as the header is visible, which bounds the server's buffers.
pub fn decode_frame(input: &[u8], max_body: usize) -> Result<Option<(u16, usize, usize)>, Error> {
    let Some(header) = input.get(..MINI_HEADER_LEN) else {
        return Ok(None);
    };
    let ty = u16::from_le_bytes([header[0], header[1]]);
    let size = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > max_body {
        return Err(Error::TooLarge {
            size,
            max: max_body,
        });
    }
    let Some(total) = MINI_HEADER_LEN.checked_add(size) else {
        return Err(Error::TooLarge {
            size,
            max: max_body,
        });
    };
    if input.len() < total {
        return Ok(None);
    }
    Ok(Some((ty, MINI_HEADER_LEN, total)))
}

/// Appends a mini header for a message of type `ty` with a `size`-byte body.
pub fn encode_header(ty: u16, size: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
}

/// Server-side ACK window bookkeeping (spice-server policy, §2.3).
///
/// Call [`AckWindow::start`] and send the returned SET_ACK, call [`AckWindow::on_sent`] for
/// every later message, feed ACK_SYNC/ACK to [`AckWindow::on_client_msg`], and stop sending
/// optional traffic (e.g. video frames) while [`AckWindow::is_congested`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckWindow {
    window: u32,
    generation: u32,
    client_generation: u32,
    in_flight: u32,
}

impl AckWindow {
    /// spice-server's window (CLIENT_ACK_WINDOW).
    pub const DEFAULT_WINDOW: u32 = 20;

    /// A window of `window` messages (0 disables acking on the client).
    pub fn new(window: u32) -> Self {
        AckWindow {
            window,
            generation: 0,
            client_generation: 0,
            in_flight: 0,
        }
    }

    /// Starts a new generation; send the returned SET_ACK.
    pub fn start(&mut self) -> ServerMsg {
        self.generation = self.generation.wrapping_add(1);
        self.in_flight = 0;
        ServerMsg::SetAck {
            generation: self.generation,
            window: self.window,
        }
    }

    /// Counts one message sent after the SET_ACK.
    pub fn on_sent(&mut self) {
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// Handles ACK_SYNC and ACK; other messages are ignored.
    pub fn on_client_msg(&mut self, msg: &ClientMsg) {
        match msg {
            ClientMsg::AckSync { generation } => self.client_generation = *generation,
            ClientMsg::Ack if self.client_generation == self.generation => {
                self.in_flight = self.in_flight.saturating_sub(self.window);
            }
            _ => {}
        }
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Whether more than two windows are unacknowledged (spice-server stops sending then).
    pub fn is_congested(&self) -> bool {
        self.window != 0 && self.in_flight > self.window.saturating_mul(2)
    }
}

/// Client-side ACK behaviour of spice-gtk (§2.3), for test clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckCounter {
    window: u32,
    count: u32,
}

impl AckCounter {
    /// A counter that never acks until a SET_ACK arrives.
    pub fn new() -> Self {
        Self::default()
    }

    /// Call for every received message; returns the message to send back, if any
    /// (ACK_SYNC for SET_ACK, ACK after every `window` further messages).
    pub fn on_message(&mut self, msg: &ServerMsg) -> Option<ClientMsg> {
        if let ServerMsg::SetAck { generation, window } = msg {
            self.window = *window;
            self.count = *window;
            return Some(ClientMsg::AckSync {
                generation: *generation,
            });
        }
        if self.window == 0 {
            return None;
        }
        self.count = self.count.saturating_sub(1);
        if self.count == 0 {
            self.count = self.window;
            return Some(ClientMsg::Ack);
        }
        None
    }
}
