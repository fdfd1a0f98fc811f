"""Unit tests of the harness itself (decoders, image and metrics helpers). No server needed."""

import spiceclient as sc


def test_timestamp_and_input_strip_roundtrip():
    w, h = 700, 40
    ts = 0xDEADBEEF
    buf = sc.encode_strip_cells(sc.int_bits(ts, 32), w, h, y0=0)
    bits = sc.int_bits(0x14D, 16) + sc.int_bits(1234, 11) + sc.int_bits(77, 11) + [1]
    sc.encode_strip_cells(bits, w, h, y0=16, buf=buf)
    assert sc.decode_timestamp_strip(buf, w, h, w * 4) == ts
    assert sc.decode_input_strip(buf, w, h, w * 4) == sc.InputStrip(0x14D, 1234, 77, True)
    assert sc.decode_timestamp_strip(bytes(w * h * 4), w, h, w * 4) is None


def test_input_strip_button_cell_outside_640():
    bits = sc.int_bits(0x1E, 16) + sc.int_bits(123, 11) + sc.int_bits(77, 11) + [1]
    buf = sc.encode_strip_cells(bits, 640, 16, y0=0)
    assert sc.decode_input_strip(buf, 640, 16, 640 * 4, y0=0) == \
        sc.InputStrip(0x1E, 123, 77, None)


def test_find_strip_in_screenshot():
    w, h, ts = 600, 16, 0x12345678
    rgb = sc.bgrx_to_rgb(bytes(sc.encode_strip_cells(sc.int_bits(ts, 32), w, h)), w, h, w * 4)
    W, H = 900, 100
    big = bytearray(b"\x40\x40\x40" * W * H)
    for y in range(h):
        big[((y + 30) * W + 55) * 3:((y + 30) * W + 55 + w) * 3] = rgb[y * w * 3:(y + 1) * w * 3]
    assert sc.find_strip_in_rgb(bytes(big), W, H, validate=lambda v: v == ts) == [(55, 30, ts)]
    scaled = sc.encode_strip_cells(sc.int_bits(ts, 32), 500, 30, y0=3, cell=12)
    srgb = sc.bgrx_to_rgb(bytes(scaled), 500, 30, 2000)
    assert sc.find_strip_scaled(srgb, 500, 30)[0] == (0, 3, 12.0, ts)


def test_bgrx_to_rgb_with_padding():
    # 2x2, stride 12 (one pad pixel per row)
    fb = bytes([1, 2, 3, 0, 4, 5, 6, 0, 9, 9, 9, 9,
                7, 8, 9, 0, 10, 11, 12, 0, 9, 9, 9, 9])
    assert sc.bgrx_to_rgb(fb, 2, 2, 12) == bytes([3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10])


def test_ppm_parse(tmp_path):
    rgb = bytes(range(2 * 3 * 3))
    p = tmp_path / "x.ppm"
    sc.write_ppm(str(p), 3, 2, rgb)
    assert sc.parse_ppm(p.read_bytes()) == (3, 2, rgb)
    assert sc.parse_ppm(b"P6\n# comment\n1 1\n255\n\x01\x02\x03") == (1, 1, b"\x01\x02\x03")
    assert sc.parse_ppm(b"P6 1 1 65535\n\x01\x00\x02\x00\x03\x00") == (1, 1, b"\x01\x02\x03")


def test_prometheus_parse():
    m = sc.parse_prometheus(
        '# HELP scanoutd_bytes_sent_total bytes\n# TYPE scanoutd_bytes_sent_total counter\n'
        'scanoutd_bytes_sent_total{channel="display"} 12\n'
        'scanoutd_bytes_sent_total{channel="main"} 3\n'
        'scanoutd_connected_clients 2\n'
        'scanoutd_client_coalesced_updates_total{client="1",x="a,b"} 5\n')
    assert sc.metric_value(m, "scanoutd_bytes_sent_total", channel="display") == 12
    assert sc.metric_value(m, "scanoutd_bytes_sent_total") == 15
    assert sc.metric_value(m, "scanoutd_connected_clients") == 2
    assert sc.metric_value(m, "scanoutd_client_coalesced_updates_total", client="1") == 5
    assert sc.metric_value(m, "nope") is None


def test_age_and_percentile():
    assert sc.age_ms(0xFFFFFFF0, 0x10) == 0x20
    assert sc.age_ms(0x10, 0xFFFFFFF0) == -0x20
    assert sc.percentile([3, 1, 2], 50) == 2
    assert sc.percentile([], 50) is None
