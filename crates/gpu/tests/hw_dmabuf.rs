//! Hardware test (see `hwtests/README.md`): a texture exported as a real dmabuf with
//! EGL_MESA_image_dma_buf_export is imported back through `Gpu::import` — in a second
//! context, as QEMU's buffers arrive — and read back exactly, flipped and unflipped, with the
//! import cache recognising the buffer behind a new fd.
//!
//! Runs only with `SCANOUTD_HWTESTS=1`. Skips, saying why, when there is no DRM render node,
//! no hardware EGL device, or the export/import extensions are missing.

use std::path::PathBuf;
use std::sync::Arc;

use scanoutd_gpu::{Gpu, GpuOptions, GpuWorker, ReadRequest, Target, WorkerConfig};
use scanoutd_types::{Dmabuf, DmabufPlane, Rect, DRM_FORMAT_MOD_INVALID, DRM_FORMAT_MOD_LINEAR};

fn skip(why: &str) {
    scanoutd_testkit::require::skip("hw", why);
}

fn render_nodes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("renderD"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pattern(w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h as usize {
        for x in 0..w as usize {
            v.extend_from_slice(&[
                (x * 7 + y) as u8,
                (y * 3 + x * 11) as u8,
                (x ^ (y << 2)) as u8,
                0xff,
            ]);
        }
    }
    v
}

fn expected(px: &[u8], w: u32, h: u32, r: Rect, flip: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..r.h {
        let d = r.y + i;
        let m = if flip { h - 1 - d } else { d } as usize;
        let o = (m * w as usize + r.x as usize) * 4;
        out.extend_from_slice(&px[o..o + r.w as usize * 4]);
    }
    out
}

fn read(gpu: &mut Gpu, buf: &Dmabuf, r: Rect) -> Vec<u8> {
    let mut dst = vec![0; (r.w * r.h * 4) as usize];
    gpu.read_dmabuf(buf, r, &mut dst, r.w as usize * 4).unwrap();
    dst
}

/// The same buffer behind a new fd, as QEMU sends on each flip.
fn resend(d: &Dmabuf, modifier: u64, y0_top: bool) -> Dmabuf {
    Dmabuf {
        planes: d
            .planes
            .iter()
            .map(|p| DmabufPlane {
                fd: p.fd.try_clone().unwrap(),
                offset: p.offset,
                stride: p.stride,
            })
            .collect(),
        width: d.width,
        height: d.height,
        fourcc: d.fourcc,
        modifier,
        y0_top,
    }
}

#[test]
fn exported_texture_imports_back_exactly() {
    if std::env::var("SCANOUTD_HWTESTS").ok().as_deref() != Some("1") {
        return skip("set SCANOUTD_HWTESTS=1 to run hardware tests");
    }
    let nodes = render_nodes();
    let Some(node) = nodes.first() else {
        return skip("no DRM render node in /dev/dri");
    };
    eprintln!("render nodes: {nodes:?}");
    let opts = GpuOptions {
        allow_software: false,
        ..Default::default()
    };
    let mut exporter = match Gpu::with_options(&opts) {
        Ok(g) => g,
        Err(e) => return skip(&format!("no hardware EGL device ({node:?} present): {e}")),
    };
    eprintln!("exporter: {:#?}", exporter.info());
    if !exporter.info().dmabuf_export {
        return skip("EGL_MESA_image_dma_buf_export (or EGL_KHR_gl_texture_2D_image) is missing");
    }
    // The importer is a second context on the same device, like the service's GPU thread.
    let importer_opts = GpuOptions {
        render_node: exporter.info().drm_node.as_ref().map(PathBuf::from),
        ..opts.clone()
    };
    let mut importer = Gpu::with_options(&importer_opts).unwrap();
    if !importer.info().dmabuf_import {
        return skip("EGL_EXT_image_dma_buf_import is missing");
    }

    let (w, h) = (301, 217); // odd sizes: the driver's pitch alignment shows
    let px = pattern(w, h);
    let tex = exporter.upload_bgrx(w, h, &px, w as usize * 4).unwrap();
    let buf = exporter.export_dmabuf(&tex).unwrap();
    eprintln!(
        "exported: {} modifier {:#018x}, {} plane(s), plane 0 offset {} stride {}",
        buf.fourcc,
        buf.modifier,
        buf.planes.len(),
        buf.planes[0].offset,
        buf.planes[0].stride
    );
    if let Err(e) = buf.validate() {
        return skip(&format!(
            "the driver exported a layout this project does not take: {e}"
        ));
    }
    assert!(!buf.y0_top);
    if buf.modifier != DRM_FORMAT_MOD_LINEAR
        && buf.modifier != DRM_FORMAT_MOD_INVALID
        && !importer.info().dmabuf_import_modifiers
    {
        return skip("the export is tiled and EGL_EXT_image_dma_buf_import_modifiers is missing");
    }

    // Whole buffer, sub-rectangle, and both again bottom-up.
    let full = Rect::new(0, 0, w, h);
    let sub = Rect::new(13, 29, 100, 57);
    assert!(
        read(&mut importer, &buf, full) == px,
        "full readback differs"
    );
    assert_eq!(
        read(&mut importer, &buf, sub),
        expected(&px, w, h, sub, false)
    );
    let flipped = resend(&buf, buf.modifier, true);
    assert!(read(&mut importer, &flipped, full) == expected(&px, w, h, full, true));
    assert_eq!(
        read(&mut importer, &flipped, sub),
        expected(&px, w, h, sub, true)
    );
    let s = importer.stats();
    eprintln!("importer stats: {s:?}");
    // y0_top is a read option, not part of the layout: one import, three cache hits.
    assert_eq!((s.imports, s.import_hits, s.cached_imports), (1, 3, 1));

    // An implicit-layout import (what QEMU ≥ 10.1 sends for unknown modifiers) of a linear
    // buffer: informational, since drivers differ on what "implicit" means.
    if buf.modifier == DRM_FORMAT_MOD_LINEAR {
        let implicit = resend(&buf, DRM_FORMAT_MOD_INVALID, false);
        let mut dst = vec![0; px.len()];
        match importer.read_dmabuf(&implicit, full, &mut dst, w as usize * 4) {
            Ok(_) => eprintln!("implicit-modifier import: exact = {}", dst == px),
            Err(e) => eprintln!("implicit-modifier import failed (driver-dependent): {e}"),
        }
    }

    // Through the worker thread, as the QEMU listener will use it.
    let worker = GpuWorker::spawn(WorkerConfig {
        gpu: importer_opts,
        ..Default::default()
    })
    .unwrap();
    let shared = Arc::new(resend(&buf, buf.modifier, false));
    for round in 0..2 {
        let out = worker
            .read(ReadRequest {
                buf: shared.clone(),
                rect: sub,
                dst: Vec::new(),
                target: Target::Packed,
            })
            .unwrap()
            .blocking_recv()
            .unwrap();
        let info = out.result.unwrap();
        eprintln!("worker round {round}: {info:?}");
        assert_eq!(info.cache_hit, round == 1);
        assert_eq!(out.dst, expected(&px, w, h, sub, false));
    }
    assert!(exporter.release(tex));
}
