//! Rate tiers: the bitrates shared encoders run at. Clients whose rate control asks for
//! similar bitrates share one encoder; a client whose link cannot take its tier's rate moves to
//! a lower tier (its own encoder while nobody else is there). Pure.

/// Each tier is this much below the one above it.
pub const TIER_STEP: f64 = 0.8;

/// The tier a client whose rate control asks for `want_kbps` belongs to: the highest level of
/// the fixed ladder `max_kbps x TIER_STEP^k` that is at most `want_kbps` and at most the
/// stream's quality ceiling `ceiling_kbps` (0: none), never below `min_kbps`. The ladder is
/// the same for every client of a server, so clients whose targets (or whose measurements of
/// the source's frame rate, which the ceiling follows) differ a little land on one level.
pub fn tier_kbps(want_kbps: u32, ceiling_kbps: u32, max_kbps: u32, min_kbps: u32) -> u32 {
    let floor = min_kbps.max(1);
    let cap = if ceiling_kbps == 0 {
        want_kbps
    } else {
        want_kbps.min(ceiling_kbps)
    };
    let mut level = f64::from(max_kbps.max(floor));
    while level > f64::from(cap) && level * TIER_STEP >= f64::from(floor) {
        level *= TIER_STEP;
    }
    if level > f64::from(cap) {
        return floor;
    }
    level.round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_client_gets_the_level_at_or_below_the_ceiling() {
        assert_eq!(tier_kbps(20_000, 0, 20_000, 300), 20_000);
        assert_eq!(tier_kbps(20_000, 16_000, 20_000, 300), 16_000);
        // 6912 (720p30 x 0.25 bpp) lands on 6554, and so do ceilings measured a little off.
        let l = tier_kbps(20_000, 6_912, 20_000, 300);
        assert_eq!(l, 6_554);
        for c in [6_600, 6_890, 6_912, 6_950, 8_000] {
            assert_eq!(tier_kbps(20_000, c, 20_000, 300), l, "{c}");
        }
    }

    #[test]
    fn slower_clients_fall_into_discrete_levels_below_what_they_want() {
        let t = |want| tier_kbps(want, 0, 20_000, 300);
        assert_eq!(t(19_999), 16_000);
        assert_eq!(t(16_000), 16_000);
        assert_eq!(t(15_999), 12_800);
        // Clients with nearby targets share a level.
        assert_eq!(t(3_400), t(4_100));
        for want in [300, 500, 1_000, 2_000, 3_000, 5_000, 8_000] {
            let k = t(want);
            assert!(k <= want && k >= 300, "{want} -> {k}");
            assert!(f64::from(k) > f64::from(want) * TIER_STEP * 0.99 || k == 300);
        }
        assert_eq!(t(100), 300, "never below the minimum");
    }
}
