//! The machine-readable strips in the top two cell rows of the demo picture.
//!
//! Row 0 (y 0..16), the timestamp strip: [`STRIP_CELLS`] cells of [`STRIP_CELL`] x
//! [`STRIP_CELL`] pixels from x = 0; cell 0 white, cell 1 black, cells 2..33 the bits 31..0
//! (most significant first) of the capture time in Unix milliseconds mod 2^32.
//!
//! Row 1 (y 16..32), the input strip: cell 0 white, cell 1 black, cells 2..17 the last key
//! scancode pressed (16 bits), cells 18..28 the pointer x (11 bits, clamped to 2047), cells
//! 29..39 the pointer y (11 bits), cell 40 whether any mouse button is down. All bits are most
//! significant first; white (0xFFFFFF) is 1 and black (0x000000) is 0.

use scanoutd_types::{Frame, Rect, BYTES_PER_PIXEL};

use crate::canvas::Canvas;

/// Side of one strip cell in pixels.
pub const STRIP_CELL: u32 = 16;
/// Cells in the timestamp strip: two sync cells and 32 bits.
pub const STRIP_CELLS: u32 = 34;
/// Cells in the input strip: two sync cells, 16 + 11 + 11 + 1 bits.
pub const INPUT_STRIP_CELLS: u32 = 41;
/// Top of the input strip.
pub const INPUT_STRIP_Y: u32 = STRIP_CELL;
/// Rows 0..`STRIPS_HEIGHT` hold the two strips; nothing else is drawn over them.
pub const STRIPS_HEIGHT: u32 = 2 * STRIP_CELL;

/// The largest pointer coordinate the input strip can carry (11 bits).
pub const INPUT_STRIP_MAX_COORD: u16 = 2047;

const WHITE: u32 = 0xFF_FFFF;
const BLACK: u32 = 0x00_0000;

/// What the input strip says: the demo's view of the input it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InputStrip {
    /// The last key scancode pressed (set 1, extended keys as `0x100 | code`); 0 if none.
    pub last_key: u16,
    /// Pointer position, clamped to [`INPUT_STRIP_MAX_COORD`].
    pub x: u16,
    pub y: u16,
    /// Whether any mouse button is currently pressed.
    pub button_down: bool,
}

fn push_bits(out: &mut Vec<bool>, value: u32, bits: u32) {
    out.extend((0..bits).rev().map(|b| value >> b & 1 == 1));
}

pub(crate) fn timestamp_cells(unix_ms: u64) -> Vec<bool> {
    let mut cells = Vec::with_capacity(STRIP_CELLS as usize);
    cells.extend([true, false]);
    push_bits(&mut cells, unix_ms as u32, 32);
    cells
}

pub(crate) fn input_cells(s: &InputStrip) -> Vec<bool> {
    let mut cells = Vec::with_capacity(INPUT_STRIP_CELLS as usize);
    cells.extend([true, false]);
    push_bits(&mut cells, s.last_key.into(), 16);
    push_bits(&mut cells, s.x.min(INPUT_STRIP_MAX_COORD).into(), 11);
    push_bits(&mut cells, s.y.min(INPUT_STRIP_MAX_COORD).into(), 11);
    cells.push(s.button_down);
    cells
}

/// Paint one row of cells with its top at `y`; cells past the canvas's edge are clipped.
pub(crate) fn draw_cells(c: &mut Canvas<'_>, y: u32, cells: &[bool]) {
    draw_cells_at(c, 0, y, cells);
}

/// Paint one row of cells with its top-left corner at (`x`, `y`).
pub(crate) fn draw_cells_at(c: &mut Canvas<'_>, x: u32, y: u32, cells: &[bool]) {
    let cell = i64::from(STRIP_CELL);
    for (i, on) in cells.iter().enumerate() {
        c.fill(
            i64::from(x) + i as i64 * cell,
            y.into(),
            cell,
            cell,
            if *on { WHITE } else { BLACK },
        );
    }
}

/// The rectangle the timestamp strip covers on a `width` x `height` surface.
pub(crate) fn timestamp_rect(width: u32, height: u32) -> Rect {
    Rect::new(0, 0, STRIP_CELLS * STRIP_CELL, STRIP_CELL)
        .clamp_to(width, height)
        .unwrap_or_default()
}

/// The rectangle the input strip covers on a `width` x `height` surface.
pub(crate) fn input_rect(width: u32, height: u32) -> Rect {
    Rect::new(0, INPUT_STRIP_Y, INPUT_STRIP_CELLS * STRIP_CELL, STRIP_CELL)
        .clamp_to(width, height)
        .unwrap_or_default()
}

/// Draw the timestamp strip for `unix_ms` into the top cell row of `frame` (clipped to it).
pub fn draw_timestamp_strip(frame: &mut Frame, unix_ms: u64) {
    let (w, h, stride) = (frame.width, frame.height, frame.stride);
    let mut c = Canvas::new(&mut frame.data, stride, w, h, Rect::new(0, 0, w, h));
    draw_cells(&mut c, 0, &timestamp_cells(unix_ms));
}

/// Whether the cell with its top-left corner at (x, y) reads as white: the mean BT.601 luma of
/// its central 8x8 pixels is at least 128. The caller has checked the cell is in the buffer.
fn cell_is_white(bgrx: &[u8], stride: usize, x: u32, y: u32) -> bool {
    let inset = (STRIP_CELL - 8) / 2;
    let mut sum = 0u32;
    for yy in y + inset..y + inset + 8 {
        let start = yy as usize * stride + (x + inset) as usize * BYTES_PER_PIXEL;
        for p in bgrx[start..start + 8 * BYTES_PER_PIXEL].chunks_exact(BYTES_PER_PIXEL) {
            let (b, g, r) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]));
            sum += (77 * r + 150 * g + 29 * b) >> 8;
        }
    }
    sum / 64 >= 128
}

/// Read `count` cells of the strip row whose top is `y`; `None` if the buffer is too small for
/// them or the sync cells (white, black) are not there.
fn read_cells(
    bgrx: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    y: u32,
    count: u32,
) -> Option<Vec<bool>> {
    let row_px = count.checked_mul(STRIP_CELL)?;
    if width < row_px || height < y + STRIP_CELL || stride < row_px as usize * BYTES_PER_PIXEL {
        return None;
    }
    let last_row = (y + STRIP_CELL - 1) as usize;
    let needed = last_row
        .checked_mul(stride)?
        .checked_add(row_px as usize * BYTES_PER_PIXEL)?;
    if bgrx.len() < needed {
        return None;
    }
    let cells: Vec<bool> = (0..count)
        .map(|i| cell_is_white(bgrx, stride, i * STRIP_CELL, y))
        .collect();
    (cells[0] && !cells[1]).then_some(cells)
}

fn bits_to_u32(bits: &[bool]) -> u32 {
    bits.iter().fold(0, |acc, b| acc << 1 | u32::from(*b))
}

/// Decode the timestamp strip (the capture time in Unix milliseconds mod 2^32) from a BGRx
/// buffer with rows of `stride` bytes. Tolerates lossy compression: each cell is thresholded on
/// the mean luma of its central 8x8 pixels. `None` when the buffer is too small or the sync
/// cells (cell 0 white, cell 1 black) are missing.
pub fn read_timestamp_strip(bgrx: &[u8], width: u32, height: u32, stride: usize) -> Option<u32> {
    let cells = read_cells(bgrx, width, height, stride, 0, STRIP_CELLS)?;
    Some(bits_to_u32(&cells[2..]))
}

/// Decode the input strip, like [`read_timestamp_strip`]. Needs a surface at least 640 pixels
/// wide (cells 0..=39); on one narrower than 656 pixels the button cell (40) is off the edge
/// and `button_down` reads as `false`.
pub fn read_input_strip(bgrx: &[u8], width: u32, height: u32, stride: usize) -> Option<InputStrip> {
    let cells = read_cells(
        bgrx,
        width,
        height,
        stride,
        INPUT_STRIP_Y,
        INPUT_STRIP_CELLS - 1,
    )?;
    let button_down = read_cells(
        bgrx,
        width,
        height,
        stride,
        INPUT_STRIP_Y,
        INPUT_STRIP_CELLS,
    )
    .is_some_and(|all| all[INPUT_STRIP_CELLS as usize - 1]);
    Some(InputStrip {
        last_key: bits_to_u32(&cells[2..18]) as u16,
        x: bits_to_u32(&cells[18..29]) as u16,
        y: bits_to_u32(&cells[29..40]) as u16,
        button_down,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strided_copy(f: &Frame, pad: usize, fill: u8) -> (Vec<u8>, usize) {
        let stride = f.width as usize * 4 + pad;
        let mut out = vec![fill; stride * f.height as usize];
        for y in 0..f.height as usize {
            let src = &f.data[y * f.stride..y * f.stride + f.width as usize * 4];
            out[y * stride..y * stride + src.len()].copy_from_slice(src);
        }
        (out, stride)
    }

    /// Deterministic +-40 noise on every byte (a simple LCG).
    fn add_noise(buf: &mut [u8], seed: u32) {
        let mut s = seed;
        for b in buf.iter_mut() {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = (s >> 24) as i32 % 81 - 40;
            *b = (i32::from(*b) + n).clamp(0, 255) as u8;
        }
    }

    const VALUES: [u64; 8] = [
        0,
        1,
        0x8000_0000,
        u32::MAX as u64,
        u32::MAX as u64 - 1,
        1_700_000_123_456,
        u64::MAX,
        0xAAAA_5555,
    ];

    #[test]
    fn timestamp_round_trip_exact_black_and_white() {
        for v in VALUES {
            let mut f = Frame::new(640, 480);
            // Non-black background so a missed cell would show.
            f.data.iter_mut().for_each(|b| *b = 0x80);
            draw_timestamp_strip(&mut f, v);
            assert_eq!(
                read_timestamp_strip(&f.data, 640, 480, f.stride),
                Some(v as u32),
                "{v:#x}"
            );
            for y in 0..STRIP_CELL {
                for x in 0..STRIP_CELLS * STRIP_CELL {
                    let p = f.pixel(x, y);
                    assert!(p == 0 || p == 0xFF_FFFF, "({x},{y}) = {p:#08x}");
                }
            }
            // Right of the strip and below it: untouched.
            assert_eq!(f.pixel(STRIP_CELLS * STRIP_CELL, 0), 0x80_8080);
            assert_eq!(f.pixel(0, STRIP_CELL), 0x80_8080);
        }
    }

    #[test]
    fn timestamp_reads_strided_and_noisy() {
        for (i, v) in VALUES.iter().enumerate() {
            let mut f = Frame::new(700, 40);
            draw_timestamp_strip(&mut f, *v);
            let (mut buf, stride) = strided_copy(&f, 52, 0x55);
            assert_eq!(read_timestamp_strip(&buf, 700, 40, stride), Some(*v as u32));
            add_noise(&mut buf, i as u32 + 7);
            assert_eq!(
                read_timestamp_strip(&buf, 700, 40, stride),
                Some(*v as u32),
                "noisy {v:#x}"
            );
        }
    }

    #[test]
    fn timestamp_rejects_missing_sync_and_small_buffers() {
        let f = Frame::new(640, 480);
        assert_eq!(
            read_timestamp_strip(&f.data, 640, 480, f.stride),
            None,
            "all black"
        );
        let mut f = Frame::new(640, 480);
        draw_timestamp_strip(&mut f, 42);
        assert_eq!(
            read_timestamp_strip(&f.data, 500, 480, f.stride),
            None,
            "too narrow"
        );
        assert_eq!(
            read_timestamp_strip(&f.data, 640, 15, f.stride),
            None,
            "too short"
        );
        assert_eq!(
            read_timestamp_strip(&f.data[..f.stride * 15], 640, 480, f.stride),
            None
        );
        assert_eq!(
            read_timestamp_strip(&f.data, 640, 480, 100),
            None,
            "stride < width"
        );
        assert_eq!(read_timestamp_strip(&f.data, 640, 480, f.stride), Some(42));
    }

    #[test]
    fn input_strip_round_trip() {
        let cases = [
            InputStrip::default(),
            InputStrip {
                last_key: 0x1C,
                x: 640,
                y: 360,
                button_down: true,
            },
            InputStrip {
                last_key: 0x21D,
                x: 2047,
                y: 2047,
                button_down: false,
            },
            InputStrip {
                last_key: u16::MAX,
                x: 1,
                y: 0,
                button_down: true,
            },
        ];
        for (i, s) in cases.iter().enumerate() {
            let mut f = Frame::new(1280, 720);
            let mut c = Canvas::new(&mut f.data, 1280 * 4, 1280, 720, Rect::new(0, 0, 1280, 720));
            draw_cells(&mut c, INPUT_STRIP_Y, &input_cells(s));
            assert_eq!(read_input_strip(&f.data, 1280, 720, f.stride), Some(*s));
            let (mut buf, stride) = strided_copy(&f, 12, 0);
            add_noise(&mut buf, i as u32);
            assert_eq!(read_input_strip(&buf, 1280, 720, stride), Some(*s));
            // On a 640-wide surface the button cell is cut off.
            assert_eq!(
                read_input_strip(&f.data, 640, 720, f.stride),
                Some(InputStrip {
                    button_down: false,
                    ..*s
                })
            );
        }
        let f = Frame::new(1280, 720);
        assert_eq!(read_input_strip(&f.data, 1280, 720, f.stride), None);
    }

    #[test]
    fn input_strip_clamps_coordinates() {
        let s = InputStrip {
            last_key: 1,
            x: 5000,
            y: 3000,
            button_down: false,
        };
        let mut f = Frame::new(1280, 720);
        let mut c = Canvas::new(&mut f.data, 1280 * 4, 1280, 720, Rect::new(0, 0, 1280, 720));
        draw_cells(&mut c, INPUT_STRIP_Y, &input_cells(&s));
        let r = read_input_strip(&f.data, 1280, 720, f.stride).unwrap();
        assert_eq!((r.x, r.y), (2047, 2047));
    }
}
