#!/usr/bin/env bash
# Benchmark scanoutd's demo source with the real spice-gtk client; builds nothing.
#   SCANOUTD_BIN=target/release/scanoutd bench/run.sh [--suites 2d,stream,still,multi,codecs]
#       [--seconds 10] [--stream-seconds 20] [--codec-seconds 10] [--size 1280x720] [--fps 60]
# Runs the lossless 2D cases, the H.264 720p60 stream (latency, encode, bitrate), the still
# scene's idle bitrate, four clients at once (fps, server RSS) and one case per codec at 720p30;
# prints tables and writes $E2E_ARTIFACTS/bench/results.json (about 2.5 minutes).
# See bench/run.py for options. Runs with $PYTHON, default /usr/bin/python3 (needs python3-gi).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${PYTHON:-/usr/bin/python3}" "$here/run.py" "$@"
