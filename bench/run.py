#!/usr/bin/python3
"""Run the client-latency benchmark against scanoutd's demo source; builds nothing.

    /usr/bin/python3 bench/run.py [--seconds 10] [--size 1280x720] [--fps 60]
                                  [--scenes motion,still] [--out results.json]

Starts `scanoutd serve --source demo` (binary: $SCANOUTD_BIN, default target/release/scanoutd)
once per scene on free ports, runs bench/client_latency.py against it, stops the server
(SIGTERM, then SIGKILL), and prints a summary table. Server logs go to $E2E_ARTIFACTS/bench
(default /tmp/scanoutd-e2e/bench).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import spiceclient as sc  # noqa: E402

# The client runs under this same interpreter (bench/run.sh picks $PYTHON or /usr/bin/python3).
PY = sys.executable


def run_scene(binary, scene, size, fps, seconds, log_dir, clients=1):
    srv = sc.ScanoutdServer(binary=binary, scene=scene, size=size, fps=fps, log_dir=log_dir,
                            name=f"bench-{scene}")
    srv.start(ready_timeout=30)
    try:
        cmd = [PY, os.path.join(HERE, "client_latency.py"), "--uri", srv.uri,
               "--metrics", srv.metrics_url, "--seconds", str(seconds),
               "--label", f"{scene} {size}@{fps}"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            return {"label": f"{scene} {size}@{fps}", "error": "client_latency.py timed out"}
        sys.stderr.write(out.stderr)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        res = json.loads(lines[-1]) if lines else {"error": f"no result (rc {out.returncode})"}
        res["client_rc"] = out.returncode
        res["server_alive_after"] = srv.alive()
        res["server_log"] = srv.log_path
        return res
    finally:
        rc = srv.stop()
        if rc not in (0, -15, None):
            sys.stderr.write(f"note: scanoutd ({scene}) exited with {rc}; log {srv.log_path}\n")


def fmt(v, nd=1):
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=60)
    ap.add_argument("--scenes", default="motion,still")
    ap.add_argument("--out", help="write all results as JSON here")
    a = ap.parse_args()

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

    results = []
    for scene in [s for s in a.scenes.split(",") if s]:
        try:
            results.append(run_scene(binary, scene, a.size, a.fps, a.seconds, log_dir))
        except Exception as e:
            results.append({"label": f"{scene} {a.size}@{a.fps}", "error": str(e)[:2000]})

    hdr = (f"{'scenario':<24} {'p50 ms':>8} {'p99 ms':>8} {'n':>5} {'frames/s':>9} "
           f"{'display MB/s':>13} {'client MB/s':>12} {'produced/s':>11}")
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        if "error" in r and "latency_ms" not in r:
            print(f"{r.get('label', '?'):<24} ERROR: {r['error'][:200]}")
            continue
        L = r["latency_ms"]
        d = r.get("display_bytes_per_s")
        c = r.get("client_display_bytes_per_s")
        print(f"{r['label']:<24} {fmt(L['p50']):>8} {fmt(L['p99']):>8} {L['n']:>5} "
              f"{fmt(r['distinct_fps'], 2):>9} "
              f"{fmt(None if d is None else d / 1e6, 3):>13} "
              f"{fmt(None if c is None else c / 1e6, 3):>12} "
              f"{fmt(r.get('frames_produced_per_s'), 1):>11}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
