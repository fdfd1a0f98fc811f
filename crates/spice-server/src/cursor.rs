//! What one client's cursor channel was last told, and the messages that bring it to a new
//! [`CursorState`]. Pure: the channel loop in `channels.rs` feeds it states and writes what it
//! returns.
//!
//! The rules follow what spice-gtk 0.42 does with each message:
//! * INIT clears the client's shape cache, sets the shape and hides the pointer when
//!   `visible` is false.
//! * SET replaces the shape and, in client mouse mode, also shows a hidden pointer, so a shape
//!   that changes while the pointer is hidden is held back until it is shown again.
//! * HIDE blanks the pointer; the next MOVE shows it again (with the latest shape).
//! * MOVE carries the hot spot's position. The client draws the pointer there only in server
//!   mouse mode; in client mode its own pointer is the cursor, so positions are only sent to
//!   show the pointer again (as spice-server does).
//! * Shapes are sent with CACHE_ME under a fresh id; a shape seen again is sent FROM_CACHE.
//!   The client's cache is kept to [`CACHE_SLOTS`] shapes: the least recently used one is
//!   dropped with INVAL_ONE first.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use scanoutd_types::{CursorShape, CursorState};
use spice_proto::consts::CURSOR_TYPE_ALPHA;
use spice_proto::{Cursor, CursorHeader, ServerMsg};

use crate::MOUSE_MODE_SERVER;

/// How many shapes a client is asked to keep.
pub(crate) const CACHE_SLOTS: usize = 16;

/// The built-in arrow, for sources that define no shape (and shapes that break the rules).
fn arrow() -> Arc<CursorShape> {
    static ARROW: OnceLock<Arc<CursorShape>> = OnceLock::new();
    Arc::clone(ARROW.get_or_init(|| Arc::new(CursorShape::arrow())))
}

/// A shape's identity for the cache: its pixels (hashed with a per-client random key) and
/// its header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShapeKey {
    hash: u64,
    width: u16,
    height: u16,
    hot_x: u16,
    hot_y: u16,
}

pub(crate) struct CursorTracker {
    hasher: RandomState,
    /// The shape the client has (from INIT or the last SET), held so that `Arc::ptr_eq`
    /// against it is meaningful.
    shape: Arc<CursorShape>,
    key: ShapeKey,
    visible: bool,
    pos: (i16, i16),
    mode: u16,
    /// Shapes in the client's cache, least recently used first.
    cache: VecDeque<(ShapeKey, u64)>,
    next_unique: u64,
}

impl CursorTracker {
    /// A tracker and the messages that start the channel: INIT (with the current shape, or
    /// the default arrow) and, in server mouse mode, the position.
    pub(crate) fn start(state: &CursorState, mode: u16) -> (Self, Vec<ServerMsg>) {
        let hasher = RandomState::new();
        let shape = effective_shape(state);
        let key = key_of(&hasher, &shape);
        let mut t = CursorTracker {
            hasher,
            shape: Arc::clone(&shape),
            key,
            visible: state.visible,
            pos: position(state),
            mode,
            cache: VecDeque::with_capacity(CACHE_SLOTS),
            next_unique: 1,
        };
        let mut out = Vec::new();
        let cursor = t.cursor_for(&shape, key, &mut out);
        out.push(ServerMsg::CursorInit {
            position: t.pos,
            trail_length: 0,
            trail_frequency: 0,
            visible: state.visible,
            cursor,
        });
        if state.visible && mode == MOUSE_MODE_SERVER {
            out.push(ServerMsg::CursorMove(t.pos.0, t.pos.1));
        }
        (t, out)
    }

    /// The messages that bring the client from what it was told to `state` (often none).
    pub(crate) fn update(&mut self, state: &CursorState, mode: u16) -> Vec<ServerMsg> {
        let mut out = Vec::new();
        let mode_changed = mode != self.mode;
        self.mode = mode;
        if !state.visible {
            if self.visible {
                out.push(ServerMsg::CursorHide);
                self.visible = false;
            }
            // A new shape waits until the pointer is shown (SET would show it).
            return out;
        }
        let pos = position(state);
        let shape = effective_shape(state);
        if !Arc::ptr_eq(&shape, &self.shape) {
            let key = key_of(&self.hasher, &shape);
            if key != self.key {
                let cursor = self.cursor_for(&shape, key, &mut out);
                out.push(ServerMsg::CursorSet {
                    position: pos,
                    visible: true,
                    cursor,
                });
                self.key = key;
            }
            self.shape = shape;
        }
        let was_hidden = !self.visible;
        let server_mode = mode == MOUSE_MODE_SERVER;
        if was_hidden || (server_mode && (pos != self.pos || mode_changed)) {
            out.push(ServerMsg::CursorMove(pos.0, pos.1));
        }
        self.visible = true;
        self.pos = pos;
        out
    }

    /// The Cursor to send for `shape`: FROM_CACHE when the client has it, else the pixels
    /// with CACHE_ME (pushing INVAL_ONE for the shape it evicts into `out`).
    fn cursor_for(
        &mut self,
        shape: &CursorShape,
        key: ShapeKey,
        out: &mut Vec<ServerMsg>,
    ) -> Cursor {
        if let Some(i) = self.cache.iter().position(|(k, _)| *k == key) {
            if let Some(hit) = self.cache.remove(i) {
                self.cache.push_back(hit);
                return Cursor::from_cache(header(hit.1, shape));
            }
        }
        if self.cache.len() >= CACHE_SLOTS {
            if let Some((_, old)) = self.cache.pop_front() {
                out.push(ServerMsg::CursorInvalOne(old));
            }
        }
        let unique = self.next_unique;
        self.next_unique += 1;
        self.cache.push_back((key, unique));
        let h = header(unique, shape);
        Cursor::alpha(
            unique,
            h.width,
            h.height,
            h.hot_x,
            h.hot_y,
            shape.pixels.clone(),
        )
        .cache_me()
    }
}

/// The source's shape when it keeps the rules, else the default arrow.
fn effective_shape(state: &CursorState) -> Arc<CursorShape> {
    match &state.shape {
        Some(s) if s.check().is_ok() => Arc::clone(s),
        Some(s) => {
            tracing::debug!(
                width = s.width,
                height = s.height,
                "cursor shape breaks the rules; showing the default arrow"
            );
            arrow()
        }
        None => arrow(),
    }
}

fn header(unique: u64, shape: &CursorShape) -> CursorHeader {
    CursorHeader {
        unique,
        ty: CURSOR_TYPE_ALPHA,
        width: shape.width,
        height: shape.height,
        hot_x: shape.hot_x.min(shape.width.saturating_sub(1)),
        hot_y: shape.hot_y.min(shape.height.saturating_sub(1)),
    }
}

fn key_of(hasher: &RandomState, shape: &CursorShape) -> ShapeKey {
    ShapeKey {
        hash: hasher.hash_one(&shape.pixels),
        width: shape.width,
        height: shape.height,
        hot_x: shape.hot_x,
        hot_y: shape.hot_y,
    }
}

fn position(state: &CursorState) -> (i16, i16) {
    let clamp = |v: i32| v.clamp(i16::MIN.into(), i16::MAX.into()) as i16;
    (clamp(state.x), clamp(state.y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MOUSE_MODE_CLIENT;
    use spice_proto::consts::{CURSOR_FLAG_CACHE_ME, CURSOR_FLAG_FROM_CACHE};

    fn shape(seed: u8) -> Arc<CursorShape> {
        let px = (0..8 * 8 * 4)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect();
        Arc::new(CursorShape::new(8, 8, 1, 2, px).unwrap())
    }

    fn state(shape: Option<Arc<CursorShape>>, x: i32, y: i32, visible: bool) -> CursorState {
        CursorState {
            shape,
            x,
            y,
            visible,
        }
    }

    /// (flags, unique, width) of a SET's cursor.
    fn set_of(m: &ServerMsg) -> (u16, u64, u16) {
        match m {
            ServerMsg::CursorSet { cursor, .. } => {
                let h = cursor.header.unwrap();
                (cursor.flags, h.unique, h.width)
            }
            other => panic!("expected SET, got {other:?}"),
        }
    }

    #[test]
    fn init_uses_the_arrow_when_there_is_no_shape() {
        let (_, out) = CursorTracker::start(&CursorState::default(), MOUSE_MODE_CLIENT);
        let [ServerMsg::CursorInit {
            visible, cursor, ..
        }] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert!(*visible);
        let h = cursor.header.unwrap();
        assert_eq!((h.width, h.height, h.unique), (32, 32, 1));
        assert_eq!(cursor.flags, CURSOR_FLAG_CACHE_ME);
        assert_eq!(cursor.data, CursorShape::arrow().pixels);
    }

    #[test]
    fn init_in_server_mode_also_places_the_pointer() {
        let (_, out) = CursorTracker::start(&state(Some(shape(3)), 5, 6, true), MOUSE_MODE_SERVER);
        assert!(matches!(
            out[0],
            ServerMsg::CursorInit {
                position: (5, 6),
                ..
            }
        ));
        assert_eq!(out[1], ServerMsg::CursorMove(5, 6));
        assert_eq!(out.len(), 2);
        let (_, out) = CursorTracker::start(&state(Some(shape(3)), 5, 6, false), MOUSE_MODE_SERVER);
        assert!(matches!(
            out[..],
            [ServerMsg::CursorInit { visible: false, .. }]
        ));
    }

    #[test]
    fn client_mode_sends_shapes_and_visibility_not_positions() {
        let a = shape(3);
        let (mut t, _) =
            CursorTracker::start(&state(Some(a.clone()), 0, 0, true), MOUSE_MODE_CLIENT);
        assert!(t
            .update(&state(Some(a.clone()), 10, 10, true), MOUSE_MODE_CLIENT)
            .is_empty());
        // An equal shape in a new allocation is not sent again.
        let a2 = Arc::new((*a).clone());
        assert!(t
            .update(&state(Some(a2), 11, 10, true), MOUSE_MODE_CLIENT)
            .is_empty());
        let b = shape(5);
        let out = t.update(&state(Some(b.clone()), 12, 10, true), MOUSE_MODE_CLIENT);
        assert_eq!(out.len(), 1);
        assert_eq!(set_of(&out[0]), (CURSOR_FLAG_CACHE_ME, 2, 8));
        if let ServerMsg::CursorSet {
            cursor,
            position,
            visible,
        } = &out[0]
        {
            assert_eq!(cursor.data, b.pixels);
            assert_eq!(*position, (12, 10));
            assert!(*visible);
            assert_eq!(
                (cursor.header.unwrap().hot_x, cursor.header.unwrap().hot_y),
                (1, 2)
            );
        }
        // Hide, then show: HIDE once, then MOVE to show it again.
        let out = t.update(&state(Some(b.clone()), 12, 10, false), MOUSE_MODE_CLIENT);
        assert_eq!(out, vec![ServerMsg::CursorHide]);
        assert!(t
            .update(&state(Some(b.clone()), 13, 10, false), MOUSE_MODE_CLIENT)
            .is_empty());
        let out = t.update(&state(Some(b), 14, 9, true), MOUSE_MODE_CLIENT);
        assert_eq!(out, vec![ServerMsg::CursorMove(14, 9)]);
    }

    #[test]
    fn a_shape_changed_while_hidden_is_sent_when_shown() {
        let (mut t, _) =
            CursorTracker::start(&state(Some(shape(3)), 0, 0, true), MOUSE_MODE_CLIENT);
        assert_eq!(
            t.update(&state(Some(shape(3)), 0, 0, false), MOUSE_MODE_CLIENT),
            vec![ServerMsg::CursorHide]
        );
        assert!(t
            .update(&state(Some(shape(7)), 0, 0, false), MOUSE_MODE_CLIENT)
            .is_empty());
        let out = t.update(&state(Some(shape(7)), 4, 4, true), MOUSE_MODE_CLIENT);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(set_of(&out[0]).0, CURSOR_FLAG_CACHE_ME);
        assert_eq!(out[1], ServerMsg::CursorMove(4, 4));
    }

    #[test]
    fn server_mode_sends_positions_clamped() {
        let a = shape(3);
        let (mut t, _) =
            CursorTracker::start(&state(Some(a.clone()), 0, 0, true), MOUSE_MODE_CLIENT);
        // Switching to server mode places the pointer even when it did not move.
        assert_eq!(
            t.update(&state(Some(a.clone()), 0, 0, true), MOUSE_MODE_SERVER),
            vec![ServerMsg::CursorMove(0, 0)]
        );
        assert!(t
            .update(&state(Some(a.clone()), 0, 0, true), MOUSE_MODE_SERVER)
            .is_empty());
        assert_eq!(
            t.update(
                &state(Some(a.clone()), 100_000, -100_000, true),
                MOUSE_MODE_SERVER
            ),
            vec![ServerMsg::CursorMove(i16::MAX, i16::MIN)]
        );
        // A new shape and a new position: SET, then MOVE (the client ignores SET's position).
        let out = t.update(&state(Some(shape(9)), 7, 8, true), MOUSE_MODE_SERVER);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], ServerMsg::CursorMove(7, 8));
    }

    #[test]
    fn shapes_seen_again_come_from_the_cache_which_stays_bounded() {
        let (mut t, _) =
            CursorTracker::start(&state(Some(shape(1)), 0, 0, true), MOUSE_MODE_CLIENT);
        // shape(1) has id 1; back and forth between two shapes uses the cache.
        let out = t.update(&state(Some(shape(2)), 0, 0, true), MOUSE_MODE_CLIENT);
        assert_eq!(set_of(&out[0]), (CURSOR_FLAG_CACHE_ME, 2, 8));
        let out = t.update(&state(Some(shape(1)), 0, 0, true), MOUSE_MODE_CLIENT);
        assert_eq!(set_of(&out[0]), (CURSOR_FLAG_FROM_CACHE, 1, 8));
        if let ServerMsg::CursorSet { cursor, .. } = &out[0] {
            assert!(cursor.data.is_empty());
        }
        // Fill the cache: ids 3.. for seeds 3..; the least recently used (id 2) goes first.
        let mut invals = Vec::new();
        for seed in 3..3 + CACHE_SLOTS as u8 {
            for m in t.update(&state(Some(shape(seed)), 0, 0, true), MOUSE_MODE_CLIENT) {
                if let ServerMsg::CursorInvalOne(id) = m {
                    invals.push(id);
                }
            }
        }
        assert_eq!(t.cache.len(), CACHE_SLOTS);
        assert_eq!(invals, vec![2, 1]);
        // Evicted shape 2 is sent in full again under a new id.
        let out = t.update(&state(Some(shape(2)), 0, 0, true), MOUSE_MODE_CLIENT);
        assert!(matches!(out[0], ServerMsg::CursorInvalOne(_)));
        assert_eq!(set_of(&out[1]).0, CURSOR_FLAG_CACHE_ME);
        assert!(set_of(&out[1]).1 > CACHE_SLOTS as u64);
    }

    #[test]
    fn a_shape_that_breaks_the_rules_shows_the_arrow() {
        let mut bad = (*shape(3)).clone();
        bad.pixels.truncate(10);
        let (_, out) =
            CursorTracker::start(&state(Some(Arc::new(bad)), 0, 0, true), MOUSE_MODE_CLIENT);
        let ServerMsg::CursorInit { cursor, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(cursor.header.unwrap().width, 32);
    }
}
