//! Input towards QEMU: scancode and button conversion, and the non-blocking [`QemuInput`] sink
//! whose task makes the `Keyboard` / `Mouse` calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use scanoutd_types::{InputEvent, InputSink, MouseButton};
use tokio::sync::{mpsc, watch};

use crate::proxies::{ConsoleProxy, KeyboardProxy, MouseProxy};
use crate::LinkState;

/// Set-1 scancode of Pause as [`InputEvent::Key`] carries it (its `E1 1D 45` sequence).
pub const SCANCODE_PAUSE: u16 = 0x21D;
/// The qnum QEMU maps to its `pause` key (keycodemapdb: KEY_PAUSE is set-1 `E0 46`).
pub const QNUM_PAUSE: u32 = 0xC6;

/// QEMU's "qnum" for a set-1 scancode: a plain make code (0x01..=0x7F) as is, an E0-prefixed
/// one (`0x100 | code`) as `0x80 | code`, Pause (0x21D) as 0xC6. `None` for anything else
/// (break codes, the E0 2A / E0 36 fake shifts, out-of-range values).
pub fn scancode_to_qnum(scancode: u16) -> Option<u32> {
    match scancode {
        0x01..=0x7F => Some(u32::from(scancode)),
        // E0 2A and E0 36 are the fake shifts some keyboards wrap around other keys: no key.
        0x12A | 0x136 => None,
        0x101..=0x17F => Some(0x80 | u32::from(scancode & 0x7F)),
        SCANCODE_PAUSE => Some(QNUM_PAUSE),
        _ => None,
    }
}

/// QEMU's `Mouse.Press` / `Release` button number.
pub fn button_to_qemu(button: MouseButton) -> u32 {
    match button {
        MouseButton::Left => 0,
        MouseButton::Middle => 1,
        MouseButton::Right => 2,
        MouseButton::WheelUp => 3,
        MouseButton::WheelDown => 4,
        MouseButton::Side => 5,
        MouseButton::Extra => 6,
    }
}

#[derive(Debug, Default)]
pub(crate) struct InputCounters {
    pub(crate) dropped: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) skipped: AtomicU64,
}

/// The [`InputSink`] of a QEMU console. [`InputSink::input`] never blocks: events go into a
/// bounded queue, and when it is full (QEMU not answering) the event is dropped and counted.
/// A task sends them in order as `Keyboard` / `Mouse` calls; QEMU's errors (an absolute
/// position while the guest has a relative mouse, say) are logged at debug and counted.
#[derive(Debug, Clone)]
pub struct QemuInput {
    tx: mpsc::Sender<InputEvent>,
    counters: Arc<InputCounters>,
}

impl QemuInput {
    /// Events dropped because the queue was full or the connection had closed.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
}

impl InputSink for QemuInput {
    fn input(&self, event: InputEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(?ev, dropped = n, "QEMU input queue full: event dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(ev)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?ev, "QEMU input after the connection closed: dropped");
            }
        }
    }
}

/// The pointer side of one console.
pub(crate) struct HeadInput {
    pub(crate) mouse: MouseProxy<'static>,
    pub(crate) console: ConsoleProxy<'static>,
}

pub(crate) struct InputTask {
    pub(crate) rx: mpsc::Receiver<InputEvent>,
    /// The first console's keyboard: keys carry no display.
    pub(crate) keyboard: KeyboardProxy<'static>,
    /// Display `i`'s console is `heads[i]`; never empty.
    pub(crate) heads: Vec<HeadInput>,
    pub(crate) counters: Arc<InputCounters>,
    pub(crate) state: watch::Receiver<LinkState>,
}

/// Where the pointer is: the display it was last on, and per display the last absolute
/// position (to turn absolute moves into relative motion when the guest only has a relative
/// mouse).
#[derive(Debug, Default)]
struct Pointer {
    head: usize,
    last_abs: Vec<Option<(u32, u32)>>,
}

pub(crate) fn channel(
    capacity: usize,
) -> (QemuInput, mpsc::Receiver<InputEvent>, Arc<InputCounters>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let counters = Arc::new(InputCounters::default());
    (
        QemuInput {
            tx,
            counters: Arc::clone(&counters),
        },
        rx,
        counters,
    )
}

impl InputTask {
    pub(crate) async fn run(mut self) {
        let mut pointer = Pointer {
            head: 0,
            last_abs: vec![None; self.heads.len()],
        };
        let mut pending: Option<InputEvent> = None;
        loop {
            let ev = match pending.take() {
                Some(ev) => ev,
                None => {
                    tokio::select! {
                        ev = self.rx.recv() => match ev {
                            Some(ev) => ev,
                            None => return,
                        },
                        _ = self.state.wait_for(|s| s.is_closed()) => {
                            tracing::debug!("QEMU connection closed: input task ends");
                            return;
                        }
                    }
                }
            };
            let ev = match ev {
                // Only the newest of a run of queued moves on one display matters.
                InputEvent::MouseMove { display, .. } => {
                    let mut newest = ev;
                    while let Ok(next) = self.rx.try_recv() {
                        if matches!(next, InputEvent::MouseMove { display: d, .. } if d == display)
                        {
                            newest = next;
                        } else {
                            pending = Some(next);
                            break;
                        }
                    }
                    newest
                }
                _ => ev,
            };
            self.send(ev, &mut pointer).await;
        }
    }

    async fn send(&self, ev: InputEvent, pointer: &mut Pointer) {
        // Buttons and relative motion go to the console the pointer was last on.
        let Some(head) = self.heads.get(pointer.head).or(self.heads.first()) else {
            return;
        };
        let result = match ev {
            InputEvent::Key { scancode, pressed } => {
                let Some(qnum) = scancode_to_qnum(scancode) else {
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        scancode = format_args!("{scancode:#x}"),
                        "no qnum for scancode: key skipped"
                    );
                    return;
                };
                if pressed {
                    self.keyboard.press(qnum).await
                } else {
                    self.keyboard.release(qnum).await
                }
            }
            InputEvent::Button { button, pressed } => {
                let b = button_to_qemu(button);
                if pressed {
                    head.mouse.press(b).await
                } else {
                    head.mouse.release(b).await
                }
            }
            InputEvent::MouseMotion { dx, dy } => {
                if dx == 0 && dy == 0 {
                    return;
                }
                head.mouse.rel_motion(dx, dy).await
            }
            InputEvent::MouseMove {
                x,
                y,
                display: screen,
            } => {
                let index = usize::from(screen);
                let (Some(head), Some(last_abs)) =
                    (self.heads.get(index), pointer.last_abs.get_mut(index))
                else {
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(screen, "pointer on a display with no console: skipped");
                    return;
                };
                pointer.head = index;
                // Cached properties (kept current by PropertiesChanged): no round trip.
                let absolute = match head.mouse.is_absolute().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading Mouse.IsAbsolute failed");
                        false
                    }
                };
                if absolute {
                    *last_abs = Some((x, y));
                    // QEMU refuses x >= Width or y >= Height; clamp to the console.
                    let w = head.console.width().await.unwrap_or(u32::MAX).max(1);
                    let h = head.console.height().await.unwrap_or(u32::MAX).max(1);
                    head.mouse
                        .set_abs_position(x.min(w - 1), y.min(h - 1))
                        .await
                } else {
                    let prev = last_abs.replace((x, y));
                    let Some((px, py)) = prev else {
                        return;
                    };
                    let dx = i64::from(x) - i64::from(px);
                    let dy = i64::from(y) - i64::from(py);
                    if dx == 0 && dy == 0 {
                        return;
                    }
                    let clamp = |v: i64| v.clamp(i32::MIN.into(), i32::MAX.into()) as i32;
                    head.mouse.rel_motion(clamp(dx), clamp(dy)).await
                }
            }
            InputEvent::KeyModifiers(m) => {
                // QEMU's Keyboard.Modifiers is read-only (the guest's LEDs); nothing to send.
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    modifiers = m,
                    "lock-key state from the client: not forwarded"
                );
                return;
            }
        };
        match result {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?ev, error = %e, "QEMU refused an input event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qnum_conversion() {
        assert_eq!(scancode_to_qnum(0x01), Some(0x01)); // Esc
        assert_eq!(scancode_to_qnum(0x1C), Some(0x1C)); // Enter
        assert_eq!(scancode_to_qnum(0x1E), Some(0x1E)); // A
        assert_eq!(scancode_to_qnum(0x7F), Some(0x7F));
        assert_eq!(scancode_to_qnum(0x11C), Some(0x9C)); // KP Enter
        assert_eq!(scancode_to_qnum(0x11D), Some(0x9D)); // RCtrl
        assert_eq!(scancode_to_qnum(0x138), Some(0xB8)); // RAlt
        assert_eq!(scancode_to_qnum(0x148), Some(0xC8)); // Up
        assert_eq!(scancode_to_qnum(0x15B), Some(0xDB)); // LMeta
        assert_eq!(scancode_to_qnum(0x137), Some(0xB7)); // PrintScreen
        assert_eq!(scancode_to_qnum(0x21D), Some(0xC6)); // Pause
        for bad in [
            0u16, 0x80, 0x9C, 0xFF, 0x100, 0x180, 0x19C, 0x12A, 0x136, 0x200, 0xFFFF,
        ] {
            assert_eq!(scancode_to_qnum(bad), None, "{bad:#x}");
        }
    }

    #[test]
    fn buttons() {
        let all = [
            (MouseButton::Left, 0),
            (MouseButton::Middle, 1),
            (MouseButton::Right, 2),
            (MouseButton::WheelUp, 3),
            (MouseButton::WheelDown, 4),
            (MouseButton::Side, 5),
            (MouseButton::Extra, 6),
        ];
        for (b, n) in all {
            assert_eq!(button_to_qemu(b), n);
        }
        // SPICE numbering (1-based) lines up one below.
        for n in 1..=7u8 {
            assert_eq!(
                button_to_qemu(MouseButton::from_spice(n).unwrap()),
                u32::from(n) - 1
            );
        }
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let (sink, mut rx, _counters) = channel(2);
        for i in 0..5 {
            sink.input(InputEvent::MouseMotion { dx: i, dy: 0 });
        }
        assert_eq!(sink.dropped(), 3);
        assert_eq!(
            rx.recv().await,
            Some(InputEvent::MouseMotion { dx: 0, dy: 0 })
        );
        drop(rx);
        sink.input(InputEvent::MouseMotion { dx: 1, dy: 1 });
        assert_eq!(sink.dropped(), 4);
    }
}
