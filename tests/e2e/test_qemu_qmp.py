"""A real QEMU guest served by scanoutd in peer-to-peer mode, seen through spice-gtk.

QEMU 10 runs with `-display dbus,p2p=yes` and two QMP sockets: scanoutd gets one
(`--source qemu-qmp:<path>`: getfd + add_client @dbus-display, no bus at all), the test uses the
other for `stop` and `screendump` (QEMU serves one client per QMP socket at a time). SeaBIOS's
"No bootable device" text screen must reach the client pixel for pixel, through the shared-memory
path (Listener.Unix.Map) that QEMU 10 uses for it; keys must reach QEMU; and a QEMU restarted on
the same QMP socket must be picked up again.
"""

import os
import time

import pytest

import qemuvm
import spiceclient as sc
from require import need
from test_qemu import QEMU, wait_exact


class P2pQemu(qemuvm.QemuVM):
    """qemu-system-x86_64 showing SeaBIOS on the p2p D-Bus display: `display.sock` (the same
    path for every QEMU of a test) for scanoutd, its own QMP socket for the test."""

    def __init__(self, workdir, tag):
        self.display_path = os.path.join(workdir, "display.sock")
        super().__init__(workdir, f"p2p-{tag}",
                         ["-m", "64", "-display", "dbus,p2p=yes",
                          "-qmp", f"unix:{self.display_path},server=on,wait=off",
                          "-trace", "dbus_kbd_*"], serial=False)


@pytest.mark.timeout_s(90)
def test_qemu_p2p_guest_through_scanoutd_matches_screendump(scanoutd_bin, spice_gi, artifacts,
                                                            workdir):
    if not QEMU:
        need("qemu", "qemu-system-x86_64 is not installed (scripts/install-deps)")
    qemu = P2pQemu(workdir, "a")
    srv = sc.ScanoutdServer(binary=scanoutd_bin, source=f"qemu-qmp:{qemu.display_path}",
                            log_dir=artifacts, name="qemu-qmp")
    try:
        with srv:
            with sc.SpiceClient(uri=srv.uri) as c:
                c.wait_primary(timeout=20)
                w, h = wait_exact(c, qemu, workdir)
                assert (w, h) == (720, 400), "SeaBIOS's text mode"
                log = srv.log_tail(1 << 20)
                assert "via=QMP socket" in log, log[-3000:]
                assert "through memory (ScanoutMap" in log, \
                    f"QEMU 10 should share its text-mode surface:\n{log[-3000:]}"

                # Keys typed in the client reach QEMU's keyboard over the p2p connection.
                c.wait_channel_open("inputs", timeout=10)
                c.send_key(0x1E)            # 'a'
                c.send_key(0x148)           # Up arrow: E0 48 -> qnum 0xC8 = 200
                want = ["dbus_kbd_press keycode 30", "dbus_kbd_release keycode 30",
                        "dbus_kbd_press keycode 200", "dbus_kbd_release keycode 200"]
                ok = c.pump(10, until=lambda: all(x in qemu.log() for x in want))
                assert ok, f"QEMU did not receive the keys; its trace:\n{qemu.log()[-2000:]}"

                # QEMU goes away: the client keeps the last picture...
                qemu.kill()
                c.pump(1.5)
                assert srv.alive(), f"scanoutd exited when QEMU went away:\n{srv.log_tail()}"
                assert c.primary is not None and not c.errors(), c.describe()
                assert "went away" in srv.log_tail(1 << 20), srv.log_tail()

                # ... and a QEMU restarted on the same QMP socket is reached again (scanoutd
                # retries every second).
                qemu = P2pQemu(workdir, "b")
                deadline = time.monotonic() + 20
                while (srv.log_tail(1 << 20).count("connected to the display of VM") < 2
                       and time.monotonic() < deadline):
                    c.pump(0.2)
                assert srv.log_tail(1 << 20).count("connected to the display of VM") == 2, \
                    srv.log_tail()
                # Its picture differs from the old one: an 800x600x32 VBE mode (the VGA memory
                # itself, which QEMU sends inline), set through the monitor as a driver would.
                qemu.qmp("stop")
                for index, value in [(4, 0), (1, 800), (2, 600), (3, 32), (4, 0xc1)]:
                    for port, v in [(0x1ce, index), (0x1cf, value)]:
                        qemu.qmp("human-monitor-command", **{"command-line": f"o /h {port:#x} {v:#x}"})
                assert wait_exact(c, qemu, workdir, timeout=30) == (800, 600)
                assert sc.metric_value(srv.metrics(), "scanoutd_protocol_errors_total") == 0
    finally:
        qemu.kill()
