"""QEMU processes for the end-to-end tests and the benchmark: a QMP client, the test guest's
command line, and a private D-Bus bus.

The test guest (scripts/build-test-guest) is a Debian kernel plus an initramfs whose /init
(crates/testguest) animates the framebuffer with the guest scene and echoes typed keys; its
status lines (geometry, every key, frames drawn) go to the serial port, kept in a log file.
"""

import functools
import json
import os
import shutil
import socket
import subprocess
import time

import spiceclient as sc

QEMU = shutil.which("qemu-system-x86_64")
DBUS_DAEMON = shutil.which("dbus-daemon")
GUEST_DIR = os.environ.get("SCANOUTD_TEST_GUEST",
                           os.path.join(sc.REPO_ROOT, "target", "testguest"))
GUEST_KERNEL = os.path.join(GUEST_DIR, "vmlinuz")
GUEST_INITRD = os.path.join(GUEST_DIR, "initramfs.cpio.gz")
TESTGUEST_BIN = os.path.join(sc.REPO_ROOT, "target", "debug", "scanoutd-testguest")

# vga=0x344: VESA mode 0x144 (1024x768, 32 bpp) set by the kernel's boot code through SeaBIOS;
# the kernel's vesafb then gives /dev/fb0. No text cursor, no console blanking, no console
# output on the framebuffer (the console is the serial port).
GUEST_SIZE = (1024, 768)
GUEST_APPEND = ("console=ttyS0 vga=0x344 quiet loglevel=3 vt.global_cursor_default=0 "
                "consoleblank=0 scanoutd.fps={fps}")

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


def guest_missing_reason():
    if not QEMU:
        return "qemu-system-x86_64 is not installed (scripts/install-deps)"
    for p in (GUEST_KERNEL, GUEST_INITRD):
        if not os.path.isfile(p):
            return f"{p} is missing (build the test guest: scripts/build-test-guest)"
    return None


class DbusBus:
    """A private dbus-daemon listening on `workdir/bus`; `address` is its D-Bus address."""

    def __init__(self, workdir):
        if not DBUS_DAEMON:
            raise RuntimeError("dbus-daemon is not installed (scripts/install-deps)")
        path = os.path.join(workdir, "bus")
        conf = os.path.join(workdir, "bus.conf")
        with open(conf, "w") as f:
            f.write(BUS_CONFIG.format(path=path))
        self.proc = subprocess.Popen([DBUS_DAEMON, f"--config-file={conf}", "--nofork"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dbus-daemon did not create its socket")
            time.sleep(0.02)
        self.address = f"unix:path={path}"

    def stop(self):
        sc.stop_process(self.proc)


class QemuVM:
    """One qemu-system-x86_64 process with a QMP socket; `args` are its display/machine options.

    kill() ends it (only this process, by its PID)."""

    def __init__(self, workdir, tag, args, serial=True, vga="std"):
        self.qmp_path = os.path.join(workdir, f"qmp-{tag}.sock")
        self.log_path = os.path.join(workdir, f"qemu-{tag}.log")
        self.serial_path = os.path.join(workdir, f"serial-{tag}.log")
        argv = [QEMU, "-nodefaults", "-machine", "pc", "-accel", "tcg", "-vga", vga,
                "-name", f"scanoutd-{tag}",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off", "-D", self.log_path]
        if serial:
            argv += ["-serial", f"file:{self.serial_path}"]
        self.argv = argv + list(args)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.sock = None
        self.rfile = None

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def qmp(self, command, **arguments):
        """Run one QMP command; returns its "return" value (RuntimeError on a QMP error)."""
        if self.sock is None:
            deadline = time.monotonic() + 15
            while True:
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.settimeout(15)
                    s.connect(self.qmp_path)
                    break
                except OSError:
                    s.close()
                    if time.monotonic() > deadline or not self.alive():
                        raise RuntimeError(f"no QMP socket from QEMU: {self.stderr_tail()}")
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
            if not line:
                raise RuntimeError(f"QMP closed during {command}")
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def screendump(self, path):
        """(width, height, rgb) of QEMU's own picture of the display."""
        self.qmp("screendump", filename=path)
        return sc.parse_ppm(open(path, "rb").read())

    def serial(self):
        try:
            return open(self.serial_path, errors="replace").read()
        except OSError:
            return ""

    def log(self):
        try:
            return open(self.log_path, errors="replace").read()
        except OSError:
            return ""

    def stderr_tail(self):
        if self.alive() or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def cpu_seconds(self):
        """User + system CPU seconds this process has used (from /proc)."""
        return proc_cpu_seconds(self.proc.pid)

    def kill(self):
        if self.sock:
            self.sock.close()
            self.sock = None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def guest_args(display, fps=30, memory_mb=256):
    """QEMU options booting the test guest on `display` (e.g. "dbus,addr=..." or "none")."""
    return ["-m", str(memory_mb), "-kernel", GUEST_KERNEL, "-initrd", GUEST_INITRD,
            "-append", GUEST_APPEND.format(fps=fps), "-display", display]


def wait_guest_animating(vm, timeout=60.0):
    """Wait until the guest's /init reports its framebuffer on the serial port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = vm.serial()
        if "testguest: /dev/fb0" in text:
            return text
        if "testguest: error" in text or not vm.alive():
            break
        time.sleep(0.1)
    raise AssertionError(f"the test guest did not start drawing; serial:\n{vm.serial()[-3000:]}"
                         f"\nQEMU: {vm.stderr_tail()}")


def render_guest(frame_no, out, typed="", size=GUEST_SIZE):
    """The exact guest picture of `frame_no` as (width, height, rgb)."""
    argv = [TESTGUEST_BIN, "--render-frame", str(frame_no), "--size", f"{size[0]}x{size[1]}",
            "--out", out]
    if typed:
        argv += ["--typed", typed]
    subprocess.run(argv, check=True, timeout=30)
    return sc.parse_ppm(open(out, "rb").read())


@functools.lru_cache(maxsize=4)
def guest_video_rect(size=GUEST_SIZE):
    """(x, y, w, h) of the guest's video window, whose every pixel changes every frame."""
    out = subprocess.run([TESTGUEST_BIN, "--video-rect", "--size", f"{size[0]}x{size[1]}"],
                         check=True, timeout=30, capture_output=True, text=True).stdout
    return tuple(int(v) for v in out.split())


def match_guest(ppm_path, frame_no, before=45, after=5):
    """PSNR of a picture's video window against guest frame `frame_no` and against the closest
    guest frame in frame_no-before .. frame_no+after: {named, psnr_named, best, psnr_best}
    (99 dB stands for identical)."""
    out = subprocess.run([TESTGUEST_BIN, "--match", ppm_path, "--frame", str(frame_no),
                          "--before", str(before), "--after", str(after)],
                         check=True, timeout=60, capture_output=True, text=True).stdout
    return json.loads(out)


def crop_rgb(rgb, width, rect):
    """The RGB bytes of `rect` (x, y, w, h) of a picture `width` pixels wide."""
    x, y, w, h = rect
    return b"".join(bytes(rgb[((y + r) * width + x) * 3:((y + r) * width + x + w) * 3])
                    for r in range(h))


def proc_cpu_seconds(pid):
    """utime + stime of a process in seconds, from /proc/PID/stat (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
