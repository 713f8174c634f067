//! Seasonal-naive: the value one season ago (the last value when the season is 1). The
//! baseline every other model must beat, and the denominator of MASE.

/// Seasonal-naive over a season of `period` points (1 = naive, the last value).
#[derive(Debug, Clone)]
pub struct SeasonalNaive {
    period: usize,
}

impl SeasonalNaive {
    /// A seasonal-naive model over `period` points (at least 1).
    pub fn new(period: usize) -> Self {
        SeasonalNaive {
            period: period.max(1),
        }
    }

    /// The season in points.
    pub fn period(&self) -> usize {
        self.period
    }

    /// Forecasts the `out.len()` points after the end of `values`: point `h` (from 1) takes
    /// the value `period * ceil(h / period)` points before it. Falls back to the last value
    /// while `values` is shorter than a season; does nothing on empty `values`.
    pub fn forecast(&self, values: &[f64], out: &mut [f64]) {
        let n = values.len();
        if n == 0 {
            return;
        }
        let m = if n >= self.period { self.period } else { 1 };
        for (k, o) in out.iter_mut().enumerate() {
            let h = k + 1;
            let back = m * h.div_ceil(m);
            *o = values[n + h - back - 1];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_the_last_season() {
        let v = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
        let mut out = [0.0; 5];
        SeasonalNaive::new(3).forecast(&v, &mut out);
        assert_eq!(out, [10.0, 20.0, 30.0, 10.0, 20.0]);
        SeasonalNaive::new(1).forecast(&v, &mut out);
        assert_eq!(out, [30.0; 5]);
        // shorter than a season: the last value
        SeasonalNaive::new(10).forecast(&v, &mut out);
        assert_eq!(out, [30.0; 5]);
    }
}
