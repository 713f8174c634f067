//! Anomaly detection: the deviation of each point from its forecast in units of the predicted
//! spread, turned into a score in [0, 1], with persistence and re-baselining.
//!
//! The spread is the forecaster's calibrated one-step interval at `confidence` divided by the
//! normal multiplier of that confidence, so "3 sigma" means three times the spread the model's
//! own recent out-of-sample errors show, not a distribution assumed for them.
//!
//! The score ranks points across series: it is the tail probability of the deviation among the
//! series' own past deviations (an exponential tail fitted beyond the 95th percentile), so a
//! spiky series is not scored like a smooth one. A sustained deviation is scored the same way
//! on its mean over `sustained` points and over `sustained_long` points (a denser run of spikes
//! or a new regime, which no single point shows). Within an episode (`episode` points) only a
//! deviation rarer than the episode's rarest so far scores high: the first alarm says it, the
//! rest of the same event does not repeat it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::forecast::{Forecast, Forecaster, ForecasterParams, ValidForecasterParams};
use crate::stats::{RollingQuantiles, normal_multiplier};
use crate::{Result, Time, ensure};

/// Parameters of a [`Detector`]; `check` turns them into [`ValidDetectorParams`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorParams {
    /// The forecaster's parameters. Default [`ForecasterParams::default`].
    pub forecaster: ForecasterParams,
    /// Deviation, in units of the predicted spread, at which a point is anomalous; it scores
    /// 0.5 there. Default 3.
    pub threshold: f64,
    /// Confidence of the one-step interval the spread is read from. Default 0.95.
    pub confidence: f64,
    /// Severity counts anomalous points among the last `persistence_window`. Default 6.
    pub persistence_window: usize,
    /// Anomalous points among the last `persistence_window`, all on the same side of the
    /// forecast, that confirm a level shift and re-baseline the model. Default 5.
    pub level_shift_points: usize,
    /// Past deviations the score's tail probability is estimated from. Default 4032.
    pub score_window: usize,
    /// Deviations needed before the score is above 0. Default 100.
    pub score_min: usize,
    /// Fraction of past deviations that form the fitted tail. Default 0.05.
    pub score_tail: f64,
    /// Points an episode lasts: within it, only a deviation rarer than the episode's rarest
    /// so far scores high. Default 96 (8 hours at 5 minutes).
    pub episode: usize,
    /// Exponent of the episode's rarest probability in that comparison. Default 1.
    pub episode_weight: f64,
    /// The tail probability that scores 0.5. Default 1e-4.
    pub score_half: f64,
    /// Points whose mean deviation is scored too, for shifts too small for one point. 0 = off.
    /// Default 20.
    pub sustained: usize,
    /// A second, longer window whose mean deviation is scored the same way, for a rise in the
    /// rate of spikes or a change of regime that 20 points cannot tell from noise. 0 = off.
    /// Default 144 (half a day at 5 minutes).
    pub sustained_long: usize,
    /// Deviations are clipped at this before the means, so one huge spike does not make a
    /// sustained deviation by itself. Default 10.
    pub sustained_clip: f64,
}

impl Default for DetectorParams {
    fn default() -> Self {
        DetectorParams {
            forecaster: ForecasterParams::default(),
            threshold: 3.0,
            confidence: 0.95,
            persistence_window: 6,
            level_shift_points: 5,
            score_window: 4032,
            score_min: 100,
            score_tail: 0.05,
            episode: 96,
            episode_weight: 1.0,
            score_half: 1e-4,
            sustained: 20,
            sustained_long: 144,
            sustained_clip: 10.0,
        }
    }
}

impl DetectorParams {
    /// Validates the parameters, naming the first bad field.
    pub fn check(self) -> Result<ValidDetectorParams> {
        let forecaster = self.forecaster.clone().check()?;
        ensure(
            self.threshold.is_finite() && self.threshold > 0.0,
            "threshold",
            || format!("must be positive, got {}", self.threshold),
        )?;
        ensure(
            self.confidence > 0.5 && self.confidence < 1.0,
            "confidence",
            || format!("must be between 0.5 and 1, got {}", self.confidence),
        )?;
        ensure(
            self.score_half > 0.0 && self.score_half < 1.0,
            "score_half",
            || format!("must be strictly between 0 and 1, got {}", self.score_half),
        )?;
        ensure(self.persistence_window >= 1, "persistence_window", || {
            "must be at least 1".into()
        })?;
        ensure(
            (1..=self.persistence_window).contains(&self.level_shift_points),
            "level_shift_points",
            || {
                format!(
                    "must be 1 to persistence_window ({})",
                    self.persistence_window
                )
            },
        )?;
        Ok(ValidDetectorParams {
            params: self,
            forecaster,
        })
    }
}

/// [`DetectorParams`] that passed [`DetectorParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidDetectorParams {
    params: DetectorParams,
    forecaster: ValidForecasterParams,
}

impl ValidDetectorParams {
    /// The checked parameters.
    pub fn get(&self) -> &DetectorParams {
        &self.params
    }
}

/// What the detector says about one point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    /// The point's time.
    pub time: Time,
    /// The point's value.
    pub value: f64,
    /// The one-step forecast for it; `None` during the warm-up.
    pub expected: Option<f64>,
    /// The predicted spread (one sigma); `None` during the warm-up.
    pub spread: Option<f64>,
    /// `(value - expected) / spread`; 0 during the warm-up.
    pub deviation: f64,
    /// The anomaly score in [0, 1): how improbable the deviation is against this series' own
    /// past deviations (point by point and over the last `sustained` points), relative to the
    /// most improbable point of the current episode; 0.5 at probability `score_half`.
    pub score: f64,
    /// Whether the deviation reached the threshold.
    pub anomalous: bool,
    /// Anomalous points among the last `persistence_window`, as a fraction (0 to 1).
    pub severity: f64,
    /// Whether this point confirmed a level shift and the model re-baselined.
    pub rebaselined: bool,
}

/// Scores a series point by point; see the module documentation.
#[derive(Debug, Clone)]
pub struct Detector {
    params: DetectorParams,
    forecaster: Forecaster,
    multiplier: f64,
    /// Signed deviations of the recent anomalous points (0 for normal ones), newest last.
    recent: VecDeque<f64>,
    /// Residuals of the recent points, newest last, for the re-baselining offset.
    residuals: VecDeque<f64>,
    /// Past absolute deviations, for the score's tail probability.
    history: RollingQuantiles,
    /// Log tail probabilities of the last `episode` points, newest last.
    episode: VecDeque<f64>,
    /// The sustained deviations over `sustained` and `sustained_long` points.
    sustained: Vec<Sustained>,
}

impl Detector {
    /// A detector for a series with `n_exog` exogenous metrics per point.
    pub fn new(params: ValidDetectorParams, n_exog: usize) -> Self {
        let multiplier = normal_multiplier(params.params.confidence);
        Detector {
            forecaster: Forecaster::new(params.forecaster, n_exog),
            multiplier,
            recent: VecDeque::with_capacity(params.params.persistence_window),
            residuals: VecDeque::with_capacity(params.params.persistence_window),
            history: RollingQuantiles::new(params.params.score_window),
            episode: VecDeque::with_capacity(params.params.episode),
            sustained: [params.params.sustained, params.params.sustained_long]
                .into_iter()
                .filter(|&n| n > 0)
                .map(|n| Sustained::new(n, params.params.score_window))
                .collect(),
            params: params.params,
        }
    }

    /// Points before the first score above 0.
    pub fn warmup(&self) -> usize {
        self.forecaster.warmup()
    }

    /// The forecaster inside.
    pub fn forecaster(&self) -> &Forecaster {
        &self.forecaster
    }

    /// Scores the next point against the forecast made before it, then takes it in.
    pub fn update(&mut self, time: Time, value: f64, exog: &[f64]) -> Result<Verdict> {
        let forecast = self.forecaster.predict(1, self.params.confidence)?;
        self.forecaster.update(time, value, exog)?;
        let mut verdict = Verdict {
            time,
            value,
            expected: None,
            spread: None,
            deviation: 0.0,
            score: 0.0,
            anomalous: false,
            severity: 0.0,
            rebaselined: false,
        };
        let Forecast::Ready(p) = forecast else {
            return Ok(verdict);
        };
        let floor = 1e-9 * (1.0 + p.mean.abs());
        let spread = (p.half_width() / self.multiplier).max(floor);
        let residual = value - p.mean;
        let z = residual / spread;
        let t = self.params.threshold;
        verdict.expected = Some(p.mean);
        verdict.spread = Some(spread);
        verdict.deviation = z;
        let mut ln_p = if self.history.len() >= self.params.score_min {
            self.history.ln_exceedance(z.abs(), self.params.score_tail)
        } else {
            0.0
        };
        self.history.push(z.abs());
        let clipped = z.abs().min(self.params.sustained_clip);
        for s in &mut self.sustained {
            if let Some(ln_s) = s.push(clipped, self.params.score_min, self.params.score_tail) {
                ln_p = ln_p.min(ln_s);
            }
        }
        // an anomaly already reported in the recent past makes a similar one no news: the
        // probability is taken relative to the most extreme point of the episode
        let recent_min = self.episode.iter().copied().fold(0.0, f64::min);
        if self.episode.len() == self.params.episode {
            self.episode.pop_front();
        }
        if self.params.episode > 0 {
            self.episode.push_back(ln_p);
        }
        let surprise = -(ln_p - self.params.episode_weight * recent_min).min(0.0);
        // monotone in the probability, 0.5 at `score_half`, and never saturating at 1, so
        // the most extreme points keep their order
        let half = -self.params.score_half.ln();
        verdict.score = surprise / (surprise + half);
        verdict.anomalous = z.abs() >= t;
        let w = self.params.persistence_window;
        if self.recent.len() == w {
            self.recent.pop_front();
            self.residuals.pop_front();
        }
        self.recent
            .push_back(if verdict.anomalous { z } else { 0.0 });
        self.residuals.push_back(residual);
        let up = self.recent.iter().filter(|&&d| d > 0.0).count();
        let down = self.recent.iter().filter(|&&d| d < 0.0).count();
        verdict.severity = (up + down) as f64 / w as f64;
        if up.max(down) >= self.params.level_shift_points {
            let sign = if up >= down { 1.0 } else { -1.0 };
            let shifted: Vec<f64> = self
                .recent
                .iter()
                .zip(&self.residuals)
                .filter(|(d, _)| **d * sign > 0.0)
                .map(|(_, r)| *r)
                .collect();
            let offset = shifted.iter().sum::<f64>() / shifted.len() as f64;
            self.forecaster.rebaseline(offset, self.recent.len());
            self.recent.clear();
            self.residuals.clear();
            verdict.rebaselined = true;
        }
        Ok(verdict)
    }
}

/// The mean clipped deviation over the last `len` points and the history of that mean.
#[derive(Debug, Clone)]
struct Sustained {
    len: usize,
    window: VecDeque<f64>,
    sum: f64,
    history: RollingQuantiles,
}

impl Sustained {
    fn new(len: usize, history: usize) -> Self {
        Sustained {
            len,
            window: VecDeque::with_capacity(len),
            sum: 0.0,
            history: RollingQuantiles::new(history),
        }
    }

    /// Takes in a clipped deviation; the log tail probability of the new mean among the past
    /// means (fitted beyond the `1 - tail` quantile) once `min` of them are held.
    fn push(&mut self, clipped: f64, min: usize, tail: f64) -> Option<f64> {
        if self.window.len() == self.len
            && let Some(old) = self.window.pop_front()
        {
            self.sum -= old;
        }
        self.window.push_back(clipped);
        self.sum += clipped;
        if self.window.len() < self.len {
            return None;
        }
        let m = self.sum / self.len as f64;
        let out = (self.history.len() >= min).then(|| self.history.ln_exceedance(m, tail));
        self.history.push(m);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// A daily pattern at 5 minutes with deterministic noise, plus `extra(i)`.
    fn run(n: usize, extra: impl Fn(usize) -> f64) -> Vec<Verdict> {
        run_with(DetectorParams::default(), n, extra)
    }

    fn run_with(params: DetectorParams, n: usize, extra: impl Fn(usize) -> f64) -> Vec<Verdict> {
        let mut d = Detector::new(params.check().unwrap(), 0);
        let mut s: u64 = 3;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let noise = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                let v = 50.0 + 20.0 * phase.sin() + 2.0 * noise + extra(i);
                d.update(i as Time * 300, v, &[]).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_spike_stands_out_and_normal_noise_stays_quiet() {
        let v = run(1500, |i| if i == 1200 { 25.0 } else { 0.0 });
        assert!(
            v[1200].anomalous && v[1200].deviation > 3.0,
            "{:?}",
            v[1200]
        );
        let top = (0..v.len())
            .max_by(|&a, &b| v[a].score.total_cmp(&v[b].score))
            .unwrap();
        assert_eq!(top, 1200);
        let quiet = v[600..1199].iter().filter(|x| x.score > 0.99).count();
        assert!(quiet <= 3, "{quiet} normal points scored above 0.99");
        assert!(v.iter().all(|x| (0.0..=1.0).contains(&x.score)));
    }

    #[test]
    fn nothing_is_scored_during_the_warmup() {
        let d = Detector::new(DetectorParams::default().check().unwrap(), 0);
        let warmup = d.warmup();
        let v = run(warmup + 50, |_| 0.0);
        assert!(
            v[..warmup - 60]
                .iter()
                .all(|x| x.score == 0.0 && x.expected.is_none())
        );
        assert!(v[warmup..].iter().all(|x| x.expected.is_some()));
    }

    #[test]
    fn a_level_shift_rebaselines_instead_of_alarming_for_ever() {
        let v = run(1500, |i| if i >= 1000 { 15.0 } else { 0.0 });
        let shifted = &v[1000..1010];
        assert!(shifted.iter().any(|x| x.rebaselined), "never re-baselined");
        assert!(shifted[0].anomalous);
        // a day later the new level is normal
        let late = v[1300..].iter().filter(|x| x.anomalous).count();
        assert!(late <= 10, "{late} anomalous points a day after the shift");
        assert!(
            v[1300..]
                .iter()
                .all(|x| x.expected.unwrap() > 40.0 || x.value < 40.0)
        );
    }

    #[test]
    fn severity_counts_persistent_anomalies() {
        // three isolated spikes versus three in a row
        let v = run(1300, |i| match i {
            1000 | 1050 | 1100 => 25.0,
            1200..=1202 => 25.0,
            _ => 0.0,
        });
        assert!(v[1000].severity <= 1.0 / 6.0 + 1e-9, "{:?}", v[1000]);
        assert!(v[1202].severity >= 3.0 / 6.0 - 1e-9, "{:?}", v[1202]);
    }

    #[test]
    fn a_denser_run_of_familiar_spikes_is_scored_by_the_long_window() {
        // a spike every 60 points, then one every 12 from 2000: no single spike is new
        let spikes = |i: usize| {
            let every = if i >= 2000 { 12 } else { 60 };
            if i.is_multiple_of(every) { 25.0 } else { 0.0 }
        };
        let peak = |v: &[Verdict]| v[2000..2150].iter().map(|x| x.score).fold(0.0, f64::max);
        let with = run_with(DetectorParams::default(), 2150, spikes);
        let without = run_with(
            DetectorParams {
                sustained_long: 0,
                ..Default::default()
            },
            2150,
            spikes,
        );
        let before = with[1500..1990].iter().map(|x| x.score).fold(0.0, f64::max);
        assert!(
            peak(&with) > before && peak(&with) > peak(&without) + 0.05,
            "dense {} vs before {before}, without the long window {}",
            peak(&with),
            peak(&without)
        );
    }

    #[test]
    fn params_name_the_bad_field() {
        let field = |p: DetectorParams| match p.check() {
            Err(Error::InvalidParam { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(DetectorParams {
                threshold: 0.0,
                ..Default::default()
            }),
            "threshold"
        );
        assert_eq!(
            field(DetectorParams {
                level_shift_points: 9,
                ..Default::default()
            }),
            "level_shift_points"
        );
        assert!(serde_json::from_str::<DetectorParams>(r#"{"threshold": 4, "sigma": 3}"#).is_err());
        let p: DetectorParams = serde_json::from_str(r#"{"threshold": 4}"#).unwrap();
        assert_eq!((p.threshold, p.confidence), (4.0, 0.95));
    }
}
