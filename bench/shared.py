#!/usr/bin/python3
"""What clients cost the server now that encoders are shared: server CPU for 1, 2 and 4 real
spice-gtk clients of one display, the 4:1 ratio, the pixel bytes the CPU copies per frame, and a
two-codec case (one client H.264, one VP8: two encoders, one per codec).

    SCANOUTD_BIN=target/release/scanoutd /usr/bin/python3 bench/shared.py \
        [--seconds 10] [--fps 30,60] [--clients 1,2,4] [--json OUT]

Each case starts `scanoutd serve` (the demo, 1280x720 motion, --codec auto) on free loopback
ports and N bench/client_latency.py processes; once every client streams (the metrics say so)
the server's CPU time (/proc/PID/stat utime+stime) and its counters are read, and again
--seconds later. Reported per case: server CPU in % of one core, frames the source published
and the stage encoded per second, shared encoders running, client fps (distinct frames each
client saw), and CPU-copied pixel bytes per published frame: the ring bringing a slot up to
date (scanoutd_ring_sync_bytes_total), encoder input (scanoutd_stream_copy_bytes_total, once
per encoder) and drawables (scanoutd_client_copy_bytes_total, per client).

The client processes decode on the same 2 cores as the server, so their own CPU is not
counted, but it competes: the ratio is the figure to compare, not the absolute percentages.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
sys.path.insert(0, HERE)
import spiceclient as sc  # noqa: E402
import client_latency as cl  # noqa: E402
import qemuvm  # noqa: E402  (proc_cpu_seconds)

PY = sys.executable
CLIENT = os.path.join(HERE, "client_latency.py")
SIZE = "1280x720"


def total(m, name):
    return sc.metric_value(m, name) or 0.0


def counters(m):
    return {
        "published": total(m, "scanoutd_frames_produced_total"),
        "encoded": total(m, "scanoutd_stream_frames_encoded_total"),
        "sync_bytes": total(m, "scanoutd_ring_sync_bytes_total"),
        "stream_copy": total(m, "scanoutd_stream_copy_bytes_total"),
        "client_copy": total(m, "scanoutd_client_copy_bytes_total"),
        "encoders": total(m, "scanoutd_stream_encoders"),
        "keyframes": total(m, "scanoutd_stream_keyframes_forced_total"),
    }


def run_case(binary, out_dir, fps, prefs, seconds):
    """One server, one client per entry of `prefs` (None or a codec the client prefers)."""
    n = len(prefs)
    name = f"{fps}fps-{n}c" + ("-" + "+".join(p or "auto" for p in prefs) if any(prefs) else "")
    srv = sc.ScanoutdServer(binary=binary, scene="motion", size=SIZE, fps=fps, log_dir=out_dir,
                            name=f"shared-{name}", extra_args=["--codec", "auto"])
    srv.start(ready_timeout=30)
    procs = []
    try:
        for i, pref in enumerate(prefs):
            out = os.path.join(out_dir, f"shared-{name}-client{i}.json")
            cmd = [PY, CLIENT, "--uri", srv.uri, "--metrics", srv.metrics_url,
                   "--seconds", str(seconds + 4), "--warmup", "0.5", "--json", out,
                   "--label", f"{name} #{i}"]
            if pref:
                cmd += ["--prefer-codec", pref]
            errf = open(os.path.join(out_dir, f"shared-{name}-client{i}.log"), "wb")
            procs.append((subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=errf,
                                           start_new_session=True), out, errf))
        # Every client streams: then measure.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(cl.stream_codecs(srv.metrics())) >= n:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{name}: not every client streamed within 30 s")
        time.sleep(1.0)
        m0, c0, t0 = srv.metrics(), qemuvm.proc_cpu_seconds(srv.proc.pid), time.monotonic()
        time.sleep(seconds)
        m1, c1, t1 = srv.metrics(), qemuvm.proc_cpu_seconds(srv.proc.pid), time.monotonic()
        codecs = sorted(set(cl.stream_codecs(m1).values()))
        for p, _, _ in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sc.stop_process(p, 3.0)
        client_fps = []
        for p, out, errf in procs:
            errf.close()
            try:
                with open(out) as f:
                    client_fps.append(json.load(f).get("distinct_fps"))
            except (OSError, ValueError):
                client_fps.append(None)
    finally:
        for p, _, _ in procs:
            if p.poll() is None:
                sc.stop_process(p, 3.0)
        srv.stop()
    a, b = counters(m0), counters(m1)
    dt = t1 - t0
    published = max(1.0, b["published"] - a["published"])
    return {
        "case": name, "fps": fps, "clients": n, "prefs": prefs, "codecs": codecs,
        "cpu_pct": 100.0 * (c1 - c0) / dt,
        "published_fps": published / dt,
        "encoded_fps": (b["encoded"] - a["encoded"]) / dt,
        "encoders": b["encoders"],
        "keyframes_forced": b["keyframes"] - a["keyframes"],
        "client_fps": client_fps,
        "sync_bytes_per_frame": (b["sync_bytes"] - a["sync_bytes"]) / published,
        "stream_copy_per_frame": (b["stream_copy"] - a["stream_copy"]) / published,
        "client_copy_per_frame": (b["client_copy"] - a["client_copy"]) / published,
    }


def fmt(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", default="30,60")
    ap.add_argument("--clients", default="1,2,4")
    ap.add_argument("--json")
    a = ap.parse_args()
    binary = os.environ.get("SCANOUTD_BIN") or os.path.join(HERE, "..", "target", "release",
                                                             "scanoutd")
    out_dir = os.path.join(os.environ.get("E2E_ARTIFACTS", "/tmp/scanoutd-e2e"), "bench")
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    for fps in [int(x) for x in a.fps.split(",") if x]:
        for n in [int(x) for x in a.clients.split(",") if x]:
            print(f"shared bench: {SIZE}@{fps}, {n} client(s)…", flush=True)
            cases.append(run_case(binary, out_dir, fps, [None] * n, a.seconds))
    print(f"shared bench: {SIZE}@30, one H.264 client and one VP8 client…", flush=True)
    cases.append(run_case(binary, out_dir, 30, [None, "vp8"], a.seconds))

    frame_bytes = 1280 * 720 * 4
    print(f"\nserver CPU by clients of one display ({SIZE} demo, motion; {os.cpu_count()} CPUs; "
          f"one frame = {frame_bytes} bytes)")
    print(f"{'case':<22} {'codecs':<10} {'CPU %':>6} {'x 1c':>5} {'src fps':>7} {'enc fps':>7} "
          f"{'encs':>4} {'client fps':<22} {'ring B/f':>9} {'enc in B/f':>10} {'drawn B/f':>9}")
    base = {}
    for c in cases:
        if c["clients"] == 1:
            base[c["fps"]] = c["cpu_pct"]
        ratio = c["cpu_pct"] / base[c["fps"]] if base.get(c["fps"]) else None
        c["cpu_ratio_vs_1"] = ratio
        print(f"{c['case']:<22} {','.join(c['codecs']):<10} {fmt(c['cpu_pct']):>6} "
              f"{fmt(ratio, 2):>5} {fmt(c['published_fps']):>7} {fmt(c['encoded_fps']):>7} "
              f"{c['encoders']:>4.0f} {' '.join(fmt(x) for x in c['client_fps']):<22} "
              f"{c['sync_bytes_per_frame']:>9.0f} {c['stream_copy_per_frame']:>10.0f} "
              f"{c['client_copy_per_frame']:>9.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(cases, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
