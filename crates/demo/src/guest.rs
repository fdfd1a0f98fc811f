//! The picture of the project's test guest (`crates/testguest`, the `/init` of a tiny Linux VM).
//!
//! The guest draws this picture into its framebuffer under QEMU, so the same code on the host
//! knows exactly what the guest showed for any frame: tests and benchmarks compare what a
//! SPICE client received with [`GuestScene::render`] of the frame number the picture carries.
//!
//! Layout (any size from 640x480): row 0 is the frame strip (the timestamp strip of
//! [`crate::strip`] carrying the guest's frame number instead of a time), row 1 the input strip
//! carrying the last typed byte as its key and the number of bytes typed (mod 2048) as its x.
//! Below: a desktop with static text on the left, a fixed "video" window on the right whose
//! whole inside changes every frame (moving gradient, bouncing disc, frame counter), and a
//! "typed" box along the bottom echoing the keys typed on the guest's console.
//!
//! The video window carries the frame number too, in a strip of the same kind at its top-left
//! corner (when the window is at least [`STRIP_CELLS`] cells wide): a SPICE client shows
//! stream frames a little later than drawables, so the picture of the video and the picture
//! around it may be of different frames, and each says which.

use scanoutd_types::{Damage, Frame, Rect, BYTES_PER_PIXEL};

use crate::canvas::Canvas;
use crate::strip::{
    self, InputStrip, INPUT_STRIP_MAX_COORD, INPUT_STRIP_Y, STRIPS_HEIGHT, STRIP_CELL, STRIP_CELLS,
};
use crate::{bounce, paint_window, Window, MIN_HEIGHT, MIN_WIDTH, PANEL_COLOR, TITLE_BAR_H};

/// The frame rate the guest animates at unless told otherwise; the animation advances by
/// frame number, so a slower guest shows the same sequence more slowly.
pub const GUEST_FPS: u32 = 30;
/// Characters of typed text the guest keeps and shows.
pub const TYPED_KEEP: usize = 48;
/// Diameter of the disc bouncing inside the video window.
const DISC: i64 = 48;

/// What the guest has read from its keyboard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Typed {
    /// Bytes read so far.
    pub count: u32,
    /// The last byte read (0 before any).
    pub last: u8,
    /// The last [`TYPED_KEEP`] printable characters (others shown as `?`), upper-cased for the
    /// bitmap font.
    pub text: String,
}

impl Typed {
    /// Record one byte read from the console.
    pub fn push(&mut self, byte: u8) {
        self.count = self.count.wrapping_add(1);
        self.last = byte;
        let c = match byte {
            0x20..=0x7E => char::from(byte).to_ascii_uppercase(),
            b'\r' | b'\n' => ' ',
            _ => '?',
        };
        self.text.push(c);
        let excess = self.text.len().saturating_sub(TYPED_KEEP);
        if excess > 0 {
            self.text.drain(..excess);
        }
    }

    fn strip(&self) -> InputStrip {
        InputStrip {
            last_key: u16::from(self.last),
            x: (self.count % (u32::from(INPUT_STRIP_MAX_COORD) + 1)) as u16,
            y: 0,
            button_down: false,
        }
    }
}

/// Where everything is, from the size.
#[derive(Debug, Clone)]
struct GuestLayout {
    width: u32,
    height: u32,
    info: Window,
    /// The video window's frame (title bar and border) and its changing inside.
    video_frame: Window,
    video: Rect,
    typed: Rect,
}

const INFO_TEXT: [&str; 10] = [
    "THIS IS THE SCANOUTD TEST GUEST:",
    "A LINUX KERNEL AND A ONE-PROGRAM",
    "INITRAMFS DRAWING TO /DEV/FB0.",
    "",
    "ROW 0: FRAME NUMBER STRIP.",
    "ROW 1: LAST KEY AND KEY COUNT.",
    "THE VIDEO WINDOW CHANGES EVERY",
    "FRAME; THIS TEXT NEVER CHANGES.",
    "",
    "TYPE: KEYS ARE ECHOED BELOW.",
];

impl GuestLayout {
    fn new(width: u32, height: u32) -> Self {
        let (w, h) = (i64::from(width), i64::from(height));
        let top = 88;
        let typed_h = 40;
        let bottom = h - typed_h - 24;
        let info_w = (w * 2 / 5 - 24).max(200);
        let info = Window {
            x: 16,
            y: top,
            w: info_w,
            h: bottom - top,
            title: "README - TEST GUEST",
            body: 0xF2_F0EA,
            ink: 0x20_2020,
            text_x: 24,
            text_y: top + TITLE_BAR_H + 8,
            line_h: 12,
            lines: INFO_TEXT
                .iter()
                .map(|s| s.chars().take(((info_w - 16) / 6) as usize).collect())
                .collect(),
            patterns: true,
        };
        let vx = 16 + info_w + 16;
        let vw = w - vx - 16;
        let video_frame = Window {
            x: vx,
            y: top,
            w: vw,
            h: bottom - top,
            title: "VIDEO",
            body: 0,
            ink: 0,
            text_x: 0,
            text_y: 0,
            line_h: 10,
            lines: Vec::new(),
            patterns: false,
        };
        let video = Rect::new(
            (vx + 1) as u32,
            (top + TITLE_BAR_H) as u32,
            (vw - 2) as u32,
            (bottom - top - TITLE_BAR_H - 1) as u32,
        );
        let typed = Rect::new(
            16,
            (h - typed_h - 12) as u32,
            (w - 32) as u32,
            typed_h as u32,
        );
        GuestLayout {
            width,
            height,
            info,
            video_frame,
            video,
            typed,
        }
    }

    fn paint_static(&self, c: &mut Canvas<'_>) {
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        let strips = i64::from(STRIPS_HEIGHT);
        c.fill(0, 0, w, strips, PANEL_COLOR);
        c.fill_rows(0, strips, w, h - strips, |y| {
            let k = (y - STRIPS_HEIGHT) * 256 / (self.height - STRIPS_HEIGHT).max(1);
            let mix = |a: u32, b: u32| (a * (256 - k) + b * k) >> 8;
            mix(0x2E, 0x10) << 16 | mix(0x5A, 0x30) << 8 | mix(0x3C, 0x20)
        });
        c.text(16, 44, "SCANOUTD TEST GUEST", 3, 0x0A_1020);
        c.text(15, 43, "SCANOUTD TEST GUEST", 3, 0xFF_FFFF);
        let sub = format!("LINUX FRAMEBUFFER  {}X{}", self.width, self.height);
        c.text(16, 72, &sub, 1, 0xDD_F0E0);
        paint_window(c, &self.info);
        paint_window(c, &self.video_frame);
    }

    fn paint_video(&self, c: &mut Canvas<'_>, frame_no: u32) {
        let v = self.video;
        let (vx, vy, vw, vh) = (
            i64::from(v.x),
            i64::from(v.y),
            i64::from(v.w),
            i64::from(v.h),
        );
        let n = frame_no;
        let (p1, p2, p3) = (n.wrapping_mul(5), n.wrapping_mul(3), n.wrapping_mul(7));
        c.shade(vx, vy, vw, vh, |x, y| {
            let u = x - v.x;
            let w = y - v.y;
            // Triangle waves: smooth gradients that move, like camera footage rather than
            // like a test card with hard edges.
            let tri = |v: u32| {
                if v & 0x100 == 0 {
                    v & 0xFF
                } else {
                    0xFF - (v & 0xFF)
                }
            };
            let r = tri(u / 2 + p1);
            let g = tri(w / 2 + u / 6 + p2);
            let b = 0xFF - tri(u / 3 + w / 3 + p3);
            r << 16 | g << 8 | b
        });
        let t = u64::from(n) * 1000 / u64::from(GUEST_FPS);
        let bx = bounce(t + 900, 260, v.x, (v.x + v.w).saturating_sub(DISC as u32));
        let by = bounce(t + 300, 190, v.y, (v.y + v.h).saturating_sub(DISC as u32));
        c.disc(bx, by, DISC, |_| 0xFF_F0A0);
        if v.w >= STRIP_CELLS * STRIP_CELL && v.h >= 4 * STRIP_CELL {
            strip::draw_cells_at(c, v.x, v.y, &strip::timestamp_cells(u64::from(n)));
        }
        let label = format!("FRAME {n}");
        c.fill(
            vx + 8,
            vy + vh - 28,
            crate::canvas::text_width(&label, 2) + 4,
            18,
            0,
        );
        c.text(vx + 10, vy + vh - 26, &label, 2, 0xFF_FFFF);
    }

    fn paint_typed(&self, c: &mut Canvas<'_>, typed: &Typed) {
        let text = format!("TYPED ({}): {}_", typed.count, typed.text);
        c.text_box(self.typed, &text, true);
    }
}

/// The test guest's picture: a pure function of the size, the frame number and what was typed.
#[derive(Debug, Clone)]
pub struct GuestScene {
    layout: GuestLayout,
    /// What the frame passed to the last render shows (`None` before the first).
    shown: Option<(u32, Typed)>,
    seq: u64,
}

impl GuestScene {
    /// A scene of `width` x `height`; `None` below 640x480 or above 8192 on a side.
    pub fn new(width: u32, height: u32) -> Option<Self> {
        let ok = (MIN_WIDTH..=crate::MAX_DIMENSION).contains(&width)
            && (MIN_HEIGHT..=crate::MAX_DIMENSION).contains(&height);
        ok.then(|| GuestScene {
            layout: GuestLayout::new(width, height),
            shown: None,
            seq: 0,
        })
    }

    pub fn width(&self) -> u32 {
        self.layout.width
    }

    pub fn height(&self) -> u32 {
        self.layout.height
    }

    /// The rectangle whose inside changes every frame.
    pub fn video_rect(&self) -> Rect {
        self.layout.video
    }

    /// Read the frame number from the strip at the video window's top-left corner of a BGRx
    /// picture of this scene's size; `None` if it is unreadable or the window has none.
    pub fn read_video_frame_number(&self, bgrx: &[u8], stride: usize) -> Option<u32> {
        let v = self.layout.video;
        let start = v.y as usize * stride + v.x as usize * BYTES_PER_PIXEL;
        let w = self.layout.width - v.x;
        let h = self.layout.height - v.y;
        strip::read_timestamp_strip(bgrx.get(start..)?, w, h, stride)
    }

    /// Render frame `frame_no` with `typed` into `frame` and return what changed. `frame` must
    /// hold the picture this scene rendered last; any other frame (other size or sequence
    /// number) is repainted whole.
    pub fn render(&mut self, frame: &mut Frame, frame_no: u32, typed: &Typed) -> Damage {
        let (w, h) = (self.layout.width, self.layout.height);
        let row_bytes = w as usize * BYTES_PER_PIXEL;
        let fits = frame.width == w
            && frame.height == h
            && frame.stride >= row_bytes
            && frame.data.len() >= frame.stride * (h as usize - 1) + row_bytes;
        if !fits {
            *frame = Frame::new(w, h);
        }
        let prev = self.shown.take().filter(|_| fits && frame.seq == self.seq);
        self.seq += 1;
        frame.seq = self.seq;

        let stride = frame.stride;
        let bounds = Rect::new(0, 0, w, h);
        let mut c = Canvas::new(&mut frame.data, stride, w, h, bounds);
        let mut damage = Damage::new();
        let typed_changed = prev.as_ref().is_none_or(|(_, t)| t != typed);
        match &prev {
            None => {
                self.layout.paint_static(&mut c);
                damage.add(bounds);
            }
            Some((n, _)) => {
                if *n != frame_no {
                    damage.add(self.layout.video);
                }
                damage.add(strip::timestamp_rect(w, h));
                if typed_changed {
                    damage.add(strip::input_rect(w, h));
                    damage.add(self.layout.typed);
                }
            }
        }
        if prev.as_ref().is_none_or(|(n, _)| *n != frame_no) {
            let old = c.narrow_clip(self.layout.video);
            self.layout.paint_video(&mut c, frame_no);
            c.restore_clip(old);
        }
        if typed_changed {
            self.layout.paint_typed(&mut c, typed);
            strip::draw_cells(&mut c, INPUT_STRIP_Y, &strip::input_cells(&typed.strip()));
        }
        strip::draw_cells(&mut c, 0, &strip::timestamp_cells(u64::from(frame_no)));
        self.shown = Some((frame_no, typed.clone()));
        damage.clamp_to(w, h);
        damage
    }
}

/// The whole picture of frame `frame_no` with `typed`, rendered from scratch (what a test
/// compares a client's picture with). `None` for sizes [`GuestScene::new`] refuses.
pub fn render_guest_frame(width: u32, height: u32, frame_no: u32, typed: &Typed) -> Option<Frame> {
    let mut scene = GuestScene::new(width, height)?;
    let mut frame = Frame::new(width, height);
    scene.render(&mut frame, frame_no, typed);
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Typed {
        let mut t = Typed::default();
        for b in s.bytes() {
            t.push(b);
        }
        t
    }

    #[test]
    fn incremental_renders_equal_fresh_renders() {
        let mut scene = GuestScene::new(800, 600).unwrap();
        let mut frame = Frame::new(800, 600);
        let steps = [
            (0, ""),
            (1, ""),
            (2, "a"),
            (2, "ab"),
            (7, "ab"),
            (7, "ab"),
            (8, "abc\r"),
        ];
        for (n, t) in steps {
            let t = typed(t);
            scene.render(&mut frame, n, &t);
            let fresh = render_guest_frame(800, 600, n, &t).unwrap();
            assert_eq!(frame.data, fresh.data, "frame {n} typed {t:?}");
        }
    }

    #[test]
    fn damage_is_strip_and_video_only_while_nothing_is_typed() {
        let mut scene = GuestScene::new(1024, 768).unwrap();
        let mut frame = Frame::new(1024, 768);
        let d0 = scene.render(&mut frame, 0, &Typed::default());
        assert_eq!(d0.area(), 1024 * 768);
        let d1 = scene.render(&mut frame, 1, &Typed::default());
        let video = scene.video_rect();
        assert!(d1.rects().iter().all(|r| video.contains(r) || r.y == 0));
        assert!(d1.area() <= u64::from(video.w * video.h) + 1024 * 16);
        // The video window is a large part of the screen: a stream, not drawables.
        assert!(video.w >= 400 && video.h >= 400, "{video:?}");
    }

    #[test]
    fn strips_carry_frame_number_and_keys() {
        let t = typed("xyz");
        let f = render_guest_frame(1024, 768, 123_456, &t).unwrap();
        let n = strip::read_timestamp_strip(&f.data, f.width, f.height, f.stride);
        assert_eq!(n, Some(123_456));
        let scene = GuestScene::new(1024, 768).unwrap();
        assert_eq!(
            scene.read_video_frame_number(&f.data, f.stride),
            Some(123_456)
        );
        let s = strip::read_input_strip(&f.data, f.width, f.height, f.stride).unwrap();
        assert_eq!((s.last_key, s.x), (u16::from(b'z'), 3));
    }

    #[test]
    fn every_frame_differs_inside_the_video_window_and_nowhere_else_below_the_strips() {
        let a = render_guest_frame(640, 480, 10, &Typed::default()).unwrap();
        let b = render_guest_frame(640, 480, 11, &Typed::default()).unwrap();
        let scene = GuestScene::new(640, 480).unwrap();
        let v = scene.video_rect();
        let mut inside = 0;
        for y in STRIPS_HEIGHT..480 {
            for x in 0..640 {
                let i = y as usize * a.stride + x as usize * 4;
                if a.data[i..i + 4] != b.data[i..i + 4] {
                    assert!(v.contains(&Rect::new(x, y, 1, 1)), "({x},{y}) changed");
                    inside += 1;
                }
            }
        }
        assert!(inside > (v.w * v.h / 2) as usize);
    }

    #[test]
    fn typed_keeps_the_tail_and_counts_everything() {
        let long: String = std::iter::repeat_n('q', 100).collect();
        let t = typed(&long);
        assert_eq!(t.count, 100);
        assert_eq!(t.text.len(), TYPED_KEEP);
        assert_eq!(typed("a\x01").text, "A?");
        assert!(GuestScene::new(320, 200).is_none());
    }
}
