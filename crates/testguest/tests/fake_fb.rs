//! Runs the guest program against a file standing in for /dev/fb0 and checks that what it wrote
//! is exactly the guest scene of the frame number its strip carries, in the framebuffer's depth.

use std::path::Path;
use std::process::Command;

use scanoutd_demo::guest::{render_guest_frame, Typed};
use scanoutd_demo::{read_input_strip, read_timestamp_strip};

fn fake_fb(dir: &Path, w: u32, h: u32, bpp: u32) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let stride = (w * bpp / 8 + 64) as usize; // padded rows, like real hardware
    std::fs::write(dir.join("virtual_size"), format!("{w},{h}\n")).unwrap();
    std::fs::write(dir.join("bits_per_pixel"), format!("{bpp}\n")).unwrap();
    std::fs::write(dir.join("stride"), format!("{stride}\n")).unwrap();
    std::fs::write(dir.join("fb"), vec![0u8; stride * h as usize]).unwrap();
    std::fs::write(dir.join("tty"), b"hi").unwrap();
    stride
}

fn run_guest(dir: &Path, frames: u32) {
    let out = Command::new(env!("CARGO_BIN_EXE_scanoutd-testguest"))
        .args(["--fb", dir.join("fb").to_str().unwrap()])
        .args(["--sysfs", dir.to_str().unwrap()])
        .args(["--tty", dir.join("tty").to_str().unwrap()])
        .args(["--fps", "120", "--frames", &frames.to_string()])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("key 0x68") && log.contains("key 0x69"),
        "{log}"
    );
}

/// The file's pixels as BGRx rows of width*4 bytes.
fn to_bgrx(raw: &[u8], w: u32, h: u32, bpp: u32, stride: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h as usize {
        let row = &raw[y * stride..];
        for x in 0..w as usize {
            match bpp {
                32 => out.extend_from_slice(&row[x * 4..x * 4 + 4]),
                24 => {
                    out.extend_from_slice(&row[x * 3..x * 3 + 3]);
                    out.push(0);
                }
                _ => panic!("depth {bpp}"),
            }
        }
    }
    out
}

fn check(bpp: u32) {
    let (w, h) = (800, 600);
    let dir = std::env::temp_dir().join(format!("testguest-fb-{bpp}-{}", std::process::id()));
    let stride = fake_fb(&dir, w, h, bpp);
    run_guest(&dir, 60);
    let raw = std::fs::read(dir.join("fb")).unwrap();
    let px = to_bgrx(&raw, w, h, bpp, stride);
    let n = read_timestamp_strip(&px, w, h, w as usize * 4).expect("frame strip");
    let keys = read_input_strip(&px, w, h, w as usize * 4).expect("input strip");
    assert_eq!(
        (keys.last_key, keys.x),
        (u16::from(b'i'), 2),
        "both typed bytes shown"
    );
    let mut typed = Typed::default();
    typed.push(b'h');
    typed.push(b'i');
    let want = render_guest_frame(w, h, n, &typed).unwrap();
    let want: Vec<u8> = want
        .data
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2], 0])
        .collect();
    assert!(
        px == want,
        "the framebuffer differs from the scene of frame {n}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writes_exactly_the_scene_at_32_bpp() {
    check(32);
}

#[test]
fn writes_exactly_the_scene_at_24_bpp() {
    check(24);
}

#[test]
fn missing_framebuffer_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_scanoutd-testguest"))
        .args(["--sysfs", "/nonexistent/fb0", "--frames", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/nonexistent/fb0/virtual_size"));
}
