//! The GPU path for GL guests: a `scanoutd-gpu` worker thread (EGL import of QEMU's dmabufs,
//! fenced readback) behind the QEMU source's [`DmabufReader`] interface.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use scanoutd_gpu::{GpuOptions, GpuWorker, ReadRequest, Target, WorkerConfig};
use scanoutd_qemu::{DmabufRead, DmabufReadFuture, DmabufReader};
use scanoutd_types::{Dmabuf, Rect};

/// `--gpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuMode {
    /// Use a GPU that can import dmabufs when there is one; without it GL (`gl=on`) guests
    /// cannot be shown (2D guests are unaffected) and the log says so.
    Auto,
    /// Like auto, but refuse to start without a usable GPU path.
    Require,
    /// Never touch the GPU: GL scanouts are refused.
    Off,
}

/// [`DmabufReader`] on a [`GpuWorker`].
pub struct GpuReader(GpuWorker);

impl GpuReader {
    /// The worker's counters (exported on `/metrics`).
    pub fn stats(&self) -> scanoutd_gpu::WorkerStats {
        self.0.stats()
    }
}

impl std::fmt::Debug for GpuReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GpuReader")
            .field(&self.0.info().gl_renderer)
            .finish()
    }
}

impl DmabufReader for GpuReader {
    fn read(&self, buf: Arc<Dmabuf>, rect: Rect, dst: Vec<u8>) -> Result<DmabufReadFuture, String> {
        let rx = self
            .0
            .read(ReadRequest {
                buf,
                rect,
                dst,
                target: Target::Packed,
            })
            .map_err(|e| e.to_string())?;
        Ok(Box::pin(async move {
            match rx.await {
                Ok(out) => DmabufRead {
                    pixels: out.dst,
                    result: out.result.map(|_| ()).map_err(|e| e.to_string()),
                },
                Err(_) => DmabufRead {
                    pixels: Vec::new(),
                    result: Err("the GPU thread ended".into()),
                },
            }
        }))
    }
}

/// Bring the GPU path up (on a blocking thread: EGL initialisation takes a moment), or say
/// clearly why there is none.
pub async fn start(mode: GpuMode, render_node: Option<PathBuf>) -> Result<Option<Arc<GpuReader>>> {
    if mode == GpuMode::Off {
        tracing::info!("GPU path off (--gpu off): GL scanouts (gl=on) will be refused");
        return Ok(None);
    }
    let config = WorkerConfig {
        gpu: GpuOptions {
            render_node,
            ..GpuOptions::default()
        },
        ..WorkerConfig::default()
    };
    let spawned = tokio::task::spawn_blocking(move || GpuWorker::spawn(config)).await?;
    let reason = match spawned {
        Ok(worker) => {
            let info = worker.info().clone();
            if info.dmabuf_import && !info.software {
                tracing::info!(
                    renderer = %info.gl_renderer, node = ?info.drm_node, platform = info.platform,
                    modifiers = info.dmabuf_import_modifiers,
                    "GPU path ready: GL (DMABUF) scanouts are imported with EGL"
                );
                return Ok(Some(Arc::new(GpuReader(worker))));
            }
            if info.software {
                format!(
                    "only a software renderer ({}) is available, and it cannot import dmabufs",
                    info.gl_renderer
                )
            } else {
                format!("{} cannot import dmabufs", info.gl_renderer)
            }
        }
        Err(e) => e.to_string(),
    };
    if mode == GpuMode::Require {
        bail!("--gpu require: no GPU path: {reason}");
    }
    tracing::warn!(
        "no GPU path ({reason}): GL guests (-display dbus,gl=on) cannot be shown; 2D guests \
         (gl=off) are unaffected"
    );
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// On this kind of machine (llvmpipe, no DRM device) there is no usable GPU path: `auto`
    /// goes on without one, `require` refuses to start with the reason, `off` never tries.
    #[tokio::test]
    async fn modes_without_a_hardware_gpu() {
        if std::path::Path::new("/dev/dri").exists() {
            scanoutd_testkit::require::skip(
                "no-gpu",
                "this machine has /dev/dri; the hardware path is in hwtests",
            );
            return;
        }
        assert!(start(GpuMode::Off, None).await.unwrap().is_none());
        assert!(start(GpuMode::Auto, None).await.unwrap().is_none());
        let err = start(GpuMode::Require, None).await.unwrap_err().to_string();
        assert!(err.contains("no GPU path"), "{err}");
    }

    /// The adapter turns the worker's answer into the source's: a buffer the GPU cannot import
    /// (a plain file, not a dmabuf) comes back as an error, promptly, with its buffer.
    #[tokio::test]
    async fn a_failed_import_comes_back_as_an_error() {
        let worker = match GpuWorker::spawn(WorkerConfig::default()) {
            Ok(w) => w,
            Err(e) => {
                scanoutd_testkit::require::skip("egl", &format!("no EGL at all here: {e}"));
                return;
            }
        };
        let reader = GpuReader(worker);
        let path = std::env::temp_dir().join(format!("scanoutd-gpu-path-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[0u8; 64 * 16 * 4]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let buf = Dmabuf::single_plane(
            f.into(),
            64,
            16,
            256,
            scanoutd_types::Fourcc(0x3432_5258),
            0,
            false,
        )
        .unwrap();
        let fut = reader
            .read(
                Arc::new(buf),
                Rect::new(0, 0, 64, 16),
                Vec::with_capacity(7),
            )
            .unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), fut)
            .await
            .unwrap();
        let err = out.result.unwrap_err();
        assert!(err.contains("import") || err.contains("EGL"), "{err}");
    }
}
