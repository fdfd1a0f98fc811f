//! `org.qemu.Display1.Listener.Unix.Map` (QEMU 9.2+): the console surface shared through a
//! memfd instead of copied into every message.
//!
//! `ScanoutMap` hands us the surface's file descriptor and layout; each `UpdateMap` names a
//! damaged rectangle. The memory stays live (QEMU and the guest keep writing it), so the rows
//! of each rectangle are copied out with `pread` (no mmap, no unsafe) when the message arrives
//! and go through the same [`Publisher`] path as inline `Update` data. Every argument is
//! validated against the pixel limits and the file's size; a bad one is answered with
//! `InvalidArgs` (QEMU then falls back to inline Scanout/Update for this listener) and logged,
//! never a panic.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use scanoutd_types::Rect;

use crate::listener::{FramePath, Publisher};
use crate::pixels::{check_size, FrameError, PixelFormat};

/// The interface name QEMU looks for in the listener's `Interfaces` property.
pub const MAP_INTERFACE: &str = "org.qemu.Display1.Listener.Unix.Map";

/// Why a `ScanoutMap` or `UpdateMap` was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MapError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the shared surface is not a regular file (memfd)")]
    NotAFile,
    #[error("the shared surface needs {need} bytes from offset {offset}, the file has {len}")]
    TooSmall { offset: u64, need: u64, len: u64 },
    #[error("UpdateMap before any ScanoutMap")]
    NoMap,
    #[error("reading the shared surface: {0}")]
    Io(#[from] std::io::Error),
}

/// A shared surface as `ScanoutMap` described it, validated.
#[derive(Debug)]
pub(crate) struct SharedMap {
    file: File,
    offset: u64,
    width: u32,
    height: u32,
    stride: u64,
    format: PixelFormat,
    /// Rows read out of the file, reused between messages (at most about twice the pixel data
    /// of the surface, see [`SharedMap::read`]).
    scratch: Vec<u8>,
}

impl SharedMap {
    /// Validate a `ScanoutMap`: a known format, a size within the limits, a stride that holds
    /// a row, a regular file holding every row from `offset`.
    pub(crate) fn new(
        fd: OwnedFd,
        offset: u32,
        width: u32,
        height: u32,
        stride: u32,
        pixman_format: u32,
    ) -> Result<Self, MapError> {
        let format = PixelFormat::from_pixman(pixman_format)
            .ok_or(FrameError::UnknownFormat(pixman_format))?;
        let (width, height) = check_size(width.into(), height.into())?;
        let row = u64::from(width) * format.bytes_per_pixel() as u64;
        let stride = u64::from(stride);
        if stride < row {
            return Err(FrameError::BadStride { stride, row }.into());
        }
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(MapError::NotAFile);
        }
        // The last row need only hold its pixels, as with inline data.
        let need = stride * (u64::from(height) - 1) + row;
        let offset = u64::from(offset);
        if offset.saturating_add(need) > meta.len() {
            return Err(MapError::TooSmall {
                offset,
                need,
                len: meta.len(),
            });
        }
        Ok(SharedMap {
            file,
            offset,
            width,
            height,
            stride,
            format,
            scratch: Vec::new(),
        })
    }

    pub(crate) fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub(crate) fn pixman(&self) -> u32 {
        self.format.pixman()
    }

    /// Read the rows of `rect` (already inside the surface). Returns the pixels and their
    /// stride. A narrow rectangle is read row by row; a wide one in one `pread` including the
    /// padding between rows, which is at most as much again.
    pub(crate) fn read(&mut self, rect: Rect) -> Result<(&[u8], usize), MapError> {
        if rect.is_empty() || rect.right() > self.width || rect.bottom() > self.height {
            return Err(FrameError::BadRect {
                x: rect.x.into(),
                y: rect.y.into(),
                width: rect.w.into(),
                height: rect.h.into(),
            }
            .into());
        }
        let bpp = self.format.bytes_per_pixel() as u64;
        let row = u64::from(rect.w) * bpp;
        let start = self.offset + u64::from(rect.y) * self.stride + u64::from(rect.x) * bpp;
        let rows = u64::from(rect.h);
        // Bounded by the validated surface: row * rows <= the surface's pixel data.
        if self.stride <= row * 2 {
            let len = (self.stride * (rows - 1) + row) as usize;
            self.scratch.resize(len, 0);
            self.file.read_exact_at(&mut self.scratch, start)?;
            Ok((&self.scratch, self.stride as usize))
        } else {
            let len = (row * rows) as usize;
            self.scratch.resize(len, 0);
            for (i, chunk) in self.scratch.chunks_exact_mut(row as usize).enumerate() {
                self.file
                    .read_exact_at(chunk, start + i as u64 * self.stride)?;
            }
            Ok((&self.scratch, row as usize))
        }
    }
}

/// The current shared surface, shared by the two listener interfaces: an inline `Scanout` or a
/// `Disable` drops it (QEMU moved to another surface).
#[derive(Debug, Default)]
pub(crate) struct MapSlot(Mutex<Option<SharedMap>>);

impl MapSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SharedMap>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn clear(&self) {
        self.lock().take();
    }

    #[cfg(test)]
    pub(crate) fn is_set(&self) -> bool {
        self.lock().is_some()
    }
}

/// Our `org.qemu.Display1.Listener.Unix.Map` object (same path as the listener).
pub(crate) struct MapListener {
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) slot: Arc<MapSlot>,
}

impl MapListener {
    fn refuse(&self, what: &str, e: &MapError) -> zbus::fdo::Error {
        crate::listener::warn_sparsely(
            &self.publisher.counters.frame_errors,
            format_args!("QEMU {what} refused: {e}"),
        );
        match e {
            MapError::Io(_) => zbus::fdo::Error::Failed(e.to_string()),
            _ => zbus::fdo::Error::InvalidArgs(e.to_string()),
        }
    }

    fn scanout_map_inner(
        &self,
        fd: OwnedFd,
        offset: u32,
        width: u32,
        height: u32,
        stride: u32,
        pixman_format: u32,
    ) -> Result<(), MapError> {
        let mut map = SharedMap::new(fd, offset, width, height, stride, pixman_format)?;
        let (data, data_stride) = map.read(Rect::new(0, 0, width, height))?;
        self.publisher
            .scanout(width, height, data_stride as u32, pixman_format, data)?;
        self.publisher
            .counters
            .map_scanouts
            .fetch_add(1, Ordering::Relaxed);
        self.publisher.note_path(FramePath::Map);
        *self.slot.lock() = Some(map);
        Ok(())
    }

    fn update_map_inner(&self, x: i32, y: i32, width: i32, height: i32) -> Result<(), MapError> {
        let mut slot = self.slot.lock();
        let map = slot.as_mut().ok_or(MapError::NoMap)?;
        let bad = || FrameError::BadRect {
            x: x.into(),
            y: y.into(),
            width: width.into(),
            height: height.into(),
        };
        if x < 0 || y < 0 || width <= 0 || height <= 0 {
            return Err(bad().into());
        }
        let (mw, mh) = map.size();
        // Damage reaching past the surface is clamped; damage wholly outside it is an error.
        let rect = Rect::new(x as u32, y as u32, width as u32, height as u32)
            .clamp_to(mw, mh)
            .ok_or_else(bad)?;
        let format = map.pixman();
        let (data, stride) = map.read(rect)?;
        self.publisher.update(
            rect.x as i32,
            rect.y as i32,
            rect.w as i32,
            rect.h as i32,
            stride as u32,
            format,
            data,
        )?;
        self.publisher
            .counters
            .map_updates
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// QEMU waits for the `ScanoutMap` reply on its main loop (1 s timeout): the handler reads the
/// surface once and returns. Handled in arrival order, like the base listener.
#[zbus::interface(name = "org.qemu.Display1.Listener.Unix.Map", spawn = false)]
impl MapListener {
    fn scanout_map(
        &self,
        handle: zbus::Fd<'_>,
        offset: u32,
        width: u32,
        height: u32,
        stride: u32,
        pixman_format: u32,
    ) -> zbus::fdo::Result<()> {
        tracing::debug!(
            offset,
            width,
            height,
            stride,
            format = format_args!("{pixman_format:#x}"),
            "ScanoutMap"
        );
        // The message's descriptor is only borrowed: keep our own.
        let fd = handle
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| self.refuse("ScanoutMap", &MapError::Io(e)))?;
        self.scanout_map_inner(fd, offset, width, height, stride, pixman_format)
            .map_err(|e| {
                // Whatever was shared before is no longer what QEMU shows.
                self.slot.clear();
                self.refuse("ScanoutMap", &e)
            })
    }

    fn update_map(&self, x: i32, y: i32, width: i32, height: i32) -> zbus::fdo::Result<()> {
        tracing::trace!(x, y, width, height, "UpdateMap");
        self.update_map_inner(x, y, width, height)
            .map_err(|e| self.refuse("UpdateMap", &e))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::{memfd_create, MemfdFlags};
    use scanoutd_ring::FrameBus;
    use tokio::sync::watch;

    use super::*;
    use crate::listener::{CursorState, Listener};

    const XRGB: u32 = 0x2002_0888;

    fn memfd(bytes: &[u8]) -> File {
        let fd = memfd_create("scanoutd-test", MemfdFlags::CLOEXEC).unwrap();
        let f = File::from(fd);
        f.write_all_at(bytes, 0).unwrap();
        f
    }

    /// A 3x2 x8r8g8b8 surface at stride 16 (one pixel of padding), after `offset` bytes.
    fn surface(offset: usize) -> Vec<u8> {
        let mut v = vec![0xEE; offset];
        for y in 0..2u8 {
            for x in 0..3u8 {
                v.extend_from_slice(&[x, y, 0x40, 0]);
            }
            v.extend_from_slice(&[0xAB; 4]);
        }
        v
    }

    #[test]
    fn shared_map_validation() {
        let f = memfd(&surface(0));
        let fd = || f.as_fd().try_clone_to_owned().unwrap();
        assert!(SharedMap::new(fd(), 0, 3, 2, 16, XRGB).is_ok());
        // The last row needs no padding: 28 bytes are enough, 29 from offset 4 are not.
        assert!(SharedMap::new(fd(), 4, 3, 2, 16, XRGB).is_ok());
        assert!(matches!(
            SharedMap::new(fd(), 8, 3, 2, 16, XRGB),
            Err(MapError::TooSmall { need: 28, .. })
        ));
        assert!(matches!(
            SharedMap::new(fd(), u32::MAX, 3, 2, 16, XRGB),
            Err(MapError::TooSmall { .. })
        ));
        assert!(matches!(
            SharedMap::new(fd(), 0, 3, 2, 8, XRGB),
            Err(MapError::Frame(FrameError::BadStride { .. }))
        ));
        assert!(matches!(
            SharedMap::new(fd(), 0, 3, 2, 16, 0x1234),
            Err(MapError::Frame(FrameError::UnknownFormat(0x1234)))
        ));
        assert!(matches!(
            SharedMap::new(fd(), 0, 0, 2, 16, XRGB),
            Err(MapError::Frame(FrameError::BadSize { .. }))
        ));
        assert!(matches!(
            SharedMap::new(fd(), 0, u32::MAX, u32::MAX, u32::MAX, XRGB),
            Err(MapError::Frame(FrameError::BadSize { .. }))
        ));
        // Not a regular file.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            SharedMap::new(OwnedFd::from(a), 0, 1, 1, 4, XRGB),
            Err(MapError::NotAFile)
        ));
        // Row by row (narrow) and in one block (wide) read the same pixels.
        let mut m = SharedMap::new(fd(), 0, 3, 2, 16, XRGB).unwrap();
        let (d, s) = m.read(Rect::new(1, 0, 1, 2)).unwrap();
        assert_eq!((d, s), (&[1, 0, 0x40, 0, 1, 1, 0x40, 0][..], 4));
        let (d, s) = m.read(Rect::new(0, 1, 3, 1)).unwrap();
        assert_eq!(s, 16);
        assert_eq!(&d[..12], &[0, 1, 0x40, 0, 1, 1, 0x40, 0, 2, 1, 0x40, 0]);
        // Outside the surface, or empty: refused before any read.
        assert!(m.read(Rect::new(2, 0, 2, 1)).is_err());
        assert!(m.read(Rect::new(0, 0, 0, 1)).is_err());
        // The file shrinking under us is an error, not a panic.
        f.set_len(20).unwrap();
        assert!(matches!(
            m.read(Rect::new(0, 0, 3, 2)),
            Err(MapError::Io(_))
        ));
    }

    /// Both listener interfaces as QEMU sees them: `Interfaces` advertises the Map interface,
    /// ScanoutMap + UpdateMap with a memfd reach the bus, bad arguments get error replies and
    /// leave the picture alone, and an inline Scanout takes over again.
    #[tokio::test]
    async fn map_listener_over_a_p2p_connection() {
        let bus = FrameBus::new();
        let publisher = Publisher::new(bus.clone());
        let slot = Arc::new(MapSlot::default());
        let (cursor_tx, _cursor) = watch::channel(CursorState::default());
        let object = Listener {
            publisher: Arc::clone(&publisher),
            cursor: cursor_tx,
            dmabuf: Arc::new(crate::dmabuf::DmabufSink::new(None, Arc::clone(&publisher))),
            interfaces: vec![MAP_INTERFACE.to_owned()],
            map: Arc::clone(&slot),
        };
        let map = MapListener {
            publisher: Arc::clone(&publisher),
            slot: Arc::clone(&slot),
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let client = zbus::connection::Builder::unix_stream(ours)
            .p2p()
            .serve_at(crate::LISTENER_PATH, object)
            .serve_at(crate::LISTENER_PATH, map)
            .build();
        let server = zbus::connection::Builder::unix_stream(theirs)
            .server(zbus::Guid::generate())
            .p2p()
            .build();
        let (client, qemu) = tokio::join!(client, server);
        let (_client, qemu) = (client.unwrap(), qemu.unwrap());

        // What QEMU reads at registration.
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
        assert_eq!(list, vec![MAP_INTERFACE.to_owned()]);

        let iface = Some(MAP_INTERFACE);
        macro_rules! call {
            ($member:expr, $body:expr) => {
                qemu.call_method(None::<&str>, crate::LISTENER_PATH, iface, $member, $body)
                    .await
            };
        }
        // UpdateMap before any ScanoutMap.
        let err = call!("UpdateMap", &(0i32, 0i32, 1i32, 1i32)).unwrap_err();
        assert!(err.to_string().contains("before any ScanoutMap"), "{err}");

        let file = memfd(&surface(8));
        let fd = || zbus::Fd::from(file.as_fd());
        call!("ScanoutMap", &(fd(), 8u32, 3u32, 2u32, 16u32, XRGB)).unwrap();
        let f = bus.latest().unwrap();
        assert_eq!((f.width, f.height), (3, 2));
        assert_eq!(f.pixel(2, 1), 0x400102);
        drop(f);
        assert!(slot.is_set());

        // QEMU (and the guest) write into the memory, then say where.
        file.write_all_at(&[0x11, 0x22, 0x33, 0], 8 + 16 + 4)
            .unwrap();
        file.write_all_at(&[0x55, 0x55, 0x55, 0], 8).unwrap(); // not announced yet
        call!("UpdateMap", &(1i32, 1i32, 1i32, 1i32)).unwrap();
        let f = bus.latest().unwrap();
        assert_eq!(f.pixel(1, 1), 0x332211);
        assert_eq!(f.pixel(0, 0), 0x400000);
        drop(f);
        // Damage reaching past the surface is clamped.
        call!("UpdateMap", &(0i32, 0i32, 100i32, 1i32)).unwrap();
        assert_eq!(bus.latest().unwrap().pixel(0, 0), 0x555555);

        // Bad arguments: error replies, the picture stays.
        let published = bus.published();
        for (args, want) in [
            ((0i32, 0i32, 0i32, 1i32), "bad rectangle"),
            ((-1, 0, 1, 1), "bad rectangle"),
            ((3, 0, 1, 1), "bad rectangle"),
            ((i32::MAX, i32::MAX, i32::MAX, i32::MAX), "bad rectangle"),
        ] {
            let err = call!("UpdateMap", &args).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        let err = call!("ScanoutMap", &(fd(), 8u32, 3u32, 3u32, 16u32, XRGB)).unwrap_err();
        assert!(err.to_string().contains("bytes from offset"), "{err}");
        let err = call!("ScanoutMap", &(fd(), 0u32, 3u32, 2u32, 16u32, 7u32)).unwrap_err();
        assert!(err.to_string().contains("unsupported pixman"), "{err}");
        let null = File::open("/dev/null").unwrap();
        let err = call!(
            "ScanoutMap",
            &(zbus::Fd::from(null.as_fd()), 0u32, 1u32, 1u32, 4u32, XRGB)
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(bus.published(), published);
        // A refused ScanoutMap drops the old map: updates need a new one.
        assert!(!slot.is_set());
        assert!(call!("UpdateMap", &(0i32, 0i32, 1i32, 1i32)).is_err());

        // Map again, then an inline Scanout replaces it.
        call!("ScanoutMap", &(fd(), 8u32, 3u32, 2u32, 16u32, XRGB)).unwrap();
        let px: &[u8] = &[9, 9, 9, 0];
        qemu.call_method(
            None::<&str>,
            crate::LISTENER_PATH,
            Some("org.qemu.Display1.Listener"),
            "Scanout",
            &(1u32, 1u32, 4u32, XRGB, px),
        )
        .await
        .unwrap();
        assert!(!slot.is_set());
        let f = bus.latest().unwrap();
        assert_eq!((f.width, f.height, f.pixel(0, 0)), (1, 1, 0x090909));
        let c = &publisher.counters;
        assert_eq!(c.map_scanouts.load(Ordering::Relaxed), 2);
        assert_eq!(c.map_updates.load(Ordering::Relaxed), 2);
        assert_eq!(c.scanouts.load(Ordering::Relaxed), 3);
    }
}
