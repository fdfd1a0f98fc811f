//! The built-in demo display source: what scanoutd streams when no VM is attached.
//!
//! [`DemoSource`] renders a deterministic animated test picture on the CPU: a static "desktop"
//! (gradient background, fake windows, fine bitmap-font text and 1-pixel patterns that show
//! any codec blur), a bouncing "video" block whose colour gradient changes every frame, a
//! smaller bouncing disc, a crosshair at the pointer, a `KEY xx` status line, and the two
//! machine-readable strips of [`strip`] (capture timestamp and input state) in the top rows.
//!
//! The picture is a pure function of `(config, t_ms, now_unix_ms, input state)`. Each call to
//! [`DemoSource::render`] repaints only the rectangles that changed and returns them as damage.
#![forbid(unsafe_code)]

mod canvas;
mod font;
pub mod guest;
pub mod strip;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use scanoutd_types::{Damage, Frame, InputEvent, InputSink, MouseButton, Rect, BYTES_PER_PIXEL};

use canvas::{text_width, Canvas};
pub use strip::{
    draw_timestamp_strip, read_input_strip, read_timestamp_strip, InputStrip, INPUT_STRIP_CELLS,
    INPUT_STRIP_MAX_COORD, INPUT_STRIP_Y, STRIPS_HEIGHT, STRIP_CELL, STRIP_CELLS,
};

/// Smallest and largest accepted surface sizes.
pub const MIN_WIDTH: u32 = 640;
pub const MIN_HEIGHT: u32 = 480;
pub const MAX_DIMENSION: u32 = 8192;

/// Size of the bouncing "video" block.
pub const VIDEO_W: u32 = 240;
pub const VIDEO_H: u32 = 180;
/// Diameter of the bouncing disc.
pub const BALL_SIZE: u32 = 64;
/// The crosshair is drawn within this many pixels of the pointer (its box is 2r+1 square).
const CROSS_R: i64 = 11;

/// Which picture the demo shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scene {
    /// Animated: moving shapes, live timestamp strip, input feedback.
    #[default]
    Motion,
    /// One picture, painted once: later renders change nothing and return empty damage.
    Still,
}

impl FromStr for Scene {
    type Err = DemoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("motion") {
            Ok(Scene::Motion)
        } else if s.eq_ignore_ascii_case("still") {
            Ok(Scene::Still)
        } else {
            Err(DemoError::UnknownScene(s.to_owned()))
        }
    }
}

impl fmt::Display for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scene::Motion => "motion",
            Scene::Still => "still",
        })
    }
}

/// Errors from this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoError {
    /// The size is odd, below 640x480 or above 8192 on a side.
    InvalidSize { width: u32, height: u32 },
    /// Not `motion` or `still`.
    UnknownScene(String),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::InvalidSize { width, height } => write!(
                f,
                "invalid demo size {width}x{height}: width and height must be even, \
                 at least {MIN_WIDTH}x{MIN_HEIGHT} and at most {MAX_DIMENSION} each"
            ),
            DemoError::UnknownScene(s) => write!(
                f,
                "unknown demo scene {s:?} (expected \"motion\" or \"still\")"
            ),
        }
    }
}

impl std::error::Error for DemoError {}

/// Size and scene of a demo source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DemoConfig {
    pub width: u32,
    pub height: u32,
    pub scene: Scene,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            width: 1280,
            height: 720,
            scene: Scene::Motion,
        }
    }
}

/// The input state the demo shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct InputState {
    last_key: u16,
    x: u32,
    y: u32,
    /// One bit per [`MouseButton`] held down.
    buttons: u8,
    /// Presses of the pause key ([`PAUSE_KEY`]); the animation is paused while it is odd.
    pause_presses: u32,
}

impl InputState {
    fn strip(&self) -> InputStrip {
        let clamp = |v: u32| v.min(u32::from(INPUT_STRIP_MAX_COORD)) as u16;
        InputStrip {
            last_key: self.last_key,
            x: clamp(self.x),
            y: clamp(self.y),
            button_down: self.buttons != 0,
        }
    }
}

/// The sink handed to the network side: records the latest input state under a short lock.
#[derive(Debug)]
struct DemoInput {
    width: u32,
    height: u32,
    state: Mutex<InputState>,
}

impl DemoInput {
    fn snapshot(&self) -> InputState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn button_bit(b: MouseButton) -> u8 {
    1 << match b {
        MouseButton::Left => 0,
        MouseButton::Middle => 1,
        MouseButton::Right => 2,
        MouseButton::WheelUp => 3,
        MouseButton::WheelDown => 4,
        MouseButton::Side => 5,
        MouseButton::Extra => 6,
    }
}

impl InputSink for DemoInput {
    fn input(&self, event: InputEvent) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            InputEvent::Key {
                scancode,
                pressed: true,
            } => {
                s.last_key = scancode;
                if scancode == PAUSE_KEY {
                    s.pause_presses = s.pause_presses.wrapping_add(1);
                }
            }
            InputEvent::Key { pressed: false, .. } | InputEvent::KeyModifiers(_) => {}
            InputEvent::MouseMove { x, y, .. } => {
                s.x = x.min(self.width - 1);
                s.y = y.min(self.height - 1);
            }
            InputEvent::MouseMotion { dx, dy } => {
                let mv = |v: u32, d: i32, size: u32| {
                    (i64::from(v) + i64::from(d)).clamp(0, i64::from(size) - 1) as u32
                };
                s.x = mv(s.x, dx, self.width);
                s.y = mv(s.y, dy, self.height);
            }
            InputEvent::Button { button, pressed } => {
                if pressed {
                    s.buttons |= button_bit(button);
                } else {
                    s.buttons &= !button_bit(button);
                }
            }
        }
    }
}

/// Everything the picture depends on besides the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SceneState {
    t_ms: u64,
    stamp_ms: u64,
    input: InputState,
}

/// A fake window of the static desktop.
#[derive(Debug, Clone)]
struct Window {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
    title: &'static str,
    body: u32,
    ink: u32,
    text_x: i64,
    text_y: i64,
    line_h: i64,
    lines: Vec<String>,
    /// Below the text: 1-pixel test patterns and colour bars (the README window).
    patterns: bool,
}

const TITLE_BAR_H: i64 = 18;
const PANEL_COLOR: u32 = 0x20_2428;

/// Placement of everything, computed once from the size.
#[derive(Debug, Clone)]
struct Layout {
    width: u32,
    height: u32,
    subtitle: String,
    windows: Vec<Window>,
    status: Rect,
}

const TERMINAL_TEXT: [&str; 12] = [
    "$ SCANOUTD --SOURCE DEMO --LISTEN 0.0.0.0:5900",
    "[ OK ] SPICE SERVER READY, WAITING FOR CLIENTS",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG. 0123456789",
    "LOREM IPSUM DOLOR SIT AMET, CONSECTETUR ADIPISCING ELIT, SED DO",
    "EIUSMOD TEMPOR INCIDIDUNT UT LABORE ET DOLORE MAGNA ALIQUA.",
    "UT ENIM AD MINIM VENIAM, QUIS NOSTRUD EXERCITATION ULLAMCO",
    "LABORIS NISI UT ALIQUIP EX EA COMMODO CONSEQUAT. (#42)",
    "DUIS AUTE IRURE DOLOR IN REPREHENDERIT IN VOLUPTATE VELIT ESSE",
    "CILLUM DOLORE EU FUGIAT NULLA PARIATUR: 1+1=2, 50% OFF!",
    "EXCEPTEUR SINT OCCAECAT CUPIDATAT NON PROIDENT, SUNT IN CULPA",
    "QUI OFFICIA DESERUNT MOLLIT ANIM ID EST LABORUM <EOF>",
    "$ _",
];

const README_TEXT: [&str; 6] = [
    "THIS IS THE SCANOUTD BUILT-IN DEMO PICTURE.",
    "ROW 0: CAPTURE TIME STRIP (UNIX MS MOD 2^32).",
    "ROW 1: INPUT STRIP (KEY, POINTER X/Y, BUTTON).",
    "FINE TEXT AND 1-PIXEL PATTERNS SHOW CODEC BLUR;",
    "THE VIDEO BLOCK CHANGES EVERY FRAME.",
    "MOVE THE POINTER, PRESS KEYS: SEE BELOW LEFT.",
];

impl Layout {
    fn new(width: u32, height: u32, scene: Scene) -> Self {
        let (w, h) = (i64::from(width), i64::from(height));
        let col_w = w / 2 - 24;
        let fit_lines =
            |win_w: i64, win_h: i64, line_h: i64, src: &[&str], numbered: bool| -> Vec<String> {
                let max_chars = ((win_w - 12) / 6).max(0) as usize;
                let count = ((win_h - TITLE_BAR_H - 12) / line_h).max(0) as usize;
                (0..count)
                    .map(|i| {
                        let text = src[i % src.len()];
                        let line = if numbered {
                            format!("{:03} {text}", i + 1)
                        } else {
                            text.to_owned()
                        };
                        line.chars().take(max_chars).collect()
                    })
                    .collect()
            };

        let (ax, ay, ah) = (16, 88, h - 88 - 56);
        let terminal = Window {
            x: ax,
            y: ay,
            w: col_w,
            h: ah,
            title: "TERMINAL - SCANOUTD",
            body: 0x10_1410,
            ink: 0x7C_F08C,
            text_x: ax + 6,
            text_y: ay + TITLE_BAR_H + 6,
            line_h: 10,
            lines: fit_lines(col_w, ah, 10, &TERMINAL_TEXT, true),
            patterns: false,
        };
        let (bx, by) = (w / 2 + 8, h / 3 + 40);
        let bh = h - by - 56;
        let readme = Window {
            x: bx,
            y: by,
            w: col_w,
            h: bh,
            title: "README.TXT",
            body: 0xF2_F0EA,
            ink: 0x20_2020,
            text_x: bx + 8,
            text_y: by + TITLE_BAR_H + 8,
            line_h: 11,
            lines: README_TEXT
                .iter()
                .map(|s| s.chars().take(((col_w - 16) / 6) as usize).collect())
                .collect(),
            patterns: true,
        };
        let status = Rect::new(16, height - 44, (width - 32).min(420), 28);
        Layout {
            width,
            height,
            subtitle: format!(
                "BUILT-IN TEST PICTURE  {width}X{height}  SCENE {}",
                scene.to_string().to_uppercase()
            ),
            windows: vec![terminal, readme],
            status,
        }
    }

    fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Everything below the strips.
    fn desktop(&self) -> Rect {
        Rect::new(0, STRIPS_HEIGHT, self.width, self.height - STRIPS_HEIGHT)
    }

    /// Top-left of the video block at `t_ms`.
    fn video_pos(&self, t_ms: u64) -> (i64, i64) {
        (
            bounce(t_ms, 230, 0, self.width - VIDEO_W),
            bounce(t_ms + 2_100, 150, STRIPS_HEIGHT, self.height - VIDEO_H),
        )
    }

    /// Top-left of the disc at `t_ms`.
    fn ball_pos(&self, t_ms: u64) -> (i64, i64) {
        (
            bounce(t_ms + 1_300, 410, 0, self.width - BALL_SIZE),
            bounce(t_ms + 700, 330, STRIPS_HEIGHT, self.height - BALL_SIZE),
        )
    }

    fn video_rect(&self, t_ms: u64) -> Rect {
        let (x, y) = self.video_pos(t_ms);
        Rect::new(x as u32, y as u32, VIDEO_W, VIDEO_H)
    }

    fn ball_rect(&self, t_ms: u64) -> Rect {
        let (x, y) = self.ball_pos(t_ms);
        Rect::new(x as u32, y as u32, BALL_SIZE, BALL_SIZE)
    }

    /// The crosshair's box for a pointer position (clipped to the desktop; may be empty).
    fn cross_rect(&self, input: &InputState) -> Rect {
        let (x0, y0) = (i64::from(input.x) - CROSS_R, i64::from(input.y) - CROSS_R);
        let (x1, y1) = (x0 + 2 * CROSS_R + 1, y0 + 2 * CROSS_R + 1);
        let (x0, y0) = (x0.max(0), y0.max(0));
        if x1 <= x0 || y1 <= y0 {
            return Rect::default();
        }
        Rect::new(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32)
            .intersect(&self.desktop())
            .unwrap_or_default()
    }

    /// Paint the whole picture for `st`, restricted to `clip`.
    fn paint(&self, c: &mut Canvas<'_>, clip: Rect, st: &SceneState) {
        let old = c.narrow_clip(clip);
        self.paint_desktop(c);
        self.paint_status(c, &st.input);
        self.paint_video(c, st.t_ms);
        self.paint_ball(c, st.t_ms);
        let inner = c.narrow_clip(self.desktop());
        paint_crosshair(c, &st.input);
        c.restore_clip(inner);
        strip::draw_cells(c, 0, &strip::timestamp_cells(st.stamp_ms));
        strip::draw_cells(c, INPUT_STRIP_Y, &strip::input_cells(&st.input.strip()));
        c.restore_clip(old);
    }

    fn paint_desktop(&self, c: &mut Canvas<'_>) {
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        // Top panel behind the strips, then a vertical gradient.
        let strips = i64::from(STRIPS_HEIGHT);
        c.fill(0, 0, w, strips, PANEL_COLOR);
        let span = (h - strips).max(1) as u32;
        c.fill_rows(0, strips, w, h - strips, |y| {
            let k = (y - STRIPS_HEIGHT) * 256 / span; // 0..=255
            let mix = |a: u32, b: u32| (a * (256 - k) + b * k) >> 8;
            mix(0x3A, 0x14) << 16 | mix(0x6E, 0x28) << 8 | mix(0xA5, 0x50)
        });
        c.text(16, 44, "SCANOUTD DEMO", 3, 0x0A_1020);
        c.text(15, 43, "SCANOUTD DEMO", 3, 0xFF_FFFF);
        c.text(16, 72, &self.subtitle, 1, 0xDD_E6F0);
        for win in &self.windows {
            paint_window(c, win);
        }
    }

    fn paint_status(&self, c: &mut Canvas<'_>, input: &InputState) {
        let key = if input.last_key == 0 {
            "--".to_owned()
        } else {
            format!("{:02X}", input.last_key)
        };
        let btn = if input.buttons != 0 { "DOWN" } else { "UP" };
        let text = format!("KEY {key}  PTR {},{}  BTN {btn}", input.x, input.y);
        c.text_box(self.status, &text, false);
    }

    fn paint_video(&self, c: &mut Canvas<'_>, t_ms: u64) {
        let (vx, vy) = self.video_pos(t_ms);
        let (w, h) = (i64::from(VIDEO_W), i64::from(VIDEO_H));
        let (p1, p2, p3) = ((t_ms / 4) as u32, (t_ms / 7) as u32, (t_ms / 3) as u32);
        c.shade(vx, vy, w, h, |x, y| {
            let u = x - vx as u32;
            let v = y - vy as u32;
            let r = (u + p1) & 0xFF;
            let g = (v + v / 3 + p2) & 0xFF;
            let b = 0xFF - ((u / 2 + v / 2 + p3) & 0xFF);
            r << 16 | g << 8 | b
        });
        c.outline(vx, vy, w, h, 0xFF_FFFF);
        c.outline(vx + 1, vy + 1, w - 2, h - 2, 0x00_0000);
        c.text(vx + 11, vy + 11, "VIDEO", 2, 0x00_0000);
        c.text(vx + 10, vy + 10, "VIDEO", 2, 0xFF_FFFF);
        let clock = format!("T {}.{:03}", t_ms / 1000, t_ms % 1000);
        let tw = text_width(&clock, 2);
        c.fill(vx + 8, vy + h - 28, tw + 4, 18, 0x00_0000);
        c.text(vx + 10, vy + h - 26, &clock, 2, 0xFF_FFFF);
    }

    fn paint_ball(&self, c: &mut Canvas<'_>, t_ms: u64) {
        let (bx, by) = self.ball_pos(t_ms);
        let d = i64::from(BALL_SIZE);
        c.disc(
            bx,
            by,
            d,
            |row| if row < d / 3 { 0xFF_B060 } else { 0xF0_7818 },
        );
    }
}

fn paint_window(c: &mut Canvas<'_>, win: &Window) {
    let (x, y, w, h) = (win.x, win.y, win.w, win.h);
    if c.clipped(x, y, w + 4, h + 4).is_none() {
        return;
    }
    c.fill(x + 4, y + 4, w, h, 0x0E_1A2C); // drop shadow
    c.fill(x, y, w, h, 0x0C_0C10); // border
    c.fill(x + 1, y + 1, w - 2, TITLE_BAR_H - 1, 0x2D_5A9E);
    c.text(x + 7, y + 6, win.title, 1, 0xFF_FFFF);
    for (i, color) in [0xE0_5050u32, 0xE0_C040, 0x50_C060].iter().enumerate() {
        c.fill(x + w - 16 - 14 * i as i64, y + 4, 10, 10, *color);
    }
    c.fill(x + 1, y + TITLE_BAR_H, w - 2, h - TITLE_BAR_H - 1, win.body);
    let body_bottom = y + h - 1;
    let old = c.narrow_clip(Rect::new(
        (x + 1) as u32,
        (y + TITLE_BAR_H) as u32,
        (w - 2).max(0) as u32,
        (h - TITLE_BAR_H - 1).max(0) as u32,
    ));
    let mut ty = win.text_y;
    for line in &win.lines {
        c.text(win.text_x, ty, line, 1, win.ink);
        ty += win.line_h;
    }
    if win.patterns {
        let px = win.text_x;
        let py = ty + 6;
        let (pw, ph) = (96, 32);
        // Horizontal 1-px lines, a 1-px checkerboard, vertical 1-px lines.
        c.shade(
            px,
            py,
            pw,
            ph,
            |_, yy| if yy & 1 == 0 { 0 } else { 0xFF_FFFF },
        );
        c.shade(px + 104, py, pw, ph, |xx, yy| {
            if (xx ^ yy) & 1 == 0 {
                0
            } else {
                0xFF_FFFF
            }
        });
        c.shade(px + 208, py, pw, ph, |xx, _| {
            if xx & 1 == 0 {
                0
            } else {
                0xFF_FFFF
            }
        });
        // Colour bars across the window.
        const BARS: [u32; 8] = [
            0xC0_C0C0, 0xC0_C000, 0x00_C0C0, 0x00_C000, 0xC0_00C0, 0xC0_0000, 0x00_00C0, 0x10_1010,
        ];
        let by = py + ph + 8;
        let bw = ((w - 16) / 8).max(1);
        let bh = (body_bottom - 8 - by).min(24);
        for (i, color) in BARS.iter().enumerate() {
            c.fill(px + i as i64 * bw, by, bw, bh, *color);
        }
    }
    c.restore_clip(old);
}

fn paint_crosshair(c: &mut Canvas<'_>, input: &InputState) {
    let (x, y) = (i64::from(input.x), i64::from(input.y));
    let r = CROSS_R;
    c.fill(x - r, y - 1, 2 * r + 1, 3, 0x00_0000);
    c.fill(x - 1, y - r, 3, 2 * r + 1, 0x00_0000);
    c.fill(x - r + 1, y, 2 * r - 1, 1, 0xFF_FFFF);
    c.fill(x, y - r + 1, 1, 2 * r - 1, 0xFF_FFFF);
    if input.buttons != 0 {
        c.fill(x - 3, y - 3, 7, 7, 0x00_0000);
        c.fill(x - 2, y - 2, 5, 5, 0xFF_2020);
    }
}

/// Position along `lo..=hi` at `t_ms` of a point moving at `px_per_s`, bouncing off both ends.
fn bounce(t_ms: u64, px_per_s: u64, lo: u32, hi: u32) -> i64 {
    let range = u128::from(hi.saturating_sub(lo));
    if range == 0 {
        return i64::from(lo);
    }
    let p = u128::from(t_ms) * u128::from(px_per_s) / 1000 % (2 * range);
    let off = if p <= range { p } else { 2 * range - p };
    i64::from(lo) + off as i64
}

/// The key that pauses and resumes the animation (set-1 scancode of `P`). While paused only
/// the timestamp strip and the input overlay change, like an idle desktop with a clock.
pub const PAUSE_KEY: u16 = 0x19;

/// The demo display source. See the crate documentation.
#[derive(Debug)]
pub struct DemoSource {
    config: DemoConfig,
    /// Animation time spent paused so far, and the render time the current pause began.
    paused_total_ms: u64,
    paused_since: Option<u64>,
    layout: Layout,
    input: Arc<DemoInput>,
    /// Sequence number of the last frame produced (0 before the first).
    seq: u64,
    /// What the last frame produced shows.
    shown: Option<SceneState>,
}

impl DemoSource {
    /// A demo source of the configured size. Errors unless both sides are even, at least
    /// 640x480 and at most 8192.
    pub fn new(cfg: DemoConfig) -> Result<Self, DemoError> {
        let (w, h) = (cfg.width, cfg.height);
        let ok = (MIN_WIDTH..=MAX_DIMENSION).contains(&w)
            && (MIN_HEIGHT..=MAX_DIMENSION).contains(&h)
            && w % 2 == 0
            && h % 2 == 0;
        if !ok {
            return Err(DemoError::InvalidSize {
                width: w,
                height: h,
            });
        }
        Ok(DemoSource {
            config: cfg,
            layout: Layout::new(w, h, cfg.scene),
            input: Arc::new(DemoInput {
                width: w,
                height: h,
                state: Mutex::new(InputState::default()),
            }),
            seq: 0,
            shown: None,
            paused_total_ms: 0,
            paused_since: None,
        })
    }

    pub fn config(&self) -> DemoConfig {
        self.config
    }

    /// A sink for client input; events are recorded (latest state only, under a short lock)
    /// and shown by the next [`render`](Self::render) in the motion scene.
    pub fn input_sink(&self) -> Arc<dyn InputSink> {
        self.input.clone()
    }

    /// Render the picture for animation time `t_ms` (milliseconds since the source started)
    /// captured at `now_unix_ms` into `frame`, and return the rectangles that changed.
    ///
    /// `frame` must hold the picture this source produced last (or be a fresh black
    /// `Frame::new(width, height)` the first time). A frame that is not recognisably the last
    /// one produced (its size or `seq` differs) is repainted entirely, with full damage; one
    /// of the wrong size is replaced by a new frame of the configured size first.
    ///
    /// Sets `frame.capture_ms = now_unix_ms` and `frame.seq` to one more than the previous
    /// frame's. In the still scene every render after the first returns empty damage and
    /// leaves the pixels untouched.
    pub fn render(&mut self, frame: &mut Frame, t_ms: u64, now_unix_ms: u64) -> Damage {
        let (w, h) = (self.config.width, self.config.height);
        let row_bytes = w as usize * BYTES_PER_PIXEL;
        let fits = frame.width == w
            && frame.height == h
            && frame.stride >= row_bytes
            && frame.data.len() >= frame.stride * (h as usize - 1) + row_bytes;
        if !fits {
            *frame = Frame::new(w, h);
        }
        let continues = fits && frame.seq == self.seq;
        let prev = self.shown.filter(|_| continues);
        self.seq += 1;
        frame.seq = self.seq;
        frame.capture_ms = now_unix_ms;

        let input = self.input.snapshot();
        let anim_ms = self.animation_time(t_ms, input.pause_presses % 2 == 1);
        let next = match (self.config.scene, self.shown) {
            (Scene::Still, Some(first)) => first,
            _ => SceneState {
                t_ms: anim_ms,
                stamp_ms: now_unix_ms,
                input,
            },
        };
        self.shown = Some(next);

        let damage = match prev {
            None => Damage::full(w, h),
            Some(_) if self.config.scene == Scene::Still => return Damage::new(),
            Some(prev) => self.motion_damage(&prev, &next),
        };
        let stride = frame.stride;
        let mut canvas = Canvas::new(&mut frame.data, stride, w, h, self.layout.bounds());
        for r in damage.rects() {
            self.layout.paint(&mut canvas, *r, &next);
        }
        damage
    }

    /// The animation clock: `t_ms` less the time spent paused; frozen while paused.
    fn animation_time(&mut self, t_ms: u64, paused: bool) -> u64 {
        match (paused, self.paused_since) {
            (true, None) => {
                self.paused_since = Some(t_ms);
                t_ms.saturating_sub(self.paused_total_ms)
            }
            (true, Some(p)) => p.saturating_sub(self.paused_total_ms),
            (false, Some(p)) => {
                self.paused_total_ms += t_ms.saturating_sub(p);
                self.paused_since = None;
                t_ms.saturating_sub(self.paused_total_ms)
            }
            (false, None) => t_ms.saturating_sub(self.paused_total_ms),
        }
    }

    /// Everything that may differ between the pictures for `prev` and `next`.
    fn motion_damage(&self, prev: &SceneState, next: &SceneState) -> Damage {
        let l = &self.layout;
        let mut d = Damage::new();
        d.add(strip::timestamp_rect(l.width, l.height));
        if prev.input != next.input {
            d.add(strip::input_rect(l.width, l.height));
            d.add(l.status);
            d.add(l.cross_rect(&prev.input));
            d.add(l.cross_rect(&next.input));
        }
        // The video block's content changes whenever time moves: its old and new boxes.
        if prev.t_ms != next.t_ms {
            d.add(l.video_rect(prev.t_ms));
            d.add(l.video_rect(next.t_ms));
        }
        let (b0, b1) = (l.ball_rect(prev.t_ms), l.ball_rect(next.t_ms));
        if b0 != b1 {
            d.add(b0);
            d.add(b1);
        }
        d.clamp_to(l.width, l.height);
        d
    }
}

#[cfg(test)]
mod tests;
