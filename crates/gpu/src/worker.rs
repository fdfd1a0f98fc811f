//! [`GpuWorker`]: a [`Gpu`] on a thread of its own, fed through a bounded queue.
//!
//! The EGL context is bound to one thread, so every GPU job runs there. Callers (the QEMU
//! listener, on tokio) submit with [`GpuWorker::read`], which never blocks: a full queue is
//! refused at once with [`GpuError::QueueFull`]. The answer comes back on a
//! `tokio::sync::oneshot` channel, to `.await` in async code or `blocking_recv()` elsewhere;
//! it carries the caller's buffer back with the pixels in it, so buffers are recycled.
//!
//! For QEMU's `UpdateDMABUF`: submit a read of the damaged rectangle, await the outcome, and
//! reply to QEMU only then — the pixels are in CPU memory (the copy is fenced) when the
//! outcome arrives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use scanoutd_types::{Dmabuf, Rect};
use tokio::sync::oneshot;

use crate::egl::GpuOptions;
use crate::error::GpuError;
use crate::gpu::{Gpu, GpuInfo, GpuStats};

/// How a [`GpuWorker`] is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub gpu: GpuOptions,
    /// Jobs that may wait while one runs (at least 1). More are refused.
    pub queue_depth: usize,
    /// How long [`GpuWorker::spawn`] waits for the thread to bring EGL up.
    pub start_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            gpu: GpuOptions::default(),
            queue_depth: 4,
            start_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the pixels of a read go in [`ReadRequest::dst`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Just the rectangle: `dst` is resized to its rows, tightly packed (stride `w * 4`).
    Packed,
    /// `dst` is a whole BGRx surface the size of the dmabuf with this stride (a `Frame`'s
    /// `data` and `stride`); the rectangle's pixels land at their own position, the rest is
    /// left alone.
    Surface { stride: usize },
}

/// Read a rectangle of a dmabuf (imported on the GPU thread, or found in its cache).
#[derive(Debug)]
pub struct ReadRequest {
    /// The current scanout. Shared so the listener keeps its copy; the worker's cache keeps
    /// its own duplicate of the fd.
    pub buf: Arc<Dmabuf>,
    /// In display coordinates (top-down; the flip for `buf.y0_top` is done by the read).
    /// Clamped to the buffer; an empty result is an error.
    ///
    /// QEMU's `UpdateDMABUF` damage on a `y0_top` buffer may be in buffer rows: libmks flips
    /// its y against the height (`shared/docs/qemu-dbus-display.md` §3.8), which is not yet
    /// verified here. Until it is, convert with `Rect::new(x, height - y - h, w, h)` as libmks
    /// does, or read the whole frame.
    pub rect: Rect,
    pub dst: Vec<u8>,
    pub target: Target,
}

/// What a successful read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadInfo {
    /// The rectangle read (the request's, clamped to the buffer).
    pub rect: Rect,
    /// The stride of the rows in `dst`.
    pub stride: usize,
    /// The import came from the cache.
    pub cache_hit: bool,
    /// Time on the GPU thread (import + draw + fenced readback).
    pub elapsed: Duration,
}

/// The answer to a [`ReadRequest`]: the caller's buffer back, and how the read went.
#[derive(Debug)]
pub struct ReadOutcome {
    pub dst: Vec<u8>,
    pub result: Result<ReadInfo, GpuError>,
}

/// Counters of a [`GpuWorker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Jobs accepted into the queue.
    pub submitted: u64,
    /// Jobs refused because the queue was full.
    pub rejected: u64,
    pub completed: u64,
    pub failed: u64,
    /// Duration of the last job, and the longest, on the GPU thread.
    pub last_job: Duration,
    pub max_job: Duration,
    /// The GPU's own counters, as of the last job.
    pub gpu: GpuStats,
}

/// What the GPU thread runs jobs on: [`Gpu`], or a fake in tests.
pub(crate) trait Backend {
    /// Import (or find) `buf` and read `rect` of it into `dst` at `dst_stride`, flipping by
    /// `buf.y0_top`. Returns whether the import was cached.
    fn read(
        &mut self,
        buf: &Dmabuf,
        rect: Rect,
        dst: &mut [u8],
        dst_stride: usize,
    ) -> Result<bool, GpuError>;
    fn stats(&self) -> GpuStats;
}

impl Backend for Gpu {
    fn read(
        &mut self,
        buf: &Dmabuf,
        rect: Rect,
        dst: &mut [u8],
        dst_stride: usize,
    ) -> Result<bool, GpuError> {
        self.read_dmabuf(buf, rect, dst, dst_stride)
    }

    fn stats(&self) -> GpuStats {
        Gpu::stats(self)
    }
}

enum Job {
    Read(ReadRequest, oneshot::Sender<ReadOutcome>),
}

#[derive(Default)]
struct Shared {
    closing: AtomicBool,
    submitted: AtomicU64,
    rejected: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    last_us: AtomicU64,
    max_us: AtomicU64,
    gpu: Mutex<GpuStats>,
}

/// A [`Gpu`] on a dedicated thread with a bounded job queue. Dropping it stops the thread
/// (queued jobs are answered with [`GpuError::WorkerGone`]; a running one finishes) and
/// releases the GPU.
pub struct GpuWorker {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    info: GpuInfo,
    depth: usize,
}

impl GpuWorker {
    /// Start the GPU thread and bring EGL up on it. Blocks until it is up (at most
    /// `config.start_timeout`); from async code call it inside `spawn_blocking`.
    pub fn spawn(config: WorkerConfig) -> Result<GpuWorker, GpuError> {
        let opts = config.gpu.clone();
        GpuWorker::spawn_with(
            move || {
                let gpu = Gpu::with_options(&opts)?;
                let info = gpu.info().clone();
                Ok((gpu, info))
            },
            config.queue_depth,
            config.start_timeout,
        )
    }

    pub(crate) fn spawn_with<B, F>(
        make: F,
        queue_depth: usize,
        start_timeout: Duration,
    ) -> Result<GpuWorker, GpuError>
    where
        B: Backend,
        F: FnOnce() -> Result<(B, GpuInfo), GpuError> + Send + 'static,
    {
        let depth = queue_depth.max(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(depth);
        let (init_tx, init_rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("scanoutd-gpu".into())
            .spawn(move || {
                let backend = match make() {
                    Ok((b, info)) => {
                        if init_tx.send(Ok(info)).is_err() {
                            return; // spawn gave up waiting
                        }
                        b
                    }
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                        return;
                    }
                };
                run(backend, rx, &thread_shared);
            })
            .map_err(|e| GpuError::Spawn(e.to_string()))?;
        match init_rx.recv_timeout(start_timeout) {
            Ok(Ok(info)) => Ok(GpuWorker {
                tx: Some(tx),
                thread: Some(thread),
                shared,
                info,
                depth,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The thread exits on its own once its start-up ends (its sends fail).
                Err(GpuError::Spawn(format!(
                    "EGL did not come up within {start_timeout:?}"
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Err(GpuError::Spawn(
                    "the GPU thread ended during start-up".into(),
                ))
            }
        }
    }

    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Queue a read. Never blocks: a full queue gives [`GpuError::QueueFull`] and a stopped
    /// thread [`GpuError::WorkerGone`] (the request, and its buffer, are dropped). Otherwise
    /// the outcome arrives on the returned receiver; a receive error means the thread died.
    pub fn read(&self, req: ReadRequest) -> Result<oneshot::Receiver<ReadOutcome>, GpuError> {
        let Some(tx) = &self.tx else {
            return Err(GpuError::WorkerGone);
        };
        let (otx, orx) = oneshot::channel();
        match tx.try_send(Job::Read(req, otx)) {
            Ok(()) => {
                self.shared.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(orx)
            }
            Err(TrySendError::Full(_)) => {
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                Err(GpuError::QueueFull(self.depth))
            }
            Err(TrySendError::Disconnected(_)) => Err(GpuError::WorkerGone),
        }
    }

    pub fn stats(&self) -> WorkerStats {
        let s = &self.shared;
        WorkerStats {
            submitted: s.submitted.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            last_job: Duration::from_micros(s.last_us.load(Ordering::Relaxed)),
            max_job: Duration::from_micros(s.max_us.load(Ordering::Relaxed)),
            gpu: *s.gpu.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

impl GpuWorker {
    /// Refuse new jobs and have queued ones answered with [`GpuError::WorkerGone`].
    fn close(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        drop(self.tx.take());
    }
}

impl Drop for GpuWorker {
    fn drop(&mut self) {
        self.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<B: Backend>(mut backend: B, rx: Receiver<Job>, shared: &Shared) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Read(req, reply) => {
                if shared.closing.load(Ordering::Acquire) {
                    let _ = reply.send(ReadOutcome {
                        dst: req.dst,
                        result: Err(GpuError::WorkerGone),
                    });
                    continue;
                }
                let start = Instant::now();
                let mut out = read_job(&mut backend, req);
                let elapsed = start.elapsed();
                if let Ok(info) = &mut out.result {
                    info.elapsed = elapsed;
                }
                let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                shared.last_us.store(us, Ordering::Relaxed);
                shared.max_us.fetch_max(us, Ordering::Relaxed);
                let counter = if out.result.is_ok() {
                    &shared.completed
                } else {
                    &shared.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                *shared.gpu.lock().unwrap_or_else(|p| p.into_inner()) = backend.stats();
                let _ = reply.send(out);
            }
        }
    }
}

fn read_job<B: Backend>(backend: &mut B, req: ReadRequest) -> ReadOutcome {
    let ReadRequest {
        buf,
        rect,
        mut dst,
        target,
    } = req;
    let result = read_into(backend, &buf, rect, &mut dst, target);
    ReadOutcome { dst, result }
}

fn read_into<B: Backend>(
    backend: &mut B,
    buf: &Dmabuf,
    rect: Rect,
    dst: &mut Vec<u8>,
    target: Target,
) -> Result<ReadInfo, GpuError> {
    buf.validate()?;
    let Some(r) = rect.clamp_to(buf.width, buf.height) else {
        return Err(GpuError::BadRect {
            rect,
            width: buf.width,
            height: buf.height,
        });
    };
    let (offset, stride) = match target {
        Target::Packed => {
            let stride = r.w as usize * 4;
            dst.clear();
            dst.resize(stride * r.h as usize, 0);
            (0, stride)
        }
        Target::Surface { stride } => {
            crate::gpu::check_destination(dst.len(), stride, buf.width, buf.height)?;
            (r.y as usize * stride + r.x as usize * 4, stride)
        }
    };
    let cache_hit = backend.read(buf, r, &mut dst[offset..], stride)?;
    Ok(ReadInfo {
        rect: r,
        stride,
        cache_hit,
        elapsed: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanoutd_types::{DmabufPlane, Fourcc, DRM_FORMAT_MOD_LINEAR};
    use std::os::fd::OwnedFd;

    /// A backend that fills the rectangle with its position's bytes, optionally parking on
    /// each job until released.
    struct Fake {
        started: mpsc::Sender<()>,
        gate: Option<Receiver<()>>,
        reads: u64,
    }

    impl Backend for Fake {
        fn read(
            &mut self,
            _: &Dmabuf,
            rect: Rect,
            dst: &mut [u8],
            stride: usize,
        ) -> Result<bool, GpuError> {
            let _ = self.started.send(());
            if let Some(g) = &self.gate {
                let _ = g.recv();
            }
            for y in 0..rect.h as usize {
                for x in 0..rect.w as usize {
                    let o = y * stride + x * 4;
                    dst[o..o + 4].copy_from_slice(&[
                        (rect.x as usize + x) as u8,
                        (rect.y as usize + y) as u8,
                        0,
                        0xff,
                    ]);
                }
            }
            self.reads += 1;
            Ok(self.reads > 1)
        }
        fn stats(&self) -> GpuStats {
            GpuStats {
                reads: self.reads,
                ..Default::default()
            }
        }
    }

    fn info() -> GpuInfo {
        GpuInfo {
            platform: "fake",
            drm_node: None,
            software: true,
            egl_vendor: String::new(),
            egl_version: String::new(),
            gl_vendor: String::new(),
            gl_renderer: "fake".into(),
            gl_version: String::new(),
            dmabuf_import: false,
            dmabuf_import_modifiers: false,
            dmabuf_export: false,
            external_textures: false,
            bgra_upload: false,
            max_texture_size: 8192,
        }
    }

    fn fake_worker(
        depth: usize,
        gated: bool,
    ) -> (GpuWorker, mpsc::Receiver<()>, Option<mpsc::Sender<()>>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (gate_tx, gate_rx) = mpsc::channel();
        let gated_rx = gated.then_some(gate_rx);
        let w = GpuWorker::spawn_with(
            move || {
                Ok((
                    Fake {
                        started: started_tx,
                        gate: gated_rx,
                        reads: 0,
                    },
                    info(),
                ))
            },
            depth,
            Duration::from_secs(5),
        )
        .unwrap();
        (w, started_rx, gated.then_some(gate_tx))
    }

    fn buf(w: u32, h: u32) -> Arc<Dmabuf> {
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        Arc::new(Dmabuf {
            planes: vec![DmabufPlane {
                fd,
                offset: 0,
                stride: w * 4,
            }],
            width: w,
            height: h,
            fourcc: Fourcc::XRGB8888,
            modifier: DRM_FORMAT_MOD_LINEAR,
            y0_top: false,
        })
    }

    fn req(b: &Arc<Dmabuf>, rect: Rect) -> ReadRequest {
        ReadRequest {
            buf: b.clone(),
            rect,
            dst: Vec::new(),
            target: Target::Packed,
        }
    }

    #[test]
    fn full_queue_is_refused_at_once() {
        let (w, started, gate) = fake_worker(2, true);
        let gate = gate.unwrap();
        let b = buf(16, 16);
        let r = Rect::new(0, 0, 4, 4);
        // The first job is taken by the thread and parks there.
        let first = w.read(req(&b, r)).unwrap();
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        // Two more fill the queue; the next is refused without blocking.
        let queued: Vec<_> = (0..2).map(|_| w.read(req(&b, r)).unwrap()).collect();
        let t = Instant::now();
        assert!(matches!(w.read(req(&b, r)), Err(GpuError::QueueFull(2))));
        assert!(t.elapsed() < Duration::from_secs(1));
        let s = w.stats();
        assert_eq!((s.submitted, s.rejected), (3, 1));
        // Release everything: all accepted jobs complete.
        for _ in 0..3 {
            gate.send(()).unwrap();
        }
        for rx in std::iter::once(first).chain(queued) {
            let out = rx.blocking_recv().unwrap();
            assert_eq!(out.result.unwrap().rect, r);
        }
        let s = w.stats();
        assert_eq!((s.completed, s.failed), (3, 0));
        assert_eq!(s.gpu.reads, 3);
        // Room again.
        gate.send(()).unwrap();
        assert!(w
            .read(req(&b, r))
            .unwrap()
            .blocking_recv()
            .unwrap()
            .result
            .is_ok());
    }

    #[test]
    fn packed_and_surface_targets() {
        let (w, _started, _) = fake_worker(4, false);
        let b = buf(16, 8);
        // Packed, clamped to the buffer.
        let out = w
            .read(req(&b, Rect::new(14, 6, 10, 10)))
            .unwrap()
            .blocking_recv()
            .unwrap();
        let info = out.result.unwrap();
        assert_eq!(info.rect, Rect::new(14, 6, 2, 2));
        assert_eq!(info.stride, 8);
        assert_eq!(out.dst.len(), 16);
        assert_eq!(&out.dst[..4], &[14, 6, 0, 0xff]);
        assert_eq!(&out.dst[12..], &[15, 7, 0, 0xff]);
        assert!(!info.cache_hit);
        // Into a whole surface at its own position; the rest untouched.
        let stride = 16 * 4 + 8;
        let surface = vec![0xaa; stride * 8];
        let out = w
            .read(ReadRequest {
                buf: b.clone(),
                rect: Rect::new(3, 2, 2, 1),
                dst: surface,
                target: Target::Surface { stride },
            })
            .unwrap()
            .blocking_recv()
            .unwrap();
        let info = out.result.unwrap();
        assert!(info.cache_hit);
        let o = 2 * stride + 3 * 4;
        assert_eq!(&out.dst[o..o + 8], &[3, 2, 0, 0xff, 4, 2, 0, 0xff]);
        assert!(out.dst[..o].iter().all(|&v| v == 0xaa));
        assert!(out.dst[o + 8..].iter().all(|&v| v == 0xaa));
        // A surface too small, and a rectangle outside the buffer, fail and return the buffer.
        let out = w
            .read(ReadRequest {
                buf: b.clone(),
                rect: Rect::new(0, 0, 1, 1),
                dst: vec![0; 10],
                target: Target::Surface { stride: 64 },
            })
            .unwrap()
            .blocking_recv()
            .unwrap();
        assert!(matches!(out.result, Err(GpuError::BadDestination { .. })));
        assert_eq!(out.dst.len(), 10);
        let out = w
            .read(req(&b, Rect::new(16, 0, 4, 4)))
            .unwrap()
            .blocking_recv()
            .unwrap();
        assert!(matches!(out.result, Err(GpuError::BadRect { .. })));
        assert_eq!(w.stats().failed, 2);
    }

    #[test]
    fn drop_answers_queued_jobs_and_joins() {
        let (mut w, started, gate) = fake_worker(4, true);
        let gate = gate.unwrap();
        let b = buf(8, 8);
        let r = Rect::new(0, 0, 2, 2);
        let first = w.read(req(&b, r)).unwrap();
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        let queued = w.read(req(&b, r)).unwrap();
        // Closing while a job runs: the running one finishes, the queued one is refused.
        w.close();
        assert!(matches!(w.read(req(&b, r)), Err(GpuError::WorkerGone)));
        gate.send(()).unwrap();
        drop(w); // joins the thread
        assert!(first.blocking_recv().unwrap().result.is_ok());
        assert!(matches!(
            queued.blocking_recv().unwrap().result,
            Err(GpuError::WorkerGone)
        ));
    }

    #[test]
    fn start_up_failure_is_reported() {
        let r = GpuWorker::spawn_with::<Fake, _>(
            || Err(GpuError::NoDisplay("none here".into())),
            1,
            Duration::from_secs(5),
        );
        assert!(matches!(r, Err(GpuError::NoDisplay(_))));
    }
}
