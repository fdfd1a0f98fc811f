use super::*;

fn source(width: u32, height: u32, scene: Scene) -> DemoSource {
    DemoSource::new(DemoConfig {
        width,
        height,
        scene,
    })
    .unwrap()
}

fn covered(d: &Damage, x: u32, y: u32) -> bool {
    d.rects().iter().any(|r| r.contains(&Rect::new(x, y, 1, 1)))
}

/// Every pixel that differs between `before` and `after` lies inside `d`.
fn assert_damage_complete(before: &Frame, after: &Frame, d: &Damage, what: &str) {
    for y in 0..after.height {
        for x in 0..after.width {
            if before.pixel(x, y) != after.pixel(x, y) {
                assert!(
                    covered(d, x, y),
                    "{what}: ({x},{y}) changed outside damage {:?}",
                    d.rects()
                );
            }
        }
    }
}

fn key(code: u16) -> InputEvent {
    InputEvent::Key {
        scancode: code,
        pressed: true,
    }
}

fn move_to(x: u32, y: u32) -> InputEvent {
    InputEvent::MouseMove { x, y, display: 0 }
}

fn button(pressed: bool) -> InputEvent {
    InputEvent::Button {
        button: MouseButton::Left,
        pressed,
    }
}

/// Input to send before frame `i` of the scripted sequences.
fn script(i: u64) -> Vec<InputEvent> {
    match i {
        3 => vec![key(0x1E)],
        5 => vec![move_to(200, 150)],
        6 => vec![InputEvent::MouseMotion { dx: 7, dy: -3 }],
        9 => vec![button(true), key(0x11C)],
        10 => vec![move_to(20, 20)], // crosshair overlapping the strips
        12 => vec![
            button(false),
            InputEvent::Key {
                scancode: 0x11C,
                pressed: false,
            },
        ],
        14 => vec![move_to(5000, 5000)],
        17 => vec![InputEvent::MouseMotion {
            dx: -10_000,
            dy: -10_000,
        }],
        19 => vec![move_to(400, 300), key(0x21D)],
        _ => vec![],
    }
}

#[test]
fn new_validates_sizes() {
    for (w, h) in [
        (639, 480),
        (640, 479),
        (641, 480),
        (640, 481),
        (0, 0),
        (8194, 720),
        (1280, 8194),
        (u32::MAX, 720),
    ] {
        let err = DemoSource::new(DemoConfig {
            width: w,
            height: h,
            scene: Scene::Motion,
        })
        .unwrap_err();
        assert_eq!(
            err,
            DemoError::InvalidSize {
                width: w,
                height: h
            }
        );
        assert!(err.to_string().contains(&format!("{w}x{h}")));
    }
    for (w, h) in [
        (640, 480),
        (1280, 720),
        (1920, 1080),
        (8192, 8192),
        (642, 8192),
    ] {
        assert!(
            DemoSource::new(DemoConfig {
                width: w,
                height: h,
                scene: Scene::Still
            })
            .is_ok(),
            "{w}x{h}"
        );
    }
}

#[test]
fn scene_parses_and_displays() {
    assert_eq!("motion".parse::<Scene>(), Ok(Scene::Motion));
    assert_eq!("Still".parse::<Scene>(), Ok(Scene::Still));
    assert!("video".parse::<Scene>().is_err());
    for s in [Scene::Motion, Scene::Still] {
        assert_eq!(s.to_string().parse::<Scene>(), Ok(s));
    }
}

#[test]
fn first_render_paints_everything() {
    for scene in [Scene::Motion, Scene::Still] {
        let mut src = source(640, 480, scene);
        let mut f = Frame::new(640, 480);
        let d = src.render(&mut f, 0, 1_700_000_000_123);
        assert_eq!(d, Damage::full(640, 480));
        assert_eq!(f.seq, 1);
        assert_eq!(f.capture_ms, 1_700_000_000_123);
        assert_eq!(
            read_timestamp_strip(&f.data, 640, 480, f.stride),
            Some(1_700_000_000_123u64 as u32)
        );
        assert_eq!(
            read_input_strip(&f.data, 640, 480, f.stride),
            Some(InputStrip::default())
        );
        // Something was drawn well away from the strips (the desktop is not black).
        let non_black = (32..480)
            .step_by(7)
            .filter(|y| f.pixel(320, *y) != 0)
            .count();
        assert!(non_black > 50);
    }
}

#[test]
fn damage_is_complete_and_incremental_equals_full_repaint() {
    for (w, h) in [(640, 480), (1280, 720)] {
        let mut src = source(w, h, Scene::Motion);
        let sink = src.input_sink();
        let mut frame = Frame::new(w, h);
        let mut t = 0;
        for i in 0..24u64 {
            for ev in script(i) {
                sink.input(ev);
            }
            let before = frame.clone();
            let now = 1_000_000 + t * 3;
            let d = src.render(&mut frame, t, now);
            assert_eq!(frame.seq, i + 1);
            if i > 0 {
                assert_damage_complete(&before, &frame, &d, &format!("{w}x{h} frame {i}"));
            }
            // A fresh source in the same input state renders the same picture from scratch.
            let mut fresh = source(w, h, Scene::Motion);
            let fresh_sink = fresh.input_sink();
            for j in 0..=i {
                for ev in script(j) {
                    fresh_sink.input(ev);
                }
            }
            let mut reference = Frame::new(w, h);
            fresh.render(&mut reference, t, now);
            assert!(
                reference.data == frame.data,
                "{w}x{h} frame {i}: incremental picture differs"
            );
            // Irregular steps, one long jump.
            t += if i == 15 { 4_321 } else { 16 + i % 3 };
        }
    }
}

#[test]
fn motion_damage_is_small() {
    let (w, h) = (1280, 720);
    let mut src = source(w, h, Scene::Motion);
    let sink = src.input_sink();
    let mut frame = Frame::new(w, h);
    src.render(&mut frame, 0, 0);
    let mut t = 0;
    for i in 1..200u64 {
        for ev in script(i % 24) {
            sink.input(ev);
        }
        sink.input(move_to((i * 13 % 1280) as u32, (i * 7 % 720) as u32));
        t += if i == 100 { 10_000 } else { 16 };
        let d = src.render(&mut frame, t, 1_000 + t);
        assert!(!d.is_empty());
        assert!(
            d.area() * 4 < u64::from(w * h),
            "frame {i}: damage {} px: {:?}",
            d.area(),
            d.rects()
        );
        assert!(
            covered(&d, 0, 0) && covered(&d, STRIP_CELLS * STRIP_CELL - 1, STRIP_CELL - 1),
            "strip"
        );
    }
}

#[test]
fn video_block_changes_every_frame() {
    let mut src = source(640, 480, Scene::Motion);
    let mut f = Frame::new(640, 480);
    src.render(&mut f, 1_000, 0);
    let before = f.clone();
    let d = src.render(&mut f, 1_016, 16);
    let v = src.layout.video_rect(1_016);
    assert!(d.rects().iter().any(|r| r.contains(&v)));
    let changed = (v.y..v.bottom())
        .flat_map(|y| (v.x..v.right()).map(move |x| (x, y)))
        .filter(|(x, y)| before.pixel(*x, *y) != f.pixel(*x, *y))
        .count();
    assert!(
        changed as u64 * 2 > v.area(),
        "only {changed} video pixels changed"
    );
}

#[test]
fn still_scene_never_changes_after_first_render() {
    let mut src = source(800, 600, Scene::Still);
    let sink = src.input_sink();
    let mut f = Frame::new(800, 600);
    assert_eq!(src.render(&mut f, 5, 123_456), Damage::full(800, 600));
    let first = f.clone();
    for i in 1..20u64 {
        for ev in script(i) {
            sink.input(ev);
        }
        let d = src.render(&mut f, 5 + i * 16, 123_456 + i * 16);
        assert!(d.is_empty(), "render {i}: {:?}", d.rects());
        assert!(f.data == first.data, "render {i} changed pixels");
        assert_eq!(f.seq, i + 1);
    }
    assert_eq!(
        read_timestamp_strip(&f.data, 800, 600, f.stride),
        Some(123_456)
    );
    assert_eq!(
        read_input_strip(&f.data, 800, 600, f.stride),
        Some(InputStrip::default())
    );
}

fn assert_crosshair_at(f: &Frame, x: u32, y: u32, center: u32) {
    assert_eq!(f.pixel(x, y), center, "centre at ({x},{y})");
    for (ax, ay) in [(x + 6, y), (x - 6, y), (x, y + 6), (x, y - 6)] {
        assert_eq!(f.pixel(ax, ay), 0xFF_FFFF, "arm pixel ({ax},{ay})");
    }
    for (ax, ay) in [
        (x + 6, y + 1),
        (x - 6, y - 1),
        (x + 1, y + 6),
        (x - 1, y - 6),
    ] {
        assert_eq!(f.pixel(ax, ay), 0, "outline pixel ({ax},{ay})");
    }
}

#[test]
fn input_shows_on_next_motion_render() {
    let (w, h) = (1280, 720);
    let mut src = source(w, h, Scene::Motion);
    let sink = src.input_sink();
    let mut f = Frame::new(w, h);
    src.render(&mut f, 0, 0);
    let status = src.layout.status;

    sink.input(key(0x1C));
    sink.input(InputEvent::Key {
        scancode: 0x1C,
        pressed: false,
    });
    sink.input(move_to(300, 200));
    sink.input(button(true));
    let before = f.clone();
    let d = src.render(&mut f, 16, 16);
    let strip = read_input_strip(&f.data, w, h, f.stride).unwrap();
    assert_eq!(
        strip,
        InputStrip {
            last_key: 0x1C,
            x: 300,
            y: 200,
            button_down: true
        }
    );
    assert_crosshair_at(&f, 300, 200, 0xFF_2020);
    assert!(
        d.rects().iter().any(|r| r.contains(&status)),
        "status box in damage"
    );
    let status_changed = (status.y..status.bottom())
        .any(|y| (status.x..status.right()).any(|x| before.pixel(x, y) != f.pixel(x, y)));
    assert!(status_changed, "KEY text redrawn");

    sink.input(button(false));
    sink.input(InputEvent::MouseMotion { dx: 250, dy: 100 });
    sink.input(key(0x148));
    let d = src.render(&mut f, 32, 32);
    let strip = read_input_strip(&f.data, w, h, f.stride).unwrap();
    assert_eq!(
        strip,
        InputStrip {
            last_key: 0x148,
            x: 550,
            y: 300,
            button_down: false
        }
    );
    assert_crosshair_at(&f, 550, 300, 0xFF_FFFF);
    for r in [
        src.layout.cross_rect(&InputState {
            x: 300,
            y: 200,
            ..Default::default()
        }),
        src.layout.cross_rect(&src.input.snapshot()),
    ] {
        assert!(
            d.rects().iter().any(|d| d.contains(&r)),
            "crosshair box {r:?} in damage {:?}",
            d.rects()
        );
    }

    // Relative motion and absolute moves clamp to the frame.
    sink.input(InputEvent::MouseMotion {
        dx: 1_000_000,
        dy: 1_000_000,
    });
    src.render(&mut f, 48, 48);
    let strip = read_input_strip(&f.data, w, h, f.stride).unwrap();
    assert_eq!((strip.x, strip.y), (1279, 719));
    sink.input(InputEvent::MouseMotion {
        dx: -1_000_000,
        dy: 5,
    });
    src.render(&mut f, 64, 64);
    let strip = read_input_strip(&f.data, w, h, f.stride).unwrap();
    assert_eq!((strip.x, strip.y), (0, 719));
}

#[test]
fn crosshair_never_covers_the_strips() {
    let mut src = source(1280, 720, Scene::Motion);
    let sink = src.input_sink();
    let mut f = Frame::new(1280, 720);
    for (i, (x, y)) in [(8, 8), (100, 20), (600, 30), (33, 33)]
        .into_iter()
        .enumerate()
    {
        sink.input(move_to(x, y));
        sink.input(button(i % 2 == 0));
        src.render(&mut f, i as u64 * 16, 77_777);
        assert_eq!(
            read_timestamp_strip(&f.data, 1280, 720, f.stride),
            Some(77_777)
        );
        let s = read_input_strip(&f.data, 1280, 720, f.stride).unwrap();
        assert_eq!((s.x, s.y), (x as u16, y as u16));
        for yy in 0..STRIPS_HEIGHT {
            for xx in 0..INPUT_STRIP_CELLS * STRIP_CELL {
                let p = f.pixel(xx, yy);
                let in_strip = yy >= INPUT_STRIP_Y || xx < STRIP_CELLS * STRIP_CELL;
                assert!(
                    !in_strip || p == 0 || p == 0xFF_FFFF,
                    "({xx},{yy}) = {p:#08x}"
                );
            }
        }
    }
}

#[test]
fn foreign_or_odd_frames_are_repainted_fully() {
    let mut src = source(640, 480, Scene::Motion);
    let mut f = Frame::new(640, 480);
    src.render(&mut f, 0, 0);
    // A frame that is not the one last produced: full repaint.
    let mut other = Frame::new(640, 480);
    assert_eq!(src.render(&mut other, 16, 16), Damage::full(640, 480));
    assert_eq!(other.seq, 2);
    // Wrong size: replaced.
    let mut small = Frame::new(10, 10);
    assert_eq!(src.render(&mut small, 32, 32), Damage::full(640, 480));
    assert_eq!((small.width, small.height, small.seq), (640, 480, 3));
    // Continuing on it is incremental again.
    assert!(src.render(&mut small, 48, 48).area() < 640 * 480 / 2);
}

#[test]
fn strided_frames_render_like_tight_ones() {
    let (w, h) = (640, 480);
    let stride = w as usize * 4 + 96;
    let mut strided = Frame {
        stride,
        data: vec![0; stride * h as usize],
        ..Frame::new(w, h)
    };
    let mut tight = Frame::new(w, h);
    let mut a = source(w, h, Scene::Motion);
    let mut b = source(w, h, Scene::Motion);
    for i in 0..6u64 {
        a.input_sink().input(move_to(100 + i as u32 * 40, 200));
        b.input_sink().input(move_to(100 + i as u32 * 40, 200));
        a.render(&mut strided, i * 20, i);
        b.render(&mut tight, i * 20, i);
        for y in 0..h {
            for x in 0..w {
                assert_eq!(
                    strided.pixel(x, y),
                    tight.pixel(x, y),
                    "frame {i} ({x},{y})"
                );
            }
            // Row padding untouched.
            let pad =
                &strided.data[y as usize * stride + w as usize * 4..(y as usize + 1) * stride];
            assert!(pad.iter().all(|b| *b == 0));
        }
        assert_eq!(
            read_timestamp_strip(&strided.data, w, h, stride),
            Some(i as u32)
        );
    }
}

#[test]
fn animation_is_a_pure_function_of_time() {
    let mut a = source(1024, 768, Scene::Motion);
    let mut fa = Frame::new(1024, 768);
    for t in [0u64, 16, 33, 50] {
        a.render(&mut fa, t, 99);
    }
    let mut b = source(1024, 768, Scene::Motion);
    let mut fb = Frame::new(1024, 768);
    b.render(&mut fb, 50, 99);
    assert!(fa.data == fb.data);
    // The two shapes move at different speeds.
    let l = &a.layout;
    let (v0, v1) = (l.video_pos(1_000), l.video_pos(1_100));
    let (b0, b1) = (l.ball_pos(1_000), l.ball_pos(1_100));
    assert_ne!((v1.0 - v0.0).abs(), (b1.0 - b0.0).abs());
}

#[test]
fn pause_key_freezes_the_animation_but_not_the_clock_strip() {
    let mut src = source(1280, 720, Scene::Motion);
    let sink = src.input_sink();
    let mut f = Frame::new(1280, 720);
    src.render(&mut f, 0, 1_000);
    src.render(&mut f, 16, 1_016);
    sink.input(key(crate::PAUSE_KEY));
    sink.input(InputEvent::Key {
        scancode: crate::PAUSE_KEY,
        pressed: false,
    });
    // The render that sees the pause repaints the input overlay; after that only the
    // timestamp strip changes.
    src.render(&mut f, 33, 1_033);
    let before = f.clone();
    let d = src.render(&mut f, 50, 1_050);
    assert_damage_complete(&before, &f, &d, "paused");
    let strip = crate::strip::timestamp_rect(1280, 720);
    assert!(
        d.rects().iter().all(|r| strip.contains(r)),
        "paused damage {d:?} is only the strip"
    );
    assert_eq!(
        read_timestamp_strip(&f.data, 1280, 720, f.stride),
        Some(1_050)
    );
    let frozen = f.clone();
    for t in [500u64, 2_000] {
        src.render(&mut f, t, 1_000 + t);
    }
    let below = (32 * f.stride)..;
    assert_eq!(
        f.data[below.clone()],
        frozen.data[below.clone()],
        "nothing below the strips moved"
    );
    // Resume: the animation continues from where it stopped, not jumping ahead.
    sink.input(key(crate::PAUSE_KEY));
    let before = f.clone();
    let d = src.render(&mut f, 3_000, 4_000);
    assert_damage_complete(&before, &f, &d, "resumed");
    let mut fresh = source(1280, 720, Scene::Motion);
    let mut g = Frame::new(1280, 720);
    // Paused from t=33 to t=3000: animation time 33 + (3000 - 3000) = 33... shows t=33.
    fresh.render(&mut g, 33, 4_000);
    let from = 32 * 1280 * 4;
    let same = f.data[from..]
        .chunks(4)
        .zip(g.data[from..].chunks(4))
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        same * 100 / (1280 * 688) >= 95,
        "the scene resumed at its paused time"
    );
}
