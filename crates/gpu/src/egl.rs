//! EGL: loading libEGL, choosing a headless display, creating a GLES 3 context, and the
//! extension entry points khronos-egl does not wrap.
//!
//! libEGL is loaded at run time (`dlopen("libEGL.so.1")`, the khronos-egl `dynamic`
//! feature) rather than linked: the GPU path is optional (QEMU's 2D path and the demo need
//! no GPU), so a host without libEGL must still run the service and get
//! [`GpuError::NoEgl`] from [`crate::Gpu::new_headless`] instead of a loader failure at
//! process start, and building needs no EGL development files. The library is loaded once
//! per process and never unloaded (unloading Mesa at exit is a known source of crashes).

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use khronos_egl as egl;

use crate::error::{egl_err, egl_error_name, GpuError};

/// The EGL 1.5 entry points, loaded from the system's libEGL.
pub(crate) type Egl = egl::DynamicInstance<egl::EGL1_5>;

// Extension tokens (eglext.h).
pub(crate) const PLATFORM_DEVICE_EXT: egl::Enum = 0x313F;
pub(crate) const PLATFORM_SURFACELESS_MESA: egl::Enum = 0x31DD;
const DRM_DEVICE_FILE_EXT: egl::Int = 0x3233;
const DRM_RENDER_NODE_FILE_EXT: egl::Int = 0x3377;
pub(crate) const LINUX_DMA_BUF_EXT: egl::Enum = 0x3270;
pub(crate) const LINUX_DRM_FOURCC_EXT: egl::Attrib = 0x3271;
/// (fd, offset, pitch, modifier lo, modifier hi) attribute names for planes 0..=3.
pub(crate) const PLANE_ATTRIBS: [[egl::Attrib; 5]; 4] = [
    [0x3272, 0x3273, 0x3274, 0x3443, 0x3444],
    [0x3275, 0x3276, 0x3277, 0x3445, 0x3446],
    [0x3278, 0x3279, 0x327A, 0x3447, 0x3448],
    [0x3440, 0x3441, 0x3442, 0x3449, 0x344A],
];
pub(crate) const GL_TEXTURE_2D_IMAGE: egl::Enum = 0x30B1; // EGL_GL_TEXTURE_2D
pub(crate) const GL_TEXTURE_LEVEL: egl::Attrib = 0x30BC; // EGL_GL_TEXTURE_LEVEL

type QueryDevicesExt =
    unsafe extern "system" fn(egl::Int, *mut *mut c_void, *mut egl::Int) -> egl::Boolean;
type QueryDeviceStringExt = unsafe extern "system" fn(*mut c_void, egl::Int) -> *const c_char;
pub(crate) type ExportQueryMesa = unsafe extern "system" fn(
    egl::EGLDisplay,
    egl::EGLImage,
    *mut i32,
    *mut i32,
    *mut u64,
) -> egl::Boolean;
pub(crate) type ExportMesa = unsafe extern "system" fn(
    egl::EGLDisplay,
    egl::EGLImage,
    *mut i32,
    *mut egl::Int,
    *mut egl::Int,
) -> egl::Boolean;
/// `glEGLImageTargetTexture2DOES(GLenum target, GLeglImageOES image)`.
pub(crate) type ImageTargetTexture2dOes = unsafe extern "system" fn(u32, *const c_void);

/// The process-wide EGL instance.
pub(crate) fn egl() -> Result<&'static Egl, GpuError> {
    static EGL: OnceLock<Result<Egl, String>> = OnceLock::new();
    EGL.get_or_init(|| {
        // SAFETY: libEGL.so.1 is the system's EGL library (libglvnd or Mesa), which
        // implements the EGL 1.5 ABI that khronos-egl binds; `load_required` checks that
        // every EGL 1.5 symbol is present. The instance lives in a static and is never
        // dropped, so the library is never unloaded while its functions may be called.
        let loaded = unsafe { Egl::load_required_from_filename("libEGL.so.1") };
        loaded.map_err(|e| format!("libEGL.so.1: {e}"))
    })
    .as_ref()
    .map_err(|e| GpuError::NoEgl(e.clone()))
}

/// Look up an EGL or GL extension function by name and give it its prototype.
///
/// # Safety
/// `F` must be the `extern "system"` function-pointer type of `name`'s prototype in the
/// Khronos registry.
pub(crate) unsafe fn proc_address<F: Copy>(egl: &Egl, name: &str) -> Option<F> {
    debug_assert_eq!(
        std::mem::size_of::<F>(),
        std::mem::size_of::<extern "system" fn()>()
    );
    let p = egl.get_proc_address(name)?;
    // SAFETY: the caller guarantees `F` is the function-pointer type for `name`; function
    // pointers all have the same size and representation.
    Some(unsafe { std::mem::transmute_copy::<extern "system" fn(), F>(&p) })
}

/// Whether a space-separated extension string names `ext`.
pub(crate) fn has_ext(list: &str, ext: &str) -> bool {
    list.split_ascii_whitespace().any(|e| e == ext)
}

fn query_string(egl: &Egl, display: Option<egl::Display>, name: egl::Int) -> String {
    egl.query_string(display, name)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Which EGL platform to open the display on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Platform {
    /// EGL devices first (hardware before software), then Mesa's surfaceless platform.
    #[default]
    Any,
    /// Only EGL_PLATFORM_DEVICE_EXT (the one NVIDIA's driver offers).
    Device,
    /// Only EGL_PLATFORM_SURFACELESS_MESA (Mesa picks the render node).
    Surfaceless,
}

/// Where to look for a GPU.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    pub platform: Platform,
    /// Use only the EGL device whose DRM render node (or primary node) is this path, e.g.
    /// `/dev/dri/renderD128` — the node QEMU renders on, so its dmabufs import natively.
    pub render_node: Option<PathBuf>,
    /// Accept a software renderer (llvmpipe) when no hardware device works. It has no dmabuf
    /// import, but uploads and readback work (tests, CI).
    pub allow_software: bool,
    /// How long a readback may wait for the GPU before failing with
    /// [`GpuError::FenceTimeout`].
    pub fence_timeout: std::time::Duration,
    /// How many dmabuf imports are kept (LRU).
    pub import_cache: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            platform: Platform::Any,
            render_node: None,
            allow_software: true,
            fence_timeout: std::time::Duration::from_millis(500),
            import_cache: crate::cache::DEFAULT_IMPORT_CACHE,
        }
    }
}

/// One place an EGL display can come from.
struct Candidate {
    platform: egl::Enum,
    native: *mut c_void,
    label: String,
    drm_node: Option<String>,
    software: bool,
}

/// Every display to try, best first: hardware EGL devices (those with a DRM node first) in
/// the driver's order, then software devices (EGL_MESA_device_software), then Mesa's
/// surfaceless platform.
fn candidates(egl: &Egl, opts: &GpuOptions, tried: &mut Vec<String>) -> Vec<Candidate> {
    let client = query_string(egl, None, egl::EXTENSIONS);
    let mut hw = Vec::new();
    let mut sw = Vec::new();
    let device_platform = opts.platform != Platform::Surfaceless
        && has_ext(&client, "EGL_EXT_platform_device")
        && (has_ext(&client, "EGL_EXT_device_enumeration")
            || has_ext(&client, "EGL_EXT_device_base"));
    // SAFETY: the prototypes are those of EGL_EXT_device_enumeration / EGL_EXT_device_query.
    let query_devices: Option<QueryDevicesExt> = unsafe { proc_address(egl, "eglQueryDevicesEXT") };
    // SAFETY: as above.
    let query_string_dev: Option<QueryDeviceStringExt> =
        unsafe { proc_address(egl, "eglQueryDeviceStringEXT") };
    if let (true, Some(query_devices), Some(query_string_dev)) =
        (device_platform, query_devices, query_string_dev)
    {
        let mut devices = [std::ptr::null_mut::<c_void>(); 16];
        let mut n: egl::Int = 0;
        // SAFETY: `devices` has room for the 16 entries we declare; `n` is a valid out
        // pointer. EGL writes at most `max_devices` handles.
        let ok = unsafe { query_devices(devices.len() as egl::Int, devices.as_mut_ptr(), &mut n) };
        if ok == egl::TRUE {
            let n = usize::try_from(n).unwrap_or(0).min(devices.len());
            for (i, &dev) in devices[..n].iter().enumerate() {
                let dev_string = |name: egl::Int| -> Option<String> {
                    // SAFETY: `dev` is a device handle EGL just returned; the result is
                    // null or a NUL-terminated string owned by EGL, copied out at once.
                    unsafe {
                        let s = query_string_dev(dev, name);
                        (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
                    }
                };
                let exts = dev_string(egl::EXTENSIONS).unwrap_or_default();
                let render = has_ext(&exts, "EGL_EXT_device_drm_render_node")
                    .then(|| dev_string(DRM_RENDER_NODE_FILE_EXT))
                    .flatten();
                let primary = has_ext(&exts, "EGL_EXT_device_drm")
                    .then(|| dev_string(DRM_DEVICE_FILE_EXT))
                    .flatten();
                let software = has_ext(&exts, "EGL_MESA_device_software");
                let drm_node = render.clone().or(primary.clone());
                let label = format!(
                    "EGL device {i} ({})",
                    drm_node.as_deref().unwrap_or(if software {
                        "software"
                    } else {
                        "no DRM node"
                    })
                );
                if let Some(want) = &opts.render_node {
                    let matches = [&render, &primary]
                        .iter()
                        .any(|n| n.as_deref().map(Path::new) == Some(want.as_path()));
                    if !matches {
                        tried.push(format!("{label}: not {}", want.display()));
                        continue;
                    }
                }
                let c = Candidate {
                    platform: PLATFORM_DEVICE_EXT,
                    native: dev,
                    label,
                    drm_node,
                    software,
                };
                if c.software {
                    sw.push(c);
                } else {
                    hw.push(c);
                }
            }
        } else {
            tried.push("eglQueryDevicesEXT failed".into());
        }
    } else if opts.platform != Platform::Surfaceless {
        tried.push("no EGL device enumeration".into());
    }
    // Devices with a DRM node first (a device with neither a node nor the software flag is
    // tried after them; the renderer string settles what it is).
    hw.sort_by_key(|c| c.drm_node.is_none());
    let mut all = hw;
    if opts.allow_software {
        all.append(&mut sw);
    } else if !sw.is_empty() {
        tried.push(format!("{} software device(s) not allowed", sw.len()));
    }
    if opts.render_node.is_none() && opts.platform != Platform::Device {
        if has_ext(&client, "EGL_MESA_platform_surfaceless") {
            all.push(Candidate {
                platform: PLATFORM_SURFACELESS_MESA,
                native: std::ptr::null_mut(),
                label: "surfaceless platform".into(),
                drm_node: None,
                // Mesa picks a render node if it can, llvmpipe otherwise: told by the
                // renderer string once the context exists.
                software: false,
            });
        } else {
            tried.push("no EGL_MESA_platform_surfaceless".into());
        }
    }
    all
}

/// Reference counts of initialised displays: EGL platform displays are per-process
/// singletons and `eglTerminate` is not counted, so a display is terminated only when the
/// last [`Session`] on it goes.
fn display_refs() -> &'static Mutex<HashMap<usize, usize>> {
    static REFS: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    REFS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn acquire_display(egl: &Egl, display: egl::Display) -> Result<(i32, i32), egl::Error> {
    let mut refs = display_refs().lock().unwrap_or_else(|p| p.into_inner());
    let v = egl.initialize(display)?;
    *refs.entry(display.as_ptr() as usize).or_insert(0) += 1;
    Ok(v)
}

fn release_display(egl: &Egl, display: egl::Display) {
    let mut refs = display_refs().lock().unwrap_or_else(|p| p.into_inner());
    let key = display.as_ptr() as usize;
    let last = match refs.get_mut(&key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(&key);
            true
        }
        None => false,
    };
    if last {
        let _ = egl.terminate(display);
    }
}

/// An initialised display with a current GLES 3 context (on the creating thread).
pub(crate) struct Session {
    pub egl: &'static Egl,
    pub display: egl::Display,
    pub context: egl::Context,
    pub platform: &'static str,
    pub drm_node: Option<String>,
    pub software: bool,
    pub display_exts: String,
    pub egl_vendor: String,
    pub egl_version: String,
}

impl Session {
    /// The first candidate display that gives a current GLES 3 context.
    pub fn open(opts: &GpuOptions) -> Result<Session, GpuError> {
        let egl = egl()?;
        let mut tried = Vec::new();
        let cands = candidates(egl, opts, &mut tried);
        let mut context_failures = Vec::new();
        let mut other_failures = 0;
        for c in cands {
            match Session::try_candidate(egl, &c) {
                Ok(s) => {
                    if !tried.is_empty() {
                        tracing::debug!(passed_over = %tried.join("; "), chosen = %c.label, "EGL display");
                    }
                    return Ok(s);
                }
                Err(GpuError::NoContext(m)) => context_failures.push(format!("{}: {m}", c.label)),
                Err(e) => {
                    other_failures += 1;
                    tried.push(format!("{}: {e}", c.label));
                }
            }
        }
        if !context_failures.is_empty() && other_failures == 0 {
            // Displays came up but none gave a context.
            return Err(GpuError::NoContext(context_failures.join("; ")));
        }
        tried.extend(context_failures);
        Err(GpuError::NoDisplay(if tried.is_empty() {
            "no EGL display candidates".into()
        } else {
            tried.join("; ")
        }))
    }

    fn try_candidate(egl: &'static Egl, c: &Candidate) -> Result<Session, GpuError> {
        // SAFETY: for EGL_PLATFORM_DEVICE_EXT `native` is a device handle returned by
        // eglQueryDevicesEXT; for EGL_PLATFORM_SURFACELESS_MESA it must be NULL, which it is.
        // The attribute list is the empty, EGL_NONE-terminated list.
        let display =
            unsafe { egl.get_platform_display(c.platform, c.native, &[egl::ATTRIB_NONE]) }
                .map_err(egl_err("eglGetPlatformDisplay"))?;
        let (major, minor) = acquire_display(egl, display).map_err(egl_err("eglInitialize"))?;
        match Session::make_context(egl, display) {
            Ok(context) => {
                let display_exts = query_string(egl, Some(display), egl::EXTENSIONS);
                Ok(Session {
                    egl,
                    display,
                    context,
                    platform: if c.platform == PLATFORM_DEVICE_EXT {
                        "device"
                    } else {
                        "surfaceless"
                    },
                    drm_node: c.drm_node.clone(),
                    software: c.software,
                    display_exts,
                    egl_vendor: query_string(egl, Some(display), egl::VENDOR),
                    egl_version: {
                        let v = query_string(egl, Some(display), egl::VERSION);
                        if v.is_empty() {
                            format!("{major}.{minor}")
                        } else {
                            v
                        }
                    },
                })
            }
            Err(e) => {
                release_display(egl, display);
                Err(e)
            }
        }
    }

    fn make_context(egl: &Egl, display: egl::Display) -> Result<egl::Context, GpuError> {
        let exts = query_string(egl, Some(display), egl::EXTENSIONS);
        if !has_ext(&exts, "EGL_KHR_surfaceless_context") {
            return Err(GpuError::NoContext(
                "EGL_KHR_surfaceless_context is missing".into(),
            ));
        }
        egl.bind_api(egl::OPENGL_ES_API)
            .map_err(|e| GpuError::NoContext(format!("eglBindAPI: {}", egl_error_name(e))))?;
        let config_attrs = [egl::RENDERABLE_TYPE, egl::OPENGL_ES3_BIT, egl::NONE];
        let config = match egl.choose_first_config(display, &config_attrs) {
            Ok(Some(c)) => c,
            _ if has_ext(&exts, "EGL_KHR_no_config_context") => {
                // SAFETY: EGL_NO_CONFIG_KHR (a null config) is valid for eglCreateContext
                // when EGL_KHR_no_config_context is supported, which was just checked.
                unsafe { egl::Config::from_ptr(std::ptr::null_mut()) }
            }
            Ok(None) => return Err(GpuError::NoContext("no GLES 3 config".into())),
            Err(e) => {
                return Err(GpuError::NoContext(format!(
                    "eglChooseConfig: {}",
                    egl_error_name(e)
                )))
            }
        };
        let ctx_attrs = [
            egl::CONTEXT_MAJOR_VERSION,
            3,
            egl::CONTEXT_MINOR_VERSION,
            0,
            egl::NONE,
        ];
        let context = egl
            .create_context(display, config, None, &ctx_attrs)
            .map_err(|e| GpuError::NoContext(format!("eglCreateContext: {}", egl_error_name(e))))?;
        if let Err(e) = egl.make_current(display, None, None, Some(context)) {
            let _ = egl.destroy_context(display, context);
            return Err(GpuError::NoContext(format!(
                "eglMakeCurrent (surfaceless): {}",
                egl_error_name(e)
            )));
        }
        Ok(context)
    }

    /// Make this session's context current on the calling thread (a no-op when it is).
    pub fn make_current(&self) -> Result<(), GpuError> {
        if self.egl.get_current_context().map(|c| c.as_ptr()) == Some(self.context.as_ptr()) {
            return Ok(());
        }
        self.egl
            .make_current(self.display, None, None, Some(self.context))
            .map_err(egl_err("eglMakeCurrent"))
    }

    pub fn has_display_ext(&self, ext: &str) -> bool {
        has_ext(&self.display_exts, ext)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.egl.get_current_context().map(|c| c.as_ptr()) == Some(self.context.as_ptr()) {
            let _ = self.egl.make_current(self.display, None, None, None);
        }
        let _ = self.egl.destroy_context(self.display, self.context);
        release_display(self.egl, self.display);
    }
}
