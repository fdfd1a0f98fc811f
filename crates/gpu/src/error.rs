//! [`GpuError`] and the names of EGL / GL error codes.

use std::time::Duration;

use scanoutd_types::{DmabufError, Rect};

/// Everything that can go wrong on the GPU path. Each variant says which step failed; EGL and
/// GL failures carry the error's symbolic name (`EGL_BAD_PARAMETER`, `GL_INVALID_OPERATION`).
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// `libEGL.so.1` could not be loaded, or it does not implement EGL 1.5.
    #[error("EGL is not available: {0}")]
    NoEgl(String),
    /// No EGL display could be initialised with a usable GLES 3 context; lists each
    /// candidate (device or platform) and why it was passed over.
    #[error("no usable EGL display: {0}")]
    NoDisplay(String),
    /// A display was initialised but no GLES 3 context could be created or made current.
    #[error("could not create a GLES 3 context: {0}")]
    NoContext(String),
    /// An EGL or GL extension this operation needs is absent.
    #[error("required extension {0} is not supported by this driver")]
    ExtensionMissing(&'static str),
    /// `eglCreateImage` (or the GL binding of the image) refused the dmabuf.
    #[error("dmabuf import failed: {call} returned {egl_error}")]
    ImportFailed {
        call: &'static str,
        egl_error: &'static str,
    },
    /// Another EGL call failed.
    #[error("{call} failed: {egl_error}")]
    Egl {
        call: &'static str,
        egl_error: &'static str,
    },
    /// A GL call left an error, or a GL object could not be created.
    #[error("GL error {name} ({code:#06x}) in {op}")]
    Gl {
        op: &'static str,
        code: u32,
        name: &'static str,
    },
    /// A shader did not compile or link (the driver's log).
    #[error("shader {0}")]
    Shader(String),
    /// The dmabuf description breaks the project's limits.
    #[error("invalid dmabuf: {0}")]
    InvalidDmabuf(#[from] DmabufError),
    /// A linear dmabuf is smaller than its layout needs.
    #[error("dmabuf holds {have} bytes but its layout needs {need}")]
    DmabufTooSmall { need: u64, have: u64 },
    /// An operation on the dmabuf fd (`fstat`, `dup`) failed.
    #[error("{op} of the dmabuf fd failed: {source}")]
    Fd {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The handle names no live texture (released, or evicted from the import cache).
    #[error("texture {0} is unknown or was released")]
    UnknownTexture(u64),
    /// The rectangle is empty or not inside the texture.
    #[error("rectangle {rect:?} is empty or outside the {width}x{height} texture")]
    BadRect { rect: Rect, width: u32, height: u32 },
    /// The destination slice cannot hold the rectangle at the given stride.
    #[error("destination of {have} bytes at stride {stride} cannot hold {need} bytes of rows")]
    BadDestination {
        need: usize,
        have: usize,
        stride: usize,
    },
    /// The source pixels do not match the size and stride given.
    #[error(
        "source of {have} bytes at stride {stride} does not hold {width}x{height} BGRx pixels"
    )]
    BadSource {
        width: u32,
        height: u32,
        stride: usize,
        have: usize,
    },
    /// The GPU did not finish the copy within the fence timeout.
    #[error("GPU copy did not complete within {0:?}")]
    FenceTimeout(Duration),
    /// The limit on textures uploaded from CPU memory is reached; release one first.
    #[error("too many uploaded textures (limit {0})")]
    TooManyTextures(usize),
    /// Exporting a texture as a dmabuf failed.
    #[error("dmabuf export failed: {0}")]
    ExportFailed(String),
    /// The GPU worker's job queue is full; the job was not queued.
    #[error("GPU queue is full ({0} jobs waiting)")]
    QueueFull(usize),
    /// The GPU worker thread has stopped (or is stopping).
    #[error("the GPU thread has stopped")]
    WorkerGone,
    /// The GPU worker thread could not be started.
    #[error("could not start the GPU thread: {0}")]
    Spawn(String),
}

/// The symbolic name of an EGL error.
pub(crate) fn egl_error_name(e: khronos_egl::Error) -> &'static str {
    use khronos_egl::Error::*;
    match e {
        NotInitialized => "EGL_NOT_INITIALIZED",
        BadAccess => "EGL_BAD_ACCESS",
        BadAlloc => "EGL_BAD_ALLOC",
        BadAttribute => "EGL_BAD_ATTRIBUTE",
        BadContext => "EGL_BAD_CONTEXT",
        BadConfig => "EGL_BAD_CONFIG",
        BadCurrentSurface => "EGL_BAD_CURRENT_SURFACE",
        BadDisplay => "EGL_BAD_DISPLAY",
        BadSurface => "EGL_BAD_SURFACE",
        BadMatch => "EGL_BAD_MATCH",
        BadParameter => "EGL_BAD_PARAMETER",
        BadNativePixmap => "EGL_BAD_NATIVE_PIXMAP",
        BadNativeWindow => "EGL_BAD_NATIVE_WINDOW",
        ContextLost => "EGL_CONTEXT_LOST",
    }
}

/// An EGL failure as a [`GpuError::Egl`].
pub(crate) fn egl_err(call: &'static str) -> impl FnOnce(khronos_egl::Error) -> GpuError {
    move |e| GpuError::Egl {
        call,
        egl_error: egl_error_name(e),
    }
}

/// The symbolic name of a GL error code.
pub(crate) fn gl_error_name(code: u32) -> &'static str {
    match code {
        glow::INVALID_ENUM => "GL_INVALID_ENUM",
        glow::INVALID_VALUE => "GL_INVALID_VALUE",
        glow::INVALID_OPERATION => "GL_INVALID_OPERATION",
        glow::INVALID_FRAMEBUFFER_OPERATION => "GL_INVALID_FRAMEBUFFER_OPERATION",
        glow::OUT_OF_MEMORY => "GL_OUT_OF_MEMORY",
        glow::STACK_UNDERFLOW => "GL_STACK_UNDERFLOW",
        glow::STACK_OVERFLOW => "GL_STACK_OVERFLOW",
        glow::CONTEXT_LOST => "GL_CONTEXT_LOST",
        _ => "GL_UNKNOWN_ERROR",
    }
}

/// A GL failure as a [`GpuError::Gl`].
pub(crate) fn gl_err(op: &'static str, code: u32) -> GpuError {
    GpuError::Gl {
        op,
        code,
        name: gl_error_name(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            egl_error_name(khronos_egl::Error::BadParameter),
            "EGL_BAD_PARAMETER"
        );
        assert_eq!(
            gl_error_name(glow::INVALID_OPERATION),
            "GL_INVALID_OPERATION"
        );
        let e = GpuError::ImportFailed {
            call: "eglCreateImage",
            egl_error: "EGL_BAD_MATCH",
        };
        assert_eq!(
            e.to_string(),
            "dmabuf import failed: eglCreateImage returned EGL_BAD_MATCH"
        );
        assert_eq!(
            gl_err("glReadPixels", glow::INVALID_VALUE).to_string(),
            "GL error GL_INVALID_VALUE (0x0501) in glReadPixels"
        );
    }
}
