//! Drives the server-side link state machine with the input split into fuzzer-chosen chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spice_proto::{Caps, LinkAcceptor, LinkEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let common = if flags & 1 != 0 {
        Caps::from_words(vec![0x0B])
    } else {
        Caps::from_words(vec![0x0A])
    };
    let chunk = usize::from(flags >> 1).max(1);
    let mut acc = LinkAcceptor::new();
    let mut buf = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match acc.feed(&buf) {
                Ok((n, ev)) => {
                    assert!(n <= buf.len());
                    buf.drain(..n);
                    match ev {
                        Some(LinkEvent::Link(_)) => {
                            let _ = acc.reply(&[0; 162], &common, &Caps::new());
                        }
                        Some(LinkEvent::Ticket { .. }) => return,
                        None => break,
                    }
                }
                Err(_) => return,
            }
        }
    }
});
