//! A series' cadence (seconds between points) and the seasonal terms computed from time.

use crate::{Error, Result, Time};

/// Seconds in a day.
pub const DAY: Time = 86_400;
/// Seconds in a week.
pub const WEEK: Time = 7 * DAY;

/// The spacing of a regular series, which turns seasons (a day, a week) into lags in points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    step: Time,
}

impl Cadence {
    /// A cadence of `step` seconds (positive).
    pub fn new(step: Time) -> Result<Self> {
        crate::ensure(step > 0, "step", || format!("must be positive, got {step}"))?;
        Ok(Cadence { step })
    }

    /// The median positive spacing of non-decreasing `times` (repeated times, as a clock change
    /// makes, are skipped); needs two distinct times.
    pub fn infer(times: &[Time]) -> Result<Self> {
        let mut steps: Vec<Time> = Vec::with_capacity(times.len().saturating_sub(1));
        for (i, w) in times.windows(2).enumerate() {
            if w[1] < w[0] {
                return Err(Error::BadPoint {
                    index: i + 1,
                    reason: format!("time {} is before the previous {}", w[1], w[0]),
                });
            }
            if w[1] > w[0] {
                steps.push(w[1] - w[0]);
            }
        }
        if steps.is_empty() {
            return Err(Error::Length {
                what: "times",
                expected: 2,
                got: times.len(),
            });
        }
        steps.sort_unstable();
        Cadence::new(steps[steps.len() / 2])
    }

    /// Seconds between points.
    pub fn step(self) -> Time {
        self.step
    }

    /// Points per `period` seconds, when a period holds at least two points.
    pub fn points_per(self, period: Time) -> Option<usize> {
        let n = (period as f64 / self.step as f64).round() as usize;
        (n >= 2).then_some(n)
    }

    /// Points per day, when a day holds at least two.
    pub fn per_day(self) -> Option<usize> {
        self.points_per(DAY)
    }

    /// Points per week, when a week holds at least two.
    pub fn per_week(self) -> Option<usize> {
        self.points_per(WEEK)
    }

    /// How many points `seconds` spans, rounded up (at least 1).
    pub fn points_in(self, seconds: Time) -> usize {
        (seconds.max(1) as u64).div_ceil(self.step as u64) as usize
    }
}

/// Appends `harmonics` sine/cosine pairs of the phase of `time` within `period` seconds:
/// seasonal terms a regression learns weights for, so the shape of the season is fitted, not
/// assumed.
pub fn fourier(time: Time, period: Time, harmonics: usize, out: &mut Vec<f64>) {
    if harmonics == 0 {
        return;
    }
    let phase = time.rem_euclid(period) as f64 / period as f64 * std::f64::consts::TAU;
    let (s1, c1) = phase.sin_cos();
    // higher harmonics by the angle-addition rule: one sin_cos per call, not one per harmonic
    let (mut s, mut c) = (s1, c1);
    for _ in 0..harmonics {
        out.push(s);
        out.push(c);
        (s, c) = (s * c1 + c * s1, c * c1 - s * s1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_the_median_step_and_seasons() {
        let times = [0, 300, 600, 1200, 1500, 1800];
        let c = Cadence::infer(&times).unwrap();
        assert_eq!(c.step(), 300);
        assert_eq!(c.per_day(), Some(288));
        assert_eq!(c.per_week(), Some(2016));
        assert_eq!(c.points_in(3600), 12);
        assert_eq!(c.points_in(1), 1);
        assert_eq!(Cadence::new(DAY).unwrap().per_day(), None);
    }

    #[test]
    fn refuses_time_going_backwards() {
        let err = Cadence::infer(&[0, 300, 200]).unwrap_err();
        assert!(matches!(err, Error::BadPoint { index: 2, .. }), "{err}");
        assert!(Cadence::infer(&[5]).is_err());
        assert!(Cadence::infer(&[5, 5]).is_err());
        assert_eq!(Cadence::infer(&[0, 300, 300, 600]).unwrap().step(), 300);
    }

    #[test]
    fn fourier_terms_repeat_each_period() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        fourier(3_600, DAY, 2, &mut a);
        fourier(3_600 + 3 * DAY, DAY, 2, &mut b);
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-9);
        }
        let mut c = Vec::new();
        fourier(DAY / 4, DAY, 1, &mut c);
        assert!((c[0] - 1.0).abs() < 1e-12 && c[1].abs() < 1e-12);
        // the recurrence matches sin and cos of each multiple
        let mut d = Vec::new();
        fourier(12_345, DAY, 5, &mut d);
        let phase = 12_345.0 / DAY as f64 * std::f64::consts::TAU;
        for k in 0..5 {
            let (s, c) = (phase * (k + 1) as f64).sin_cos();
            assert!((d[2 * k] - s).abs() < 1e-12 && (d[2 * k + 1] - c).abs() < 1e-12);
        }
    }
}
