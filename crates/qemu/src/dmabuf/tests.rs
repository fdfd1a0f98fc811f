//! The GL path driven like QEMU drives it, over a peer-to-peer D-Bus connection, with a reader
//! that treats the "dmabuf" as a linear BGRx file (no real dmabuf exists without a GPU).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scanoutd_ring::FrameBus;
use scanoutd_types::{Dmabuf, Rect};
use tokio::sync::{watch, Notify};

use super::*;
use crate::listener::{CursorState, Listener, Publisher};

const XR24: u32 = 0x3432_5258;

/// How the fake GPU behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    /// Waits for `gate` before copying.
    Gated,
    Fails,
    Busy,
    Never,
}

#[derive(Debug)]
struct FakeGpu {
    mode: Mode,
    gate: Arc<Notify>,
    reads: AtomicUsize,
}

impl FakeGpu {
    fn new(mode: Mode) -> Arc<Self> {
        Arc::new(FakeGpu {
            mode,
            gate: Arc::new(Notify::new()),
            reads: AtomicUsize::new(0),
        })
    }
}

/// Copy `rect` (display rows) of a linear BGRx buffer, flipping rows for `y0_top`.
fn copy_linear(buf: &Dmabuf, rect: Rect, dst: &mut Vec<u8>) -> Result<(), String> {
    let plane = &buf.planes[0];
    let file = File::from(plane.fd.try_clone().map_err(|e| e.to_string())?);
    dst.clear();
    let mut row = vec![0u8; rect.w as usize * 4];
    for y in rect.y..rect.y + rect.h {
        let src_row = if buf.y0_top { buf.height - 1 - y } else { y };
        let off = u64::from(plane.offset)
            + u64::from(src_row) * u64::from(plane.stride)
            + u64::from(rect.x) * 4;
        file.read_exact_at(&mut row, off)
            .map_err(|e| e.to_string())?;
        dst.extend_from_slice(&row);
    }
    Ok(())
}

impl DmabufReader for FakeGpu {
    fn read(
        &self,
        buf: Arc<Dmabuf>,
        rect: Rect,
        mut dst: Vec<u8>,
    ) -> Result<DmabufReadFuture, String> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let (mode, gate) = (self.mode, Arc::clone(&self.gate));
        match mode {
            Mode::Busy => return Err("queue full".into()),
            Mode::Fails => {
                return Ok(Box::pin(async move {
                    DmabufRead {
                        pixels: dst,
                        result: Err("eglCreateImage returned EGL_BAD_MATCH".into()),
                    }
                }))
            }
            _ => {}
        }
        Ok(Box::pin(async move {
            match mode {
                Mode::Gated => gate.notified().await,
                Mode::Never => std::future::pending::<()>().await,
                _ => {}
            }
            let result = copy_linear(&buf, rect, &mut dst);
            DmabufRead {
                pixels: dst,
                result,
            }
        }))
    }
}

/// A "dmabuf": a file of `h` rows of `stride` bytes, pixel (x, y) = 0x00RRGGBB with
/// R = x, G = y, B = `salt`.
fn buffer(w: u32, h: u32, stride: u32, salt: u8) -> File {
    let path = std::env::temp_dir().join(format!(
        "scanoutd-dmabuf-{}-{:?}-{salt}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut data = vec![0u8; (stride * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let o = (y * stride + x * 4) as usize;
            data[o..o + 4].copy_from_slice(&[salt, y as u8, x as u8, 0xff]);
        }
    }
    f.write_all(&data).unwrap();
    f
}

fn expect_pixel(x: u32, y: u32, salt: u8) -> u32 {
    (x & 0xff) << 16 | (y & 0xff) << 8 | u32::from(salt)
}

struct Rig {
    bus: FrameBus,
    sink: Arc<DmabufSink>,
    qemu: zbus::Connection,
    _ours: zbus::Connection,
}

async fn rig(gpu: Option<Arc<FakeGpu>>, timeout: Duration) -> Rig {
    let bus = FrameBus::new();
    let publisher = Publisher::new(bus.clone());
    let reader = gpu.map(|g| g as Arc<dyn DmabufReader>);
    let sink = Arc::new(DmabufSink::new(reader, Arc::clone(&publisher)).with_timeout(timeout));
    let (cursor, _) = watch::channel(CursorState::default());
    let object = Listener {
        publisher,
        cursor,
        dmabuf: Arc::clone(&sink),
        interfaces: vec![DMABUF2_INTERFACE.to_owned()],
        map: Arc::default(),
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = zbus::connection::Builder::unix_stream(ours)
        .p2p()
        .serve_at(crate::LISTENER_PATH, object)
        .serve_at(
            crate::LISTENER_PATH,
            Dmabuf2Listener {
                sink: Arc::clone(&sink),
            },
        )
        .build();
    let server = zbus::connection::Builder::unix_stream(theirs)
        .server(zbus::Guid::generate())
        .p2p()
        .build();
    let (ours, qemu) = tokio::join!(client, server);
    Rig {
        bus,
        sink,
        qemu: qemu.unwrap(),
        _ours: ours.unwrap(),
    }
}

macro_rules! call {
    ($rig:expr, $iface:expr, $member:expr, $body:expr) => {
        $rig.qemu
            .call_method(
                None::<&str>,
                crate::LISTENER_PATH,
                Some($iface),
                $member,
                $body,
            )
            .await
    };
}

impl Rig {
    async fn scanout(
        &self,
        f: &File,
        w: u32,
        h: u32,
        stride: u32,
        y0_top: bool,
    ) -> zbus::Result<zbus::Message> {
        let body = (zbus::Fd::from(f.as_fd()), w, h, stride, XR24, 0u64, y0_top);
        call!(self, "org.qemu.Display1.Listener", "ScanoutDMABUF", &body)
    }

    async fn update(&self, x: i32, y: i32, w: i32, h: i32) -> zbus::Result<zbus::Message> {
        call!(
            self,
            "org.qemu.Display1.Listener",
            "UpdateDMABUF",
            &(x, y, w, h)
        )
    }
}

#[tokio::test]
async fn gl_scanouts_and_updates_reach_the_ring() {
    let gpu = FakeGpu::new(Mode::Ok);
    let r = rig(Some(Arc::clone(&gpu)), READ_TIMEOUT).await;
    let (w, h, stride) = (64, 32, 320);
    let f = buffer(w, h, stride, 7);
    r.scanout(&f, w, h, stride, false).await.unwrap();
    let frame = r.bus.latest().unwrap();
    assert_eq!((frame.width, frame.height), (w, h));
    for (x, y) in [(0, 0), (63, 0), (5, 31), (63, 31)] {
        assert_eq!(frame.pixel(x, y), expect_pixel(x, y, 7), "({x},{y})");
    }
    drop(frame);
    // The guest draws into the same buffer; damage says where.
    let g = buffer(w, h, stride, 99);
    let mut new = vec![0u8; (stride * h) as usize];
    g.read_exact_at(&mut new, 0).unwrap();
    f.write_all_at(&new, 0).unwrap();
    r.update(8, 4, 16, 8).await.unwrap();
    let frame = r.bus.latest().unwrap();
    assert_eq!(frame.pixel(8, 4), expect_pixel(8, 4, 99));
    assert_eq!(frame.pixel(23, 11), expect_pixel(23, 11, 99));
    assert_eq!(
        frame.pixel(24, 11),
        expect_pixel(24, 11, 7),
        "outside the damage"
    );
    assert_eq!(
        frame.pixel(8, 12),
        expect_pixel(8, 12, 7),
        "outside the damage"
    );
    drop(frame);
    // Damage reaching past the buffer is clipped; negative damage is ignored (and answered).
    r.update(60, 30, 100, 100).await.unwrap();
    r.update(-1, 0, 4, 4).await.unwrap();
    assert_eq!(gpu.reads.load(Ordering::Relaxed), 3);
    assert_eq!(r.sink.counters.failed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn bottom_up_buffers_are_shown_top_down() {
    let r = rig(Some(FakeGpu::new(Mode::Ok)), READ_TIMEOUT).await;
    let (w, h, stride) = (16, 8, 64);
    let f = buffer(w, h, stride, 1);
    r.scanout(&f, w, h, stride, true).await.unwrap();
    let frame = r.bus.latest().unwrap();
    // Buffer row 0 is the bottom of the picture.
    assert_eq!(frame.pixel(3, 7), expect_pixel(3, 0, 1));
    assert_eq!(frame.pixel(3, 0), expect_pixel(3, 7, 1));
    drop(frame);
    // Damage in buffer rows 0..2 is the bottom two rows of the picture.
    let g = buffer(w, h, stride, 50);
    let mut new = vec![0u8; (stride * h) as usize];
    g.read_exact_at(&mut new, 0).unwrap();
    f.write_all_at(&new, 0).unwrap();
    r.update(0, 0, 16, 2).await.unwrap();
    let frame = r.bus.latest().unwrap();
    assert_eq!(frame.pixel(3, 7), expect_pixel(3, 0, 50));
    assert_eq!(frame.pixel(3, 6), expect_pixel(3, 1, 50));
    assert_eq!(frame.pixel(3, 5), expect_pixel(3, 2, 1), "not damaged");
}

#[tokio::test]
async fn update_is_answered_only_once_the_copy_is_in_the_ring() {
    let gpu = FakeGpu::new(Mode::Gated);
    let r = Arc::new(rig(Some(Arc::clone(&gpu)), Duration::from_secs(5)).await);
    let (w, h, stride) = (32, 16, 128);
    let f = buffer(w, h, stride, 3);
    let scanout = {
        let r = Arc::clone(&r);
        let fd = f.try_clone().unwrap();
        tokio::spawn(async move { r.scanout(&fd, w, h, stride, false).await })
    };
    // QEMU's call is pending while the GPU copy is not done, and nothing is published yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!scanout.is_finished());
    assert_eq!(r.bus.published(), 0);
    gpu.gate.notify_one();
    tokio::time::timeout(Duration::from_secs(5), scanout)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.bus.published(), 1, "published before the reply");

    f.write_all_at(&[0, 0, 0xee, 0xff], 0).unwrap();
    let update = {
        let r = Arc::clone(&r);
        tokio::spawn(async move { r.update(0, 0, 1, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !update.is_finished(),
        "UpdateDMABUF answered before the copy"
    );
    gpu.gate.notify_one();
    tokio::time::timeout(Duration::from_secs(5), update)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.bus.latest().unwrap().pixel(0, 0), 0xee0000);
}

#[tokio::test]
async fn a_stalled_busy_or_failing_gpu_never_holds_the_guest() {
    let (w, h, stride) = (8, 8, 32);
    for mode in [Mode::Never, Mode::Busy, Mode::Fails] {
        let r = rig(Some(FakeGpu::new(mode)), Duration::from_millis(150)).await;
        let f = buffer(w, h, stride, 9);
        let t = std::time::Instant::now();
        // The scanout's own read fails too; QEMU is answered.
        r.scanout(&f, w, h, stride, false).await.unwrap();
        r.update(0, 0, 8, 8).await.unwrap();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(2), "{mode:?}: held {took:?}");
        assert_eq!(
            r.sink.counters.failed.load(Ordering::Relaxed),
            2,
            "{mode:?}"
        );
        assert_eq!(r.bus.published(), 0, "{mode:?}");
    }
}

#[tokio::test]
async fn without_a_gpu_gl_scanouts_are_refused_and_updates_answered() {
    let r = rig(None, READ_TIMEOUT).await;
    let f = buffer(8, 8, 32, 0);
    let err = r.scanout(&f, 8, 8, 32, false).await.unwrap_err();
    assert!(err.to_string().contains("need the GPU path"), "{err}");
    r.update(0, 0, 8, 8).await.unwrap();
    assert_eq!(r.bus.published(), 0);
}

#[tokio::test]
async fn scanout_dmabuf2_shows_the_visible_rectangle() {
    let r = rig(Some(FakeGpu::new(Mode::Ok)), READ_TIMEOUT).await;
    let (bw, bh, stride) = (64, 32, 256);
    let f = buffer(bw, bh, stride, 4);
    let fds = vec![zbus::Fd::from(f.as_fd())];
    let iface = DMABUF2_INTERFACE;
    let body = (
        &fds,
        8u32,
        4u32,
        32u32,
        16u32,
        vec![0u32],
        vec![stride],
        1u32,
        XR24,
        bw,
        bh,
        0u64,
        false,
    );
    call!(r, iface, "ScanoutDMABUF2", &body).unwrap();
    let frame = r.bus.latest().unwrap();
    assert_eq!((frame.width, frame.height), (32, 16));
    assert_eq!(frame.pixel(0, 0), expect_pixel(8, 4, 4));
    assert_eq!(frame.pixel(31, 15), expect_pixel(39, 19, 4));
    drop(frame);
    // Damage is relative to the visible rectangle.
    f.write_all_at(&[1, 2, 3, 0xff], u64::from(5 * stride + 10 * 4))
        .unwrap();
    r.update(2, 1, 1, 1).await.unwrap();
    assert_eq!(r.bus.latest().unwrap().pixel(2, 1), 0x030201);
    // Malformed ones are refused with the reason.
    let bad = [
        (0u32, vec![0u32], vec![stride], "0 planes"),
        (2, vec![0], vec![stride], "2 planes but 1 offsets"),
        (1, vec![0], vec![4], "stride"),
    ];
    for (planes, offsets, strides, want) in bad {
        let body = (
            &fds, 0u32, 0u32, 8u32, 8u32, offsets, strides, planes, XR24, bw, bh, 0u64, false,
        );
        let err = call!(r, iface, "ScanoutDMABUF2", &body).unwrap_err();
        assert!(err.to_string().contains(want), "{err} lacks {want:?}");
    }
    let outside = (
        &fds,
        60u32,
        0u32,
        8u32,
        8u32,
        vec![0u32],
        vec![stride],
        1u32,
        XR24,
        bw,
        bh,
        0u64,
        false,
    );
    let err = call!(r, iface, "ScanoutDMABUF2", &outside).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
}
