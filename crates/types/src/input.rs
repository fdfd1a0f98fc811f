//! Input events from a client, on their way to the display source (the demo, or a guest).

/// A mouse button, numbered as SPICE numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MouseButton {
    Left,
    Middle,
    Right,
    WheelUp,
    WheelDown,
    Side,
    Extra,
}

impl MouseButton {
    /// From the SPICE button number (1..=7).
    pub fn from_spice(n: u8) -> Option<Self> {
        Some(match n {
            1 => MouseButton::Left,
            2 => MouseButton::Middle,
            3 => MouseButton::Right,
            4 => MouseButton::WheelUp,
            5 => MouseButton::WheelDown,
            6 => MouseButton::Side,
            7 => MouseButton::Extra,
            _ => return None,
        })
    }
}

/// One input event. Keys are PC/AT set-1 (XT) scancodes, with extended (`E0`-prefixed) keys
/// as `0x100 | code`, and Pause as `0x21D` (its `E1 1D 45` sequence); this is the form both
/// SPICE and QEMU's qnum codes start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEvent {
    Key {
        scancode: u16,
        pressed: bool,
    },
    /// Lock-key state from the client: bit 0 scroll, bit 1 num, bit 2 caps.
    KeyModifiers(u16),
    /// Absolute pointer position in surface pixels of display `display`.
    MouseMove {
        x: u32,
        y: u32,
        display: u8,
    },
    /// Relative motion (server mouse mode).
    MouseMotion {
        dx: i32,
        dy: i32,
    },
    Button {
        button: MouseButton,
        pressed: bool,
    },
}

/// Where decoded input goes. Implementations must not block: they are called from the network
/// tasks.
pub trait InputSink: Send + Sync {
    fn input(&self, event: InputEvent);
}

/// Drops every event (a view-only source).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullInputSink;

impl InputSink for NullInputSink {
    fn input(&self, _event: InputEvent) {}
}
