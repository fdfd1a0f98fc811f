//! Tests on whatever EGL this machine has (llvmpipe in CI). They skip, saying why, only when
//! EGL itself cannot be brought up; with `SCANOUTD_REQUIRE=egl` (as CI sets it) that is a failure.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use scanoutd_types::{
    Dmabuf, DmabufPlane, Fourcc, Rect, DRM_FORMAT_MOD_INVALID, DRM_FORMAT_MOD_LINEAR,
};

use crate::*;

/// Whether this run must have EGL (`SCANOUTD_REQUIRE` names `egl`): then a missing EGL fails.
fn require_egl() -> bool {
    scanoutd_testkit::require::required("egl")
}

fn skip(reason: &str) {
    scanoutd_testkit::require::skip("egl", reason);
}

/// A GPU, or `None` (with the reason printed) when EGL cannot be initialised here.
fn gpu() -> Option<Gpu> {
    match Gpu::new_headless() {
        Ok(g) => Some(g),
        Err(e @ (GpuError::NoEgl(_) | GpuError::NoDisplay(_))) if !require_egl() => {
            skip(&format!("EGL cannot be initialised on this machine: {e}"));
            None
        }
        Err(e) => panic!("GPU set-up failed: {e}"),
    }
}

/// BGRx test pattern, every pixel distinct in its neighbourhood, X = 0xff; the padding
/// after each row is 0x55.
fn pattern(w: u32, h: u32, stride: usize) -> Vec<u8> {
    let mut v = vec![0x55; stride * h as usize];
    for y in 0..h as usize {
        for x in 0..w as usize {
            let o = y * stride + x * 4;
            v[o..o + 4].copy_from_slice(&[
                (x * 7 + y) as u8,
                (y * 3 + x * 11) as u8,
                (x ^ (y << 2)) as u8,
                0xff,
            ]);
        }
    }
    v
}

/// The bytes of `rect` of an image, rows top-down, optionally with rows taken bottom-up
/// from a `height`-row image (the y0_top rule: display row d is memory row height-1-d).
fn expected(src: &[u8], stride: usize, height: u32, rect: Rect, flip: bool) -> Vec<u8> {
    let row = rect.w as usize * 4;
    let mut out = Vec::new();
    for i in 0..rect.h {
        let d = rect.y + i;
        let m = if flip { height - 1 - d } else { d } as usize;
        let o = m * stride + rect.x as usize * 4;
        out.extend_from_slice(&src[o..o + row]);
    }
    out
}

fn read(gpu: &mut Gpu, t: &TextureHandle, rect: Rect, flip: bool) -> Vec<u8> {
    let mut dst = vec![0; rect.w as usize * 4 * rect.h as usize];
    gpu.read_bgrx(t, rect, flip, &mut dst, rect.w as usize * 4)
        .unwrap();
    dst
}

fn memfd(len: u64) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("scanoutd-gpu-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    fd
}

fn memfd_dmabuf(w: u32, h: u32, modifier: u64) -> Dmabuf {
    Dmabuf {
        planes: vec![DmabufPlane {
            fd: memfd(u64::from(w * h * 4)),
            offset: 0,
            stride: w * 4,
        }],
        width: w,
        height: h,
        fourcc: Fourcc::XRGB8888,
        modifier,
        y0_top: false,
    }
}

#[test]
fn context_comes_up_and_reports_itself() {
    let Some(gpu) = gpu() else { return };
    let i = gpu.info();
    eprintln!("{i:#?}");
    assert!(i.gl_version.starts_with("OpenGL ES 3"), "{}", i.gl_version);
    assert!(!i.gl_renderer.is_empty());
    assert!(i.platform == "device" || i.platform == "surfaceless");
    assert!(i.max_texture_size >= 2048);
}

#[test]
fn upload_then_read_is_exact() {
    let Some(mut gpu) = gpu() else { return };
    let (w, h) = (67, 45);
    let stride = w as usize * 4 + 12; // padded rows
    let px = pattern(w, h, stride);
    let t = gpu.upload_bgrx(w, h, &px, stride).unwrap();
    assert_eq!((t.width(), t.height()), (w, h));
    let got = read(&mut gpu, &t, t.bounds(), false);
    assert_eq!(got, expected(&px, stride, h, t.bounds(), false));
    let s = gpu.stats();
    assert_eq!((s.uploads, s.reads, s.read_failures), (1, 1, 0));
    assert_eq!(s.bytes_read, u64::from(w * h * 4));
}

#[test]
fn odd_stride_upload_is_repacked() {
    let Some(mut gpu) = gpu() else { return };
    let (w, h) = (9, 5);
    let stride = w as usize * 4 + 3; // not a multiple of 4
    let px = pattern(w, h, stride);
    let t = gpu.upload_bgrx(w, h, &px, stride).unwrap();
    assert_eq!(
        read(&mut gpu, &t, t.bounds(), false),
        expected(&px, stride, h, t.bounds(), false)
    );
}

#[test]
fn rgba_upload_fallback_is_exact() {
    let Some(mut gpu) = gpu() else { return };
    gpu.force_rgba_upload();
    for (w, h, stride) in [(31, 9, 31 * 4), (31, 9, 31 * 4 + 5)] {
        let px = pattern(w, h, stride);
        let t = gpu.upload_bgrx(w, h, &px, stride).unwrap();
        assert_eq!(
            read(&mut gpu, &t, t.bounds(), false),
            expected(&px, stride, h, t.bounds(), false)
        );
        let r = Rect::new(1, 2, 5, 6);
        assert_eq!(
            read(&mut gpu, &t, r, true),
            expected(&px, stride, h, r, true)
        );
    }
}

/// A GPU on one platform, or `None` when this machine's EGL lacks it.
fn gpu_on(platform: Platform) -> Option<Gpu> {
    let opts = GpuOptions {
        platform,
        ..Default::default()
    };
    match Gpu::with_options(&opts) {
        Ok(g) => Some(g),
        Err(e @ (GpuError::NoEgl(_) | GpuError::NoDisplay(_))) => {
            eprintln!("{platform:?} platform not available here: {e}");
            None
        }
        Err(e) => panic!("GPU set-up on {platform:?} failed: {e}"),
    }
}

#[test]
fn each_platform_reads_back_exactly() {
    let mut any = false;
    for (platform, name) in [
        (Platform::Device, "device"),
        (Platform::Surfaceless, "surfaceless"),
    ] {
        let Some(mut gpu) = gpu_on(platform) else {
            continue;
        };
        any = true;
        assert_eq!(gpu.info().platform, name);
        eprintln!("{name}: {}", gpu.info().gl_renderer);
        let px = pattern(20, 10, 80);
        let t = gpu.upload_bgrx(20, 10, &px, 80).unwrap();
        assert_eq!(
            read(&mut gpu, &t, t.bounds(), true),
            expected(&px, 80, 10, t.bounds(), true)
        );
    }
    if !any {
        skip("no EGL platform works on this machine");
    }
}

#[test]
fn software_can_be_refused() {
    let opts = GpuOptions {
        allow_software: false,
        ..Default::default()
    };
    match Gpu::with_options(&opts) {
        Ok(g) => assert!(!g.info().software, "{:?}", g.info()),
        Err(GpuError::NoDisplay(why)) => eprintln!("no hardware GPU: {why}"),
        Err(GpuError::NoEgl(why)) if !require_egl() => skip(&why),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_render_node_that_does_not_exist_is_not_found() {
    let opts = GpuOptions {
        render_node: Some("/dev/dri/renderD299".into()),
        ..Default::default()
    };
    match Gpu::with_options(&opts) {
        Err(GpuError::NoDisplay(why)) => assert!(
            why.contains("renderD299") || why.contains("no EGL"),
            "{why}"
        ),
        Err(GpuError::NoEgl(why)) if !require_egl() => skip(&why),
        Ok(g) => panic!("found {:?}", g.info()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn sub_rectangles_land_at_the_destination_stride() {
    let Some(mut gpu) = gpu() else { return };
    let (w, h) = (64, 48);
    let px = pattern(w, h, w as usize * 4);
    let t = gpu.upload_bgrx(w, h, &px, w as usize * 4).unwrap();
    for rect in [
        Rect::new(5, 7, 20, 11),
        Rect::new(0, 0, 1, 1),
        Rect::new(63, 47, 1, 1),
        Rect::new(0, 47, 64, 1),
        Rect::new(31, 0, 1, 48),
    ] {
        let dst_stride = rect.w as usize * 4 + 20;
        let mut dst = vec![0xee; dst_stride * rect.h as usize];
        gpu.read_bgrx(&t, rect, false, &mut dst, dst_stride)
            .unwrap();
        let want = expected(&px, w as usize * 4, h, rect, false);
        let row = rect.w as usize * 4;
        for i in 0..rect.h as usize {
            assert_eq!(
                &dst[i * dst_stride..i * dst_stride + row],
                &want[i * row..(i + 1) * row],
                "{rect:?} row {i}"
            );
            assert!(
                dst[i * dst_stride + row..(i + 1) * dst_stride]
                    .iter()
                    .all(|&b| b == 0xee),
                "padding after row {i} untouched"
            );
        }
    }
}

#[test]
fn y0_top_flips_rows() {
    let Some(mut gpu) = gpu() else { return };
    let (w, h) = (40, 30);
    let px = pattern(w, h, w as usize * 4);
    let t = gpu.upload_bgrx(w, h, &px, w as usize * 4).unwrap();
    let full = read(&mut gpu, &t, t.bounds(), true);
    // Display row 0 is memory row h-1.
    assert_eq!(
        &full[..w as usize * 4],
        &px[(h as usize - 1) * w as usize * 4..]
    );
    assert_eq!(full, expected(&px, w as usize * 4, h, t.bounds(), true));
    for rect in [
        Rect::new(3, 4, 10, 7),
        Rect::new(0, 29, 40, 1),
        Rect::new(39, 0, 1, 30),
    ] {
        assert_eq!(
            read(&mut gpu, &t, rect, true),
            expected(&px, w as usize * 4, h, rect, true),
            "{rect:?}"
        );
    }
}

#[test]
fn large_frame_round_trip_and_the_fence_completes() {
    let Some(mut gpu) = gpu() else { return };
    let (w, h) = (1920, 1080);
    let px = pattern(w, h, w as usize * 4);
    let t = gpu.upload_bgrx(w, h, &px, w as usize * 4).unwrap();
    let mut dst = vec![0; px.len()];
    for _ in 0..3 {
        let start = std::time::Instant::now();
        gpu.read_bgrx(&t, t.bounds(), false, &mut dst, w as usize * 4)
            .unwrap();
        eprintln!("1080p fenced readback: {:?}", start.elapsed());
    }
    assert!(dst == px);
    assert_eq!(gpu.stats().reads, 3);
}

#[test]
fn egl_image_binding_path_reads_back_exactly() {
    // Everything after eglCreateImage(dmabuf): an EGLImage bound with
    // glEGLImageTargetTexture2DOES, as a 2D texture and (when supported) as an external one.
    let Some(mut gpu) = gpu() else { return };
    let (w, h) = (33, 17);
    let px = pattern(w, h, w as usize * 4);
    let t = gpu.upload_bgrx(w, h, &px, w as usize * 4).unwrap();
    let img = gpu.reimport_via_egl_image(&t, false).unwrap();
    assert_eq!(
        read(&mut gpu, &img, img.bounds(), false),
        expected(&px, w as usize * 4, h, img.bounds(), false)
    );
    let r = Rect::new(2, 3, 9, 8);
    assert_eq!(
        read(&mut gpu, &img, r, true),
        expected(&px, w as usize * 4, h, r, true)
    );
    if gpu.info().external_textures {
        let ext = gpu.reimport_via_egl_image(&t, true).unwrap();
        assert_eq!(
            read(&mut gpu, &ext, r, true),
            expected(&px, w as usize * 4, h, r, true)
        );
        assert!(gpu.release(ext));
    } else {
        eprintln!("external textures not supported: external path not exercised");
    }
    assert!(gpu.release(img));
    assert!(gpu.release(t));
    assert_eq!(gpu.stats().live_textures, 0);
}

#[test]
fn importing_a_memfd_fails_cleanly() {
    let Some(mut gpu) = gpu() else { return };
    for modifier in [DRM_FORMAT_MOD_LINEAR, DRM_FORMAT_MOD_INVALID] {
        let buf = memfd_dmabuf(32, 32, modifier);
        let err = gpu.import(&buf).unwrap_err();
        eprintln!("import of a memfd: {err}");
        if gpu.info().dmabuf_import {
            assert!(matches!(err, GpuError::ImportFailed { .. }), "{err}");
        } else {
            assert!(
                matches!(
                    err,
                    GpuError::ExtensionMissing("EGL_EXT_image_dma_buf_import")
                ),
                "{err}"
            );
        }
        // The EGL call itself, extension or not, names the EGL error.
        let err = gpu.create_dmabuf_image_unchecked(&buf).unwrap_err();
        eprintln!("eglCreateImage on a memfd: {err}");
        match &err {
            GpuError::ImportFailed { egl_error, .. } => {
                assert!(egl_error.starts_with("EGL_BAD_"), "{err}")
            }
            e => panic!("expected ImportFailed, got {e}"),
        }
        assert!(err.to_string().contains("EGL_BAD_"));
        // Nothing left behind, and the caller's fd is untouched.
        let s = gpu.stats();
        assert_eq!((s.cached_imports, s.live_textures), (0, 0));
        rustix::fs::fstat(&buf.planes[0].fd).unwrap();
    }
    assert_eq!(gpu.stats().import_failures, 2);
}

#[test]
fn invalid_dmabufs_are_refused_before_egl() {
    let Some(mut gpu) = gpu() else { return };
    let mut buf = memfd_dmabuf(32, 32, DRM_FORMAT_MOD_LINEAR);
    buf.fourcc = Fourcc::from_chars(*b"NV12");
    assert!(matches!(gpu.import(&buf), Err(GpuError::InvalidDmabuf(_))));
    let mut buf = memfd_dmabuf(32, 32, DRM_FORMAT_MOD_LINEAR);
    buf.width = 9000;
    assert!(matches!(gpu.import(&buf), Err(GpuError::InvalidDmabuf(_))));
}

#[test]
fn bad_arguments_are_errors() {
    let Some(mut gpu) = gpu() else { return };
    let px = pattern(8, 8, 32);
    let t = gpu.upload_bgrx(8, 8, &px, 32).unwrap();
    let mut dst = vec![0; 8 * 8 * 4];
    for rect in [
        Rect::new(0, 0, 0, 4),
        Rect::new(4, 4, 5, 1),
        Rect::new(0, 8, 1, 1),
    ] {
        assert!(matches!(
            gpu.read_bgrx(&t, rect, false, &mut dst, 32),
            Err(GpuError::BadRect { .. })
        ));
    }
    assert!(matches!(
        gpu.read_bgrx(&t, t.bounds(), false, &mut dst[..100], 32),
        Err(GpuError::BadDestination { .. })
    ));
    assert!(matches!(
        gpu.read_bgrx(&t, t.bounds(), false, &mut dst, 16),
        Err(GpuError::BadDestination { .. })
    ));
    assert!(matches!(
        gpu.upload_bgrx(8, 8, &px[..100], 32),
        Err(GpuError::BadSource { .. })
    ));
    assert!(matches!(
        gpu.upload_bgrx(0, 8, &px, 32),
        Err(GpuError::BadSource { .. })
    ));
    assert!(matches!(
        gpu.upload_bgrx(8, 8, &px, 16),
        Err(GpuError::BadSource { .. })
    ));
    assert!(gpu.release(t));
    assert!(!gpu.release(t));
    assert!(matches!(
        gpu.read_bgrx(&t, t.bounds(), false, &mut dst, 32),
        Err(GpuError::UnknownTexture(_))
    ));
    if !gpu.info().dmabuf_export {
        assert!(matches!(
            gpu.export_dmabuf(&t),
            Err(GpuError::ExtensionMissing("EGL_MESA_image_dma_buf_export"))
        ));
    }
}

#[test]
fn uploads_are_bounded() {
    let Some(mut gpu) = gpu() else { return };
    let px = pattern(4, 4, 16);
    let mut held: Vec<_> = (0..MAX_UPLOADED_TEXTURES)
        .map(|_| gpu.upload_bgrx(4, 4, &px, 16).unwrap())
        .collect();
    assert!(matches!(
        gpu.upload_bgrx(4, 4, &px, 16),
        Err(GpuError::TooManyTextures(MAX_UPLOADED_TEXTURES))
    ));
    assert!(gpu.release(held.pop().unwrap()));
    held.push(gpu.upload_bgrx(4, 4, &px, 16).unwrap());
    assert_eq!(gpu.stats().live_textures, MAX_UPLOADED_TEXTURES as u64);
}

#[test]
fn two_contexts_on_one_thread_do_not_mix() {
    let (Some(mut a), Some(mut b)) = (gpu(), gpu()) else {
        return;
    };
    let pa = pattern(16, 16, 64);
    let mut pb = pattern(16, 16, 64);
    pb.iter_mut().for_each(|v| *v = v.wrapping_add(1) | 1);
    pb.chunks_exact_mut(4).for_each(|p| p[3] = 0xff);
    let ta = a.upload_bgrx(16, 16, &pa, 64).unwrap();
    let tb = b.upload_bgrx(16, 16, &pb, 64).unwrap();
    for _ in 0..2 {
        assert_eq!(read(&mut a, &ta, ta.bounds(), false), pa);
        assert_eq!(read(&mut b, &tb, tb.bounds(), false), pb);
    }
    drop(a);
    // The display stays initialised for the remaining context.
    assert_eq!(read(&mut b, &tb, tb.bounds(), false), pb);
}

#[test]
fn worker_runs_jobs_on_its_thread() {
    let cfg = WorkerConfig {
        queue_depth: 2,
        ..Default::default()
    };
    let w = match GpuWorker::spawn(cfg) {
        Ok(w) => w,
        Err(e @ (GpuError::NoEgl(_) | GpuError::NoDisplay(_))) if !require_egl() => {
            skip(&format!("EGL cannot be initialised on this machine: {e}"));
            return;
        }
        Err(e) => panic!("worker start failed: {e}"),
    };
    assert!(!w.info().gl_renderer.is_empty());
    let buf = Arc::new(memfd_dmabuf(16, 16, DRM_FORMAT_MOD_LINEAR));
    let out = w
        .read(ReadRequest {
            buf: buf.clone(),
            rect: Rect::new(0, 0, 16, 16),
            dst: Vec::with_capacity(1024),
            target: Target::Packed,
        })
        .unwrap()
        .blocking_recv()
        .unwrap();
    // No real dmabuf can exist here: the import fails, the buffer comes back.
    let err = out.result.unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::ExtensionMissing(_) | GpuError::ImportFailed { .. }
        ),
        "{err}"
    );
    assert!(out.dst.capacity() >= 1024);
    let s = w.stats();
    assert_eq!((s.submitted, s.completed, s.failed), (1, 0, 1));
    assert_eq!(s.gpu.import_failures, 1);
    assert!(s.last_job < Duration::from_secs(5));
}
