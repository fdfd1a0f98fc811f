//! `/init` of the scanoutd test guest: a Linux kernel plus a one-program initramfs (built by
//! `scripts/build-test-guest`) that animates the framebuffer with
//! [`scanoutd_demo::guest::GuestScene`] and echoes the keys typed on the console.
//!
//! As PID 1 it mounts /proc, /sys and /dev, finds `/dev/fb0`'s geometry in sysfs, puts
//! `/dev/tty1` in raw mode and then draws frame after frame at `scanoutd.fps=` (kernel command
//! line, default 30), writing only what changed and the frame-number strip last. Status goes to
//! the console (the serial port in the tests). It never exits as PID 1: the kernel would panic.
//!
//! Outside a VM the same program runs against any file as framebuffer (`--fb`, `--sysfs`,
//! `--tty`, `--frames`), which is how its own tests check what it writes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use scanoutd_demo::guest::{GuestScene, Typed, GUEST_FPS};
use scanoutd_demo::STRIPS_HEIGHT;
use scanoutd_types::{Frame, Rect};

#[derive(Debug)]
struct Options {
    fb: PathBuf,
    sysfs: PathBuf,
    tty: PathBuf,
    fps: u32,
    frames: Option<u64>,
    init: bool,
}

fn usage() -> &'static str {
    "scanoutd-testguest: the test guest's /init (animates the framebuffer, echoes keys)\n\
     \n\
     Usage: scanoutd-testguest [--fb PATH] [--sysfs DIR] [--tty PATH] [--fps N] [--frames N]\n\
     \n\
       --fb PATH     framebuffer device or file to draw into (default /dev/fb0)\n\
       --sysfs DIR   directory with virtual_size, bits_per_pixel, stride (default\n\
                     /sys/class/graphics/fb0)\n\
       --tty PATH    where typed bytes are read from (default /dev/tty1; raw mode if a tty)\n\
       --fps N       frames per second (default: scanoutd.fps= on the kernel command line, else 30)\n\
       --frames N    stop after N frames (default: run forever)\n\
     \n\
     As PID 1 it first mounts /proc, /sys and /dev (devtmpfs) and never exits.\n\
     \n\
     On the host, to get the exact picture of one frame (what tests compare clients with):\n\
       scanoutd-testguest --render-frame N [--size WxH] [--typed TEXT] --out FILE.ppm\n\
     and where the video window is (prints X Y W H):\n\
       scanoutd-testguest --video-rect [--size WxH]\n\
     and which guest frame near N a picture's video window is closest to (PSNR, prints JSON):\n\
       scanoutd-testguest --match PICTURE.ppm --frame N [--before 45] [--after 5]\n"
}

/// A binary PPM (P6, maxval 255) as (width, height, RGB bytes).
fn parse_ppm(data: &[u8]) -> Result<(u32, u32, &[u8]), String> {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < data.len() && (data[i].is_ascii_whitespace() || data[i] == b'#') {
            if data[i] == b'#' {
                while i < data.len() && data[i] != b'\n' {
                    i += 1;
                }
            }
            i += 1;
        }
        let start = i;
        while i < data.len() && !data[i].is_ascii_whitespace() {
            i += 1;
        }
        if start == i {
            return Err("truncated PPM header".into());
        }
        fields.push(std::str::from_utf8(&data[start..i]).map_err(|_| "bad PPM header")?);
    }
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("bad PPM number {s:?}"))
    };
    if fields[0] != "P6" || num(fields[3])? != 255 {
        return Err("not a binary PPM with maxval 255".into());
    }
    let (w, h) = (num(fields[1])?, num(fields[2])?);
    let body = data.get(i + 1..).ok_or("truncated PPM")?;
    let need = w as usize * h as usize * 3;
    if body.len() < need {
        return Err(format!("PPM holds {} of {need} bytes", body.len()));
    }
    Ok((w, h, &body[..need]))
}

/// PSNR (dB) of `rect` of an RGB picture against the same rectangle of a BGRx frame.
fn psnr_rect(rgb: &[u8], frame: &Frame, r: Rect) -> f64 {
    let mut sse = 0u64;
    for y in r.y..r.y + r.h {
        let a = &rgb[(y as usize * frame.width as usize + r.x as usize) * 3..];
        let b = &frame.data[y as usize * frame.stride + r.x as usize * 4..];
        for x in 0..r.w as usize {
            for c in 0..3 {
                let d = i64::from(a[x * 3 + c]) - i64::from(b[x * 4 + 2 - c]);
                sse += (d * d) as u64;
            }
        }
    }
    if sse == 0 {
        return f64::INFINITY;
    }
    let mse = sse as f64 / (u64::from(r.w) * u64::from(r.h) * 3) as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// The frame in `named - before ..= named + after` whose video window is closest to the
/// picture's: (PSNR against `named`, best frame, its PSNR).
fn best_match(
    rgb: &[u8],
    w: u32,
    h: u32,
    named: u32,
    before: u32,
    after: u32,
) -> Result<(f64, u32, f64), String> {
    let scene = GuestScene::new(w, h).ok_or_else(|| format!("size {w}x{h} is not a guest size"))?;
    let video = scene.video_rect();
    let typed = Typed::default();
    let mut named_psnr = 0.0;
    let mut best = (named, f64::NEG_INFINITY);
    for n in named.saturating_sub(before)..=named.saturating_add(after) {
        let f = scanoutd_demo::guest::render_guest_frame(w, h, n, &typed).ok_or("render failed")?;
        let p = psnr_rect(rgb, &f, video);
        if n == named {
            named_psnr = p;
        }
        if p > best.1 {
            best = (n, p);
        }
    }
    Ok((named_psnr, best.0, best.1))
}

fn match_frame(args: &[String]) -> Result<(), String> {
    let (mut pic, mut named, mut before, mut after) = (None, None, 45u32, 5u32);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let mut num = |what: &str| -> Result<u32, String> {
            val()?.parse().map_err(|_| format!("{what}: not a number"))
        };
        match a.as_str() {
            "--match" => pic = Some(PathBuf::from(val()?)),
            "--frame" => named = Some(num("--frame")?),
            "--before" => before = num("--before")?.min(1000),
            "--after" => after = num("--after")?.min(1000),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let (pic, named) = pic.zip(named).ok_or("--match needs --frame")?;
    let data = std::fs::read(&pic).map_err(|e| format!("{}: {e}", pic.display()))?;
    let (w, h, rgb) = parse_ppm(&data)?;
    let (p_named, best, p_best) = best_match(rgb, w, h, named, before, after)?;
    let j = |p: f64| {
        if p.is_finite() {
            format!("{p:.2}")
        } else {
            "99".into()
        }
    };
    println!(
        "{{\"named\": {named}, \"psnr_named\": {}, \"best\": {best}, \"psnr_best\": {}}}",
        j(p_named),
        j(p_best)
    );
    Ok(())
}

/// `--render-frame`: write the scene of one frame as a binary PPM.
fn render_to_ppm(args: &[String]) -> Result<(), String> {
    let (mut n, mut size, mut typed, mut out) = (None, (1024u32, 768u32), Typed::default(), None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--render-frame" => {
                n = Some(
                    val()?
                        .parse::<u32>()
                        .map_err(|_| "--render-frame: not a number")?,
                )
            }
            "--size" => {
                let v = val()?;
                size = v
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                    .ok_or_else(|| format!("--size {v:?}: expected WxH"))?;
            }
            "--typed" => val()?.bytes().for_each(|b| typed.push(b)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--video-rect" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.iter().any(|a| a == "--video-rect") {
        let scene = GuestScene::new(size.0, size.1)
            .ok_or_else(|| format!("size {}x{} is outside 640x480..8192x8192", size.0, size.1))?;
        let v = scene.video_rect();
        println!("{} {} {} {}", v.x, v.y, v.w, v.h);
        return Ok(());
    }
    let (n, out) = n.zip(out).ok_or("--render-frame needs --out")?;
    let f = scanoutd_demo::guest::render_guest_frame(size.0, size.1, n, &typed)
        .ok_or_else(|| format!("size {}x{} is outside 640x480..8192x8192", size.0, size.1))?;
    let mut ppm = format!("P6\n{} {}\n255\n", f.width, f.height).into_bytes();
    for y in 0..f.height as usize {
        for p in f.data[y * f.stride..y * f.stride + f.width as usize * 4].chunks_exact(4) {
            ppm.extend_from_slice(&[p[2], p[1], p[0]]);
        }
    }
    std::fs::write(&out, ppm).map_err(|e| format!("{}: {e}", out.display()))
}

fn parse_args(args: &[String], cmdline: &str) -> Result<Options, String> {
    let mut o = Options {
        fb: "/dev/fb0".into(),
        sysfs: "/sys/class/graphics/fb0".into(),
        tty: "/dev/tty1".into(),
        fps: cmdline_fps(cmdline).unwrap_or(GUEST_FPS),
        frames: None,
        init: std::process::id() == 1,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--fb" => o.fb = val()?.into(),
            "--sysfs" => o.sysfs = val()?.into(),
            "--tty" => o.tty = val()?.into(),
            "--fps" => {
                o.fps = val()?
                    .parse()
                    .ok()
                    .filter(|f| (1..=240).contains(f))
                    .ok_or("--fps must be 1..240")?
            }
            "--frames" => o.frames = Some(val()?.parse().map_err(|_| "--frames: not a number")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// `scanoutd.fps=N` from the kernel command line.
fn cmdline_fps(cmdline: &str) -> Option<u32> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("scanoutd.fps="))
        .and_then(|v| v.parse().ok())
        .filter(|f| (1..=240).contains(f))
}

/// What sysfs says about the framebuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    width: u32,
    height: u32,
    bits_per_pixel: u32,
    stride: usize,
}

fn read_attr(dir: &Path, name: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(name))
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{}: {e}", dir.join(name).display()))
}

fn read_geometry(dir: &Path) -> Result<Geometry, String> {
    let size = read_attr(dir, "virtual_size")?;
    let (w, h) = size
        .split_once(',')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or_else(|| format!("virtual_size {size:?} is not W,H"))?;
    let bpp: u32 = read_attr(dir, "bits_per_pixel")?
        .parse()
        .map_err(|_| "bits_per_pixel is not a number")?;
    let stride: usize = read_attr(dir, "stride")?
        .parse()
        .map_err(|_| "stride is not a number")?;
    if ![16, 24, 32].contains(&bpp) {
        return Err(format!(
            "{bpp} bits per pixel is not supported (16, 24, 32)"
        ));
    }
    if stride < w as usize * (bpp as usize / 8) {
        return Err(format!("stride {stride} is too small for {w} pixels"));
    }
    Ok(Geometry {
        width: w,
        height: h,
        bits_per_pixel: bpp,
        stride,
    })
}

/// Convert one row of BGRx pixels into the framebuffer's format.
fn convert_row(bgrx: &[u8], bpp: u32, out: &mut Vec<u8>) {
    out.clear();
    match bpp {
        32 => out.extend_from_slice(bgrx),
        24 => bgrx
            .chunks_exact(4)
            .for_each(|p| out.extend_from_slice(&p[..3])),
        _ => bgrx.chunks_exact(4).for_each(|p| {
            let v =
                (u16::from(p[2]) >> 3) << 11 | (u16::from(p[1]) >> 2) << 5 | u16::from(p[0]) >> 3;
            out.extend_from_slice(&v.to_le_bytes());
        }),
    }
}

/// Write `rect` of `frame` to the framebuffer.
fn write_rect(
    fb: &File,
    g: &Geometry,
    frame: &Frame,
    r: Rect,
    row: &mut Vec<u8>,
) -> io::Result<()> {
    let bytes_pp = g.bits_per_pixel as usize / 8;
    for y in r.y..r.y + r.h {
        let start = y as usize * frame.stride + r.x as usize * 4;
        convert_row(
            &frame.data[start..start + r.w as usize * 4],
            g.bits_per_pixel,
            row,
        );
        let off = y as usize * g.stride + r.x as usize * bytes_pp;
        fb.write_all_at(row, off as u64)?;
    }
    Ok(())
}

fn mount_filesystems() {
    use rustix::mount::{mount, MountFlags};
    for (src, dir, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        let _ = std::fs::create_dir_all(dir);
        if let Err(e) = mount(src, dir, fs, MountFlags::empty(), None) {
            log(&format!("mount {fs} on {dir}: {e}"));
        }
    }
}

fn log(msg: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "testguest: {msg}");
    let _ = out.flush();
}

/// Read typed bytes on a thread; raw mode (no echo, no line buffering) when `path` is a tty.
fn spawn_keyboard(path: &Path) -> mpsc::Receiver<u8> {
    let (tx, rx) = mpsc::sync_channel(256);
    let path = path.to_owned();
    let spawned = thread::Builder::new().name("keys".into()).spawn(move || {
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return log(&format!("{}: {e}; no key echo", path.display())),
        };
        if let Ok(mut t) = rustix::termios::tcgetattr(&f) {
            t.make_raw();
            if let Err(e) =
                rustix::termios::tcsetattr(&f, rustix::termios::OptionalActions::Now, &t)
            {
                log(&format!("raw mode on {}: {e}", path.display()));
            }
            // Hide the console's text cursor so it does not blink over the picture.
            if let Ok(mut w) = OpenOptions::new().write(true).open(&path) {
                let _ = w.write_all(b"\x1b[?25l");
            }
        }
        let mut buf = [0u8; 64];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    for b in &buf[..n] {
                        // Full queue: the drawing loop is far behind; dropping a key is better
                        // than blocking the console.
                        let _ = tx.try_send(*b);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return log(&format!("reading {}: {e}", path.display())),
            }
        }
    });
    if let Err(e) = spawned {
        log(&format!("no keyboard thread: {e}"));
    }
    rx
}

fn run(o: &Options) -> Result<(), String> {
    // The framebuffer driver may still be probing when init starts.
    let wait = Duration::from_secs(if o.init { 10 } else { 0 });
    let deadline = Instant::now() + wait;
    let g = loop {
        match read_geometry(&o.sysfs) {
            Ok(g) => break g,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut scene = GuestScene::new(g.width, g.height).ok_or_else(|| {
        format!(
            "framebuffer {}x{} is too small (need 640x480)",
            g.width, g.height
        )
    })?;
    let fb = OpenOptions::new()
        .write(true)
        .open(&o.fb)
        .map_err(|e| format!("{}: {e}", o.fb.display()))?;
    let keys = spawn_keyboard(&o.tty);
    log(&format!(
        "{} {}x{} {} bpp stride {}, {} fps",
        o.fb.display(),
        g.width,
        g.height,
        g.bits_per_pixel,
        g.stride,
        o.fps
    ));

    let mut frame = Frame::new(g.width, g.height);
    let mut typed = Typed::default();
    let mut row = Vec::with_capacity(g.stride);
    let start = Instant::now();
    let (mut drawn, mut last_report, mut drawn_at_report) = (0u64, start, 0u64);
    let mut last_no = None;
    loop {
        let mut key_changed = false;
        while let Ok(b) = keys.try_recv() {
            typed.push(b);
            key_changed = true;
            log(&format!("key 0x{b:02x} (count {})", typed.count));
        }
        let elapsed = start.elapsed();
        let frame_no = (elapsed.as_micros() * u128::from(o.fps) / 1_000_000) as u32;
        if last_no != Some(frame_no) || key_changed {
            let damage = scene.render(&mut frame, frame_no, &typed);
            // The strips last: a picture whose frame strip says N is all of frame N.
            let (strips, body): (Vec<Rect>, Vec<Rect>) =
                damage.rects().iter().partition(|r| r.y < STRIPS_HEIGHT);
            for r in body.into_iter().chain(strips) {
                write_rect(&fb, &g, &frame, r, &mut row)
                    .map_err(|e| format!("writing {}: {e}", o.fb.display()))?;
            }
            last_no = Some(frame_no);
            drawn += 1;
            if o.frames.is_some_and(|n| drawn >= n) {
                log(&format!(
                    "{drawn} frames drawn, last frame number {frame_no}"
                ));
                return Ok(());
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            let secs = last_report.elapsed().as_secs_f64();
            log(&format!(
                "frame {frame_no}: {:.1} frames/s drawn",
                (drawn - drawn_at_report) as f64 / secs
            ));
            (last_report, drawn_at_report) = (Instant::now(), drawn);
        }
        let next = Duration::from_micros((u64::from(frame_no) + 1) * 1_000_000 / u64::from(o.fps));
        let now = start.elapsed();
        // Wake early enough to see keys promptly, at the latest at the next frame.
        thread::sleep(next.saturating_sub(now).min(Duration::from_millis(10)));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--match") {
        if let Err(e) = match_frame(&args) {
            eprintln!("scanoutd-testguest: {e}");
            std::process::exit(2);
        }
        return;
    }
    if args
        .iter()
        .any(|a| a == "--render-frame" || a == "--video-rect")
    {
        if let Err(e) = render_to_ppm(&args) {
            eprintln!("scanoutd-testguest: {e}");
            std::process::exit(2);
        }
        return;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let opts = match parse_args(&args, &cmdline) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{}", usage());
            return;
        }
        Err(e) => {
            eprintln!("scanoutd-testguest: {e}\n\n{}", usage());
            std::process::exit(2);
        }
    };
    if opts.init {
        mount_filesystems();
    }
    let result = run(&opts);
    if let Err(e) = &result {
        log(&format!("error: {e}"));
    }
    if opts.init {
        // PID 1 must not exit.
        loop {
            thread::sleep(Duration::from_secs(3600));
        }
    }
    if result.is_err() {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_frame_is_found_and_scored() {
        let (w, h) = (800, 600);
        let f = scanoutd_demo::guest::render_guest_frame(w, h, 100, &Typed::default()).unwrap();
        let mut ppm = format!("P6\n# test\n{w} {h}\n255\n").into_bytes();
        for p in f.data.chunks_exact(4) {
            ppm.extend_from_slice(&[p[2], p[1], p[0]]);
        }
        let (pw, ph, rgb) = parse_ppm(&ppm).unwrap();
        assert_eq!((pw, ph), (w, h));
        let (named, best, p) = best_match(rgb, w, h, 110, 20, 2).unwrap();
        assert_eq!(best, 100);
        assert!(p.is_infinite() && named < 25.0, "{named} {p}");
        assert!(parse_ppm(b"P6\n2 2\n255\n\x00").is_err());
        assert!(parse_ppm(b"P5\n1 1\n255\n\x00").is_err());
    }

    #[test]
    fn fps_from_the_kernel_command_line() {
        assert_eq!(cmdline_fps("console=ttyS0 scanoutd.fps=60 quiet"), Some(60));
        assert_eq!(cmdline_fps("scanoutd.fps=0"), None);
        assert_eq!(cmdline_fps("scanoutd.fps=x"), None);
        assert_eq!(cmdline_fps(""), None);
    }

    #[test]
    fn rows_convert_to_each_depth() {
        let px = [0x10u8, 0x80, 0xF0, 0]; // B G R X
        let mut out = Vec::new();
        convert_row(&px, 32, &mut out);
        assert_eq!(out, px);
        convert_row(&px, 24, &mut out);
        assert_eq!(out, [0x10, 0x80, 0xF0]);
        convert_row(&px, 16, &mut out);
        let v = (0xF0u16 >> 3) << 11 | (0x80 >> 2) << 5 | 0x10 >> 3;
        assert_eq!(out, v.to_le_bytes());
    }

    #[test]
    fn bad_geometry_is_refused() {
        let dir = std::env::temp_dir().join(format!("tg-geom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let put = |n: &str, v: &str| std::fs::write(dir.join(n), v).unwrap();
        put("virtual_size", "800,600\n");
        put("bits_per_pixel", "32\n");
        put("stride", "3200\n");
        assert_eq!(
            read_geometry(&dir),
            Ok(Geometry {
                width: 800,
                height: 600,
                bits_per_pixel: 32,
                stride: 3200
            })
        );
        put("stride", "100\n");
        assert!(read_geometry(&dir).unwrap_err().contains("too small"));
        put("bits_per_pixel", "8\n");
        assert!(read_geometry(&dir).unwrap_err().contains("not supported"));
        put("virtual_size", "garbage");
        assert!(read_geometry(&dir).unwrap_err().contains("not W,H"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
