//! End-to-end tests with the real GStreamer elements installed on this machine: discovery, the
//! bitstream each software family produces, forced keyframes, decoding back, rate control.

use std::time::Duration;

use scanoutd_encode::bitstream::{self, h264, h265};
use scanoutd_encode::check::{decode_stream, noise_picture, psnr_bgrx, test_picture};
use scanoutd_encode::{
    best_for, builtin_specs, discover, Codec, EncodeError, EncodedFrame, Encoder, EncoderConfig,
    PipelineSpec, ProbeStatus,
};

const W: u32 = 320;
const H: u32 = 240;

fn spec(name: &str) -> PipelineSpec {
    builtin_specs()
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no built-in spec {name}"))
}

fn installed(element: &str) -> bool {
    scanoutd_encode::init().unwrap();
    gstreamer::ElementFactory::find(element).is_some()
}

fn cfg(kbps: u32) -> EncoderConfig {
    EncoderConfig {
        width: W,
        height: H,
        fps: 30,
        bitrate_kbps: kbps,
    }
}

#[test]
fn encoder_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Encoder>();
}

#[test]
fn discovery_reports_missing_and_failing_encoders_and_falls_back() {
    let x264 = spec("x264enc");
    let mut missing = x264.clone();
    missing.name = "imaginary-hw".into();
    missing.element = "nosuchh264enc".into();
    missing.hardware = true;
    missing.rank = 10_000;
    // exists, but cannot produce these caps: the test encode fails
    let mut failing = x264.clone();
    failing.name = "x264-wrong-caps".into();
    failing.output_caps = "video/x-vp8".into();
    failing.rank = 5_000;

    let probes = discover(&[failing.clone(), x264.clone(), missing.clone()]);
    assert_eq!(probes.len(), 3);
    // hardware first, then rank
    assert_eq!(probes[0].spec.name, "imaginary-hw");
    assert_eq!(probes[1].spec.name, "x264-wrong-caps");
    assert_eq!(probes[2].spec.name, "x264enc");

    assert_eq!(
        probes[0].reason(),
        Some("element nosuchh264enc not installed")
    );
    let reason = probes[1].reason().expect("wrong caps must be unavailable");
    assert!(reason.starts_with("test encode failed: "), "{reason}");
    assert!(probes[2].is_available(), "{:?}", probes[2].status);

    assert_eq!(best_for(Codec::H264, &probes).unwrap().name, "x264enc");
    assert!(best_for(Codec::Vp8, &probes).is_none());
}

#[test]
fn builtin_specs_discover_every_installed_software_family() {
    let specs = builtin_specs().unwrap();
    let probes = discover(&specs);
    for p in &probes {
        eprintln!(
            "{:14} {:6} hw={:5} rank={:4} {:?}",
            p.spec.name, p.spec.codec, p.spec.hardware, p.spec.rank, p.status
        );
    }
    // sorted: hardware first, then rank
    for pair in probes.windows(2) {
        let key = |p: &scanoutd_encode::Probe| (!p.spec.hardware, -p.spec.rank);
        assert!(key(&pair[0]) <= key(&pair[1]));
    }
    let mut expected = vec!["x264enc", "vp8enc", "vp9enc", "jpegenc", "x265enc"];
    if installed("openh264enc") {
        expected.push("openh264enc");
    }
    for name in expected {
        let p = probes.iter().find(|p| p.spec.name == name).unwrap();
        assert!(
            matches!(p.status, ProbeStatus::Available { .. }),
            "{name}: {:?}",
            p.status
        );
        assert!(
            p.skipped_properties.is_empty(),
            "{name} skipped {:?}",
            p.skipped_properties
        );
    }
    for p in &probes {
        if !installed(&p.spec.element) {
            assert_eq!(
                p.reason().unwrap(),
                format!("element {} not installed", p.spec.element)
            );
        }
    }
    for codec in [
        Codec::H264,
        Codec::H265,
        Codec::Vp8,
        Codec::Vp9,
        Codec::Mjpeg,
    ] {
        assert!(best_for(codec, &probes).is_some(), "nothing for {codec}");
    }
}

/// Encodes 24 moving test pictures with a forced keyframe at frame 12 and checks the output.
fn roundtrip(name: &str) {
    let spec = spec(name);
    if !installed(&spec.element) {
        skip_missing(&spec.element);
        return;
    }
    let mut enc = Encoder::new(&spec, &cfg(2000)).unwrap();
    assert_eq!(enc.codec(), spec.codec);
    assert_eq!(enc.spec_name(), name);
    assert!(
        enc.skipped_properties().is_empty(),
        "{:?}",
        enc.skipped_properties()
    );

    let forced = [12_usize, 13];
    let mut pictures = Vec::new();
    let mut frames: Vec<EncodedFrame> = Vec::new();
    for i in 0..24_u32 {
        let pic = test_picture(W, H, i);
        let pts = 1_000 + u64::from(i) * 33;
        let f = enc
            .encode(&pic, W as usize * 4, pts, forced.contains(&(i as usize)))
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no output for frame {i}"));
        assert_eq!(f.pts_ms, pts, "{name}: output order");
        assert!(!f.data.is_empty());
        assert!(f.encode_time < Duration::from_secs(2));
        pictures.push(pic);
        frames.push(f);
    }

    // keyframes: the first, the forced ones, and (MJPEG) every frame
    for (i, f) in frames.iter().enumerate() {
        let want = i == 0 || forced.contains(&i) || spec.codec == Codec::Mjpeg;
        assert_eq!(f.keyframe, want, "{name}: frame {i} keyframe");
    }

    match spec.codec {
        Codec::H264 => {
            for (i, f) in frames.iter().enumerate() {
                assert!(
                    bitstream::starts_with_start_code(&f.data),
                    "{name}: frame {i}"
                );
                let types = bitstream::h264_nal_types(&f.data);
                assert_eq!(
                    types[0],
                    h264::AUD,
                    "{name}: frame {i} starts with {types:?}"
                );
                assert_eq!(
                    types.iter().filter(|t| **t == h264::AUD).count(),
                    1,
                    "{name}: one AU per frame, got {types:?}"
                );
                if f.keyframe {
                    for t in [h264::SPS, h264::PPS, h264::IDR] {
                        assert!(types.contains(&t), "{name}: frame {i} lacks {t}: {types:?}");
                    }
                } else {
                    assert!(!types.contains(&h264::IDR), "{name}: frame {i}: {types:?}");
                    assert!(types.contains(&h264::SLICE), "{name}: frame {i}: {types:?}");
                }
            }
        }
        Codec::H265 => {
            for (i, f) in frames.iter().enumerate() {
                assert!(
                    bitstream::starts_with_start_code(&f.data),
                    "{name}: frame {i}"
                );
                let types = bitstream::h265_nal_types(&f.data);
                assert_eq!(
                    types[0],
                    h265::AUD,
                    "{name}: frame {i} starts with {types:?}"
                );
                if f.keyframe {
                    for t in [h265::VPS, h265::SPS, h265::PPS] {
                        assert!(types.contains(&t), "{name}: frame {i} lacks {t}: {types:?}");
                    }
                    assert!(bitstream::h265_is_irap(&f.data));
                }
            }
        }
        Codec::Mjpeg => {
            for f in &frames {
                assert_eq!(&f.data[..2], &[0xff, 0xd8], "{name}: JPEG SOI");
            }
        }
        Codec::Vp8 | Codec::Vp9 => {}
    }

    let decoded = decode_stream(spec.codec, frames.iter().map(|f| f.data.as_slice()), W, H)
        .unwrap_or_else(|e| panic!("{name}: decode: {e}"));
    assert_eq!(decoded.len(), pictures.len(), "{name}: decoded frame count");
    let mut worst = f64::INFINITY;
    for (i, (src, out)) in pictures.iter().zip(&decoded).enumerate() {
        let p = psnr_bgrx(src, W as usize * 4, out, W as usize * 4, W, H);
        assert!(p >= 30.0, "{name}: frame {i} PSNR {p:.1} dB");
        worst = worst.min(p);
    }
    let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
    eprintln!(
        "{name}: {} frames, {} bytes, worst PSNR {worst:.1} dB",
        frames.len(),
        bytes
    );

    // A decoder that joins at the forced keyframe decodes from there on.
    let tail = decode_stream(
        spec.codec,
        frames[forced[0]..].iter().map(|f| f.data.as_slice()),
        W,
        H,
    )
    .unwrap();
    assert_eq!(
        tail.len(),
        frames.len() - forced[0],
        "{name}: joined mid-stream"
    );
    let p = psnr_bgrx(
        &pictures[forced[0]],
        W as usize * 4,
        &tail[0],
        W as usize * 4,
        W,
        H,
    );
    assert!(p >= 30.0, "{name}: joined at keyframe, PSNR {p:.1}");
}

#[test]
fn x264_roundtrip() {
    roundtrip("x264enc");
}

#[test]
fn openh264_roundtrip() {
    roundtrip("openh264enc");
}

#[test]
fn vp8_roundtrip() {
    roundtrip("vp8enc");
}

#[test]
fn vp9_roundtrip() {
    roundtrip("vp9enc");
}

#[test]
fn mjpeg_roundtrip() {
    roundtrip("jpegenc");
}

#[test]
fn x265_roundtrip() {
    roundtrip("x265enc");
}

/// Average size of the last `n` of `count` noise frames encoded from `start`.
fn encode_noise(enc: &mut Encoder, start: u32, count: u32, n: usize) -> usize {
    let mut sizes = Vec::new();
    for i in start..start + count {
        let pic = noise_picture(W, H, i);
        let f = enc
            .encode(&pic, W as usize * 4, u64::from(i) * 33, false)
            .unwrap()
            .unwrap();
        sizes.push(f.data.len());
    }
    let tail = &sizes[sizes.len() - n..];
    tail.iter().sum::<usize>() / n
}

#[test]
fn x264_set_bitrate_lowers_output_size() {
    let mut enc = Encoder::new(&spec("x264enc"), &cfg(4000)).unwrap();
    let high = encode_noise(&mut enc, 0, 20, 10);
    enc.set_bitrate(200).unwrap();
    assert_eq!(enc.bitrate_kbps(), 200);
    let low = encode_noise(&mut enc, 20, 20, 10);
    eprintln!("x264 noise 320x240@30: 4000 kbit/s -> {high} B/frame, 200 kbit/s -> {low} B/frame");
    // 4000 kbit/s at 30 fps is ~16.7 kB per frame, 200 kbit/s ~0.8 kB
    assert!(low * 4 < high, "high {high} low {low}");
    assert!(high > 8_000, "high {high}");
    assert!(low < 3_000, "low {low}");
}

#[test]
fn mjpeg_set_bitrate_maps_to_quality() {
    let spec = spec("jpegenc");
    let mut enc = Encoder::new(&spec, &cfg(20_000)).unwrap();
    let pic = test_picture(W, H, 0);
    let big = enc.encode(&pic, W as usize * 4, 0, false).unwrap().unwrap();
    enc.set_bitrate(300).unwrap();
    let small = enc
        .encode(&pic, W as usize * 4, 33, false)
        .unwrap()
        .unwrap();
    assert!(
        small.data.len() * 2 < big.data.len(),
        "{} vs {}",
        small.data.len(),
        big.data.len()
    );
}

#[test]
fn strided_input_is_read_correctly() {
    let mut enc = Encoder::new(&spec("x264enc"), &cfg(3000)).unwrap();
    let stride = W as usize * 4 + 96;
    let tight = test_picture(W, H, 3);
    let mut padded = vec![0x55_u8; stride * H as usize];
    for y in 0..H as usize {
        padded[y * stride..y * stride + W as usize * 4]
            .copy_from_slice(&tight[y * W as usize * 4..(y + 1) * W as usize * 4]);
    }
    // the last row need not be padded
    padded.truncate(stride * (H as usize - 1) + W as usize * 4);
    let f = enc.encode(&padded, stride, 0, false).unwrap().unwrap();
    let out = decode_stream(Codec::H264, [f.data.as_slice()], W, H).unwrap();
    let p = psnr_bgrx(&tight, W as usize * 4, &out[0], W as usize * 4, W, H);
    assert!(p >= 30.0, "PSNR {p:.1}");
}

#[test]
fn bad_frames_and_backlog_are_errors() {
    let mut enc = Encoder::new(&spec("x264enc"), &cfg(1000)).unwrap();
    let pic = test_picture(W, H, 0);
    assert!(matches!(
        enc.submit(&pic[..pic.len() - 1], W as usize * 4, 0, false),
        Err(EncodeError::InvalidFrame(_))
    ));
    assert!(matches!(
        enc.submit(&pic, W as usize * 4 - 4, 0, false),
        Err(EncodeError::InvalidFrame(_))
    ));
    let mut result = Ok(());
    for i in 0..=scanoutd_encode::MAX_IN_FLIGHT as u64 {
        result = enc.submit(&pic, W as usize * 4, i * 33, false);
        if result.is_err() {
            break;
        }
    }
    assert!(
        matches!(result, Err(EncodeError::Backlog { .. })),
        "{result:?}"
    );
    // draining makes room again
    while enc.pull(Duration::from_millis(500)).unwrap().is_some() {}
    enc.submit(&pic, W as usize * 4, 10_000, false).unwrap();
    assert!(enc.pull(Duration::from_secs(2)).unwrap().is_some());
}

#[test]
fn missing_element_is_an_error_not_a_panic() {
    let mut s = spec("x264enc");
    s.element = "nosuchenc".into();
    match Encoder::new(&s, &cfg(1000)) {
        Err(EncodeError::ElementMissing { element }) => assert_eq!(element, "nosuchenc"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_properties_are_skipped_with_a_reason() {
    let mut s = spec("x264enc");
    s.properties.push(("no-such-property".into(), "1".into()));
    s.properties.push(("bframes".into(), "lots".into()));
    let mut enc = Encoder::new(&s, &cfg(1000)).unwrap();
    let skipped = enc.skipped_properties().to_vec();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].starts_with("no-such-property:"));
    assert!(skipped[1].starts_with("bframes:"));
    // and the encoder still works
    let pic = test_picture(W, H, 0);
    assert!(enc
        .encode(&pic, W as usize * 4, 0, false)
        .unwrap()
        .is_some());
}

#[test]
fn every_software_family_takes_a_bitrate_change_while_running() {
    for name in [
        "x264enc",
        "openh264enc",
        "vp8enc",
        "vp9enc",
        "jpegenc",
        "x265enc",
    ] {
        let spec = spec(name);
        if !installed(&spec.element) {
            skip_missing(&spec.element);
            continue;
        }
        let mut enc = Encoder::new(&spec, &cfg(1500)).unwrap();
        for i in 0..12_u32 {
            if i == 6 {
                enc.set_bitrate(300).unwrap();
            }
            let pic = test_picture(W, H, i);
            let f = enc
                .encode(&pic, W as usize * 4, u64::from(i) * 33, false)
                .unwrap();
            assert!(f.is_some(), "{name}: no output for frame {i}");
        }
        assert_eq!(enc.bitrate_kbps(), 300);
    }
}

#[test]
fn element_errors_on_the_bus_become_encode_errors() {
    // x264enc cannot make High 4:4:4 Intra from I420: caps negotiation fails once data flows.
    let mut s = spec("x264enc");
    s.output_caps =
        "video/x-h264,stream-format=byte-stream,alignment=au,profile=high-4:4:4-intra".into();
    let mut enc = Encoder::new(&s, &cfg(1000)).unwrap();
    let pic = test_picture(W, H, 0);
    let mut err = enc.submit(&pic, W as usize * 4, 0, false).err();
    if err.is_none() {
        err = enc.pull(Duration::from_secs(2)).err();
    }
    let err = err.expect("negotiation failure must be reported");
    assert!(matches!(err, EncodeError::Pipeline { .. }), "{err:?}");
    eprintln!("reported as: {err}");
    // and it sticks
    assert!(enc.submit(&pic, W as usize * 4, 33, false).is_err());
}

/// Report an encoder element that is not installed: the software families
/// `scripts/install-deps` installs are the part `encoders` (required in CI); openh264 is
/// optional (Debian 12 does not package its GStreamer element).
fn skip_missing(element: &str) {
    let part = if element == "openh264enc" {
        "openh264"
    } else {
        "encoders"
    };
    scanoutd_testkit::require::skip(
        part,
        &format!("GStreamer element {element} is not installed"),
    );
}
