"""A client behind a slow link: its lag stays bounded, stale frames are dropped, and a client on
a fast link is not held back by it.

Topology (all in network namespaces made by this test, deleted at the end):

    sod-srv-<pid>                                           sod-cli-<pid>
    scanoutd  0.0.0.0:5900 (SPICE), 0.0.0.0:9100 (metrics)
      vsrv0 10.250.0.1/24  --- tbf 4 Mbit/s egress --->     vcli0 10.250.0.2/24
      lo: the unthrottled client (spice://127.0.0.1:5900)   the throttled client
      lo: the metrics poller                                (spice://10.250.0.1:5900)

The link: `tbf rate 4mbit burst 16kb latency 50ms` on the server's side of the veth pair,
i.e. on everything the server sends to the throttled client. 4 Mbit/s is a plausible home
upload / WAN rate and half the server's starting video bitrate (8 Mbit/s), so the rate
control has to react; a 720p H.264 stream still looks decent at ~3 Mbit/s. The 16 KB burst
lets a small frame out without waiting for tokens (it is above the MTU and a GSO segment, as
tbf needs); `latency 50ms` caps the tbf queue at rate x 50 ms + burst (41 KB), so a packet
waits at most ~82 ms in the qdisc and anything beyond that is dropped (TCP then retransmits).
The kernel has no netem, so no propagation delay is added: the link's delay is only queueing
and serialization.

The bound on the throttled client's capture-to-display age (p99, after a warm-up):
    3 frame periods (capture, encode + pacing, decode/present)
  + the link's own delay = tbf latency (50 ms) + serialization of one average frame at 4 Mbit/s
The age must not grow over the minute (median of the last 15 s vs the first 15 s after the
warm-up), the server must have dropped frames for that client (coalesced updates) and cut its
bitrate target below the link rate, and the unthrottled client must keep the source frame rate
with a small age.

Needs root and `ip netns` + tbf; skipped otherwise.
"""

import json
import os
import sys
import time

import pytest

import netns
import spiceclient as sc

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(sc.REPO_ROOT, "bench", "client_latency.py")
sys.path.insert(0, os.path.join(sc.REPO_ROOT, "bench"))
import client_latency as cl  # noqa: E402  (histogram helpers)

PY = sys.executable

SIZE = "1280x720"
FPS = 30
CODEC = "h264"
PERIOD_MS = 1000.0 / FPS

LINK_KBPS = 4000
TBF = dict(rate="4mbit", burst="16kb", latency="50ms")
TBF_LATENCY_MS = 50.0

MEASURE_S = 60.0        # the throttled client's measurement
WARMUP_S = 10.0         # first seconds of it not judged (stream start, first rate cuts)
WINDOW_S = 15.0         # growth check: median of [warm-up, +15 s) vs the last 15 s
MAX_GROWTH_MS = 50.0
UNTHROTTLED_P50_MS = 50.0
FPS_TOLERANCE = 0.20

SPICE_PORT, METRICS_PORT = 5900, 9100
SRV_ADDR, CLI_ADDR = "10.250.0.1", "10.250.0.2"


def _median(v):
    return sc.percentile(v, 50)


def _client_ids(text):
    m = sc.parse_prometheus(text)
    return {dict(lab).get("client") for (n, lab) in m
            if n == "scanoutd_client_updates_sent_total"}


def _wait_new_client(poll_path, known, timeout):
    """The first client id in the poller's output that is not in `known` (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snaps = netns.read_poll_file(poll_path)
        if snaps:
            new = _client_ids(snaps[-1][1]) - known
            if new:
                return sorted(new)[0]
        time.sleep(0.2)
    return None


def _at(snaps, t_unix):
    """The parsed snapshot taken closest to (at or after, else before) `t_unix`."""
    after = [s for s in snaps if s[0] >= t_unix]
    t, text = after[0] if after else snaps[-1]
    return t, sc.parse_prometheus(text)


def _cv(m, name, client):
    return sc.metric_value(m, name, client=client)


def _fmt(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


@pytest.mark.timeout_s(95)
def test_throttled_client_lag_is_bounded(scanoutd_bin, spice_gi, artifacts):
    reason = netns.missing_reason()
    if reason:
        pytest.skip(reason)

    poll_path = os.path.join(artifacts, "metrics-poll.jsonl")
    thr_json = os.path.join(artifacts, "throttled.json")
    unt_json = os.path.join(artifacts, "unthrottled.json")
    srv_log = os.path.join(artifacts, "scanoutd.log")
    env = dict(os.environ, RUST_LOG="info,spice_server::display=debug", NO_COLOR="1",
               RUST_BACKTRACE="1")

    with netns.NetLab() as lab:
        if lab.stale_removed:
            print(f"removed stale namespaces of earlier runs: {lab.stale_removed}")
        srv = lab.add_ns("srv")
        cli = lab.add_ns("cli")
        lab.veth(srv, "vsrv0", f"{SRV_ADDR}/24", cli, "vcli0", f"{CLI_ADDR}/24")
        tbf_line = lab.tbf(srv, "vsrv0", **TBF)
        print(f"link: {tbf_line}")

        server = lab.popen(srv, [scanoutd_bin, "serve",
                                 "--listen", f"0.0.0.0:{SPICE_PORT}",
                                 "--metrics", f"0.0.0.0:{METRICS_PORT}",
                                 "--disable-ticketing", "--scene", "motion", "--size", SIZE,
                                 "--fps", str(FPS), "--codec", CODEC],
                           log_path=srv_log, env=env)
        lab.wait_listening(server, SPICE_PORT, log_path=srv_log)
        lab.wait_listening(server, METRICS_PORT, log_path=srv_log)
        lab.popen(srv, [PY, os.path.join(HERE, "netns.py"), "poll-metrics",
                        f"http://127.0.0.1:{METRICS_PORT}/metrics", "--interval", "0.5",
                        "--seconds", str(MEASURE_S + 25), "--out", poll_path],
                  log_path=os.path.join(artifacts, "poller.log"))

        # The throttled client first, so the first client id the server reports is its.
        thr = lab.popen(cli, [PY, CLIENT, "--uri", f"spice://{SRV_ADDR}:{SPICE_PORT}",
                              "--seconds", str(MEASURE_S), "--warmup", "0.3", "--raw",
                              "--label", "throttled", "--json", thr_json],
                        log_path=os.path.join(artifacts, "throttled.log"))
        thr_id = _wait_new_client(poll_path, set(), 20)
        assert thr_id is not None, (f"the throttled client never showed up in the metrics:\n"
                                    f"{netns._tail(os.path.join(artifacts, 'throttled.log'))}\n"
                                    f"{netns._tail(srv_log)}")
        unt = lab.popen(srv, [PY, CLIENT, "--uri", f"spice://127.0.0.1:{SPICE_PORT}",
                              "--seconds", str(MEASURE_S - 8), "--warmup", "1.0", "--raw",
                              "--label", "unthrottled", "--json", unt_json],
                        log_path=os.path.join(artifacts, "unthrottled.log"))
        unt_id = _wait_new_client(poll_path, {thr_id}, 20)

        deadline = time.monotonic() + MEASURE_S + 25
        while time.monotonic() < deadline and (thr.poll() is None or unt.poll() is None):
            time.sleep(0.2)
        tc_stats = lab.qdisc_stats(srv, "vsrv0")
        tc_text = lab.qdisc_show(srv, "vsrv0")
        server_alive = server.poll() is None
        rc_thr, rc_unt = thr.poll(), unt.poll()
    # (every process stopped, both namespaces deleted)
    assert not [n for n in netns.list_namespaces() if n in (srv, cli)], "namespaces left over"

    def load(path, rc, who):
        assert rc == 0 and os.path.exists(path), (
            f"{who} client failed (rc {rc}):\n"
            f"{netns._tail(os.path.join(artifacts, who + '.log'))}\n--- server log ---\n"
            f"{netns._tail(srv_log)}")
        with open(path) as f:
            return json.load(f)
    R_thr = load(thr_json, rc_thr, "throttled")
    R_unt = load(unt_json, rc_unt, "unthrottled")
    snaps = netns.read_poll_file(poll_path)
    assert snaps, "the metrics poller recorded nothing"

    # ---- the throttled client's timeline -------------------------------------------------
    S = R_thr["sightings"]                       # [unix_ms, value, age_ms]
    assert len(S) > 100, f"the throttled client saw only {len(S)} new frames: {R_thr}"
    t0 = S[0][0] / 1000.0                        # first new frame seen
    t_end = t0 + MEASURE_S
    post = [s for s in S if s[0] / 1000.0 >= t0 + WARMUP_S]
    first = [s[2] for s in post if s[0] / 1000.0 < t0 + WARMUP_S + WINDOW_S]
    last = [s[2] for s in S if s[0] / 1000.0 >= t_end - WINDOW_S]
    ages_post = [s[2] for s in post]
    thr_p50, thr_p99 = sc.percentile(ages_post, 50), sc.percentile(ages_post, 99)
    thr_fps = len(post) / max(1e-6, (S[-1][0] - post[0][0]) / 1000.0) if post else 0.0
    med_first, med_last = _median(first), _median(last)

    # Server-side numbers for the throttled client over the judged window.
    ta, ma = _at(snaps, t0 + WARMUP_S)
    tb, mb = _at(snaps, t_end - 0.5)
    span = max(1e-6, tb - ta)
    frames_sent = (_cv(mb, "scanoutd_client_stream_frames_sent_total", thr_id) or 0) - \
        (_cv(ma, "scanoutd_client_stream_frames_sent_total", thr_id) or 0)
    disp_bytes = (_cv(mb, "scanoutd_client_display_bytes_total", thr_id) or 0) - \
        (_cv(ma, "scanoutd_client_display_bytes_total", thr_id) or 0)
    coalesced_total = max((_cv(sc.parse_prometheus(x), "scanoutd_client_coalesced_updates_total",
                               thr_id) or 0) for _, x in snaps)
    coalesced_win = (_cv(mb, "scanoutd_client_coalesced_updates_total", thr_id) or 0) - \
        (_cv(ma, "scanoutd_client_coalesced_updates_total", thr_id) or 0)
    bitrate = [(t - t0, _cv(sc.parse_prometheus(x), "scanoutd_client_bitrate_kbps", thr_id))
               for t, x in snaps]
    bitrate = [(t, v) for t, v in bitrate if v is not None]
    min_kbps = min((v for _, v in bitrate), default=None)
    end_kbps = bitrate[-1][1] if bitrate else None
    c2s = cl.hist_summary(ma, mb, "scanoutd_client_capture_to_send_ms", client=thr_id)
    enc = cl.hist_summary(ma, mb, "scanoutd_client_encode_ms", client=thr_id)
    codecs = cl.stream_codecs(mb)
    avg_frame = disp_bytes / frames_sent if frames_sent else None
    link_kbps_used = disp_bytes * 8 / span / 1000.0

    serialization_ms = (avg_frame * 8 / LINK_KBPS) if avg_frame else 0.0
    link_delay_ms = TBF_LATENCY_MS + serialization_ms
    bound_ms = 3 * PERIOD_MS + link_delay_ms

    # ---- the unthrottled client ----------------------------------------------------------
    U = R_unt["sightings"]
    unt_fps = R_unt["distinct_fps"]
    unt_p50 = R_unt["latency_ms"]["p50"]
    unt_p99 = R_unt["latency_ms"]["p99"]

    # ---- print everything ----------------------------------------------------------------
    print(f"\nsource {SIZE}@{FPS} motion, --codec {CODEC}; link {TBF} = {LINK_KBPS} kbit/s; "
          f"throttled client id {thr_id}, unthrottled {unt_id}; stream codecs at the end "
          f"{codecs}")
    print(f"tc after the run: {tc_text}")
    print(f"throttled: {len(S)} new frames in {MEASURE_S:.0f} s; judged after {WARMUP_S:.0f} s: "
          f"{len(post)} frames, {thr_fps:.1f} fps, age p50 {_fmt(thr_p50)} ms, "
          f"p99 {_fmt(thr_p99)} ms, max {max(ages_post) if ages_post else 'n/a'} ms")
    print(f"  median age first {WINDOW_S:.0f} s after warm-up {_fmt(med_first)} ms, last "
          f"{WINDOW_S:.0f} s {_fmt(med_last)} ms (growth {_fmt((med_last or 0) - (med_first or 0))} "
          f"ms, limit {MAX_GROWTH_MS:.0f})")
    print(f"  server, judged window ({span:.1f} s): {frames_sent:.0f} stream frames "
          f"({frames_sent / span:.1f}/s), display {link_kbps_used:.0f} kbit/s, "
          f"avg frame {_fmt(avg_frame, 0)} B, coalesced {coalesced_win:.0f} "
          f"(total {coalesced_total:.0f}), capture-to-send {c2s}, encode {enc}")
    print(f"  bitrate target: min {min_kbps} kbit/s, end {end_kbps} kbit/s (link {LINK_KBPS})")
    print(f"  bound: 3 x {PERIOD_MS:.1f} ms + link delay ({TBF_LATENCY_MS:.0f} ms tbf latency + "
          f"{serialization_ms:.1f} ms serialization of an average frame) = {bound_ms:.1f} ms")
    print(f"unthrottled: {len(U)} new frames, {unt_fps} fps, age p50 {unt_p50} ms, "
          f"p99 {unt_p99} ms")
    print("timeline (s since the throttled client's first frame): age p50/p99/max, fps, "
          "target kbit/s, coalesced, display kbit/s")
    step = 5.0
    t = 0.0
    while t < MEASURE_S:
        w = [s[2] for s in S if t0 + t <= s[0] / 1000.0 < t0 + t + step]
        _, m_a = _at(snaps, t0 + t)
        _, m_b = _at(snaps, t0 + t + step)
        kb = _cv(m_b, "scanoutd_client_bitrate_kbps", thr_id)
        co = (_cv(m_b, "scanoutd_client_coalesced_updates_total", thr_id) or 0) - \
            (_cv(m_a, "scanoutd_client_coalesced_updates_total", thr_id) or 0)
        db = (_cv(m_b, "scanoutd_client_display_bytes_total", thr_id) or 0) - \
            (_cv(m_a, "scanoutd_client_display_bytes_total", thr_id) or 0)
        print(f"  {t:4.0f}-{t + step:<4.0f} {_fmt(sc.percentile(w, 50), 0):>5} "
              f"{_fmt(sc.percentile(w, 99), 0):>5} {max(w) if w else 'n/a':>5}  "
              f"{len(w) / step:5.1f}  {kb if kb is None else int(kb):>6}  {co:5.0f}  "
              f"{db * 8 / step / 1000:6.0f}")
        t += step
    summary = dict(thr_id=thr_id, unt_id=unt_id, tbf=TBF, tc=tc_stats, bound_ms=bound_ms,
                   thr_p50=thr_p50, thr_p99=thr_p99, thr_fps=thr_fps, med_first=med_first,
                   med_last=med_last, coalesced_total=coalesced_total, min_kbps=min_kbps,
                   end_kbps=end_kbps, avg_frame=avg_frame, c2s=c2s, enc=enc,
                   unt_fps=unt_fps, unt_p50=unt_p50, unt_p99=unt_p99, bitrate=bitrate)
    with open(os.path.join(artifacts, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    # ---- judge (all checks, then one assertion listing every failure) --------------------
    failures = []
    if not server_alive:
        failures.append("scanoutd exited during the test")
    if codecs.get(thr_id) != CODEC:
        failures.append(f"the throttled client's stream is not {CODEC}: {codecs}")
    if thr_p99 is None or thr_p99 > bound_ms:
        failures.append(f"throttled age p99 {_fmt(thr_p99)} ms > bound {bound_ms:.1f} ms")
    if med_first is None or med_last is None or med_last - med_first > MAX_GROWTH_MS:
        failures.append(f"throttled age grows: median {_fmt(med_first)} -> {_fmt(med_last)} ms")
    if not coalesced_total > 0:
        failures.append("no frames were dropped (coalesced) for the throttled client")
    if min_kbps is None or min_kbps >= LINK_KBPS:
        failures.append(f"the bitrate target never went below the link rate: min {min_kbps}")
    if abs(unt_fps - FPS) > FPS_TOLERANCE * FPS:
        failures.append(f"unthrottled client at {unt_fps} fps, source {FPS}")
    if unt_p50 is None or unt_p50 >= UNTHROTTLED_P50_MS:
        failures.append(f"unthrottled age p50 {unt_p50} ms >= {UNTHROTTLED_P50_MS:.0f}")
    assert not failures, ("; ".join(failures) + f"\n--- server log tail ({srv_log}) ---\n"
                          + netns._tail(srv_log, 3000))
