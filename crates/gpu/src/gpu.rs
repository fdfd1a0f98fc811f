//! [`Gpu`]: one EGL context and what it holds (imported and uploaded textures, the readback
//! program and buffers). Thread-bound: it is `!Send`, lives on the thread that made it, and
//! makes its context current before every operation.

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use glow::HasContext;
use khronos_egl as egl;
use scanoutd_types::{
    Dmabuf, DmabufPlane, Fourcc, Rect, DRM_FORMAT_MOD_INVALID, DRM_FORMAT_MOD_LINEAR,
    MAX_DMABUF_SIDE,
};

use crate::cache::{import_cached, Identity, ImportCache, Importer};
use crate::egl::{
    has_ext, proc_address, ExportMesa, ExportQueryMesa, GpuOptions, ImageTargetTexture2dOes,
    Session, GL_TEXTURE_2D_IMAGE, GL_TEXTURE_LEVEL, LINUX_DMA_BUF_EXT, LINUX_DRM_FOURCC_EXT,
    PLANE_ATTRIBS,
};
use crate::error::{egl_err, egl_error_name, gl_err, GpuError};

/// At most this many textures uploaded from CPU memory live at once.
pub const MAX_UPLOADED_TEXTURES: usize = 16;

const GL_TEXTURE_EXTERNAL_OES: u32 = 0x8D65;
const GL_BGRA_EXT: u32 = 0x80E1;

const VERT_SRC: &str = include_str!("../../../shaders/readback.vert");
const FRAG_SRC: &str = include_str!("../../../shaders/readback_bgrx.frag");

/// A texture the [`Gpu`] holds: a dmabuf import or an upload from CPU memory. A plain handle:
/// it stays valid until [`Gpu::release`], or for imports until the import cache evicts it
/// (then operations fail with [`GpuError::UnknownTexture`]; import again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TextureHandle {
    id: u64,
    width: u32,
    height: u32,
}

impl TextureHandle {
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    /// The whole texture as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }
}

/// What the GPU is and what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// `"device"` (EGL_PLATFORM_DEVICE_EXT) or `"surfaceless"` (EGL_PLATFORM_SURFACELESS_MESA).
    pub platform: &'static str,
    /// The DRM node of the EGL device, when it has one.
    pub drm_node: Option<String>,
    /// A software renderer (llvmpipe, softpipe, swrast): no dmabuf import.
    pub software: bool,
    pub egl_vendor: String,
    pub egl_version: String,
    pub gl_vendor: String,
    pub gl_renderer: String,
    pub gl_version: String,
    /// EGL_EXT_image_dma_buf_import: dmabufs can be imported.
    pub dmabuf_import: bool,
    /// EGL_EXT_image_dma_buf_import_modifiers: explicit (tiled) modifiers can be imported.
    pub dmabuf_import_modifiers: bool,
    /// EGL_MESA_image_dma_buf_export (with EGL_KHR_gl_texture_2D_image): textures can be
    /// exported as dmabufs (hardware tests).
    pub dmabuf_export: bool,
    /// GL_OES_EGL_image_external_essl3: imports only usable as external textures can be read.
    pub external_textures: bool,
    /// GL_EXT_texture_format_BGRA8888: BGRx uploads need no CPU swizzle.
    pub bgra_upload: bool,
    pub max_texture_size: u32,
}

/// Counters since the [`Gpu`] was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// dmabufs imported (cache misses that succeeded).
    pub imports: u64,
    /// dmabuf imports answered from the cache.
    pub import_hits: u64,
    pub import_failures: u64,
    /// Readbacks completed, and the bytes they delivered.
    pub reads: u64,
    pub read_failures: u64,
    pub bytes_read: u64,
    pub uploads: u64,
    /// Imports in the cache now.
    pub cached_imports: u64,
    /// Textures alive now (imports and uploads).
    pub live_textures: u64,
}

struct TexEntry {
    tex: glow::Texture,
    /// GL_TEXTURE_2D or GL_TEXTURE_EXTERNAL_OES.
    target: u32,
    image: Option<egl::Image>,
    width: u32,
    height: u32,
    uploaded: bool,
}

struct Program {
    program: glow::Program,
    u_tex: Option<glow::UniformLocation>,
    u_origin: Option<glow::UniformLocation>,
    u_flip: Option<glow::UniformLocation>,
}

/// The readback machinery, made on first use: programs, an RGBA8 render target (grown as
/// needed), a pixel-pack buffer (grown as needed).
struct Reader {
    prog_2d: Program,
    prog_ext: Option<Program>,
    vao: glow::VertexArray,
    fbo: glow::Framebuffer,
    target: Option<(glow::Texture, u32, u32)>,
    pbo: glow::Buffer,
    pbo_len: usize,
}

/// Everything but the import cache, so the cache can drive imports through [`Importer`].
pub(crate) struct GlState {
    gl: glow::Context,
    info: GpuInfo,
    image_target: ImageTargetTexture2dOes,
    export: Option<(ExportQueryMesa, ExportMesa)>,
    textures: HashMap<u64, TexEntry>,
    next_id: u64,
    reader: Option<Reader>,
    fence_timeout: Duration,
    stats: GpuStats,
    // Dropped after the GL objects are deleted (see `Drop for GlState`).
    session: Session,
    _not_send: PhantomData<*const ()>,
}

/// A headless EGL/GLES 3 context with dmabuf import, uploads and fenced BGRx readback.
///
/// Not `Send`: keep it on one thread ([`crate::GpuWorker`] gives it a thread of its own).
pub struct Gpu {
    cache: ImportCache<TextureHandle>,
    state: GlState,
}

impl Gpu {
    /// A GPU with default options: the first EGL device (hardware before software) that
    /// gives a GLES 3 context, else Mesa's surfaceless platform.
    pub fn new_headless() -> Result<Gpu, GpuError> {
        Gpu::with_options(&GpuOptions::default())
    }

    pub fn with_options(opts: &GpuOptions) -> Result<Gpu, GpuError> {
        let session = Session::open(opts)?;
        let egl = session.egl;
        // SAFETY: the context was made current on this thread by `Session::open`;
        // eglGetProcAddress returns core and extension GL entry points (EGL 1.5), and glow
        // calls each through its GL prototype. glow reads GL_VERSION and the extension
        // list, which a current context answers.
        let gl = unsafe {
            glow::Context::from_loader_function(|name| {
                egl.get_proc_address(name)
                    .map_or(std::ptr::null(), |p| p as *const c_void)
            })
        };
        let exts = gl.supported_extensions();
        let version = gl.version();
        if !version.is_embedded || version.major < 3 {
            return Err(GpuError::NoContext(format!(
                "got GL {}.{} ({}), need GLES 3",
                version.major,
                version.minor,
                if version.is_embedded { "ES" } else { "desktop" }
            )));
        }
        if !exts.contains("GL_OES_EGL_image") {
            return Err(GpuError::ExtensionMissing("GL_OES_EGL_image"));
        }
        // SAFETY: the prototype is glEGLImageTargetTexture2DOES's from GL_OES_EGL_image.
        let image_target: ImageTargetTexture2dOes =
            unsafe { proc_address(egl, "glEGLImageTargetTexture2DOES") }
                .ok_or(GpuError::ExtensionMissing("GL_OES_EGL_image"))?;
        let dmabuf_export = session.has_display_ext("EGL_MESA_image_dma_buf_export")
            && session.has_display_ext("EGL_KHR_gl_texture_2D_image");
        let export = if dmabuf_export {
            // SAFETY: the prototypes are those of EGL_MESA_image_dma_buf_export.
            unsafe {
                proc_address::<ExportQueryMesa>(egl, "eglExportDMABUFImageQueryMESA")
                    .zip(proc_address::<ExportMesa>(egl, "eglExportDMABUFImageMESA"))
            }
        } else {
            None
        };
        // SAFETY: plain queries on the current context.
        let (gl_vendor, gl_renderer, gl_version, max_tex) = unsafe {
            (
                gl.get_parameter_string(glow::VENDOR),
                gl.get_parameter_string(glow::RENDERER),
                gl.get_parameter_string(glow::VERSION),
                gl.get_parameter_i32(glow::MAX_TEXTURE_SIZE),
            )
        };
        let software = session.software
            || ["llvmpipe", "softpipe", "swrast"]
                .iter()
                .any(|s| gl_renderer.contains(s));
        if software && !opts.allow_software {
            return Err(GpuError::NoDisplay(format!(
                "only a software renderer ({gl_renderer}) is available"
            )));
        }
        let info = GpuInfo {
            platform: session.platform,
            drm_node: session.drm_node.clone(),
            software,
            egl_vendor: session.egl_vendor.clone(),
            egl_version: session.egl_version.clone(),
            gl_vendor,
            gl_renderer,
            gl_version,
            dmabuf_import: session.has_display_ext("EGL_EXT_image_dma_buf_import"),
            dmabuf_import_modifiers: session
                .has_display_ext("EGL_EXT_image_dma_buf_import_modifiers"),
            dmabuf_export: export.is_some(),
            external_textures: exts.contains("GL_OES_EGL_image_external_essl3"),
            bgra_upload: exts.contains("GL_EXT_texture_format_BGRA8888"),
            max_texture_size: u32::try_from(max_tex).unwrap_or(0),
        };
        tracing::info!(
            platform = info.platform,
            drm_node = ?info.drm_node,
            renderer = %info.gl_renderer,
            version = %info.gl_version,
            dmabuf_import = info.dmabuf_import,
            modifiers = info.dmabuf_import_modifiers,
            "GPU ready"
        );
        Ok(Gpu {
            cache: ImportCache::new(opts.import_cache),
            state: GlState {
                gl,
                info,
                image_target,
                export,
                textures: HashMap::new(),
                next_id: 1,
                reader: None,
                fence_timeout: opts.fence_timeout,
                stats: GpuStats::default(),
                session,
                _not_send: PhantomData,
            },
        })
    }

    pub fn info(&self) -> &GpuInfo {
        &self.state.info
    }

    pub fn stats(&self) -> GpuStats {
        GpuStats {
            cached_imports: self.cache.len() as u64,
            live_textures: self.state.textures.len() as u64,
            ..self.state.stats
        }
    }

    /// Import a dmabuf as a GL texture, or return the import already made for the same
    /// buffer (same `fstat` identity and layout) — QEMU sends a new fd per flip.
    ///
    /// Requires EGL_EXT_image_dma_buf_import; an explicit modifier other than LINEAR also
    /// needs EGL_EXT_image_dma_buf_import_modifiers. [`DRM_FORMAT_MOD_INVALID`] imports
    /// without modifier attributes (the driver's implicit layout).
    pub fn import(&mut self, buf: &Dmabuf) -> Result<TextureHandle, GpuError> {
        self.import_reporting_hit(buf).map(|(h, _)| h)
    }

    /// [`Gpu::import`], also saying whether the import came from the cache.
    pub fn import_reporting_hit(
        &mut self,
        buf: &Dmabuf,
    ) -> Result<(TextureHandle, bool), GpuError> {
        self.state.session.make_current()?;
        match import_cached(&mut self.cache, &mut self.state, buf) {
            Ok((h, hit)) => {
                if hit {
                    self.state.stats.import_hits += 1;
                } else {
                    self.state.stats.imports += 1;
                }
                Ok((h, hit))
            }
            Err(e) => {
                self.state.stats.import_failures += 1;
                Err(e)
            }
        }
    }

    /// Copy `rect` of `tex` into `dst` as BGRx rows, top row first, `dst_stride` bytes
    /// apart (the X byte is 0xff). `rect` is in display coordinates (top-down); with
    /// `y0_top` the texture is stored bottom-up (QEMU's flag) and is flipped on the way.
    ///
    /// Returns once the pixels are in `dst`: the copy is fenced and waited for with the
    /// configured timeout ([`GpuError::FenceTimeout`] past it).
    pub fn read_bgrx(
        &mut self,
        tex: &TextureHandle,
        rect: Rect,
        y0_top: bool,
        dst: &mut [u8],
        dst_stride: usize,
    ) -> Result<(), GpuError> {
        let r = self.state.read_bgrx(tex, rect, y0_top, dst, dst_stride);
        match &r {
            Ok(()) => {
                self.state.stats.reads += 1;
                self.state.stats.bytes_read += rect.area() * 4;
            }
            Err(_) => self.state.stats.read_failures += 1,
        }
        r
    }

    /// Import `buf` (or find it in the cache) and read `rect` of it, flipping by
    /// `buf.y0_top`. Returns whether the import was a cache hit.
    pub fn read_dmabuf(
        &mut self,
        buf: &Dmabuf,
        rect: Rect,
        dst: &mut [u8],
        dst_stride: usize,
    ) -> Result<bool, GpuError> {
        let (tex, hit) = self.import_reporting_hit(buf)?;
        self.read_bgrx(&tex, rect, buf.y0_top, dst, dst_stride)?;
        Ok(hit)
    }

    /// Make a texture from BGRx pixels (rows top-down, `stride` bytes apart). Release it with
    /// [`Gpu::release`]; at most [`MAX_UPLOADED_TEXTURES`] live at once.
    pub fn upload_bgrx(
        &mut self,
        width: u32,
        height: u32,
        src: &[u8],
        stride: usize,
    ) -> Result<TextureHandle, GpuError> {
        let h = self.state.upload_bgrx(width, height, src, stride)?;
        self.state.stats.uploads += 1;
        Ok(h)
    }

    /// Delete a texture now (an upload, or an import — which also leaves the cache).
    /// Returns whether it existed.
    pub fn release(&mut self, tex: TextureHandle) -> bool {
        let _ = self.cache.remove_value(|h| h.id == tex.id);
        self.state.delete_texture(tex.id)
    }

    /// Drop every cached dmabuf import (e.g. when the scanout is disabled).
    pub fn clear_imports(&mut self) {
        for h in self.cache.drain() {
            self.state.delete_texture(h.id);
        }
    }

    /// Export a texture as a dmabuf (EGL_MESA_image_dma_buf_export), `y0_top = false`: the
    /// dmabuf's first row is the texture's first row. For hardware tests; software
    /// renderers do not support it.
    pub fn export_dmabuf(&mut self, tex: &TextureHandle) -> Result<Dmabuf, GpuError> {
        self.state.export_dmabuf(tex)
    }

    /// Test hook: upload as if GL_EXT_texture_format_BGRA8888 were missing (RGBA + CPU
    /// swizzle).
    #[cfg(test)]
    pub(crate) fn force_rgba_upload(&mut self) {
        self.state.info.bgra_upload = false;
    }

    /// Test hook: the dmabuf EGLImage creation alone, bypassing the extension check.
    #[cfg(test)]
    pub(crate) fn create_dmabuf_image_unchecked(&mut self, buf: &Dmabuf) -> Result<(), GpuError> {
        self.state.session.make_current()?;
        let image = self
            .state
            .create_dmabuf_image(buf, buf.has_explicit_modifier())?;
        let s = &self.state.session;
        let _ = s.egl.destroy_image(s.display, image);
        Ok(())
    }

    /// Test hook: wrap a texture in an EGLImage (EGL_KHR_gl_texture_2D_image) and bind it to
    /// a new texture through the same path a dmabuf import takes.
    #[cfg(test)]
    pub(crate) fn reimport_via_egl_image(
        &mut self,
        tex: &TextureHandle,
        external: bool,
    ) -> Result<TextureHandle, GpuError> {
        self.state.reimport_via_egl_image(tex, external)
    }
}

impl Importer for GlState {
    type Value = TextureHandle;

    fn import_uncached(&mut self, buf: &Dmabuf, id: &Identity) -> Result<TextureHandle, GpuError> {
        if !self.info.dmabuf_import {
            return Err(GpuError::ExtensionMissing("EGL_EXT_image_dma_buf_import"));
        }
        let mut explicit = buf.has_explicit_modifier();
        if explicit && !self.info.dmabuf_import_modifiers {
            if buf.modifier != DRM_FORMAT_MOD_LINEAR {
                return Err(GpuError::ExtensionMissing(
                    "EGL_EXT_image_dma_buf_import_modifiers",
                ));
            }
            // LINEAR without the modifiers extension: drivers import without a modifier
            // as linear for the formats handled here.
            explicit = false;
        }
        if buf.modifier == DRM_FORMAT_MOD_LINEAR && id.size > 0 {
            let need = buf.linear_extent();
            if need > id.size {
                return Err(GpuError::DmabufTooSmall {
                    need,
                    have: id.size,
                });
            }
        }
        let image = self.create_dmabuf_image(buf, explicit)?;
        self.adopt_image(image, buf.width, buf.height, false)
    }

    fn destroy(&mut self, value: TextureHandle) {
        self.delete_texture(value.id);
    }
}

impl GlState {
    /// `eglCreateImage(EGL_LINUX_DMA_BUF_EXT)` for `buf`, with modifier attributes only when
    /// `explicit_modifier`.
    fn create_dmabuf_image(
        &self,
        buf: &Dmabuf,
        explicit_modifier: bool,
    ) -> Result<egl::Image, GpuError> {
        let mut attrs: Vec<egl::Attrib> = vec![
            egl::WIDTH as egl::Attrib,
            buf.width as egl::Attrib,
            egl::HEIGHT as egl::Attrib,
            buf.height as egl::Attrib,
            LINUX_DRM_FOURCC_EXT,
            buf.fourcc.0 as egl::Attrib,
        ];
        for (p, names) in buf.planes.iter().zip(PLANE_ATTRIBS) {
            let [fd, offset, pitch, mod_lo, mod_hi] = names;
            attrs.extend([
                fd,
                p.fd.as_raw_fd() as egl::Attrib,
                offset,
                p.offset as egl::Attrib,
                pitch,
                p.stride as egl::Attrib,
            ]);
            if explicit_modifier && buf.modifier != DRM_FORMAT_MOD_INVALID {
                attrs.extend([
                    mod_lo,
                    (buf.modifier & 0xffff_ffff) as egl::Attrib,
                    mod_hi,
                    (buf.modifier >> 32) as egl::Attrib,
                ]);
            }
        }
        attrs.push(egl::ATTRIB_NONE);
        let s = &self.session;
        // SAFETY: EGL_LINUX_DMA_BUF_EXT requires EGL_NO_CONTEXT and a NULL client buffer.
        let (no_ctx, no_buf) = unsafe {
            (
                egl::Context::from_ptr(egl::NO_CONTEXT),
                egl::ClientBuffer::from_ptr(std::ptr::null_mut()),
            )
        };
        s.egl
            .create_image(s.display, no_ctx, LINUX_DMA_BUF_EXT, no_buf, &attrs)
            .map_err(|e| GpuError::ImportFailed {
                call: "eglCreateImage(EGL_LINUX_DMA_BUF_EXT)",
                egl_error: egl_error_name(e),
            })
    }

    /// Bind an EGLImage to a new texture (GL_TEXTURE_2D, or GL_TEXTURE_EXTERNAL_OES when the
    /// image can only be external or `external` asks for it) and register it. Destroys the
    /// image on failure.
    fn adopt_image(
        &mut self,
        image: egl::Image,
        width: u32,
        height: u32,
        external: bool,
    ) -> Result<TextureHandle, GpuError> {
        let targets: &[u32] = match (external, self.info.external_textures) {
            (true, _) => &[GL_TEXTURE_EXTERNAL_OES],
            (false, true) => &[glow::TEXTURE_2D, GL_TEXTURE_EXTERNAL_OES],
            (false, false) => &[glow::TEXTURE_2D],
        };
        let mut last = gl_err("glEGLImageTargetTexture2DOES", glow::INVALID_OPERATION);
        for &target in targets {
            match self.bind_image(image, target) {
                Ok(tex) => {
                    let h = self.register(TexEntry {
                        tex,
                        target,
                        image: Some(image),
                        width,
                        height,
                        uploaded: false,
                    });
                    return Ok(h);
                }
                Err(e) => last = e,
            }
        }
        let s = &self.session;
        let _ = s.egl.destroy_image(s.display, image);
        Err(match last {
            GpuError::Gl { name, .. } => GpuError::ImportFailed {
                call: "glEGLImageTargetTexture2DOES",
                egl_error: name,
            },
            e => e,
        })
    }

    fn bind_image(&self, image: egl::Image, target: u32) -> Result<glow::Texture, GpuError> {
        let gl = &self.gl;
        // SAFETY: GL calls on this state's context, current on this thread (every public
        // entry point makes it current). `image` is a live EGLImage of this display, and
        // `image_target` is glEGLImageTargetTexture2DOES with its GL prototype.
        unsafe {
            drain_gl_errors(gl);
            let tex = gl
                .create_texture()
                .map_err(|_| gl_err("glGenTextures", gl.get_error()))?;
            gl.bind_texture(target, Some(tex));
            set_nearest(gl, target);
            (self.image_target)(target, image.as_ptr());
            let err = gl.get_error();
            gl.bind_texture(target, None);
            if err != glow::NO_ERROR {
                gl.delete_texture(tex);
                return Err(gl_err("glEGLImageTargetTexture2DOES", err));
            }
            Ok(tex)
        }
    }

    fn register(&mut self, e: TexEntry) -> TextureHandle {
        let id = self.next_id;
        self.next_id += 1;
        let h = TextureHandle {
            id,
            width: e.width,
            height: e.height,
        };
        self.textures.insert(id, e);
        h
    }

    fn delete_texture(&mut self, id: u64) -> bool {
        let Some(e) = self.textures.remove(&id) else {
            return false;
        };
        let current = self.session.make_current().is_ok();
        if current {
            // SAFETY: the texture was created by this context, which is current.
            unsafe { self.gl.delete_texture(e.tex) };
        }
        if let Some(image) = e.image {
            let s = &self.session;
            let _ = s.egl.destroy_image(s.display, image);
        }
        true
    }

    fn upload_bgrx(
        &mut self,
        width: u32,
        height: u32,
        src: &[u8],
        stride: usize,
    ) -> Result<TextureHandle, GpuError> {
        let max = MAX_DMABUF_SIDE.min(self.info.max_texture_size.max(1));
        let row = width as usize * 4;
        let bad = || GpuError::BadSource {
            width,
            height,
            stride,
            have: src.len(),
        };
        if !(1..=max).contains(&width) || !(1..=max).contains(&height) || stride < row {
            return Err(bad());
        }
        let need = (height as usize - 1) * stride + row;
        if src.len() < need {
            return Err(bad());
        }
        let uploaded = self.textures.values().filter(|e| e.uploaded).count();
        if uploaded >= MAX_UPLOADED_TEXTURES {
            return Err(GpuError::TooManyTextures(MAX_UPLOADED_TEXTURES));
        }
        self.session.make_current()?;
        // Pixels GL can take as they are: BGRA with a row length, else a tight RGBA copy.
        let (format, pixels, row_len): (u32, std::borrow::Cow<'_, [u8]>, usize) =
            if self.info.bgra_upload && stride.is_multiple_of(4) {
                (GL_BGRA_EXT, src[..need].into(), stride / 4)
            } else if self.info.bgra_upload {
                (
                    GL_BGRA_EXT,
                    repack(src, width, height, stride, false).into(),
                    0,
                )
            } else {
                (
                    glow::RGBA,
                    repack(src, width, height, stride, true).into(),
                    0,
                )
            };
        let gl = &self.gl;
        // SAFETY: GL calls on the current context. `pixels` holds (height - 1) rows of
        // `row_len` (or `width`) pixels plus one full row, exactly what glTexImage2D reads
        // with UNPACK_ROW_LENGTH = row_len and UNPACK_ALIGNMENT = 4; no unpack buffer is
        // bound.
        let tex = unsafe {
            drain_gl_errors(gl);
            let tex = gl
                .create_texture()
                .map_err(|_| gl_err("glGenTextures", gl.get_error()))?;
            gl.bind_buffer(glow::PIXEL_UNPACK_BUFFER, None);
            gl.bind_texture(glow::TEXTURE_2D, Some(tex));
            set_nearest(gl, glow::TEXTURE_2D);
            gl.pixel_store_i32(glow::UNPACK_ALIGNMENT, 4);
            gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, row_len as i32);
            gl.tex_image_2d(
                glow::TEXTURE_2D,
                0,
                if format == GL_BGRA_EXT {
                    GL_BGRA_EXT as i32
                } else {
                    glow::RGBA8 as i32
                },
                width as i32,
                height as i32,
                0,
                format,
                glow::UNSIGNED_BYTE,
                glow::PixelUnpackData::Slice(Some(&pixels)),
            );
            gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, 0);
            gl.bind_texture(glow::TEXTURE_2D, None);
            let err = gl.get_error();
            if err != glow::NO_ERROR {
                gl.delete_texture(tex);
                return Err(gl_err("glTexImage2D", err));
            }
            tex
        };
        Ok(self.register(TexEntry {
            tex,
            target: glow::TEXTURE_2D,
            image: None,
            width,
            height,
            uploaded: true,
        }))
    }

    fn read_bgrx(
        &mut self,
        tex: &TextureHandle,
        rect: Rect,
        y0_top: bool,
        dst: &mut [u8],
        dst_stride: usize,
    ) -> Result<(), GpuError> {
        let (src_tex, target, width, height) = match self.textures.get(&tex.id) {
            Some(e) => (e.tex, e.target, e.width, e.height),
            None => return Err(GpuError::UnknownTexture(tex.id)),
        };
        if rect.is_empty() || !Rect::new(0, 0, width, height).contains(&rect) {
            return Err(GpuError::BadRect {
                rect,
                width,
                height,
            });
        }
        check_destination(dst.len(), dst_stride, rect.w, rect.h)?;
        let row = rect.w as usize * 4;
        self.session.make_current()?;
        if self.reader.is_none() {
            self.reader = Some(Reader::new(&self.gl)?);
        }
        let external = target == GL_TEXTURE_EXTERNAL_OES;
        let Some(reader) = self.reader.as_mut() else {
            return Err(gl_err("readback setup", glow::INVALID_OPERATION));
        };
        if external && reader.prog_ext.is_none() {
            reader.prog_ext = Some(Program::new(&self.gl, true)?);
        }
        reader.ensure_target(&self.gl, rect.w, rect.h)?;
        let len = row * rect.h as usize;
        reader.ensure_pbo(&self.gl, len)?;
        let origin_y = if y0_top {
            // The rectangle's top display row is texel row height - 1 - rect.y.
            height - 1 - rect.y
        } else {
            rect.y
        };
        let gl = &self.gl;
        let prog = match (&reader.prog_ext, external) {
            (Some(p), true) => p,
            _ => &reader.prog_2d,
        };
        // SAFETY: GL calls on the current context; every object was created by it. The draw
        // writes the reader's framebuffer (sized ≥ rect), glReadPixels writes `len` bytes into
        // the bound pixel-pack buffer (sized ≥ len), so no client memory is touched by GL.
        let fence = unsafe {
            drain_gl_errors(gl);
            gl.bind_framebuffer(glow::FRAMEBUFFER, Some(reader.fbo));
            gl.viewport(0, 0, rect.w as i32, rect.h as i32);
            gl.disable(glow::BLEND);
            gl.disable(glow::SCISSOR_TEST);
            gl.disable(glow::DEPTH_TEST);
            gl.use_program(Some(prog.program));
            gl.active_texture(glow::TEXTURE0);
            gl.bind_texture(target, Some(src_tex));
            gl.uniform_1_i32(prog.u_tex.as_ref(), 0);
            gl.uniform_2_i32(prog.u_origin.as_ref(), rect.x as i32, origin_y as i32);
            gl.uniform_1_i32(prog.u_flip.as_ref(), i32::from(y0_top));
            gl.bind_vertex_array(Some(reader.vao));
            gl.draw_arrays(glow::TRIANGLES, 0, 3);
            gl.bind_vertex_array(None);
            gl.bind_texture(target, None);
            gl.use_program(None);
            gl.bind_buffer(glow::PIXEL_PACK_BUFFER, Some(reader.pbo));
            gl.pixel_store_i32(glow::PACK_ALIGNMENT, 4);
            gl.pixel_store_i32(glow::PACK_ROW_LENGTH, 0);
            gl.read_pixels(
                0,
                0,
                rect.w as i32,
                rect.h as i32,
                glow::RGBA,
                glow::UNSIGNED_BYTE,
                glow::PixelPackData::BufferOffset(0),
            );
            gl.bind_framebuffer(glow::FRAMEBUFFER, None);
            let err = gl.get_error();
            if err != glow::NO_ERROR {
                gl.bind_buffer(glow::PIXEL_PACK_BUFFER, None);
                return Err(gl_err("readback draw/glReadPixels", err));
            }
            match gl.fence_sync(glow::SYNC_GPU_COMMANDS_COMPLETE, 0) {
                Ok(f) => f,
                Err(_) => {
                    gl.bind_buffer(glow::PIXEL_PACK_BUFFER, None);
                    return Err(gl_err("glFenceSync", gl.get_error()));
                }
            }
        };
        let waited = wait_fence(gl, fence, self.fence_timeout);
        // SAFETY: the fence was created above by this context and is deleted once.
        unsafe { gl.delete_sync(fence) };
        if let Err(e) = waited {
            // SAFETY: unbinding on the current context.
            unsafe { gl.bind_buffer(glow::PIXEL_PACK_BUFFER, None) };
            return Err(e);
        }
        // SAFETY: the pixel-pack buffer is bound and holds at least `len` bytes, written by
        // the completed glReadPixels; a successful map gives `len` readable bytes until
        // glUnmapBuffer, and nothing else uses the buffer meanwhile. `dst` was checked to hold
        // `rect.h` rows of `row` bytes at `dst_stride`.
        unsafe {
            let p = gl.map_buffer_range(glow::PIXEL_PACK_BUFFER, 0, len as i32, glow::MAP_READ_BIT);
            if p.is_null() {
                let err = gl.get_error();
                gl.bind_buffer(glow::PIXEL_PACK_BUFFER, None);
                return Err(gl_err("glMapBufferRange", err));
            }
            let src = std::slice::from_raw_parts(p as *const u8, len);
            for (i, line) in src.chunks_exact(row).enumerate() {
                let o = i * dst_stride;
                dst[o..o + row].copy_from_slice(line);
            }
            gl.unmap_buffer(glow::PIXEL_PACK_BUFFER);
            gl.bind_buffer(glow::PIXEL_PACK_BUFFER, None);
            let err = gl.get_error();
            if err != glow::NO_ERROR {
                return Err(gl_err("glUnmapBuffer", err));
            }
        }
        Ok(())
    }

    fn export_dmabuf(&mut self, tex: &TextureHandle) -> Result<Dmabuf, GpuError> {
        let Some((query, export)) = self.export else {
            return Err(GpuError::ExtensionMissing("EGL_MESA_image_dma_buf_export"));
        };
        let Some(e) = self.textures.get(&tex.id) else {
            return Err(GpuError::UnknownTexture(tex.id));
        };
        if e.target != glow::TEXTURE_2D {
            return Err(GpuError::ExportFailed(
                "only GL_TEXTURE_2D textures export".into(),
            ));
        }
        let (gl_tex, width, height) = (e.tex, e.width, e.height);
        self.session.make_current()?;
        // SAFETY: finishing the current context so the texture's content is complete before
        // another context (or process) reads the exported buffer.
        unsafe { self.gl.finish() };
        let image = self.texture_image(gl_tex)?;
        let s = &self.session;
        let mut fourcc = 0i32;
        let mut n_planes = 0i32;
        let mut modifiers = [0u64; 4];
        let mut fds = [-1i32; 4];
        let mut strides = [0 as egl::Int; 4];
        let mut offsets = [0 as egl::Int; 4];
        // SAFETY: `image` is a live EGLImage of `display`; the out arrays have room for 4
        // planes, the most a dmabuf has (EGL writes `num_planes` entries).
        let ok = unsafe {
            query(
                s.display.as_ptr(),
                image.as_ptr(),
                &mut fourcc,
                &mut n_planes,
                modifiers.as_mut_ptr(),
            ) == egl::TRUE
                && (1..=4).contains(&n_planes)
                && export(
                    s.display.as_ptr(),
                    image.as_ptr(),
                    fds.as_mut_ptr(),
                    strides.as_mut_ptr(),
                    offsets.as_mut_ptr(),
                ) == egl::TRUE
        };
        let egl_error = s.egl.get_error().map(egl_error_name);
        let _ = s.egl.destroy_image(s.display, image);
        // Take ownership of every fd EGL handed out, whatever happens next.
        let owned: Vec<Option<OwnedFd>> = fds
            .iter()
            .map(|&fd| {
                // SAFETY: a non-negative fd from eglExportDMABUFImageMESA is a new file
                // descriptor owned by the caller, and it is wrapped exactly once.
                (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect();
        if !ok {
            return Err(GpuError::ExportFailed(format!(
                "eglExportDMABUFImage(Query)MESA failed: {}",
                egl_error.unwrap_or("no EGL error")
            )));
        }
        let mut planes = Vec::new();
        let mut owned = owned.into_iter();
        for i in 0..n_planes as usize {
            let fd = match owned.next().flatten() {
                Some(fd) => fd,
                None => match planes.first() {
                    Some(DmabufPlane { fd, .. }) => fd
                        .try_clone()
                        .map_err(|e| GpuError::ExportFailed(format!("dup of plane 0 fd: {e}")))?,
                    None => return Err(GpuError::ExportFailed("no fd for plane 0".into())),
                },
            };
            planes.push(DmabufPlane {
                fd,
                offset: u32::try_from(offsets[i]).unwrap_or(0),
                stride: u32::try_from(strides[i]).unwrap_or(0),
            });
        }
        Ok(Dmabuf {
            planes,
            width,
            height,
            fourcc: Fourcc(fourcc as u32),
            modifier: modifiers[0],
            y0_top: false,
        })
    }

    /// An EGLImage of a GL texture of this context (EGL_KHR_gl_texture_2D_image).
    fn texture_image(&self, tex: glow::Texture) -> Result<egl::Image, GpuError> {
        let s = &self.session;
        if !has_ext(&s.display_exts, "EGL_KHR_gl_texture_2D_image") {
            return Err(GpuError::ExtensionMissing("EGL_KHR_gl_texture_2D_image"));
        }
        // SAFETY: for EGL_GL_TEXTURE_2D the client buffer is the GL texture name cast to a
        // pointer, per EGL_KHR_gl_texture_2D_image; the texture belongs to `s.context`.
        let buffer = unsafe { egl::ClientBuffer::from_ptr(tex.0.get() as usize as *mut c_void) };
        s.egl
            .create_image(
                s.display,
                s.context,
                GL_TEXTURE_2D_IMAGE,
                buffer,
                &[GL_TEXTURE_LEVEL, 0, egl::ATTRIB_NONE],
            )
            .map_err(egl_err("eglCreateImage(EGL_GL_TEXTURE_2D)"))
    }

    #[cfg(test)]
    fn reimport_via_egl_image(
        &mut self,
        tex: &TextureHandle,
        external: bool,
    ) -> Result<TextureHandle, GpuError> {
        let Some(e) = self.textures.get(&tex.id) else {
            return Err(GpuError::UnknownTexture(tex.id));
        };
        let (gl_tex, w, h) = (e.tex, e.width, e.height);
        self.session.make_current()?;
        let image = self.texture_image(gl_tex)?;
        self.adopt_image(image, w, h, external)
    }
}

impl Drop for GlState {
    fn drop(&mut self) {
        let current = self.session.make_current().is_ok();
        let ids: Vec<u64> = self.textures.keys().copied().collect();
        for id in ids {
            self.delete_texture(id);
        }
        if let (true, Some(r)) = (current, self.reader.take()) {
            r.delete(&self.gl);
        }
        // `session` drops after this, destroying the context.
    }
}

impl Program {
    fn new(gl: &glow::Context, external: bool) -> Result<Program, GpuError> {
        let defines = if external {
            "#define EXTERNAL_OES 1\n"
        } else {
            ""
        };
        let vs = format!("#version 300 es\n{VERT_SRC}");
        let fs = format!("#version 300 es\n{defines}{FRAG_SRC}");
        // SAFETY: GL calls on the current context; shader sources are plain strings.
        unsafe {
            let program = gl
                .create_program()
                .map_err(|e| GpuError::Shader(format!("glCreateProgram: {e}")))?;
            let mut shaders = Vec::new();
            let mut failure = None;
            for (kind, src, name) in [
                (glow::VERTEX_SHADER, &vs, "readback.vert"),
                (glow::FRAGMENT_SHADER, &fs, "readback_bgrx.frag"),
            ] {
                let sh = match gl.create_shader(kind) {
                    Ok(s) => s,
                    Err(e) => {
                        failure = Some(format!("glCreateShader: {e}"));
                        break;
                    }
                };
                gl.shader_source(sh, src);
                gl.compile_shader(sh);
                if !gl.get_shader_compile_status(sh) {
                    failure = Some(format!(
                        "{name} did not compile: {}",
                        gl.get_shader_info_log(sh)
                    ));
                }
                gl.attach_shader(program, sh);
                shaders.push(sh);
                if failure.is_some() {
                    break;
                }
            }
            if failure.is_none() {
                gl.link_program(program);
                if !gl.get_program_link_status(program) {
                    failure = Some(format!(
                        "did not link: {}",
                        gl.get_program_info_log(program)
                    ));
                }
            }
            for sh in shaders {
                gl.detach_shader(program, sh);
                gl.delete_shader(sh);
            }
            if let Some(f) = failure {
                gl.delete_program(program);
                return Err(GpuError::Shader(f));
            }
            Ok(Program {
                u_tex: gl.get_uniform_location(program, "u_tex"),
                u_origin: gl.get_uniform_location(program, "u_origin"),
                u_flip: gl.get_uniform_location(program, "u_flip"),
                program,
            })
        }
    }
}

impl Reader {
    fn new(gl: &glow::Context) -> Result<Reader, GpuError> {
        let prog_2d = Program::new(gl, false)?;
        // SAFETY: object creation on the current context; on failure what was made is
        // deleted.
        unsafe {
            let vao = gl.create_vertex_array();
            let fbo = gl.create_framebuffer();
            let pbo = gl.create_buffer();
            match (vao, fbo, pbo) {
                (Ok(vao), Ok(fbo), Ok(pbo)) => Ok(Reader {
                    prog_2d,
                    prog_ext: None,
                    vao,
                    fbo,
                    target: None,
                    pbo,
                    pbo_len: 0,
                }),
                (vao, fbo, pbo) => {
                    let err = gl.get_error();
                    if let Ok(v) = vao {
                        gl.delete_vertex_array(v);
                    }
                    if let Ok(f) = fbo {
                        gl.delete_framebuffer(f);
                    }
                    if let Ok(b) = pbo {
                        gl.delete_buffer(b);
                    }
                    gl.delete_program(prog_2d.program);
                    Err(gl_err("creating readback objects", err))
                }
            }
        }
    }

    /// Make the render target at least `w` x `h` (it only grows).
    fn ensure_target(&mut self, gl: &glow::Context, w: u32, h: u32) -> Result<(), GpuError> {
        if let Some((_, tw, th)) = self.target {
            if tw >= w && th >= h {
                return Ok(());
            }
        }
        let (nw, nh) = match self.target {
            Some((_, tw, th)) => (tw.max(w), th.max(h)),
            None => (w, h),
        };
        // SAFETY: GL calls on the current context; the old target texture is detached from
        // the framebuffer before it is deleted.
        unsafe {
            drain_gl_errors(gl);
            if let Some((old, _, _)) = self.target.take() {
                gl.bind_framebuffer(glow::FRAMEBUFFER, Some(self.fbo));
                gl.framebuffer_texture_2d(
                    glow::FRAMEBUFFER,
                    glow::COLOR_ATTACHMENT0,
                    glow::TEXTURE_2D,
                    None,
                    0,
                );
                gl.bind_framebuffer(glow::FRAMEBUFFER, None);
                gl.delete_texture(old);
            }
            let tex = gl
                .create_texture()
                .map_err(|_| gl_err("glGenTextures", gl.get_error()))?;
            gl.bind_texture(glow::TEXTURE_2D, Some(tex));
            set_nearest(gl, glow::TEXTURE_2D);
            gl.tex_storage_2d(glow::TEXTURE_2D, 1, glow::RGBA8, nw as i32, nh as i32);
            gl.bind_texture(glow::TEXTURE_2D, None);
            gl.bind_framebuffer(glow::FRAMEBUFFER, Some(self.fbo));
            gl.framebuffer_texture_2d(
                glow::FRAMEBUFFER,
                glow::COLOR_ATTACHMENT0,
                glow::TEXTURE_2D,
                Some(tex),
                0,
            );
            let status = gl.check_framebuffer_status(glow::FRAMEBUFFER);
            gl.bind_framebuffer(glow::FRAMEBUFFER, None);
            let err = gl.get_error();
            if err != glow::NO_ERROR || status != glow::FRAMEBUFFER_COMPLETE {
                gl.delete_texture(tex);
                return Err(gl_err(
                    "allocating the readback target",
                    if err != glow::NO_ERROR {
                        err
                    } else {
                        glow::INVALID_FRAMEBUFFER_OPERATION
                    },
                ));
            }
            self.target = Some((tex, nw, nh));
        }
        Ok(())
    }

    /// Make the pixel-pack buffer at least `len` bytes (it only grows).
    fn ensure_pbo(&mut self, gl: &glow::Context, len: usize) -> Result<(), GpuError> {
        if self.pbo_len >= len {
            return Ok(());
        }
        let size = i32::try_from(len).map_err(|_| gl_err("glBufferData", glow::OUT_OF_MEMORY))?;
        // SAFETY: GL calls on the current context; the buffer is this reader's.
        unsafe {
            drain_gl_errors(gl);
            gl.bind_buffer(glow::PIXEL_PACK_BUFFER, Some(self.pbo));
            gl.buffer_data_size(glow::PIXEL_PACK_BUFFER, size, glow::STREAM_READ);
            gl.bind_buffer(glow::PIXEL_PACK_BUFFER, None);
            let err = gl.get_error();
            if err != glow::NO_ERROR {
                self.pbo_len = 0;
                return Err(gl_err("glBufferData", err));
            }
        }
        self.pbo_len = len;
        Ok(())
    }

    fn delete(self, gl: &glow::Context) {
        // SAFETY: deleting this reader's objects on the current context that made them.
        unsafe {
            gl.delete_program(self.prog_2d.program);
            if let Some(p) = self.prog_ext {
                gl.delete_program(p.program);
            }
            gl.delete_vertex_array(self.vao);
            gl.delete_framebuffer(self.fbo);
            gl.delete_buffer(self.pbo);
            if let Some((t, _, _)) = self.target {
                gl.delete_texture(t);
            }
        }
    }
}

/// Wait for `fence` with a bounded timeout. The first wait flushes the command stream.
fn wait_fence(gl: &glow::Context, fence: glow::Fence, timeout: Duration) -> Result<(), GpuError> {
    let deadline = Instant::now() + timeout;
    let mut flags = glow::SYNC_FLUSH_COMMANDS_BIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // glow passes the timeout as i32 nanoseconds: wait in slices of at most 100 ms.
        let slice = left.min(Duration::from_millis(100)).as_nanos() as i32;
        // SAFETY: `fence` is a live sync object of the current context.
        let r = unsafe { gl.client_wait_sync(fence, flags, slice) };
        flags = 0;
        match r {
            glow::ALREADY_SIGNALED | glow::CONDITION_SATISFIED => return Ok(()),
            glow::TIMEOUT_EXPIRED if left.is_zero() => return Err(GpuError::FenceTimeout(timeout)),
            glow::TIMEOUT_EXPIRED => {}
            // SAFETY: reading the error of the current context.
            _ => return Err(gl_err("glClientWaitSync", unsafe { gl.get_error() })),
        }
    }
}

/// Clear errors left by earlier calls so the next check sees only its own.
///
/// # Safety
/// A GL context must be current on the calling thread.
unsafe fn drain_gl_errors(gl: &glow::Context) {
    for _ in 0..16 {
        // SAFETY: the caller guarantees a current context.
        if unsafe { gl.get_error() } == glow::NO_ERROR {
            break;
        }
    }
}

/// Nearest filtering and no mipmaps, so the texture is complete (texelFetch on an
/// incomplete texture returns black) and sampling is exact.
///
/// # Safety
/// A GL context must be current and a texture bound to `target`.
unsafe fn set_nearest(gl: &glow::Context, target: u32) {
    // SAFETY: the caller guarantees a current context with a texture bound to `target`.
    unsafe {
        gl.tex_parameter_i32(target, glow::TEXTURE_MIN_FILTER, glow::NEAREST as i32);
        gl.tex_parameter_i32(target, glow::TEXTURE_MAG_FILTER, glow::NEAREST as i32);
        gl.tex_parameter_i32(target, glow::TEXTURE_WRAP_S, glow::CLAMP_TO_EDGE as i32);
        gl.tex_parameter_i32(target, glow::TEXTURE_WRAP_T, glow::CLAMP_TO_EDGE as i32);
    }
}

/// Tightly packed rows of `src`, as BGRA or (`to_rgba`) with R and B swapped.
fn repack(src: &[u8], width: u32, height: u32, stride: usize, to_rgba: bool) -> Vec<u8> {
    let row = width as usize * 4;
    let mut out = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        let line = &src[y * stride..y * stride + row];
        if to_rgba {
            for px in line.chunks_exact(4) {
                out.extend_from_slice(&[px[2], px[1], px[0], px[3]]);
            }
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Whether `len` bytes with rows `stride` apart hold `rows` rows of `width` BGRx pixels (the
/// last row need only hold its pixels).
pub(crate) fn check_destination(
    len: usize,
    stride: usize,
    width: u32,
    rows: u32,
) -> Result<(), GpuError> {
    let row = width as usize * 4;
    let need = (rows.max(1) as usize - 1)
        .checked_mul(stride)
        .and_then(|n| n.checked_add(row));
    match need {
        Some(need) if stride >= row && len >= need => Ok(()),
        _ => Err(GpuError::BadDestination {
            need: need.unwrap_or(usize::MAX),
            have: len,
            stride,
        }),
    }
}
