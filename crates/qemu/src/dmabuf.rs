//! GL scanouts (`-display dbus,gl=on`): `ScanoutDMABUF`, `ScanoutDMABUF2` and `UpdateDMABUF`.
//!
//! QEMU hands over a dmabuf per scanout and then damage on it; the guest is held until each
//! `UpdateDMABUF` is answered (1 s timeout on QEMU's side). The pixels are read by a
//! [`DmabufReader`] (the GPU path: an EGL import and a fenced readback, in `scanoutd-gpu`,
//! wired by the binary), written into the shadow surface and published to the frame ring, and
//! only then is the call answered: QEMU may reuse the buffer once we reply, and a slow client
//! never slows the guest because nothing here waits for encoding or the network. A reader that
//! is busy, fails or takes longer than [`READ_TIMEOUT`] gets the call answered anyway (the
//! frame is dropped and counted): a stalled GPU must not freeze the guest.
//!
//! Without a reader (no GPU) `ScanoutDMABUF` is refused with a clear log line and
//! `UpdateDMABUF` is answered at once.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use scanoutd_types::{Dmabuf, DmabufPlane, Fourcc, Rect};

use crate::listener::{warn_sparsely, Publisher};
use crate::pixels::PixelFormat;

/// The optional listener interface for multi-plane / offset scanouts (QEMU ≥ 10.1).
pub const DMABUF2_INTERFACE: &str = "org.qemu.Display1.Listener.Unix.ScanoutDMABUF2";

/// How long an `UpdateDMABUF` waits for the reader before it is answered without the frame
/// (QEMU's own timeout is 1 s).
pub const READ_TIMEOUT: Duration = Duration::from_millis(500);

/// What a read produced: `pixels` holds the rectangle as tightly packed BGRx rows (`w * 4`
/// bytes each) when `result` is `Ok`; the buffer comes back either way so it can be reused.
#[derive(Debug)]
pub struct DmabufRead {
    pub pixels: Vec<u8>,
    pub result: Result<(), String>,
}

/// A read in flight.
pub type DmabufReadFuture = Pin<Box<dyn Future<Output = DmabufRead> + Send>>;

/// Copies a rectangle of a dmabuf into CPU memory (the GPU path).
pub trait DmabufReader: Send + Sync + std::fmt::Debug {
    /// Start reading `rect` of `buf` — top-down display coordinates inside the buffer (the
    /// reader flips rows for `buf.y0_top`) — into `dst` (resized as needed). Must not block:
    /// a busy reader returns `Err` at once. The future resolves once the copy is complete in
    /// CPU memory (fenced), never earlier.
    fn read(&self, buf: Arc<Dmabuf>, rect: Rect, dst: Vec<u8>) -> Result<DmabufReadFuture, String>;
}

/// The current GL scanout.
struct Current {
    buf: Arc<Dmabuf>,
    /// The visible scanout rectangle inside the buffer, in buffer rows (as QEMU sends it).
    visible: Rect,
}

/// Counters of the GL path.
#[derive(Debug, Default)]
pub(crate) struct DmabufCounters {
    pub(crate) scanouts: AtomicU64,
    pub(crate) updates: AtomicU64,
    /// Reads that failed, were refused (reader busy) or timed out: the update was answered
    /// without its frame.
    pub(crate) failed: AtomicU64,
    /// Longest time an `UpdateDMABUF` was held, in microseconds.
    pub(crate) max_hold_us: AtomicU64,
}

/// The GL half of the listener.
pub(crate) struct DmabufSink {
    reader: Option<Arc<dyn DmabufReader>>,
    publisher: Arc<Publisher>,
    current: Mutex<Option<Current>>,
    scratch: Mutex<Vec<u8>>,
    warned: AtomicBool,
    timeout: Duration,
    pub(crate) counters: DmabufCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rows of a rectangle given in buffer rows, as top-down display rows of a buffer `height`
/// rows tall (stored bottom-up when `y0_top`).
fn to_display(height: u32, y0_top: bool, r: Rect) -> Rect {
    if y0_top {
        Rect::new(r.x, height.saturating_sub(r.y + r.h), r.w, r.h)
    } else {
        r
    }
}

impl DmabufSink {
    pub(crate) fn new(reader: Option<Arc<dyn DmabufReader>>, publisher: Arc<Publisher>) -> Self {
        DmabufSink {
            reader,
            publisher,
            current: Mutex::new(None),
            scratch: Mutex::new(Vec::new()),
            warned: AtomicBool::new(false),
            timeout: READ_TIMEOUT,
            counters: DmabufCounters::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn has_reader(&self) -> bool {
        self.reader.is_some()
    }

    /// The scanout went away (`Disable`, or QEMU switched to a 2D surface).
    pub(crate) fn clear(&self) {
        lock(&self.current).take();
    }

    fn refuse_without_reader(&self, width: u32, height: u32, fourcc: u32) -> zbus::fdo::Error {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::error!(
                width,
                height,
                fourcc = %Fourcc(fourcc),
                "QEMU sends GL (DMABUF) scanouts but there is no GPU path here (no EGL device, \
                 or --gpu off): nothing can be shown; run QEMU with -display dbus,gl=off, or give \
                 scanoutd a GPU"
            );
        }
        zbus::fdo::Error::NotSupported(
            "DMABUF scanouts need the GPU path, which is not available".into(),
        )
    }

    /// A GL scanout that could not even be described while there is no reader: refuse it
    /// with the "no GPU" explanation.
    pub(crate) fn scanout_unsupported(
        &self,
        width: u32,
        height: u32,
        fourcc: u32,
    ) -> zbus::fdo::Result<()> {
        Err(self.refuse_without_reader(width, height, fourcc))
    }

    /// `ScanoutDMABUF` / `ScanoutDMABUF2`: a new buffer, whose visible part is new content.
    pub(crate) async fn scanout(&self, buf: Dmabuf, visible: Rect) -> zbus::fdo::Result<()> {
        if self.reader.is_none() {
            return Err(self.refuse_without_reader(buf.width, buf.height, buf.fourcc.0));
        }
        buf.validate()
            .map_err(|e| self.invalid("ScanoutDMABUF", e.to_string()))?;
        let inside = Rect::new(0, 0, buf.width, buf.height);
        if visible.is_empty() || !inside.contains(&visible) {
            return Err(self.invalid(
                "ScanoutDMABUF",
                format!(
                    "scanout rectangle {visible:?} outside the {}x{} buffer",
                    buf.width, buf.height
                ),
            ));
        }
        let n = self.counters.scanouts.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            tracing::info!(
                width = buf.width,
                height = buf.height,
                fourcc = %buf.fourcc,
                modifier = format_args!("{:#x}", buf.modifier),
                y0_top = buf.y0_top,
                "QEMU sends GL scanouts (DMABUF): importing them on the GPU"
            );
        }
        let buf = Arc::new(buf);
        *lock(&self.current) = Some(Current {
            buf: Arc::clone(&buf),
            visible,
        });
        // The whole visible area, as a full scanout of the shadow surface.
        self.read_and_publish(buf, visible, visible, true).await;
        Ok(())
    }

    /// `UpdateDMABUF`: damage relative to the visible rectangle (in buffer rows). Returns once
    /// the pixels are in the shadow surface and the ring (or the read failed or timed out):
    /// the caller's reply releases the guest.
    pub(crate) async fn update(&self, x: i32, y: i32, width: i32, height: i32) {
        let started = Instant::now();
        self.counters.updates.fetch_add(1, Ordering::Relaxed);
        let Some((buf, visible)) = lock(&self.current)
            .as_ref()
            .map(|c| (Arc::clone(&c.buf), c.visible))
        else {
            return;
        };
        if self.reader.is_none() || x < 0 || y < 0 || width <= 0 || height <= 0 {
            return;
        }
        let damage = Rect::new(
            visible.x.saturating_add(x as u32),
            visible.y.saturating_add(y as u32),
            width as u32,
            height as u32,
        );
        let Some(damage) = damage.intersect(&visible) else {
            return;
        };
        self.read_and_publish(buf, visible, damage, false).await;
        let held = started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        self.counters.max_hold_us.fetch_max(held, Ordering::Relaxed);
    }

    pub(crate) fn invalid(&self, what: &str, msg: String) -> zbus::fdo::Error {
        warn_sparsely(
            &self.counters.failed,
            format_args!("QEMU {what} ignored: {msg}"),
        );
        zbus::fdo::Error::InvalidArgs(msg)
    }

    fn failed(&self, msg: &str) {
        warn_sparsely(
            &self.counters.failed,
            format_args!("GL scanout frame dropped: {msg}"),
        );
    }

    /// Read `damage` (buffer rows, inside `visible`) and put it into the shadow surface at its
    /// place in the visible area; `whole` publishes it as a new scanout.
    async fn read_and_publish(&self, buf: Arc<Dmabuf>, visible: Rect, damage: Rect, whole: bool) {
        let Some(reader) = &self.reader else { return };
        let (bh, flip) = (buf.height, buf.y0_top);
        let shown = to_display(bh, flip, visible);
        let rect = to_display(bh, flip, damage);
        let dst = std::mem::take(&mut *lock(&self.scratch));
        let pending = match reader.read(buf, rect, dst) {
            Ok(p) => p,
            Err(e) => return self.failed(&format!("the GPU reader refused it: {e}")),
        };
        let out = match tokio::time::timeout(self.timeout, pending).await {
            Ok(out) => out,
            Err(_) => {
                return self.failed(&format!(
                    "the GPU copy took longer than {:?}; answered QEMU without it",
                    self.timeout
                ))
            }
        };
        let DmabufRead { pixels, result } = out;
        let published = match result {
            Err(e) => Err(e),
            Ok(()) => {
                let (dx, dy) = (rect.x - shown.x, rect.y - shown.y);
                let fmt = PixelFormat::X8R8G8B8.pixman();
                let r = if whole {
                    self.publisher
                        .scanout(rect.w, rect.h, rect.w * 4, fmt, &pixels)
                } else {
                    self.publisher.update(
                        dx as i32,
                        dy as i32,
                        rect.w as i32,
                        rect.h as i32,
                        rect.w * 4,
                        fmt,
                        &pixels,
                    )
                };
                r.map_err(|e| format!("the GPU copy does not fit the surface: {e}"))
            }
        };
        *lock(&self.scratch) = pixels;
        if let Err(e) = published {
            self.failed(&e);
        }
    }
}

/// Build the buffer description of a `ScanoutDMABUF` (single plane, no offset).
#[allow(clippy::too_many_arguments)]
pub(crate) fn single_plane(
    fd: OwnedFd,
    width: u32,
    height: u32,
    stride: u32,
    fourcc: u32,
    modifier: u64,
    y0_top: bool,
) -> Result<Dmabuf, String> {
    Dmabuf::single_plane(fd, width, height, stride, Fourcc(fourcc), modifier, y0_top)
        .map_err(|e| e.to_string())
}

/// Build the buffer description of a `ScanoutDMABUF2`. QEMU stops adding fds at the first
/// invalid one, so there may be fewer fds than planes: the first one is reused then, as the
/// planes of one buffer usually share it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn multi_plane(
    fds: Vec<OwnedFd>,
    offsets: &[u32],
    strides: &[u32],
    num_planes: u32,
    fourcc: u32,
    backing: (u32, u32),
    modifier: u64,
    y0_top: bool,
) -> Result<Dmabuf, String> {
    let n = num_planes as usize;
    if n == 0 || n > scanoutd_types::MAX_DMABUF_PLANES {
        return Err(format!("{num_planes} planes"));
    }
    if offsets.len() < n || strides.len() < n {
        return Err(format!(
            "{n} planes but {} offsets and {} strides",
            offsets.len(),
            strides.len()
        ));
    }
    if fds.is_empty() {
        return Err("no dmabuf fd".into());
    }
    let mut planes = Vec::with_capacity(n);
    let mut fds = fds.into_iter();
    for i in 0..n {
        let fd = match fds.next() {
            Some(fd) => fd,
            None => planes
                .first()
                .map(|p: &DmabufPlane| p.fd.try_clone())
                .ok_or("no dmabuf fd")?
                .map_err(|e| format!("duplicating the dmabuf fd: {e}"))?,
        };
        planes.push(DmabufPlane {
            fd,
            offset: offsets[i],
            stride: strides[i],
        });
    }
    let buf = Dmabuf {
        planes,
        width: backing.0,
        height: backing.1,
        fourcc: Fourcc(fourcc),
        modifier,
        y0_top,
    };
    buf.validate().map_err(|e| e.to_string())?;
    Ok(buf)
}

/// `org.qemu.Display1.Listener.Unix.ScanoutDMABUF2` (QEMU ≥ 10.1), served on the listener
/// object when there is a GPU path; QEMU then uses it instead of `ScanoutDMABUF`.
pub(crate) struct Dmabuf2Listener {
    pub(crate) sink: Arc<DmabufSink>,
}

#[zbus::interface(name = "org.qemu.Display1.Listener.Unix.ScanoutDMABUF2", spawn = false)]
impl Dmabuf2Listener {
    #[zbus(name = "ScanoutDMABUF2")]
    #[allow(clippy::too_many_arguments)]
    async fn scanout_dmabuf2(
        &self,
        dmabuf: Vec<zbus::OwnedFd>,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        offset: Vec<u32>,
        stride: Vec<u32>,
        num_planes: u32,
        fourcc: u32,
        backing_width: u32,
        backing_height: u32,
        modifier: u64,
        y0_top: bool,
    ) -> zbus::fdo::Result<()> {
        tracing::debug!(
            x,
            y,
            width,
            height,
            num_planes,
            backing_width,
            backing_height,
            fourcc = format_args!("{fourcc:#x}"),
            modifier = format_args!("{modifier:#x}"),
            y0_top,
            "ScanoutDMABUF2"
        );
        let mut fds = Vec::with_capacity(dmabuf.len());
        for fd in dmabuf {
            fds.push(
                OwnedFd::try_from(zbus::Fd::from(fd))
                    .map_err(|e| zbus::fdo::Error::InvalidArgs(format!("dmabuf fd: {e}")))?,
            );
        }
        let buf = multi_plane(
            fds,
            &offset,
            &stride,
            num_planes,
            fourcc,
            (backing_width, backing_height),
            modifier,
            y0_top,
        )
        .map_err(|e| self.sink.invalid("ScanoutDMABUF2", e))?;
        self.sink.scanout(buf, Rect::new(x, y, width, height)).await
    }
}

#[cfg(test)]
mod tests;
