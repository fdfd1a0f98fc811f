"""A small, bounded test client around the real spice-gtk client library (SpiceClientGLib).

Everything here runs on the calling thread: the GLib main context is *pumped* with a deadline
(``SpiceClient.pump`` / ``wait_for``), so no call can hang, and the framebuffer is only read
between main-loop iterations, i.e. never while spice-gtk is writing it or after it was freed.

Also here:
  * ``decode_timestamp_strip`` / ``decode_input_strip``: decoders for the scanoutd demo picture.
  * ``ScanoutdServer``: start ``scanoutd serve`` on free ports, wait (bounded) until it accepts,
    read its metrics and /snapshot.ppm, stop it by PID (SIGTERM, then SIGKILL).
  * ``QemuSpice``: QEMU's built-in SPICE server, a reference peer for checking this harness.
  * ``Xvfb`` / ``RemoteViewer``: a private X server and remote-viewer, for screenshots.
  * PPM/PNG helpers in plain Python (no numpy).

Use the system Python that has ``gi`` (``/usr/bin/python3`` on Debian 12).
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass, field

# ------------------------------------------------------------------------------------------
# spice-gtk import (lazy, so the decoders and server helpers work without gi)
# ------------------------------------------------------------------------------------------

_GI = None          # (SpiceClientGLib, GObject, GLib) once imported
_GI_ERROR = None    # why it could not be imported


def spice_gi():
    """Import SpiceClientGLib; return (SpiceClientGLib, GObject, GLib) or raise ImportError."""
    global _GI, _GI_ERROR
    if _GI is not None:
        return _GI
    if _GI_ERROR is not None:
        raise ImportError(_GI_ERROR)
    try:
        import gi  # noqa: F401
        gi.require_version("SpiceClientGLib", "2.0")
        from gi.repository import GLib, GObject
        from gi.repository import SpiceClientGLib
    except (ImportError, ValueError) as e:  # ValueError: typelib/namespace not available
        _GI_ERROR = (f"cannot import SpiceClientGLib 2.0 from {sys.executable}: {e} "
                     "(need python3-gi + gir1.2-spiceclientglib-2.0; run with /usr/bin/python3)")
        raise ImportError(_GI_ERROR) from e
    _GI = (SpiceClientGLib, GObject, GLib)
    return _GI


def spice_gi_missing_reason():
    """None if SpiceClientGLib can be imported, else a human-readable reason."""
    try:
        spice_gi()
        return None
    except ImportError as e:
        return str(e)


# ------------------------------------------------------------------------------------------
# Abort flag: a watchdog (e.g. the pytest per-test alarm) sets it; every pump loop checks it.
# An exception raised inside a GLib callback is swallowed by PyGI, so the flag is what really
# stops a wait.
# ------------------------------------------------------------------------------------------

_abort_reason = None


class Aborted(RuntimeError):
    pass


def request_abort(reason):
    global _abort_reason
    _abort_reason = reason


def clear_abort():
    global _abort_reason
    _abort_reason = None


def _check_abort():
    if _abort_reason is not None:
        raise Aborted(_abort_reason)


def now_ms32():
    """Unix time in ms, mod 2^32 (the timestamp strip's clock)."""
    return int(time.time() * 1000) & 0xFFFFFFFF


def age_ms(strip_value, at_ms32=None):
    """Signed difference (now - strip_value) in ms, with mod-2^32 wraparound."""
    if at_ms32 is None:
        at_ms32 = now_ms32()
    d = (at_ms32 - strip_value) & 0xFFFFFFFF
    return d - (1 << 32) if d >= (1 << 31) else d


# ------------------------------------------------------------------------------------------
# Main-context pumping
# ------------------------------------------------------------------------------------------

def pump(seconds, until=None, tick_ms=2, on_tick=None):
    """Run the default GLib main context for at most `seconds`.

    Returns True as soon as `until()` is true (checked after every dispatch, and at least every
    `tick_ms`), False when the time is up. `on_tick()` is called after every iteration.
    """
    _, _, GLib = spice_gi()
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + max(0.0, seconds)
    # A repeating timer bounds every blocking iteration to ~tick_ms.
    src = GLib.timeout_add(max(1, int(tick_ms)), lambda *a: True)
    try:
        while True:
            _check_abort()
            if until is not None and until():
                return True
            if time.monotonic() >= deadline:
                return False
            ctx.iteration(True)
            if on_tick is not None:
                on_tick()
    finally:
        GLib.source_remove(src)


# ------------------------------------------------------------------------------------------
# The client
# ------------------------------------------------------------------------------------------

# SpiceMouseButton / SpiceMouseButtonMask (spice/enums.h); not exported by the typelib.
MOUSE_LEFT, MOUSE_MIDDLE, MOUSE_RIGHT, MOUSE_UP, MOUSE_DOWN = 1, 2, 3, 4, 5
BUTTON_MASK = {1: 1, 2: 2, 3: 4, 4: 8, 5: 16, 6: 32, 7: 64}

# SpiceVideoCodecType (spice/enums.h), for PREFERRED_VIDEO_CODEC_TYPE.
VIDEO_CODEC = {"mjpeg": 1, "vp8": 2, "h264": 3, "vp9": 4, "h265": 5}

# SpiceImageCompression (spice/enums.h), for Session "preferred-compression".
IMAGE_COMPRESSION = {"invalid": 0, "off": 1, "auto_glz": 2, "auto_lz": 3, "quic": 4,
                     "glz": 5, "lz": 6, "lz4": 7}

CHANNEL_NAMES = {1: "main", 2: "display", 3: "inputs", 4: "cursor", 5: "playback",
                 6: "record", 7: "tunnel", 8: "smartcard", 9: "usbredir", 10: "port",
                 11: "webdav"}

SURFACE_FMT_32_xRGB = 32
SURFACE_FMT_32_ARGB = 96


class SpiceClientError(AssertionError):
    pass


@dataclass
class Primary:
    format: int
    width: int
    height: int
    stride: int
    shmid: int
    pointer: int
    created_at: float


@dataclass
class ChannelState:
    type: int
    id: int
    obj: object
    events: list = field(default_factory=list)   # [(monotonic, event_name)]
    opened: bool = False
    closed: bool = False
    error: str | None = None


class SpiceClient:
    """One SPICE session using spice-gtk's GLib client library.

    All methods must be called from the thread that owns the default GLib main context
    (normally the only thread). Every wait is bounded by a timeout.
    """

    def __init__(self, uri=None, host="127.0.0.1", port=None, password=None,
                 preferred_compression=None, name="client", channels=("display", "inputs",
                                                                        "cursor"),
                 preferred_codecs=None):
        S, GObject, _ = spice_gi()
        self._S, self._GObject = S, GObject
        if uri is None:
            if port is None:
                raise ValueError("need uri or port")
            uri = f"spice://{host}:{port}"
        self.uri = uri
        self.name = name
        self.want_channels = set(channels)
        # e.g. ["vp8", "h264"]: sent as PREFERRED_VIDEO_CODEC_TYPE once a display channel opens
        self.preferred_codecs = [VIDEO_CODEC[c] for c in (preferred_codecs or [])]
        self.session = S.Session()
        self.session.set_property("uri", uri)
        if password is not None:
            self.session.set_property("password", password)
        if preferred_compression is not None:
            v = preferred_compression
            if isinstance(v, str):
                v = IMAGE_COMPRESSION[v]
            self.session.set_property("preferred-compression", v)
        self.channels: dict[tuple, ChannelState] = {}
        self.events: list = []          # [(monotonic, channel_name, event_name)]
        self.primary: Primary | None = None
        self.primaries: dict[int, Primary] = {}   # display channel id -> its primary surface
        self.invalidates_by: dict[int, int] = {}  # display channel id -> invalidate count
        self.primary_creates = 0
        self.primary_destroys = 0
        self.invalidates = 0
        self.invalidate_area = 0
        self.marks = 0
        self.mark_after_primary = False
        self.last_invalidate = None
        self.on_invalidate = None       # optional callback(client, x, y, w, h)
        self.button_state = 0
        self.disconnected = False
        self._handlers = []
        self._connected = False
        self._hid(self.session, "channel-new", self._on_channel_new)
        self._hid(self.session, "channel-destroy", self._on_channel_destroy)
        self._hid(self.session, "disconnected", self._on_disconnected)

    # -- signal plumbing ------------------------------------------------------------------

    def _hid(self, obj, sig, cb):
        # spice-gtk's Session/Channel `connect` methods hide GObject's signal connect.
        h = self._GObject.Object.connect(obj, sig, cb)
        self._handlers.append((obj, h))
        return h

    def _chname(self, ch):
        t = ch.get_property("channel-type")
        return CHANNEL_NAMES.get(t, str(t))

    def _on_channel_new(self, session, ch):
        S = self._S
        t = ch.get_property("channel-type")
        i = ch.get_property("channel-id")
        st = ChannelState(type=t, id=i, obj=ch)
        self.channels[(t, i)] = st
        self._hid(ch, "channel-event", self._on_channel_event)
        if isinstance(ch, S.DisplayChannel):
            self._hid(ch, "display-primary-create", self._on_primary_create)
            self._hid(ch, "display-primary-destroy", self._on_primary_destroy)
            self._hid(ch, "display-invalidate", self._on_invalidate)
            self._hid(ch, "display-mark", self._on_mark)
        if isinstance(ch, S.MainChannel):
            return  # the session connects the main channel itself
        if CHANNEL_NAMES.get(t) in self.want_channels:
            S.Channel.connect(ch)

    def _on_channel_destroy(self, session, ch):
        t = ch.get_property("channel-type")
        i = ch.get_property("channel-id")
        st = self.channels.get((t, i))
        if st:
            st.closed = True
        if t == 2:
            self.primaries.pop(i, None)  # its memory is going away
        if t == 2 and i == 0:
            self.primary = None

    def _on_disconnected(self, session):
        self.disconnected = True

    def _on_channel_event(self, ch, event):
        S = self._S
        # e.g. "SPICE_CHANNEL_OPENED", "SPICE_CHANNEL_ERROR_AUTH"
        name = getattr(event, "value_name", None) or str(event)
        t = ch.get_property("channel-type")
        i = ch.get_property("channel-id")
        st = self.channels.get((t, i))
        now = time.monotonic()
        self.events.append((now, self._chname(ch), name))
        if st is None:
            return
        st.events.append((now, name))
        if event == S.ChannelEvent.OPENED:
            st.opened = True
            if self.preferred_codecs and isinstance(ch, S.DisplayChannel):
                # GI names spice_display_channel_change_preferred_video_codec_types so.
                ch.display_channel_change_preferred_video_codec_types(self.preferred_codecs)
        elif event == S.ChannelEvent.CLOSED:
            st.closed = True
        elif event in (S.ChannelEvent.ERROR_AUTH, S.ChannelEvent.ERROR_CONNECT,
                       S.ChannelEvent.ERROR_IO, S.ChannelEvent.ERROR_LINK,
                       S.ChannelEvent.ERROR_TLS):
            st.closed = True
            err = None
            try:
                e = ch.get_error()
                err = e.message if e is not None else None
            except Exception:  # pragma: no cover - depends on the binding
                pass
            st.error = f"{name}" + (f": {err}" if err else "")

    def _on_primary_create(self, ch, fmt, width, height, stride, shmid, pointer):
        cid = ch.get_property("channel-id")
        self.primaries[cid] = Primary(fmt, width, height, stride, shmid, pointer,
                                      time.monotonic())
        if cid != 0:
            return
        self.primary = self.primaries[cid]
        self.primary_creates += 1
        self.mark_after_primary = False

    def _on_primary_destroy(self, ch):
        cid = ch.get_property("channel-id")
        self.primaries.pop(cid, None)
        if cid != 0:
            return
        self.primary = None
        self.primary_destroys += 1

    def _on_invalidate(self, ch, x, y, w, h):
        cid = ch.get_property("channel-id")
        self.invalidates_by[cid] = self.invalidates_by.get(cid, 0) + 1
        self.invalidates += 1
        self.invalidate_area += max(0, w) * max(0, h)
        self.last_invalidate = time.monotonic()
        if self.on_invalidate is not None:
            try:
                self.on_invalidate(self, x, y, w, h)
            except Exception as e:  # never let PyGI swallow silently
                print(f"[{self.name}] on_invalidate raised: {e!r}", file=sys.stderr)

    def _on_mark(self, ch, mark):
        self.marks += 1
        if self.primary is not None and mark:
            self.mark_after_primary = True

    # -- lifecycle ------------------------------------------------------------------------

    def connect(self):
        if not self._S.Session.connect(self.session):
            raise SpiceClientError(f"spice_session_connect({self.uri}) returned FALSE")
        self._connected = True
        return self

    def close(self, settle=0.3):
        """Disconnect and drop all handlers. Bounded."""
        if self._connected:
            self._connected = False
            self.primary = None
            self.primaries.clear()
            try:
                self._S.Session.disconnect(self.session)
            except Exception:
                pass
            try:
                pump(settle)
            except Aborted:
                pass
        for obj, h in self._handlers:
            try:
                self._GObject.Object.disconnect(obj, h)
            except Exception:
                pass
        self._handlers.clear()
        self.on_invalidate = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    # -- state queries --------------------------------------------------------------------

    def channel(self, name, cid=0):
        for (t, i), st in self.channels.items():
            if CHANNEL_NAMES.get(t) == name and i == cid:
                return st
        return None

    def errors(self):
        """[(channel, error string)] for every channel that reported an error event."""
        return [(CHANNEL_NAMES.get(t, str(t)), st.error)
                for (t, i), st in self.channels.items() if st.error]

    def has_event(self, event_nick, channel=None):
        return any(e == event_nick and (channel is None or c == channel)
                   for _, c, e in self.events)

    def mouse_mode(self):
        st = self.channel("main")
        if st is None:
            return None
        return st.obj.get_property("mouse-mode")  # 1 server, 2 client

    def describe(self):
        """A one-paragraph diagnostic string for assertion messages."""
        p = self.primary
        prim = (f"{p.width}x{p.height} fmt={p.format} stride={p.stride}" if p else "none")
        chans = ", ".join(
            f"{CHANNEL_NAMES.get(t, t)}{i}:{'open' if st.opened else 'not-open'}"
            f"{'/closed' if st.closed else ''}{'/' + st.error if st.error else ''}"
            for (t, i), st in sorted(self.channels.items(), key=lambda kv: kv[0]))
        ev = ", ".join(f"{c}:{e}" for _, c, e in self.events[-12:])
        return (f"[{self.name} {self.uri}] primary={prim} creates={self.primary_creates} "
                f"invalidates={self.invalidates} marks={self.marks} "
                f"mark_after_primary={self.mark_after_primary} channels=[{chans}] "
                f"events=[{ev}] disconnected={self.disconnected}")

    # -- waits ----------------------------------------------------------------------------

    def pump(self, seconds, until=None, on_tick=None):
        return pump(seconds, until=until, on_tick=on_tick)

    def wait_for(self, predicate, timeout, what="condition"):
        if not pump(timeout, until=predicate):
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}: "
                               f"{self.describe()}")

    def _fatal(self):
        main = self.channel("main")
        return bool(main and main.error) or self.disconnected

    def wait_primary(self, timeout=10.0, first_draw=True, display=0):
        """Wait for the primary surface of display channel `display` (and, by default, for a
        first invalidate after it)."""
        def drawn():
            return self.invalidates_by.get(display, 0) > 0
        def ready():
            if self._fatal():
                return True
            if self.primaries.get(display) is None:
                return False
            return (not first_draw) or drawn()
        pump(timeout, until=ready)
        if self.primaries.get(display) is None or (first_draw and not drawn()):
            raise TimeoutError(f"no primary surface{' drawn' if first_draw else ''} on display "
                               f"{display} within {timeout}s: {self.describe()}")
        return self.primaries[display]

    def wait_channel_open(self, name, timeout=10.0):
        def ready():
            st = self.channel(name)
            return self._fatal() or (st is not None and (st.opened or st.closed))
        pump(timeout, until=ready)
        st = self.channel(name)
        if st is None or not st.opened or st.closed:
            raise TimeoutError(f"{name} channel not open within {timeout}s: {self.describe()}")
        return st

    def wait_event(self, event_nick, channel=None, timeout=10.0):
        """Wait for a channel event; return True if seen within the timeout."""
        return pump(timeout, until=lambda: self.has_event(event_nick, channel))

    # -- framebuffer ----------------------------------------------------------------------

    def snapshot(self, display=0):
        """(width, height, stride, bytes) copied from the client's live framebuffer of display
        channel `display`.

        Pixel format is the primary's (normally 32_xRGB: bytes B, G, R, x in memory).
        """
        p = self.primary if display == 0 else self.primaries.get(display)
        if p is None or not p.pointer:
            raise SpiceClientError(f"no primary surface to read: {self.describe()}")
        return p.width, p.height, p.stride, ctypes.string_at(p.pointer, p.stride * p.height)

    def read_rows(self, y0, nrows):
        """(width, stride, bytes) of rows y0 .. y0+nrows-1 only (cheap, for fast sampling)."""
        p = self.primary
        if p is None or not p.pointer:
            return None
        nrows = max(0, min(nrows, p.height - y0))
        return p.width, p.stride, ctypes.string_at(p.pointer + y0 * p.stride, p.stride * nrows)

    def timestamp(self):
        """Decoded timestamp strip of the current picture, or None."""
        r = self.read_rows(0, 16)
        if r is None:
            return None
        w, stride, buf = r
        return decode_timestamp_strip(buf, w, 16, stride)

    def input_strip(self):
        r = self.read_rows(16, 16)
        if r is None:
            return None
        w, stride, buf = r
        return decode_input_strip(buf, w, 16, stride, y0=0)

    # -- inputs ---------------------------------------------------------------------------

    def _inputs(self):
        st = self.channel("inputs")
        if st is None or not st.opened or st.closed:
            raise SpiceClientError(f"inputs channel not open (spice-gtk would silently drop "
                                   f"the event): {self.describe()}")
        return st.obj

    def send_key(self, scancode, mode="tap", hold_s=0.05):
        """Send a key. `scancode` is spice-gtk's code: PC XT set 1, extended keys 0x100|code.

        mode "tap": spice_inputs_channel_key_press_and_release (KEY_SCANCODE when the server
        has INPUTS_CAP_KEY_SCANCODE, else KEY_DOWN + KEY_UP);
        mode "hold": key_press, pump `hold_s`, key_release (always KEY_DOWN / KEY_UP).
        """
        S = self._S
        ch = self._inputs()
        if mode == "tap":
            S.InputsChannel.key_press_and_release(ch, scancode)
        elif mode == "hold":
            S.InputsChannel.key_press(ch, scancode)
            pump(hold_s)
            S.InputsChannel.key_release(ch, scancode)
        else:
            raise ValueError(mode)

    def key_press(self, scancode):
        self._S.InputsChannel.key_press(self._inputs(), scancode)

    def key_release(self, scancode):
        self._S.InputsChannel.key_release(self._inputs(), scancode)

    def move_mouse(self, x, y, display_id=0):
        """Absolute pointer position (CLIENT mouse mode), in surface pixels."""
        self._S.InputsChannel.position(self._inputs(), x, y, display_id, self.button_state)

    def mouse_press(self, button=MOUSE_LEFT):
        # spice-gtk ORs the button into the state itself; pass the state before the press.
        self._S.InputsChannel.button_press(self._inputs(), button, self.button_state)
        self.button_state |= BUTTON_MASK.get(button, 0)

    def mouse_release(self, button=MOUSE_LEFT):
        self._S.InputsChannel.button_release(self._inputs(), button, self.button_state)
        self.button_state &= ~BUTTON_MASK.get(button, 0)

    def click(self, button=MOUSE_LEFT, hold_s=0.05):
        self.mouse_press(button)
        pump(hold_s)
        self.mouse_release(button)


# ------------------------------------------------------------------------------------------
# Strip decoders (the scanoutd demo picture)
# ------------------------------------------------------------------------------------------

CELL = 16
TS_CELLS = 34
INPUT_CELLS = 41


def cell_lumas(buf, width, height, stride, ncells, x0=0, y0=0, fmt="bgrx", cell=CELL):
    """Mean luma (BT.601 weights) of the central half (8x8 for 16 px cells) of `ncells` cells.

    Cells sit side by side from (x0, y0). Returns a list; entries for cells that do not fit in
    the picture are None. fmt: "bgrx" (32-bit, B G R x), "rgbx" (32-bit) or "rgb" (24-bit).
    """
    bpp = 3 if fmt == "rgb" else 4
    ri, bi = (2, 0) if fmt == "bgrx" else (0, 2)
    lo, hi = cell // 4, cell - cell // 4
    n = (hi - lo) * (hi - lo)
    out = []
    for i in range(ncells):
        cx, cy = x0 + i * cell, y0
        if cx < 0 or cy < 0 or cx + hi > width or cy + hi > height:
            out.append(None)
            continue
        sr = sg = sb = 0
        for yy in range(cy + lo, cy + hi):
            a = yy * stride + (cx + lo) * bpp
            seg = buf[a:a + (hi - lo) * bpp]
            sr += sum(seg[ri::bpp])
            sg += sum(seg[1::bpp])
            sb += sum(seg[bi::bpp])
        out.append((77 * sr + 150 * sg + 29 * sb) / (256.0 * n))
    return out


def _bits(lumas):
    return [None if v is None else (1 if v >= 128 else 0) for v in lumas]


def _framed(lumas):
    """Cell 0 white, cell 1 black, with a clear margin (not just the 128 threshold)."""
    return (lumas[0] is not None and lumas[1] is not None
            and lumas[0] >= 192 and lumas[1] <= 64)


def decode_timestamp_strip(buf, width, height, stride, x0=0, y0=0, fmt="bgrx", cell=CELL):
    """The capture-time value (Unix ms mod 2^32) of the timestamp strip, or None."""
    lum = cell_lumas(buf, width, height, stride, TS_CELLS, x0, y0, fmt, cell)
    if not _framed(lum) or any(v is None for v in lum):
        return None
    v = 0
    for b in _bits(lum[2:34]):
        v = (v << 1) | b
    return v


@dataclass
class InputStrip:
    scancode: int
    x: int
    y: int
    button: bool | None   # None when cell 40 is outside the picture (width < 656)


def decode_input_strip(buf, width, height, stride, x0=0, y0=CELL, fmt="bgrx", cell=CELL):
    """Decode the input strip (second row of cells). Returns InputStrip or None."""
    lum = cell_lumas(buf, width, height, stride, INPUT_CELLS, x0, y0, fmt, cell)
    if not _framed(lum) or any(v is None for v in lum[:40]):
        return None
    bits = _bits(lum)

    def num(a, b):
        v = 0
        for bit in bits[a:b]:
            v = (v << 1) | bit
        return v
    return InputStrip(scancode=num(2, 18), x=num(18, 29), y=num(29, 40),
                      button=None if bits[40] is None else bool(bits[40]))


def encode_strip_cells(values_bits, width, height, y0=0, bpp=4, fmt="bgrx", buf=None,
                       cell=CELL):
    """Paint a strip (cell 0 white, cell 1 black, then the given bits) into a framebuffer.

    For testing the decoders. Returns the (bytearray) buffer.
    """
    stride = width * bpp
    if buf is None:
        buf = bytearray(stride * height)
    cells = [1, 0] + list(values_bits)
    for i, bit in enumerate(cells):
        v = 255 if bit else 0
        for yy in range(y0, min(height, y0 + cell)):
            for xx in range(i * cell, min(width, (i + 1) * cell)):
                off = yy * stride + xx * bpp
                buf[off:off + 3] = bytes((v, v, v))
    return buf


def int_bits(v, n):
    return [(v >> (n - 1 - k)) & 1 for k in range(n)]


class StripSampler:
    """Samples a client's timestamp strip (at most every `period` s, plus on every invalidate
    when attach_invalidate=True) and records the first sighting of each new value.

    sightings: [(value, monotonic_s, age_ms)] in order of first sighting, where age_ms is
    now_ms - value at that moment (capture-to-client latency on a shared clock).
    """

    def __init__(self, client, period=0.005, attach_invalidate=True):
        self.client = client
        self.period = period
        self.sightings = []
        self.samples = 0
        self.undecodable = 0
        self._last = None
        self._next = 0.0
        if attach_invalidate:
            client.on_invalidate = lambda c, x, y, w, h: self.sample() if y < 16 else None

    def sample(self):
        v = self.client.timestamp()
        self.samples += 1
        if v is None:
            self.undecodable += 1
            return None
        if v != self._last:
            self._last = v
            self.sightings.append((v, time.monotonic(), age_ms(v)))
        return v

    def tick(self):
        t = time.monotonic()
        if t >= self._next:
            self._next = t + self.period
            self.sample()

    def values(self):
        return [v for v, _, _ in self.sightings]

    def ages(self):
        return [a for _, _, a in self.sightings]

    def detach(self):
        if self.client.on_invalidate is not None:
            self.client.on_invalidate = None


def percentile(values, p):
    """Nearest-rank-with-interpolation percentile of a list (p in 0..100); None if empty."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(v) - 1)
    return v[f] + (v[c] - v[f]) * (k - f)


# ------------------------------------------------------------------------------------------
# Images: BGRx <-> RGB, PPM, PNG, comparison (plain Python)
# ------------------------------------------------------------------------------------------

def bgrx_to_rgb(buf, width, height, stride):
    """Packed RGB bytes from a 32-bit B,G,R,x framebuffer (any stride)."""
    if stride != width * 4:
        buf = b"".join(buf[y * stride:y * stride + width * 4] for y in range(height))
    else:
        buf = buf[:width * 4 * height]
    n = width * height
    rgb = bytearray(n * 3)
    rgb[0::3] = buf[2::4]
    rgb[1::3] = buf[1::4]
    rgb[2::3] = buf[0::4]
    return bytes(rgb)


def parse_ppm(data):
    """(width, height, rgb bytes) from a binary P6 PPM with maxval 255."""
    fields = []
    i = 0
    n = len(data)
    while len(fields) < 4:
        while i < n and data[i:i + 1].isspace():
            i += 1
        if i < n and data[i:i + 1] == b"#":
            while i < n and data[i:i + 1] not in (b"\n", b"\r"):
                i += 1
            continue
        j = i
        while j < n and not data[j:j + 1].isspace():
            j += 1
        if j == i:
            raise ValueError("truncated PPM header")
        fields.append(data[i:j])
        i = j
    i += 1  # exactly one whitespace byte after maxval
    if fields[0] != b"P6":
        raise ValueError(f"not a P6 PPM (magic {fields[0]!r})")
    w, h, maxval = int(fields[1]), int(fields[2]), int(fields[3])
    if maxval == 65535:  # 16-bit samples, big-endian: keep the high bytes
        pix = data[i:i + w * h * 6]
        if len(pix) != w * h * 6:
            raise ValueError("PPM pixel data truncated")
        return w, h, bytes(pix[0::2])
    if maxval != 255:
        raise ValueError(f"PPM maxval {maxval} unsupported")
    pix = data[i:i + w * h * 3]
    if len(pix) != w * h * 3:
        raise ValueError(f"PPM pixel data truncated: {len(pix)} of {w * h * 3} bytes")
    return w, h, bytes(pix)


def write_ppm(path, width, height, rgb):
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (width, height))
        f.write(rgb)


def write_png(path, width, height, rgb):
    """Minimal RGB8 PNG writer (zlib only)."""
    raw = bytearray()
    row = width * 3
    for y in range(height):
        raw.append(0)
        raw += rgb[y * row:(y + 1) * row]

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(bytes(raw), 6)))
        f.write(chunk(b"IEND", b""))


def psnr(a, b):
    """PSNR in dB of two equally long RGB byte strings."""
    assert len(a) == len(b)
    # Sum of squared differences in chunks (plain Python, no numpy).
    sse = 0
    for i in range(0, len(a), 1 << 16):
        sse += sum((x - y) * (x - y) for x, y in zip(a[i:i + (1 << 16)], b[i:i + (1 << 16)]))
    if sse == 0:
        return float("inf")
    mse = sse / len(a)
    return 10 * math.log10(255 * 255 / mse)


def compare_rgb(a, b, width, height):
    """(n_differing_pixels, bbox or None, first_diff (x, y, a_rgb, b_rgb) or None)."""
    if a == b:
        return 0, None, None
    n = 0
    x0 = y0 = 1 << 30
    x1 = y1 = -1
    first = None
    row = width * 3
    for y in range(height):
        ra, rb = a[y * row:(y + 1) * row], b[y * row:(y + 1) * row]
        if ra == rb:
            continue
        for x in range(width):
            pa, pb = ra[x * 3:x * 3 + 3], rb[x * 3:x * 3 + 3]
            if pa != pb:
                n += 1
                x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
                if first is None:
                    first = (x, y, tuple(pa), tuple(pb))
    return n, (x0, y0, x1, y1), first


def find_strip_in_rgb(rgb, width, height, max_hits=4, validate=None):
    """Search an RGB picture (e.g. a screenshot) for the demo's timestamp strip.

    Looks for a 16x16 white cell directly followed by a 16x16 black cell (exact 1:1 scale),
    then decodes the 34-cell strip at that origin. Returns [(x, y, value)] (value may be None
    when the origin looked right but the strip did not decode). `validate(value)` can filter.
    """
    white = b"\xff" * 3
    black = b"\x00" * 3
    hits = []
    row = width * 3
    pat = white * 12 + black * 12     # the inner part of cell 0 / cell 1 around their border
    for y in range(0, height - 16):
        line = rgb[y * row:(y + 1) * row]
        start = 0
        while True:
            i = line.find(pat, start)
            if i < 0:
                break
            start = i + 1
            if i % 3:
                continue
            x = i // 3 + 12 - 16          # candidate origin of cell 0
            if x < 0:
                continue
            # top-left of the white cell must start a 16-pixel run on this row
            if line[x * 3:(x + 16) * 3] != white * 16 or line[(x + 16) * 3:(x + 32) * 3] != black * 16:
                continue
            # and the row above must not be part of the same white cell
            if y > 0 and rgb[(y - 1) * row + x * 3:(y - 1) * row + (x + 16) * 3] == white * 16:
                continue
            v = decode_timestamp_strip(rgb, width, height, row, x0=x, y0=y, fmt="rgb")
            if validate is None or validate(v):
                hits.append((x, y, v))
                if len(hits) >= max_hits:
                    return hits
    return hits


def find_strip_scaled(rgb, width, height, validate=None, max_hits=4):
    """Like find_strip_in_rgb, but tolerant of a scaled picture (cells of 6..64 px).

    Thresholds pixels to white/black, looks for a white run followed by a black run of about
    the same length, and decodes 34 cells by sampling each cell's centre. Slow (pure Python);
    meant as a fallback. Returns [(x, y, cell_px, value)].
    """
    row = width * 3
    hits = []
    seen_rows = {}

    def cls(p):
        if p[0] >= 200 and p[1] >= 200 and p[2] >= 200:
            return "W"
        if p[0] <= 55 and p[1] <= 55 and p[2] <= 55:
            return "B"
        return "O"

    def lum(x, y):
        o = y * row + x * 3
        return (77 * rgb[o] + 150 * rgb[o + 1] + 29 * rgb[o + 2]) >> 8

    for y in range(height):
        line = rgb[y * row:(y + 1) * row]
        runs = []
        x = 0
        while x < width:
            c = cls(line[x * 3:x * 3 + 3])
            x2 = x + 1
            while x2 < width and cls(line[x2 * 3:x2 * 3 + 3]) == c:
                x2 += 1
            runs.append((c, x, x2 - x))
            x = x2
        for (c1, xa, la), (c2, xb, lb) in zip(runs, runs[1:]):
            # the black run is cell 1 plus any following 0-bit cells
            if c1 != "W" or c2 != "B" or not (6 <= la <= 64) or lb < la - 2:
                continue
            if xa in seen_rows and seen_rows[xa] < y:
                continue  # same strip, already examined from its top row
            seen_rows[xa] = y
            cellf = float(la) if abs(la - lb) > 2 else (la + lb) / 2.0
            cy = int(y + cellf / 2)
            if cy >= height:
                continue
            bits = []
            ok = True
            for i in range(34):
                cx = int(xa + (i + 0.5) * cellf)
                if cx + 1 >= width:
                    ok = False
                    break
                v = sum(lum(cx + dx, cy + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                        if 0 <= cy + dy < height) / 9.0
                bits.append(1 if v >= 128 else 0)
            if not ok or bits[0] != 1 or bits[1] != 0:
                continue
            val = 0
            for b in bits[2:]:
                val = (val << 1) | b
            if validate is None or validate(val):
                hits.append((xa, y, cellf, val))
                if len(hits) >= max_hits:
                    return hits
    return hits


def rgb_stats(rgb, width, height, x0=0, y0=0, x1=None, y1=None, step=4):
    """(distinct colours, fraction of non-background pixels) over a sampled region."""
    x1 = width if x1 is None else x1
    y1 = height if y1 is None else y1
    colours = {}
    for y in range(y0, y1, step):
        base = y * width * 3
        for x in range(x0, x1, step):
            p = rgb[base + x * 3:base + x * 3 + 3]
            colours[p] = colours.get(p, 0) + 1
    total = sum(colours.values()) or 1
    bg = max(colours.values()) if colours else 0
    return len(colours), 1.0 - bg / total


# ------------------------------------------------------------------------------------------
# Processes: ports, readiness, the scanoutd server, QEMU, Xvfb, remote-viewer
# ------------------------------------------------------------------------------------------

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def artifacts_dir():
    d = os.environ.get("E2E_ARTIFACTS", "/tmp/scanoutd-e2e")
    os.makedirs(d, exist_ok=True)
    return d


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def free_ports(n):
    """n distinct free TCP ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_accepts(host, port, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_listening(port, host="127.0.0.1"):
    """True if a TCP socket is in LISTEN state on `port` (read from /proc/net/tcp*, so the
    check does not open a connection the server would count as a failed link).
    Falls back to connecting when /proc is unavailable."""
    found_proc = False
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        found_proc = True
        for ln in lines:
            parts = ln.split()
            if len(parts) > 3 and parts[3] == "0A" and \
                    int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    if not found_proc:
        return port_accepts(host, port)
    return False


def stop_process(proc, term_timeout=5.0):
    """SIGTERM the process (by PID), SIGKILL after `term_timeout`. Returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    return proc.returncode


def tail_file(path, max_bytes=6000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"


def default_scanoutd_bin(profile="debug"):
    return os.environ.get("SCANOUTD_BIN") or os.path.join(REPO_ROOT, "target", profile,
                                                          "scanoutd")


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): value} from Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        labels = {}
        if "{" in line:
            name, rest = line.split("{", 1)
            lab, rest = rest.rsplit("}", 1)
            for part in _split_labels(lab):
                if "=" in part:
                    k, v = part.split("=", 1)
                    labels[k.strip()] = v.strip().strip('"')
        else:
            name, rest = line.split(None, 1) if " " in line else (line, "")
        val = rest.split()
        if not val:
            continue
        try:
            out[(name.strip(), frozenset(labels.items()))] = float(val[0])
        except ValueError:
            continue
    return out


def _split_labels(s):
    parts, cur, q = [], "", False
    for ch in s:
        if ch == '"':
            q = not q
        if ch == "," and not q:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def stream_codec(metrics):
    for (name, labels), v in metrics.items():
        if name == "scanoutd_client_stream_codec" and v == 1:
            return dict(labels).get("codec")
    return None


def metric_value(metrics, name, **labels):
    """Sum of all samples of `name` whose labels include `labels`; None if there is none."""
    tot, found = 0.0, False
    want = set(labels.items())
    for (n, lab), v in metrics.items():
        if n == name and want <= set(lab):
            tot += v
            found = True
    return tot if found else None


class ScanoutdServer:
    """`scanoutd serve` on free ports, with its stderr in a log file.

    Start it with start(); it is ready when the SPICE port accepts TCP. stop() sends SIGTERM to
    its PID and SIGKILL after a timeout.
    """

    def __init__(self, binary=None, scene="still", size="640x480", fps=30, password=None,
                 disable_ticketing=None, extra_args=(), log_dir=None, name="scanoutd",
                 env=None, source="demo"):
        self.binary = binary or default_scanoutd_bin()
        self.scene, self.size, self.fps = scene, size, fps
        self.password = password
        self.disable_ticketing = (password is None) if disable_ticketing is None \
            else disable_ticketing
        self.extra_args = list(extra_args)
        self.source = source
        self.log_dir = log_dir or artifacts_dir()
        self.name = name
        self.env = env
        self.proc = None
        self.port = self.metrics_port = None
        self.log_path = None
        self.password_file = None
        self.argv = None

    @property
    def uri(self):
        return f"spice://127.0.0.1:{self.port}"

    @property
    def metrics_url(self):
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self, ready_timeout=20.0, attempts=2):
        if self.alive():
            # `with ScanoutdServer(...)` already started it; a second start would leak the
            # first process.
            raise RuntimeError("scanoutd is already running (the `with` block starts it)")
        last = None
        for _ in range(attempts):
            try:
                return self._start_once(ready_timeout)
            except RuntimeError as e:
                last = e
                # a port taken between our probe and the server's bind: try other ports
                if "in use" not in str(e).lower():
                    raise
        raise last

    def _start_once(self, ready_timeout):
        if not os.access(self.binary, os.X_OK):
            raise FileNotFoundError(f"scanoutd binary not found/executable: {self.binary}")
        self.port, self.metrics_port = free_ports(2)
        argv = [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--source", self.source]
        if self.source == "demo":
            # (scanoutd refuses the demo's options for a QEMU source)
            argv += ["--scene", self.scene, "--size", self.size]
        argv += ["--fps", str(self.fps), "--metrics", f"127.0.0.1:{self.metrics_port}"]
        if self.password is not None:
            fd, self.password_file = tempfile.mkstemp(prefix="scanoutd-pw-", dir=self.log_dir)
            with os.fdopen(fd, "w") as f:
                f.write(self.password)
            argv += ["--password-file", self.password_file]
        elif self.disable_ticketing:
            argv += ["--disable-ticketing"]
        argv += self.extra_args
        self.argv = argv
        self.log_path = os.path.join(self.log_dir, f"{self.name}-{self.port}.log")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")   # plain log files
        if self.env:
            env.update(self.env)
        with open(self.log_path, "wb") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            _check_abort()
            if self.proc.poll() is not None:
                raise RuntimeError(f"scanoutd exited with {self.proc.returncode} before "
                                   f"accepting connections; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            if port_listening(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"scanoutd did not accept on port {self.port} within "
                           f"{ready_timeout}s; log {self.log_path}:\n{self.log_tail()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=6000):
        return tail_file(self.log_path, n) if self.log_path else "<no log>"

    def metrics_text(self, timeout=5.0):
        return http_get(self.metrics_url + "/metrics", timeout).decode("utf-8", "replace")

    def metrics(self, timeout=5.0):
        return parse_prometheus(self.metrics_text(timeout))

    def snapshot_ppm(self, timeout=5.0):
        """(width, height, rgb) of the source's current frame."""
        return parse_ppm(http_get(self.metrics_url + "/snapshot.ppm", timeout))

    def stop(self, term_timeout=5.0):
        rc = stop_process(self.proc, term_timeout)
        if self.password_file:
            try:
                os.unlink(self.password_file)
            except OSError:
                pass
            self.password_file = None
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class QemuSpice:
    """QEMU's built-in SPICE server (SeaBIOS -> 'No bootable device'), a reference peer."""

    def __init__(self, password=None, log_dir=None):
        self.password = password
        self.log_dir = log_dir or artifacts_dir()
        self.proc = None
        self.port = None
        self.log_path = None
        self._pwfile = None

    @property
    def uri(self):
        return f"spice://127.0.0.1:{self.port}"

    def start(self, ready_timeout=20.0):
        qemu = shutil.which("qemu-system-x86_64")
        if not qemu:
            raise FileNotFoundError("qemu-system-x86_64 not installed")
        self.port = free_port()
        argv = [qemu, "-display", "none", "-vga", "none", "-machine", "pc", "-m", "128",
                "-nodefaults", "-device", "VGA"]
        if self.password is None:
            argv += ["-spice", f"port={self.port},addr=127.0.0.1,disable-ticketing=on"]
        else:
            fd, self._pwfile = tempfile.mkstemp(prefix="qemu-pw-", dir=self.log_dir)
            with os.fdopen(fd, "w") as f:
                f.write(self.password)
            argv += ["-object", f"secret,id=spicepw,file={self._pwfile}",
                     "-spice", f"port={self.port},addr=127.0.0.1,password-secret=spicepw"]
        self.log_path = os.path.join(self.log_dir, f"qemu-{self.port}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited {self.proc.returncode}: "
                                   f"{tail_file(self.log_path)}")
            if port_accepts("127.0.0.1", self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"qemu SPICE port not ready: {tail_file(self.log_path)}")

    def stop(self):
        rc = stop_process(self.proc, 5.0)
        if self._pwfile:
            try:
                os.unlink(self._pwfile)
            except OSError:
                pass
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Xvfb:
    """A private Xvfb on a free display number (chosen by Xvfb itself via -displayfd)."""

    def __init__(self, screen="1280x1024x24", log_dir=None):
        self.screen = screen
        self.log_dir = log_dir or artifacts_dir()
        self.proc = None
        self.display = None

    def start(self, timeout=15.0):
        xvfb = shutil.which("Xvfb")
        if not xvfb:
            raise FileNotFoundError("Xvfb not installed (package xvfb)")
        r, w = os.pipe()
        log = open(os.path.join(self.log_dir, "xvfb.log"), "ab")
        try:
            self.proc = subprocess.Popen(
                [xvfb, "-displayfd", str(w), "-screen", "0", self.screen, "-nolisten", "tcp",
                 "-noreset"],
                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        finally:
            os.close(w)
            log.close()
        deadline = time.monotonic() + timeout
        data = b""
        try:
            os.set_blocking(r, False)
            while time.monotonic() < deadline and not data.endswith(b"\n"):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Xvfb exited {self.proc.returncode}")
                try:
                    chunk = os.read(r, 64)
                    if chunk:
                        data += chunk
                        continue
                    if chunk == b"":
                        break
                except BlockingIOError:
                    pass
                time.sleep(0.02)
        finally:
            os.close(r)
        if not data.strip():
            self.stop()
            raise RuntimeError("Xvfb did not report its display number")
        self.display = ":" + data.decode().strip()
        return self

    def env(self):
        e = dict(os.environ)
        e["DISPLAY"] = self.display
        e.pop("WAYLAND_DISPLAY", None)
        return e

    def screenshot(self, timeout=15.0):
        """(width, height, rgb) of the root window (ImageMagick `import`, or xwd)."""
        imp = shutil.which("import")
        if imp:
            out = subprocess.run([imp, "-display", self.display, "-window", "root", "-depth", "8",
                                  "ppm:-"],
                                 capture_output=True, timeout=timeout, env=self.env())
            if out.returncode == 0 and out.stdout:
                return parse_ppm(out.stdout)
            raise RuntimeError(f"import failed rc={out.returncode}: "
                               f"{out.stderr.decode(errors='replace')[:500]}")
        raise FileNotFoundError("`import` (imagemagick) not installed")

    def stop(self):
        return stop_process(self.proc, 5.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RemoteViewer:
    def __init__(self, xvfb, uri, log_dir=None, extra_args=()):
        self.xvfb, self.uri = xvfb, uri
        self.log_dir = log_dir or artifacts_dir()
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = os.path.join(self.log_dir, "remote-viewer.log")

    def start(self):
        rv = shutil.which("remote-viewer")
        if not rv:
            raise FileNotFoundError("remote-viewer not installed (package virt-viewer)")
        env = self.xvfb.env()
        env.setdefault("NO_AT_BRIDGE", "1")          # no accessibility bus warnings
        env["GDK_BACKEND"] = "x11"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([rv, *self.extra_args, self.uri],
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self):
        return tail_file(self.log_path, 3000)

    def stop(self):
        return stop_process(self.proc, 3.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
