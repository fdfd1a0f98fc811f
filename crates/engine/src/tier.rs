//! Rate tiers: the bitrates shared encoders run at. Clients whose rate control asks for
//! similar bitrates share one encoder; a client whose link cannot take its tier's rate moves to
//! a lower tier (its own encoder while nobody else is there). Pure.

/// Each tier is this much below the one above it.
pub const TIER_STEP: f64 = 0.7;

/// The tier a client whose rate control asks for `want_kbps` belongs to, for a stream whose
/// quality ceiling is `ceiling_kbps` (the top tier; 0 means no ceiling: `max_kbps` is the
/// top) and whose lowest bitrate is `min_kbps`. Returns the tier's bitrate: the highest level
/// of `top x TIER_STEP^k` that is at most `want_kbps`, never below `min_kbps`.
pub fn tier_kbps(want_kbps: u32, ceiling_kbps: u32, max_kbps: u32, min_kbps: u32) -> u32 {
    let top = if ceiling_kbps == 0 {
        max_kbps
    } else {
        ceiling_kbps.min(max_kbps)
    }
    .max(min_kbps.max(1));
    if want_kbps >= top {
        return top;
    }
    let mut level = f64::from(top);
    let floor = f64::from(min_kbps.max(1));
    while level > f64::from(want_kbps) && level * TIER_STEP >= floor {
        level *= TIER_STEP;
    }
    if level > f64::from(want_kbps) {
        // Even the lowest level is above what is wanted: the floor.
        return min_kbps.max(1);
    }
    level.round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_client_gets_the_ceiling() {
        assert_eq!(tier_kbps(20_000, 6_912, 20_000, 300), 6_912);
        assert_eq!(tier_kbps(6_912, 6_912, 20_000, 300), 6_912);
        assert_eq!(tier_kbps(20_000, 0, 20_000, 300), 20_000);
    }

    #[test]
    fn slower_clients_fall_into_discrete_levels_below_what_they_want() {
        let top = 10_000;
        let t = |want| tier_kbps(want, top, 20_000, 300);
        assert_eq!(t(9_999), 7_000);
        assert_eq!(t(7_000), 7_000);
        assert_eq!(t(6_999), 4_900);
        assert_eq!(t(4_000), 3_430);
        // Clients with nearby targets share a level.
        assert_eq!(t(3_500), t(3_900));
        for want in [300, 500, 1_000, 2_000, 3_000, 5_000, 8_000] {
            let k = t(want);
            assert!(k <= want && k >= 300, "{want} -> {k}");
            assert!(f64::from(k) > f64::from(want) * TIER_STEP * 0.99 || k == 300);
        }
        assert_eq!(t(100), 300, "never below the minimum");
    }
}
