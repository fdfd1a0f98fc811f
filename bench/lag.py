#!/usr/bin/python3
"""The lag scenario as a benchmark: the millisecond figures that tests/e2e/test_lag.py prints
but (since they depend on how busy the machine is) does not assert.

    SCANOUTD_BIN=target/release/scanoutd /usr/bin/python3 bench/lag.py [--json OUT]

Runs the lag test (network namespaces joined by a veth pair shaped by tbf to 4 Mbit/s, a
throttled client behind it and an unthrottled one on loopback, a minute of 1280x720@30 H.264)
and reports, from its summary.json: the throttled client's age p50/p99 against the link's own
delay (3 frame periods + tbf latency + one frame's serialization), its frame rate and the
bitrate it used, and the unthrottled client's age alone and next to the throttled one. Needs
root (namespaces); says why and exits 0 without it, so `make bench` goes on.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import netns  # noqa: E402


def fmt(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    reason = netns.missing_reason()
    if reason:
        print(f"lag bench skipped: {reason}")
        return 0
    out = os.path.join(os.environ.get("E2E_ARTIFACTS", "/tmp/scanoutd-e2e"), "bench")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, E2E_ARTIFACTS=out)
    env.setdefault("SCANOUTD_BIN", os.path.join(REPO, "target", "release", "scanoutd"))
    print(f"lag bench: tests/e2e/test_lag.py with {env['SCANOUTD_BIN']} (about 90 s)…",
          flush=True)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                        os.path.join(REPO, "tests", "e2e", "test_lag.py")], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = os.path.join(out, "lag.log")
    with open(log, "w") as f:
        f.write(r.stdout)
    path = os.path.join(out, "test_throttled_client_lag_is_bounded", "summary.json")
    if not os.path.exists(path):
        print(f"lag bench: no summary (pytest exit {r.returncode}); log in {log}")
        print(r.stdout[-3000:])
        return 1
    with open(path) as f:
        s = json.load(f)
    print(f"\nlag bench (4 Mbit/s tbf, 50 ms queue, 1280x720@30 H.264; load average before "
          f"{s.get('load_before')}, after {s.get('load_after')}):")
    print(f"  throttled:   age p50 {fmt(s['thr_p50'])} ms, p99 {fmt(s['thr_p99'])} ms "
          f"(link's own delay + 3 frames: {fmt(s['bound_ms'])} ms), {fmt(s['thr_fps'])} fps, "
          f"{fmt(s['used_kbps'], 0)} kbit/s used of {s.get('link_kbps', 4000)}, "
          f"bitrate target min {fmt(s['min_kbps'], 0)}, median first/last 15 s "
          f"{fmt(s['med_first'])}/{fmt(s['med_last'])} ms, stalest picture "
          f"{fmt(s['stalest_ms'], 0)} ms")
    print(f"  unthrottled: alone age p50 {fmt(s['unt_base_p50'])} ms at "
          f"{fmt(s['unt_base_fps'])} fps; beside the throttled one p50 {fmt(s['unt_p50'])} ms, "
          f"p99 {fmt(s['unt_p99'])} ms at {fmt(s['unt_fps'])} fps")
    print(f"  test verdict: {'passed' if r.returncode == 0 else 'FAILED (see ' + log + ')'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
