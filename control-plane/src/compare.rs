//! Is the shadow worse than the primary? Two statistical tests over one step's traffic: a
//! one-sided Mann-Whitney U test on the two latency distributions and a one-sided
//! two-proportion z-test on the error rates, each gated by an effect size, so neither noise
//! on a busy window nor a tiny but significant difference fails a step.
//!
//! Both inputs are merged telemetry windows (crates/wire `ClusterStats`); the latency test
//! runs on the sketches' buckets, where samples in one bucket are ties (midranks, with the
//! tie-corrected variance). Pure: no I/O, no clock.

use shadowplane_wire::ClusterStats;

/// When the shadow counts as worse.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComparePolicy {
    /// Significance level of each one-sided test. Default: 0.01.
    pub alpha: f64,
    /// The shadow's p50 or p99 may exceed the primary's by this fraction before a significant
    /// difference counts. Default: 0.10.
    pub latency_tolerance: f64,
    /// The shadow's error rate may exceed the primary's by this much (absolute) before a
    /// significant difference counts. Default: 0.005.
    pub error_tolerance: f64,
    /// Fewer requests than this on either side: no verdict. Default: 100.
    pub min_requests: u64,
}

impl Default for ComparePolicy {
    fn default() -> Self {
        ComparePolicy {
            alpha: 0.01,
            latency_tolerance: 0.10,
            error_tolerance: 0.005,
            min_requests: 100,
        }
    }
}

impl ComparePolicy {
    /// Checks the policy; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(format!("alpha: {} is not between 0 and 0.5", self.alpha));
        }
        if !(self.latency_tolerance.is_finite() && self.latency_tolerance >= 0.0) {
            return Err(format!(
                "latency_tolerance: {} is not a fraction of 0 or more",
                self.latency_tolerance
            ));
        }
        if !(0.0..1.0).contains(&self.error_tolerance) {
            return Err(format!(
                "error_tolerance: {} is not between 0 and 1",
                self.error_tolerance
            ));
        }
        if self.min_requests == 0 {
            return Err("min_requests: must be above 0".into());
        }
        Ok(())
    }
}

/// The outcome of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too little traffic on one side to judge.
    NotEnoughData(String),
    /// The shadow is not worse beyond the policy.
    NotWorse(String),
    /// The shadow is worse: which test and by how much.
    Worse(String),
}

/// Standard normal upper tail, P(Z > z).
fn upper_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// One-sided Mann-Whitney U: the p-value of "the shadow's latencies are stochastically
/// greater", from two bucketed distributions.
pub fn mann_whitney_greater(primary: &ClusterStats, shadow: &ClusterStats) -> Option<f64> {
    let n1 = shadow.latency.count() as f64;
    let n2 = primary.latency.count() as f64;
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    // Merge the two bucket lists by value; each distinct value is one tie group.
    let mut groups: Vec<(f64, u64, u64)> = Vec::new(); // (value, shadow count, primary count)
    let mut a = shadow.latency.buckets().peekable();
    let mut b = primary.latency.buckets().peekable();
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let (x, y) = (*x, *y);
                a.next();
                b.next();
                (x.0, x.1, y.1)
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                let x = *x;
                a.next();
                (x.0, x.1, 0)
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                let y = *y;
                b.next();
                (y.0, 0, y.1)
            }
            (Some(x), None) => {
                let x = *x;
                a.next();
                (x.0, x.1, 0)
            }
            (None, None) => break,
        };
        groups.push(next);
    }
    let n = n1 + n2;
    let mut rank_sum_shadow = 0.0;
    let mut tie_term = 0.0;
    let mut below = 0.0;
    for (_, s, p) in &groups {
        let t = (*s + *p) as f64;
        let midrank = below + (t + 1.0) / 2.0;
        rank_sum_shadow += *s as f64 * midrank;
        tie_term += t * t * t - t;
        below += t;
    }
    let u = rank_sum_shadow - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if var <= 0.0 {
        // Every sample in one bucket: no evidence either way.
        return Some(1.0);
    }
    // Continuity correction toward the null.
    let z = (u - mean - 0.5) / var.sqrt();
    Some(upper_tail(z))
}

/// Requests that failed: 5xx, no response, resets and timeouts all show as 5xx or no response.
fn errors(s: &ClusterStats) -> u64 {
    s.responses_5xx + s.no_response
}

/// One-sided two-proportion z-test: the p-value of "the shadow's error rate is greater".
pub fn error_rate_greater(primary: &ClusterStats, shadow: &ClusterStats) -> Option<f64> {
    let (n1, n2) = (shadow.requests as f64, primary.requests as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    let (p1, p2) = (errors(shadow) as f64 / n1, errors(primary) as f64 / n2);
    let pooled = (errors(shadow) + errors(primary)) as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return Some(if p1 > p2 { 0.0 } else { 1.0 });
    }
    Some(upper_tail((p1 - p2) / se))
}

/// Compares the shadow with the primary over the same period.
pub fn compare(primary: &ClusterStats, shadow: &ClusterStats, policy: &ComparePolicy) -> Verdict {
    if primary.requests < policy.min_requests || shadow.requests < policy.min_requests {
        return Verdict::NotEnoughData(format!(
            "{} requests on the primary and {} on the shadow; {} each are needed",
            primary.requests, shadow.requests, policy.min_requests
        ));
    }
    let rate = |s: &ClusterStats| errors(s) as f64 / s.requests as f64;
    let (er_p, er_s) = (rate(primary), rate(shadow));
    if let Some(p) = error_rate_greater(primary, shadow)
        && p < policy.alpha
        && er_s - er_p > policy.error_tolerance
    {
        return Verdict::Worse(format!(
            "error rate {:.2}% on the shadow against {:.2}% on the primary (two-proportion \
             z-test, p = {p:.2e})",
            er_s * 100.0,
            er_p * 100.0
        ));
    }
    let q = |s: &ClusterStats, x: f64| s.latency.quantile(x).unwrap_or(0.0);
    let (p50p, p50s, p99p, p99s) = (
        q(primary, 0.5),
        q(shadow, 0.5),
        q(primary, 0.99),
        q(shadow, 0.99),
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 1.0 };
    let (r50, r99) = (ratio(p50s, p50p), ratio(p99s, p99p));
    let mw = mann_whitney_greater(primary, shadow).unwrap_or(1.0);
    let figures = format!(
        "p50 {:.1} ms against {:.1} ms ({r50:.2}x), p99 {:.1} ms against {:.1} ms ({r99:.2}x), \
         Mann-Whitney p = {mw:.2e}; errors {:.2}% against {:.2}%",
        p50s / 1000.0,
        p50p / 1000.0,
        p99s / 1000.0,
        p99p / 1000.0,
        er_s * 100.0,
        er_p * 100.0
    );
    if mw < policy.alpha && r50.max(r99) > 1.0 + policy.latency_tolerance {
        Verdict::Worse(format!("latency: shadow {figures}"))
    } else {
        Verdict::NotWorse(format!("shadow {figures}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` requests with latencies drawn from a deterministic spread around `median_us`, and
    /// `errors` of them 5xx.
    fn stats(n: u64, median_us: f64, errors: u64, seed: u64) -> ClusterStats {
        let mut s = ClusterStats::new("g");
        let mut x = seed;
        for _ in 0..n {
            // xorshift: reproducible, no dependency.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x % 10_000) as f64 / 10_000.0;
            // A long-tailed spread: median `median_us`, p99 about 4.6x the median.
            s.latency
                .add(median_us * (-((1.0 - u).max(1e-6)).ln()) / std::f64::consts::LN_2);
        }
        s.requests = n;
        s.responses_5xx = errors;
        s.responses_2xx = n - errors;
        s
    }

    #[test]
    fn same_distribution_is_not_worse() {
        let p = stats(2000, 10_000.0, 4, 1);
        let s = stats(2000, 10_000.0, 5, 2);
        assert!(matches!(
            compare(&p, &s, &ComparePolicy::default()),
            Verdict::NotWorse(_)
        ));
        let pv = mann_whitney_greater(&p, &s).unwrap();
        assert!(pv > 0.01, "{pv}");
    }

    #[test]
    fn slower_shadow_is_worse_with_figures() {
        let p = stats(2000, 10_000.0, 0, 1);
        let s = stats(2000, 13_000.0, 0, 2);
        match compare(&p, &s, &ComparePolicy::default()) {
            Verdict::Worse(why) => assert!(
                why.contains("latency") && why.contains("Mann-Whitney"),
                "{why}"
            ),
            v => panic!("{v:?}"),
        }
        // Faster is never worse.
        assert!(matches!(
            compare(&s, &p, &ComparePolicy::default()),
            Verdict::NotWorse(_)
        ));
    }

    #[test]
    fn a_tiny_but_significant_slowdown_within_tolerance_passes() {
        let p = stats(50_000, 10_000.0, 0, 1);
        let s = stats(50_000, 10_400.0, 0, 2);
        assert!(mann_whitney_greater(&p, &s).unwrap() < 0.01);
        assert!(matches!(
            compare(&p, &s, &ComparePolicy::default()),
            Verdict::NotWorse(_)
        ));
    }

    #[test]
    fn more_errors_on_the_shadow_is_worse() {
        let p = stats(2000, 10_000.0, 2, 1);
        let s = stats(2000, 10_000.0, 60, 2);
        match compare(&p, &s, &ComparePolicy::default()) {
            Verdict::Worse(why) => assert!(why.contains("error rate 3.00%"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn too_little_traffic_gives_no_verdict() {
        let p = stats(2000, 10_000.0, 0, 1);
        let s = stats(20, 50_000.0, 10, 2);
        assert!(matches!(
            compare(&p, &s, &ComparePolicy::default()),
            Verdict::NotEnoughData(_)
        ));
    }

    #[test]
    fn mann_whitney_matches_a_hand_computed_case() {
        // Shadow {3, 4}, primary {1, 2}: U = 4 (every shadow sample above every primary one),
        // mean 2, variance 2*2*5/12 = 5/3; z = (4 - 2 - 0.5) / sqrt(5/3) = 1.1619.
        let mut p = ClusterStats::new("p");
        let mut s = ClusterStats::new("s");
        for v in [1000.0, 2000.0] {
            p.latency.add(v);
        }
        for v in [3000.0, 4000.0] {
            s.latency.add(v);
        }
        let pv = mann_whitney_greater(&p, &s).unwrap();
        assert!((pv - 0.12264).abs() < 1e-3, "{pv}");
    }
}
