//! Helpers shared by the tests against a real QEMU (`qemu.rs`: bus mode, `qmp.rs`:
//! peer-to-peer mode). Every process is started by a test and killed by its PID in a Drop guard;
//! every file lives in a temporary directory removed at the end.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scanoutd_ring::FrameBus;
use scanoutd_types::Frame;

pub const QEMU: &str = "qemu-system-x86_64";

/// One VM at a time: the machine has two cores, and TCG timing should not depend on how many
/// tests run together.
pub static VM_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "scanoutd_qemu=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `Some(reason)` when one of `programs` is not installed.
pub fn missing(programs: &[&str]) -> Option<String> {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !in_path(p)).collect();
    (!missing.is_empty()).then(|| format!("not installed: {}", missing.join(", ")))
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Short: unix socket paths are limited to 108 bytes.
        let dir = std::env::temp_dir().join(format!("sq-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        eprintln!("stopping {} (pid {})", self.name, self.child.id());
        self.kill();
    }
}

/// Start `qemu-system-x86_64` with the test machine (pc, 64 MiB, std VGA, TCG, no disk:
/// SeaBIOS ends at "No bootable device") plus `args`; stdout and stderr go to `log`.
pub fn spawn_qemu(args: &[&str], log: &Path) -> Proc {
    let qemu_log = std::fs::File::create(log).expect("qemu log");
    let mut all = vec![
        "-machine",
        "pc",
        "-m",
        "64",
        "-nodefaults",
        "-vga",
        "std",
        "-accel",
        "tcg",
        "-name",
        "scanoutd-test",
    ];
    all.extend_from_slice(args);
    let child = Command::new(QEMU)
        .args(&all)
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone().expect("log fd"))
        .stderr(qemu_log)
        .spawn()
        .expect("start qemu");
    eprintln!(
        "started qemu (pid {}): {QEMU} {}",
        child.id(),
        all.join(" ")
    );
    Proc {
        name: "qemu",
        child,
    }
}

/// Wait (bounded) until a unix socket accepts connections at `path`.
pub fn wait_for_socket(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal QMP client (JSON lines over the unix socket).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("QMP connect {}: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        };
        let greeting = qmp.line();
        assert!(greeting.contains("\"QMP\""), "QMP greeting: {greeting}");
        qmp.execute(r#"{"execute":"qmp_capabilities"}"#);
        qmp
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("QMP read");
        assert!(!line.is_empty(), "QMP closed");
        line
    }

    /// Send a command and return its reply line (events in between are skipped).
    pub fn execute(&mut self, cmd: &str) -> String {
        self.writer
            .write_all(format!("{cmd}\n").as_bytes())
            .expect("QMP write");
        loop {
            let line = self.line();
            if line.contains("\"return\"") {
                return line;
            }
            assert!(!line.contains("\"error\""), "QMP {cmd} failed: {line}");
        }
    }

    /// Write to an I/O port through the human monitor, as a guest driver would.
    pub fn outw(&mut self, port: u16, value: u32) {
        self.execute(&format!(
            r#"{{"execute":"human-monitor-command","arguments":{{"command-line":"o /h {port:#x} {value:#x}"}}}}"#
        ));
    }

    /// Switch the std VGA to a Bochs VBE mode (VBE_DISPI: index port 0x1ce, data port 0x1cf;
    /// 4 = ENABLE, 1 = XRES, 2 = YRES, 3 = BPP; ENABLE 0xc1 = enabled, linear framebuffer,
    /// keep VRAM, so the old contents show up as pixels).
    pub fn vbe_mode(&mut self, width: u32, height: u32, bpp: u32) {
        for (index, value) in [(4, 0), (1, width), (2, height), (3, bpp), (4, 0xc1)] {
            self.outw(0x1ce, index);
            self.outw(0x1cf, value);
        }
    }
}

/// A binary PPM (P6, maxval 255): (width, height, RGB bytes).
pub fn read_ppm(path: &Path) -> (u32, u32, Vec<u8>) {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .expect("open ppm")
        .read_to_end(&mut bytes)
        .expect("read ppm");
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes[i] == b'#' {
            while bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&bytes[start..i]).into_owned());
    }
    i += 1; // the single whitespace after maxval
    assert_eq!(fields[0], "P6");
    assert_eq!(fields[3], "255");
    let w: u32 = fields[1].parse().expect("width");
    let h: u32 = fields[2].parse().expect("height");
    let data = bytes[i..].to_vec();
    assert_eq!(data.len(), (w * h * 3) as usize, "ppm size");
    (w, h, data)
}

/// How many pixels of `frame` differ from the PPM (RGB compared), or `None` on a size
/// mismatch.
pub fn diff_ppm(frame: &Frame, ppm: &(u32, u32, Vec<u8>)) -> Option<usize> {
    let (w, h, rgb) = ppm;
    if (frame.width, frame.height) != (*w, *h) {
        return None;
    }
    let mut bad = 0;
    for y in 0..*h {
        for x in 0..*w {
            let o = ((y * w + x) * 3) as usize;
            let want = u32::from_be_bytes([0, rgb[o], rgb[o + 1], rgb[o + 2]]);
            if frame.pixel(x, y) != want {
                bad += 1;
            }
        }
    }
    Some(bad)
}

/// Wait (bounded) until the bus has a frame.
pub async fn first_frame(bus: &FrameBus, within: Duration) -> std::sync::Arc<Frame> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(f) = bus.latest() {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "no frame from QEMU within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait (bounded) until the bus's newest frame has this size.
pub async fn frame_of_size(bus: &FrameBus, width: u32, height: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if bus
            .latest()
            .is_some_and(|f| (f.width, f.height) == (width, height))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {width}x{height} frame within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait (bounded) until no frame has been published for `quiet`.
pub async fn settle(bus: &FrameBus, quiet: Duration, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = bus.published();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = bus.published();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
        assert!(Instant::now() < deadline, "the picture never settled");
    }
}

/// Take QEMU's own screendump (into `dir`) and compare it with the bus's newest frame, a few
/// times if the picture moved in between. Returns (differing pixels, frame size, screendump
/// size).
pub async fn compare_with_screendump(
    dir: &Path,
    qmp: &mut Qmp,
    bus: &FrameBus,
) -> (Option<usize>, u32, u32, u32, u32) {
    compare_device_with_screendump(dir, qmp, bus, None).await
}

/// [`compare_with_screendump`] for the console of the display device with QOM id `device`
/// (head 0); `None`: QEMU's first console.
pub async fn compare_device_with_screendump(
    dir: &Path,
    qmp: &mut Qmp,
    bus: &FrameBus,
    device: Option<&str>,
) -> (Option<usize>, u32, u32, u32, u32) {
    let shot = dir.join(format!("shot-{}.ppm", device.unwrap_or("0")));
    let device = device.map_or(String::new(), |d| format!(r#","device":"{d}""#));
    let mut result = None;
    for attempt in 0..5 {
        qmp.execute(&format!(
            r#"{{"execute":"screendump","arguments":{{"filename":"{}"{device}}}}}"#,
            shot.display()
        ));
        // screendump refreshes the console first; let any update it caused arrive.
        settle(bus, Duration::from_millis(300), Duration::from_secs(10)).await;
        let ppm = read_ppm(&shot);
        let frame = bus.latest().expect("frame");
        let diff = diff_ppm(&frame, &ppm);
        eprintln!(
            "attempt {attempt}: frame {}x{} seq {}, screendump {}x{}, differing pixels {diff:?}",
            frame.width, frame.height, frame.seq, ppm.0, ppm.1
        );
        result = Some((diff, frame.width, frame.height, ppm.0, ppm.1));
        if diff == Some(0) {
            break;
        }
    }
    result.expect("compared")
}

/// Wait (bounded) until the file at `log` has `count` lines containing `needle`.
pub async fn wait_for_log(log: &Path, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| l.contains(needle)).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU never logged {needle:?} x{count}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
