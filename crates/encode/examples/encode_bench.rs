//! Encoder throughput and per-frame latency.
//!
//! ```text
//! cargo run --release -p scanoutd-encode --example encode_bench -- [spec] [frames] [WxH] [kbps]
//! ```
//!
//! Defaults: x264enc, 300 frames, 1280x720, 30 fps nominal, 4000 kbit/s. Frames are
//! pre-rendered moving test pictures, submitted as fast as the encoder takes them; each frame
//! is pulled before the next is submitted (the server's pattern), so fps = 1 / per-frame time.

use std::time::{Duration, Instant};

use scanoutd_encode::check::test_picture;
use scanoutd_encode::{builtin_specs, Encoder, EncoderConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("x264enc", String::as_str);
    let frames: u32 = args.get(1).map_or(Ok(300), |s| s.parse())?;
    let (width, height) = match args.get(2) {
        Some(s) => {
            let (w, h) = s.split_once('x').ok_or("size is WxH")?;
            (w.parse()?, h.parse()?)
        }
        None => (1280, 720),
    };
    let kbps: u32 = args.get(3).map_or(Ok(4000), |s| s.parse())?;

    let spec = builtin_specs()?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("no built-in spec {name}"))?;
    let cfg = EncoderConfig {
        width,
        height,
        fps: 30,
        bitrate_kbps: kbps,
    };
    // a handful of distinct pictures, cycled, so rendering is not measured
    let pictures: Vec<Vec<u8>> = (0..30)
        .map(|i| test_picture(width, height, i * 2))
        .collect();
    let stride = width as usize * 4;

    let mut enc = Encoder::new(&spec, &cfg)?;
    // warm-up: encoder initialisation happens on the first frame
    enc.encode(&pictures[0], stride, 0, false)?
        .ok_or("no output for the warm-up frame")?;

    let mut times: Vec<Duration> = Vec::with_capacity(frames as usize);
    let mut bytes = 0_usize;
    let mut keyframes = 0_u32;
    let start = Instant::now();
    for i in 1..=frames {
        let pic = &pictures[i as usize % pictures.len()];
        let f = enc
            .encode(pic, stride, u64::from(i) * 33, i % 100 == 0)?
            .ok_or_else(|| format!("no output for frame {i}"))?;
        times.push(f.encode_time);
        bytes += f.data.len();
        keyframes += u32::from(f.keyframe);
    }
    let wall = start.elapsed();
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{name} {width}x{height} {kbps} kbit/s: {frames} frames in {:.2} s = {:.1} fps",
        wall.as_secs_f64(),
        f64::from(frames) / wall.as_secs_f64()
    );
    println!(
        "per frame (submit → output): mean {:.2} ms, p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        ms(mean),
        ms(pct(0.5)),
        ms(pct(0.95)),
        ms(pct(1.0))
    );
    println!(
        "output: {:.1} kB/frame, {} keyframes ({} forced)",
        bytes as f64 / f64::from(frames) / 1000.0,
        keyframes,
        frames / 100
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
