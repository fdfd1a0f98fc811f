//! Input helpers (§5): scancode byte streams and mouse-motion acknowledgement.

/// Scancode reported for Pause (spice-gtk's internal code for it).
///
/// Pause has no break code in set 1; its make sequence is `E1 1D 45` and the client sends
/// `E1 9D C5` on release. [`ScancodeDecoder`] turns each of these into one event with this
/// code (`pressed` true and false respectively).
pub const SCANCODE_PAUSE: u16 = 0x21D;

/// Prefix byte of extended (E0) keys.
const PREFIX_E0: u8 = 0xE0;
/// Prefix byte of the Pause sequence.
const PREFIX_E1: u8 = 0xE1;

/// The bytes of a KEY_DOWN / KEY_UP code: its little-endian bytes from the lowest up to the
/// first zero byte (e.g. `0x1DE0` → `E0 1D`, `0x9E` → `9E`).
pub fn scancode_bytes(code: u32) -> impl Iterator<Item = u8> {
    code.to_le_bytes().into_iter().take_while(|&b| b != 0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ScanState {
    #[default]
    Idle,
    E0,
    E1,
    E1Make,
    E1Break,
}

/// Turns a stream of PC/AT set-1 scancode bytes into `(scancode, pressed)` events.
///
/// * plain bytes: `(b & 0x7f, b & 0x80 == 0)`;
/// * `E0 b`: `(0x100 | (b & 0x7f), b & 0x80 == 0)` (e.g. Right-Ctrl `E0 1D` → `(0x11D, true)`);
/// * `E1 1D 45` → `(SCANCODE_PAUSE, true)`, `E1 9D C5` → `(SCANCODE_PAUSE, false)`.
///
/// Feed the bytes of KEY_DOWN, KEY_UP (via [`scancode_bytes`]) and KEY_SCANCODE through the
/// same decoder: the client splits Pause over two KEY_DOWN messages. Garbage never panics: an
/// unexpected byte inside a sequence abandons the sequence and is then decoded afresh; a zero
/// byte is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScancodeDecoder {
    state: ScanState,
}

impl ScancodeDecoder {
    /// A decoder with no pending prefix.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a prefix is pending (a sequence is incomplete).
    pub fn is_pending(&self) -> bool {
        self.state != ScanState::Idle
    }

    /// Forgets any pending prefix.
    pub fn reset(&mut self) {
        self.state = ScanState::Idle;
    }

    /// Feeds one byte; returns the completed event, if any.
    pub fn feed(&mut self, b: u8) -> Option<(u16, bool)> {
        match self.state {
            ScanState::Idle => self.feed_idle(b),
            ScanState::E0 => {
                self.state = ScanState::Idle;
                if b == 0 || b == PREFIX_E0 || b == PREFIX_E1 {
                    // Not a valid E0 sequence: start over with this byte.
                    return self.feed_idle(b);
                }
                Some((0x100 | u16::from(b & 0x7f), b & 0x80 == 0))
            }
            ScanState::E1 => match b {
                0x1D => {
                    self.state = ScanState::E1Make;
                    None
                }
                0x9D => {
                    self.state = ScanState::E1Break;
                    None
                }
                _ => {
                    self.state = ScanState::Idle;
                    self.feed_idle(b)
                }
            },
            ScanState::E1Make => {
                self.state = ScanState::Idle;
                if b == 0x45 {
                    Some((SCANCODE_PAUSE, true))
                } else {
                    self.feed_idle(b)
                }
            }
            ScanState::E1Break => {
                self.state = ScanState::Idle;
                if b == 0xC5 {
                    Some((SCANCODE_PAUSE, false))
                } else {
                    self.feed_idle(b)
                }
            }
        }
    }

    fn feed_idle(&mut self, b: u8) -> Option<(u16, bool)> {
        match b {
            PREFIX_E0 => {
                self.state = ScanState::E0;
                None
            }
            PREFIX_E1 => {
                self.state = ScanState::E1;
                None
            }
            0 | 0x80 => None,
            _ => Some((u16::from(b & 0x7f), b & 0x80 == 0)),
        }
    }

    /// Feeds several bytes, returning every completed event in order.
    pub fn feed_all(&mut self, bytes: &[u8]) -> Vec<(u16, bool)> {
        bytes.iter().filter_map(|&b| self.feed(b)).collect()
    }
}

/// How many MOTION/POSITION messages one MOUSE_MOTION_ACK acknowledges.
pub const MOTION_ACK_BUNCH: u32 = 4;

/// Counts MOUSE_MOTION / MOUSE_POSITION messages; the server must send MOUSE_MOTION_ACK on
/// every 4th or the client's pointer freezes after 8 events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MotionAck {
    count: u32,
}

impl MotionAck {
    /// A fresh counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Call for every MOTION or POSITION message; true means "send MOUSE_MOTION_ACK now".
    pub fn on_motion(&mut self) -> bool {
        self.count += 1;
        if self.count >= MOTION_ACK_BUNCH {
            self.count = 0;
            true
        } else {
            false
        }
    }
}
