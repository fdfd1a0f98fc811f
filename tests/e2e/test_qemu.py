"""A real QEMU guest served by scanoutd, seen through the real spice-gtk client.

QEMU 10 (installed by scripts/install-deps) runs with `-display dbus,addr=<private bus>` on a
dbus-daemon this test starts; scanoutd serves it with `--source qemu-dbus:<bus>`. With no disk
SeaBIOS stops at its "No bootable device" text screen, which is compared pixel for pixel with
QEMU's own QMP `screendump`.
"""

import os
import time

import pytest

import qemuvm
import spiceclient as sc
from require import need

QEMU = qemuvm.QEMU
DBUS_DAEMON = qemuvm.DBUS_DAEMON


@pytest.fixture
def dbus_bus(workdir):
    """A private D-Bus bus; yields its address."""
    if not (QEMU and DBUS_DAEMON):
        need("qemu", "qemu-system-x86_64 or dbus-daemon is not installed (scripts/install-deps)")
    bus = qemuvm.DbusBus(workdir)
    try:
        yield bus.address
    finally:
        bus.stop()


class Qemu(qemuvm.QemuVM):
    """qemu-system-x86_64 showing SeaBIOS (no disk) on the D-Bus display at `bus`, with its
    keyboard calls traced (`dbus_kbd_*`) into log()."""

    def __init__(self, workdir, bus, tag, vga="std", extra=()):
        super().__init__(workdir, f"e2e-{tag}",
                         ["-m", "64", "-display", f"dbus,addr={bus}", "-trace", "dbus_kbd_*",
                          *extra], serial=False, vga=vga)


def wait_exact(c, qemu, workdir, timeout=20.0):
    """Wait until the client's picture equals QEMU's screendump; returns (w, h)."""
    qemu.qmp("stop")  # SeaBIOS's text cursor blinks on the virtual clock: freeze it
    shot = os.path.join(workdir, "shot.ppm")
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        c.pump(0.3)
        w, h, ref = qemu.screendump(shot)
        p = c.primary
        if p is not None and (p.width, p.height) == (w, h):
            cw, ch, stride, buf = c.snapshot()
            got = sc.bgrx_to_rgb(buf, cw, ch, stride)
            n, bbox, first = sc.compare_rgb(got, ref, w, h)
            if n == 0:
                return w, h
            last = f"{n} pixels differ, bbox {bbox}, first {first}"
        else:
            last = f"client {p and (p.width, p.height)} vs screendump {(w, h)}"
    pytest.fail(f"the client's picture never matched QEMU's screendump: {last}")


@pytest.mark.timeout_s(90)
def test_qemu_guest_through_scanoutd_matches_screendump(scanoutd_bin, spice_gi, artifacts,
                                                        workdir, dbus_bus):
    qemu = Qemu(workdir, dbus_bus, "a")
    srv = sc.ScanoutdServer(binary=scanoutd_bin, source=f"qemu-dbus:{dbus_bus}",
                            log_dir=artifacts, name="qemu")
    try:
        with srv:
            with sc.SpiceClient(uri=srv.uri) as c:
                c.wait_primary(timeout=20)
                w, h = wait_exact(c, qemu, workdir)
                assert (w, h) == (720, 400), "SeaBIOS's text mode"

                # Keys typed in the client reach QEMU's keyboard (its trace shows the qnum).
                c.wait_channel_open("inputs", timeout=10)
                c.send_key(0x1E)            # 'a'
                c.send_key(0x148)           # Up arrow: E0 48 -> qnum 0xC8 = 200
                want = ["dbus_kbd_press keycode 30", "dbus_kbd_release keycode 30",
                        "dbus_kbd_press keycode 200", "dbus_kbd_release keycode 200"]
                ok = c.pump(10, until=lambda: all(x in qemu.log() for x in want))
                assert ok, f"QEMU did not receive the keys; its trace:\n{qemu.log()[-2000:]}"

                # QEMU goes away: the client stays connected with the last picture...
                qemu.kill()
                c.pump(1.5)
                assert srv.alive(), f"scanoutd exited when QEMU went away:\n{srv.log_tail()}"
                assert c.primary is not None and not c.errors(), c.describe()
                assert "went away" in srv.log_tail(1 << 20), srv.log_tail()
                m = srv.metrics()
                assert sc.metric_value(m, "scanoutd_connected_clients") == 1
                # The QEMU source's own counters are exported.
                assert sc.metric_value(m, "scanoutd_qemu_connected") == 0, srv.metrics_text()
                published = sc.metric_value(m, "scanoutd_qemu_frames_published_total")
                assert published and published > 0, srv.metrics_text()
                assert sc.metric_value(m, "scanoutd_qemu_frame_errors_total") == 0

                # ... and when QEMU comes back, scanoutd reconnects and the client sees it.
                qemu = Qemu(workdir, dbus_bus, "b")
                wait_exact(c, qemu, workdir, timeout=30)
                assert srv.log_tail(1 << 20).count("connected to the display of VM") == 2
                m = srv.metrics()
                assert sc.metric_value(m, "scanoutd_protocol_errors_total") == 0
                assert sc.metric_value(m, "scanoutd_qemu_connected") == 1
                assert sc.metric_value(m, "scanoutd_qemu_connections_total") == 2
                # Summed over both connections: never below what the first one published.
                assert sc.metric_value(m, "scanoutd_qemu_frames_published_total") > published
    finally:
        qemu.kill()


@pytest.mark.timeout_s(60)
def test_on_qemu_exit_exit_ends_the_service(scanoutd_bin, artifacts, workdir, dbus_bus):
    qemu = Qemu(workdir, dbus_bus, "c")
    srv = sc.ScanoutdServer(binary=scanoutd_bin, source=f"qemu-dbus:{dbus_bus}",
                            extra_args=["--on-qemu-exit", "exit"], log_dir=artifacts,
                            name="qemu-exit")
    try:
        with srv:
            deadline = time.monotonic() + 20
            while "connected to the display" not in srv.log_tail(1 << 20) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "connected to the display" in srv.log_tail(1 << 20), srv.log_tail()
            qemu.kill()
            srv.proc.wait(timeout=10)
            assert srv.proc.returncode not in (0, None), "a non-zero exit code"
            assert "went away" in srv.log_tail(1 << 20), srv.log_tail()
    finally:
        qemu.kill()
