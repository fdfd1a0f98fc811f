//! Decodes server messages (as the test client does) and any images they carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spice_proto::{decode_frame, decode_image_bgrx, ChannelType, ServerMsg};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let channel = ChannelType::ALL[usize::from(selector) % ChannelType::ALL.len()];
    while let Ok(Some((ty, start, end))) = decode_frame(rest, 1 << 20) {
        if let Ok(ServerMsg::DrawCopy(dc)) = ServerMsg::decode(channel, ty, &rest[start..end]) {
            let _ = decode_image_bgrx(&dc.image);
        }
        rest = &rest[end..];
    }
});
