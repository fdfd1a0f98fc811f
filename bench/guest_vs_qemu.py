#!/usr/bin/env python3
"""The animated test guest served two ways, side by side in one run, to the real spice-gtk client:

  scanoutd  QEMU `-display dbus` (private bus) -> scanoutd (H.264 stream of the video window)
  qemu      QEMU's built-in SPICE server (`-spice ...,streaming-video=all`, MJPEG streams)

Same guest, same VGA device, same client, same machine, one after the other. For each: frames
per second of the guest's video the client sees (distinct frame numbers read from the strip in
the video window's corner), bandwidth of the display channel (spice-gtk's total-read-bytes),
CPU of the serving processes (QEMU, plus scanoutd where it serves), and picture quality: PSNR of
the client's video window against the exact frame the guest drew (crates/testguest renders any
frame; the e2e test checks the guest picture equals QEMU's screendump) — the frame the strip in
the window's corner names, and the closest guest frame up to 45 frames before it (medians) —
and whether the static text stayed pixel-exact.

usage: bench/guest_vs_qemu.py [--seconds 20] [--warmup 4] [--fps 30] [--samples 10]
                              [--only scanoutd|qemu] [--json OUT]
Needs the release build (SCANOUTD_BIN, default target/release/scanoutd), the test guest
(scripts/build-test-guest) and /usr/bin/python3 with python3-gi.
"""

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import qemuvm  # noqa: E402
import spiceclient as sc  # noqa: E402


def log(msg):
    print(f"[guest-vs-qemu] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def measure(uri, vm, server_pids, a, artifacts, name, on_measured=None):
    """Connect one client to `uri` and measure; returns a dict."""
    vx, vy, vw, vh = video = qemuvm.guest_video_rect()
    static = (16, 88, vx - 40, 500)
    res = {"server": name}
    with sc.SpiceClient(uri=uri) as c:
        c.wait_primary(timeout=60)
        res["size"] = [c.primary.width, c.primary.height]
        c.pump(a.warmup)
        disp = c.channel("display")
        seen = set()
        unreadable = [0]

        def sample_video():
            r = c.read_rows(vy, 16)
            if r is None:
                return
            w, stride, buf = r
            n = sc.decode_timestamp_strip(buf, w, 16, stride, x0=vx, y0=0)
            if n is None:
                unreadable[0] += 1
            else:
                seen.add(n)

        c.on_invalidate = lambda cl, x, y, w, h: sample_video() if y <= vy < y + h else None
        rb0 = disp.obj.get_property("total-read-bytes")
        cpu0 = {pid: qemuvm.proc_cpu_seconds(pid) for pid in server_pids}
        t0 = time.monotonic()
        shots = []  # raw client pictures; compared after the window so the client keeps up
        every = a.seconds / max(1, a.samples)
        next_shot = t0 + every / 2
        while time.monotonic() - t0 < a.seconds:
            c.pump(max(0.005, min(0.05, next_shot - time.monotonic())), on_tick=sample_video)
            if time.monotonic() >= next_shot:
                next_shot += every
                shots.append(c.snapshot())
        elapsed = time.monotonic() - t0
        rb1 = disp.obj.get_property("total-read-bytes")
        cpu1 = {pid: qemuvm.proc_cpu_seconds(pid) for pid in server_pids}
        c.on_invalidate = None
        if on_measured:
            on_measured(res)
    scores, best, lag, static_ok = [], [], [], []
    for i, (w, h, stride, buf) in enumerate(shots):
        n_vid = sc.decode_timestamp_strip(buf, w, h, stride, x0=vx, y0=vy)
        n_top = sc.decode_timestamp_strip(buf, w, h, stride)
        if n_vid is None:
            continue
        got = sc.bgrx_to_rgb(buf, w, h, stride)
        pic = os.path.join(artifacts, f"{name}-client-{i}.ppm")
        sc.write_ppm(pic, w, h, got)
        # The video window against the frame its strip names, and against the closest guest
        # frame around it: a server that shows parts of the window from different frames (or
        # the strip from a newer one) is judged by what it shows at its best.
        m = qemuvm.match_guest(pic, n_vid)
        scores.append(m["psnr_named"])
        best.append(m["psnr_best"])
        lag.append(n_vid - m["best"])
        if n_top is not None:
            _, _, top = qemuvm.render_guest(n_top, os.path.join(artifacts, "top.ppm"))
            static_ok.append(qemuvm.crop_rgb(got, w, static) == qemuvm.crop_rgb(top, w, static))
    res.update(
        seconds=round(elapsed, 2),
        fps_seen=round(len(seen) / elapsed, 2),
        distinct_frames=len(seen),
        unreadable_samples=unreadable[0],
        display_mbit_s=round((rb1 - rb0) * 8 / elapsed / 1e6, 3),
        cpu_percent={str(pid): round(100 * (cpu1[pid] - cpu0[pid]) / elapsed, 1)
                     for pid in server_pids if cpu0[pid] is not None and cpu1[pid] is not None},
        psnr_video_db=[round(x, 2) for x in scores],
        psnr_video_median_db=round(statistics.median(scores), 2) if scores else None,
        psnr_video_closest_db=[round(x, 2) for x in best],
        psnr_video_closest_median_db=round(statistics.median(best), 2) if best else None,
        closest_frame_behind_strip=lag,
        static_text_exact=f"{sum(static_ok)}/{len(static_ok)}",
    )
    res["cpu_total_percent"] = round(sum(res["cpu_percent"].values()), 1)
    serial = vm.serial().strip().splitlines()
    drawn = [ln for ln in serial if "frames/s drawn" in ln]
    res["guest_report"] = drawn[-1] if drawn else None
    return res


def run_scanoutd(a, work, artifacts):
    bus = qemuvm.DbusBus(work)
    vm = qemuvm.QemuVM(work, "scanoutd", qemuvm.guest_args(f"dbus,addr={bus.address}",
                                                           fps=a.fps))
    srv = sc.ScanoutdServer(binary=a.bin, source=f"qemu-dbus:{bus.address}", log_dir=artifacts,
                            name="bench-guest-scanoutd", extra_args=a.scanoutd_args.split())
    try:
        with srv:
            qemuvm.wait_guest_animating(vm)
            def server_side(res):
                # Read while the client is still connected (its stream is still running).
                m = srv.metrics()
                res["codec"] = sc.stream_codec(m)
                res["server_frames_dropped"] = {
                    dict(k[1]).get("reason", "?"): v for k, v in m.items()
                    if k[0] == "scanoutd_frames_dropped_total"}
            res = measure(srv.uri, vm, [vm.pid, srv.proc.pid], a, artifacts, "scanoutd",
                          server_side)
            res["pids"] = {"qemu": vm.pid, "scanoutd": srv.proc.pid}
            return res
    finally:
        vm.kill()
        bus.stop()


def run_qemu_spice(a, work, artifacts):
    port = free_port()
    spice = (f"port={port},addr=127.0.0.1,disable-ticketing=on,streaming-video=all,"
             "image-compression=auto_glz")
    vm = qemuvm.QemuVM(work, "builtin", qemuvm.guest_args("none", fps=a.fps) + ["-spice", spice])
    try:
        qemuvm.wait_guest_animating(vm)
        res = measure(f"spice://127.0.0.1:{port}", vm, [vm.pid], a, artifacts, "qemu")
        res["codec"] = "mjpeg (spice-server, streaming-video=all)"
        res["pids"] = {"qemu": vm.pid}
        return res
    finally:
        vm.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--warmup", type=float, default=4)
    p.add_argument("--fps", type=int, default=30, help="the guest's frame rate")
    p.add_argument("--samples", type=int, default=10, help="PSNR pictures per server")
    p.add_argument("--only", choices=["scanoutd", "qemu"])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--scanoutd-args", default="", help="extra `scanoutd serve` arguments")
    p.add_argument("--bin", default=os.environ.get("SCANOUTD_BIN")
                   or sc.default_scanoutd_bin("release"))
    a = p.parse_args()
    reason = qemuvm.guest_missing_reason()
    if reason:
        sys.exit(f"guest_vs_qemu: {reason}")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"guest_vs_qemu: no scanoutd binary at {a.bin} (cargo build --release)")
    sc.spice_gi()
    artifacts = os.path.join(sc.artifacts_dir(), "bench", "guest")
    os.makedirs(artifacts, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="sod-bench-guest-") as work:
        for name, fn in (("scanoutd", run_scanoutd), ("qemu", run_qemu_spice)):
            if a.only and a.only != name:
                continue
            log(f"{name}: booting the guest, then {a.warmup:.0f}+{a.seconds:.0f} s with the client")
            results.append(fn(a, work, artifacts))
            log(json.dumps(results[-1]))
    print()
    print(f"test guest {results[0]['size'][0]}x{results[0]['size'][1]}, video window "
          f"{'x'.join(map(str, qemuvm.guest_video_rect()[2:]))} at {a.fps} fps; "
          f"{a.seconds:.0f} s per server; spice-gtk client on 127.0.0.1")
    print(f"{'server':<10} {'codec':<8} {'fps seen':>8} {'Mbit/s':>8} {'CPU %':>14} "
          f"{'PSNR video':>11} {'closest':>8} {'text exact':>10}")
    for r in results:
        cpu = "+".join(f"{v:.0f}" for v in r["cpu_percent"].values())
        print(f"{r['server']:<10} {str(r['codec']).split()[0]:<8} {r['fps_seen']:>8.1f} "
              f"{r['display_mbit_s']:>8.2f} {cpu + '=' + format(r['cpu_total_percent'], '.0f'):>14} "
              f"{str(r['psnr_video_median_db']):>11} {str(r['psnr_video_closest_median_db']):>8} "
              f"{r['static_text_exact']:>10}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
        log(f"wrote {a.json}")


if __name__ == "__main__":
    main()
