//! Helpers for checking encoder output: synthetic test pictures, PSNR, and decoding a stream
//! back to BGRx with the same GStreamer decoders spice-gtk uses. Used by this crate's tests
//! and by the server's.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use crate::error::EncodeError;
use crate::spec::Codec;

/// A tight BGRx test picture: smooth gradients with a few hard-edged shapes (a rectangle, a
/// disc and a bar of stripes) that move with `frame`.
pub fn test_picture(width: u32, height: u32, frame: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut out = vec![0_u8; w * h * 4];
    let t = frame as usize;
    let (wf, hf) = (w.max(1) as f32, h.max(1) as f32);
    // shapes
    let rect = (
        (w / 8 + t * 3) % w.max(1),
        h / 5,
        (w / 4).max(2),
        (h / 4).max(2),
    );
    let disc_c = (
        (w as f32 * 0.65 + (t as f32 * 0.11).sin() * w as f32 * 0.1),
        (h as f32 * 0.6 + (t as f32 * 0.07).cos() * h as f32 * 0.1),
    );
    let disc_r = (w.min(h) as f32 * 0.15).max(2.0);
    let bar_y = (h * 4 / 5, h * 4 / 5 + (h / 12).max(2));
    for y in 0..h {
        for x in 0..w {
            let fx = x as f32 / wf;
            let fy = y as f32 / hf;
            let mut b = 40.0 + 170.0 * fx;
            let mut g = 30.0 + 180.0 * fy;
            let mut r = 60.0
                + 120.0 * (1.0 - fx) * fy
                + 60.0 * ((fx + fy + t as f32 * 0.01) * 3.0).sin().abs();
            let in_rect = x >= rect.0 && x < rect.0 + rect.2 && y >= rect.1 && y < rect.1 + rect.3;
            let dx = x as f32 - disc_c.0;
            let dy = y as f32 - disc_c.1;
            if in_rect {
                (b, g, r) = (220.0, 200.0, 30.0);
            } else if dx * dx + dy * dy <= disc_r * disc_r {
                (b, g, r) = (40.0, 60.0, 230.0);
            } else if y >= bar_y.0 && y < bar_y.1 {
                let on = ((x + t) / 4) & 1 == 0;
                let v = if on { 235.0 } else { 20.0 };
                (b, g, r) = (v, v, v);
            }
            let i = (y * w + x) * 4;
            out[i] = b.clamp(0.0, 255.0) as u8;
            out[i + 1] = g.clamp(0.0, 255.0) as u8;
            out[i + 2] = r.clamp(0.0, 255.0) as u8;
            out[i + 3] = 255;
        }
    }
    out
}

/// A tight BGRx picture of coarse random noise (hard to compress) that differs for every
/// `frame`: for rate-control tests.
pub fn noise_picture(width: u32, height: u32, frame: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut out = vec![0_u8; w * h * 4];
    let mut state =
        0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(frame).wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    // 2x2 blocks of noise so chroma subsampling does not simply average it away
    for by in (0..h).step_by(2) {
        for bx in (0..w).step_by(2) {
            let v = next();
            for y in by..(by + 2).min(h) {
                for x in bx..(bx + 2).min(w) {
                    let i = (y * w + x) * 4;
                    out[i] = v as u8;
                    out[i + 1] = (v >> 8) as u8;
                    out[i + 2] = (v >> 16) as u8;
                    out[i + 3] = 255;
                }
            }
        }
    }
    out
}

/// PSNR in dB between two BGRx pictures over the B, G and R bytes (X ignored);
/// `f64::INFINITY` when they are identical.
///
/// # Panics
/// If either buffer is smaller than `stride * (height - 1) + width * 4`, or a stride is less
/// than `width * 4`.
pub fn psnr_bgrx(
    a: &[u8],
    a_stride: usize,
    b: &[u8],
    b_stride: usize,
    width: u32,
    height: u32,
) -> f64 {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 {
        return f64::INFINITY;
    }
    let row = w * 4;
    assert!(
        a_stride >= row && b_stride >= row,
        "stride less than width * 4"
    );
    assert!(
        a.len() >= a_stride * (h - 1) + row && b.len() >= b_stride * (h - 1) + row,
        "picture buffer too small for {w}x{h}"
    );
    let mut sse = 0_u64;
    for y in 0..h {
        let ra = &a[y * a_stride..y * a_stride + row];
        let rb = &b[y * b_stride..y * b_stride + row];
        for (pa, pb) in ra.chunks_exact(4).zip(rb.chunks_exact(4)) {
            for c in 0..3 {
                let d = i64::from(pa[c]) - i64::from(pb[c]);
                sse += (d * d) as u64;
            }
        }
    }
    if sse == 0 {
        return f64::INFINITY;
    }
    let mse = sse as f64 / (w * h * 3) as f64;
    10.0 * (255.0_f64 * 255.0 / mse).log10()
}

/// Decodes a stream of encoded frames (one access unit / frame / JPEG each, as
/// [`crate::EncodedFrame::data`]) back to tight BGRx pictures, with the decoders spice-gtk
/// uses: `h264parse ! avdec_h264`, `h265parse ! avdec_h265`, `vp8dec`, `vp9dec`, `jpegdec`.
/// The YUV → BGRx conversion goes through 16-bit ARGB64: videoconvert's direct 8-bit path
/// (GStreamer 1.22) is biased by about −3 levels for limited-range input, which would hide
/// the encoder's own error.
/// Returns one picture per decoded frame, in order.
pub fn decode_stream<'a, I>(
    codec: Codec,
    frames: I,
    width: u32,
    height: u32,
) -> Result<Vec<Vec<u8>>, EncodeError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    crate::init()?;
    let (caps, chain) = match codec {
        Codec::H264 => (
            "video/x-h264,stream-format=byte-stream,alignment=au",
            "h264parse ! avdec_h264",
        ),
        Codec::H265 => (
            "video/x-h265,stream-format=byte-stream,alignment=au",
            "h265parse ! avdec_h265",
        ),
        Codec::Vp8 => ("video/x-vp8", "vp8dec"),
        Codec::Vp9 => ("video/x-vp9", "vp9dec"),
        Codec::Mjpeg => ("image/jpeg", "jpegdec"),
    };
    let desc = format!(
        "appsrc name=src format=time caps=\"{caps},width={width},height={height},framerate=30/1\" \
         ! {chain} ! videoconvert ! video/x-raw,format=ARGB64 ! videoconvert ! video/x-raw,format=BGRx \
         ! appsink name=sink sync=false"
    );
    let build = |reason: String| EncodeError::Build {
        spec: format!("{codec} decoder"),
        reason,
    };
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| build(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| build("not a pipeline".into()))?;
    let guard = NullOnDrop(pipeline.clone());
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| build("no appsrc".into()))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| build("no appsink".into()))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| build(e.to_string()))?;
    for (i, data) in frames.into_iter().enumerate() {
        let mut buf = gst::Buffer::from_slice(data.to_vec());
        if let Some(b) = buf.get_mut() {
            b.set_pts(gst::ClockTime::from_mseconds(i as u64 * 33));
        }
        src.push_buffer(buf)
            .map_err(|e| build(format!("push: {e:?}")))?;
    }
    src.end_of_stream()
        .map_err(|e| build(format!("eos: {e:?}")))?;

    let bus = pipeline.bus().ok_or_else(|| build("no bus".into()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    loop {
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(err) = msg.view() {
                return Err(EncodeError::Pipeline {
                    element: msg.src().map(|s| s.name().to_string()).unwrap_or_default(),
                    message: err.error().to_string(),
                    debug: err.debug().map(|d| d.to_string()),
                });
            }
        }
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
            Some(sample) => {
                let caps = sample
                    .caps()
                    .ok_or_else(|| build("sample without caps".into()))?;
                let info = gst_video::VideoInfo::from_caps(caps)
                    .map_err(|e| build(format!("decoded caps: {e}")))?;
                let buffer = sample.buffer().ok_or_else(|| build("no buffer".into()))?;
                let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
                    .map_err(|e| build(format!("map decoded frame: {e}")))?;
                let (w, h) = (info.width() as usize, info.height() as usize);
                let stride = frame.plane_stride()[0] as usize;
                let plane = frame
                    .plane_data(0)
                    .map_err(|e| build(format!("plane: {e}")))?;
                let mut pic = Vec::with_capacity(w * h * 4);
                for y in 0..h {
                    pic.extend_from_slice(&plane[y * stride..y * stride + w * 4]);
                }
                out.push(pic);
            }
            None => {
                if sink.is_eos() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(build("decoding did not finish within 20 s".into()));
                }
            }
        }
    }
    drop(guard);
    Ok(out)
}

struct NullOnDrop(gst::Pipeline);

impl Drop for NullOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_basics() {
        let a = test_picture(32, 16, 0);
        assert_eq!(psnr_bgrx(&a, 128, &a, 128, 32, 16), f64::INFINITY);
        let mut b = a.clone();
        for px in b.chunks_exact_mut(4) {
            px[0] = px[0].saturating_add(4);
            px[3] = 0; // X is ignored
        }
        let p = psnr_bgrx(&a, 128, &b, 128, 32, 16);
        assert!(p > 40.0 && p < 50.0, "{p}");
        // strided copy of the same picture
        let mut s = vec![9_u8; 160 * 16];
        for y in 0..16 {
            s[y * 160..y * 160 + 128].copy_from_slice(&a[y * 128..y * 128 + 128]);
        }
        assert_eq!(psnr_bgrx(&a, 128, &s, 160, 32, 16), f64::INFINITY);
    }

    #[test]
    fn pictures_have_the_right_size_and_move() {
        let a = test_picture(320, 240, 0);
        let b = test_picture(320, 240, 5);
        assert_eq!(a.len(), 320 * 240 * 4);
        assert_ne!(a, b);
        let n = noise_picture(33, 17, 1);
        assert_eq!(n.len(), 33 * 17 * 4);
        assert_ne!(n, noise_picture(33, 17, 2));
    }
}
