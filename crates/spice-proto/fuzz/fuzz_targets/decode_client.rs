//! Frames a byte stream the way the server does and decodes every client message on every
//! channel type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spice_proto::{decode_frame, ChannelType, ClientMsg};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let channel = ChannelType::ALL[usize::from(selector) % ChannelType::ALL.len()];
    while let Ok(Some((ty, start, end))) = decode_frame(rest, 1 << 20) {
        let _ = ClientMsg::decode(channel, ty, &rest[start..end]);
        rest = &rest[end..];
    }
});
