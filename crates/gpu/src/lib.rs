//! The GPU path: a headless EGL display with a GLES 3 context, dmabuf import (QEMU's
//! `ScanoutDMABUF`), upload of CPU pixels, and a fenced readback into BGRx CPU memory
//! (what `UpdateDMABUF` must wait for before QEMU gets its reply).
//!
//! - [`Gpu`]: the context and its textures. Thread-bound (`!Send`).
//! - [`GpuWorker`]: a [`Gpu`] on its own thread behind a bounded queue, for async callers.
//! - Imports are cached by the dmabuf's `fstat` identity (`st_dev`, `st_ino`), since QEMU
//!   sends a new fd per flip for the same buffer.
//!
//! This is the one crate of the workspace with `unsafe` code (EGL and GL FFI); every unsafe
//! block says why it is sound in a `SAFETY:` comment.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod cache;
mod egl;
mod error;
mod gpu;
mod worker;

pub use cache::DEFAULT_IMPORT_CACHE;
pub use egl::{GpuOptions, Platform};
pub use error::GpuError;
pub use gpu::{Gpu, GpuInfo, GpuStats, TextureHandle, MAX_UPLOADED_TEXTURES};
pub use worker::{
    GpuWorker, ReadInfo, ReadOutcome, ReadRequest, Target, WorkerConfig, WorkerStats,
};

#[cfg(test)]
mod tests;
