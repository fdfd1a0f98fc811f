"""Two QEMU consoles served as two monitors, seen through the real spice-gtk client.

QEMU 10 runs on `-display dbus` with two graphic consoles: its std VGA (console 0, where
SeaBIOS ends at "No bootable device" in 720x400 text mode) and a `secondary-vga` with QOM id
`video1` (console 1; no guest driver sets it up, so QEMU shows its 640x480 "Guest has not
initialized the display" placeholder). scanoutd serves them as SPICE display channels 0 and 1:

* `--console all` on a D-Bus bus: spice-gtk opens display channels 0 and 1 (and cursor
  channel 1); each picture equals QEMU's QMP `screendump` of that console's device pixel for
  pixel (the VM stopped first, so nothing changes); `/snapshot.ppm?display=1` is console 1; a
  pointer move sent on display 1 reaches QEMU on console 1 and one on display 0 on console 0
  (QEMU's `input_event_*` trace names the console); keys go to console 0; a restarted QEMU
  is picked up again on both monitors.
* `--console 1,0` in peer-to-peer mode (one `add_client` connection, two listeners): the
  order is the monitor order, so display 0 shows console 1 and display 1 console 0.
"""

import os
import time

import pytest

import qemuvm
import spiceclient as sc
from require import need

SEABIOS_SIZE = (720, 400)      # console 0: SeaBIOS's text mode
PLACEHOLDER_SIZE = (640, 480)  # console 1: QEMU's "not initialized" placeholder


def two_console_args(display):
    """QEMU options: `display`, a second graphic console (secondary-vga `video1`), input
    traces (`input_event_rel/abs/btn/key_* con N, ...`) in the -D log."""
    return ["-m", "64", "-display", display, "-device", "secondary-vga,id=video1",
            "-trace", "input_event_*"]


def wait_display_exact(c, vm, workdir, display, device, timeout=20.0):
    """Wait until display channel `display` of client `c` equals QEMU's screendump of the
    console of `device` (None: QEMU's first console); returns (w, h)."""
    shot = os.path.join(workdir, f"shot-{display}.ppm")
    args = {"filename": shot}
    if device:
        args["device"] = device
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        c.pump(0.3)
        vm.qmp("screendump", **args)
        w, h, ref = sc.parse_ppm(open(shot, "rb").read())
        p = c.primaries.get(display)
        if p is not None and (p.width, p.height) == (w, h):
            cw, ch, stride, buf = c.snapshot(display)
            got = sc.bgrx_to_rgb(buf, cw, ch, stride)
            n, bbox, first = sc.compare_rgb(got, ref, w, h)
            if n == 0:
                return w, h
            last = f"{n} pixels differ, bbox {bbox}, first {first}"
        else:
            last = f"client {p and (p.width, p.height)} vs screendump {(w, h)}"
    pytest.fail(f"display {display} never matched QEMU's screendump of {device or 'console 0'}:"
                f" {last}\n{c.describe()}")


def stop_in_text_mode(c, vm, workdir, timeout=20.0):
    """Wait until SeaBIOS has switched console 0 to text mode, then stop the VM (its text
    cursor blinks on the virtual clock)."""
    shot = os.path.join(workdir, "mode.ppm")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vm.qmp("screendump", filename=shot)
        if sc.parse_ppm(open(shot, "rb").read())[:2] == SEABIOS_SIZE:
            vm.qmp("stop")
            return
        c.pump(0.1)
    pytest.fail(f"SeaBIOS never reached text mode on console 0\n{c.describe()}")


def input_lines(vm, con):
    """QEMU's traced pointer events (relative or absolute) on console `con`."""
    return [line for line in vm.log().splitlines()
            if line.startswith(("input_event_rel", "input_event_abs"))
            and line.split(",")[0].endswith(f" con {con}")]


def move_until_traced(c, vm, display, con, timeout=10.0):
    """Move the pointer on `display` (a few positions, paced: the guest's PS/2 mouse is
    relative, so scanoutd turns successive positions into motion) until QEMU traces pointer
    input on console `con`."""
    deadline = time.monotonic() + timeout
    x = 10
    while time.monotonic() < deadline:
        c.move_mouse(x, 20 + x // 2, display_id=display)
        if c.pump(0.2, until=lambda: input_lines(vm, con)):
            return input_lines(vm, con)
        x += 7
    pytest.fail(f"no pointer input on QEMU console {con} after moves on display {display}; "
                f"QEMU trace:\n{vm.log()[-2000:]}")


@pytest.mark.timeout_s(90)
def test_console_all_serves_each_console_as_a_monitor(scanoutd_bin, spice_gi, artifacts,
                                                      workdir):
    if not qemuvm.QEMU or not qemuvm.DBUS_DAEMON:
        need("qemu", "qemu-system-x86_64 or dbus-daemon is not installed (scripts/install-deps)")
    bus = qemuvm.DbusBus(workdir)
    vm = None
    try:
        vm = qemuvm.QemuVM(workdir, "mh", two_console_args(f"dbus,addr={bus.address}"),
                           serial=False)
        srv = sc.ScanoutdServer(binary=scanoutd_bin, source=f"qemu-dbus:{bus.address}",
                                extra_args=["--console", "all"], log_dir=artifacts,
                                name="multihead")
        with srv:
            with sc.SpiceClient(uri=srv.uri) as c:
                c.wait_primary(timeout=20, display=0)
                c.wait_primary(timeout=20, display=1)
                assert c.channel("display", 1).opened, c.describe()
                assert not c.errors(), c.describe()
                log = srv.log_tail(1 << 20)
                assert "consoles 0 (VGA), 1 (video1)" in log, log[-3000:]
                assert "as 2 monitors" in log, log[-3000:]

                # Pointer: a move on display 1 reaches QEMU's console 1 (and nothing reached
                # console 0 yet); a move on display 0 reaches console 0.
                c.wait_channel_open("inputs", timeout=10)
                c.wait_for(lambda: c.mouse_mode() == 2, 10, "client mouse mode")
                move_until_traced(c, vm, display=1, con=1)
                assert input_lines(vm, 0) == [], vm.log()[-2000:]
                move_until_traced(c, vm, display=0, con=0)
                # Keys go to the first console.
                c.send_key(0x1E)  # 'a'
                ok = c.pump(10, until=lambda: "input_event_key_qcode con 0, key qcode a, down 0"
                            in vm.log())
                assert ok, f"QEMU did not receive the key on console 0:\n{vm.log()[-2000:]}"

                # Pictures: freeze the guest (SeaBIOS's text cursor blinks on the virtual
                # clock), then each display equals the screendump of its own console.
                stop_in_text_mode(c, vm, workdir)
                assert wait_display_exact(c, vm, workdir, 0, None) == SEABIOS_SIZE
                assert wait_display_exact(c, vm, workdir, 1, "video1") == PLACEHOLDER_SIZE
                # The cursor channel of display 1 is open too (its widget would use it).
                c.wait_for(lambda: getattr(c.channel("cursor", 1), "opened", False), 10,
                           "cursor channel 1")

                # The service's own view of display 1.
                w, h, rgb = sc.parse_ppm(sc.http_get(srv.metrics_url
                                                     + "/snapshot.ppm?display=1", 5.0))
                vm.qmp("screendump", filename=os.path.join(workdir, "ref1.ppm"),
                       device="video1")
                rw, rh, ref = sc.parse_ppm(open(os.path.join(workdir, "ref1.ppm"), "rb").read())
                assert (w, h) == (rw, rh) and rgb == ref

                m = srv.metrics()
                for d in ("0", "1"):
                    assert (sc.metric_value(m, "scanoutd_client_updates_sent_total", display=d)
                            or 0) >= 1, srv.metrics_text()
                    assert (sc.metric_value(m, "scanoutd_frames_produced_total", display=d)
                            or 0) >= 1, srv.metrics_text()
                assert sc.metric_value(m, "scanoutd_protocol_errors_total") == 0
                assert not c.errors(), c.describe()

                # QEMU restarts: the client keeps both pictures, then sees the new QEMU's.
                vm.kill()
                c.pump(1.5)
                assert srv.alive(), srv.log_tail()
                assert c.primaries.get(1) is not None and not c.errors(), c.describe()
                vm = qemuvm.QemuVM(workdir, "mh2",
                                   two_console_args(f"dbus,addr={bus.address}"), serial=False)
                assert c.pump(30, until=lambda: srv.log_tail(1 << 20).count(
                    "connected to the display of VM") == 2), srv.log_tail()
                stop_in_text_mode(c, vm, workdir)
                assert wait_display_exact(c, vm, workdir, 0, None) == SEABIOS_SIZE
                assert wait_display_exact(c, vm, workdir, 1, "video1") == PLACEHOLDER_SIZE
                assert srv.log_tail(1 << 20).count("consoles 0 (VGA), 1 (video1)") == 2
    finally:
        if vm is not None:
            vm.kill()
        bus.stop()


@pytest.mark.timeout_s(90)
def test_console_list_orders_monitors_in_p2p_mode(scanoutd_bin, spice_gi, artifacts, workdir):
    if not qemuvm.QEMU:
        need("qemu", "qemu-system-x86_64 is not installed (scripts/install-deps)")
    display_qmp = os.path.join(workdir, "display.sock")
    vm = qemuvm.QemuVM(workdir, "p2p",
                       two_console_args("dbus,p2p=yes")
                       + ["-qmp", f"unix:{display_qmp},server=on,wait=off"],
                       serial=False)
    try:
        vm.qmp("query-status")  # QEMU is up and listening on its sockets
        srv = sc.ScanoutdServer(binary=scanoutd_bin, source=f"qemu-qmp:{display_qmp}",
                                extra_args=["--console", "1,0"], log_dir=artifacts,
                                name="multihead-p2p")
        with srv:
            with sc.SpiceClient(uri=srv.uri) as c:
                c.wait_primary(timeout=20, display=0)
                c.wait_primary(timeout=20, display=1)
                stop_in_text_mode(c, vm, workdir)
                assert wait_display_exact(c, vm, workdir, 0, "video1") == PLACEHOLDER_SIZE
                assert wait_display_exact(c, vm, workdir, 1, None) == SEABIOS_SIZE
                log = srv.log_tail(1 << 20)
                assert "consoles 1 (video1), 0 (VGA)" in log, log[-3000:]
                assert "via=QMP socket" in log, log[-3000:]
                assert not c.errors(), c.describe()
    finally:
        vm.kill()
