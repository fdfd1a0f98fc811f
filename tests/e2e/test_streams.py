"""Video streams seen through the real spice-gtk client: each codec is decoded by the client
and its picture is compared with the exact source frame it shows.

The source frame is identified by the timestamp strip in the client's own picture and
re-rendered bit-exactly with `scanoutd render-demo` (the demo is a pure function of its
capture time), so the comparison is exact about *which* frame is on screen.
"""

import os
import subprocess
import time

import pytest

import spiceclient as sc

SIZE = (640, 480)
# Whole-picture PSNR floor. The demo's terminal window (1-pixel green text on a dark
# background) loses its colour to 4:2:0 chroma subsampling in every codec and scores 23-24 dB
# on its own; the rest of the picture scores 30-48 dB, and whole pictures 26-30 dB. A flipped,
# garbled or wrong picture scores about 12 dB: that is what the second check (the right frame
# must beat a frame 0.5 s away by 2 dB) catches; this floor only rules out a picture that is
# right but broken.
MIN_PSNR = 24


def render_reference(binary, start_ms, strip_ms, out):
    # The strip holds the capture time mod 2^32; the start time is exported in full.
    full = start_ms + ((strip_ms - start_ms) % (1 << 32))
    subprocess.run([binary, "render-demo", "--size", f"{SIZE[0]}x{SIZE[1]}", "--scene", "motion",
                    "--start-unix-ms", str(start_ms), "--unix-ms", str(full), "--out", out],
                   check=True, timeout=30)
    w, h, rgb = sc.parse_ppm(open(out, "rb").read())
    assert (w, h) == SIZE
    return rgb


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("codec", ["h264", "vp8", "vp9", "mjpeg", "h265"])
def test_client_decodes_stream(codec, scanoutd_bin, spice_gi, artifacts):
    # The whole surface is streamed, timestamp strip included: in auto mode the strip (a
    # thin changing row) goes out as lossless drawables, which a client shows before the
    # stream frame of the same moment, so the strip would not name the picture around it.
    srv = sc.ScanoutdServer(binary=scanoutd_bin, scene="motion", size=f"{SIZE[0]}x{SIZE[1]}",
                            fps=30, extra_args=["--codec", codec, "--stream-mode", "full-frame"],
                            log_dir=artifacts, name=f"stream-{codec}")
    with srv:
        with sc.SpiceClient(uri=srv.uri) as c:
            c.wait_primary(timeout=15)
            m = {}

            def streaming():
                nonlocal m
                m = srv.metrics()
                return (sc.stream_codec(m) == codec and
                        (sc.metric_value(m, "scanoutd_client_stream_frames_sent_total") or 0) >= 15)

            c.wait_for(streaming, timeout=20, what=f"a {codec} stream with 15 frames sent")
            start_ms = int(sc.metric_value(m, "scanoutd_source_start_unix_ms"))
            # Let the decoder settle, then compare several pictures with their source frames.
            c.pump(0.5)
            scores, wrong = [], []
            for i in range(5):
                c.pump(0.15)
                w, h, stride, buf = c.snapshot()
                ts = sc.decode_timestamp_strip(buf, w, h, stride)
                if ts is None:
                    continue
                got = sc.bgrx_to_rgb(buf, w, h, stride)
                ref = render_reference(scanoutd_bin, start_ms, ts,
                                       os.path.join(artifacts, f"ref-{i}.ppm"))
                score = sc.psnr(got, ref)
                scores.append(score)
                # The measure must tell frames apart: the same picture against the source
                # half a second later scores clearly lower.
                other = render_reference(scanoutd_bin, start_ms, (ts + 500) % (1 << 32),
                                         os.path.join(artifacts, f"other-{i}.ppm"))
                wrong.append(sc.psnr(got, other))
                if score < MIN_PSNR:
                    sc.write_ppm(os.path.join(artifacts, f"client-{i}.ppm"), w, h, got)
            m = srv.metrics()
            assert sc.stream_codec(m) == codec, "the stream is still running"
            assert sc.metric_value(m, "scanoutd_protocol_errors_total") == 0
        assert len(scores) >= 3, f"the timestamp strip was unreadable in most pictures: {scores}"
        print(f"{codec}: PSNR vs. source " + " ".join(f"{x:.1f}" for x in scores)
              + " dB; vs. a frame 0.5 s away " + " ".join(f"{x:.1f}" for x in wrong) + " dB")
        ok = sorted(scores)[len(scores) // 2]
        bad = sorted(wrong)[len(wrong) // 2]
        assert ok >= MIN_PSNR, f"{codec}: PSNR of client pictures vs. their source frames {scores}"
        assert ok >= bad + 2, f"{codec}: right frame {scores} vs. a frame 0.5 s away {wrong}"


@pytest.mark.timeout_s(60)
def test_stream_ends_and_picture_turns_exact(scanoutd_bin, spice_gi, artifacts):
    """With streaming on, the still scene never streams and stays pixel-exact; with motion the
    client gets a stream (checked above). Here: --codec off keeps the motion scene lossless."""
    srv = sc.ScanoutdServer(binary=scanoutd_bin, scene="motion", size="640x480", fps=30,
                            extra_args=["--codec", "off"], log_dir=artifacts, name="codec-off")
    with srv:
        with sc.SpiceClient(uri=srv.uri) as c:
            c.wait_primary(timeout=15)
            c.pump(2.0)
            m = srv.metrics()
            assert sc.stream_codec(m) is None
            assert (sc.metric_value(m, "scanoutd_client_stream_frames_sent_total") or 0) == 0
            start_ms = int(sc.metric_value(m, "scanoutd_source_start_unix_ms"))
            # Lossless drawables: some picture must match its source frame exactly.
            exact = 0
            for i in range(5):
                c.pump(0.1)
                w, h, stride, buf = c.snapshot()
                ts = sc.decode_timestamp_strip(buf, w, h, stride)
                if ts is None:
                    continue
                ref = render_reference(scanoutd_bin, start_ms, ts,
                                       os.path.join(artifacts, f"ref-{i}.ppm"))
                if sc.bgrx_to_rgb(buf, w, h, stride) == ref:
                    exact += 1
            assert exact >= 1, "no client picture matched its source frame exactly"


PAUSE_KEY = 0x19  # 'P': pauses the demo's animation (the timestamp strip keeps ticking)


@pytest.mark.timeout_s(60)
def test_sharp_again_after_motion_stops(scanoutd_bin, spice_gi, artifacts):
    srv = sc.ScanoutdServer(binary=scanoutd_bin, scene="motion", size="640x480", fps=30,
                            extra_args=["--codec", "h264"], log_dir=artifacts, name="sharp")
    with srv:
        with sc.SpiceClient(uri=srv.uri) as c:
            c.wait_primary(timeout=15)
            c.wait_channel_open("inputs", timeout=10)
            c.wait_for(lambda: sc.stream_codec(srv.metrics()) == "h264", timeout=20,
                       what="an h264 stream")
            c.send_key(PAUSE_KEY)
            # Motion stopped: within a few seconds the stream ends (only the clock strip
            # still changes, which does not keep a stream alive) ...
            c.wait_for(lambda: sc.stream_codec(srv.metrics()) is None, timeout=10,
                       what="the stream to end after the pause")
            c.pump(1.0)
            # ... and the client's picture is the source's, exactly, below the clock strip.
            w, h, stride, buf = c.snapshot()
            got = sc.bgrx_to_rgb(buf, w, h, stride)
            sw, sh, src = srv.snapshot_ppm()
            assert (sw, sh) == (w, h)
            row = w * 3
            n, bbox, first = sc.compare_rgb(got[16 * row:], src[16 * row:], w, h - 16)
            if n:
                sc.write_ppm(os.path.join(artifacts, "client.ppm"), w, h, got)
                sc.write_ppm(os.path.join(artifacts, "source.ppm"), w, h, src)
            assert n == 0, f"{n} pixels differ below the strip, bbox {bbox}, first {first}"
            strip = c.input_strip()
            assert strip is not None and strip.scancode == PAUSE_KEY
