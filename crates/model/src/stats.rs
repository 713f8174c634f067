//! Small statistics the models share: the normal quantile, a rolling window with quantiles,
//! correlation and forecast-accuracy measures.
//!
//! Written here rather than taken from `statrs`: each is a few lines, and `statrs` would bring
//! `nalgebra` into a crate that builds on a 2-core machine.

use std::collections::VecDeque;

/// The standard normal quantile function (inverse CDF), by Acklam's rational approximation
/// (relative error below 1.2e-9 over (0, 1)). Returns +-infinity at 0 and 1 and NaN outside.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The standard normal CDF, from the complementary error function by the Chebyshev fit of
/// Numerical Recipes' `erfcc` (fractional error below 1.2e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - erfc / 2.0
    } else {
        erfc / 2.0
    }
}

/// The two-sided normal multiplier for a central interval at `confidence` (1.96 at 0.95).
pub fn normal_multiplier(confidence: f64) -> f64 {
    normal_quantile(0.5 + confidence / 2.0)
}

/// The `q` quantile (0..=1) of sorted values by the "higher" rule: the smallest value with at
/// least `q * n` values at or below it, so an interval built from it covers at least `q` of the
/// values it was built from. `None` when empty.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (q * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// The last `capacity` values of a stream, with their sorted copy for quantiles in O(1).
/// A push costs O(capacity) in the worst case for the sorted insert (a memmove).
#[derive(Debug, Clone)]
pub struct RollingQuantiles {
    capacity: usize,
    order: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl RollingQuantiles {
    /// An empty window of at most `capacity` values (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RollingQuantiles {
            capacity,
            order: VecDeque::with_capacity(capacity),
            sorted: Vec::with_capacity(capacity),
        }
    }

    /// Adds `value`, dropping the oldest past the capacity. NaN is ignored.
    pub fn push(&mut self, value: f64) {
        if value.is_nan() {
            return;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            // replace in place: only the values between the old and the new position move
            let from = self.sorted.partition_point(|&v| v < old);
            let to = self.sorted.partition_point(|&v| v < value);
            if from < to {
                self.sorted.copy_within(from + 1..to, from);
                self.sorted[to - 1] = value;
            } else {
                self.sorted.copy_within(to..from, to + 1);
                self.sorted[to] = value;
            }
            self.order.push_back(value);
            return;
        }
        self.order.push_back(value);
        let at = self.sorted.partition_point(|&v| v < value);
        self.sorted.insert(at, value);
    }

    /// The `q` quantile of the values held (see [`quantile_sorted`]).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile_sorted(&self.sorted, q)
    }

    /// The fraction of held values strictly below `value` (0 when empty).
    pub fn rank(&self, value: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        self.sorted.partition_point(|&v| v < value) as f64 / self.sorted.len() as f64
    }

    /// The natural log of the probability of a value at least `value` under the held values:
    /// the empirical fraction up to the `1 - tail` quantile, and beyond it an exponential tail
    /// fitted to the excesses over that quantile (the peaks-over-threshold estimate with the
    /// generalised Pareto shape fixed at 0), never below the fraction of held values at least
    /// as large. In logs, so a value far beyond everything seen still gets a graded probability
    /// instead of underflowing to 0. 0 (probability 1) when empty.
    pub fn ln_exceedance(&self, value: f64, tail: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return 0.0;
        }
        let k = ((tail * n as f64).ceil() as usize).clamp(1, n);
        let u = self.sorted[n - k];
        let seen = (n - self.sorted.partition_point(|&v| v < value)) as f64 / n as f64;
        if value <= u {
            return seen.max(k as f64 / n as f64).ln();
        }
        let excess: f64 = self.sorted[n - k..].iter().map(|v| v - u).sum::<f64>() / k as f64;
        let ln_u = (k as f64 / n as f64).ln();
        // the fitted tail never claims a value rarer than the values already seen beyond it
        let fitted = if excess > 0.0 {
            ln_u - (value - u) / excess
        } else {
            f64::NEG_INFINITY
        };
        if seen > 0.0 {
            fitted.max(seen.ln())
        } else {
            fitted.max(-1e300)
        }
    }

    /// How many values are held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The values held, oldest first.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.order.iter().copied()
    }

    /// Forgets every value.
    pub fn clear(&mut self) {
        self.order.clear();
        self.sorted.clear();
    }
}

/// The mean of `values`; `None` when empty.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The population standard deviation of `values`; `None` when empty.
pub fn std_dev(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    Some((values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / values.len() as f64).sqrt())
}

/// Pearson's correlation of two equally long slices; `None` when shorter than 3 or when
/// either is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let (ma, mb) = (mean(a)?, mean(b)?);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    let denom = (saa * sbb).sqrt();
    (denom > 0.0 && denom.is_finite()).then(|| (sab / denom).clamp(-1.0, 1.0))
}

/// The median and the median absolute deviation (scaled by 1.4826 to estimate a normal
/// standard deviation) of `values`; `None` when empty.
pub fn median_mad(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let med = median_of_sorted(&v);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    dev.sort_by(f64::total_cmp);
    Some((med, 1.4826 * median_of_sorted(&dev)))
}

fn median_of_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Mean absolute scaled error: the mean absolute error of `forecast` divided by that of
/// `baseline` over the same points (below 1 means better than the baseline). `None` when the
/// lengths differ, the slices are empty or the baseline is perfect.
pub fn mase(actual: &[f64], forecast: &[f64], baseline: &[f64]) -> Option<f64> {
    if actual.is_empty() || actual.len() != forecast.len() || actual.len() != baseline.len() {
        return None;
    }
    let mae = |f: &[f64]| {
        actual
            .iter()
            .zip(f)
            .map(|(a, f)| (a - f).abs())
            .sum::<f64>()
    };
    let base = mae(baseline);
    (base > 0.0).then(|| mae(forecast) / base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_matches_tables() {
        assert!((normal_quantile(0.975) - 1.959_963_985).abs() < 1e-8);
        assert!((normal_quantile(0.5)).abs() < 1e-12);
        assert!((normal_quantile(0.001) + 3.090_232_306).abs() < 1e-8);
        assert!((normal_multiplier(0.6827) - 1.0).abs() < 1e-3);
        assert!(normal_quantile(1.5).is_nan());
        assert!((normal_cdf(1.959_963_985) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.0) - 0.158_655_254).abs() < 1e-6);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn quantile_covers_at_least_q() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile_sorted(&v, 0.95), Some(19.0));
        assert_eq!(quantile_sorted(&v, 1.0), Some(20.0));
        assert_eq!(quantile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&[], 0.5), None);
    }

    #[test]
    fn rolling_quantiles_forget_the_oldest() {
        let mut r = RollingQuantiles::new(3);
        for v in [5.0, 1.0, 3.0, 10.0] {
            r.push(v);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.values().collect::<Vec<_>>(), [1.0, 3.0, 10.0]);
        assert_eq!(r.quantile(0.0), Some(1.0));
        assert_eq!(r.quantile(1.0), Some(10.0));
        assert!((r.rank(3.0) - 1.0 / 3.0).abs() < 1e-12);
        // beyond everything held: graded, ever smaller, never 0
        let (a, b) = (r.ln_exceedance(20.0, 0.5), r.ln_exceedance(2000.0, 0.5));
        assert!(a < (1.0f64 / 3.0).ln() && b < a && b.is_finite(), "{a} {b}");
        assert_eq!(r.ln_exceedance(1.0, 0.5), 0.0);
        r.push(f64::NAN);
        assert_eq!(r.len(), 3);
        // in-place replacement keeps the sorted copy equal to the window, both directions
        let mut r = RollingQuantiles::new(5);
        let stream = [5.0, 3.0, 9.0, 1.0, 7.0, 2.0, 8.0, 8.0, 0.0, 10.0, 4.0, 6.0];
        for (i, &v) in stream.iter().enumerate() {
            r.push(v);
            let mut want: Vec<f64> = stream[i.saturating_sub(4)..=i].to_vec();
            want.sort_by(f64::total_cmp);
            assert_eq!(r.sorted, want, "after {i}");
        }
    }

    #[test]
    fn pearson_and_mase() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&a, &[2.0, 4.0, 6.0, 8.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&a, &[8.0, 6.0, 4.0, 2.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&a, &[1.0; 4]), None);
        let m = mase(&a, &[1.5, 2.5, 3.5, 4.5], &[2.0, 3.0, 4.0, 5.0]).unwrap();
        assert!((m - 0.5).abs() < 1e-12);
        let (med, mad) = median_mad(&[1.0, 2.0, 3.0, 4.0, 100.0]).unwrap();
        assert_eq!(med, 3.0);
        assert!((mad - 1.4826).abs() < 1e-12);
    }
}
