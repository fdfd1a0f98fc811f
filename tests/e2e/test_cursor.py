"""QEMU's cursor through scanoutd to the real spice-gtk client's cursor channel.

A guest with no OS never defines a pointer (SeaBIOS on std VGA draws no hardware cursor), so
the test plays the guest's driver itself: QEMU runs an `ati-vga` (Rage 128) whose hardware
cursor QEMU hands to its UIs (`guest_hwcursor=false`, the default) as CursorDefine and
MouseSet. The cursor registers are written through the card's I/O BAR (MM_INDEX / MM_DATA) with
QMP's `human-monitor-command` `o` (port write): a 64x64 two-colour image with a transparent
part in video memory, colours, offset, position, enable.

Checked with spice-gtk 0.42's SpiceCursorChannel signals:
* before the guest defines a cursor, the client gets scanoutd's default 32x32 arrow;
* `cursor-set` carries exactly the shape QEMU defined (size, hot spot and every RGBA pixel,
  computed from the image and colours the way QEMU's `cursor_set_mono` builds it);
* disabling the hardware cursor (MouseSet on=0) gives `cursor-hide`, enabling it again gives
  `cursor-move` to the programmed position (spice-gtk shows the pointer again on a move);
* in server mouse mode, moving the hardware cursor gives `cursor-move` with the position.
"""

import ctypes

import pytest

import spiceclient as sc
from test_qemu import DBUS_DAEMON, QEMU, Qemu, dbus_bus  # noqa: F401 (fixture)

# Rage 128 registers (QEMU hw/display/ati_regs.h), reached through the I/O BAR.
MM_INDEX, MM_DATA = 0x00, 0x04
CRTC_GEN_CNTL = 0x50
CRTC2_CUR_EN = 0x00010000
CRTC_OFFSET = 0x224
CUR_OFFSET, CUR_HORZ_VERT_POSN = 0x260, 0x264
CUR_CLR0, CUR_CLR1 = 0x26C, 0x270
VRAM_ACCESS = 0x80000000  # MM_INDEX bit 31: MM_DATA reads/writes video memory

CURSOR_AT = 0x100000      # where the cursor image goes in video memory (16-byte aligned)
FG, BG = 0xFF8000, 0x0040C0   # CUR_CLR1 (image bit set), CUR_CLR0 (image bit clear)
SIDE = 64


def opaque(x, y):
    return x < 40 and y < 24


def image_bit(x, y):
    return (x // 4 + y // 4) % 2 == 1


def cursor_bytes():
    """The hardware cursor in video memory: per row 8 bytes AND mask, 8 bytes image, MSB first.
    AND set + image clear is transparent; AND clear shows CUR_CLR1 or CUR_CLR0."""
    out = bytearray()
    for y in range(SIDE):
        mask, img = bytearray(8), bytearray(8)
        for x in range(SIDE):
            bit = 0x80 >> (x % 8)
            if not opaque(x, y):
                mask[x // 8] |= bit
            elif image_bit(x, y):
                img[x // 8] |= bit
        out += mask + img
    return bytes(out)


def expected_rgba(fg=FG, bg=BG):
    """What spice-gtk hands to cursor-set: R, G, B, A bytes per pixel."""
    out = bytearray()
    for y in range(SIDE):
        for x in range(SIDE):
            if not opaque(x, y):
                out += b"\0\0\0\0"
            else:
                c = fg if image_bit(x, y) else bg
                out += bytes([(c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF, 0xFF])
    return bytes(out)


class AtiQemu(Qemu):
    """QEMU with an ati-vga as its only display device, SeaBIOS on it."""

    def __init__(self, workdir, bus, tag):  # noqa: F811 (the fixture name, shadowed here)
        super().__init__(workdir, bus, tag, vga="none", extra=["-device", "ati-vga,id=vga"])
        self.io = None

    def hmp(self, line):
        out = self.qmp("human-monitor-command", **{"command-line": line})
        assert "invalid" not in out.lower() and "try \"help" not in out.lower(), (line, out)
        return out

    def io_base(self):
        """The I/O BAR's port (SeaBIOS assigns it early in its boot)."""
        if self.io is None:
            for bus in self.qmp("query-pci"):
                for d in bus["devices"]:
                    if d.get("qdev_id") == "vga":
                        io = next(r["address"] for r in d["regions"] if r["type"] == "io")
                        if 0 < io < 0x10000:
                            self.io = io
            assert self.io, "the ati-vga's I/O BAR is not assigned"
        return self.io

    def outl(self, port, value):
        self.hmp(f"o /w {port:#x} {value:#x}")

    def wreg(self, reg, value):
        self.outl(self.io_base() + MM_INDEX, reg)
        self.outl(self.io_base() + MM_DATA, value)

    def rreg(self, reg):
        self.outl(self.io_base() + MM_INDEX, reg)
        out = self.hmp(f"i /w {self.io_base() + MM_DATA:#x}")   # "portl[0xc004] = 0x..."
        return int(out.split("=")[1], 16)

    def write_vram(self, offset, data):
        assert offset % 4 == 0 and len(data) % 4 == 0
        for i in range(0, len(data), 4):
            self.wreg(VRAM_ACCESS | (offset + i), int.from_bytes(data[i:i + 4], "little"))

    def cursor_enable(self, on):
        g = self.rreg(CRTC_GEN_CNTL)
        self.wreg(CRTC_GEN_CNTL, (g | CRTC2_CUR_EN) if on else (g & ~CRTC2_CUR_EN))

    def program_cursor(self, fg, bg, x, y):
        """What a driver does before enabling the cursor: image, colours, offset, position."""
        base = self.rreg(CRTC_OFFSET) & 0x07FFFFFF
        self.write_vram(base + CURSOR_AT, cursor_bytes())
        self.wreg(CUR_CLR0, bg)
        self.wreg(CUR_CLR1, fg)
        self.wreg(CUR_OFFSET, CURSOR_AT)
        self.wreg(CUR_HORZ_VERT_POSN, (x << 16) | y)


class CursorClient(sc.SpiceClient):
    """A SpiceClient that records its cursor channel's signals: ("set", w, h, hx, hy, rgba),
    ("move", x, y), ("hide",), ("reset",)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.cursor = []

    def _on_channel_new(self, session, ch):
        if isinstance(ch, self._S.CursorChannel):
            self._hid(ch, "cursor-set", self._on_cursor_set)
            self._hid(ch, "cursor-move", lambda c, x, y: self.cursor.append(("move", x, y)))
            self._hid(ch, "cursor-hide", lambda c: self.cursor.append(("hide",)))
            self._hid(ch, "cursor-reset", lambda c: self.cursor.append(("reset",)))
        super()._on_channel_new(session, ch)

    def _on_cursor_set(self, ch, w, h, hot_x, hot_y, rgba):
        # rgba is only valid during the emission; None for spice-gtk's own default cursor.
        data = ctypes.string_at(rgba, w * h * 4) if rgba else None
        self.cursor.append(("set", w, h, hot_x, hot_y, data))

    def sets(self):
        return [e for e in self.cursor if e[0] == "set"]

    def wait_cursor(self, pred, timeout, what):
        if not self.pump(timeout, until=lambda: pred(self.cursor)):
            pytest.fail(f"no {what} within {timeout}s; cursor signals: "
                        f"{[e[:5] for e in self.cursor]}; {self.describe()}")


def wait_seabios_text(c, creates_before):
    """Wait for a new primary surface in SeaBIOS's 720x400 text mode: the BIOS is done with the
    card (its BARs assigned, its mode set) and what follows is ours."""
    c.wait_for(lambda: c.primary_creates > creates_before and c.primary is not None
               and (c.primary.width, c.primary.height) == (720, 400), 20,
               "SeaBIOS's text mode")


def wait_guest_shape(c, since, want):
    """Wait until a 64x64 cursor-set after event `since` is followed by no hide, then check
    that shape against `want`."""
    c.wait_cursor(lambda ev: any(e[0] == "set" and e[1] == SIDE for e in ev[since:])
                  and ev[-1][0] != "hide", 10, "the guest's cursor")
    got = [e for e in c.cursor[since:] if e[0] == "set" and e[1] == SIDE][-1]
    assert got[1:5] == (SIDE, SIDE, 0, 0), got[:5]
    if got[5] != want:
        bad = next(i for i in range(len(want)) if got[5][i] != want[i]) // 4
        pytest.fail(f"cursor pixel ({bad % SIDE},{bad // SIDE}) is "
                    f"{got[5][bad * 4:bad * 4 + 4].hex()}, QEMU defined "
                    f"{want[bad * 4:bad * 4 + 4].hex()}")
    # Its last state is shown (a SET or a MOVE after any earlier HIDE).
    assert c.cursor[-1][0] in ("set", "move"), c.cursor[since:]


@pytest.mark.timeout_s(90)
def test_qemu_hardware_cursor_reaches_spice_gtk(scanoutd_bin, spice_gi, artifacts, workdir,
                                                dbus_bus):  # noqa: F811
    qemu = AtiQemu(workdir, dbus_bus, "cur")
    srv = sc.ScanoutdServer(binary=scanoutd_bin, source=f"qemu-dbus:{dbus_bus}",
                            log_dir=artifacts, name="qemu-cursor")
    try:
        with srv:
            with CursorClient(uri=srv.uri) as c:
                c.wait_primary(timeout=20)
                wait_seabios_text(c, 0)
                c.wait_channel_open("cursor", timeout=10)
                # Nothing defined yet: scanoutd's default arrow.
                c.wait_cursor(lambda ev: len(c.sets()) >= 1, 10, "initial cursor-set")
                first = c.sets()[0]
                assert first[1:5] == (32, 32, 0, 0), first[:5]
                assert first[5] is not None and len(first[5]) == 32 * 32 * 4

                # The "driver" defines the cursor, then enables it.
                qemu.program_cursor(FG, BG, 100, 50)
                n0 = len(c.cursor)
                qemu.cursor_enable(True)
                wait_guest_shape(c, n0, expected_rgba(FG, BG))

                # Disabled: hidden.
                n1 = len(c.cursor)
                qemu.cursor_enable(False)
                c.wait_cursor(lambda ev: ("hide",) in ev[n1:], 10, "cursor-hide")

                # Enabled again: shown with a move to its position, same shape not resent.
                n2 = len(c.cursor)
                qemu.cursor_enable(True)
                c.wait_cursor(lambda ev: ("move", 100, 50) in ev[n2:], 10, "cursor-move")
                c.pump(0.3)
                assert not [e for e in c.cursor[n2:] if e[0] == "set"], c.cursor[n2:]

                # Server mouse mode: the client draws the pointer where the guest puts it.
                main = c.channel("main").obj
                if hasattr(spice_gi[0].MainChannel, "request_mouse_mode"):
                    spice_gi[0].MainChannel.request_mouse_mode(main, 1)
                    c.wait_for(lambda: c.mouse_mode() == 1, 10, "server mouse mode")
                    n3 = len(c.cursor)
                    qemu.wreg(CUR_HORZ_VERT_POSN, (200 << 16) | 120)
                    c.wait_cursor(lambda ev: ("move", 200, 120) in ev[n3:], 10,
                                  "cursor-move in server mode")

                # QEMU restarts: the new VM's pointer reaches the same client. First the default
                # arrow again (from the client's cache), then the new VM's own shape.
                creates = c.primary_creates
                qemu.kill()
                qemu = AtiQemu(workdir, dbus_bus, "cur2")
                n4 = len(c.cursor)
                c.wait_cursor(lambda ev: any(e[0] == "set" and e[1] == 32 for e in ev[n4:]), 30,
                              "the default arrow after QEMU restarted")
                assert [e for e in c.sets() if e[1] == 32][-1][5] == first[5]
                wait_seabios_text(c, creates)
                qemu.program_cursor(0x20E040, 0x400040, 10, 20)
                n5 = len(c.cursor)
                qemu.cursor_enable(True)
                wait_guest_shape(c, n5, expected_rgba(0x20E040, 0x400040))

                assert not c.errors(), c.describe()
                m = srv.metrics()
                assert sc.metric_value(m, "scanoutd_protocol_errors_total") == 0
    finally:
        qemu.kill()
