//! Local trend: a straight line through the newest points, extrapolated. The line is the
//! Theil-Sen estimate (the median of the slopes between every pair of points, and the median
//! intercept under that slope), so one slow window among them does not tilt it, where least
//! squares would follow it. It has no state to fit: every forecast reads the newest points, so
//! it follows a creep from the moment it starts, which Holt-Winters' smoothed trend (fitted on
//! a window in which the series was flat) does not.

/// A Theil-Sen line over the newest `span` points.
#[derive(Debug, Clone)]
pub struct LocalTrend {
    span: usize,
    /// Pairwise slopes, reused between forecasts.
    scratch: Vec<f64>,
}

impl LocalTrend {
    /// A line over the newest `span` points (at least 3).
    pub fn new(span: usize) -> Self {
        LocalTrend {
            span: span.max(3),
            scratch: Vec::new(),
        }
    }

    /// The points the line goes through.
    pub fn span(&self) -> usize {
        self.span
    }

    /// Forecasts the `out.len()` points after the end of `values` on the line through its
    /// newest `span` points (fewer while the history is shorter; the last value with fewer
    /// than 3). Does nothing on empty `values`.
    pub fn forecast(&mut self, values: &[f64], out: &mut [f64]) {
        let n = values.len();
        let Some(&last) = values.last() else {
            return;
        };
        let recent = &values[n.saturating_sub(self.span)..];
        let m = recent.len();
        if m < 3 {
            out.fill(last);
            return;
        }
        self.scratch.clear();
        for i in 0..m {
            for j in i + 1..m {
                self.scratch.push((recent[j] - recent[i]) / (j - i) as f64);
            }
        }
        let slope = median(&mut self.scratch);
        self.scratch.clear();
        self.scratch
            .extend(recent.iter().enumerate().map(|(i, y)| y - slope * i as f64));
        let intercept = median(&mut self.scratch);
        // Point k (from 0) of `out` lies k + 1 after the newest, which is at m - 1.
        for (k, o) in out.iter_mut().enumerate() {
            *o = intercept + slope * (m + k) as f64;
        }
    }
}

/// The median of non-empty `v` (reordered).
fn median(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    let (_, upper, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if v.len() % 2 == 1 {
        upper
    } else {
        let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extrapolates_the_line_through_the_newest_points() {
        // Flat, then a ramp of 2 a point over the newest 10: only the ramp is in the span.
        let mut v = vec![5.0; 50];
        v.extend((1..=10).map(|k| 5.0 + 2.0 * f64::from(k)));
        let mut out = [0.0; 3];
        LocalTrend::new(10).forecast(&v, &mut out);
        assert_eq!(out, [27.0, 29.0, 31.0]);
    }

    #[test]
    fn one_outlier_does_not_tilt_the_line() {
        let mut v: Vec<f64> = (0..20).map(|k| 10.0 + 0.5 * f64::from(k)).collect();
        v[18] = 200.0;
        let mut out = [0.0; 1];
        LocalTrend::new(20).forecast(&v, &mut out);
        // The line goes on at 0.5 a point: 10 + 0.5 * 20.
        assert!((out[0] - 20.0).abs() < 0.3, "{out:?}");
    }

    #[test]
    fn short_histories_repeat_the_last_value() {
        let mut out = [0.0; 2];
        LocalTrend::new(10).forecast(&[3.0, 4.0], &mut out);
        assert_eq!(out, [4.0, 4.0]);
        let mut untouched = [7.0];
        LocalTrend::new(10).forecast(&[], &mut untouched);
        assert_eq!(untouched, [7.0]);
    }
}
