//! Render the demo scene, report render times, and write the last frame as a PPM.
//!
//! `cargo run --release -p scanoutd-demo --example render_ppm -- [WIDTHxHEIGHT] [FRAMES] [OUT.ppm]`

use std::time::Instant;

use scanoutd_demo::{read_timestamp_strip, DemoConfig, DemoSource, Scene};
use scanoutd_types::{Frame, InputEvent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (width, height) = match args.first() {
        Some(s) => {
            let (w, h) = s.split_once('x').ok_or("size must be WIDTHxHEIGHT")?;
            (w.parse()?, h.parse()?)
        }
        None => (1280, 720),
    };
    let frames: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(600);
    let out = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "demo.ppm".to_owned());

    let mut src = DemoSource::new(DemoConfig {
        width,
        height,
        scene: Scene::Motion,
    })?;
    let sink = src.input_sink();
    let mut frame = Frame::new(width, height);

    let start = Instant::now();
    src.render(&mut frame, 0, 1_700_000_000_000);
    let first = start.elapsed();

    let mut times = Vec::with_capacity(frames as usize);
    let mut area = 0u64;
    for i in 1..=frames {
        sink.input(InputEvent::MouseMove {
            x: (i * 7 % u64::from(width)) as u32,
            y: (200 + i % 300) as u32,
            display: 0,
        });
        if i % 50 == 0 {
            sink.input(InputEvent::Key {
                scancode: (0x10 + i / 50) as u16,
                pressed: true,
            });
        }
        let t = i * 1000 / 60;
        let start = Instant::now();
        let damage = src.render(&mut frame, t, 1_700_000_000_000 + t);
        times.push(start.elapsed());
        area += damage.area();
    }
    times.sort();
    let pct = |p: usize| times[(times.len() - 1) * p / 100];
    println!("{width}x{height}: first (full) render {first:?}");
    println!(
        "{frames} incremental renders: median {:?}, p99 {:?}, max {:?}; mean damage {:.1}% of the frame",
        pct(50),
        pct(99),
        times[times.len() - 1],
        100.0 * area as f64 / frames as f64 / (f64::from(width) * f64::from(height))
    );
    println!(
        "strip reads {:?}",
        read_timestamp_strip(&frame.data, width, height, frame.stride)
    );

    let mut ppm = format!("P6\n{width} {height}\n255\n").into_bytes();
    for y in 0..height as usize {
        for px in frame.data[y * frame.stride..][..width as usize * 4].chunks_exact(4) {
            ppm.extend_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    std::fs::write(&out, ppm)?;
    println!("wrote {out}");
    Ok(())
}
