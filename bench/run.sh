#!/usr/bin/env bash
# Benchmark scanoutd's demo source with the real spice-gtk client; builds nothing.
#   SCANOUTD_BIN=target/release/scanoutd bench/run.sh [--seconds 10] [--size 1280x720] [--fps 60]
# See bench/run.py for options. Runs with $PYTHON, default /usr/bin/python3 (needs python3-gi).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${PYTHON:-/usr/bin/python3}" "$here/run.py" "$@"
