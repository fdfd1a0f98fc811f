//! Codec negotiation with a SPICE client: its caps and preferences against the server's order.

use scanoutd_types::Codec;
use spice_proto::consts::{
    DISPLAY_CAP_CODEC_H264, DISPLAY_CAP_CODEC_H265, DISPLAY_CAP_CODEC_MJPEG, DISPLAY_CAP_CODEC_VP8,
    DISPLAY_CAP_CODEC_VP9, DISPLAY_CAP_MULTI_CODEC,
};
use spice_proto::{Caps, VideoCodec};

/// The SPICE codec number of a codec.
pub fn spice_codec(c: Codec) -> VideoCodec {
    match c {
        Codec::Mjpeg => VideoCodec::Mjpeg,
        Codec::Vp8 => VideoCodec::Vp8,
        Codec::H264 => VideoCodec::H264,
        Codec::Vp9 => VideoCodec::Vp9,
        Codec::H265 => VideoCodec::H265,
    }
}

fn client_decodes(c: Codec, caps: &Caps) -> bool {
    if !caps.has(DISPLAY_CAP_MULTI_CODEC) {
        // Old clients know only MJPEG.
        return c == Codec::Mjpeg;
    }
    let bit = match c {
        Codec::Mjpeg => DISPLAY_CAP_CODEC_MJPEG,
        Codec::Vp8 => DISPLAY_CAP_CODEC_VP8,
        Codec::H264 => DISPLAY_CAP_CODEC_H264,
        Codec::Vp9 => DISPLAY_CAP_CODEC_VP9,
        Codec::H265 => DISPLAY_CAP_CODEC_H265,
    };
    caps.has(bit)
}

/// Codecs to try for a client, best first: the server's order (already restricted by
/// `--codec` and to what can be encoded here), reordered by the client's
/// PREFERRED_VIDEO_CODEC_TYPE list if it sent one, and kept only where the client can decode.
pub fn codec_candidates(
    server_order: &[Codec],
    client_caps: &Caps,
    client_pref: &[u8],
) -> Vec<Codec> {
    let mut out: Vec<Codec> = Vec::new();
    for &p in client_pref {
        if let Some(c) = server_order
            .iter()
            .copied()
            .find(|c| spice_codec(*c) as u8 == p)
        {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    for &c in server_order {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.retain(|c| client_decodes(*c, client_caps));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(bits: &[u32]) -> Caps {
        Caps::from_bits(bits)
    }

    #[test]
    fn codec_negotiation_matrix() {
        let server = [
            Codec::H264,
            Codec::Vp8,
            Codec::Vp9,
            Codec::H265,
            Codec::Mjpeg,
        ];
        // spice-gtk 0.42 with gstreamer1.0-libav: everything.
        let all = caps(&[8, 9, 10, 11, 13, 14]);
        assert_eq!(codec_candidates(&server, &all, &[]), server.to_vec());
        // Without libav: no H.264/H.265.
        let no_libav = caps(&[8, 9, 10, 13]);
        assert_eq!(
            codec_candidates(&server, &no_libav, &[]),
            vec![Codec::Vp8, Codec::Vp9, Codec::Mjpeg]
        );
        // An old client without MULTI_CODEC gets MJPEG only, whatever it claims.
        assert_eq!(
            codec_candidates(&server, &caps(&[9, 11]), &[]),
            vec![Codec::Mjpeg]
        );
        // The client's preference (VP9, then MJPEG) comes first.
        assert_eq!(
            codec_candidates(&server, &all, &[4, 1]),
            vec![
                Codec::Vp9,
                Codec::Mjpeg,
                Codec::H264,
                Codec::Vp8,
                Codec::H265
            ]
        );
        // --codec vp8 on the server: only VP8, and nothing if the client cannot decode it.
        assert_eq!(
            codec_candidates(&[Codec::Vp8], &all, &[3]),
            vec![Codec::Vp8]
        );
        assert!(codec_candidates(&[Codec::Vp8], &caps(&[8, 9, 11]), &[]).is_empty());
        // Nothing encodable on the server.
        assert!(codec_candidates(&[], &all, &[3]).is_empty());
    }
}
