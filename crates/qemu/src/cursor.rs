//! QEMU's cursor state in the source-neutral form the SPICE server takes.

use std::sync::Arc;

use crate::CursorState;

impl CursorState {
    /// This state as a [`scanoutd_types::CursorState`]:
    ///
    /// * the shape is shared, not copied: QEMU's `CursorDefine` data is already BGRA
    ///   (native-endian ARGB words, converted on big-endian hosts by [`crate::cursor_shape`]),
    ///   top-down, which is what the neutral type holds;
    /// * a shape larger than [`scanoutd_types::MAX_CURSOR_SIDE`] per side (QEMU accepts up
    ///   to [`crate::MAX_CURSOR_SIZE`]) is dropped, so clients show the default arrow;
    /// * with no shape (the guest never defined one: QEMU still sends `MouseSet(0, 0, 0)` at
    ///   registration) the pointer counts as shown, so clients keep the default arrow instead
    ///   of losing their pointer over the VM;
    /// * the position is the hot spot's, in console pixels, as `MouseSet` gives it.
    pub fn to_neutral(&self) -> scanoutd_types::CursorState {
        let shape = self.shape.as_ref().and_then(|s| match s.check() {
            Ok(()) => Some(Arc::clone(s)),
            Err(e) => {
                tracing::debug!("guest cursor not forwarded ({e}); clients show the default arrow");
                None
            }
        });
        scanoutd_types::CursorState {
            visible: self.visible || shape.is_none(),
            shape,
            x: self.x,
            y: self.y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor_shape;

    #[test]
    fn shapes_are_shared_and_bounded_and_a_missing_shape_shows_the_arrow() {
        // QEMU's data: ARGB words, B, G, R, A bytes on this little-endian host.
        let argb: Vec<u8> = (0u32..4)
            .flat_map(|i| (0x8010_2030 + i).to_le_bytes())
            .collect();
        let shape = Arc::new(cursor_shape(2, 2, 1, 1, &argb).unwrap());
        let q = CursorState {
            shape: Some(Arc::clone(&shape)),
            x: -5,
            y: 7,
            visible: true,
            serial: 3,
        };
        let n = q.to_neutral();
        assert!(Arc::ptr_eq(n.shape.as_ref().unwrap(), &shape));
        assert_eq!(n.shape.as_ref().unwrap().pixel(1, 0), Some(0x8010_2031));
        assert_eq!((n.x, n.y, n.visible), (-5, 7, true));

        let hidden = CursorState {
            visible: false,
            ..q.clone()
        };
        assert!(!hidden.to_neutral().visible);

        // No shape: shown (the default arrow), even though QEMU said "off".
        let none = CursorState::default();
        assert!(!none.visible);
        let n = none.to_neutral();
        assert!(n.shape.is_none() && n.visible);

        // 512x512 is fine for QEMU's side but too large to forward.
        let big = cursor_shape(512, 512, 0, 0, &vec![0; 512 * 512 * 4]).unwrap();
        let q = CursorState {
            shape: Some(Arc::new(big)),
            visible: true,
            ..CursorState::default()
        };
        let n = q.to_neutral();
        assert!(n.shape.is_none() && n.visible);
    }
}
