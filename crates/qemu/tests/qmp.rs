//! Peer-to-peer mode against a real QEMU: `qemu-system-x86_64 -display dbus,p2p=yes` with two
//! QMP sockets, one for [`QemuDisplay::connect_qmp`] (`getfd` + `add_client @dbus-display`) and
//! one for the test's own commands (QEMU serves one client per QMP socket at a time). No bus.
//! Also the shared-memory path (`Listener.Unix.Map`, QEMU ≥ 9.2) against the inline one.
//! Skipped, with the reason printed, when `qemu-system-x86_64` is missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use scanoutd_qemu::{
    list_consoles, CloseReason, ConnectOptions, ConsoleSelection, InputSink, QemuDisplay,
    QemuEndpoint, QemuError, QemuStats,
};
use scanoutd_ring::FrameBus;
use scanoutd_types::{InputEvent, MouseButton};

macro_rules! require_qemu {
    () => {
        if let Some(reason) = missing(&[QEMU]) {
            scanoutd_testkit::require::skip("qemu", &reason);
            return;
        }
    };
}

/// A VM in p2p mode: `display.sock` is for scanoutd, `qmp.sock` for the test.
struct P2pVm {
    // Field order is drop order: QEMU first, then the files.
    qemu: Proc,
    display_qmp: PathBuf,
    test_qmp: PathBuf,
    extra: Vec<String>,
    dir: TempDir,
}

impl P2pVm {
    fn start(tag: &str, extra: &[&str]) -> P2pVm {
        let dir = TempDir::new(tag);
        let display_qmp = dir.0.join("display.sock");
        let test_qmp = dir.0.join("qmp.sock");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let qemu = Self::spawn(&dir, &display_qmp, &test_qmp, &extra);
        P2pVm {
            qemu,
            display_qmp,
            test_qmp,
            extra,
            dir,
        }
    }

    fn spawn(dir: &TempDir, display_qmp: &Path, test_qmp: &Path, extra: &[String]) -> Proc {
        let a = format!("unix:{},server=on,wait=off", display_qmp.display());
        let b = format!("unix:{},server=on,wait=off", test_qmp.display());
        let mut args = vec!["-display", "dbus,p2p=yes", "-qmp", &a, "-qmp", &b];
        args.extend(extra.iter().map(String::as_str));
        let qemu = spawn_qemu(&args, &dir.0.join("qemu.log"));
        wait_for_socket(display_qmp, Duration::from_secs(10));
        qemu
    }

    /// Kill QEMU and start a new one on the same sockets.
    fn restart(&mut self) {
        self.qemu.kill();
        // The dead QEMU's sockets stay behind; the new one replaces them (wait for its own).
        let _ = std::fs::remove_file(&self.display_qmp);
        let _ = std::fs::remove_file(&self.test_qmp);
        self.qemu = Self::spawn(&self.dir, &self.display_qmp, &self.test_qmp, &self.extra);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("qemu.log")
    }

    fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn connect_with(&self, bus: FrameBus, opts: ConnectOptions) -> QemuDisplay {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = QemuDisplay::connect_qmp(&self.display_qmp, bus.clone(), opts.clone());
            match tokio::time::timeout(Duration::from_secs(30), attempt).await {
                Ok(Ok(d)) => return d,
                // The socket file exists a moment before QEMU listens on it.
                Ok(Err(QemuError::QmpConnect { .. })) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => panic!("connect failed: {e}\nqemu log:\n{}", self.qemu_log()),
                Err(_) => panic!("connect timed out\nqemu log:\n{}", self.qemu_log()),
            }
        }
    }

    async fn connect(&self, bus: FrameBus) -> QemuDisplay {
        self.connect_with(bus, ConnectOptions::default()).await
    }

    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.test_qmp)
    }
}

/// Let SeaBIOS reach its last screen, freeze the guest (the text cursor blinks on the virtual
/// clock), and compare the newest frame with QEMU's screendump.
async fn assert_equals_screendump(vm: &P2pVm, qmp: &mut Qmp, bus: &FrameBus) -> (u32, u32) {
    settle(bus, Duration::from_millis(300), Duration::from_secs(20)).await;
    let (diff, fw, fh, pw, ph) = compare_with_screendump(&vm.dir.0, qmp, bus).await;
    assert_eq!(
        (fw, fh),
        (pw, ph),
        "frame size differs from QEMU's screendump"
    );
    assert_eq!(diff, Some(0), "frame differs from QEMU's screendump");
    let frame = bus.latest().expect("frame");
    // Nothing in these screens is all black: the picture really arrived.
    assert!((0..fh).any(|y| (0..fw).any(|x| frame.pixel(x, y) != 0)));
    (fw, fh)
}

/// p2p + shared memory: SeaBIOS's text screen comes through `ScanoutMap` (QEMU 10 allocates
/// its shadow surfaces as memfds), equals the screendump; a VBE mode whose surface is the VGA
/// memory itself (32 bpp) comes inline, a converted one (16 bpp) shared again. Each equals the
/// screendump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_frames_equal_qemu_screendump_through_shared_memory() {
    require_qemu!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let t0 = Instant::now();
    let vm = P2pVm::start("map", &["-trace", "dbus_can_share_map"]);
    let bus = FrameBus::new();
    let display = vm.connect(bus.clone()).await;
    let t_connect = t0.elapsed();
    assert_eq!(display.vm_name(), "scanoutd-test");
    assert_eq!(display.console_label(), "VGA");
    assert_eq!(display.owner(), "", "no bus in p2p mode");
    assert!(matches!(display.endpoint(), QemuEndpoint::Qmp(_)));
    let first = first_frame(&bus, Duration::from_secs(20)).await;
    eprintln!(
        "connected in {t_connect:?}, first frame {}x{} after {:?}",
        first.width,
        first.height,
        t0.elapsed()
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut qmp = vm.qmp();
    qmp.execute(r#"{"execute":"stop"}"#);
    let (w, h) = assert_equals_screendump(&vm, &mut qmp, &bus).await;
    let stats = display.stats();
    eprintln!("text mode {w}x{h}: {stats:?}");
    assert_eq!((w, h), (720, 400), "SeaBIOS's text mode");
    // QEMU saw the interface and used it.
    wait_for_log(&vm.log_path(), "can_share_map: 1", 1).await;
    assert!(stats.map_scanouts >= 1, "no ScanoutMap: {stats:?}");
    assert!(stats.map_updates >= 1, "no UpdateMap: {stats:?}");
    assert!(stats.shared_memory);
    assert_eq!(stats.frame_errors, 0);

    // 32 bpp: the surface is the VGA memory, which QEMU cannot share: inline Scanout.
    let before = display.stats();
    qmp.vbe_mode(800, 600, 32);
    frame_of_size(&bus, 800, 600, Duration::from_secs(20)).await;
    assert_equals_screendump(&vm, &mut qmp, &bus).await;
    let s = display.stats();
    eprintln!("800x600x32: {s:?}");
    assert!(!s.shared_memory, "a VRAM surface came as shared memory?");
    assert!(s.scanouts > before.scanouts);
    assert_eq!(s.map_scanouts, before.map_scanouts);

    // 16 bpp: converted into a shadow surface of QEMU's own, shared again.
    let before = display.stats();
    qmp.vbe_mode(640, 480, 16);
    frame_of_size(&bus, 640, 480, Duration::from_secs(20)).await;
    assert_equals_screendump(&vm, &mut qmp, &bus).await;
    let s = display.stats();
    eprintln!("640x480x16: {s:?}, {:?} in all", t0.elapsed());
    assert!(s.shared_memory);
    assert!(s.map_scanouts > before.map_scanouts);
    assert_eq!(s.frame_errors, 0);
}

/// p2p with the shared-memory interface not offered: QEMU falls back to inline Scanout /
/// Update, and the picture is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_inline_frames_equal_qemu_screendump() {
    require_qemu!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let vm = P2pVm::start("inline", &["-trace", "dbus_can_share_map"]);
    let bus = FrameBus::new();
    let opts = ConnectOptions {
        shared_memory: false,
        ..ConnectOptions::default()
    };
    let display = vm.connect_with(bus.clone(), opts).await;
    let _ = first_frame(&bus, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut qmp = vm.qmp();
    qmp.execute(r#"{"execute":"stop"}"#);
    let (w, h) = assert_equals_screendump(&vm, &mut qmp, &bus).await;
    let stats: QemuStats = display.stats();
    eprintln!("{w}x{h}: {stats:?}");
    wait_for_log(&vm.log_path(), "can_share_map: 0", 1).await;
    assert_eq!((stats.map_scanouts, stats.map_updates), (0, 0));
    assert!(!stats.shared_memory);
    assert!(stats.scanouts >= 1);
    assert_eq!(stats.frame_errors, 0);
}

/// Keys typed reach QEMU's keyboard over the p2p connection (QEMU's trace shows the qnums).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_keys_reach_qemu() {
    require_qemu!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let vm = P2pVm::start("keys", &["-trace", "dbus_kbd_*", "-trace", "dbus_mouse_*"]);
    let bus = FrameBus::new();
    let display = vm.connect(bus.clone()).await;
    let _ = first_frame(&bus, Duration::from_secs(20)).await;
    let sink = display.input();
    for (scancode, pressed) in [(0x1E, true), (0x1E, false), (0x148, true), (0x148, false)] {
        sink.input(InputEvent::Key { scancode, pressed });
    }
    sink.input(InputEvent::MouseMotion { dx: 3, dy: 4 });
    wait_for_log(&vm.log_path(), "dbus_mouse_rel_motion", 1).await;
    let log = vm.qemu_log();
    let got: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("dbus_kbd") || l.starts_with("dbus_mouse"))
        .collect();
    assert_eq!(
        got,
        [
            "dbus_kbd_press keycode 30",
            "dbus_kbd_release keycode 30",
            "dbus_kbd_press keycode 200",
            "dbus_kbd_release keycode 200",
            "dbus_mouse_rel_motion dx=3, dy=4",
        ],
        "QEMU trace:\n{log}"
    );
    let s = display.stats();
    assert_eq!((s.input_sent, s.input_failed, s.input_dropped), (5, 0, 0));
}

/// Two graphic consoles (std VGA with SeaBIOS, a secondary-vga showing QEMU's "not
/// initialized" placeholder) over one peer-to-peer connection: each console feeds its own
/// bus with its own picture, equal to QEMU's screendump of that device; pointer positions go
/// to the console their display names, keys to the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_two_consoles_each_feed_their_own_bus() {
    require_qemu!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let vm = P2pVm::start(
        "heads",
        &[
            "-device",
            "secondary-vga,id=video1",
            "-trace",
            "input_event_rel",
            "-trace",
            "input_event_btn",
            "-trace",
            "input_event_key_qcode",
        ],
    );
    let endpoint = QemuEndpoint::Qmp(vm.display_qmp.clone());
    // Listing is an add_client of its own; the socket file appears a moment before QEMU
    // listens on it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let consoles = loop {
        match list_consoles(&endpoint, &ConnectOptions::default()).await {
            Ok(c) => break c,
            Err(QemuError::QmpConnect { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("listing consoles: {e}\nqemu log:\n{}", vm.qemu_log()),
        }
    };
    let graphic: Vec<(u32, &str)> = consoles
        .iter()
        .filter(|c| c.is_graphic())
        .map(|c| (c.id, c.label.as_str()))
        .collect();
    assert_eq!(graphic, [(0, "VGA"), (1, "video1")], "{consoles:?}");
    assert_eq!(
        ConsoleSelection::AllGraphic.resolve(&consoles).unwrap(),
        [0, 1]
    );

    let buses = [FrameBus::new(), FrameBus::new()];
    let display = tokio::time::timeout(
        Duration::from_secs(30),
        QemuDisplay::connect_consoles(
            &endpoint,
            ConsoleSelection::AllGraphic,
            buses.to_vec(),
            ConnectOptions::default(),
        ),
    )
    .await
    .expect("connect timed out")
    .expect("connect");
    let ids: Vec<u32> = display.heads().iter().map(|h| h.console_id()).collect();
    assert_eq!(ids, [0, 1]);
    assert_eq!(display.console_id(), 0);
    for bus in &buses {
        let _ = first_frame(bus, Duration::from_secs(20)).await;
    }

    // Input: positions on display 1 then display 0, each with a button held (the guest's
    // mouse is relative: the first position on a display only sets the origin); one on a
    // display that does not exist; a key.
    let sink = display.input();
    let pos = |x, y, display| InputEvent::MouseMove { x, y, display };
    let button = |button, pressed| InputEvent::Button { button, pressed };
    let events = [
        pos(10, 10, 1),
        button(MouseButton::Left, true),
        pos(13, 14, 1),
        button(MouseButton::Left, false),
        pos(50, 50, 0),
        button(MouseButton::Right, true),
        pos(55, 52, 0),
        button(MouseButton::Right, false),
        pos(1, 1, 7),
        InputEvent::Key {
            scancode: 0x1E,
            pressed: true,
        },
        InputEvent::Key {
            scancode: 0x1E,
            pressed: false,
        },
    ];
    for ev in events {
        sink.input(ev);
    }
    wait_for_log(&vm.log_path(), "input_event_key_qcode", 2).await;
    let log = vm.qemu_log();
    let got: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("input_event"))
        .collect();
    assert_eq!(
        got,
        [
            "input_event_btn con 1, button left, down 1",
            "input_event_rel con 1, axis x, value 3",
            "input_event_rel con 1, axis y, value 4",
            "input_event_btn con 1, button left, down 0",
            "input_event_btn con 0, button right, down 1",
            "input_event_rel con 0, axis x, value 5",
            "input_event_rel con 0, axis y, value 2",
            "input_event_btn con 0, button right, down 0",
            "input_event_key_qcode con 0, key qcode a, down 1",
            "input_event_key_qcode con 0, key qcode a, down 0",
        ],
        "QEMU trace:\n{log}"
    );
    let s = display.heads()[1].stats();
    assert_eq!((s.input_sent, s.input_skipped), (8, 1));

    // Pictures: once SeaBIOS is in text mode, freeze the guest (its cursor blinks), then each
    // bus equals the screendump of its own device.
    frame_of_size(&buses[0], 720, 400, Duration::from_secs(20)).await;
    let mut qmp = vm.qmp();
    qmp.execute(r#"{"execute":"stop"}"#);
    let mut sizes = Vec::new();
    for (bus, device) in buses.iter().zip([None, Some("video1")]) {
        let (diff, fw, fh, pw, ph) =
            compare_device_with_screendump(&vm.dir.0, &mut qmp, bus, device).await;
        assert_eq!((fw, fh), (pw, ph), "console {device:?}: size");
        assert_eq!(diff, Some(0), "console {device:?}: pixels");
        sizes.push((fw, fh));
    }
    assert_eq!(sizes, [(720, 400), (640, 480)]);
    let (a, b) = (buses[0].latest().unwrap(), buses[1].latest().unwrap());
    assert!(a.data != b.data);
    drop((a, b));
    display.close().await;
}

/// Killing QEMU ends the link (closed() fires, the last frame stays); a new QEMU on the same
/// QMP path is reached again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_killing_qemu_closes_the_link_and_a_new_one_connects() {
    require_qemu!();
    init_logs();
    let _serial = VM_LOCK.lock().await;
    let mut vm = P2pVm::start("kill", &[]);
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
        CloseReason::ListenerClosed | CloseReason::PeerClosed
    ));
    assert!(display.is_closed());
    let frame = bus.latest().expect("the last frame stays");
    assert_eq!((frame.width, frame.height), (w, h));
    drop(frame);
    drop(display);

    // QEMU comes back on the same QMP path (as after a VM restart).
    vm.restart();
    let published = bus.published();
    let display = vm.connect(bus.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while bus.published() == published {
        assert!(Instant::now() < deadline, "no frame from the new QEMU");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!display.is_closed());
    display.close().await;
}

/// What goes wrong before any D-Bus: each a clear error, each quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qmp_errors_are_reported() {
    init_logs();
    let dir = TempDir::new("qerr");
    let opts = ConnectOptions {
        call_timeout: Duration::from_millis(500),
        ..ConnectOptions::default()
    };
    let connect = |path: PathBuf| {
        let opts = opts.clone();
        async move {
            let t = Instant::now();
            let r = QemuDisplay::connect_qmp(&path, FrameBus::new(), opts).await;
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "took {:?}",
                t.elapsed()
            );
            r.expect_err("not a QEMU")
        }
    };

    // No socket at all.
    let err = connect(dir.0.join("nothing.sock")).await;
    eprintln!("no socket: {err}");
    assert!(matches!(err, QemuError::QmpConnect { .. }), "{err}");
    assert!(err.to_string().contains("nothing.sock"), "{err}");

    // A socket that speaks something else.
    let chatty = dir.0.join("chatty.sock");
    let listener = std::os::unix::net::UnixListener::bind(&chatty).expect("bind");
    let server = std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let err = connect(chatty).await;
    eprintln!("not QMP: {err}");
    assert!(matches!(err, QemuError::NotQmp { .. }), "{err}");
    assert!(err.to_string().contains("SSH-2.0"), "{err}");
    let _ = server.join();

    // A socket that says nothing (or a QMP socket another client holds): bounded.
    let silent = dir.0.join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).expect("bind");
    let err = connect(silent).await;
    eprintln!("silent: {err}");
    assert!(matches!(err, QemuError::QmpTimeout { .. }), "{err}");
    assert!(err.to_string().contains("-qmp of its own"), "{err}");

    // A real QEMU without the D-Bus display: QEMU's own error text comes back.
    if let Some(reason) = missing(&[QEMU]) {
        scanoutd_testkit::require::skip("qemu", &format!("the rest of this test: {reason}"));
        return;
    }
    let _serial = VM_LOCK.lock().await;
    let qmp_path = dir.0.join("none.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp_path.display());
    let _qemu = spawn_qemu(
        &["-display", "none", "-qmp", &qmp_arg],
        &dir.0.join("qemu.log"),
    );
    wait_for_socket(&qmp_path, Duration::from_secs(10));
    let opts = ConnectOptions::default();
    let err = QemuDisplay::connect_qmp(&qmp_path, FrameBus::new(), opts)
        .await
        .expect_err("no D-Bus display");
    eprintln!("no D-Bus display: {err}");
    assert!(matches!(err, QemuError::AddClient { .. }), "{err}");
    assert!(
        err.to_string().contains("D-Bus display is not in use"),
        "{err}"
    );
}
