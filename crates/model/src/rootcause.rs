//! Root-cause ranking: for an anomaly window, which system metrics and error classes were
//! unusual then and moved with the deviation, ordered by strength with a readable reason.

use std::ops::Range;

use serde::Serialize;

use crate::stats::{median_mad, pearson};
use crate::{Error, Result};

/// What kind of signal a candidate cause is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    /// A system metric: CPU, memory, disk or network I/O.
    SystemMetric,
    /// A count or rate of one class of errors (5xx, resets, timeouts).
    ErrorClass,
}

/// A candidate cause: a named series aligned point for point with the anomalous metric.
#[derive(Debug, Clone, Copy)]
pub struct Signal<'a> {
    /// The name shown to people (`cpu`, `disk_write_bytes`, `5xx`).
    pub name: &'a str,
    /// Metric or error class.
    pub kind: CauseKind,
    /// Its values, one per point of the anomalous metric.
    pub values: &'a [f64],
}

/// Which way a cause moved in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Above its baseline.
    Up,
    /// Below its baseline.
    Down,
}

/// One ranked cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cause {
    /// The signal's name.
    pub name: String,
    /// Metric or error class.
    pub kind: CauseKind,
    /// The window's median against the baseline's, in robust standard deviations (MAD).
    pub unusual: f64,
    /// Pearson correlation with the metric's deviation inside the window (0 when undefined).
    pub tracking: f64,
    /// Which way it moved.
    pub direction: Direction,
    /// The ranking key in [0, 1]: 0.6 of how unusual (saturating at 6 MADs) plus 0.4 of
    /// how closely it tracks the deviation.
    pub strength: f64,
    /// One line for a person.
    pub reason: String,
}

/// Ranks `signals` for the anomaly at `window` (indices into the series). `deviation` is the
/// anomalous metric's deviation from its forecast per point (e.g. [`crate::Verdict`]'s
/// `deviation`); the points before the window are the baseline. Strongest first.
pub fn rank(deviation: &[f64], signals: &[Signal<'_>], window: Range<usize>) -> Result<Vec<Cause>> {
    let n = deviation.len();
    if window.start >= window.end || window.end > n {
        return Err(Error::InvalidParam {
            field: "window",
            reason: format!("{window:?} is not a non-empty range within {n} points"),
        });
    }
    if window.start < 2 {
        return Err(Error::InvalidParam {
            field: "window",
            reason: "needs at least two baseline points before it".into(),
        });
    }
    let mut causes = Vec::with_capacity(signals.len());
    for s in signals {
        if s.values.len() != n {
            return Err(Error::Length {
                what: "signal values",
                expected: n,
                got: s.values.len(),
            });
        }
        let base = &s.values[..window.start];
        let inside = &s.values[window.clone()];
        let (Some((b_med, b_mad)), Some((w_med, _))) = (median_mad(base), median_mad(inside))
        else {
            continue;
        };
        // a baseline that never moved: any change is as unusual as it gets, scaled by size
        let scale = if b_mad > 0.0 {
            b_mad
        } else {
            1e-9 * (1.0 + b_med.abs())
        };
        let unusual = (w_med - b_med) / scale;
        let tracking = pearson(inside, &deviation[window.clone()]).unwrap_or(0.0);
        let u = (unusual.abs() / 6.0).min(1.0);
        let strength = 0.6 * u + 0.4 * tracking.abs();
        let direction = if unusual >= 0.0 {
            Direction::Up
        } else {
            Direction::Down
        };
        let reason = format!(
            "{}: {} its baseline by {:.1} MAD ({} -> {}), correlation with the deviation {:.2}",
            s.name,
            if unusual >= 0.0 { "above" } else { "below" },
            unusual.abs().min(999.0),
            short(b_med),
            short(w_med),
            tracking
        );
        causes.push(Cause {
            name: s.name.to_string(),
            kind: s.kind,
            unusual,
            tracking,
            direction,
            strength,
            reason,
        });
    }
    causes.sort_by(|a, b| b.strength.total_cmp(&a.strength));
    Ok(causes)
}

fn short(v: f64) -> String {
    if v.abs() >= 1000.0 || (v != 0.0 && v.abs() < 0.01) {
        format!("{v:.3e}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_that_moved_with_the_anomaly_ranks_first() {
        let n = 200;
        let window = 150..170;
        // deterministic noise, a different stream per signal
        let wiggle = |i: usize, k: usize| {
            let x = (i as u64 + 1)
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add((k as u64).wrapping_mul(1_442_695_040_888_963_407));
            ((x >> 33) % 1000) as f64 / 1000.0 * 7.0
        };
        let deviation: Vec<f64> = (0..n)
            .map(|i| {
                if window.contains(&i) {
                    5.0 + wiggle(i, 3)
                } else {
                    wiggle(i, 5) / 7.0
                }
            })
            .collect();
        // disk I/O rises in the window and follows the deviation's ups and downs
        let disk: Vec<f64> = (0..n)
            .map(|i| {
                100.0
                    + wiggle(i, 11)
                    + if window.contains(&i) {
                        50.0 + 4.0 * deviation[i]
                    } else {
                        0.0
                    }
            })
            .collect();
        // CPU steps up in the window but does not follow it
        let cpu: Vec<f64> = (0..n)
            .map(|i| 40.0 + wiggle(i, 13) + if window.contains(&i) { 5.0 } else { 0.0 })
            .collect();
        // memory does nothing
        let mem: Vec<f64> = (0..n).map(|i| 60.0 + wiggle(i, 17)).collect();
        // errors fall to zero
        let errors: Vec<f64> = (0..n)
            .map(|i| {
                if window.contains(&i) {
                    0.0
                } else {
                    3.0 + wiggle(i, 19)
                }
            })
            .collect();
        let signals = [
            Signal {
                name: "memory",
                kind: CauseKind::SystemMetric,
                values: &mem,
            },
            Signal {
                name: "cpu",
                kind: CauseKind::SystemMetric,
                values: &cpu,
            },
            Signal {
                name: "5xx",
                kind: CauseKind::ErrorClass,
                values: &errors,
            },
            Signal {
                name: "disk_io",
                kind: CauseKind::SystemMetric,
                values: &disk,
            },
        ];
        let ranked = rank(&deviation, &signals, window).unwrap();
        let names: Vec<&str> = ranked.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names[0], "disk_io", "{ranked:#?}");
        assert_eq!(names[3], "memory", "{ranked:#?}");
        assert!(ranked[0].tracking > 0.9 && ranked[0].direction == Direction::Up);
        let errs = ranked.iter().find(|c| c.name == "5xx").unwrap();
        assert_eq!(errs.direction, Direction::Down);
        assert!(ranked.windows(2).all(|w| w[0].strength >= w[1].strength));
        assert!(
            ranked[0].reason.starts_with("disk_io: above its baseline"),
            "{}",
            ranked[0].reason
        );
    }

    #[test]
    fn refuses_bad_windows_and_lengths() {
        let d = [0.0; 10];
        let s = [Signal {
            name: "cpu",
            kind: CauseKind::SystemMetric,
            values: &[0.0; 9],
        }];
        assert!(matches!(rank(&d, &s, 5..8), Err(Error::Length { .. })));
        assert!(matches!(
            rank(&d, &[], 5..11),
            Err(Error::InvalidParam { .. })
        ));
        assert!(matches!(
            rank(&d, &[], 0..3),
            Err(Error::InvalidParam { .. })
        ));
    }
}
