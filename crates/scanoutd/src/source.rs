//! Runs the demo renderer on its own thread at a fixed frame rate and publishes its frames.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use scanoutd_demo::{DemoConfig, DemoSource, Scene};
use scanoutd_ring::FrameBus;
use scanoutd_types::{unix_ms, InputSink};

pub struct DemoRunner {
    /// Unix ms at which the animation clock is 0: frame `t_ms` = capture time − this, so any
    /// frame can be re-rendered from its timestamp strip (`scanoutd render-demo`).
    pub start_unix_ms: u64,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    input: Arc<dyn InputSink>,
}

impl DemoRunner {
    pub fn start(width: u32, height: u32, scene: Scene, fps: u32, bus: FrameBus) -> Result<Self> {
        let mut demo = DemoSource::new(DemoConfig {
            width,
            height,
            scene,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("invalid demo settings")?;
        let input = demo.input_sink();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let period = Duration::from_secs_f64(1.0 / f64::from(fps.max(1)));
        let start_unix_ms = unix_ms();
        let thread = std::thread::Builder::new()
            .name("demo-source".into())
            .spawn(move || {
                let start = Instant::now();
                let mut next = start;
                while !stop2.load(Ordering::Relaxed) {
                    let now_ms = unix_ms().max(start_unix_ms);
                    // Renders into a free ring slot holding a copy of the newest picture; when
                    // every slot is held by readers the frame is skipped (counted), never waited
                    // for. The demo renders by time, so nothing is lost.
                    bus.try_write(width, height, |f| {
                        demo.render(f, now_ms - start_unix_ms, now_ms)
                    });
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else if now - next > period {
                        // Fell behind (a loaded machine): skip rather than burst.
                        next = now;
                    }
                }
            })
            .context("spawning the demo thread")?;
        Ok(DemoRunner {
            start_unix_ms,
            stop,
            thread: Mutex::new(Some(thread)),
            input,
        })
    }

    pub fn input_sink(&self) -> Arc<dyn InputSink> {
        Arc::clone(&self.input)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for DemoRunner {
    fn drop(&mut self) {
        self.stop();
    }
}
