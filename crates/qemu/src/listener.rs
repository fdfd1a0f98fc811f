//! Our `org.qemu.Display1.Listener` object, served on the p2p connection QEMU calls, and the
//! publisher that moves the shadow surface into the frame bus.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use scanoutd_ring::{FrameBus, WriteOutcome};
use scanoutd_types::{unix_ms, CursorShape, Damage, Frame, Rect, BYTES_PER_PIXEL};
use tokio::sync::watch;

use crate::map::MapSlot;
use crate::pixels::{FrameError, Surface};

/// How long to wait before retrying a frame the ring could not take (every slot held by a
/// reader; readers hold slots only while copying).
const RING_RETRY: Duration = Duration::from_millis(4);

/// After an update grows the surface, how long to wait for the console's new `Width` /
/// `Height` before publishing anyway: QEMU announces a surface switch only through those
/// properties (on the other connection), and publishing the grown guess first would make every
/// client re-create its surface twice.
const GROW_SETTLE: Duration = Duration::from_millis(50);

/// The largest cursor image accepted from QEMU, in pixels per side.
pub const MAX_CURSOR_SIZE: u32 = 512;

/// The guest's pointer as QEMU last described it (`CursorDefine` and `MouseSet`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorState {
    /// The image, BGRA (QEMU's native-endian ARGB words on a little-endian host), top-down.
    /// `None` until the guest defines one.
    pub shape: Option<Arc<CursorShape>>,
    /// Position from the last `MouseSet`, in console pixels (the hot spot).
    pub x: i32,
    pub y: i32,
    /// Whether the guest shows the pointer (`MouseSet`'s `on`).
    pub visible: bool,
    /// Bumped on every change, so a reader can tell two states apart cheaply.
    pub serial: u64,
}

/// Counters of the display side, for logs and metrics.
#[derive(Debug, Default)]
pub(crate) struct DisplayCounters {
    pub(crate) scanouts: AtomicU64,
    pub(crate) updates: AtomicU64,
    pub(crate) frame_errors: AtomicU64,
    pub(crate) grown: AtomicU64,
    pub(crate) disabled: AtomicBool,
    /// Pixman format of the last Scanout / Update applied.
    pub(crate) format: AtomicU32,
    /// `ScanoutMap` / `UpdateMap` applied (also counted in `scanouts` / `updates`).
    pub(crate) map_scanouts: AtomicU64,
    pub(crate) map_updates: AtomicU64,
    /// The [`FramePath`] of the last full surface, as a number (0: none yet).
    pub(crate) path: AtomicU8,
    /// Switches between the paths logged at info so far.
    pub(crate) path_logged: AtomicU64,
}

/// How QEMU delivers the pixels of the current surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramePath {
    /// `Scanout` / `Update`: the pixels inside each message.
    Inline = 1,
    /// `ScanoutMap` / `UpdateMap`: a shared memfd, read on each update.
    Map = 2,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shadow surface and what of it has not reached the bus yet.
struct PublishState {
    /// Every pixel QEMU sent since the last Scanout. It may be larger than the console (after
    /// a switch to a smaller surface announced only by the console size); it is never cropped,
    /// so a size that arrives late (the properties come on the other connection) loses nothing.
    surface: Surface,
    /// The console size (`Width` / `Height`) when it differs from the last Scanout's; `None`
    /// means the whole surface.
    visible: Option<(u32, u32)>,
    /// Changed since the last published frame.
    pending: Damage,
    /// The next frame must be copied whole (size changed, or nothing published yet).
    full: bool,
    /// Size of the last frame this source published.
    published: Option<(u32, u32)>,
    /// Receive time of the newest message merged into the pending frame (Unix ms).
    capture_ms: u64,
    seq: u64,
    retry_scheduled: bool,
    /// Publishing waits until then for the console size after the surface grew.
    hold_until: Option<Instant>,
}

impl PublishState {
    /// The size frames are published at.
    fn size(&self) -> (u32, u32) {
        self.visible
            .unwrap_or((self.surface.width(), self.surface.height()))
    }
}

/// Applies messages to the shadow surface and publishes them, never waiting for the ring.
pub(crate) struct Publisher {
    bus: FrameBus,
    state: Mutex<PublishState>,
    pub(crate) counters: DisplayCounters,
}

impl Publisher {
    pub(crate) fn new(bus: FrameBus) -> Arc<Self> {
        Arc::new(Publisher {
            bus,
            state: Mutex::new(PublishState {
                surface: Surface::new(),
                visible: None,
                pending: Damage::new(),
                full: true,
                published: None,
                capture_ms: 0,
                seq: 0,
                retry_scheduled: false,
                hold_until: None,
            }),
            counters: DisplayCounters::default(),
        })
    }

    pub(crate) fn scanout(
        self: &Arc<Self>,
        width: u32,
        height: u32,
        stride: u32,
        format: u32,
        data: &[u8],
    ) -> Result<(), FrameError> {
        let now = unix_ms();
        let mut st = lock(&self.state);
        let changed = st
            .surface
            .apply_scanout(width, height, stride, format, data)?;
        self.counters.scanouts.fetch_add(1, Ordering::Relaxed);
        self.counters.format.store(format, Ordering::Relaxed);
        if self.counters.disabled.swap(false, Ordering::Relaxed) {
            tracing::info!("QEMU console enabled again");
        }
        st.visible = None;
        if changed {
            st.pending = Damage::full(width, height);
            st.capture_ms = now;
        }
        self.publish_locked(&mut st);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update(
        self: &Arc<Self>,
        x: i32,
        y: i32,
        width: i32,
        height: i32,
        stride: u32,
        format: u32,
        data: &[u8],
    ) -> Result<(), FrameError> {
        let now = unix_ms();
        let mut st = lock(&self.state);
        let (old_w, old_h) = (st.surface.width(), st.surface.height());
        let applied = st
            .surface
            .apply_update(x, y, width, height, stride, format, data)?;
        self.counters.updates.fetch_add(1, Ordering::Relaxed);
        self.counters.format.store(format, Ordering::Relaxed);
        if applied.grew {
            // Bigger than anything announced: show it all, once its size is confirmed.
            st.visible = None;
            st.hold_until = Some(Instant::now() + GROW_SETTLE);
            let n = self.counters.grown.fetch_add(1, Ordering::Relaxed);
            let (w, h) = (st.surface.width(), st.surface.height());
            // Expected once per mode switch (VGA text mode never sends a full Scanout).
            if n < 8 {
                tracing::info!(
                    rect = ?applied.rect, from = format_args!("{old_w}x{old_h}"),
                    to = format_args!("{w}x{h}"),
                    "QEMU update outside the last scanout: surface grown"
                );
            } else {
                tracing::debug!(rect = ?applied.rect, "surface grown to {w}x{h}");
            }
        }
        if applied.changed {
            st.pending.add(applied.rect);
            st.capture_ms = now;
        }
        self.publish_locked(&mut st);
        Ok(())
    }

    /// The console's size changed (its `Width` / `Height` properties): QEMU switched surfaces,
    /// and with VGA text mode no `Scanout` tells us. Frames take this size from now on; the
    /// surface only grows for it.
    pub(crate) fn resize_hint(self: &Arc<Self>, width: u32, height: u32) {
        let mut st = lock(&self.state);
        st.hold_until = None;
        // (An empty surface is sized by the first Scanout or Update.)
        if !st.surface.is_empty() {
            let before = st.size();
            match st.surface.grow_to(width, height) {
                Ok(_) => {
                    st.visible = Some((width, height));
                    if before != (width, height) {
                        tracing::info!(width, height, "QEMU console resized");
                        st.full = true;
                        st.capture_ms = unix_ms();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "QEMU console size ignored"),
            }
        }
        self.publish_locked(&mut st);
    }

    /// Record (and log at info when it changes) how QEMU sends the current surface.
    pub(crate) fn note_path(&self, path: FramePath) {
        let before = self.counters.path.swap(path as u8, Ordering::Relaxed);
        if before == path as u8 {
            return;
        }
        let what = match path {
            FramePath::Inline => "QEMU sends the surface inline (Scanout/Update)",
            FramePath::Map => {
                "QEMU shares the surface through memory (ScanoutMap/UpdateMap, memfd)"
            }
        };
        // A surface switch each: a guest flipping between shareable and VRAM-backed surfaces
        // many times gets its later switches at debug.
        if self.counters.path_logged.fetch_add(1, Ordering::Relaxed) < 16 {
            tracing::info!("{what}");
        } else {
            tracing::debug!("{what}");
        }
    }

    pub(crate) fn disable(&self) {
        if !self.counters.disabled.swap(true, Ordering::Relaxed) {
            tracing::info!("QEMU console disabled (scanout off): keeping the last picture");
        }
    }

    /// A copy of the console's picture (for tests and snapshots).
    pub(crate) fn surface(&self) -> Surface {
        let st = lock(&self.state);
        let mut s = st.surface.clone();
        if let Some((w, h)) = st.visible {
            // Within the limits: the surface was grown to this size before.
            let _ = s.set_size(w, h);
        }
        s
    }

    pub(crate) fn frames_published(&self) -> u64 {
        lock(&self.state).seq
    }

    fn publish_locked(self: &Arc<Self>, st: &mut PublishState) {
        if !self.try_publish(st, false) {
            self.schedule_retry(st);
        }
    }

    /// Write what is pending into a ring slot. `false` when it must be tried again later: the
    /// ring was full, or the surface just grew and its size is not confirmed yet (the pending
    /// damage is kept either way). A full ring counts as a dropped frame once per message
    /// from QEMU (its update is merged into a later frame); `retry` (the timer's attempts at
    /// the same pending frame) does not count again.
    fn try_publish(&self, st: &mut PublishState, retry: bool) -> bool {
        let (w, h) = st.size();
        if w == 0 || h == 0 || (st.pending.is_empty() && !st.full) {
            return true;
        }
        if let Some(until) = st.hold_until {
            if Instant::now() < until {
                return false;
            }
            st.hold_until = None;
            tracing::debug!("no console size after the surface grew: publishing the grown surface");
        }
        let whole = st.full || st.published != Some((w, h));
        let seq = st.seq + 1;
        let capture_ms = st.capture_ms;
        let surface = &st.surface;
        let pending = &st.pending;
        let render = |frame: &mut Frame| {
            frame.capture_ms = capture_ms;
            frame.seq = seq;
            if whole {
                copy_whole(surface, frame);
                Damage::full(w, h)
            } else {
                for r in pending.rects() {
                    surface.copy_rect_to(
                        *r,
                        &mut frame.data,
                        frame.stride,
                        frame.width,
                        frame.height,
                    );
                }
                pending.clone()
            }
        };
        let outcome = if retry {
            self.bus.retry_write(w, h, render)
        } else {
            self.bus.try_write(w, h, render)
        };
        match outcome {
            WriteOutcome::Published | WriteOutcome::Unchanged => {
                st.pending.clear();
                st.full = false;
                st.published = Some((w, h));
                st.seq = seq;
                true
            }
            WriteOutcome::RingFull => {
                tracing::trace!("frame ring full: retrying shortly");
                false
            }
        }
    }

    /// Retry from a timer, so a frame the ring could not take still goes out when QEMU sends
    /// nothing more (an idle guest).
    fn schedule_retry(self: &Arc<Self>, st: &mut PublishState) {
        if st.retry_scheduled {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime here: the next message retries instead.
            return;
        };
        st.retry_scheduled = true;
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(RING_RETRY).await;
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let mut st = lock(&this.state);
                if this.try_publish(&mut st, true) {
                    st.retry_scheduled = false;
                    return;
                }
            }
        });
    }
}

fn copy_whole(surface: &Surface, frame: &mut Frame) {
    let row = surface.width() as usize * BYTES_PER_PIXEL;
    if (frame.width, frame.height) == (surface.width(), surface.height())
        && frame.stride == row
        && frame.data.len() == surface.data().len()
    {
        frame.data.copy_from_slice(surface.data());
    } else {
        surface.copy_rect_to(
            Rect::new(0, 0, surface.width(), surface.height()),
            &mut frame.data,
            frame.stride,
            frame.width,
            frame.height,
        );
    }
}

/// Count one refused message or dropped frame in `counter` and log it: at warn level the
/// first ten and then at powers of two, at debug level the rest (a broken peer or GPU path may
/// produce them at frame rate).
pub(crate) fn warn_sparsely(counter: &AtomicU64, msg: std::fmt::Arguments<'_>) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 10 || n.is_power_of_two() {
        tracing::warn!(count = n, "{msg}");
    } else {
        tracing::debug!(count = n, "{msg}");
    }
}

/// The object QEMU calls at `/org/qemu/Display1/Listener`.
pub(crate) struct Listener {
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) cursor: watch::Sender<CursorState>,
    /// The GL path (`ScanoutDMABUF` / `UpdateDMABUF`).
    pub(crate) dmabuf: Arc<crate::dmabuf::DmabufSink>,
    /// Optional interfaces served on the same object (the `Interfaces` property).
    pub(crate) interfaces: Vec<String>,
    /// The shared surface of `Listener.Unix.Map`, dropped when QEMU goes back to inline data.
    pub(crate) map: Arc<MapSlot>,
}

impl Listener {
    fn frame_error(&self, what: &str, e: &FrameError) -> zbus::fdo::Error {
        warn_sparsely(
            &self.publisher.counters.frame_errors,
            format_args!("QEMU {what} ignored: {e}"),
        );
        zbus::fdo::Error::InvalidArgs(e.to_string())
    }
}

/// Methods are handled in arrival order (`spawn = false`): an Update must land after the
/// Scanout before it. Every handler returns at once, except `UpdateDMABUF`, the one reply QEMU
/// waits for: it comes once the frame is in the ring (see `dmabuf.rs`).
#[zbus::interface(name = "org.qemu.Display1.Listener", spawn = false)]
impl Listener {
    fn scanout(
        &self,
        width: u32,
        height: u32,
        stride: u32,
        pixman_format: u32,
        data: &[u8],
    ) -> zbus::fdo::Result<()> {
        tracing::debug!(
            width,
            height,
            stride,
            format = format_args!("{pixman_format:#x}"),
            "Scanout"
        );
        // A surface QEMU cannot share: whatever was mapped before is stale, and so is a GL
        // scanout.
        self.map.clear();
        self.dmabuf.clear();
        self.publisher
            .scanout(width, height, stride, pixman_format, data)
            .map_err(|e| self.frame_error("Scanout", &e))?;
        self.publisher.note_path(FramePath::Inline);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        x: i32,
        y: i32,
        width: i32,
        height: i32,
        stride: u32,
        pixman_format: u32,
        data: &[u8],
    ) -> zbus::fdo::Result<()> {
        tracing::trace!(
            x,
            y,
            width,
            height,
            format = format_args!("{pixman_format:#x}"),
            "Update"
        );
        self.publisher
            .update(x, y, width, height, stride, pixman_format, data)
            .map_err(|e| self.frame_error("Update", &e))
    }

    /// GL mode (`-display dbus,gl=on`): a new scanout buffer, read through the GPU path.
    #[zbus(name = "ScanoutDMABUF")]
    #[allow(clippy::too_many_arguments)]
    async fn scanout_dmabuf(
        &self,
        dmabuf: zbus::OwnedFd,
        width: u32,
        height: u32,
        stride: u32,
        fourcc: u32,
        modifier: u64,
        y0_top: bool,
    ) -> zbus::fdo::Result<()> {
        tracing::debug!(
            width,
            height,
            stride,
            fourcc = format_args!("{fourcc:#x}"),
            modifier = format_args!("{modifier:#x}"),
            y0_top,
            "ScanoutDMABUF"
        );
        self.map.clear();
        let fd = std::os::fd::OwnedFd::try_from(zbus::Fd::from(dmabuf))
            .map_err(|e| zbus::fdo::Error::InvalidArgs(format!("dmabuf fd: {e}")))?;
        let buf = match crate::dmabuf::single_plane(
            fd, width, height, stride, fourcc, modifier, y0_top,
        ) {
            Ok(b) => b,
            Err(e) if self.dmabuf.has_reader() => return Err(zbus::fdo::Error::InvalidArgs(e)),
            // Without a GPU path the refusal below says what to do instead.
            Err(_) => return self.dmabuf.scanout_unsupported(width, height, fourcc),
        };
        self.dmabuf
            .scanout(buf, scanoutd_types::Rect::new(0, 0, width, height))
            .await
    }

    /// Damage on the GL scanout. QEMU holds the guest until this is answered: that happens
    /// once the pixels are in the frame ring (never after encoding or sending), or at once
    /// when they cannot be read.
    #[zbus(name = "UpdateDMABUF")]
    async fn update_dmabuf(&self, x: i32, y: i32, width: i32, height: i32) {
        tracing::trace!(x, y, width, height, "UpdateDMABUF");
        self.dmabuf.update(x, y, width, height).await;
    }

    fn disable(&self) {
        self.map.clear();
        self.dmabuf.clear();
        self.publisher.disable();
    }

    fn mouse_set(&self, x: i32, y: i32, on: i32) {
        self.cursor.send_modify(|c| {
            c.x = x;
            c.y = y;
            c.visible = on != 0;
            c.serial += 1;
        });
    }

    fn cursor_define(
        &self,
        width: i32,
        height: i32,
        hot_x: i32,
        hot_y: i32,
        data: &[u8],
    ) -> zbus::fdo::Result<()> {
        let shape = cursor_shape(width, height, hot_x, hot_y, data).map_err(|e| {
            tracing::warn!(error = %e, "QEMU CursorDefine ignored");
            zbus::fdo::Error::InvalidArgs(e.to_string())
        })?;
        tracing::debug!(width, height, hot_x, hot_y, "CursorDefine");
        self.cursor.send_modify(|c| {
            c.shape = Some(Arc::new(shape));
            c.serial += 1;
        });
        Ok(())
    }

    /// Optional listener interfaces we implement, read once by QEMU at registration:
    /// `org.qemu.Display1.Listener.Unix.Map` unless shared memory is turned off.
    #[zbus(property)]
    fn interfaces(&self) -> Vec<String> {
        self.interfaces.clone()
    }
}

/// Validate a `CursorDefine`: 1..=[`MAX_CURSOR_SIZE`] per side, `width * height * 4` bytes of
/// 32-bit ARGB words (B, G, R, A on a little-endian host); the hot spot is clamped inside.
pub fn cursor_shape(
    width: i32,
    height: i32,
    hot_x: i32,
    hot_y: i32,
    data: &[u8],
) -> Result<CursorShape, FrameError> {
    let max = MAX_CURSOR_SIZE as i32;
    if !(1..=max).contains(&width) || !(1..=max).contains(&height) {
        return Err(FrameError::BadSize {
            width: width.into(),
            height: height.into(),
        });
    }
    let need = width as u64 * height as u64 * 4;
    if (data.len() as u64) < need {
        return Err(FrameError::ShortData {
            need,
            got: data.len() as u64,
        });
    }
    let mut pixels = data[..need as usize].to_vec();
    if cfg!(not(target_endian = "little")) {
        for p in pixels.chunks_exact_mut(4) {
            p.reverse();
        }
    }
    Ok(CursorShape {
        width: width as u16,
        height: height as u16,
        hot_x: hot_x.clamp(0, width - 1) as u16,
        hot_y: hot_y.clamp(0, height - 1) as u16,
        pixels,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    const XRGB: u32 = 0x2002_0888;

    #[test]
    fn cursor_validation() {
        let c = cursor_shape(2, 1, 5, -3, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        assert_eq!((c.width, c.height, c.hot_x, c.hot_y), (2, 1, 1, 0));
        assert_eq!(c.pixels, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(cursor_shape(0, 1, 0, 0, &[]).is_err());
        assert!(cursor_shape(-1, 1, 0, 0, &[]).is_err());
        assert!(cursor_shape(1, 513, 0, 0, &[0; 513 * 4]).is_err());
        assert!(cursor_shape(i32::MAX, i32::MAX, 0, 0, &[]).is_err());
        assert!(cursor_shape(2, 2, 0, 0, &[0; 15]).is_err());
    }

    #[test]
    fn updates_reach_the_bus_and_survive_a_full_ring() {
        let bus = FrameBus::with_slots(2);
        let p = Publisher::new(bus.clone());
        p.scanout(4, 2, 16, XRGB, &[0x10; 32]).unwrap();
        let f = bus.latest().unwrap();
        assert_eq!((f.width, f.height, f.seq), (4, 2, 1));
        assert_eq!(f.pixel(3, 1), 0x101010);
        assert!(f.capture_ms > 1_600_000_000_000);
        // `f` pins the first slot; this update goes to the second, which becomes the newest.
        p.update(0, 0, 1, 1, 4, XRGB, &[0x20, 0x20, 0x20, 0])
            .unwrap();
        assert_eq!(bus.latest().unwrap().seq, 2);
        // Now every slot is either the newest or held: the ring cannot take this one.
        let before = bus.stats().dropped_ring_full;
        p.update(3, 1, 1, 1, 4, XRGB, &[0x50, 0x50, 0x50, 0])
            .unwrap();
        assert_eq!(bus.stats().dropped_ring_full, before + 1);
        assert_eq!(bus.latest().unwrap().pixel(3, 1), 0x101010);
        assert_eq!(p.surface().pixel(3, 1), Some(0x505050));
        // Once a slot is free, the next message publishes everything pending.
        drop(f);
        p.update(0, 1, 1, 1, 4, XRGB, &[0x60, 0x60, 0x60, 0])
            .unwrap();
        let f = bus.latest().unwrap();
        assert_eq!(f.seq, 3);
        assert_eq!(f.pixel(0, 0), 0x202020);
        assert_eq!(f.pixel(3, 1), 0x505050);
        assert_eq!(f.pixel(0, 1), 0x606060);
        assert_eq!(f.pixel(1, 1), 0x101010);
        assert_eq!(p.frames_published(), 3);
    }

    #[tokio::test]
    async fn a_full_ring_is_retried_without_a_new_message() {
        let bus = FrameBus::with_slots(2);
        let p = Publisher::new(bus.clone());
        p.scanout(2, 1, 8, XRGB, &[0x10; 8]).unwrap();
        let f = bus.latest().unwrap();
        p.update(0, 0, 1, 1, 4, XRGB, &[0x20, 0x20, 0x20, 0])
            .unwrap();
        p.update(1, 0, 1, 1, 4, XRGB, &[0x30, 0x30, 0x30, 0])
            .unwrap();
        assert_eq!(bus.latest().unwrap().pixel(1, 0), 0x101010);
        // One update could not be published: one dropped frame, however often the timer
        // retries it meanwhile (every 4 ms: at least 10 times in 50 ms).
        assert_eq!(bus.stats().dropped_ring_full, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(bus.stats().dropped_ring_full, 1, "retries counted as drops");
        drop(f);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while bus.latest().unwrap().pixel(1, 0) != 0x303030 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "retry never published"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(bus.stats().dropped_ring_full, 1);
    }

    #[test]
    fn malformed_messages_leave_the_bus_alone() {
        let bus = FrameBus::new();
        let p = Publisher::new(bus.clone());
        assert!(p.scanout(0, 0, 0, XRGB, &[]).is_err());
        assert!(p.update(0, 0, 1, 1, 4, 0xdead, &[0; 4]).is_err());
        assert!(bus.latest().is_none());
        p.scanout(1, 1, 4, XRGB, &[1, 2, 3, 0]).unwrap();
        assert!(p.update(-1, 0, 1, 1, 4, XRGB, &[0; 4]).is_err());
        assert_eq!(bus.published(), 1);
    }

    #[tokio::test]
    async fn a_grown_surface_waits_for_the_console_size() {
        let bus = FrameBus::new();
        let p = Publisher::new(bus.clone());
        p.scanout(2, 2, 8, XRGB, &[1; 16]).unwrap();
        // A text row wider than the surface: held back, not published at 3x2.
        p.update(0, 0, 3, 1, 12, XRGB, &[2; 12]).unwrap();
        assert_eq!(bus.latest().unwrap().width, 2);
        // The console's new size arrives: one frame at the right size.
        p.resize_hint(3, 1);
        let f = bus.latest().unwrap();
        assert_eq!((f.width, f.height), (3, 1));
        assert_eq!(f.pixel(2, 0), 0x020202);
        // Without a size, the grown surface goes out after GROW_SETTLE.
        p.update(0, 0, 4, 1, 16, XRGB, &[3; 16]).unwrap();
        assert_eq!(bus.latest().unwrap().width, 3);
        tokio::time::sleep(GROW_SETTLE * 2).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while bus.latest().unwrap().width != 4 {
            assert!(Instant::now() < deadline, "grown surface never published");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn resize_hint_crops_and_grows() {
        let bus = FrameBus::new();
        let p = Publisher::new(bus.clone());
        p.resize_hint(10, 10); // no surface yet: ignored
        assert!(bus.latest().is_none());
        p.scanout(2, 2, 8, XRGB, &[9; 16]).unwrap();
        p.resize_hint(3, 1);
        let f = bus.latest().unwrap();
        assert_eq!((f.width, f.height), (3, 1));
        assert_eq!(f.pixel(1, 0), 0x090909);
        assert_eq!(f.pixel(2, 0), 0);
        assert_eq!(p.surface().height(), 1);
        // A size that turns out stale (the newer one comes after): nothing was lost.
        p.resize_hint(2, 2);
        let f = bus.latest().unwrap();
        assert_eq!((f.width, f.height), (2, 2));
        assert_eq!(f.pixel(1, 1), 0x090909);
        // A Scanout is authoritative again.
        p.scanout(1, 1, 4, XRGB, &[7; 4]).unwrap();
        let f = bus.latest().unwrap();
        assert_eq!((f.width, f.height, f.pixel(0, 0)), (1, 1, 0x070707));
    }

    /// The listener as QEMU sees it: method and property names on the wire, error replies to
    /// malformed calls, fd passing for ScanoutDMABUF. A zbus p2p server plays QEMU.
    #[tokio::test]
    async fn listener_over_a_p2p_connection() {
        let bus = FrameBus::new();
        let (cursor_tx, cursor) = watch::channel(CursorState::default());
        let publisher = Publisher::new(bus.clone());
        let object = Listener {
            publisher: Arc::clone(&publisher),
            cursor: cursor_tx,
            dmabuf: Arc::new(crate::dmabuf::DmabufSink::new(None, publisher)),
            interfaces: Vec::new(),
            map: Arc::default(),
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let client = zbus::connection::Builder::unix_stream(ours)
            .p2p()
            .serve_at(crate::LISTENER_PATH, object)
            .build();
        let server = zbus::connection::Builder::unix_stream(theirs)
            .server(zbus::Guid::generate())
            .p2p()
            .build();
        let (client, qemu) = tokio::join!(client, server);
        let (_client, qemu) = (client.unwrap(), qemu.unwrap());
        let iface = Some("org.qemu.Display1.Listener");
        macro_rules! call {
            ($member:expr, $body:expr) => {
                qemu.call_method(None::<&str>, crate::LISTENER_PATH, iface, $member, $body)
                    .await
            };
        }
        // Scanout of 2x1 x8r8g8b8.
        let px: &[u8] = &[1, 2, 3, 0, 4, 5, 6, 0];
        call!("Scanout", &(2u32, 1u32, 8u32, XRGB, px)).unwrap();
        let f = bus.latest().unwrap();
        assert_eq!((f.width, f.height, f.pixel(1, 0)), (2, 1, 0x060504));
        drop(f);
        // Malformed ones get an error reply; the picture stays.
        let err = call!("Scanout", &(2u32, 1u32, 8u32, XRGB, &px[..7])).unwrap_err();
        assert!(err.to_string().contains("bytes of pixel data"), "{err}");
        let err = call!("Update", &(-1i32, 0i32, 1i32, 1i32, 4u32, XRGB, &px[..4])).unwrap_err();
        assert!(err.to_string().contains("bad rectangle"), "{err}");
        let err = call!("Update", &(0i32, 0i32, 1i32, 1i32, 4u32, 7u32, &px[..4])).unwrap_err();
        assert!(
            err.to_string().contains("unsupported pixman format"),
            "{err}"
        );
        call!("Update", &(1i32, 0i32, 1i32, 1i32, 4u32, XRGB, &px[..4])).unwrap();
        assert_eq!(bus.latest().unwrap().pixel(1, 0), 0x030201);
        assert_eq!(bus.published(), 2);
        // Cursor.
        let cur: &[u8] = &[0xff; 16];
        call!("CursorDefine", &(2i32, 2i32, 1i32, 1i32, cur)).unwrap();
        call!("MouseSet", &(10i32, 20i32, 1i32)).unwrap();
        let c = cursor.borrow().clone();
        assert_eq!((c.x, c.y, c.visible), (10, 20, true));
        assert_eq!(c.shape.as_ref().map(|s| (s.width, s.hot_x)), Some((2, 1)));
        assert!(call!("CursorDefine", &(2i32, 2i32, 0i32, 0i32, &cur[..3])).is_err());
        // GL-mode names exist (answered, never held), Disable keeps the picture.
        let null = std::fs::File::open("/dev/null").unwrap();
        let err = call!(
            "ScanoutDMABUF",
            &(
                zbus::Fd::from(null.as_fd()),
                2u32,
                1u32,
                8u32,
                0x34325258u32,
                0u64,
                false
            )
        )
        .unwrap_err();
        assert!(err.to_string().contains("need the GPU path"), "{err}");
        call!("UpdateDMABUF", &(0i32, 0i32, 1i32, 1i32)).unwrap();
        call!("Disable", &()).unwrap();
        assert_eq!(bus.latest().unwrap().pixel(1, 0), 0x030201);
        // The Interfaces property QEMU reads at registration: empty.
        let reply = qemu
            .call_method(
                None::<&str>,
                crate::LISTENER_PATH,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.qemu.Display1.Listener", "Interfaces"),
            )
            .await
            .unwrap();
        let body = reply.body();
        let value: zbus::Variant<'_> = body.deserialize().unwrap();
        let list: Vec<String> = value.try_into().unwrap();
        assert!(list.is_empty());
    }
}
