//! Small Annex-B helpers: split a byte stream into NAL units and read their types. Enough to
//! check what an encoder produced (keyframes, parameter sets, AUDs); not a parser.

/// H.264 NAL unit types used here.
pub mod h264 {
    pub const SLICE: u8 = 1;
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
}

/// H.265 NAL unit types used here.
pub mod h265 {
    /// IRAP pictures are 16..=23 (BLA, IDR, CRA and reserved).
    pub const IDR_W_RADL: u8 = 19;
    pub const IDR_N_LP: u8 = 20;
    pub const CRA: u8 = 21;
    pub const VPS: u8 = 32;
    pub const SPS: u8 = 33;
    pub const PPS: u8 = 34;
    pub const AUD: u8 = 35;
}

/// Whether `data` begins with an Annex-B start code (`00 00 01` or `00 00 00 01`).
pub fn starts_with_start_code(data: &[u8]) -> bool {
    data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1])
}

/// The NAL units of an Annex-B byte stream, without their start codes. Bytes before the first
/// start code are ignored.
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (payload start, start-code start)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let sc = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((i + 3, sc));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &(begin, _)) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&(_, sc)| sc);
        // trailing_zero_8bits are not part of the NAL unit
        while end > begin && data[end - 1] == 0 {
            end -= 1;
        }
        if begin <= end {
            out.push(&data[begin..end]);
        }
    }
    out
}

/// The H.264 `nal_unit_type` of every NAL unit in `data`.
pub fn h264_nal_types(data: &[u8]) -> Vec<u8> {
    nal_units(data)
        .iter()
        .filter_map(|n| n.first().map(|b| b & 0x1f))
        .collect()
}

/// The H.265 `nal_unit_type` of every NAL unit in `data`.
pub fn h265_nal_types(data: &[u8]) -> Vec<u8> {
    nal_units(data)
        .iter()
        .filter_map(|n| n.first().map(|b| (b >> 1) & 0x3f))
        .collect()
}

/// Whether an H.264 access unit holds an IDR picture.
pub fn h264_is_idr(data: &[u8]) -> bool {
    h264_nal_types(data).contains(&h264::IDR)
}

/// Whether an H.265 access unit holds an IRAP picture (a decoder can start there).
pub fn h265_is_irap(data: &[u8]) -> bool {
    h265_nal_types(data).iter().any(|t| (16..=23).contains(t))
}

/// Whether an H.264 access unit holds a picture (any VCL NAL unit).
pub(crate) fn h264_has_picture(data: &[u8]) -> bool {
    h264_nal_types(data).iter().any(|t| (1..=5).contains(t))
}

/// Whether an H.265 access unit holds a picture (any VCL NAL unit).
pub(crate) fn h265_has_picture(data: &[u8]) -> bool {
    h265_nal_types(data).iter().any(|t| *t < 32)
}

/// Moves an access unit delimiter that is not the first NAL unit to the front (x265enc
/// prepends its parameter sets before the AUD on the first frame; an AUD must start the AU).
/// Returns `data` unchanged when there is no AUD or it is already first.
pub(crate) fn aud_first(data: Vec<u8>, codec: crate::Codec) -> Vec<u8> {
    let nal_type = |n: &[u8]| match codec {
        crate::Codec::H264 => n.first().map(|b| b & 0x1f),
        _ => n.first().map(|b| (b >> 1) & 0x3f),
    };
    let aud = match codec {
        crate::Codec::H264 => h264::AUD,
        crate::Codec::H265 => h265::AUD,
        _ => return data,
    };
    let nals = nal_units(&data);
    let Some(pos) = nals.iter().position(|n| nal_type(n) == Some(aud)) else {
        return data;
    };
    if pos == 0 {
        return data;
    }
    let mut out = Vec::with_capacity(data.len() + 4);
    for n in std::iter::once(nals[pos]).chain(
        nals.iter()
            .enumerate()
            .filter(|(i, _)| *i != pos)
            .map(|(_, n)| *n),
    ) {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_nal_units() {
        let s = [
            0, 0, 0, 1, 0x09, 0xf0, // AUD
            0, 0, 1, 0x67, 1, 2, 0, // SPS, then a trailing zero byte
            0, 0, 0, 1, 0x68, 3, // PPS
            0, 0, 1, 0x65, 4, 5, 6, // IDR
        ];
        assert!(starts_with_start_code(&s));
        let n = nal_units(&s);
        assert_eq!(n.len(), 4);
        assert_eq!(n[1], &[0x67, 1, 2]);
        assert_eq!(h264_nal_types(&s), vec![9, 7, 8, 5]);
        assert!(h264_is_idr(&s));
        assert!(h264_has_picture(&s));
        assert!(!h264_is_idr(&[0, 0, 1, 0x41, 0]));
        assert!(nal_units(&[1, 2, 3]).is_empty());
        assert!(nal_units(&[]).is_empty());
        // H.265: AUD (35), VPS (32), IDR_W_RADL (19)
        let h = [
            0,
            0,
            1,
            35 << 1,
            1,
            0,
            0,
            1,
            32 << 1,
            1,
            0,
            0,
            1,
            19 << 1,
            1,
        ];
        assert_eq!(h265_nal_types(&h), vec![35, 32, 19]);
        assert!(h265_is_irap(&h));
        assert!(h265_has_picture(&h));
    }

    #[test]
    fn moves_aud_to_front() {
        use crate::Codec;
        let h = vec![
            0,
            0,
            1,
            32 << 1,
            1,
            0,
            0,
            1,
            35 << 1,
            1,
            0,
            0,
            1,
            19 << 1,
            7,
        ];
        let fixed = aud_first(h, Codec::H265);
        assert_eq!(h265_nal_types(&fixed), vec![35, 32, 19]);
        assert_eq!(&fixed[..4], &[0, 0, 0, 1]);
        let already = vec![0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x65, 1];
        assert_eq!(aud_first(already.clone(), Codec::H264), already);
        let none = vec![0, 0, 1, 0x65, 1];
        assert_eq!(aud_first(none.clone(), Codec::H264), none);
    }
}
