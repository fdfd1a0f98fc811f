#!/usr/bin/python3
"""Capture-to-client latency and throughput of a running scanoutd, seen by the real spice-gtk
client (SpiceClientGLib 0.42 through GObject introspection).

    /usr/bin/python3 bench/client_latency.py --uri spice://127.0.0.1:5900 \
        --metrics http://127.0.0.1:9100 --seconds 10 [--json out.json]

How it measures:
  * The demo picture carries a timestamp strip (capture time, Unix ms mod 2^32). The client's
    framebuffer strip is sampled on every display-invalidate touching it and at least every
    --period s (default 5 ms). At the first sighting of each new value, latency = now_ms - value
    (same machine, same clock). The value already on screen when sampling starts is not counted.
  * distinct frames per second = new strip values seen / seconds.
  * bytes/s on the display channel = delta of scanoutd_bytes_sent_total{channel="display"} from
    the metrics endpoint over the run; the client's own display-channel byte count
    (total-read-bytes) is reported next to it.

  * With --wait-stream S the measurement starts only once the server reports a running video
    stream (scanoutd_client_stream_codec) for at least --stream-clients clients (at most S s).
  * Server-side histograms (scanoutd_client_encode_ms, scanoutd_client_capture_to_send_ms) are
    read at the start and the end of the measurement; percentiles are estimated from the
    bucket deltas over that window (linear inside a bucket; edges 1,2,4,8,12,16,25,33,50,100,
    250,1000 ms, so a value is only as exact as its bucket).
  * --raw adds every first sighting as [unix_ms, strip value, age_ms] ("sightings").
  * A "new value" whose age is impossible (below -100 ms or above 30 s) is a strip misread
    from a garbled picture (e.g. a video frame starved of bits): it is counted in
    misread_strips and left out of the frame rate and the latencies.

Prints one JSON object (also written to --json) and one human-readable line on stderr.
Exit status: 0 ok, 2 could not connect / no picture, 3 strip never decodable.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import spiceclient as sc  # noqa: E402


# Ages outside this range (ms) cannot be real: the strip was misread.
PLAUSIBLE_AGE_MS = (-100, 30000)


def metrics_url(base):
    if base is None:
        return None
    base = base.rstrip("/")
    return base if base.endswith("/metrics") else base + "/metrics"


def fetch_metrics(url):
    if url is None:
        return None, None
    try:
        return sc.parse_prometheus(sc.http_get(url, 5.0).decode("utf-8", "replace")), None
    except Exception as e:  # reported, not fatal: latency is still measurable
        return None, f"{type(e).__name__}: {e}"


def delta(m0, m1, name, **labels):
    if m0 is None or m1 is None:
        return None
    a, b = sc.metric_value(m0, name, **labels), sc.metric_value(m1, name, **labels)
    if a is None or b is None:
        return None
    return b - a


def per_client_deltas(m0, m1, name):
    if m0 is None or m1 is None:
        return {}
    out = {}
    for (n, lab), v in m1.items():
        if n != name:
            continue
        d = dict(lab)
        key = d.get("client", ",".join(f"{k}={v}" for k, v in sorted(d.items())))
        out[key] = v - m0.get((n, lab), 0.0)
    return out


def _le(v):
    return float("inf") if v in ("+Inf", "Inf", "inf") else float(v)


def hist_buckets(m, name, client=None):
    """[(le, cumulative count)] of histogram `name`, summed over clients (or one client)."""
    if m is None:
        return []
    acc = {}
    for (n, lab), v in m.items():
        if n != name + "_bucket":
            continue
        d = dict(lab)
        if client is not None and d.get("client") != client:
            continue
        if "le" in d:
            le = _le(d["le"])
            acc[le] = acc.get(le, 0.0) + v
    return sorted(acc.items())


def hist_delta(b0, b1):
    """Bucket deltas (cumulative) between two readings of the same histogram."""
    d0 = dict(b0)
    return [(le, c - d0.get(le, 0.0)) for le, c in b1]


def hist_percentile(buckets, p):
    """Estimate the p-th percentile (0..100) from cumulative buckets [(le, count)]: linear
    interpolation inside the bucket that holds it. Returns None without samples, and the
    last finite edge when it falls in the +Inf bucket (reported as '>' that edge by callers)."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = total * p / 100.0
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank and c > prev_c:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = (le if le != float("inf") else prev_le), c
    return prev_le


def _hist_clients(m, name):
    return {dict(lab).get("client") for (n, lab) in (m or {}) if n == name + "_bucket"}


def hist_window(m0, m1, name, client=None):
    """Cumulative bucket deltas over m0 -> m1, summed over the clients present at m1 (a
    client that left before m1 is not counted; one that arrived after m0 counts from 0)."""
    clients = [client] if client is not None else sorted(_hist_clients(m1, name), key=str)
    acc = {}
    for c in clients:
        for le, v in hist_delta(hist_buckets(m0, name, c), hist_buckets(m1, name, c)):
            acc[le] = acc.get(le, 0.0) + v
    return sorted(acc.items())


def hist_summary(m0, m1, name, client=None):
    """{n, p50, p90, p99, mean, over_max_bucket} of histogram `name` over the window."""
    b = hist_window(m0, m1, name, client)
    if not b or b[-1][1] <= 0:
        return {"n": 0, "p50": None, "p90": None, "p99": None}
    finite = [le for le, _ in b if le != float("inf")]
    top = finite[-1] if finite else None
    over = b[-1][1] - (dict(b).get(top, 0.0) if top is not None else 0.0)
    out = {"n": int(b[-1][1]), "p50": rnd(hist_percentile(b, 50)),
           "p90": rnd(hist_percentile(b, 90)), "p99": rnd(hist_percentile(b, 99)),
           "over_max_bucket": int(over)}
    clients = [client] if client is not None else sorted(_hist_clients(m1, name), key=str)
    tot = 0.0
    for c in clients:
        s1 = sc.metric_value(m1 or {}, name + "_sum", client=c)
        s0 = sc.metric_value(m0 or {}, name + "_sum", client=c) or 0.0
        if s1 is not None:
            tot += s1 - s0
    out["mean"] = rnd(tot / b[-1][1])
    return out


def stream_codecs(m):
    """{client id: codec} of the clients whose stream runs."""
    out = {}
    for (n, lab), v in (m or {}).items():
        if n == "scanoutd_client_stream_codec" and v == 1:
            d = dict(lab)
            out[d.get("client", "?")] = d.get("codec")
    return out


def client_gauges(m, name):
    out = {}
    for (n, lab), v in (m or {}).items():
        if n == name:
            out[dict(lab).get("client", "?")] = v
    return out


def rnd(v, nd=1):
    return None if v is None else round(v, nd)


def per_s(v, seconds):
    return None if v is None or seconds <= 0 else round(v / seconds, 2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", required=True, help="spice://host:port")
    ap.add_argument("--metrics", help="metrics base URL (http://host:port) or its /metrics URL")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--password")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--period", type=float, default=0.005, help="sampling period, s")
    ap.add_argument("--connect-timeout", type=float, default=15.0)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", help="also write the JSON result here")
    ap.add_argument("--wait-stream", type=float, default=0.0, metavar="S",
                    help="start measuring only once a video stream runs (needs --metrics); "
                         "give up after S seconds")
    ap.add_argument("--stream-clients", type=int, default=1,
                    help="with --wait-stream: how many clients must be streaming")
    ap.add_argument("--prefer-codec", action="append", default=[], metavar="CODEC",
                    help="video codec(s) to prefer (h264, vp8, vp9, h265, mjpeg), in order")
    ap.add_argument("--raw", action="store_true",
                    help="include every first sighting [unix_ms, value, age_ms]")
    a = ap.parse_args(argv)

    reason = sc.spice_gi_missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    murl = metrics_url(a.metrics)
    result = {"label": a.label, "uri": a.uri, "seconds": a.seconds, "sampling_period_ms":
              a.period * 1000}
    client = sc.SpiceClient(a.uri, password=a.password, name="bench",
                            preferred_codecs=a.prefer_codec)
    try:
        client.connect()
        try:
            p = client.wait_primary(a.connect_timeout)
        except TimeoutError as e:
            result["error"] = str(e)
            print(json.dumps(result), flush=True)
            return 2
        result.update(width=p.width, height=p.height, format=p.format)
        client.pump(a.warmup)
        if a.wait_stream > 0 and murl:
            t_w = time.monotonic()
            state = {"next": 0.0, "ok": False, "codecs": {}}

            def streaming():
                if time.monotonic() >= state["next"]:
                    state["next"] = time.monotonic() + 0.2
                    m, _ = fetch_metrics(murl)
                    state["codecs"] = stream_codecs(m)
                    state["ok"] = len(state["codecs"]) >= a.stream_clients
                return state["ok"]
            client.pump(a.wait_stream, until=streaming)
            result["stream_wait_s"] = round(time.monotonic() - t_w, 2)
            if not state["ok"]:
                result["stream_error"] = (f"no video stream for {a.stream_clients} client(s) "
                                          f"within {a.wait_stream}s: {state['codecs']}")
        disp = client.channel("display")
        m0, merr0 = fetch_metrics(murl)
        rb0 = disp.obj.get_property("total-read-bytes") if disp else None
        inv0 = client.invalidates
        sampler = sc.StripSampler(client, period=a.period)
        sampler.sample()                      # the value already on screen: not a latency
        first_n = len(sampler.sightings)
        t0 = time.monotonic()
        result["t_start_unix_ms"] = int(time.time() * 1000)
        # with --raw: once a second, [unix_ms, samples, undecodable samples] (cumulative), to
        # tell a frozen picture (strip readable, unchanged) from a garbled one (unreadable)
        decode_log = []
        nxt = [t0]

        def on_tick():
            sampler.tick()
            if a.raw and time.monotonic() >= nxt[0]:
                nxt[0] += 1.0
                decode_log.append([int(time.time() * 1000), sampler.samples,
                                   sampler.undecodable])
        client.pump(a.seconds, on_tick=on_tick)
        elapsed = time.monotonic() - t0
        result["t_end_unix_ms"] = int(time.time() * 1000)
        sampler.detach()
        m1, merr1 = fetch_metrics(murl)
        rb1 = disp.obj.get_property("total-read-bytes") if disp else None
    finally:
        client.close()

    new = sampler.sightings[first_n:]
    # A strip read from a garbled picture (a starved or broken video frame) decodes to some
    # random value: an age far outside what is possible. Count it, leave it out.
    misread = [s for s in new if not (PLAUSIBLE_AGE_MS[0] <= s[2] <= PLAUSIBLE_AGE_MS[1])]
    new = [s for s in new if PLAUSIBLE_AGE_MS[0] <= s[2] <= PLAUSIBLE_AGE_MS[1]]
    lat = [age for _, _, age in new]
    if a.raw:
        # monotonic -> wall clock, so sightings line up with other processes' timelines
        off = time.time() - time.monotonic()
        result["sightings"] = [[int((t + off) * 1000), v, age] for v, t, age in new]
        result["decode_log"] = decode_log
    result.update(
        elapsed_s=round(elapsed, 3),
        samples=sampler.samples,
        undecodable_samples=sampler.undecodable,
        misread_strips=len(misread),
        distinct_frames=len(new),
        distinct_fps=round(len(new) / elapsed, 2),
        invalidates_per_s=round((client.invalidates - inv0) / elapsed, 1),
        latency_ms={"n": len(lat), "p50": rnd(sc.percentile(lat, 50)),
                    "p90": rnd(sc.percentile(lat, 90)), "p99": rnd(sc.percentile(lat, 99)),
                    "min": rnd(min(lat) if lat else None), "max": rnd(max(lat) if lat else None)},
        client_display_bytes_per_s=(None if rb0 is None or rb1 is None
                                    else round((rb1 - rb0) / elapsed)),
    )
    if murl:
        d_disp = delta(m0, m1, "scanoutd_bytes_sent_total", channel="display")
        d_all = delta(m0, m1, "scanoutd_bytes_sent_total")
        d_frames = delta(m0, m1, "scanoutd_frames_produced_total")
        result.update(
            metrics_url=murl,
            metrics_error=merr0 or merr1,
            display_bytes_per_s=None if d_disp is None else round(d_disp / elapsed),
            all_channels_bytes_per_s=None if d_all is None else round(d_all / elapsed),
            frames_produced_per_s=None if d_frames is None else round(d_frames / elapsed, 2),
            coalesced_updates_delta=per_client_deltas(
                m0, m1, "scanoutd_client_coalesced_updates_total"),
            connected_clients=None if m1 is None else sc.metric_value(
                m1, "scanoutd_connected_clients"),
            stream_codecs=stream_codecs(m1),
            bitrate_target_kbps=client_gauges(m1, "scanoutd_client_bitrate_kbps"),
            stream_frames_sent_per_s=per_s(sum(per_client_deltas(
                m0, m1, "scanoutd_client_stream_frames_sent_total").values()), elapsed),
            frames_encoded_per_s=per_s(sum(per_client_deltas(
                m0, m1, "scanoutd_client_frames_encoded_total").values()), elapsed),
            client_display_bytes_delta=per_client_deltas(
                m0, m1, "scanoutd_client_display_bytes_total"),
            encode_ms=hist_summary(m0, m1, "scanoutd_client_encode_ms"),
            capture_to_send_ms=hist_summary(m0, m1, "scanoutd_client_capture_to_send_ms"),
        )
    out = json.dumps(result, sort_keys=False)
    print(out, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            f.write(out + "\n")
    L = result["latency_ms"]
    dbps = result.get("display_bytes_per_s")
    print(f"[{a.label or a.uri}] {result['width']}x{result['height']}: "
          f"latency p50 {L['p50']} ms p99 {L['p99']} ms (n={L['n']}), "
          f"{result['distinct_fps']} distinct frames/s, "
          f"display {'n/a' if dbps is None else f'{dbps / 1e6:.2f} MB/s'} (server), "
          f"{(result['client_display_bytes_per_s'] or 0) / 1e6:.2f} MB/s (client)",
          file=sys.stderr, flush=True)
    if sampler.samples and sampler.undecodable == sampler.samples:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
