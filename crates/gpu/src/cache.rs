//! The dmabuf import cache: one import per buffer, recognised by the `fstat` identity
//! (`st_dev`, `st_ino`) of its fd.
//!
//! QEMU sends a fresh fd on every flip even when it names a buffer already seen; the dma-buf
//! inode stays the same while any reference to the buffer lives. Each entry keeps a duplicate
//! of the fd, so the buffer (and with it the inode number) cannot be freed and reused by
//! another buffer while the entry exists. A buffer seen again with a different layout
//! (size, format, modifier, offsets, strides) replaces its old import. The cache is a small
//! LRU; evicted imports are handed back to the importer to destroy.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};

use scanoutd_types::{Dmabuf, MAX_DMABUF_PLANES};

use crate::error::GpuError;

/// How many imports are kept by default: enough for triple buffering plus a cursor or
/// a second console.
pub const DEFAULT_IMPORT_CACHE: usize = 4;

/// A buffer's identity: the dma-buf inode of its first plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BufferKey {
    pub dev: u64,
    pub ino: u64,
}

/// Everything about a buffer's layout that an import depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    width: u32,
    height: u32,
    fourcc: u32,
    modifier: u64,
    /// (dev, ino, offset, stride) per plane.
    planes: [(u64, u64, u32, u32); MAX_DMABUF_PLANES],
    n_planes: usize,
}

/// The identity and layout of a dmabuf, and its size in bytes as `fstat` reports it (0 when
/// the kernel does not say).
pub(crate) struct Identity {
    pub key: BufferKey,
    pub layout: Layout,
    pub size: u64,
}

impl Identity {
    /// `fstat` every plane's fd.
    pub fn of(buf: &Dmabuf) -> Result<Identity, GpuError> {
        let mut planes = [(0, 0, 0, 0); MAX_DMABUF_PLANES];
        let mut first = None;
        for (slot, p) in planes.iter_mut().zip(&buf.planes) {
            let st = rustix::fs::fstat(p.fd.as_fd()).map_err(|e| GpuError::Fd {
                op: "fstat",
                source: e.into(),
            })?;
            *slot = (st.st_dev, st.st_ino, p.offset, p.stride);
            first.get_or_insert((st.st_dev, st.st_ino, st.st_size));
        }
        let Some((dev, ino, size)) = first else {
            return Err(GpuError::InvalidDmabuf(
                scanoutd_types::DmabufError::BadPlaneCount(0),
            ));
        };
        Ok(Identity {
            key: BufferKey { dev, ino },
            layout: Layout {
                width: buf.width,
                height: buf.height,
                fourcc: buf.fourcc.0,
                modifier: buf.modifier,
                planes,
                n_planes: buf.planes.len().min(MAX_DMABUF_PLANES),
            },
            size: u64::try_from(size).unwrap_or(0),
        })
    }
}

struct Entry<V> {
    key: BufferKey,
    layout: Layout,
    value: V,
    /// A duplicate of the first plane's fd: keeps the buffer, and so its inode, alive.
    _hold: OwnedFd,
}

/// What a lookup found.
pub(crate) enum Lookup<V> {
    /// The buffer is imported with this layout.
    Hit(V),
    /// Not imported. `stale` is an import of the same buffer with another layout, now
    /// removed from the cache, for the caller to destroy.
    Miss { stale: Option<V> },
}

/// A bounded LRU of imports keyed by [`BufferKey`]; the most recently used entry is last.
pub(crate) struct ImportCache<V> {
    capacity: usize,
    entries: VecDeque<Entry<V>>,
}

impl<V: Copy> ImportCache<V> {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        ImportCache {
            capacity,
            entries: VecDeque::with_capacity(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Look a buffer up; a hit becomes the most recently used entry.
    pub fn lookup(&mut self, key: BufferKey, layout: &Layout) -> Lookup<V> {
        let Some(i) = self.entries.iter().position(|e| e.key == key) else {
            return Lookup::Miss { stale: None };
        };
        let Some(e) = self.entries.remove(i) else {
            return Lookup::Miss { stale: None };
        };
        if e.layout == *layout {
            let v = e.value;
            self.entries.push_back(e);
            Lookup::Hit(v)
        } else {
            Lookup::Miss {
                stale: Some(e.value),
            }
        }
    }

    /// Add an import (after a miss). Returns the entry evicted to make room, if any.
    pub fn insert(&mut self, key: BufferKey, layout: Layout, value: V, hold: OwnedFd) -> Option<V> {
        let evicted = if self.entries.len() >= self.capacity {
            self.entries.pop_front().map(|e| e.value)
        } else {
            None
        };
        self.entries.push_back(Entry {
            key,
            layout,
            value,
            _hold: hold,
        });
        evicted
    }

    /// Remove the entry holding `value` (when its texture is released some other way).
    pub fn remove_value(&mut self, pred: impl Fn(&V) -> bool) -> Option<V> {
        let i = self.entries.iter().position(|e| pred(&e.value))?;
        self.entries.remove(i).map(|e| e.value)
    }

    /// Empty the cache, returning every import for the caller to destroy.
    pub fn drain(&mut self) -> Vec<V> {
        self.entries.drain(..).map(|e| e.value).collect()
    }
}

/// The GPU side of an import, as the cache drives it. [`crate::Gpu`] implements it with
/// EGL; the tests use a fake that counts.
pub(crate) trait Importer {
    type Value: Copy;
    /// Import `buf` (a cache miss). `id` is the buffer's identity, already `fstat`ed.
    fn import_uncached(&mut self, buf: &Dmabuf, id: &Identity) -> Result<Self::Value, GpuError>;
    /// Destroy an import that left the cache.
    fn destroy(&mut self, value: Self::Value);
}

/// Import `buf` through `cache`: a buffer already imported with the same layout is returned
/// as it is (`true` = cache hit); otherwise it is imported, and whatever the cache drops to
/// make room is destroyed.
pub(crate) fn import_cached<I: Importer>(
    cache: &mut ImportCache<I::Value>,
    importer: &mut I,
    buf: &Dmabuf,
) -> Result<(I::Value, bool), GpuError> {
    buf.validate()?;
    let id = Identity::of(buf)?;
    match cache.lookup(id.key, &id.layout) {
        Lookup::Hit(v) => return Ok((v, true)),
        Lookup::Miss { stale } => {
            if let Some(old) = stale {
                importer.destroy(old);
            }
        }
    }
    let hold = buf.planes[0]
        .fd
        .try_clone()
        .map_err(|source| GpuError::Fd { op: "dup", source })?;
    let value = importer.import_uncached(buf, &id)?;
    if let Some(old) = cache.insert(id.key, id.layout, value, hold) {
        importer.destroy(old);
    }
    Ok((value, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanoutd_types::{DmabufPlane, Fourcc, DRM_FORMAT_MOD_LINEAR};
    use std::collections::HashSet;

    /// Counts imports and destructions; fails on request.
    #[derive(Default)]
    struct FakeImporter {
        next: u32,
        live: HashSet<u32>,
        imports: usize,
        fail_next: bool,
    }

    impl Importer for FakeImporter {
        type Value = u32;
        fn import_uncached(&mut self, _: &Dmabuf, _: &Identity) -> Result<u32, GpuError> {
            if std::mem::take(&mut self.fail_next) {
                return Err(GpuError::ImportFailed {
                    call: "fake",
                    egl_error: "EGL_BAD_MATCH",
                });
            }
            self.next += 1;
            self.imports += 1;
            assert!(self.live.insert(self.next));
            Ok(self.next)
        }
        fn destroy(&mut self, v: u32) {
            assert!(self.live.remove(&v), "destroyed {v} twice or never made");
        }
    }

    fn memfd() -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("scanoutd-gpu-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 64 * 64 * 4).unwrap();
        fd
    }

    fn buf(fd: OwnedFd) -> Dmabuf {
        Dmabuf {
            planes: vec![DmabufPlane {
                fd,
                offset: 0,
                stride: 64 * 4,
            }],
            width: 64,
            height: 64,
            fourcc: Fourcc::XRGB8888,
            modifier: DRM_FORMAT_MOD_LINEAR,
            y0_top: false,
        }
    }

    /// A new fd for the same buffer, as QEMU sends on each flip.
    fn resend(b: &Dmabuf) -> Dmabuf {
        buf(b.planes[0].fd.try_clone().unwrap())
    }

    #[test]
    fn one_import_per_buffer_across_new_fds() {
        let mut cache = ImportCache::new(4);
        let mut imp = FakeImporter::default();
        let a = buf(memfd());
        let (va, hit) = import_cached(&mut cache, &mut imp, &a).unwrap();
        assert!(!hit);
        for _ in 0..10 {
            let again = resend(&a);
            assert_ne!(
                std::os::fd::AsRawFd::as_raw_fd(&again.planes[0].fd),
                std::os::fd::AsRawFd::as_raw_fd(&a.planes[0].fd)
            );
            let (v, hit) = import_cached(&mut cache, &mut imp, &again).unwrap();
            assert!(hit);
            assert_eq!(v, va);
        }
        assert_eq!(imp.imports, 1);
        assert_eq!(cache.len(), 1);
        // A different buffer is a different import.
        let b = buf(memfd());
        let (vb, hit) = import_cached(&mut cache, &mut imp, &b).unwrap();
        assert!(!hit);
        assert_ne!(va, vb);
        assert_eq!(imp.imports, 2);
    }

    #[test]
    fn lru_is_bounded_and_destroys_evicted() {
        let mut cache = ImportCache::new(3);
        let mut imp = FakeImporter::default();
        let bufs: Vec<Dmabuf> = (0..5).map(|_| buf(memfd())).collect();
        for b in &bufs[..3] {
            import_cached(&mut cache, &mut imp, b).unwrap();
        }
        // Touch the first so the second is the least recently used.
        assert!(
            import_cached(&mut cache, &mut imp, &resend(&bufs[0]))
                .unwrap()
                .1
        );
        import_cached(&mut cache, &mut imp, &bufs[3]).unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(imp.live.len(), 3);
        assert!(import_cached(&mut cache, &mut imp, &bufs[0]).unwrap().1);
        assert!(
            !import_cached(&mut cache, &mut imp, &bufs[1]).unwrap().1,
            "evicted"
        );
        import_cached(&mut cache, &mut imp, &bufs[4]).unwrap();
        assert_eq!(imp.live.len(), 3);
        for v in cache.drain() {
            imp.destroy(v);
        }
        assert!(imp.live.is_empty(), "every import destroyed exactly once");
    }

    #[test]
    fn changed_layout_replaces_the_import() {
        let mut cache = ImportCache::new(4);
        let mut imp = FakeImporter::default();
        let a = buf(memfd());
        let (v1, _) = import_cached(&mut cache, &mut imp, &a).unwrap();
        let mut smaller = resend(&a);
        smaller.width = 32;
        let (v2, hit) = import_cached(&mut cache, &mut imp, &smaller).unwrap();
        assert!(!hit);
        assert_ne!(v1, v2);
        assert_eq!(cache.len(), 1, "one import per buffer");
        assert_eq!(imp.live.len(), 1, "the old layout's import was destroyed");
        let mut x = resend(&a);
        x.width = 32;
        x.fourcc = Fourcc::ABGR8888;
        assert!(!import_cached(&mut cache, &mut imp, &x).unwrap().1);
        assert_eq!(imp.live.len(), 1);
    }

    #[test]
    fn failures_leave_nothing_behind() {
        let mut cache = ImportCache::new(4);
        let mut imp = FakeImporter {
            fail_next: true,
            ..Default::default()
        };
        let a = buf(memfd());
        assert!(matches!(
            import_cached(&mut cache, &mut imp, &a),
            Err(GpuError::ImportFailed { .. })
        ));
        assert_eq!(cache.len(), 0);
        assert!(imp.live.is_empty());
        // Invalid descriptions never reach the importer.
        let mut bad = resend(&a);
        bad.planes[0].stride = 3;
        assert!(matches!(
            import_cached(&mut cache, &mut imp, &bad),
            Err(GpuError::InvalidDmabuf(_))
        ));
        assert_eq!(imp.imports, 0);
        // And the next good attempt imports normally.
        assert!(!import_cached(&mut cache, &mut imp, &a).unwrap().1);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn identity_reports_size_and_plane_inodes() {
        let a = buf(memfd());
        let id = Identity::of(&a).unwrap();
        assert_eq!(id.size, 64 * 64 * 4);
        let again = Identity::of(&resend(&a)).unwrap();
        assert_eq!(id.key, again.key);
        assert_eq!(id.layout, again.layout);
        let other = Identity::of(&buf(memfd())).unwrap();
        assert_ne!(id.key, other.key);
    }
}
