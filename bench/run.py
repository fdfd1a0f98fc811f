#!/usr/bin/python3
"""Benchmark scanoutd's demo source with the real spice-gtk client; builds nothing.

    /usr/bin/python3 bench/run.py [--suites 2d,stream,still,multi,codecs] [--seconds 10]
                                  [--stream-seconds 20] [--codec-seconds 10] [--clients 4]
                                  [--size 1280x720] [--fps 60] [--scenes motion,still]
                                  [--out results.json]

Each case starts `scanoutd serve --source demo` (binary: $SCANOUTD_BIN, default
target/release/scanoutd) on free loopback ports, runs bench/client_latency.py (one process per
client) against it, stops the server (SIGTERM, then SIGKILL), and the summary tables are printed
at the end. Suites:

  2d      the lossless path (--codec off): --scenes at --size@--fps, --seconds each
  stream  1280x720@60 motion, --codec h264 (x264), measured --stream-seconds from the moment
          the stream runs: client fps, capture-to-display, capture-to-send, encode, bitrate
  still   the still scene with the same settings: what an idle desktop costs (target
          <= 10 kbit/s)
  multi   --clients clients at once on the h264 stream: their fps and the server's resident
          memory (VmRSS from /proc/PID/status, sampled every 0.5 s while all of them stream)
  codecs  vp8, vp9, mjpeg, h265 (and h264 for reference) at 1280x720@30

Capture-to-display is the strip's age at its first sighting in the client's framebuffer (same
clock); capture-to-send and encode percentiles come from the server's histograms, from bucket
deltas over the measurement window (buckets 1,2,4,8,12,16,25,33,50,100,250,1000 ms: a value is
only as exact as its bucket). Results (JSON) and server logs go to $E2E_ARTIFACTS/bench
(default /tmp/scanoutd-e2e/bench).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
sys.path.insert(0, HERE)
import spiceclient as sc  # noqa: E402
import client_latency as cl  # noqa: E402

# The clients run under this same interpreter (bench/run.sh picks $PYTHON or /usr/bin/python3).
PY = sys.executable
CLIENT = os.path.join(HERE, "client_latency.py")
BUCKETS_MS = "1,2,4,8,12,16,25,33,50,100,250,1000"


def vm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Sampler(threading.Thread):
    """Samples the server's VmRSS and how many clients stream, every `period` s (bounded)."""

    def __init__(self, srv, limit_s, period=0.5):
        super().__init__(daemon=True)
        self.srv, self.limit_s, self.period = srv, limit_s, period
        self.samples = []          # (t, rss KiB, connected clients, streaming clients)
        self.stop_ev = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.limit_s
        while not self.stop_ev.is_set() and time.monotonic() < deadline:
            rss = vm_rss_kib(self.srv.proc.pid)
            try:
                m = self.srv.metrics(timeout=2.0)
                conn = sc.metric_value(m, "scanoutd_connected_clients")
                streaming = len(cl.stream_codecs(m))
            except Exception:
                conn = streaming = None
            self.samples.append((time.time(), rss, conn, streaming))
            self.stop_ev.wait(self.period)

    def stop(self):
        self.stop_ev.set()
        self.join(timeout=5)


def slug(name):
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


# Extra `scanoutd serve` arguments for every case (--server-args).
EXTRA_ARGS = []


def run_case(binary, log_dir, name, scene, size, fps, codec, seconds, clients=1,
             wait_stream=0.0, warmup=1.0):
    """One server, `clients` client processes at once. Returns a result dict."""
    case = dict(name=name, scene=scene, size=size, fps=fps, codec=codec, seconds=seconds,
                clients=clients)
    srv = sc.ScanoutdServer(binary=binary, scene=scene, size=size, fps=fps, log_dir=log_dir,
                            name=f"bench-{slug(name)}",
                            extra_args=["--codec", codec] + EXTRA_ARGS)
    srv.start(ready_timeout=30)
    sampler = None
    procs = []
    try:
        case["rss_idle_kib"] = vm_rss_kib(srv.proc.pid)
        sampler = Sampler(srv, limit_s=seconds + wait_stream + 60)
        sampler.start()
        for i in range(clients):
            out = os.path.join(log_dir, f"{slug(name)}-client{i}.json")
            if os.path.exists(out):
                os.unlink(out)
            cmd = [PY, CLIENT, "--uri", srv.uri, "--metrics", srv.metrics_url,
                   "--seconds", str(seconds), "--warmup", str(warmup),
                   "--label", f"{name} #{i}", "--json", out]
            if wait_stream > 0:
                cmd += ["--wait-stream", str(wait_stream), "--stream-clients", str(clients)]
            errf = open(os.path.join(log_dir, f"{slug(name)}-client{i}.log"), "wb")
            procs.append((subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=errf,
                                           start_new_session=True), out, errf))
        deadline = time.monotonic() + seconds + wait_stream + warmup + 60
        for p, _, _ in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                sc.stop_process(p, 3.0)
        results = []
        for i, (p, out, errf) in enumerate(procs):
            errf.close()
            try:
                with open(out) as f:
                    r = json.load(f)
            except (OSError, ValueError):
                r = {"error": f"client {i}: no result (rc {p.returncode}): "
                              + sc.tail_file(errf.name, 800)}
            r["client_rc"] = p.returncode
            results.append(r)
        case["client_results"] = results
        case["server_alive_after"] = srv.alive()
        case["server_log"] = srv.log_path
    finally:
        if sampler is not None:
            sampler.stop()
        for p, _, errf in procs:
            sc.stop_process(p, 3.0)
            errf.close()
        rc = srv.stop()
        if rc not in (0, -15, None):
            sys.stderr.write(f"note: scanoutd ({name}) exited with {rc}; log {srv.log_path}\n")
    if sampler is not None:
        full = [s for s in sampler.samples if s[3] is not None and s[3] >= clients and s[1]]
        anyc = [s for s in sampler.samples if s[1]]
        case["rss_kib"] = {
            "idle": case.get("rss_idle_kib"),
            "max_all_streaming": max((s[1] for s in full), default=None),
            "mean_all_streaming": (round(sum(s[1] for s in full) / len(full)) if full
                                   else None),
            "max": max((s[1] for s in anyc), default=None),
            "samples_all_streaming": len(full),
        }
    summarize(case)
    return case


def summarize(case):
    """Flatten the first client's numbers (and per-client fps) into the case."""
    rs = case.get("client_results") or []
    ok = [r for r in rs if "latency_ms" in r]
    errors = [r.get("error") or r.get("stream_error") for r in rs
              if r.get("error") or r.get("stream_error")]
    if errors:
        case["error"] = "; ".join(str(e)[:300] for e in errors)
    if not ok:
        case.setdefault("error", "no client result")
        return
    r = ok[0]
    L = r["latency_ms"]
    case.update(
        client_fps=r.get("distinct_fps"),
        client_fps_each=[x.get("distinct_fps") for x in ok],
        c2d_p50_ms=L.get("p50"), c2d_p99_ms=L.get("p99"), c2d_n=L.get("n"),
        c2d_p50_each=[x["latency_ms"].get("p50") for x in ok],
        c2s_ms=r.get("capture_to_send_ms"), encode_ms=r.get("encode_ms"),
        display_kbit_s=(None if r.get("display_bytes_per_s") is None
                        else round(r["display_bytes_per_s"] * 8 / 1000, 2)),
        stream_codecs=r.get("stream_codecs"),
        stream_fps_server=r.get("stream_frames_sent_per_s"),
        frames_produced_per_s=r.get("frames_produced_per_s"),
        coalesced=r.get("coalesced_updates_delta"),
        misread_strips=[x.get("misread_strips") for x in ok],
        bitrate_target_kbps=r.get("bitrate_target_kbps"),
        stream_wait_s=r.get("stream_wait_s"),
    )
    if case["scene"] == "still" and case.get("display_kbit_s") is not None:
        case["still_within_10kbit"] = case["display_kbit_s"] <= 10.0
    codecs = set((r.get("stream_codecs") or {}).values())
    if case["codec"] not in ("off", "auto") and case["scene"] == "motion" and \
            codecs != {case["codec"]}:
        case.setdefault("error", f"expected a {case['codec']} stream, the server reported "
                                 f"{r.get('stream_codecs')}")


def fmt(v, nd=1):
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def pct(h, key):
    if not h or h.get(key) is None:
        return "n/a"
    v = fmt(h[key])
    return (">" + v) if h.get("over_max_bucket") and key == "p99" and h[key] >= 1000 else v


def print_tables(cases):
    hdr = (f"{'case':<22} {'codec':<6} {'fps':>6} {'c2d p50':>8} {'c2d p99':>8} "
           f"{'c2s p50':>8} {'c2s p99':>8} {'enc p50':>8} {'enc p99':>8} {'display':>14}")
    print()
    print("single client (ms; c2d = capture-to-display seen by the client, c2s = "
          "capture-to-send and enc = encode from the server's histograms)")
    print(hdr)
    print("-" * len(hdr))
    for c in cases:
        if c.get("clients", 1) != 1:
            continue
        label = f"{c['name']}"
        if "client_fps" not in c:
            print(f"{label:<22} {c['codec']:<6} ERROR: {str(c.get('error'))[:200]}")
            continue
        kb = c.get("display_kbit_s")
        disp = "n/a" if kb is None else (f"{kb / 1000:.2f} Mbit/s" if kb >= 1000
                                         else f"{kb:.1f} kbit/s")
        print(f"{label:<22} {c['codec']:<6} {fmt(c['client_fps'], 1):>6} "
              f"{fmt(c['c2d_p50_ms']):>8} {fmt(c['c2d_p99_ms']):>8} "
              f"{pct(c.get('c2s_ms'), 'p50'):>8} {pct(c.get('c2s_ms'), 'p99'):>8} "
              f"{pct(c.get('encode_ms'), 'p50'):>8} {pct(c.get('encode_ms'), 'p99'):>8} "
              f"{disp:>14}"
              + ({True: "  (<= 10 kbit/s: ok)", False: "  (> 10 kbit/s target!)"}
                 .get(c.get("still_within_10kbit"), ""))
              + (f"  ! {c['error'][:120]}" if c.get("error") else ""))
    multi = [c for c in cases if c.get("clients", 1) > 1]
    if multi:
        print()
        hdr = (f"{'case':<22} {'clients':>7} {'fps each':<28} {'c2d p50 each':<28} "
               f"{'RSS idle':>9} {'RSS max':>9}")
        print("several clients at once (RSS: the server's VmRSS, MiB, while all of them stream)")
        print(hdr)
        print("-" * len(hdr))
        for c in multi:
            rss = c.get("rss_kib") or {}
            mib = (lambda k: "n/a" if k is None else f"{k / 1024:.1f}")
            print(f"{c['name']:<22} {c['clients']:>7} "
                  f"{' '.join(fmt(x) for x in c.get('client_fps_each', [])):<28} "
                  f"{' '.join(fmt(x, 0) for x in c.get('c2d_p50_each', [])):<28} "
                  f"{mib(rss.get('idle')):>9} {mib(rss.get('max_all_streaming')):>9}"
                  + (f"  ! {c['error'][:120]}" if c.get("error") else ""))
    print(f"\nhistogram percentiles are interpolated inside buckets of {BUCKETS_MS} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", default="2d,stream,still,multi,codecs")
    ap.add_argument("--seconds", type=float, default=10.0, help="2d, still and multi cases")
    ap.add_argument("--stream-seconds", type=float, default=20.0)
    ap.add_argument("--codec-seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4, help="clients in the multi case")
    ap.add_argument("--size", default="1280x720", help="2d suite")
    ap.add_argument("--fps", type=int, default=60, help="2d suite")
    ap.add_argument("--scenes", default="motion,still", help="2d suite")
    ap.add_argument("--codecs", default="vp8,vp9,mjpeg,h265,h264", help="codecs suite")
    ap.add_argument("--server-args", default="",
                    help="extra `scanoutd serve` arguments for every case (space separated)")
    ap.add_argument("--out", help="results JSON (default $E2E_ARTIFACTS/bench/results.json)")
    a = ap.parse_args()
    EXTRA_ARGS[:] = a.server_args.split()

    binary = os.environ.get("SCANOUTD_BIN") or os.path.join(sc.REPO_ROOT, "target", "release",
                                                            "scanoutd")
    if not os.access(binary, os.X_OK):
        print(f"scanoutd binary not found: {binary} (cargo build --release, or set "
              f"SCANOUTD_BIN)", file=sys.stderr)
        return 2
    reason = sc.spice_gi_missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    log_dir = os.path.join(sc.artifacts_dir(), "bench")
    os.makedirs(log_dir, exist_ok=True)
    out_path = a.out or os.path.join(log_dir, "results.json")
    suites = [s for s in a.suites.split(",") if s]

    plan = []
    if "2d" in suites:
        for scene in [s for s in a.scenes.split(",") if s]:
            plan.append(dict(name=f"2d {scene} {a.size}@{a.fps}", scene=scene, size=a.size,
                             fps=a.fps, codec="off", seconds=a.seconds))
    if "stream" in suites:
        plan.append(dict(name="stream 1280x720@60", scene="motion", size="1280x720", fps=60,
                         codec="h264", seconds=a.stream_seconds, wait_stream=15.0))
    if "still" in suites:
        plan.append(dict(name="still 1280x720@60", scene="still", size="1280x720", fps=60,
                         codec="h264", seconds=a.seconds, warmup=2.0))
    if "multi" in suites:
        plan.append(dict(name=f"{a.clients} clients 720p60", scene="motion", size="1280x720",
                         fps=60, codec="h264", seconds=a.seconds, clients=a.clients,
                         wait_stream=20.0))
    if "codecs" in suites:
        for codec in [c for c in a.codecs.split(",") if c]:
            plan.append(dict(name=f"{codec} 1280x720@30", scene="motion", size="1280x720",
                             fps=30, codec=codec, seconds=a.codec_seconds, wait_stream=15.0))

    t_start = time.monotonic()
    cases = []
    for p in plan:
        t = time.monotonic()
        try:
            c = run_case(binary, log_dir, **p)
        except Exception as e:
            c = dict(p, error=f"{type(e).__name__}: {str(e)[:2000]}")
        c["wall_s"] = round(time.monotonic() - t, 1)
        cases.append(c)
        print(f"[{c['name']}] done in {c['wall_s']} s"
              + (f": {c['error'][:300]}" if c.get("error") else ""), file=sys.stderr, flush=True)

    print_tables(cases)
    meta = dict(binary=binary, cpus=os.cpu_count(), total_s=round(time.monotonic() - t_start, 1),
                histogram_buckets_ms=BUCKETS_MS, unix_time=int(time.time()))
    try:
        with open("/proc/loadavg") as f:
            meta["loadavg_end"] = f.read().split()[:3]
    except OSError:
        pass
    with open(out_path, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, indent=2)
    print(f"results: {out_path} (total {meta['total_s']} s)")
    return 0 if all("error" not in c for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
