//! Rectangles and bounded damage lists.

/// An axis-aligned rectangle in surface pixels. `x`/`y` is the top-left corner; the right and
/// bottom edges (`x + w`, `y + h`) are exclusive. Empty when `w == 0 || h == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub const fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Rect { x, y, w, h }
    }

    pub const fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// Exclusive right edge, saturating.
    pub const fn right(&self) -> u32 {
        self.x.saturating_add(self.w)
    }

    /// Exclusive bottom edge, saturating.
    pub const fn bottom(&self) -> u32 {
        self.y.saturating_add(self.h)
    }

    pub const fn area(&self) -> u64 {
        self.w as u64 * self.h as u64
    }

    /// The overlap of two rectangles, or `None` when they do not overlap.
    pub fn intersect(&self, other: &Rect) -> Option<Rect> {
        let x0 = self.x.max(other.x);
        let y0 = self.y.max(other.y);
        let x1 = self.right().min(other.right());
        let y1 = self.bottom().min(other.bottom());
        (x1 > x0 && y1 > y0).then(|| Rect::new(x0, y0, x1 - x0, y1 - y0))
    }

    /// The smallest rectangle containing both. An empty rectangle contributes nothing.
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x0 = self.x.min(other.x);
        let y0 = self.y.min(other.y);
        let x1 = self.right().max(other.right());
        let y1 = self.bottom().max(other.bottom());
        Rect::new(x0, y0, x1 - x0, y1 - y0)
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Rect) -> bool {
        other.x >= self.x
            && other.y >= self.y
            && other.right() <= self.right()
            && other.bottom() <= self.bottom()
    }

    /// `self` minus `other`, as at most four non-overlapping rectangles.
    pub fn subtract(&self, other: &Rect) -> Vec<Rect> {
        let Some(i) = self.intersect(other) else {
            return if self.is_empty() {
                Vec::new()
            } else {
                vec![*self]
            };
        };
        let mut out = Vec::with_capacity(4);
        // Above and below the overlap (full width), then left and right of it.
        if i.y > self.y {
            out.push(Rect::new(self.x, self.y, self.w, i.y - self.y));
        }
        if i.bottom() < self.bottom() {
            out.push(Rect::new(
                self.x,
                i.bottom(),
                self.w,
                self.bottom() - i.bottom(),
            ));
        }
        if i.x > self.x {
            out.push(Rect::new(self.x, i.y, i.x - self.x, i.h));
        }
        if i.right() < self.right() {
            out.push(Rect::new(i.right(), i.y, self.right() - i.right(), i.h));
        }
        out
    }

    /// Clamp to a `width` x `height` surface; `None` if nothing is left.
    pub fn clamp_to(&self, width: u32, height: u32) -> Option<Rect> {
        self.intersect(&Rect::new(0, 0, width, height))
    }
}

/// At most this many rectangles are kept in one [`Damage`]; past it they collapse into one
/// bounding box, so damage from a client that reads slowly never grows without bound.
pub const MAX_DAMAGE_RECTS: usize = 32;

/// A bounded list of damaged rectangles. Adding a rectangle that touches one already present
/// merges them when the merged box wastes little area, so the list stays short and the
/// rectangles it holds never overlap much.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    rects: Vec<Rect>,
}

impl Damage {
    pub fn new() -> Self {
        Damage { rects: Vec::new() }
    }

    /// Damage covering a whole `width` x `height` surface.
    pub fn full(width: u32, height: u32) -> Self {
        let mut d = Damage::new();
        d.add(Rect::new(0, 0, width, height));
        d
    }

    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    pub fn rects(&self) -> &[Rect] {
        &self.rects
    }

    pub fn len(&self) -> usize {
        self.rects.len()
    }

    /// Total area of the rectangles (they may overlap slightly, so this is an upper bound).
    pub fn area(&self) -> u64 {
        self.rects.iter().map(Rect::area).sum()
    }

    pub fn bounding_box(&self) -> Rect {
        self.rects
            .iter()
            .fold(Rect::default(), |acc, r| acc.union(r))
    }

    pub fn clear(&mut self) {
        self.rects.clear();
    }

    pub fn take(&mut self) -> Damage {
        std::mem::take(self)
    }

    /// Add one rectangle. Empty rectangles are ignored.
    pub fn add(&mut self, rect: Rect) {
        if rect.is_empty() {
            return;
        }
        let mut rect = rect;
        // Absorb every rectangle the new one overlaps or that merges cheaply with it; repeat
        // because a grown rectangle may now reach others.
        loop {
            let mut merged = false;
            let mut i = 0;
            while i < self.rects.len() {
                let r = self.rects[i];
                if rect.contains(&r) {
                    self.rects.swap_remove(i);
                    merged = true;
                    continue;
                }
                if r.contains(&rect) {
                    return;
                }
                let u = rect.union(&r);
                // Merge when the union wastes at most a quarter of its area.
                let covered = rect.area() + r.area();
                if rect.intersect(&r).is_some() || u.area() * 3 <= covered * 4 {
                    rect = u;
                    self.rects.swap_remove(i);
                    merged = true;
                    continue;
                }
                i += 1;
            }
            if !merged {
                break;
            }
        }
        self.rects.push(rect);
        if self.rects.len() > MAX_DAMAGE_RECTS {
            let bb = self.bounding_box();
            self.rects.clear();
            self.rects.push(bb);
        }
    }

    /// Add every rectangle of `other`.
    pub fn merge(&mut self, other: &Damage) {
        for r in &other.rects {
            self.add(*r);
        }
    }

    /// Clamp every rectangle to a `width` x `height` surface, dropping what falls outside.
    pub fn clamp_to(&mut self, width: u32, height: u32) {
        self.rects.retain_mut(|r| match r.clamp_to(width, height) {
            Some(c) => {
                *r = c;
                true
            }
            None => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(d: &Damage, x: u32, y: u32) -> bool {
        d.rects().iter().any(|r| r.contains(&Rect::new(x, y, 1, 1)))
    }

    #[test]
    fn rect_ops() {
        let a = Rect::new(0, 0, 10, 10);
        let b = Rect::new(5, 5, 10, 10);
        assert_eq!(a.intersect(&b), Some(Rect::new(5, 5, 5, 5)));
        assert_eq!(a.union(&b), Rect::new(0, 0, 15, 15));
        assert_eq!(
            a.intersect(&Rect::new(10, 0, 5, 5)),
            None,
            "edges are exclusive"
        );
        assert_eq!(
            Rect::new(90, 90, 20, 20).clamp_to(100, 100),
            Some(Rect::new(90, 90, 10, 10))
        );
        assert_eq!(Rect::new(100, 0, 5, 5).clamp_to(100, 100), None);
    }

    #[test]
    fn subtract_covers_exactly_the_difference() {
        let a = Rect::new(0, 0, 10, 10);
        for b in [
            Rect::new(2, 3, 4, 5),
            Rect::new(-0i32 as u32, 0, 10, 10),
            Rect::new(5, 5, 20, 20),
            Rect::new(20, 20, 2, 2),
        ] {
            let parts = a.subtract(&b);
            for y in 0..12 {
                for x in 0..12 {
                    let p = Rect::new(x, y, 1, 1);
                    let want = a.contains(&p) && !b.contains(&p);
                    let n = parts.iter().filter(|r| r.contains(&p)).count();
                    assert_eq!(n, want as usize, "{a:?} - {b:?} at ({x},{y})");
                }
            }
        }
    }

    #[test]
    fn damage_merges_overlaps_and_ignores_empty() {
        let mut d = Damage::new();
        d.add(Rect::new(0, 0, 0, 10));
        assert!(d.is_empty());
        d.add(Rect::new(0, 0, 10, 10));
        d.add(Rect::new(5, 5, 10, 10));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 15, 15)]);
        d.add(Rect::new(2, 2, 3, 3));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn damage_keeps_distant_rects_apart() {
        let mut d = Damage::new();
        d.add(Rect::new(0, 0, 10, 10));
        d.add(Rect::new(500, 500, 10, 10));
        assert_eq!(d.len(), 2);
        assert!(d.area() < 300);
    }

    #[test]
    fn damage_is_bounded_and_still_covers_everything() {
        let mut d = Damage::new();
        let mut added = Vec::new();
        for i in 0..1000u32 {
            let r = Rect::new((i * 37) % 1200, (i * 53) % 700, 3, 3);
            added.push(r);
            d.add(r);
            assert!(d.len() <= MAX_DAMAGE_RECTS);
        }
        for r in added {
            assert!(
                covers(&d, r.x, r.y) && covers(&d, r.x + 2, r.y + 2),
                "{r:?} lost"
            );
        }
    }

    #[test]
    fn clamp_drops_outside() {
        let mut d = Damage::new();
        d.add(Rect::new(0, 0, 10, 10));
        d.add(Rect::new(200, 200, 10, 10));
        d.clamp_to(100, 100);
        assert_eq!(d.rects(), &[Rect::new(0, 0, 10, 10)]);
    }
}
