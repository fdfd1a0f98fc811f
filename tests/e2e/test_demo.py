"""End-to-end tests: scanoutd's demo source seen through the real spice-gtk 0.42 client.

    /usr/bin/python3 -m pytest tests/e2e -v
"""

import os
import subprocess
import time

import pytest

import spiceclient as sc


def _diag(srv, *clients):
    parts = [c.describe() for c in clients]
    if srv is not None:
        parts.append(f"server alive={srv.alive()} log={srv.log_path}\n"
                     f"--- server log tail ---\n{srv.log_tail(3000)}")
    return "\n".join(parts)


def _assert_clean(srv, allow_link_failures=0):
    """The server's own error counters (where it exports them) stayed at zero: no client
    message was malformed in its eyes, no link failed, no client stalled."""
    text = srv.metrics_text()
    m = sc.parse_prometheus(text)
    bad = {}
    for name, allowed in (("scanoutd_protocol_errors_total", 0),
                          ("scanoutd_link_failures_total", allow_link_failures),
                          ("scanoutd_stalled_disconnects_total", 0)):
        v = sc.metric_value(m, name)
        if v is not None and v > allowed:
            bad[name] = v
    assert not bad, f"server error counters: {bad}\n{_diag(srv)}"
    assert srv.alive(), "server exited\n" + srv.log_tail()


def _sample(clients, seconds):
    """Sample each client's timestamp strip for `seconds`; return the samplers."""
    samplers = [sc.StripSampler(c) for c in clients]

    def tick():
        for s in samplers:
            s.tick()
    sc.pump(seconds, on_tick=tick)
    for s in samplers:
        s.detach()
    return samplers


def _advancing(values):
    """True if every value is later than the previous one (mod 2^32, < 1 h steps)."""
    return all(0 < ((b - a) & 0xFFFFFFFF) < 3_600_000 for a, b in zip(values, values[1:]))


# ------------------------------------------------------------------------------------------
# (a) still scene: the client's picture equals the source's snapshot, exactly
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("server_compression,client_pref", [
    ("auto", None), ("off", None), ("auto", "off")],
    ids=["lz4-auto", "server-off", "client-pref-off"])
def test_still_scene_pixel_exact(servers, clients, artifacts, server_compression, client_pref):
    """spice-gtk always advertises LZ4. `--compression auto` should use LZ4 with it, `off`
    raw bitmaps; `client_pref` sets the client's preferred-compression (sent only if the server
    advertises DISPLAY_CAP_PREF_COMPRESSION). Whatever the encoding, the picture must be exact."""
    srv = servers(scene="still", size="640x480", fps=30,
                  extra_args=["--compression", server_compression])
    c = clients(srv.uri, preferred_compression=client_pref, name="still")
    p = c.wait_primary(10)
    assert (p.width, p.height) == (640, 480), _diag(srv, c)
    assert p.format in (sc.SURFACE_FMT_32_xRGB, sc.SURFACE_FMT_32_ARGB), _diag(srv, c)

    sw, sh, src = srv.snapshot_ppm()
    assert (sw, sh) == (640, 480), f"snapshot.ppm is {sw}x{sh}"
    got = None
    # The picture may take a few updates to complete; the source never changes.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        c.pump(0.2)
        w, h, stride, fb = c.snapshot()
        got = sc.bgrx_to_rgb(fb, w, h, stride)
        if got == src:
            break
    if got != src:
        sw2, sh2, src2 = srv.snapshot_ppm()
        n, bbox, first = sc.compare_rgb(got, src, 640, 480)
        sc.write_png(os.path.join(artifacts, "client.png"), 640, 480, got)
        sc.write_png(os.path.join(artifacts, "source.png"), sw, sh, src)
        pytest.fail(f"client framebuffer != /snapshot.ppm: {n} pixels differ, bbox {bbox}, "
                    f"first (x, y, client_rgb, source_rgb) = {first}; source changed between "
                    f"snapshots: {src2 != src}; pictures in {artifacts}\n{_diag(srv, c)}")
    ts = sc.decode_timestamp_strip(fb, w, h, stride)
    assert ts is not None, "still picture matches the source but has no timestamp strip"
    _assert_clean(srv)


# ------------------------------------------------------------------------------------------
# (b) motion scene: the timestamp strip advances and is fresh
# ------------------------------------------------------------------------------------------

def test_motion_timestamp_advances(servers, clients):
    srv = servers(scene="motion", size="640x480", fps=30)
    c = clients(srv.uri, name="motion")
    c.wait_primary(10)
    c.pump(0.3)  # past the initial full-picture transfer
    (s,) = _sample([c], 2.0)
    vals, ages = s.values(), s.ages()
    msg = (f"distinct={len(vals)} samples={s.samples} undecodable={s.undecodable} "
           f"ages(ms)={ages[:40]}\n{_diag(srv, c)}")
    assert s.undecodable == 0 or s.undecodable < s.samples // 10, "strip undecodable: " + msg
    assert len(vals) >= 6, "timestamp strip did not advance (want >= 6 values in 2 s): " + msg
    assert _advancing(vals), "timestamp strip went backwards: " + msg
    # Sanity, not speed (the figures are `make bench`'s): a picture is never from the future
    # (same clock; 50 ms for rounding) and never seconds old on loopback.
    med = sc.percentile(ages, 50)
    assert -50 <= med < 1000, f"median age {med:.0f} ms not sane: " + msg
    assert max(ages) < 3000 and min(ages) > -50, "an age was out of range: " + msg
    _assert_clean(srv)


# ------------------------------------------------------------------------------------------
# (c) input: key + pointer + button appear in the picture's input strip
# ------------------------------------------------------------------------------------------

def test_input_reaches_picture(servers, clients):
    # 800 wide: the input strip's button cell 40 (x 640..656) is outside a 640-wide picture.
    srv = servers(scene="motion", size="800x600", fps=30)
    c = clients(srv.uri, name="input")
    c.wait_primary(10)
    c.wait_channel_open("inputs", 10)
    # spice-gtk asks for CLIENT mouse mode when the server supports it (MOUSE_MODE_REQUEST);
    # absolute positions are only meaningful there.
    c.pump(3.0, until=lambda: c.mouse_mode() == 2)
    assert c.mouse_mode() == 2, (f"server did not enter CLIENT mouse mode "
                                 f"(mouse-mode={c.mouse_mode()})\n{_diag(srv, c)}")
    strip0 = c.input_strip()
    assert strip0 is not None, "no input strip in the picture\n" + _diag(srv, c)

    def wait_strip(pred, what, timeout=5.0):
        seen = []

        def ok():
            v = c.input_strip()
            if v is not None and (not seen or seen[-1] != v):
                seen.append(v)
            return v is not None and pred(v)
        if not c.pump(timeout, until=ok):
            pytest.fail(f"input strip never showed {what} within {timeout}s; strip values seen: "
                        f"{seen[-8:]}\n{_diag(srv, c)}")

    # tap 'a' (KEY_SCANCODE "1E 9E" if the server has INPUTS_CAP_KEY_SCANCODE, else DOWN+UP)
    c.send_key(0x1E, mode="tap")
    wait_strip(lambda v: v.scancode == 0x1E, "scancode 0x1E after a tap of 'a'")
    # hold Right arrow: KEY_DOWN/KEY_UP with wire bytes E0 4D / E0 CD -> 0x14D
    c.send_key(0x14D, mode="hold", hold_s=0.15)
    wait_strip(lambda v: v.scancode == 0x14D, "scancode 0x14D after holding Right arrow")
    # back to a plain key, held
    c.send_key(0x30, mode="hold", hold_s=0.15)   # 'b'
    wait_strip(lambda v: v.scancode == 0x30, "scancode 0x30 after holding 'b'")

    c.move_mouse(123, 77)
    wait_strip(lambda v: (v.x, v.y) == (123, 77), "pointer (123, 77)")
    c.mouse_press(sc.MOUSE_LEFT)
    wait_strip(lambda v: v.button is True and (v.x, v.y) == (123, 77),
               "button held at (123, 77)")
    c.mouse_release(sc.MOUSE_LEFT)
    wait_strip(lambda v: v.button is False, "button released")
    # many positions (exercises MOUSE_MOTION_ACK flow control: without acks from the server
    # spice-gtk stops sending after 8 positions)
    for i in range(40):
        c.move_mouse(200 + i * 5, 300 + i * 2)
        c.pump(0.01)
    wait_strip(lambda v: (v.x, v.y) == (200 + 39 * 5, 300 + 39 * 2),
               "the last of 40 pointer positions (motion-ack flow control)")
    _assert_clean(srv)


# ------------------------------------------------------------------------------------------
# (d) password
# ------------------------------------------------------------------------------------------

def test_password(servers, clients):
    srv = servers(scene="still", size="640x480", fps=30, password="secret")
    bad = clients(srv.uri, password="wrong", name="wrong-password")
    none = clients(srv.uri, name="no-password")
    for c in (bad, none):
        seen = c.wait_event("SPICE_CHANNEL_ERROR_AUTH", "main", 10)
        assert seen, f"{c.name}: no SPICE_CHANNEL_ERROR_AUTH\n{_diag(srv, c)}"
    sc.pump(1.0)
    for c in (bad, none):
        assert c.primary is None and c.invalidates == 0, f"{c.name} got a picture\n{_diag(srv, c)}"
        assert not any(st.opened for st in c.channels.values()), \
            f"{c.name}: a channel opened despite the auth failure\n{_diag(srv, c)}"
    assert srv.alive(), "server died after failed authentications\n" + srv.log_tail()
    good = clients(srv.uri, password="secret", name="right-password")
    good.wait_primary(10)
    assert not good.errors(), _diag(srv, good)
    # the display/inputs channels authenticate too (each channel carries the ticket)
    good.wait_channel_open("inputs", 10)
    m = srv.metrics()
    fails = sc.metric_value(m, "scanoutd_auth_failures_total")
    assert fails is None or fails == 2, f"auth_failures_total = {fails}, want 2"
    _assert_clean(srv, allow_link_failures=2)


# ------------------------------------------------------------------------------------------
# (e) several clients at once
# ------------------------------------------------------------------------------------------

def test_four_clients(servers, clients):
    srv = servers(scene="motion", size="640x480", fps=30)
    cs = [clients(srv.uri, name=f"c{i}") for i in range(4)]
    for c in cs:
        c.wait_primary(10)
    sc.pump(0.3)
    samplers = _sample(cs, 2.0)
    report = [(c.name, len(s.values()), s.undecodable, sc.percentile(s.ages(), 50))
              for c, s in zip(cs, samplers)]
    for c, s in zip(cs, samplers):
        assert len(s.values()) >= 6 and _advancing(s.values()), \
            f"{c.name} did not see the strip advance: {report}\n{_diag(srv, *cs)}"
    m = srv.metrics()
    n = sc.metric_value(m, "scanoutd_connected_clients")
    assert n == 4, f"scanoutd_connected_clients = {n} with 4 clients; {report}"
    _assert_clean(srv)


# ------------------------------------------------------------------------------------------
# a client that stops reading catches up at once (latest frame wins, stale updates dropped)
# ------------------------------------------------------------------------------------------

def test_stalled_client_catches_up(servers, clients):
    srv = servers(scene="motion", size="1280x720", fps=60)
    live = clients(srv.uri, name="live")
    slow = clients(srv.uri, name="slow")
    live.wait_primary(10)
    slow.wait_primary(10)
    sc.pump(0.5)
    m0 = srv.metrics()
    time.sleep(3.0)            # nobody reads: the server's sends to both clients back up
    t0 = time.monotonic()
    fresh_at = []

    # Catching up means showing a picture younger than the stall, soon: a client fed the
    # stalled backlog instead would show pictures about 3 s old first. Bounds of seconds.
    def tick():
        v = slow.timestamp()
        if not fresh_at and v is not None and sc.age_ms(v) < 1000:
            fresh_at.append(time.monotonic() - t0)
    sc.pump(5.0, until=lambda: bool(fresh_at), on_tick=tick)
    assert fresh_at and fresh_at[0] < 3.0, (
        f"after a 3 s stall the client's picture was not fresh (< 1 s old) within 3 s; "
        f"age now {sc.age_ms(slow.timestamp()) if slow.timestamp() is not None else None} ms"
        f"\n{_diag(srv, slow)}")
    sc.pump(0.5)
    m1 = srv.metrics()
    coalesced = (sc.metric_value(m1, "scanoutd_client_coalesced_updates_total") or 0) - \
        (sc.metric_value(m0, "scanoutd_client_coalesced_updates_total") or 0)
    assert coalesced > 0, ("no update was coalesced while clients did not read for 3 s at "
                           "1280x720@60:\n" + srv.metrics_text())
    _assert_clean(srv)


# ------------------------------------------------------------------------------------------
# metrics endpoint
# ------------------------------------------------------------------------------------------

def test_metrics(servers, clients):
    srv = servers(scene="motion", size="640x480", fps=30)
    m0 = srv.metrics()
    for name in ("scanoutd_frames_produced_total", "scanoutd_connected_clients"):
        assert sc.metric_value(m0, name) is not None, f"{name} missing:\n{srv.metrics_text()}"
    c = clients(srv.uri, name="metrics")
    c.wait_primary(10)
    c.pump(1.0)
    m1 = srv.metrics()
    text = srv.metrics_text()
    assert sc.metric_value(m1, "scanoutd_connected_clients") == 1, text
    for ch in ("display", "main"):
        v = sc.metric_value(m1, "scanoutd_bytes_sent_total", channel=ch)
        assert v is not None and v > 0, f"bytes_sent_total{{channel={ch}}} = {v}:\n{text}"
    assert sc.metric_value(m1, "scanoutd_frames_produced_total") > \
        sc.metric_value(m0, "scanoutd_frames_produced_total"), text
    assert sc.metric_value(m1, "scanoutd_client_coalesced_updates_total") is not None, \
        f"no per-client coalesced counter:\n{text}"
    # the client's own byte count on the display channel vs the server's
    disp = c.channel("display").obj.get_property("total-read-bytes")
    srv_disp = sc.metric_value(m1, "scanoutd_bytes_sent_total", channel="display")
    assert disp > 0 and srv_disp >= disp * 0.5, (disp, srv_disp)
    c.close()
    ok = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if sc.metric_value(srv.metrics(), "scanoutd_connected_clients") == 0:
            ok = True
            break
        time.sleep(0.1)
    assert ok, "connected_clients did not return to 0 after disconnect:\n" + srv.metrics_text()
    _assert_clean(srv)


# ------------------------------------------------------------------------------------------
# (f) remote-viewer under Xvfb really shows the picture
# ------------------------------------------------------------------------------------------

@pytest.mark.timeout_s(90)
def test_remote_viewer_shows_picture(servers, artifacts):
    """remote-viewer (the SpiceDisplay widget, which needs MONITORS_CONFIG and MARK) shows the
    live demo picture at 1:1, and real X input (xdotool) reaches the picture's input strip."""
    srv = servers(scene="motion", size="800x600", fps=30)
    plausible = lambda v: v is not None and abs(sc.age_ms(v)) < 600_000  # noqa: E731
    shot = os.path.join(artifacts, "remote-viewer.png")
    with sc.Xvfb("1280x1024x24", log_dir=artifacts) as x:
        rv = sc.RemoteViewer(x, srv.uri, log_dir=artifacts).start()
        try:
            hits, w, h, rgb = [], 0, 0, b""
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                time.sleep(1.0)
                assert rv.alive(), f"remote-viewer exited:\n{rv.log_tail()}\n{_diag(srv)}"
                w, h, rgb = x.screenshot()
                hits = sc.find_strip_in_rgb(rgb, w, h, validate=plausible)
                if hits:
                    break
            sc.write_png(shot, w, h, rgb)
            if not hits:
                scaled = sc.find_strip_scaled(rgb, w, h, validate=plausible)
                ncol, frac = sc.rgb_stats(rgb, w, h)
                assert not scaled, (f"remote-viewer shows the demo, but scaled (cells of "
                                    f"{scaled[0][2]} px), not 1:1; screenshot {shot}")
                pytest.fail(f"remote-viewer does not show the demo picture (no timestamp strip "
                            f"found; {ncol} colours, {frac:.1%} non-background); screenshot "
                            f"{shot}; a 'Connected to graphic server' screen means a missing "
                            f"MONITORS_CONFIG or MARK (protocol doc 4.4)\n"
                            f"remote-viewer log:\n{rv.log_tail()}\n{_diag(srv)}")
            X, Y, v1 = hits[0]
            # the picture is live: a later screenshot shows a later timestamp
            time.sleep(0.5)
            w2, h2, rgb2 = x.screenshot()
            sc.write_png(os.path.join(artifacts, "remote-viewer-2.png"), w2, h2, rgb2)
            v2 = sc.decode_timestamp_strip(rgb2, w2, h2, w2 * 3, x0=X, y0=Y, fmt="rgb")
            assert v2 is not None and v2 != v1, (f"remote-viewer picture did not advance in "
                                                 f"0.5 s (strip {v1} -> {v2}); {shot}")

            # real input through the widget: pointer, key taps (KEY_SCANCODE path, after the
            # widget's 100 ms press delay), button
            env = x.env()

            def xdo(*args):
                r = subprocess.run(["xdotool", *args], env=env, capture_output=True,
                                   timeout=10)
                assert r.returncode == 0, f"xdotool {args}: {r.stderr!r}"

            def wait_strip(pred, what, timeout=5.0):
                seen = []
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    sw, sh, srgb = x.screenshot()
                    v = sc.decode_input_strip(srgb, sw, sh, sw * 3, x0=X, y0=Y + 16, fmt="rgb")
                    if not seen or seen[-1] != v:
                        seen.append(v)
                    if v is not None and pred(v):
                        return
                    time.sleep(0.1)
                sc.write_png(os.path.join(artifacts, "remote-viewer-input.png"), sw, sh, srgb)
                pytest.fail(f"via remote-viewer, the input strip never showed {what}; seen "
                            f"{seen[-6:]}\n{_diag(srv)}")

            xdo("mousemove", str(X + 123), str(Y + 77))
            wait_strip(lambda v: (v.x, v.y) == (123, 77), "pointer (123, 77)")
            xdo("key", "a")
            wait_strip(lambda v: v.scancode == 0x1E, "scancode 0x1E for 'a'")
            xdo("key", "Right")
            wait_strip(lambda v: v.scancode == 0x14D, "scancode 0x14D for Right arrow")
            xdo("mousedown", "1")
            wait_strip(lambda v: v.button is True, "button held")
            xdo("mouseup", "1")
            wait_strip(lambda v: v.button is False, "button released")
        finally:
            rv.stop()
    _assert_clean(srv)
