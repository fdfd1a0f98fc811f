//! Latest-wins frame distribution between one source and many clients.
//!
//! [`FrameBus`] keeps the source's frames in a small ring of recycled slots (2–3 by default)
//! and fans them out to [`Subscriber`]s:
//!
//! - **The producer never blocks.** [`FrameBus::try_write`] renders into a free slot (one that
//!   is neither the newest frame nor held by a reader), starting from a copy of the newest
//!   picture so sources can draw incrementally. Only when every slot is held does it drop the
//!   frame, and it counts that ([`RingStats::dropped_ring_full`]). Slots are reused: memory
//!   is `slots x frame size`, whatever the clients do.
//! - **Readers hold a slot only while they copy from it.** An [`Update`] carries an
//!   `Arc<Frame>`: the `Arc` is the RAII guard that keeps its slot from being rewritten, and
//!   dropping it frees the slot.
//! - **Each subscriber accumulates the damage** of every frame it has not taken yet, so a
//!   client that is busy or over its send budget takes fewer, newer updates: the frames it
//!   skipped were dropped before any encoding (counted per client as coalesced).
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use scanoutd_types::{Damage, Frame};
use tokio::sync::Notify;

/// Slots in a bus made with [`FrameBus::new`]: one being written, the newest, and one a
/// reader may still be copying from.
pub const DEFAULT_SLOTS: usize = 3;

/// What a subscriber takes: the newest frame and everything that changed since its last take.
#[derive(Debug, Clone)]
pub struct Update {
    /// The newest frame. Holding it pins its ring slot: drop it as soon as its pixels are
    /// copied out.
    pub frame: Arc<Frame>,
    /// Union of the damage of every frame published since the last take, clamped to the frame.
    pub damage: Damage,
    /// How many published frames were merged into this update beyond the first (0 when the
    /// subscriber kept up): frames dropped before encoding because a newer one superseded them.
    pub coalesced: u64,
    /// The frame size changed since the last take (or this is the first take): the whole
    /// surface must be re-created.
    pub resized: bool,
}

#[derive(Default)]
struct Pending {
    damage: Damage,
    frames: u64,
    resized: bool,
    closed: bool,
}

struct SubShared {
    pending: Mutex<Pending>,
    notify: Notify,
}

/// Counters of the ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Frames published.
    pub published: u64,
    /// Frames the producer could not write because every slot was held by readers.
    pub dropped_ring_full: u64,
    /// Renders that changed nothing (not published).
    pub unchanged: u64,
    /// Pixel bytes the ring copied to bring a slot up to the newest picture before a render
    /// (only what changed since the picture the slot holds, when the ring still knows it).
    pub sync_bytes: u64,
}

/// How many publishes' damage the ring remembers: a slot whose picture is at most this many
/// versions old is brought up to date by copying only what changed since; an older one (or
/// one of unknown content) gets the whole picture.
const DAMAGE_HISTORY: usize = 8;

/// What a slot needs before a render can start from the newest picture.
enum Sync {
    /// It already holds the newest picture.
    None,
    /// These rectangles changed since the picture it holds.
    Rects(Damage),
    /// Everything (its picture is too old, unknown, or about to be overwritten anyway).
    Whole,
}

struct BusState {
    /// `None` while the producer has that slot out for writing.
    slots: Vec<Option<Arc<Frame>>>,
    /// Which published picture each slot's pixels equal (to skip copying what is already
    /// there, e.g. every tick of a source whose picture does not change).
    versions: Vec<u64>,
    /// Bumped on every publish; the newest frame's version.
    version: u64,
    /// The damage of the last publishes of the current size, newest last: `(version, damage)`.
    history: std::collections::VecDeque<(u64, Damage)>,
    latest: Option<usize>,
    subscribers: Vec<Weak<SubShared>>,
    stats: RingStats,
    closed: bool,
}

impl BusState {
    /// What a slot holding picture `version` needs to equal the newest one.
    fn sync_for(&self, version: u64) -> Sync {
        if version == self.version {
            return Sync::None;
        }
        // Every publish after `version` must still be in the history.
        let oldest = self.history.front().map_or(u64::MAX, |(v, _)| *v);
        if version >= self.version || version + 1 < oldest {
            return Sync::Whole;
        }
        let mut d = Damage::new();
        for (_, dmg) in self.history.iter().filter(|(v, _)| *v > version) {
            d.merge(dmg);
        }
        Sync::Rects(d)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these short critical sections cannot leave the data
    // inconsistent in a way that matters (they only merge damage), so keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`FrameBus::try_write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Published,
    /// The render reported no damage; nothing was published.
    Unchanged,
    /// Every slot is held by a reader; the render was not called. Nothing is lost for a
    /// source that renders by time or keeps its own changes: its next write includes them.
    RingFull,
}

/// One source's frames, fanned out to any number of subscribers. Cheap to clone.
#[derive(Clone)]
pub struct FrameBus {
    state: Arc<Mutex<BusState>>,
}

impl Default for FrameBus {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBus {
    /// A bus with [`DEFAULT_SLOTS`] slots.
    pub fn new() -> Self {
        Self::with_slots(DEFAULT_SLOTS)
    }

    /// A bus with `slots` slots (at least 2: one to write while another is the newest).
    pub fn with_slots(slots: usize) -> Self {
        let n = slots.max(2);
        FrameBus {
            state: Arc::new(Mutex::new(BusState {
                slots: (0..n).map(|_| Some(Arc::new(Frame::new(0, 0)))).collect(),
                versions: vec![0; n],
                version: 0,
                history: std::collections::VecDeque::with_capacity(DAMAGE_HISTORY),
                latest: None,
                subscribers: Vec::new(),
                stats: RingStats::default(),
                closed: false,
            })),
        }
    }

    /// Render a new frame into a free slot without ever waiting for a reader.
    ///
    /// `render` gets a `width` x `height` frame holding a copy of the newest picture (or a
    /// black frame after a size change or at the start) and returns what it changed. The
    /// frame is then published, and the damage merged into every subscriber's pending set.
    pub fn try_write(
        &self,
        width: u32,
        height: u32,
        render: impl FnOnce(&mut Frame) -> Damage,
    ) -> WriteOutcome {
        self.write(width, height, render, true, false)
    }

    /// [`FrameBus::try_write`] for a source that keeps what it could not publish and tries
    /// again (a timer retrying a frame the ring could not take): a full ring is not counted
    /// as another dropped frame, since the first attempt already was.
    pub fn retry_write(
        &self,
        width: u32,
        height: u32,
        render: impl FnOnce(&mut Frame) -> Damage,
    ) -> WriteOutcome {
        self.write(width, height, render, false, false)
    }

    fn write(
        &self,
        width: u32,
        height: u32,
        render: impl FnOnce(&mut Frame) -> Damage,
        count_drop: bool,
        overwrites_all: bool,
    ) -> WriteOutcome {
        // Take a free slot out of the ring (so it can be written without the lock held).
        let (idx, mut slot, latest) = {
            let mut st = lock(&self.state);
            let latest_idx = st.latest;
            let free = st.slots.iter().enumerate().position(|(i, s)| {
                Some(i) != latest_idx && s.as_ref().is_some_and(|a| Arc::strong_count(a) == 1)
            });
            let Some(i) = free else {
                if count_drop {
                    st.stats.dropped_ring_full += 1;
                }
                return WriteOutcome::RingFull;
            };
            let slot = st.slots[i].take().expect("free slot is present");
            let sync = if overwrites_all {
                Sync::Whole
            } else {
                st.sync_for(st.versions[i])
            };
            let latest = latest_idx.and_then(|l| st.slots[l].clone());
            (i, slot, latest.map(|l| (l, sync)))
        };
        let frame = Arc::get_mut(&mut slot).expect("a free slot has no other holder");
        let resized = match &latest {
            Some((l, sync)) if l.width == width && l.height == height => {
                let copied = match sync {
                    Sync::None => 0,
                    _ if overwrites_all => 0,
                    Sync::Rects(d) if frame.width == width && frame.height == height => {
                        frame.capture_ms = l.capture_ms;
                        frame.seq = l.seq;
                        d.rects().iter().map(|r| frame.copy_rect_from(l, *r)).sum()
                    }
                    Sync::Rects(_) | Sync::Whole => {
                        frame.clone_from(l);
                        frame.data.len()
                    }
                };
                if copied > 0 {
                    lock(&self.state).stats.sync_bytes += copied as u64;
                }
                false
            }
            _ => {
                if frame.width != width || frame.height != height {
                    *frame = Frame::new(width, height);
                } else {
                    frame.data.fill(0);
                }
                frame.seq = 0;
                true
            }
        };
        drop(latest);
        let mut damage = render(frame);
        if resized {
            damage = Damage::full(width, height);
        }
        let mut st = lock(&self.state);
        st.slots[idx] = Some(slot);
        if damage.is_empty() {
            // No pixel changed: the slot still equals the newest picture (when it did before;
            // a render that overwrote it all holds something the ring does not know).
            if resized || overwrites_all {
                st.versions[idx] = u64::MAX;
            } else {
                st.versions[idx] = st.version;
            }
            st.stats.unchanged += 1;
            return WriteOutcome::Unchanged;
        }
        let size_changed = st.latest.is_some() && resized;
        st.version += 1;
        st.versions[idx] = st.version;
        if resized {
            st.history.clear();
        }
        if st.history.len() == DAMAGE_HISTORY {
            st.history.pop_front();
        }
        let v = st.version;
        st.history.push_back((v, damage.clone()));
        st.latest = Some(idx);
        st.stats.published += 1;
        st.subscribers.retain(|weak| {
            let Some(sub) = weak.upgrade() else {
                return false;
            };
            {
                let mut p = lock(&sub.pending);
                if size_changed {
                    p.resized = true;
                    p.damage = Damage::full(width, height);
                } else {
                    p.damage.merge(&damage);
                    p.damage.clamp_to(width, height);
                }
                p.frames += 1;
            }
            sub.notify.notify_one();
            true
        });
        WriteOutcome::Published
    }

    /// Publish a complete frame (copied into a slot). For tests and sources that hand over
    /// whole pictures: when every slot is held it retries for up to a second (readers hold
    /// slots for milliseconds), so prefer [`FrameBus::try_write`] on a path that must never
    /// wait.
    pub fn publish(&self, frame: Arc<Frame>, damage: &Damage) -> WriteOutcome {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut first = true;
        loop {
            let r = self.write(
                frame.width,
                frame.height,
                |dst| {
                    dst.clone_from(&frame);
                    damage.clone()
                },
                std::mem::take(&mut first),
                true,
            );
            if r != WriteOutcome::RingFull || std::time::Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The newest frame, if any was published. Holding it pins its slot.
    pub fn latest(&self) -> Option<Arc<Frame>> {
        let st = lock(&self.state);
        st.latest.and_then(|l| st.slots[l].clone())
    }

    /// Frames published so far.
    pub fn published(&self) -> u64 {
        lock(&self.state).stats.published
    }

    pub fn stats(&self) -> RingStats {
        lock(&self.state).stats
    }

    /// Live subscribers.
    pub fn subscriber_count(&self) -> usize {
        let mut st = lock(&self.state);
        st.subscribers.retain(|w| w.strong_count() > 0);
        st.subscribers.len()
    }

    /// A new subscriber. Its first update is the whole newest frame (once one exists).
    pub fn subscribe(&self) -> Subscriber {
        let mut st = lock(&self.state);
        let mut pending = Pending {
            resized: true,
            closed: st.closed,
            ..Pending::default()
        };
        if let Some(f) = st.latest.and_then(|l| st.slots[l].as_ref()) {
            pending.damage = Damage::full(f.width, f.height);
            pending.frames = 1;
        }
        let sub = Arc::new(SubShared {
            pending: Mutex::new(pending),
            notify: Notify::new(),
        });
        st.subscribers.push(Arc::downgrade(&sub));
        Subscriber {
            sub,
            state: Arc::clone(&self.state),
        }
    }

    /// The source has ended: every subscriber's `next` returns `None` once drained.
    pub fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        for sub in st.subscribers.iter().filter_map(Weak::upgrade) {
            lock(&sub.pending).closed = true;
            sub.notify.notify_one();
        }
    }
}

/// One client's view of a [`FrameBus`].
pub struct Subscriber {
    sub: Arc<SubShared>,
    state: Arc<Mutex<BusState>>,
}

impl Subscriber {
    /// Take the pending update without waiting. `None` when nothing changed.
    pub fn try_next(&self) -> Option<Update> {
        // Lock order is bus state, then pending (as in `publish`): holding the state lock
        // keeps the frame and the damage taken here consistent with each other.
        let st = lock(&self.state);
        let mut p = lock(&self.sub.pending);
        if p.frames == 0 {
            return None;
        }
        let frame = st.latest.and_then(|l| st.slots[l].clone())?;
        drop(st);
        let coalesced = p.frames - 1;
        p.frames = 0;
        let mut damage = p.damage.take();
        damage.clamp_to(frame.width, frame.height);
        let resized = std::mem::take(&mut p.resized);
        Some(Update {
            frame,
            damage,
            coalesced,
            resized,
        })
    }

    /// Mark everything as damaged, so the next update repaints the whole frame (for example
    /// after the client lost its surface).
    pub fn invalidate(&self) {
        let latest = {
            let st = lock(&self.state);
            st.latest.and_then(|l| st.slots[l].clone())
        };
        if let Some(f) = latest {
            let mut p = lock(&self.sub.pending);
            p.damage = Damage::full(f.width, f.height);
            p.frames = p.frames.max(1);
            drop(p);
            self.sub.notify.notify_one();
        }
    }

    /// Wait for the next update. Returns `None` when the bus was closed and nothing is pending.
    pub async fn next(&self) -> Option<Update> {
        loop {
            let notified = self.sub.notify.notified();
            if let Some(u) = self.try_next() {
                return Some(u);
            }
            if lock(&self.sub.pending).closed {
                return None;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanoutd_types::Rect;
    use std::time::Duration;

    fn frame(w: u32, h: u32, seq: u64) -> Arc<Frame> {
        let mut f = Frame::new(w, h);
        f.seq = seq;
        Arc::new(f)
    }

    fn damage(r: Rect) -> Damage {
        let mut d = Damage::new();
        d.add(r);
        d
    }

    #[test]
    fn first_update_is_full_frame() {
        let bus = FrameBus::new();
        bus.publish(frame(100, 50, 1), &damage(Rect::new(0, 0, 1, 1)));
        let sub = bus.subscribe();
        let u = sub.try_next().expect("update");
        assert_eq!(u.damage.rects(), &[Rect::new(0, 0, 100, 50)]);
        assert!(u.resized);
        assert_eq!(u.coalesced, 0);
        assert!(sub.try_next().is_none(), "nothing new");
    }

    #[test]
    fn slow_subscriber_gets_coalesced_newest_update() {
        let bus = FrameBus::new();
        let sub = bus.subscribe();
        bus.publish(frame(100, 100, 1), &Damage::full(100, 100));
        let _ = sub.try_next().unwrap();
        for i in 0..50u32 {
            bus.publish(
                frame(100, 100, 2 + i as u64),
                &damage(Rect::new(i, 0, 1, 1)),
            );
        }
        let u = sub.try_next().unwrap();
        assert_eq!(u.frame.seq, 51, "newest frame wins");
        assert_eq!(u.coalesced, 49);
        assert!(!u.resized);
        // Every published damage rectangle is still covered.
        for i in 0..50u32 {
            assert!(u
                .damage
                .rects()
                .iter()
                .any(|r| r.contains(&Rect::new(i, 0, 1, 1))));
        }
        assert!(u.damage.len() <= scanoutd_types::MAX_DAMAGE_RECTS);
    }

    #[test]
    fn resize_forces_full_damage() {
        let bus = FrameBus::new();
        let sub = bus.subscribe();
        bus.publish(frame(100, 100, 1), &Damage::full(100, 100));
        let _ = sub.try_next();
        bus.publish(frame(200, 100, 2), &damage(Rect::new(0, 0, 1, 1)));
        let u = sub.try_next().unwrap();
        assert!(u.resized);
        assert_eq!(u.damage.rects(), &[Rect::new(0, 0, 200, 100)]);
    }

    #[test]
    fn dropped_subscribers_are_forgotten() {
        let bus = FrameBus::new();
        let a = bus.subscribe();
        let _b = bus.subscribe();
        assert_eq!(bus.subscriber_count(), 2);
        drop(a);
        bus.publish(frame(10, 10, 1), &Damage::full(10, 10));
        assert_eq!(bus.subscriber_count(), 1);
    }

    #[tokio::test]
    async fn next_wakes_on_publish_and_ends_on_close() {
        let bus = FrameBus::new();
        let sub = bus.subscribe();
        let b2 = bus.clone();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            b2.publish(frame(10, 10, 7), &Damage::full(10, 10));
            tokio::time::sleep(Duration::from_millis(10)).await;
            b2.close();
        });
        let u = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.frame.seq, 7);
        let end = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap();
        assert!(end.is_none());
        t.await.unwrap();
    }

    #[test]
    fn concurrent_publishers_and_readers_lose_no_damage() {
        let bus = FrameBus::new();
        let sub = bus.subscribe();
        bus.publish(frame(1000, 10, 0), &Damage::full(1000, 10));
        let _ = sub.try_next();
        let b2 = bus.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..1000u32 {
                b2.publish(
                    frame(1000, 10, 1 + i as u64),
                    &damage(Rect::new(i, 0, 1, 1)),
                );
            }
        });
        let mut seen = vec![false; 1000];
        let mut last_seq = 0;
        loop {
            let done = producer.is_finished();
            while let Some(u) = sub.try_next() {
                assert!(u.frame.seq >= last_seq);
                last_seq = u.frame.seq;
                for r in u.damage.rects() {
                    for x in r.x..r.right().min(1000) {
                        seen[x as usize] = true;
                    }
                }
            }
            if done {
                break;
            }
        }
        producer.join().unwrap();
        assert_eq!(last_seq, 1000);
        assert!(
            seen.iter().all(|s| *s),
            "a damaged column was never reported"
        );
    }

    fn fill(f: &mut Frame, v: u8) {
        f.data.fill(v);
    }

    #[test]
    fn producer_never_waits_when_every_slot_is_held() {
        let bus = FrameBus::with_slots(3);
        let mut held = Vec::new();
        for v in 1..=3u8 {
            assert_eq!(
                bus.try_write(8, 8, |f| {
                    fill(f, v);
                    Damage::full(8, 8)
                }),
                WriteOutcome::Published
            );
            held.push(bus.latest().unwrap());
        }
        // Three readers hold three different frames: no slot is free.
        let mut called = false;
        let r = bus.try_write(8, 8, |_| {
            called = true;
            Damage::full(8, 8)
        });
        assert_eq!(r, WriteOutcome::RingFull);
        assert!(
            !called,
            "the render is not run when it could not be published"
        );
        assert_eq!(bus.stats().dropped_ring_full, 1);
        // Held frames were never rewritten.
        for (i, f) in held.iter().enumerate() {
            assert!(f.data.iter().all(|b| *b == i as u8 + 1));
        }
        // Releasing one old frame frees its slot.
        held.remove(0);
        assert_eq!(
            bus.try_write(8, 8, |f| {
                fill(f, 9);
                Damage::full(8, 8)
            }),
            WriteOutcome::Published
        );
    }

    #[test]
    fn slots_are_recycled_and_renders_start_from_the_newest_picture() {
        let bus = FrameBus::new();
        for i in 0..1000u32 {
            let r = bus.try_write(64, 4, |f| {
                // Incremental: the previous write's pixel is still there.
                if i > 0 {
                    assert_eq!(
                        f.data[((i - 1) % 256) as usize],
                        1,
                        "write {i} lost the previous picture"
                    );
                }
                f.data[(i % 256) as usize] = 1;
                let mut d = Damage::new();
                d.add(Rect::new((i % 256) / 4, 0, 1, 1));
                d
            });
            assert_eq!(r, WriteOutcome::Published);
        }
        assert_eq!(bus.stats().published, 1000);
    }

    /// Spare capacity marks a buffer: the first time a render sees a slot it reserves
    /// `SPARE` bytes beyond the frame; a buffer still carrying them is the same allocation,
    /// recycled. A freshly allocated copy (`Vec::clone`) has exactly the frame's length, so an
    /// allocator that hands back the same address cannot make a new buffer look recycled.
    fn count_fresh_buffers(mut write: impl FnMut(u32, &mut dyn FnMut(&mut Frame))) -> usize {
        const SPARE: usize = 4096;
        let mut fresh = 0;
        for i in 0..1000u32 {
            write(i, &mut |f: &mut Frame| {
                if f.data.capacity() < f.data.len() + SPARE {
                    fresh += 1;
                    f.data.reserve_exact(SPARE);
                }
            });
        }
        fresh
    }

    #[test]
    fn slot_buffers_are_recycled_not_reallocated() {
        let bus = FrameBus::new();
        let fresh = count_fresh_buffers(|i, mark| {
            let r = bus.try_write(64, 4, |f| {
                mark(f);
                f.data[(i % 256) as usize] = i as u8;
                let mut d = Damage::new();
                d.add(Rect::new(i % 64, 0, 1, 1));
                d
            });
            assert_eq!(r, WriteOutcome::Published);
        });
        assert!(
            fresh <= DEFAULT_SLOTS,
            "{fresh} newly allocated slot buffers in 1000 writes (at most one per slot)"
        );

        // The same through `publish` (whole frames copied in).
        let bus = FrameBus::new();
        let src = frame(64, 4, 1);
        bus.publish(src.clone(), &damage(Rect::new(0, 0, 1, 1)));
        let fresh = count_fresh_buffers(|_, mark| {
            let r = bus.try_write(64, 4, |f| {
                mark(f);
                Damage::new()
            });
            assert_eq!(r, WriteOutcome::Unchanged);
            assert_eq!(
                bus.publish(src.clone(), &damage(Rect::new(0, 0, 1, 1))),
                WriteOutcome::Published
            );
        });
        assert!(
            fresh <= DEFAULT_SLOTS,
            "publish: {fresh} newly allocated buffers"
        );
    }

    /// Tiny pseudo-random numbers (no dependency): xorshift.
    fn rng(seed: &mut u64) -> u32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 16) as u32
    }

    /// Slots brought up to date by copying only what changed: against a reference picture,
    /// with readers holding frames for a while (so slots fall several versions behind, some
    /// past the damage history) and the size changing now and then.
    #[test]
    fn partial_syncs_always_give_the_newest_picture() {
        let bus = FrameBus::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let (mut w, mut h) = (48u32, 32u32);
        let mut reference = Frame::new(w, h);
        let mut held: Vec<Arc<Frame>> = Vec::new();
        for i in 0..3000u32 {
            if i % 700 == 699 {
                (w, h) = (w + 8, h + 4);
                reference = Frame::new(w, h);
            }
            let n = 1 + rng(&mut seed) % 3;
            let rects: Vec<Rect> = (0..n)
                .map(|_| {
                    let x = rng(&mut seed) % w;
                    let y = rng(&mut seed) % h;
                    Rect::new(x, y, 1 + rng(&mut seed) % 12, 1 + rng(&mut seed) % 6)
                })
                .collect();
            let value = (i % 251) as u8 + 1;
            let r = bus.try_write(w, h, |f| {
                assert_eq!(
                    f.data, reference.data,
                    "write {i} did not start from the newest picture"
                );
                let mut d = Damage::new();
                for r in &rects {
                    let Some(c) = r.clamp_to(w, h) else { continue };
                    for y in c.y..c.bottom() {
                        for x in c.x..c.right() {
                            let o = y as usize * f.stride + x as usize * 4;
                            f.data[o..o + 4].fill(value);
                        }
                    }
                    d.add(c);
                }
                d
            });
            if r == WriteOutcome::RingFull {
                held.clear();
                continue;
            }
            for rc in &rects {
                let Some(c) = rc.clamp_to(w, h) else { continue };
                for y in c.y..c.bottom() {
                    for x in c.x..c.right() {
                        let o = y as usize * reference.stride + x as usize * 4;
                        reference.data[o..o + 4].fill(value);
                    }
                }
            }
            assert_eq!(bus.latest().unwrap().data, reference.data, "publish {i}");
            // Readers: hold the newest frame now and then, for up to 20 publishes.
            if rng(&mut seed).is_multiple_of(5) && held.is_empty() {
                held.push(bus.latest().unwrap());
            } else if rng(&mut seed).is_multiple_of(20) {
                held.clear();
            }
        }
        assert!(bus.stats().published > 2500);
    }

    /// A one-pixel change costs a one-pixel copy, not a whole frame.
    #[test]
    fn syncing_a_slot_copies_only_what_changed() {
        let (w, h) = (256u32, 256u32);
        let bus = FrameBus::new();
        bus.try_write(w, h, |_| Damage::full(w, h));
        // Every slot gets the first picture once (their initial contents are unknown).
        for _ in 0..DEFAULT_SLOTS {
            bus.try_write(w, h, |f| {
                f.data[4] ^= 1;
                damage(Rect::new(1, 0, 1, 1))
            });
        }
        let before = bus.stats().sync_bytes;
        for i in 0..300u32 {
            bus.try_write(w, h, |f| {
                f.data[(i % 1024) as usize * 4] = 1;
                let mut d = Damage::new();
                d.add(Rect::new(i % 256, i / 256, 1, 1));
                d
            });
        }
        let per_publish = (bus.stats().sync_bytes - before) / 300;
        // Each slot is two publishes behind: two one-pixel rectangles.
        assert!(
            per_publish <= 2 * 4,
            "{per_publish} bytes copied per publish (the frame is {} bytes)",
            w * h * 4
        );
    }

    #[test]
    fn empty_damage_publishes_nothing() {
        let bus = FrameBus::new();
        let sub = bus.subscribe();
        bus.try_write(8, 8, |_| Damage::full(8, 8));
        let _ = sub.try_next();
        assert_eq!(
            bus.try_write(8, 8, |_| Damage::new()),
            WriteOutcome::Unchanged
        );
        assert!(sub.try_next().is_none());
        assert_eq!(bus.stats().unchanged, 1);
    }

    #[test]
    fn concurrent_readers_never_see_a_torn_frame() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let bus = FrameBus::new();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for _ in 0..4 {
            let sub = bus.subscribe();
            let (stop, seen) = (stop.clone(), seen.clone());
            readers.push(std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    if let Some(u) = sub.try_next() {
                        let v = u.frame.data[0];
                        assert!(u.frame.data.iter().all(|b| *b == v), "torn frame");
                        seen.fetch_add(1, Relaxed);
                    }
                    std::thread::yield_now();
                }
            }));
        }
        // Write at least 5000 frames, and on until the readers (who may be scheduled late on
        // a loaded machine) have checked a good number of them; bounded in time.
        let (mut writes, mut full) = (0u64, 0u64);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while (writes < 5000 || seen.load(Relaxed) < 200) && std::time::Instant::now() < deadline {
            let v = (writes % 251) as u8;
            if bus.try_write(64, 64, |f| {
                fill(f, v);
                Damage::full(64, 64)
            }) == WriteOutcome::RingFull
            {
                full += 1;
            }
            writes += 1;
            if writes % 64 == 0 {
                std::thread::yield_now();
            }
        }
        stop.store(true, Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(seen.load(Relaxed) > 0, "no reader ever ran");
        assert_eq!(bus.stats().dropped_ring_full, full);
        assert_eq!(bus.stats().published + full, writes);
    }
}
