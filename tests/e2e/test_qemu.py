"""A real QEMU guest served by scanoutd, seen through the real spice-gtk client.

QEMU 10 (installed by scripts/install-deps) runs with `-display dbus,addr=<private bus>` on a
dbus-daemon this test starts; scanoutd serves it with `--source qemu-dbus:<bus>`. With no disk
SeaBIOS stops at its "No bootable device" text screen, which is compared pixel for pixel with
QEMU's own QMP `screendump`.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import spiceclient as sc

QEMU = shutil.which("qemu-system-x86_64")
DBUS_DAEMON = shutil.which("dbus-daemon")

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="sod-qemu-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dbus_bus(workdir):
    """A private D-Bus bus; yields its address."""
    if not (QEMU and DBUS_DAEMON):
        pytest.skip("qemu-system-x86_64 or dbus-daemon is not installed (scripts/install-deps)")
    path = os.path.join(workdir, "bus")
    conf = os.path.join(workdir, "bus.conf")
    with open(conf, "w") as f:
        f.write(BUS_CONFIG.format(path=path))
    proc = subprocess.Popen([DBUS_DAEMON, f"--config-file={conf}", "--nofork", "--print-address"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            assert proc.poll() is None, "dbus-daemon exited"
            time.sleep(0.02)
        assert os.path.exists(path), "dbus-daemon did not create its socket"
        yield f"unix:path={path}"
    finally:
        sc.stop_process(proc)


class Qemu:
    """qemu-system-x86_64 showing SeaBIOS on the D-Bus display, with a QMP socket."""

    def __init__(self, workdir, bus, tag):
        self.qmp_path = os.path.join(workdir, f"qmp-{tag}.sock")
        self.log_path = os.path.join(workdir, f"qemu-{tag}.log")
        argv = [QEMU, "-display", f"dbus,addr={bus}", "-machine", "pc", "-m", "64",
                "-nodefaults", "-vga", "std", "-accel", "tcg", "-name", f"scanoutd-e2e-{tag}",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-trace", "dbus_kbd_*", "-D", self.log_path]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.sock = None

    def qmp(self, command, **arguments):
        """Run one QMP command; returns its "return" value."""
        if self.sock is None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.settimeout(10)
                    s.connect(self.qmp_path)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.sock, self.rfile = s, s.makefile("r")
            json.loads(self.rfile.readline())  # greeting
            self.qmp("qmp_capabilities")
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall((json.dumps(msg) + "\n").encode())
        while True:
            line = self.rfile.readline()
            assert line, "QMP closed"
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def screendump(self, path):
        self.qmp("screendump", filename=path)
        return sc.parse_ppm(open(path, "rb").read())

    def log(self):
        try:
            return open(self.log_path).read()
        except OSError:
            return ""

    def kill(self):
        if self.sock:
            self.sock.close()
            self.sock = None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


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

                # ... and when QEMU comes back, scanoutd reconnects and the client sees it.
                qemu = Qemu(workdir, dbus_bus, "b")
                wait_exact(c, qemu, workdir, timeout=30)
                assert srv.log_tail(1 << 20).count("connected to the display of VM") == 2
                assert sc.metric_value(srv.metrics(), "scanoutd_protocol_errors_total") == 0
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
