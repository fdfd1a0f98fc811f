#!/usr/bin/python3
"""Self-test of the e2e harness against QEMU's built-in SPICE server (no scanoutd needed).

Checks: the strip decoders on synthetic pictures, PPM/PNG helpers, connecting spice-gtk to
QEMU (primary surface, framebuffer snapshot, inputs channel, key/mouse calls), password
accept/reject, and a remote-viewer screenshot under Xvfb (saved for a human to look at).

    /usr/bin/python3 tests/e2e/selftest_qemu.py          # everything
    /usr/bin/python3 tests/e2e/selftest_qemu.py decoders # only the pure-Python parts

Not collected by pytest (its name does not start with test_).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spiceclient as sc  # noqa: E402

FAILS = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILS.append(msg)


def selftest_decoders():
    w, h = 700, 40
    ts = 0xDEADBEEF
    buf = sc.encode_strip_cells(sc.int_bits(ts, 32), w, h, y0=0)
    bits = (sc.int_bits(0x14D, 16) + sc.int_bits(1234, 11) + sc.int_bits(77, 11) + [1])
    sc.encode_strip_cells(bits, w, h, y0=16, buf=buf)
    check(sc.decode_timestamp_strip(buf, w, h, w * 4) == ts, "timestamp decode (bgrx)")
    inp = sc.decode_input_strip(buf, w, h, w * 4)
    check(inp == sc.InputStrip(0x14D, 1234, 77, True), f"input decode {inp}")
    # 640 wide: cell 40 (x 640..656) is off-picture -> button None, rest still decodes
    w2 = 640
    buf2 = sc.encode_strip_cells(bits, w2, 16, y0=0)
    inp2 = sc.decode_input_strip(buf2, w2, 16, w2 * 4, y0=0)
    check(inp2 == sc.InputStrip(0x14D, 1234, 77, None), f"input decode at 640 wide {inp2}")
    # no strip -> None
    check(sc.decode_timestamp_strip(bytes(w * h * 4), w, h, w * 4) is None, "blank -> None")
    # RGB conversion + screenshot-style search at an offset
    rgb = sc.bgrx_to_rgb(bytes(buf), w, h, w * 4)
    W, H = 900, 200
    big = bytearray(b"\x30\x30\x30" * W * H)
    for y in range(h):
        big[((y + 57) * W + 100) * 3:((y + 57) * W + 100 + w) * 3] = rgb[y * w * 3:(y + 1) * w * 3]
    hits = sc.find_strip_in_rgb(bytes(big), W, H)
    check(hits and hits[0] == (100, 57, ts), f"find strip in screenshot {hits}")
    # scaled (12 px cells) strip, found by the tolerant search
    sbuf = sc.encode_strip_cells(sc.int_bits(ts, 32), 500, 30, y0=3, cell=12)
    srgb = sc.bgrx_to_rgb(bytes(sbuf), 500, 30, 2000)
    shits = sc.find_strip_scaled(srgb, 500, 30)
    check(shits and shits[0][0] == 0 and shits[0][1] == 3 and shits[0][3] == ts,
          f"find scaled strip {shits}")
    # PPM round trip
    path = os.path.join(sc.artifacts_dir(), "selftest.ppm")
    sc.write_ppm(path, w, h, rgb)
    w3, h3, rgb3 = sc.parse_ppm(open(path, "rb").read())
    check((w3, h3, rgb3) == (w, h, rgb), "ppm round trip")
    sc.write_png(os.path.join(sc.artifacts_dir(), "selftest-strip.png"), w, h, rgb)
    m = sc.parse_prometheus('# HELP x\nscanoutd_bytes_sent_total{channel="display"} 12\n'
                            'scanoutd_bytes_sent_total{channel="main"} 3\n'
                            'scanoutd_connected_clients 2\n'
                            'scanoutd_client_coalesced_updates_total{client="1"} 5\n')
    check(sc.metric_value(m, "scanoutd_bytes_sent_total", channel="display") == 12
          and sc.metric_value(m, "scanoutd_bytes_sent_total") == 15
          and sc.metric_value(m, "scanoutd_connected_clients") == 2, "prometheus parse")
    check(sc.age_ms(0xFFFFFFF0, 0x10) == 0x20 and sc.age_ms(0x10, 0xFFFFFFF0) == -0x20,
          "age wraparound")


def selftest_qemu():
    reason = sc.spice_gi_missing_reason()
    if reason:
        check(False, reason)
        return
    art = sc.artifacts_dir()
    with sc.QemuSpice() as q:
        c = sc.SpiceClient(q.uri, name="qemu")
        with c:
            p = c.wait_primary(15)
            check(p.width > 0 and p.format == sc.SURFACE_FMT_32_xRGB,
                  f"primary {p.width}x{p.height} fmt {p.format}")
            c.wait_channel_open("inputs", 10)
            # let SeaBIOS print its message
            c.pump(2.0)
            w, h, stride, fb = c.snapshot()
            rgb = sc.bgrx_to_rgb(fb, w, h, stride)
            sc.write_png(os.path.join(art, "selftest-qemu-client.png"), w, h, rgb)
            ncol, frac = sc.rgb_stats(rgb, w, h, step=1)
            check(ncol >= 2 and frac > 0.001, f"client picture has content ({ncol} colours, "
                                             f"{frac:.3%} non-background)")
            print("     ", c.describe())
            print("      mouse mode", c.mouse_mode())
            c.send_key(0x1E)
            c.send_key(0x14D, mode="hold")
            c.move_mouse(123, 77)
            c.click()
            c.pump(0.3)
            check(not c.errors(), f"no channel errors after input: {c.errors()}")
    with sc.QemuSpice(password="secret") as q:
        good = sc.SpiceClient(q.uri, password="secret", name="good")
        bad = sc.SpiceClient(q.uri, password="wrong", name="bad")
        with good, bad:
            good.wait_primary(15)
            check(True, "correct password -> primary")
            seen = bad.wait_event("SPICE_CHANNEL_ERROR_AUTH", "main", 10)
            check(seen and bad.primary is None, f"wrong password -> auth error: "
                                                f"{bad.describe()}")


def selftest_remote_viewer():
    art = sc.artifacts_dir()
    with sc.QemuSpice() as q, sc.Xvfb("1280x1024x24") as x:
        rv = sc.RemoteViewer(x, q.uri).start()
        try:
            time.sleep(5)
            check(rv.alive(), "remote-viewer running")
            w, h, rgb = x.screenshot()
            path = os.path.join(art, "selftest-remote-viewer-qemu.png")
            sc.write_png(path, w, h, rgb)
            ncol, frac = sc.rgb_stats(rgb, w, h)
            check(ncol > 2, f"screenshot {w}x{h} {ncol} colours {frac:.1%} -> {path}")
        finally:
            rv.stop()
            print("      remote-viewer log:", rv.log_tail()[-800:])


if __name__ == "__main__":
    what = sys.argv[1:] or ["decoders", "qemu", "remote-viewer"]
    if "decoders" in what:
        selftest_decoders()
    if "qemu" in what:
        selftest_qemu()
    if "remote-viewer" in what:
        selftest_remote_viewer()
    print("FAILED: %d" % len(FAILS) if FAILS else "all ok")
    sys.exit(1 if FAILS else 0)
