//! Against a real QEMU: a private `dbus-daemon`, then `qemu-system-x86_64 -display dbus` on it
//! (TCG, no disk: SeaBIOS ends at "No bootable device"). Every process is started by the test
//! and killed by PID in a Drop guard; every file lives in a temporary directory removed at the
//! end. Skipped, with the reason printed, when `qemu-system-x86_64` or `dbus-daemon` is missing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use scanoutd_qemu::{CloseReason, ConnectOptions, InputSink, LinkState, QemuDisplay, QemuError};
use scanoutd_ring::FrameBus;
use scanoutd_types::{InputEvent, MouseButton};

const DBUS_DAEMON: &str = "dbus-daemon";

macro_rules! require_tools {
    () => {
        if let Some(reason) = missing(&[QEMU, DBUS_DAEMON]) {
            scanoutd_testkit::require::skip("qemu", &reason);
            return;
        }
    };
}

struct Vm {
    // Field order is drop order: QEMU first, then the bus, then the files.
    qemu: Proc,
    _dbus: Proc,
    address: String,
    qmp_path: PathBuf,
    dir: TempDir,
}

impl Vm {
    fn start(tag: &str, extra_qemu_args: &[&str]) -> Vm {
        let dir = TempDir::new(tag);
        let dbus = start_bus(&dir.0);
        let address = format!("unix:path={}", dir.0.join("bus").display());
        let qmp_path = dir.0.join("qmp.sock");
        let display = format!("dbus,addr={address}");
        let qmp = format!("unix:{},server=on,wait=off", qmp_path.display());
        let mut args = vec!["-display", &display, "-qmp", &qmp];
        args.extend_from_slice(extra_qemu_args);
        let qemu = spawn_qemu(&args, &dir.0.join("qemu.log"));
        Vm {
            qemu,
            _dbus: dbus,
            address,
            qmp_path,
            dir,
        }
    }

    fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("qemu.log")).unwrap_or_default()
    }

    async fn connect(&self, bus: FrameBus) -> QemuDisplay {
        let opts = ConnectOptions {
            wait_for_qemu: Duration::from_secs(20),
            ..ConnectOptions::default()
        };
        match tokio::time::timeout(
            Duration::from_secs(30),
            QemuDisplay::connect(&self.address, bus, opts),
        )
        .await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => panic!("connect failed: {e}\nqemu log:\n{}", self.qemu_log()),
            Err(_) => panic!("connect timed out\nqemu log:\n{}", self.qemu_log()),
        }
    }

    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.qmp_path)
    }
}

/// A private session bus: `dbus-daemon` with a minimal config in the test's directory. Ready
/// once it prints its address.
fn start_bus(dir: &Path) -> Proc {
    let socket = dir.join("bus");
    let config = dir.join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        ),
    )
    .expect("write bus config");
    let mut child = Command::new(DBUS_DAEMON)
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbus-daemon");
    eprintln!("started dbus-daemon (pid {})", child.id());
    let stdout = child.stdout.take().expect("piped stdout");
    let mut proc = Proc {
        name: "dbus-daemon",
        child,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.starts_with("unix:") => proc,
        other => {
            proc.kill();
            panic!("dbus-daemon did not start: {other:?}");
        }
    }
}

/// QEMU's screendump against the bus's newest frame (see [`common::compare_with_screendump`]).
async fn compare_with_screendump(
    vm: &Vm,
    qmp: &mut Qmp,
    bus: &FrameBus,
) -> (Option<usize>, u32, u32, u32, u32) {
    common::compare_with_screendump(&vm.dir.0, qmp, bus).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_equals_qemu_screendump() {
    require_tools!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let t0 = Instant::now();
    let vm = Vm::start("shot", &[]);
    let bus = FrameBus::new();
    let display = vm.connect(bus.clone()).await;
    let t_connect = t0.elapsed();
    assert_eq!(display.vm_name(), "scanoutd-test");
    assert_eq!(display.console_label(), "VGA");
    let first = first_frame(&bus, Duration::from_secs(20)).await;
    let t_first = t0.elapsed();
    eprintln!(
        "connected in {t_connect:?}, first frame {}x{} after {t_first:?}",
        first.width, first.height
    );
    drop(first);
    // Let SeaBIOS reach its last screen, then freeze the guest: the text cursor blinks on the
    // virtual clock, which stops with the VM, so the picture holds still.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut qmp = vm.qmp();
    qmp.execute(r#"{"execute":"stop"}"#);
    settle(&bus, Duration::from_millis(500), Duration::from_secs(20)).await;
    let t_settled = t0.elapsed();

    let (diff, fw, fh, pw, ph) = compare_with_screendump(&vm, &mut qmp, &bus).await;
    let stats = display.stats();
    eprintln!(
        "stats: {stats:?}; pixman format {:#x}; settled after {t_settled:?}, compared after {:?}",
        stats.pixman_format,
        t0.elapsed()
    );
    assert_eq!(
        (fw, fh),
        (pw, ph),
        "frame size differs from QEMU's screendump"
    );
    assert_eq!(diff, Some(0), "frame differs from QEMU's screendump");
    assert_eq!(stats.frame_errors, 0);
    // The surface handed out is the same picture.
    let surface = display.surface();
    let frame = bus.latest().expect("frame");
    assert_eq!((surface.width(), surface.height()), (fw, fh));
    assert!((0..fh).all(|y| (0..fw).all(|x| surface.pixel(x, y) == Some(frame.pixel(x, y)))));
    // Nothing in SeaBIOS's screens is all black: the picture really arrived.
    assert!((0..fh).any(|y| (0..fw).any(|x| frame.pixel(x, y) != 0)));
    let log = vm.qemu_log();
    if !log.trim().is_empty() {
        eprintln!("qemu log:\n{log}");
    }
}

/// Switch the std VGA to a Bochs VBE graphics mode through QEMU's monitor (port writes), as a
/// guest driver would: QEMU switches surfaces and sends a full Scanout of the new size, whose
/// content (text-mode VRAM seen as pixels) must again equal QEMU's screendump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vbe_mode_switch_equals_qemu_screendump() {
    require_tools!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let t0 = Instant::now();
    let vm = Vm::start("vbe", &[]);
    let bus = FrameBus::new();
    let display = vm.connect(bus.clone()).await;
    let _ = first_frame(&bus, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut qmp = vm.qmp();
    qmp.execute(r#"{"execute":"stop"}"#);
    // VBE_DISPI: index port 0x1ce, data port 0x1cf; 4 = ENABLE, 1 = XRES, 2 = YRES, 3 = BPP.
    // Growing, shrinking, and depths QEMU converts (16 and 8 bpp) or shares (32 bpp). ENABLE
    // 0xc1 = enabled, linear framebuffer, keep VRAM: the old contents show up as pixels.
    for (width, height, bpp) in [(800u32, 600u32, 32u32), (640, 480, 16), (1024, 768, 8)] {
        let before = display.stats();
        for (index, value) in [(4, 0), (1, width), (2, height), (3, bpp), (4, 0xc1)] {
            for (port, v) in [(0x1ce, index), (0x1cf, value)] {
                qmp.execute(&format!(
                    r#"{{"execute":"human-monitor-command","arguments":{{"command-line":"o /h {port:#x} {v:#x}"}}}}"#
                ));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let f = bus.latest().expect("frame");
            if (f.width, f.height) == (width, height) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no {width}x{height} frame after the mode switch"
            );
            drop(f);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        settle(&bus, Duration::from_millis(300), Duration::from_secs(20)).await;
        let (diff, fw, fh, pw, ph) = compare_with_screendump(&vm, &mut qmp, &bus).await;
        let stats = display.stats();
        let frame = bus.latest().expect("frame");
        let lit = (0..fh)
            .flat_map(|y| (0..fw).map(move |x| (x, y)))
            .filter(|&(x, y)| frame.pixel(x, y) != 0)
            .count();
        eprintln!(
            "{width}x{height}x{bpp}: {stats:?} (scanouts before: {}), format {:#x}, {lit} non-black pixels, {:?} in all",
            before.scanouts,
            stats.pixman_format,
            t0.elapsed()
        );
        assert_eq!((fw, fh, pw, ph), (width, height, width, height));
        assert_eq!(diff, Some(0), "frame differs from QEMU's screendump");
        assert!(lit > 0, "the kept VRAM should show");
        assert!(
            stats.scanouts > before.scanouts,
            "the mode switch came as a Scanout"
        );
        assert_eq!(stats.frame_errors, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_reaches_qemu_without_errors() {
    require_tools!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let vm = Vm::start("input", &["-trace", "dbus_kbd_*", "-trace", "dbus_mouse_*"]);
    let bus = FrameBus::new();
    let display = vm.connect(bus.clone()).await;
    let _ = first_frame(&bus, Duration::from_secs(20)).await;
    let sink = display.input();
    let key = |scancode, pressed| InputEvent::Key { scancode, pressed };
    let button = |button, pressed| InputEvent::Button { button, pressed };
    let events = [
        key(0x1E, true), // A
        key(0x1E, false),
        key(0x148, true), // Up (E0 48)
        key(0x148, false),
        key(0x11D, true), // RCtrl (E0 1D)
        key(0x11D, false),
        key(0x21D, true), // Pause
        key(0x21D, false),
        key(0x80, true),                 // not a make code: skipped
        InputEvent::KeyModifiers(0b010), // not forwarded: skipped
        InputEvent::MouseMotion { dx: 5, dy: -3 },
        // The PS/2 mouse is relative: the first absolute move only sets the origin...
        InputEvent::MouseMove {
            x: 10,
            y: 10,
            display: 0,
        },
        button(MouseButton::Left, true),
        // ...the next one becomes RelMotion(10, 15).
        InputEvent::MouseMove {
            x: 20,
            y: 25,
            display: 0,
        },
        button(MouseButton::Left, false),
        button(MouseButton::WheelUp, true),
        button(MouseButton::WheelUp, false),
        button(MouseButton::Extra, true),
        button(MouseButton::Extra, false),
    ];
    for ev in events {
        sink.input(ev);
    }
    let (want_sent, want_skipped) = (16, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = display.stats();
        if s.input_sent + s.input_failed + s.input_skipped >= want_sent + want_skipped {
            break;
        }
        assert!(Instant::now() < deadline, "input not processed: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = display.stats();
    eprintln!("input stats: {s:?}");
    // QEMU's trace of what it received: the qnums (E0 xx -> 0x80|xx, Pause -> 0xC6), the
    // relative motion made from the two absolute moves, QEMU's button numbers.
    let want = [
        "dbus_kbd_press keycode 30",
        "dbus_kbd_release keycode 30",
        "dbus_kbd_press keycode 200",
        "dbus_kbd_release keycode 200",
        "dbus_kbd_press keycode 157",
        "dbus_kbd_release keycode 157",
        "dbus_kbd_press keycode 198",
        "dbus_kbd_release keycode 198",
        "dbus_mouse_rel_motion dx=5, dy=-3",
        "dbus_mouse_press button 0",
        "dbus_mouse_rel_motion dx=10, dy=15",
        "dbus_mouse_release button 0",
        "dbus_mouse_press button 3",
        "dbus_mouse_release button 3",
        "dbus_mouse_press button 6",
        "dbus_mouse_release button 6",
    ];
    wait_for_log(&vm, "dbus_mouse_release button 6", 1).await;
    let log = vm.qemu_log();
    let got: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("dbus_kbd") || l.starts_with("dbus_mouse"))
        .collect();
    assert_eq!(got, want, "QEMU trace:\n{log}");
    assert_eq!(s.input_failed, 0, "QEMU refused input");
    assert_eq!(s.input_sent, want_sent);
    assert_eq!(s.input_skipped, want_skipped);
    assert_eq!(s.input_dropped, 0);
    // QEMU is still fine: it answers QMP.
    let status = vm.qmp().execute(r#"{"execute":"query-status"}"#);
    assert!(status.contains("running"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_qemu_closes_the_link_and_keeps_the_frame() {
    require_tools!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let mut vm = Vm::start("kill", &[]);
    let bus = FrameBus::new();
    let display = vm.connect(bus.clone()).await;
    let frame = first_frame(&bus, Duration::from_secs(20)).await;
    let (w, h) = (frame.width, frame.height);
    drop(frame);
    assert!(!display.is_closed());
    let t = Instant::now();
    vm.qemu.kill();
    let reason = tokio::time::timeout(Duration::from_secs(10), display.closed())
        .await
        .expect("closed() did not resolve within 10 s of killing QEMU");
    eprintln!("link closed after {:?}: {reason}", t.elapsed());
    assert!(matches!(
        reason,
        CloseReason::ListenerClosed | CloseReason::QemuLeftBus
    ));
    assert!(display.is_closed());
    let frame = bus.latest().expect("the last frame stays");
    assert_eq!((frame.width, frame.height), (w, h));
    // Input after the end is dropped (counted), never blocks or panics.
    let sink = display.input();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..1000 {
        sink.input(InputEvent::MouseMotion { dx: 1, dy: 1 });
    }
    assert!(display.stats().input_dropped > 0);
    drop(display);
}

/// Wait (bounded) until QEMU's log has `count` lines containing `needle`.
async fn wait_for_log(vm: &Vm, needle: &str, count: usize) {
    common::wait_for_log(&vm.dir.0.join("qemu.log"), needle, count).await
}

/// QEMU's own trace events (`-trace`, printed to its log) show the listener going away when
/// the display is dropped, and a new one registering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_display_unregisters_and_a_new_one_connects() {
    require_tools!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let vm = Vm::start(
        "drop",
        &[
            "-trace",
            "dbus_registered_listener",
            "-trace",
            "dbus_listener_vanished",
        ],
    );
    let bus = FrameBus::new();
    let display = vm.connect(bus.clone()).await;
    let _ = first_frame(&bus, Duration::from_secs(20)).await;
    wait_for_log(&vm, "dbus_registered_listener", 1).await;
    assert!(!vm.qemu_log().contains("dbus_listener_vanished"));
    drop(display);
    wait_for_log(&vm, "dbus_listener_vanished", 1).await;
    // A new display on a new bus gets the whole picture again; `close` is the awaited drop.
    let bus2 = FrameBus::new();
    let display = vm.connect(bus2.clone()).await;
    let f = first_frame(&bus2, Duration::from_secs(20)).await;
    assert!(f.width > 0 && f.height > 0);
    assert!(!display.is_closed());
    let state = display.state();
    display.close().await;
    assert_eq!(*state.borrow(), LinkState::Closed(CloseReason::Local));
    wait_for_log(&vm, "dbus_listener_vanished", 2).await;
    eprintln!("qemu log:\n{}", vm.qemu_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_reported() {
    require_tools!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let dir = TempDir::new("err");
    let _bus = start_bus(&dir.0);
    let address = format!("unix:path={}", dir.0.join("bus").display());
    // No QEMU on the bus.
    let opts = ConnectOptions {
        wait_for_qemu: Duration::from_millis(300),
        ..ConnectOptions::default()
    };
    let t = Instant::now();
    let err = QemuDisplay::connect(&address, FrameBus::new(), opts)
        .await
        .expect_err("no QEMU");
    assert!(matches!(err, QemuError::NotOnBus { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // No bus at all.
    let err = QemuDisplay::connect(
        &format!("unix:path={}", dir.0.join("nothing").display()),
        FrameBus::new(),
        ConnectOptions::default(),
    )
    .await
    .expect_err("no bus");
    assert!(matches!(err, QemuError::DBus(_)), "{err}");
    drop(_bus);

    // A console that does not exist, on a real QEMU.
    let vm = Vm::start("console", &[]);
    let opts = ConnectOptions {
        wait_for_qemu: Duration::from_secs(20),
        console: Some(99),
        ..ConnectOptions::default()
    };
    let err = QemuDisplay::connect(&vm.address, FrameBus::new(), opts)
        .await
        .expect_err("console 99");
    assert!(matches!(err, QemuError::NoSuchConsole(99)), "{err}");
    eprintln!("errors: {err}");
}
