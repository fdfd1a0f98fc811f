//! Latest-wins frame distribution between one source and many clients.
//!
//! [`FrameBus`] holds the newest frame a source published. Every client owns a
//! [`Subscriber`]; publishing never waits for any of them. Instead each subscriber
//! accumulates the damage of every frame it has not taken yet, so a client that reads slowly
//! gets fewer, larger updates of the newest content: nothing queues up, and memory per client
//! is one bounded [`Damage`] list plus a reference to the newest frame.
//!
//! (The 2–3 slot encoder ring of the video path will live here too.)
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use scanoutd_types::{Damage, Frame};
use tokio::sync::Notify;

/// What a subscriber takes: the newest frame and everything that changed since its last take.
#[derive(Debug, Clone)]
pub struct Update {
    pub frame: Arc<Frame>,
    /// Union of the damage of every frame published since the last take, clamped to the frame.
    pub damage: Damage,
    /// How many published frames were merged into this update beyond the first (0 when the
    /// subscriber kept up).
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

#[derive(Default)]
struct BusState {
    latest: Option<Arc<Frame>>,
    subscribers: Vec<Weak<SubShared>>,
    published: u64,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these short critical sections cannot leave the data
    // inconsistent in a way that matters (they only merge damage), so keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One source's frames, fanned out to any number of subscribers. Cheap to clone.
#[derive(Clone, Default)]
pub struct FrameBus {
    state: Arc<Mutex<BusState>>,
}

impl FrameBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publish a new frame with the damage relative to the previous one. Never blocks on
    /// subscribers: it merges the damage into each one's pending set and wakes it.
    pub fn publish(&self, frame: Arc<Frame>, damage: &Damage) {
        let mut st = lock(&self.state);
        let resized = st
            .latest
            .as_ref()
            .is_some_and(|old| old.width != frame.width || old.height != frame.height);
        let (w, h) = (frame.width, frame.height);
        st.latest = Some(frame);
        st.published += 1;
        st.subscribers.retain(|weak| {
            let Some(sub) = weak.upgrade() else {
                return false;
            };
            {
                let mut p = lock(&sub.pending);
                if resized {
                    p.resized = true;
                    p.damage = Damage::full(w, h);
                } else {
                    p.damage.merge(damage);
                    p.damage.clamp_to(w, h);
                }
                p.frames += 1;
            }
            sub.notify.notify_one();
            true
        });
    }

    /// The newest frame, if any was published.
    pub fn latest(&self) -> Option<Arc<Frame>> {
        lock(&self.state).latest.clone()
    }

    /// Frames published so far.
    pub fn published(&self) -> u64 {
        lock(&self.state).published
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
        if let Some(f) = &st.latest {
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
        let frame = st.latest.clone()?;
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
        let latest = lock(&self.state).latest.clone();
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
}
