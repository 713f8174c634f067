//! Choosing a group for a request: weighted random, or sticky by session key.
//!
//! Sticky mode hashes the session key onto a fixed ring of [`BUCKETS`] buckets and gives each
//! group a contiguous range of buckets in configuration order. Changing weights only moves the
//! range boundaries, so when the shadow's share grows from 10% to 30% exactly the sessions in
//! the buckets between the old and the new boundary move, all of them from the primary to the
//! shadow, and no shadow session moves back.

use shadowplane_wire::{GroupWeight, RoutingMode, SessionKey, ValidConfig};

/// Resolution of the sticky ring: weights are honoured to 1/10000.
pub const BUCKETS: u64 = 10_000;

/// The routing table of one filter configuration.
#[derive(Debug, Clone)]
pub struct Router {
    /// Group names, in configuration order.
    names: Vec<String>,
    /// Cumulative weights: request `x` in `[0, total)` goes to the first group with `x < cum`.
    cumulative: Vec<u64>,
    total: u64,
    /// Cumulative bucket boundaries on the sticky ring, same order.
    bucket_bounds: Vec<u64>,
    mode: RoutingMode,
    session_key: Option<SessionKey>,
}

impl Router {
    /// Builds the table from a checked configuration.
    pub fn new(config: &ValidConfig) -> Self {
        Self::from_groups(&config.groups, config.routing, config.session_key.clone())
    }

    fn from_groups(
        groups: &[GroupWeight],
        mode: RoutingMode,
        session_key: Option<SessionKey>,
    ) -> Self {
        let mut cumulative = Vec::with_capacity(groups.len());
        let mut acc = 0u64;
        for g in groups {
            acc += u64::from(g.weight);
            cumulative.push(acc);
        }
        let total = acc.max(1);
        // Round each boundary, not each width, so the last boundary is exactly BUCKETS and the
        // boundaries only depend on the cumulative weights before them.
        let bucket_bounds = cumulative.iter().map(|c| c * BUCKETS / total).collect();
        Self {
            names: groups.iter().map(|g| g.name.clone()).collect(),
            cumulative,
            total,
            bucket_bounds,
            mode,
            session_key,
        }
    }

    /// The routing mode.
    pub fn mode(&self) -> RoutingMode {
        self.mode
    }

    /// Where the sticky session key is read from.
    pub fn session_key(&self) -> Option<&SessionKey> {
        self.session_key.as_ref()
    }

    /// The group names, in configuration order.
    pub fn groups(&self) -> &[String] {
        &self.names
    }

    /// Picks a group for a uniformly random `r` (any `u64`); returns its index in
    /// [`Router::groups`].
    pub fn pick_random(&self, r: u64) -> usize {
        // Multiply-shift maps r onto [0, total) without modulo bias worth speaking of.
        let x = ((u128::from(r) * u128::from(self.total)) >> 64) as u64;
        self.clamp(self.cumulative.partition_point(|c| *c <= x))
    }

    /// Picks the group of a session: the same key and weights always give the same group.
    /// Returns its index in [`Router::groups`].
    pub fn pick_sticky(&self, session: &[u8]) -> usize {
        let bucket = xxhash_rust::xxh3::xxh3_64(session) % BUCKETS;
        self.clamp(self.bucket_bounds.partition_point(|b| *b <= bucket))
    }

    /// The name of group `i`; `""` past the end.
    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("", String::as_str)
    }

    /// partition_point can only reach len() if weights were all zero, which check() refuses;
    /// fall back to the first group rather than index past the end.
    fn clamp(&self, i: usize) -> usize {
        if i < self.names.len() { i } else { 0 }
    }
}

/// Finds cookie `name` in a `cookie` header value (`a=1; b=2`).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(weights: &[(&str, u32)], mode: RoutingMode) -> Router {
        let groups: Vec<_> = weights
            .iter()
            .map(|(n, w)| GroupWeight {
                name: n.to_string(),
                weight: *w,
            })
            .collect();
        Router::from_groups(&groups, mode, Some(SessionKey::Header("x-session".into())))
    }

    #[test]
    fn random_split_follows_weights() {
        let r = router(&[("primary", 90), ("shadow", 10)], RoutingMode::Random);
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 100_000;
        let shadow = (0..n)
            .filter(|_| r.name(r.pick_random(rng.u64(..))) == "shadow")
            .count();
        let share = shadow as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.005, "share {share}");
    }

    #[test]
    fn zero_weight_group_gets_nothing() {
        let r = router(&[("primary", 100), ("shadow", 0)], RoutingMode::Random);
        assert!((0..1000u64).all(|i| r.pick_random(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) == 0));
        assert_eq!(r.pick_random(u64::MAX), 0);
        let r = router(&[("primary", 0), ("shadow", 100)], RoutingMode::Sticky);
        assert!((0..1000).all(|i| r.name(r.pick_sticky(format!("s{i}").as_bytes())) == "shadow"));
    }

    #[test]
    fn sticky_is_stable_and_only_primary_sessions_move() {
        let before = router(&[("primary", 90), ("shadow", 10)], RoutingMode::Sticky);
        let after = router(&[("primary", 70), ("shadow", 30)], RoutingMode::Sticky);
        let mut moved = 0;
        for i in 0..20_000 {
            let key = format!("session-{i}");
            let a = before.name(before.pick_sticky(key.as_bytes()));
            assert_eq!(a, before.name(before.pick_sticky(key.as_bytes())));
            let b = after.name(after.pick_sticky(key.as_bytes()));
            if a == "shadow" {
                assert_eq!(b, "shadow", "a shadow session moved back");
            }
            if a != b {
                moved += 1;
            }
        }
        let moved_share = moved as f64 / 20_000.0;
        assert!((moved_share - 0.20).abs() < 0.02, "moved {moved_share}");
    }

    #[test]
    fn reads_cookies() {
        assert_eq!(cookie_value("a=1; sid=abc; b=2", "sid"), Some("abc"));
        assert_eq!(cookie_value("sid=\"q\"", "sid"), Some("q"));
        assert_eq!(cookie_value("a=1", "sid"), None);
        assert_eq!(cookie_value("", "sid"), None);
    }
}
