#!/usr/bin/env bash
# Benchmark scanoutd with the real spice-gtk client; builds nothing (`make bench` builds first).
#   SCANOUTD_BIN=target/release/scanoutd bench/run.sh [--suites 2d,stream,still,multi,codecs]
#       [--seconds 10] [--stream-seconds 20] [--codec-seconds 10] [--size 1280x720] [--fps 60]
# 1. bench/run.py, on the demo source: the lossless 2D cases, the H.264 720p60 stream (latency,
#    encode, bitrate), the still scene's idle bitrate, four clients at once (fps, server RSS) and
#    one case per codec at 720p30; writes $E2E_ARTIFACTS/bench/results.json (about 2.5 minutes).
# 2. bench/guest_vs_qemu.py: the animated test guest served by scanoutd and by QEMU's built-in
#    SPICE server, side by side (fps seen, bandwidth, CPU, PSNR); writes
#    $E2E_ARTIFACTS/bench/guest_vs_qemu.json (about 1.5 minutes). Skip it with GUEST_BENCH=0.
# 3. bench/lag.py: the lag scenario (a client behind a 4 Mbit/s tbf link, one on loopback) with
#    the millisecond figures the test does not assert; writes $E2E_ARTIFACTS/bench/lag.json
#    (about 1.5 minutes, root only). Skip it with LAG_BENCH=0.
# 4. bench/wan.py: the WAN links of tests/e2e/test_wan.py (a 4 Mbit/s link with a 50 ms queue,
#    deep 2 s queues at 1.5 Mbit/s and 500 kbit/s, a 1.5 Mbit/s SSH-tunnel-like relay, a deep
#    link stepping from 20 to 2 Mbit/s): age p50/p90/p99, fps, kbit/s against the link, the
#    step's recovery, each against its target; writes $E2E_ARTIFACTS/bench/wan.json (about 5
#    minutes, root only). Skip it with WAN_BENCH=0.
# 5. bench/shared.py: server CPU for 1, 2 and 4 clients of one display at 720p30/60 (shared
#    encoders), pixel bytes copied per frame, a two-codec case; writes
#    $E2E_ARTIFACTS/bench/shared.json (about 2.5 minutes). Skip it with SHARED_BENCH=0.
# Options go to run.py. Runs with $PYTHON, default /usr/bin/python3 (needs python3-gi).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-/usr/bin/python3}"
"$py" "$here/run.py" "$@"
if [ "${GUEST_BENCH:-1}" != 0 ]; then
  out="${E2E_ARTIFACTS:-/tmp/scanoutd-e2e}/bench"
  mkdir -p "$out"
  "$py" "$here/guest_vs_qemu.py" --json "$out/guest_vs_qemu.json"
fi
if [ "${LAG_BENCH:-1}" != 0 ]; then
  out="${E2E_ARTIFACTS:-/tmp/scanoutd-e2e}/bench"
  mkdir -p "$out"
  "$py" "$here/lag.py" --json "$out/lag.json"
fi
if [ "${WAN_BENCH:-1}" != 0 ]; then
  out="${E2E_ARTIFACTS:-/tmp/scanoutd-e2e}/bench"
  mkdir -p "$out"
  "$py" "$here/wan.py" --json "$out/wan.json"
fi
if [ "${SHARED_BENCH:-1}" != 0 ]; then
  out="${E2E_ARTIFACTS:-/tmp/scanoutd-e2e}/bench"
  mkdir -p "$out"
  "$py" "$here/shared.py" --json "$out/shared.json"
fi
