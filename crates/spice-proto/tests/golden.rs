//! Golden byte vectors taken from the protocol reference (§1–§6, §10).

use spice_proto::consts::*;
use spice_proto::*;

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// Splits an encoded message into (type, body), checking the mini header.
fn split(bytes: &[u8]) -> (u16, &[u8]) {
    let (ty, start, end) = decode_frame(bytes, usize::MAX).unwrap().unwrap();
    assert_eq!(start, 6);
    assert_eq!(end, bytes.len());
    (ty, &bytes[start..end])
}

#[test]
fn draw_fill_41_bytes() {
    let msg = ServerMsg::DrawFill(DrawFill::solid(
        0,
        SpiceRect::new(100, 300, 150, 400),
        0x00FF_0000,
    ));
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 302);
    assert_eq!(&bytes[..6], &[0x2E, 0x01, 41, 0, 0, 0]);
    let mut expect = Vec::new();
    expect.extend_from_slice(&le32(0)); // surface
    for v in [100i32, 300, 150, 400] {
        expect.extend_from_slice(&v.to_le_bytes());
    }
    expect.push(0); // clip NONE
    expect.push(1); // brush SOLID
    expect.extend_from_slice(&le32(0x00FF_0000));
    expect.extend_from_slice(&8u16.to_le_bytes()); // OP_PUT
    expect.extend_from_slice(&[0; 13]); // empty mask
    assert_eq!(body, &expect[..]);
    assert_eq!(body.len(), 41);
    assert_eq!(
        ServerMsg::decode(ChannelType::Display, ty, body).unwrap(),
        msg
    );
}

fn test_pixels(w: u32, h: u32) -> Vec<u8> {
    (0..w * h * 4).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn draw_copy_bitmap_offsets() {
    let (w, h) = (640u32, 480u32);
    let pixels = test_pixels(w, h);
    let img = Image::bitmap_bgrx(0, w, h, pixels.clone());
    let msg = ServerMsg::DrawCopy(DrawCopy::put(0, 0, 0, img));
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 304);
    // clip type at 20, src_bitmap pointer at 21 = 57
    assert_eq!(body[20], 0);
    assert_eq!(&body[21..25], &le32(57));
    // src_area 0,0,h,w
    assert_eq!(&body[25..29], &0i32.to_le_bytes());
    assert_eq!(&body[33..37], &(h as i32).to_le_bytes());
    assert_eq!(&body[37..41], &(w as i32).to_le_bytes());
    assert_eq!(&body[41..43], &8u16.to_le_bytes());
    assert_eq!(body[43], 0);
    assert_eq!(&body[44..57], &[0u8; 13]);
    // image descriptor at 57: id u64, type 0 BITMAP, flags, w, h
    assert_eq!(body[57 + 8], IMAGE_TYPE_BITMAP);
    assert_eq!(&body[57 + 10..57 + 14], &le32(w));
    assert_eq!(&body[57 + 14..57 + 18], &le32(h));
    // BitmapData at 75: format 8, flags 4, x, y, stride 2560, palette 0
    let bd = &body[75..93];
    assert_eq!(bd[0], 8);
    assert_eq!(bd[1], 4);
    assert_eq!(&bd[2..6], &le32(w));
    assert_eq!(&bd[6..10], &le32(h));
    assert_eq!(&bd[10..14], &le32(2560));
    assert_eq!(&bd[14..18], &le32(0));
    // pixels at 93
    assert_eq!(&body[93..], &pixels[..]);
    let decoded = ServerMsg::decode(ChannelType::Display, ty, body).unwrap();
    assert_eq!(decoded, msg);
    let ServerMsg::DrawCopy(dc) = decoded else {
        panic!()
    };
    assert_eq!(decode_image_bgrx(&dc.image).unwrap(), pixels);
}

#[test]
fn draw_copy_one_clip_rect_pointer_77() {
    let img = Image::bitmap_bgrx(0, 2, 2, test_pixels(2, 2));
    let mut dc = DrawCopy::put(0, 10, 20, img);
    dc.clip = Clip::Rects(vec![SpiceRect::new(20, 10, 21, 11)]);
    assert_eq!(dc.image_offset(), 77);
    let msg = ServerMsg::DrawCopy(dc);
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(body[20], 1);
    assert_eq!(&body[21..25], &le32(1));
    assert_eq!(&body[41..45], &le32(77));
    assert_eq!(
        ServerMsg::decode(ChannelType::Display, ty, body).unwrap(),
        msg
    );
}

#[test]
fn draw_copy_decoder_follows_pointer() {
    // Place the image 7 bytes further than 57 with junk in between.
    let img = Image::bitmap_bgrx(5, 1, 1, vec![1, 2, 3, 0]);
    let msg = ServerMsg::DrawCopy(DrawCopy::put(0, 0, 0, img));
    let bytes = msg.to_bytes();
    let (_, body) = split(&bytes);
    let mut moved = body[..57].to_vec();
    moved[21..25].copy_from_slice(&le32(64));
    moved.extend_from_slice(&[0xAA; 7]);
    moved.extend_from_slice(&body[57..]);
    assert_eq!(
        ServerMsg::decode(ChannelType::Display, 304, &moved).unwrap(),
        msg
    );
    // A pointer past the end is an error, as is NULL.
    let mut bad = body.to_vec();
    bad[21..25].copy_from_slice(&le32(10_000));
    assert!(ServerMsg::decode(ChannelType::Display, 304, &bad).is_err());
    bad[21..25].copy_from_slice(&le32(0));
    assert!(ServerMsg::decode(ChannelType::Display, 304, &bad).is_err());
    // A body cut inside the image is an error.
    assert!(ServerMsg::decode(ChannelType::Display, 304, &body[..body.len() - 1]).is_err());
}

#[test]
fn lz4_draw_copy_and_payload_layout() {
    let (w, h) = (64u32, 48u32);
    let pixels = test_pixels(w, h);
    let payload = lz4_image_payload(&pixels);
    assert_eq!(&payload[..2], &[1, 8]);
    let block_len = u32::from_be_bytes(payload[2..6].try_into().unwrap()) as usize;
    assert_eq!(block_len, payload.len() - 6);
    assert_eq!(
        lz4_flex::block::decompress(&payload[6..], pixels.len()).unwrap(),
        pixels
    );

    let img = Image::lz4_bgrx(9, w, h, &pixels);
    let msg = ServerMsg::DrawCopy(DrawCopy::put(0, 0, 0, img));
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(body[57 + 8], IMAGE_TYPE_LZ4);
    let data_size = u32::from_le_bytes(body[75..79].try_into().unwrap()) as usize;
    assert_eq!(&body[79..], &payload[..]);
    assert_eq!(data_size, payload.len());
    let ServerMsg::DrawCopy(dc) = ServerMsg::decode(ChannelType::Display, ty, body).unwrap() else {
        panic!()
    };
    assert_eq!(decode_image_bgrx(&dc.image).unwrap(), pixels);
}

#[test]
fn main_init_32_bytes() {
    let init = MainInit {
        session_id: 0x1234_5678,
        display_channels_hint: 1,
        supported_mouse_modes: 3,
        current_mouse_mode: 2,
        agent_connected: 0,
        agent_tokens: 10,
        multi_media_time: 1000,
        ram_hint: 64 << 20,
    };
    let msg = ServerMsg::MainInit(init);
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 103);
    let mut expect = Vec::new();
    for v in [0x1234_5678u32, 1, 3, 2, 0, 10, 1000, 64 << 20] {
        expect.extend_from_slice(&le32(v));
    }
    assert_eq!(body, &expect[..]);
    assert_eq!(ServerMsg::decode(ChannelType::Main, ty, body).unwrap(), msg);
    assert!(ServerMsg::decode(ChannelType::Main, ty, &body[..31]).is_err());
}

#[test]
fn channels_list_and_mouse_mode() {
    let msg = ServerMsg::ChannelsList(vec![(2, 0), (3, 0), (4, 0)]);
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 104);
    assert_eq!(body, &[3, 0, 0, 0, 2, 0, 3, 0, 4, 0]);
    let bytes = ServerMsg::MouseMode {
        supported: 3,
        current: 2,
    }
    .to_bytes();
    assert_eq!(bytes, [105, 0, 4, 0, 0, 0, 3, 0, 2, 0]);
}

#[test]
fn stream_create_51_bytes() {
    let msg = ServerMsg::StreamCreate {
        surface_id: 0,
        id: 3,
        flags: STREAM_FLAG_TOP_DOWN,
        codec_type: VideoCodec::H264 as u8,
        stamp: 0,
        stream_width: 640,
        stream_height: 480,
        src_width: 640,
        src_height: 480,
        dest: SpiceRect::new(0, 0, 480, 640),
        clip: Clip::None,
    };
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 122);
    assert_eq!(body.len(), 51);
    assert_eq!(&body[4..8], &le32(3));
    assert_eq!(body[8], 1);
    assert_eq!(body[9], 3);
    assert_eq!(&body[10..18], &[0; 8]);
    assert_eq!(&body[18..22], &le32(640));
    assert_eq!(&body[34..38], &0i32.to_le_bytes());
    assert_eq!(&body[42..46], &480i32.to_le_bytes());
    assert_eq!(&body[46..50], &640i32.to_le_bytes());
    assert_eq!(body[50], 0);
    assert_eq!(
        ServerMsg::decode(ChannelType::Display, ty, body).unwrap(),
        msg
    );
}

#[test]
fn stream_data_layouts() {
    let frame = vec![0xFF, 0xD8, 0xFF, 0xD9];
    let msg = ServerMsg::StreamData {
        id: 1,
        mm_time: 77,
        data: frame.clone(),
    };
    let bytes = msg.to_bytes();
    let mut direct = Vec::new();
    ServerMsg::encode_stream_data(1, 77, &frame, &mut direct);
    assert_eq!(bytes, direct);
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 123);
    assert_eq!(body.len(), 12 + 4);
    assert_eq!(&body[8..12], &le32(4));

    let sized = ServerMsg::StreamDataSized {
        id: 1,
        mm_time: 5,
        width: 640,
        height: 480,
        dest: SpiceRect::new(0, 0, 480, 640),
        data: frame,
    };
    let bytes = sized.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 316);
    assert_eq!(body.len(), 36 + 4);
    assert_eq!(
        ServerMsg::decode(ChannelType::Display, ty, body).unwrap(),
        sized
    );
}

#[test]
fn surface_monitors_mark() {
    let bytes = ServerMsg::SurfaceCreate {
        surface_id: 0,
        width: 640,
        height: 480,
        format: SURFACE_FMT_32_XRGB,
        flags: SURFACE_FLAG_PRIMARY,
    }
    .to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 314);
    assert_eq!(body.len(), 20);
    assert_eq!(&body[12..16], &le32(32));

    let mc = ServerMsg::MonitorsConfig {
        max_allowed: 1,
        heads: vec![Head {
            monitor_id: 0,
            surface_id: 0,
            width: 640,
            height: 480,
            x: 0,
            y: 0,
            flags: 0,
        }],
    };
    let bytes = mc.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 317);
    assert_eq!(body.len(), 4 + 28);
    assert_eq!(&body[..4], &[1, 0, 1, 0]);
    assert_eq!(&body[12..16], &le32(640)); // width before x/y
    assert_eq!(&body[16..20], &le32(480));
    assert_eq!(
        ServerMsg::decode(ChannelType::Display, ty, body).unwrap(),
        mc
    );

    assert_eq!(ServerMsg::Mark.to_bytes(), [102, 0, 0, 0, 0, 0]);
}

#[test]
fn set_ack_ping_pong() {
    let bytes = ServerMsg::SetAck {
        generation: 1,
        window: 20,
    }
    .to_bytes();
    assert_eq!(bytes, [3, 0, 8, 0, 0, 0, 1, 0, 0, 0, 20, 0, 0, 0]);
    let ping = ServerMsg::Ping {
        id: 7,
        timestamp: 99,
        data: vec![0; 32],
    };
    let bytes = ping.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(body.len(), 44);
    assert_eq!(
        ServerMsg::decode(ChannelType::Main, ty, body).unwrap(),
        ping
    );

    let pong = ClientMsg::Pong {
        id: 7,
        timestamp: 99,
    };
    let bytes = pong.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 3);
    assert_eq!(body.len(), 12);
    assert_eq!(
        ClientMsg::decode(ChannelType::Display, ty, body).unwrap(),
        pong
    );
}

#[test]
fn notify_layout() {
    let msg = ServerMsg::Notify {
        time_stamp: 1,
        severity: 1,
        visibility: 2,
        what: 0,
        message: b"keyboard channel is insecure\0".to_vec(),
    };
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 7);
    assert_eq!(&body[20..24], &le32(29));
    assert_eq!(body.len(), 24 + 29);
    assert_eq!(
        ServerMsg::decode(ChannelType::Cursor, ty, body).unwrap(),
        msg
    );
    // message_len larger than the body
    let mut bad = body.to_vec();
    bad[20..24].copy_from_slice(&le32(u32::MAX));
    assert!(ServerMsg::decode(ChannelType::Cursor, ty, &bad).is_err());
}

#[test]
fn mouse_position_11_bytes() {
    let body = [
        0x10, 0x01, 0, 0, // x = 272
        0x20, 0, 0, 0, // y = 32
        1, 0, // buttons
        0, // display
    ];
    let msg = ClientMsg::decode(ChannelType::Inputs, 112, &body).unwrap();
    assert_eq!(
        msg,
        ClientMsg::MousePosition {
            x: 272,
            y: 32,
            buttons: 1,
            display_id: 0
        }
    );
    let bytes = msg.to_bytes();
    assert_eq!(&bytes[..6], &[112, 0, 11, 0, 0, 0]);
    assert_eq!(&bytes[6..], &body);
    assert!(ClientMsg::decode(ChannelType::Inputs, 112, &body[..10]).is_err());
    // Trailing bytes are tolerated.
    let mut longer = body.to_vec();
    longer.push(0xEE);
    assert_eq!(
        ClientMsg::decode(ChannelType::Inputs, 112, &longer).unwrap(),
        msg
    );
}

#[test]
fn mouse_press_motion_and_keys() {
    let press = ClientMsg::decode(ChannelType::Inputs, 113, &[4, 0, 0]).unwrap();
    assert_eq!(
        press,
        ClientMsg::MousePress {
            button: MOUSE_BUTTON_UP,
            buttons: 0
        }
    );
    let motion = ClientMsg::MouseMotion {
        dx: -3,
        dy: 5,
        buttons: 4,
    };
    let bytes = motion.to_bytes();
    assert_eq!(bytes.len(), 6 + 10);
    // Right-Ctrl down: u32 bytes E0 1D 00 00
    let down = ClientMsg::decode(ChannelType::Inputs, 101, &[0xE0, 0x1D, 0, 0]).unwrap();
    assert_eq!(down, ClientMsg::KeyDown(0x1DE0));
    let sc = ClientMsg::decode(ChannelType::Inputs, 104, &[0x1E, 0x9E]).unwrap();
    assert_eq!(sc, ClientMsg::KeyScancode(vec![0x1E, 0x9E]));
}

#[test]
fn display_init_14_bytes() {
    let msg = ClientMsg::DisplayInit {
        pixmap_cache_id: 1,
        pixmap_cache_size: 20_971_520,
        glz_dictionary_id: 1,
        glz_window_size: 8_388_608,
    };
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 101);
    assert_eq!(body.len(), 14);
    assert_eq!(body[0], 1);
    assert_eq!(&body[1..9], &20_971_520i64.to_le_bytes());
    assert_eq!(body[9], 1);
    assert_eq!(
        ClientMsg::decode(ChannelType::Display, ty, body).unwrap(),
        msg
    );
}

#[test]
fn stream_report_32_bytes() {
    let report = StreamReport {
        stream_id: 0,
        unique_id: 1,
        start_frame_mm_time: 100,
        end_frame_mm_time: 200,
        num_frames: 5,
        num_drops: 0,
        last_frame_delay: -4,
        audio_delay: u32::MAX,
    };
    let bytes = ClientMsg::StreamReport(report).to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 102);
    assert_eq!(body.len(), 32);
    assert_eq!(&body[24..28], &(-4i32).to_le_bytes());
    assert_eq!(
        ClientMsg::decode(ChannelType::Display, ty, body).unwrap(),
        ClientMsg::StreamReport(report)
    );
    let special = StreamReport {
        num_frames: 0,
        num_drops: u32::MAX,
        ..report
    };
    assert!(special.is_unsupported_stream());
}

#[test]
fn cursor_init_alpha_32x32() {
    let shape: Vec<u8> = (0..32 * 32 * 4).map(|i| i as u8).collect();
    let msg = ServerMsg::CursorInit {
        position: (0, 0),
        trail_length: 0,
        trail_frequency: 0,
        visible: true,
        cursor: Cursor::alpha(42, 32, 32, 0, 0, shape.clone()),
    };
    let bytes = msg.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 101);
    assert_eq!(body.len(), 9 + 2 + 17 + 4096);
    assert_eq!(body[8], 1); // visible
    assert_eq!(&body[9..11], &[0, 0]); // flags
    assert_eq!(&body[11..19], &42u64.to_le_bytes());
    assert_eq!(body[19], 0); // ALPHA
    assert_eq!(&body[20..22], &32u16.to_le_bytes());
    assert_eq!(&body[22..24], &32u16.to_le_bytes());
    assert_eq!(&body[28..], &shape[..]);
    assert_eq!(
        ServerMsg::decode(ChannelType::Cursor, ty, body).unwrap(),
        msg
    );

    // flags NONE: no header.
    let none = ServerMsg::CursorSet {
        position: (-1, 2),
        visible: false,
        cursor: Cursor::none(),
    };
    let bytes = none.to_bytes();
    let (ty, body) = split(&bytes);
    assert_eq!(ty, 103);
    assert_eq!(body, &[0xFF, 0xFF, 2, 0, 0, 1, 0]);
    assert_eq!(
        ServerMsg::decode(ChannelType::Cursor, ty, body).unwrap(),
        none
    );
}

/// Encodes `msg`, checks its type and exact body, and that it decodes back on the cursor
/// channel; a body cut inside its fixed part (the first `fixed` bytes; the rest is cursor
/// data, which runs to the end of the message) must not decode.
fn cursor_golden(msg: ServerMsg, ty: u16, body: &[u8], fixed: usize) {
    let bytes = msg.to_bytes();
    let (got_ty, got_body) = split(&bytes);
    assert_eq!(got_ty, ty, "{msg:?}");
    assert_eq!(got_body, body, "{msg:?}");
    assert_eq!(
        ServerMsg::decode(ChannelType::Cursor, ty, body).unwrap(),
        msg
    );
    if fixed > 0 {
        assert!(
            ServerMsg::decode(ChannelType::Cursor, ty, &body[..fixed - 1]).is_err(),
            "{msg:?} decoded from a short body"
        );
    }
}

#[test]
fn cursor_set_alpha_cache_me_2x1() {
    // SpiceMsgCursorSet: position Point16, visible u8, SpiceCursor (flags u16, header, data).
    // Two pixels: opaque (B, G, R, A) = (0x10, 0x20, 0x30, 0xFF), then transparent.
    let bgra = vec![0x10, 0x20, 0x30, 0xFF, 0x00, 0x00, 0x00, 0x00];
    let msg = ServerMsg::CursorSet {
        position: (300, -2),
        visible: true,
        cursor: Cursor::alpha(0x0102_0304_0506_0708, 2, 1, 1, 0, bgra.clone()).cache_me(),
    };
    let mut body = vec![
        0x2C, 0x01, // x = 300
        0xFE, 0xFF, // y = -2
        1,    // visible
        2, 0, // flags CACHE_ME
        8, 7, 6, 5, 4, 3, 2, 1, // unique
        0, // type ALPHA
        2, 0, // width
        1, 0, // height
        1, 0, // hot x
        0, 0, // hot y
    ];
    body.extend_from_slice(&bgra);
    assert_eq!(body.len(), 5 + 2 + 17 + 8);
    cursor_golden(msg, 103, &body, 5 + 2 + 17);
}

#[test]
fn cursor_set_from_cache_has_a_header_and_no_data() {
    let header = CursorHeader {
        unique: 7,
        ty: CURSOR_TYPE_ALPHA,
        width: 64,
        height: 64,
        hot_x: 3,
        hot_y: 4,
    };
    let msg = ServerMsg::CursorSet {
        position: (10, 20),
        visible: true,
        cursor: Cursor::from_cache(header),
    };
    let body = [
        10, 0, 20, 0, 1, // position, visible
        4, 0, // flags FROM_CACHE
        7, 0, 0, 0, 0, 0, 0, 0, // unique
        0, 64, 0, 64, 0, 3, 0, 4, 0, // type, w, h, hot
    ];
    cursor_golden(msg, 103, &body, body.len());
}

#[test]
fn cursor_move_hide_reset_trail_inval() {
    cursor_golden(
        ServerMsg::CursorMove(640, -1),
        104,
        &[0x80, 0x02, 0xFF, 0xFF],
        4,
    );
    cursor_golden(ServerMsg::CursorHide, 105, &[], 0);
    cursor_golden(ServerMsg::CursorReset, 102, &[], 0);
    cursor_golden(
        ServerMsg::CursorTrail {
            length: 3,
            frequency: 0x0102,
        },
        106,
        &[3, 0, 2, 1],
        4,
    );
    cursor_golden(
        ServerMsg::CursorInvalOne(0x1122_3344_5566_7788),
        107,
        &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
        8,
    );
    cursor_golden(ServerMsg::CursorInvalAll, 108, &[], 0);
    // Whole messages: mini header (type u16, size u32) then the body.
    assert_eq!(
        ServerMsg::CursorMove(1, 2).to_bytes(),
        vec![104, 0, 4, 0, 0, 0, 1, 0, 2, 0]
    );
    assert_eq!(ServerMsg::CursorHide.to_bytes(), vec![105, 0, 0, 0, 0, 0]);
}

#[test]
fn unknown_types_are_tolerated() {
    assert_eq!(
        ServerMsg::decode(ChannelType::Display, 322, &[1, 2, 3]).unwrap(),
        ServerMsg::Unknown { ty: 322, len: 3 }
    );
    assert_eq!(
        ClientMsg::decode(ChannelType::Main, 112, &[]).unwrap(),
        ClientMsg::Unknown { ty: 112, len: 0 }
    );
    assert_eq!(
        ClientMsg::decode(ChannelType::Playback, 101, &[9]).unwrap(),
        ClientMsg::Unknown { ty: 101, len: 1 }
    );
    // Base messages decode on every channel.
    assert_eq!(
        ClientMsg::decode(ChannelType::Record, 2, &[]).unwrap(),
        ClientMsg::Ack
    );
}

#[test]
fn frame_decoding() {
    assert_eq!(decode_frame(&[], 100).unwrap(), None);
    assert_eq!(decode_frame(&[104, 0, 0, 0, 0], 100).unwrap(), None);
    assert_eq!(
        decode_frame(&[104, 0, 0, 0, 0, 0], 100).unwrap(),
        Some((104, 6, 6))
    );
    assert_eq!(decode_frame(&[1, 0, 2, 0, 0, 0, 9], 100).unwrap(), None);
    assert_eq!(
        decode_frame(&[1, 0, 2, 0, 0, 0, 9, 9, 7], 100).unwrap(),
        Some((1, 6, 8))
    );
    assert!(matches!(
        decode_frame(&[1, 0, 101, 0, 0, 0], 100),
        Err(Error::TooLarge {
            size: 101,
            max: 100
        })
    ));
    let mut out = Vec::new();
    encode_header(304, 0x0102_0304, &mut out);
    assert_eq!(out, [0x30, 0x01, 4, 3, 2, 1]);
}

// ---- link stage ----

fn client_link(channel: ChannelType, channel_caps: Caps) -> LinkMess {
    LinkMess {
        connection_id: 0,
        channel_type: channel as u8,
        channel_id: 0,
        common_caps: Caps::from_words(vec![0x0D]),
        channel_caps,
    }
}

#[test]
fn link_message_26_and_22_bytes() {
    let display = client_link(ChannelType::Display, Caps::from_words(vec![0x6FBF]));
    let bytes = display.encode_with_header();
    assert_eq!(bytes.len(), 16 + 26);
    assert_eq!(&bytes[..4], b"REDQ");
    assert_eq!(&bytes[4..8], &le32(2));
    assert_eq!(&bytes[8..12], &le32(2));
    assert_eq!(&bytes[12..16], &le32(26));
    let body = &bytes[16..];
    assert_eq!(&body[0..4], &le32(0));
    assert_eq!(body[4], 2);
    assert_eq!(body[5], 0);
    assert_eq!(&body[6..10], &le32(1));
    assert_eq!(&body[10..14], &le32(1));
    assert_eq!(&body[14..18], &le32(18));
    assert_eq!(&body[18..22], &le32(0x0D));
    assert_eq!(&body[22..26], &le32(0x6FBF));
    assert_eq!(LinkMess::decode(body).unwrap(), display);

    let inputs = client_link(ChannelType::Inputs, Caps::new());
    let bytes = inputs.encode_with_header();
    assert_eq!(bytes.len(), 16 + 22);
    assert_eq!(&bytes[12..16], &le32(22));

    let mut acc = LinkAcceptor::new();
    let (n, ev) = acc.feed(&bytes).unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(ev, Some(LinkEvent::Link(inputs)));
}

#[test]
fn link_reply_layout() {
    let mut key = [0u8; 162];
    key.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let mut acc = LinkAcceptor::new();
    let link = client_link(ChannelType::Main, Caps::from_words(vec![0x0F]));
    acc.feed(&link.encode_with_header()).unwrap();
    let common = Caps::from_bits(&[
        COMMON_CAP_PROTOCOL_AUTH_SELECTION,
        COMMON_CAP_AUTH_SPICE,
        COMMON_CAP_MINI_HEADER,
    ]);
    assert_eq!(common.words(), &[0x0B]);
    let channel = Caps::from_words(vec![0x09]);
    let bytes = acc.reply(&key, &common, &channel);
    assert_eq!(bytes.len(), 16 + 178 + 8);
    assert_eq!(&bytes[12..16], &le32(186));
    let body = &bytes[16..];
    assert_eq!(&body[0..4], &le32(0));
    assert_eq!(&body[4..166], &key[..]);
    assert_eq!(&body[166..170], &le32(1));
    assert_eq!(&body[170..174], &le32(1));
    assert_eq!(&body[174..178], &le32(178));
    assert_eq!(&body[178..182], &le32(0x0B));
    assert_eq!(&body[182..186], &le32(0x09));

    let (n, reply) = decode_link_reply(&bytes).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(reply.error, 0);
    assert_eq!(reply.pub_key, key);
    assert_eq!(reply.common_caps, common);
    assert_eq!(reply.channel_caps, channel);
    assert_eq!(decode_link_reply(&bytes[..100]).unwrap(), None);
}

#[test]
fn error_reply_and_result() {
    let bytes = LinkAcceptor::error_reply(LinkError::ChannelNotAvailable);
    assert_eq!(bytes.len(), 16 + 178);
    assert_eq!(&bytes[12..16], &le32(178));
    assert_eq!(&bytes[16..20], &le32(9));
    assert!(bytes[20..].iter().all(|&b| b == 0));
    let (_, reply) = decode_link_reply(&bytes).unwrap().unwrap();
    assert_eq!(reply.link_error(), Some(LinkError::ChannelNotAvailable));
    assert_eq!(reply.common_caps.words(), &[] as &[u32]);
    assert_eq!(link_result(LinkError::Ok), [0, 0, 0, 0]);
    assert_eq!(link_result(LinkError::PermissionDenied), [7, 0, 0, 0]);
    assert_eq!(decode_link_result(&[7, 0, 0, 0, 99]), Some(7));
    assert_eq!(decode_link_result(&[7, 0]), None);
}

#[test]
fn acceptor_full_flow_byte_by_byte() {
    let link = client_link(ChannelType::Display, Caps::from_words(vec![0x6FBF]));
    let ticket = [0x5Au8; 128];
    let server_common = Caps::from_words(vec![0x0B]);
    let mut stream = link.encode_with_header();
    let link_len = stream.len();
    stream.extend_from_slice(&auth_bytes(&server_common, &ticket));
    assert_eq!(stream.len(), link_len + 132);
    stream.extend_from_slice(&[104, 0, 0, 0, 0, 0]); // a data message after the ticket

    let mut acc = LinkAcceptor::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    for &b in &stream {
        buf.push(b);
        loop {
            let (n, ev) = acc.feed(&buf).unwrap();
            buf.drain(..n);
            match ev {
                Some(LinkEvent::Link(m)) => {
                    events.push(LinkEvent::Link(m));
                    let _ = acc.reply(&[0; 162], &server_common, &Caps::new());
                }
                Some(e) => events.push(e),
                None => break,
            }
        }
    }
    assert_eq!(
        events,
        vec![
            LinkEvent::Link(link),
            LinkEvent::Ticket {
                mechanism: Some(1),
                ticket
            }
        ]
    );
    assert!(acc.is_done());
    assert_eq!(buf, [104, 0, 0, 0, 0, 0]);
}

#[test]
fn acceptor_without_auth_selection_reads_bare_ticket() {
    let link = client_link(ChannelType::Main, Caps::new());
    let server_common = Caps::from_words(vec![0x0A]); // AUTH_SPICE | MINI_HEADER
    let ticket = [7u8; 128];
    let auth = auth_bytes(&server_common, &ticket);
    assert_eq!(auth.len(), 128);
    let mut acc = LinkAcceptor::new();
    acc.feed(&link.encode_with_header()).unwrap();
    acc.reply(&[0; 162], &server_common, &Caps::new());
    assert_eq!(acc.feed(&auth[..127]).unwrap(), (0, None));
    assert_eq!(
        acc.feed(&auth).unwrap(),
        (
            128,
            Some(LinkEvent::Ticket {
                mechanism: None,
                ticket
            })
        )
    );
}

#[test]
fn acceptor_rejects_sasl_mechanism_on_the_word_alone() {
    let link = client_link(ChannelType::Main, Caps::new());
    let mut acc = LinkAcceptor::new();
    acc.feed(&link.encode_with_header()).unwrap();
    acc.reply(&[0; 162], &Caps::from_words(vec![0x0B]), &Caps::new());
    assert_eq!(acc.feed(&[2, 0, 0]).unwrap(), (0, None));
    let err = acc.feed(&[2, 0, 0, 0]).unwrap_err();
    assert_eq!(err.code, LinkError::InvalidData);
    // Stays failed.
    assert!(acc.feed(&[]).is_err());
}

fn header(magic: &[u8; 4], major: u32, size: u32) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend_from_slice(&le32(major));
    v.extend_from_slice(&le32(2));
    v.extend_from_slice(&le32(size));
    v
}

#[test]
fn acceptor_validation() {
    let fail = |bytes: &[u8]| LinkAcceptor::new().feed(bytes).unwrap_err();
    assert_eq!(fail(b"RX").code, LinkError::InvalidMagic);
    assert_eq!(fail(b"GET / HTTP/1.1").code, LinkError::InvalidMagic);
    assert_eq!(
        fail(&header(b"REDQ", 1, 26)).code,
        LinkError::VersionMismatch
    );
    assert_eq!(fail(&header(b"REDQ", 2, 17)).code, LinkError::InvalidData);
    assert_eq!(fail(&header(b"REDQ", 2, 4097)).code, LinkError::InvalidData);
    assert_eq!(
        LinkAcceptor::new().feed(&header(b"REDQ", 2, 4096)).unwrap(),
        (0, None)
    );
    assert_eq!(LinkAcceptor::new().feed(b"REDQ").unwrap(), (0, None));

    // Caps counts larger than the size.
    let link = client_link(ChannelType::Display, Caps::from_words(vec![1]));
    let mut bytes = link.encode_with_header();
    bytes[16 + 6..16 + 10].copy_from_slice(&le32(1000));
    assert_eq!(fail(&bytes).code, LinkError::InvalidData);
    // caps_offset inside the fixed part.
    let mut bytes = link.encode_with_header();
    bytes[16 + 14..16 + 18].copy_from_slice(&le32(10));
    assert_eq!(fail(&bytes).code, LinkError::InvalidData);
    // caps_offset pushing caps past the end.
    let mut bytes = link.encode_with_header();
    bytes[16 + 14..16 + 18].copy_from_slice(&le32(22));
    assert_eq!(fail(&bytes).code, LinkError::InvalidData);
    // A larger caps_offset within size is fine (with padding).
    let mut bytes = link.encode_with_header();
    bytes[12..16].copy_from_slice(&le32(30));
    bytes[16 + 14..16 + 18].copy_from_slice(&le32(22));
    bytes.splice(16 + 18..16 + 18, [0xEE; 4]);
    let (n, ev) = LinkAcceptor::new().feed(&bytes).unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(ev, Some(LinkEvent::Link(link)));
}

// ---- images ----

#[test]
fn bottom_up_bitmap_with_stride_padding() {
    let (w, h) = (3u32, 2u32);
    let top = [1u8, 1, 1, 0, 2, 2, 2, 0, 3, 3, 3, 0];
    let bottom = [4u8, 4, 4, 0, 5, 5, 5, 0, 6, 6, 6, 0];
    let mut stored = Vec::new();
    stored.extend_from_slice(&bottom);
    stored.extend_from_slice(&[9; 4]);
    stored.extend_from_slice(&top);
    stored.extend_from_slice(&[9; 4]);
    let img = Image {
        id: 0,
        flags: 0,
        width: w,
        height: h,
        data: ImageData::Bitmap {
            format: BITMAP_FMT_32BIT,
            flags: 0,
            stride: 16,
            pixels: stored,
        },
    };
    let mut expect = top.to_vec();
    expect.extend_from_slice(&bottom);
    assert_eq!(decode_image_bgrx(&img).unwrap(), expect);
}

#[test]
fn lz4_multi_block_independent_and_dependent() {
    let (w, h) = (32u32, 16u32);
    let pixels = test_pixels(w, h);
    let half = pixels.len() / 2;
    let (a, b) = pixels.split_at(half);

    // Independent blocks.
    let mut payload = lz4_blocks(a);
    payload.extend_from_slice(&lz4_blocks(b));
    let img = Image {
        id: 0,
        flags: 0,
        width: w,
        height: h,
        data: ImageData::Lz4 {
            top_down: true,
            format: 8,
            payload,
        },
    };
    assert_eq!(decode_image_bgrx(&img).unwrap(), pixels);

    // Second block references the first (LZ4_decompress_safe_continue style).
    let mut payload = lz4_blocks(a);
    let dep = lz4_flex::block::compress_with_dict(b, a);
    payload.extend_from_slice(&(dep.len() as u32).to_be_bytes());
    payload.extend_from_slice(&dep);
    let img = Image {
        data: ImageData::Lz4 {
            top_down: true,
            format: 8,
            payload,
        },
        ..img
    };
    assert_eq!(decode_image_bgrx(&img).unwrap(), pixels);
}

#[test]
fn lz4_short_long_and_bottom_up() {
    let (w, h) = (8u32, 4u32);
    let pixels = test_pixels(w, h);
    let short = Image::lz4_bgrx(0, w, h, &pixels[..pixels.len() - 4]);
    assert!(decode_image_bgrx(&short).is_err());
    let mut long_pixels = pixels.clone();
    long_pixels.extend_from_slice(&[1, 2, 3, 4]);
    let long = Image::lz4_bgrx(0, w, h, &long_pixels);
    assert!(decode_image_bgrx(&long).is_err());
    // A huge declared size with a tiny payload is refused before allocating.
    let huge = Image::lz4_bgrx(0, 16384, 16384, &pixels);
    assert!(decode_image_bgrx(&huge).is_err());

    let mut rows: Vec<&[u8]> = pixels.chunks(w as usize * 4).collect();
    rows.reverse();
    let flipped: Vec<u8> = rows.concat();
    let mut img = Image::lz4_bgrx(0, w, h, &flipped);
    if let ImageData::Lz4 { top_down, .. } = &mut img.data {
        *top_down = false;
    }
    assert_eq!(decode_image_bgrx(&img).unwrap(), pixels);
}

// ---- input ----

fn scan(bytes: &[u8]) -> Vec<(u16, bool)> {
    ScancodeDecoder::new().feed_all(bytes)
}

#[test]
fn scancode_examples() {
    assert_eq!(scancode_bytes(0x1E).collect::<Vec<_>>(), [0x1E]);
    assert_eq!(scancode_bytes(0x9E).collect::<Vec<_>>(), [0x9E]);
    assert_eq!(scancode_bytes(0x1DE0).collect::<Vec<_>>(), [0xE0, 0x1D]);
    assert_eq!(scancode_bytes(0x1DE1).collect::<Vec<_>>(), [0xE1, 0x1D]);
    assert_eq!(scancode_bytes(0).count(), 0);
    assert_eq!(scancode_bytes(0x0100_001E).collect::<Vec<_>>(), [0x1E]);

    assert_eq!(scan(&[0x1E, 0x9E]), [(0x1E, true), (0x1E, false)]);
    assert_eq!(scan(&[0x1D, 0x9D]), [(0x1D, true), (0x1D, false)]); // left Ctrl
    assert_eq!(
        scan(&[0xE0, 0x1D, 0xE0, 0x9D]),
        [(0x11D, true), (0x11D, false)]
    ); // right Ctrl
    assert_eq!(
        scan(&[0xE0, 0x4D, 0xE0, 0xCD]),
        [(0x14D, true), (0x14D, false)]
    ); // Right
    assert_eq!(
        scan(&[0xE0, 0x53, 0xE0, 0xD3]),
        [(0x153, true), (0x153, false)]
    ); // Delete
    assert_eq!(
        scan(&[0xE0, 0x1C, 0xE0, 0x9C]),
        [(0x11C, true), (0x11C, false)]
    ); // KP Enter
}

#[test]
fn pause_across_messages() {
    // Client: KEY_DOWN E1 1D, KEY_DOWN 45, KEY_UP E1 9D, KEY_UP C5.
    let mut d = ScancodeDecoder::new();
    let mut events = Vec::new();
    for code in [0x1DE1u32, 0x45, 0x9DE1, 0xC5] {
        for b in scancode_bytes(code) {
            events.extend(d.feed(b));
        }
    }
    assert_eq!(events, [(SCANCODE_PAUSE, true), (SCANCODE_PAUSE, false)]);
    assert!(!d.is_pending());
    assert_eq!(
        scan(&[0xE1, 0x1D, 0x45, 0xE1, 0x9D, 0xC5]),
        [(0x21D, true), (0x21D, false)]
    );
}

#[test]
fn scancode_garbage_resyncs() {
    // Broken E1 sequence followed by 'a': the 'a' is not lost.
    assert_eq!(scan(&[0xE1, 0x1E]), [(0x1E, true)]);
    assert_eq!(scan(&[0xE1, 0x1D, 0x1E]), [(0x1E, true)]);
    assert_eq!(scan(&[0xE0, 0xE0, 0x1D]), [(0x11D, true)]);
    assert_eq!(scan(&[0xE0, 0x00, 0x1E]), [(0x1E, true)]);
    assert_eq!(scan(&[0x00, 0x80]), []);
}

#[test]
fn motion_ack_every_fourth() {
    let mut m = MotionAck::new();
    let acks: Vec<bool> = (0..12).map(|_| m.on_motion()).collect();
    assert_eq!(
        acks,
        [false, false, false, true, false, false, false, true, false, false, false, true]
    );
}

#[test]
fn ack_window_and_counter() {
    let mut w = AckWindow::new(20);
    let set_ack = w.start();
    assert_eq!(
        set_ack,
        ServerMsg::SetAck {
            generation: 1,
            window: 20
        }
    );
    let mut c = AckCounter::new();
    let mut replies = Vec::new();
    if let Some(r) = c.on_message(&set_ack) {
        replies.push((1, r));
    }
    for i in 2..=61 {
        w.on_sent();
        if let Some(r) = c.on_message(&ServerMsg::Mark) {
            replies.push((i, r));
        }
    }
    assert_eq!(
        replies,
        vec![
            (1, ClientMsg::AckSync { generation: 1 }),
            (21, ClientMsg::Ack),
            (41, ClientMsg::Ack),
            (61, ClientMsg::Ack),
        ]
    );
    assert!(w.is_congested());
    for (_, r) in &replies {
        w.on_client_msg(r);
    }
    assert_eq!(w.in_flight(), 0);
    assert!(!w.is_congested());
}

#[test]
fn caps_helper() {
    let mut c = Caps::new();
    assert!(!c.has(5));
    c.set(5);
    c.set(40);
    assert_eq!(c.words(), &[1 << 5, 1 << 8]);
    assert!(c.has(40) && c.has(5) && !c.has(41) && !c.has(u32::MAX));
    c.set(u32::MAX); // ignored
    assert_eq!(c.len(), 2);
    assert!(Caps::from_words(vec![0x6FBF]).has(DISPLAY_CAP_GL_SCANOUT));
    assert_eq!(VideoCodec::H264.display_cap(), DISPLAY_CAP_CODEC_H264);
    assert_eq!(ChannelType::from_u8(4), Some(ChannelType::Cursor));
    assert_eq!(ChannelType::from_u8(0), None);
    assert_eq!(LinkError::from_u32(9), Some(LinkError::ChannelNotAvailable));
    assert_eq!(LinkError::from_u32(10), None);
}
