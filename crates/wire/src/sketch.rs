//! A mergeable log-bucketed latency sketch with a 1% relative-error bound (DDSketch's mapping).
//!
//! Why not a crate: `sketches-ddsketch` keeps its store private (no way to read or write bins
//! except its own byte format), and its decoder trusts its input (unchecked index arithmetic),
//! while this type must cross a trust boundary and be validated field by field. The part that
//! matters, the logarithmic index mapping of Masson et al. (VLDB 2019), is a few lines; the
//! store here is a sparse sorted map, so merging is exact bin-by-bin addition.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The relative-error bound of every quantile the sketch returns: for any `q`, the estimate `x̂`
/// of the true rank-`q` sample `x` satisfies `|x̂ - x| <= RELATIVE_ACCURACY * x`, for samples
/// between 1e-9 and about 1e71 (the keys' range). Smaller samples count as zero, larger ones in
/// the top bucket; a latency in microseconds is never either.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Values at or below this (in the sketch's unit) count in the zero bucket.
const MIN_INDEXABLE: f64 = 1e-9;

/// Keys outside `-MAX_KEY..=MAX_KEY` are refused on decode. With γ≈1.0202 they cover values
/// from about 1e-71 to 1e71, far past any latency, and bound the memory of a hostile sketch.
pub(crate) const MAX_KEY: i32 = 8192;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// `1 / ln(γ)`, so that a key costs one logarithm (the filter takes one per request). Checked
/// against `gamma()` in the tests.
const INV_LN_GAMMA: f64 = 49.998_333_288_886_78;

/// A latency distribution: counts of samples per logarithmic bucket, plus exact count, sum,
/// min and max. Values are non-negative; the unit is the caller's (the filter records
/// microseconds).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LatencySketch {
    bins: BTreeMap<i32, u64>,
    zero_count: u64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl LatencySketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket key of a positive value: `ceil(log_γ(v))`.
    fn key(v: f64) -> i32 {
        let k = (v.ln() * INV_LN_GAMMA).ceil();
        k.clamp(-(MAX_KEY as f64), MAX_KEY as f64) as i32
    }

    /// The value a key stands for: the point of the bucket `(γ^(k-1), γ^k]` whose relative
    /// distance to both ends is `RELATIVE_ACCURACY`.
    fn value(k: i32) -> f64 {
        2.0 * gamma().powi(k) / (gamma() + 1.0)
    }

    /// Records one sample. Negative, NaN and infinite values are ignored (a latency cannot be
    /// any of them), so a broken clock never poisons the sketch.
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        if v <= MIN_INDEXABLE {
            self.zero_count += 1;
        } else {
            *self.bins.entry(Self::key(v)).or_insert(0) += 1;
        }
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
    }

    /// Adds every sample of `other` into `self`. Bin-by-bin addition, so merging the sketches
    /// of several workers gives exactly the sketch of all their samples.
    ///
    /// Fails, leaving `self` as it was, when the count would overflow or the sum would stop
    /// being finite: only broken or hostile input gets there, and the merged sketch would not
    /// decode. Each bin holds at most the count, so no bin can overflow when the count does not.
    pub fn merge(&mut self, other: &LatencySketch) -> Result<()> {
        if other.count == 0 {
            return Ok(());
        }
        let count = self
            .count
            .checked_add(other.count)
            .ok_or_else(|| Error::report("latency.count", "overflows when merged"))?;
        let sum = self.sum + other.sum;
        if !sum.is_finite() {
            return Err(Error::report("latency.sum", "is not finite when merged"));
        }
        for (k, c) in &other.bins {
            *self.bins.entry(*k).or_insert(0) += c;
        }
        if self.count == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.zero_count += other.zero_count;
        self.count = count;
        self.sum = sum;
        Ok(())
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the samples (exact up to floating point).
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Smallest sample, `None` when empty.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest sample, `None` when empty.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Mean of the samples, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The estimate of the `q`-quantile (`0 <= q <= 1`) within [`RELATIVE_ACCURACY`] of the
    /// sample at rank `floor(q * (count - 1))`; `None` when empty or `q` is out of range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        if rank < self.zero_count {
            return Some(self.min.max(0.0));
        }
        let mut seen = self.zero_count;
        for (k, c) in &self.bins {
            seen += c;
            if seen > rank {
                return Some(Self::value(*k).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The distribution as (value, count) pairs in ascending value order: the zero bucket
    /// (value 0) first if it has samples, then every non-empty bucket at the value it stands
    /// for. Samples in one pair are indistinguishable (ties) to a rank test.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let zero = (self.zero_count > 0).then_some((0.0, self.zero_count));
        zero.into_iter()
            .chain(self.bins.iter().map(|(k, c)| (Self::value(*k), *c)))
    }

    /// Non-empty buckets in key order, with the zero bucket separate.
    pub(crate) fn parts(&self) -> (impl Iterator<Item = (i32, u64)> + '_, u64) {
        (self.bins.iter().map(|(k, c)| (*k, *c)), self.zero_count)
    }

    /// Rebuilds a sketch from its wire parts, checking every invariant; `field` names the
    /// sketch in errors.
    pub(crate) fn from_parts(
        field: &str,
        keys: &[i32],
        counts: &[u64],
        zero_count: u64,
        sum: f64,
        min: f64,
        max: f64,
    ) -> Result<Self> {
        if keys.len() != counts.len() {
            return Err(Error::report(
                format!("{field}.keys"),
                format!("{} keys but {} counts", keys.len(), counts.len()),
            ));
        }
        let mut bins = BTreeMap::new();
        let mut count = zero_count;
        let mut prev: Option<i32> = None;
        for (i, (&k, &c)) in keys.iter().zip(counts).enumerate() {
            if !(-MAX_KEY..=MAX_KEY).contains(&k) {
                return Err(Error::report(
                    format!("{field}.keys[{i}]"),
                    format!("key {k} outside -{MAX_KEY}..={MAX_KEY}"),
                ));
            }
            if prev.is_some_and(|p| p >= k) {
                return Err(Error::report(
                    format!("{field}.keys[{i}]"),
                    "keys must be strictly increasing",
                ));
            }
            if c == 0 {
                return Err(Error::report(
                    format!("{field}.counts[{i}]"),
                    "empty bucket sent",
                ));
            }
            count = count.checked_add(c).ok_or_else(|| {
                Error::report(format!("{field}.counts[{i}]"), "total count overflows u64")
            })?;
            bins.insert(k, c);
            prev = Some(k);
        }
        if count > 0 {
            for (name, v) in [("sum", sum), ("min", min), ("max", max)] {
                if !v.is_finite() || v < 0.0 {
                    return Err(Error::report(
                        format!("{field}.{name}"),
                        format!("{v} is not a finite non-negative number"),
                    ));
                }
            }
            if min > max {
                return Err(Error::report(format!("{field}.min"), "min is above max"));
            }
        }
        let (min, max, sum) = if count > 0 {
            (min, max, sum)
        } else {
            (0.0, 0.0, 0.0)
        };
        Ok(Self {
            bins,
            zero_count,
            count,
            sum,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn the_inverse_logarithm_is_that_of_gamma() {
        let exact = 1.0 / gamma().ln();
        assert!(
            (INV_LN_GAMMA - exact).abs() <= 1e-12 * exact,
            "{INV_LN_GAMMA} vs {exact}"
        );
    }

    #[test]
    fn empty_sketch_has_no_quantiles() {
        let s = LatencySketch::new();
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(s.min(), None);
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn buckets_list_the_distribution_in_value_order() {
        let mut s = LatencySketch::new();
        for v in [0.0, 0.0, 100.0, 100.5, 5000.0] {
            s.add(v);
        }
        let b: Vec<(f64, u64)> = s.buckets().collect();
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!(b[0], (0.0, 2));
        assert_eq!(b[1].1, 2);
        assert!((b[1].0 - 100.0).abs() <= 1.0, "{b:?}");
        assert!((b[2].0 - 5000.0).abs() <= 50.0, "{b:?}");
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), s.count());
    }

    #[test]
    fn ignores_impossible_samples() {
        let mut s = LatencySketch::new();
        for v in [f64::NAN, f64::INFINITY, -1.0] {
            s.add(v);
        }
        assert_eq!(s.count(), 0);
        s.add(0.0);
        assert_eq!(s.quantile(0.5), Some(0.0));
    }

    #[test]
    fn a_merge_that_would_overflow_fails_and_changes_nothing() {
        let huge =
            LatencySketch::from_parts("a", &[100], &[u64::MAX - 1], 0, 1.0, 1.0, 1.0).unwrap();
        let mut s = LatencySketch::new();
        s.add(5.0);
        s.add(5.0);
        let before = s.clone();
        let err = s.merge(&huge).unwrap_err();
        assert!(err.to_string().contains("latency.count"), "{err}");
        assert_eq!(s.count(), before.count());
        assert_eq!(s.bins, before.bins);

        let big_sum = LatencySketch::from_parts("b", &[100], &[1], 0, f64::MAX, 1.0, 1.0).unwrap();
        let mut t = big_sum.clone();
        let err = t.merge(&big_sum).unwrap_err();
        assert!(err.to_string().contains("latency.sum"), "{err}");
        assert_eq!(t.sum(), f64::MAX);
    }

    #[test]
    fn single_value_is_returned_within_bound() {
        let mut s = LatencySketch::new();
        s.add(20_000.0);
        s.add(20_000.0);
        assert_eq!(s.quantile(0.5), Some(20_000.0), "clamped to min/max");
    }

    proptest! {
        #[test]
        fn quantiles_within_relative_accuracy(
            mut xs in prop::collection::vec(0.001f64..1e7, 1..400),
            q in 0.0f64..=1.0,
        ) {
            let mut s = LatencySketch::new();
            for x in &xs { s.add(*x); }
            xs.sort_by(f64::total_cmp);
            let exact = exact_quantile(&xs, q);
            let est = s.quantile(q).unwrap();
            prop_assert!((est - exact).abs() <= RELATIVE_ACCURACY * exact * (1.0 + 1e-9),
                "q={q} exact={exact} est={est}");
        }

        #[test]
        fn merged_sketch_equals_sketch_of_all_samples(
            xs in prop::collection::vec(0.0f64..1e6, 0..300),
            parts in 1usize..6,
        ) {
            let mut whole = LatencySketch::new();
            let mut pieces = vec![LatencySketch::new(); parts];
            for (i, x) in xs.iter().enumerate() {
                whole.add(*x);
                pieces[i % parts].add(*x);
            }
            let mut merged = LatencySketch::new();
            for p in &pieces { merged.merge(p).unwrap(); }
            prop_assert_eq!(merged.count(), whole.count());
            prop_assert_eq!(&merged.bins, &whole.bins);
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
                prop_assert_eq!(merged.quantile(q), whole.quantile(q));
            }
        }
    }
}
