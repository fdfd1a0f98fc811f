//! Stream-or-drawables decisions. Pure logic: time is passed in.
//!
//! The surface is divided into tiles. Each update marks the tiles its damage touches; a tile
//! that changed in at least `hot_rate` updates per second, over the last `window`, is *hot*.
//! When the hot tiles' bounding box is large enough it becomes a stream. A stream only grows
//! (restarted as the union with new hot tiles, at most once per `regrow_interval`, so a
//! wandering object does not cause a storm of new streams), and stops when nothing inside it
//! changed for `idle_stop`: the caller then redraws the area losslessly so text is sharp
//! again. Small or sparse damage never starts a stream.

use std::time::{Duration, Instant};

use scanoutd_types::{Damage, Rect};

/// How the server uses video streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamMode {
    /// Stream regions that change at a sustained rate; drawables for the rest.
    #[default]
    Auto,
    /// Stream the whole surface from the first frame (GPU scanouts that change every frame).
    FullFrame,
    /// Never stream.
    Off,
}

/// Tuning of the detector. Defaults follow spice-server's order of magnitude (a 96x96 minimum)
/// but react faster: a stream starts after half a second of sustained change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamTuning {
    pub tile: u32,
    pub window: Duration,
    /// Changes per second for a tile to count as hot.
    pub hot_rate: f32,
    /// Smallest stream area in pixels.
    pub min_area: u64,
    pub idle_stop: Duration,
    pub regrow_interval: Duration,
}

impl Default for StreamTuning {
    fn default() -> Self {
        StreamTuning {
            tile: 32,
            window: Duration::from_millis(500),
            hot_rate: 8.0,
            min_area: 96 * 96,
            idle_stop: Duration::from_millis(1000),
            regrow_interval: Duration::from_millis(1000),
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamAction {
    None,
    /// Create a stream covering this rectangle.
    Start(Rect),
    /// Replace the current stream by one covering this (larger) rectangle.
    Regrow(Rect),
    /// Destroy the stream and redraw this rectangle losslessly.
    Stop(Rect),
}

struct Active {
    rect: Rect,
    last_change: Instant,
    last_regrow: Instant,
}

/// One client's detector.
pub struct StreamPolicy {
    mode: StreamMode,
    tuning: StreamTuning,
    cols: u32,
    rows: u32,
    size: (u32, u32),
    /// Per tile: changes in the current and the previous half-window.
    cur: Vec<u16>,
    prev: Vec<u16>,
    bucket_start: Option<Instant>,
    /// When the current observation began: nothing is hot before a whole window was seen.
    observing_since: Option<Instant>,
    active: Option<Active>,
}

impl StreamPolicy {
    pub fn new(mode: StreamMode, tuning: StreamTuning) -> Self {
        StreamPolicy {
            mode,
            tuning,
            cols: 0,
            rows: 0,
            size: (0, 0),
            cur: Vec::new(),
            prev: Vec::new(),
            bucket_start: None,
            observing_since: None,
            active: None,
        }
    }

    pub fn mode(&self) -> StreamMode {
        self.mode
    }

    /// Never stream again (e.g. no encoder works for this client).
    pub fn disable(&mut self) {
        self.mode = StreamMode::Off;
        self.active = None;
    }

    /// The current stream rectangle.
    pub fn active(&self) -> Option<Rect> {
        self.active.as_ref().map(|a| a.rect)
    }

    /// The surface was (re)created: forget everything.
    pub fn reset(&mut self, width: u32, height: u32) {
        let t = self.tuning.tile.max(1);
        self.size = (width, height);
        self.cols = width.div_ceil(t);
        self.rows = height.div_ceil(t);
        let n = (self.cols * self.rows) as usize;
        self.cur = vec![0; n];
        self.prev = vec![0; n];
        self.bucket_start = None;
        self.observing_since = None;
        self.active = None;
    }

    fn roll(&mut self, now: Instant) {
        let half = self.tuning.window / 2;
        match self.bucket_start {
            None => self.bucket_start = Some(now),
            Some(start) if now.duration_since(start) >= half => {
                if now.duration_since(start) >= half * 2 {
                    self.prev.iter_mut().for_each(|c| *c = 0);
                } else {
                    std::mem::swap(&mut self.prev, &mut self.cur);
                }
                self.cur.iter_mut().for_each(|c| *c = 0);
                self.bucket_start = Some(now);
            }
            Some(_) => {}
        }
    }

    fn hot_box(&self, now: Instant) -> Option<Rect> {
        let start = self.bucket_start?;
        if now.duration_since(self.observing_since?) < self.tuning.window {
            return None;
        }
        let span = (now.duration_since(start) + self.tuning.window / 2).as_secs_f32();
        let need = (self.tuning.hot_rate * span).max(2.0);
        let hot: Vec<bool> = self
            .cur
            .iter()
            .zip(&self.prev)
            .map(|(c, p)| f32::from(*c) + f32::from(*p) >= need)
            .collect();
        let bb = self.large_regions(&hot);
        let bb = bb.clamp_to(self.size.0, self.size.1)?;
        Some(even(bb, self.size))
    }

    /// The bounding box of the hot regions (8-connected groups of hot tiles) that are at least
    /// `min_side` tall and wide: a thin strip (a clock, a status line, a progress bar) changing
    /// beside a video stays out of the stream and goes as lossless drawables.
    fn large_regions(&self, hot: &[bool]) -> Rect {
        let t = self.tuning.tile;
        let min_side = (self.tuning.min_area as f64).sqrt() as u32;
        let (cols, rows) = (self.cols as usize, self.rows as usize);
        let mut seen = vec![false; hot.len()];
        let mut stack = Vec::new();
        let mut out = Rect::default();
        for start in 0..hot.len() {
            if !hot[start] || seen[start] {
                continue;
            }
            seen[start] = true;
            stack.push(start);
            let mut region = Rect::default();
            while let Some(i) = stack.pop() {
                let (col, row) = (i % cols, i / cols);
                region = region.union(&Rect::new(col as u32 * t, row as u32 * t, t, t));
                for (dc, dr) in [
                    (-1, -1),
                    (0, -1),
                    (1, -1),
                    (-1, 0),
                    (1, 0),
                    (-1, 1),
                    (0, 1),
                    (1, 1),
                ] {
                    let (c, r) = (col as i64 + dc, row as i64 + dr);
                    if c < 0 || r < 0 || c >= cols as i64 || r >= rows as i64 {
                        continue;
                    }
                    let j = r as usize * cols + c as usize;
                    if hot[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
            let region = region
                .clamp_to(self.size.0, self.size.1)
                .unwrap_or_default();
            if region.w >= min_side && region.h >= min_side {
                out = out.union(&region);
            }
        }
        out
    }

    /// Feed one update's damage; returns what to do before sending it.
    pub fn on_update(&mut self, now: Instant, damage: &Damage) -> StreamAction {
        if self.cols == 0 {
            return StreamAction::None;
        }
        match self.mode {
            StreamMode::Off => return StreamAction::None,
            StreamMode::FullFrame => {
                if self.active.is_none() && !damage.is_empty() {
                    let rect = even(Rect::new(0, 0, self.size.0, self.size.1), self.size);
                    self.active = Some(Active {
                        rect,
                        last_change: now,
                        last_regrow: now,
                    });
                    return StreamAction::Start(rect);
                }
                if let Some(a) = &mut self.active {
                    if !damage.is_empty() {
                        a.last_change = now;
                    }
                }
                return StreamAction::None;
            }
            StreamMode::Auto => {}
        }
        self.roll(now);
        self.observing_since.get_or_insert(now);
        let t = self.tuning.tile;
        for r in damage.rects() {
            let c0 = r.x / t;
            let r0 = r.y / t;
            let c1 = r.right().div_ceil(t).min(self.cols);
            let r1 = r.bottom().div_ceil(t).min(self.rows);
            for row in r0..r1 {
                for col in c0..c1 {
                    let i = (row * self.cols + col) as usize;
                    self.cur[i] = self.cur[i].saturating_add(1);
                }
            }
        }
        if let Some(a) = &mut self.active {
            // Only substantial change keeps a stream alive: a clock or a blinking cursor
            // inside it must not keep text blurred.
            let inside: u64 = damage
                .rects()
                .iter()
                .filter_map(|r| r.intersect(&a.rect))
                .map(|r| r.area())
                .sum();
            if inside >= self.tuning.min_area {
                a.last_change = now;
            }
        }
        let hot = self.hot_box(now);
        // The tiles round small changes up; what starts a stream is how much really changes.
        let changed_in = |bb: &Rect| -> u64 {
            damage
                .rects()
                .iter()
                .filter_map(|r| r.intersect(bb))
                .map(|r| r.area())
                .sum()
        };
        match (&mut self.active, hot) {
            (None, Some(bb)) if changed_in(&bb) >= self.tuning.min_area => {
                self.active = Some(Active {
                    rect: bb,
                    last_change: now,
                    last_regrow: now,
                });
                StreamAction::Start(bb)
            }
            (Some(a), Some(bb))
                if !a.rect.contains(&bb)
                    && now.duration_since(a.last_regrow) >= self.tuning.regrow_interval =>
            {
                a.rect = even(a.rect.union(&bb), self.size);
                a.last_regrow = now;
                a.last_change = now;
                StreamAction::Regrow(a.rect)
            }
            _ => StreamAction::None,
        }
    }

    /// Called periodically (and with every update): stops an idle stream.
    pub fn on_tick(&mut self, now: Instant) -> StreamAction {
        match &self.active {
            Some(a) if now.duration_since(a.last_change) >= self.tuning.idle_stop => {
                let rect = a.rect;
                self.active = None;
                // Forget the motion that made it, so it does not restart at once.
                self.cur.iter_mut().for_each(|c| *c = 0);
                self.prev.iter_mut().for_each(|c| *c = 0);
                self.observing_since = None;
                StreamAction::Stop(rect)
            }
            _ => StreamAction::None,
        }
    }
}

/// Round a rectangle outwards to even coordinates and sizes (4:2:0 encoders need them),
/// staying inside the surface.
fn even(r: Rect, (w, h): (u32, u32)) -> Rect {
    let x0 = r.x & !1;
    let y0 = r.y & !1;
    let x1 = (r.right() + 1) & !1;
    let y1 = (r.bottom() + 1) & !1;
    let x1 = x1.min(w & !1);
    let y1 = y1.min(h & !1);
    Rect::new(x0, y0, x1.saturating_sub(x0), y1.saturating_sub(y0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmg(rects: &[Rect]) -> Damage {
        let mut d = Damage::new();
        for r in rects {
            d.add(*r);
        }
        d
    }

    fn policy() -> StreamPolicy {
        let mut p = StreamPolicy::new(StreamMode::Auto, StreamTuning::default());
        p.reset(1280, 720);
        p
    }

    #[test]
    fn sustained_large_motion_starts_a_stream_then_stops_when_idle() {
        let mut p = policy();
        let t0 = Instant::now();
        let video = Rect::new(300, 200, 320, 240);
        let mut started = None;
        for i in 0..60u32 {
            let now = t0 + Duration::from_millis(16 * u64::from(i));
            if let StreamAction::Start(r) = p.on_update(now, &dmg(&[video])) {
                started = Some((i, r));
                break;
            }
        }
        let (frame, r) = started.expect("a stream starts");
        assert!(frame >= 10, "not on the first frames ({frame})");
        assert!(r.contains(&video), "{r:?} covers the video");
        assert!(
            r.area() < video.area() * 2,
            "{r:?} is not much larger than the video"
        );
        assert!(r.x % 2 == 0 && r.w % 2 == 0 && r.h % 2 == 0);
        // Still moving: nothing to do.
        let t1 = t0 + Duration::from_millis(16 * 61);
        assert_eq!(p.on_update(t1, &dmg(&[video])), StreamAction::None);
        assert_eq!(
            p.on_tick(t1 + Duration::from_millis(500)),
            StreamAction::None
        );
        // Motion stops: after idle_stop the stream ends with a lossless redraw of its area.
        assert_eq!(
            p.on_tick(t1 + Duration::from_millis(1000)),
            StreamAction::Stop(r)
        );
        assert_eq!(p.active(), None);
    }

    #[test]
    fn small_changes_inside_a_stream_do_not_keep_it_alive() {
        let mut p = policy();
        let t0 = Instant::now();
        let video = Rect::new(0, 0, 640, 480);
        let mut t = t0;
        while p.active().is_none() {
            t += Duration::from_millis(16);
            p.on_update(t, &dmg(&[video]));
            assert!(t - t0 < Duration::from_secs(2));
        }
        // A clock strip alone never starts one (it is smaller than the minimum even though
        // the tiles it touches are not).
        let mut q = policy();
        let mut tq = t0;
        for _ in 0..200 {
            tq += Duration::from_millis(16);
            assert_eq!(
                q.on_update(tq, &dmg(&[Rect::new(0, 0, 544, 16)])),
                StreamAction::None
            );
        }
        // The video pauses; only a clock strip inside the stream keeps ticking.
        let clock = Rect::new(0, 0, 544, 16);
        let paused = t;
        let mut stopped = None;
        while t - paused < Duration::from_secs(3) {
            t += Duration::from_millis(16);
            p.on_update(t, &dmg(&[clock]));
            if let StreamAction::Stop(_) = p.on_tick(t) {
                stopped = Some(t - paused);
                break;
            }
        }
        let after = stopped.expect("the stream stops although the clock keeps changing");
        assert!(after >= Duration::from_millis(1000) && after < Duration::from_millis(1100));
    }

    #[test]
    fn a_clock_strip_beside_a_video_stays_out_of_the_stream() {
        let mut p = policy();
        let (clock, status) = (Rect::new(0, 0, 544, 16), Rect::new(16, 712, 360, 8));
        let video = Rect::new(420, 106, 590, 580);
        let mut t = Instant::now();
        let started = loop {
            t += Duration::from_millis(33);
            if let StreamAction::Start(r) = p.on_update(t, &dmg(&[clock, video, status])) {
                break r;
            }
        };
        assert!(started.contains(&video), "{started:?}");
        assert!(
            started.y >= 64 && started.bottom() <= 704,
            "{started:?} holds a thin strip"
        );
        // Two separate large regions: one stream over both.
        let mut q = policy();
        let other = Rect::new(40, 400, 200, 200);
        let both = loop {
            t += Duration::from_millis(33);
            if let StreamAction::Start(r) = q.on_update(t, &dmg(&[clock, video, other])) {
                break r;
            }
        };
        assert!(
            both.contains(&video) && both.contains(&other) && both.y >= 64,
            "{both:?}"
        );
    }

    #[test]
    fn small_or_sparse_damage_stays_drawables() {
        let mut p = policy();
        let t0 = Instant::now();
        // A cursor-sized change every frame.
        for i in 0..120u32 {
            let now = t0 + Duration::from_millis(16 * u64::from(i));
            assert_eq!(
                p.on_update(now, &dmg(&[Rect::new(10, 40, 40, 40)])),
                StreamAction::None
            );
        }
        // A large change twice a second (typing into a big window, a clock).
        let mut p = policy();
        for i in 0..20u32 {
            let now = t0 + Duration::from_millis(500 * u64::from(i));
            assert_eq!(
                p.on_update(now, &dmg(&[Rect::new(0, 100, 800, 400)])),
                StreamAction::None
            );
        }
    }

    #[test]
    fn a_wandering_object_grows_the_stream_at_most_once_a_second() {
        let mut p = policy();
        let t0 = Instant::now();
        let mut actions = Vec::new();
        for i in 0..300u32 {
            let now = t0 + Duration::from_millis(16 * u64::from(i));
            let x = 100 + i * 2;
            let a = p.on_update(now, &dmg(&[Rect::new(x, 300, 200, 150)]));
            if a != StreamAction::None {
                actions.push((now.duration_since(t0), a));
            }
        }
        assert!(matches!(actions[0].1, StreamAction::Start(_)));
        let regrows: Vec<_> = actions
            .iter()
            .filter(|(_, a)| matches!(a, StreamAction::Regrow(_)))
            .collect();
        assert!(!regrows.is_empty(), "the stream follows the object");
        for w in regrows.windows(2) {
            assert!(w[1].0 - w[0].0 >= Duration::from_millis(1000));
        }
        let last = p.active().unwrap();
        assert!(last.contains(&Rect::new(100 + 250 * 2, 300, 200, 150)));
    }

    #[test]
    fn full_frame_mode_streams_from_the_first_frame() {
        let mut p = StreamPolicy::new(StreamMode::FullFrame, StreamTuning::default());
        p.reset(1279, 721);
        let a = p.on_update(Instant::now(), &dmg(&[Rect::new(0, 0, 1, 1)]));
        assert_eq!(a, StreamAction::Start(Rect::new(0, 0, 1278, 720)));
        let mut off = StreamPolicy::new(StreamMode::Off, StreamTuning::default());
        off.reset(640, 480);
        assert_eq!(
            off.on_update(Instant::now(), &Damage::full(640, 480)),
            StreamAction::None
        );
    }
}
