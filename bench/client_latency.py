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


def rnd(v, nd=1):
    return None if v is None else round(v, nd)


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
    a = ap.parse_args(argv)

    reason = sc.spice_gi_missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    murl = metrics_url(a.metrics)
    result = {"label": a.label, "uri": a.uri, "seconds": a.seconds, "sampling_period_ms":
              a.period * 1000}
    client = sc.SpiceClient(a.uri, password=a.password, name="bench")
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
        disp = client.channel("display")
        m0, merr0 = fetch_metrics(murl)
        rb0 = disp.obj.get_property("total-read-bytes") if disp else None
        inv0 = client.invalidates
        sampler = sc.StripSampler(client, period=a.period)
        sampler.sample()                      # the value already on screen: not a latency
        first_n = len(sampler.sightings)
        t0 = time.monotonic()
        client.pump(a.seconds, on_tick=sampler.tick)
        elapsed = time.monotonic() - t0
        sampler.detach()
        m1, merr1 = fetch_metrics(murl)
        rb1 = disp.obj.get_property("total-read-bytes") if disp else None
    finally:
        client.close()

    new = sampler.sightings[first_n:]
    lat = [age for _, _, age in new]
    result.update(
        elapsed_s=round(elapsed, 3),
        samples=sampler.samples,
        undecodable_samples=sampler.undecodable,
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
