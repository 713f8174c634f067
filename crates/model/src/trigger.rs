//! The migration trigger: the design's `CheckMigrationTrigger`, made predictive. Given a
//! group's forecasters and a policy it answers Stay or Migrate with the reason, a severity and
//! the expected time of the breach, with hysteresis and a minimum dwell so it does not flap.
//!
//! A metric *risks* its limit at a level when the probability that it exceeds the level, now
//! or at any horizon up to the policy's, reaches the policy's confidence. The probability comes
//! from the forecaster's calibrated 95% interval read as a normal spread. The point just seen
//! counts as certain, except an error rate given with its counts: a rate measured on `n`
//! requests is an estimate, and the probability that the true rate is above a level is read
//! from the binomial spread at that level (normal approximation), so 19 failures in 2,000
//! requests against a 0.9% level is a coin flip, not a certainty. Staying turns into Migrate when some metric risks `enter x limit`;
//! Migrate turns back into Stay only when no metric has even a `1 - confidence` chance of
//! exceeding `exit x limit`; and neither happens within `min_dwell_secs` of the last change.

use serde::{Deserialize, Serialize};

use crate::forecast::{Forecast, Forecaster};
use crate::stats::{normal_cdf, normal_multiplier};
use crate::{Result, Time, ensure};

/// The confidence of the interval a breach probability is read from.
const INTERVAL: f64 = 0.95;

/// When a group should move to its shadow; `check` turns it into a [`ValidPolicy`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// SLO on p99 latency, in milliseconds. Default 250.
    pub slo_p99_ms: f64,
    /// SLO on the error rate, as a fraction of requests. Default 0.01.
    pub slo_error_rate: f64,
    /// Budget on cost per hour; none means cost never triggers. Default none.
    pub cost_budget_per_hour: Option<f64>,
    /// How far ahead breaches are looked for, in points. Default 6.
    pub horizon: usize,
    /// Probability of a breach that makes the trigger act. Default 0.9.
    pub confidence: f64,
    /// Migrate when a metric risks this fraction of its limit. Default 1.0.
    pub enter: f64,
    /// Return to Stay only when no metric risks this fraction of its limit. Default 0.8.
    pub exit: f64,
    /// Seconds a decision holds at least before it may change. Default 600.
    pub min_dwell_secs: Time,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            slo_p99_ms: 250.0,
            slo_error_rate: 0.01,
            cost_budget_per_hour: None,
            horizon: 6,
            confidence: 0.9,
            enter: 1.0,
            exit: 0.8,
            min_dwell_secs: 600,
        }
    }
}

impl Policy {
    /// Validates the policy, naming the first bad field.
    pub fn check(self) -> Result<ValidPolicy> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        ensure(positive(self.slo_p99_ms), "slo_p99_ms", || {
            format!("must be positive, got {}", self.slo_p99_ms)
        })?;
        ensure(positive(self.slo_error_rate), "slo_error_rate", || {
            format!("must be positive, got {}", self.slo_error_rate)
        })?;
        if let Some(b) = self.cost_budget_per_hour {
            ensure(positive(b), "cost_budget_per_hour", || {
                format!("must be positive, got {b}")
            })?;
        }
        ensure(self.horizon >= 1, "horizon", || "must be at least 1".into())?;
        ensure(
            self.confidence > 0.5 && self.confidence < 1.0,
            "confidence",
            || format!("must be between 0.5 and 1, got {}", self.confidence),
        )?;
        ensure(positive(self.enter), "enter", || {
            format!("must be positive, got {}", self.enter)
        })?;
        ensure(
            positive(self.exit) && self.exit < self.enter,
            "exit",
            || {
                format!(
                    "must be positive and below enter ({}), got {}",
                    self.enter, self.exit
                )
            },
        )?;
        ensure(self.min_dwell_secs >= 0, "min_dwell_secs", || {
            "must not be negative".into()
        })?;
        Ok(ValidPolicy(self))
    }
}

/// A [`Policy`] that passed [`Policy::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPolicy(Policy);

impl ValidPolicy {
    /// The checked policy.
    pub fn get(&self) -> &Policy {
        &self.0
    }
}

/// A group's forecasters, each fed with its metric.
#[derive(Debug, Clone, Copy)]
pub struct GroupForecasts<'a> {
    /// p99 latency in milliseconds.
    pub p99_ms: &'a Forecaster,
    /// A second p99 forecaster, when the caller keeps one chosen on its errors over the
    /// horizon while `p99_ms` is chosen on the next point: each is right where the other is
    /// late (one step follows a creep's start sooner; the horizon scores the model that
    /// extrapolates it), so the graver of the two risks counts.
    pub p99_over_horizon: Option<&'a Forecaster>,
    /// Error rate as a fraction of requests.
    pub error_rate: &'a Forecaster,
    /// Cost per hour, when the policy has a budget.
    pub cost_per_hour: Option<&'a Forecaster>,
    /// The failed and total requests the error rate's newest point was measured on, when
    /// known: the point is then weighed as the estimate it is.
    pub error_counts: Option<(u64, u64)>,
    /// The latency distribution the p99's newest point was read from, as (value in ms,
    /// count) pairs, when known: the point is then weighed by how many requests were slower
    /// than a level, as the estimate it is, instead of being believed.
    pub p99_tail: Option<&'a [(f64, u64)]>,
}

/// What the newest point of a metric was measured on.
#[derive(Debug, Clone, Copy)]
enum Measured<'a> {
    /// Nothing known: the point is taken as certain.
    Certain,
    /// A rate over this many trials.
    Rate(u64),
    /// The 99th percentile of this distribution, (value, count) pairs.
    P99(&'a [(f64, u64)]),
}

/// The metric a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// p99 latency.
    P99Latency,
    /// Error rate.
    ErrorRate,
    /// Cost per hour.
    Cost,
}

impl Metric {
    fn label(self) -> &'static str {
        match self {
            Metric::P99Latency => "p99 latency",
            Metric::ErrorRate => "error rate",
            Metric::Cost => "cost per hour",
        }
    }
}

/// Stay on the primary or move to the shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep serving from the primary.
    Stay,
    /// Move traffic to the shadow.
    Migrate,
}

/// The trigger's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Whether `action` differs from the previous decision.
    pub changed: bool,
    /// The metric that decided, if any.
    pub metric: Option<Metric>,
    /// The highest probability, over metrics and horizons, of exceeding `enter x limit`.
    pub severity: f64,
    /// The first time a metric's forecast mean reaches its limit, when within the horizon.
    pub breach_at: Option<Time>,
    /// One line for a person.
    pub reason: String,
}

#[derive(Debug, Clone, Copy)]
struct Risk {
    metric: Metric,
    enter: f64,
    exit: f64,
    breach_at: Option<Time>,
    forecast_ready: bool,
    limit: f64,
    peak: f64,
}

impl Risk {
    /// The graver of two risks of one metric, field by field.
    fn graver(self, other: Risk) -> Risk {
        Risk {
            enter: self.enter.max(other.enter),
            exit: self.exit.max(other.exit),
            breach_at: match (self.breach_at, other.breach_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            forecast_ready: self.forecast_ready && other.forecast_ready,
            peak: self.peak.max(other.peak),
            ..self
        }
    }
}

/// The predictive trigger for one group: the policy and the last decision.
#[derive(Debug, Clone)]
pub struct Trigger {
    policy: ValidPolicy,
    action: Action,
    since: Option<Time>,
}

impl Trigger {
    /// A trigger that starts in Stay.
    pub fn new(policy: ValidPolicy) -> Self {
        Trigger {
            policy,
            action: Action::Stay,
            since: None,
        }
    }

    /// The current action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Decides at `now` from the group's forecasters.
    pub fn check(&mut self, now: Time, group: &GroupForecasts<'_>) -> Result<Decision> {
        let p = self.policy.get().clone();
        let tail = group.p99_tail.map_or(Measured::Certain, Measured::P99);
        let mut p99 = risk(Metric::P99Latency, group.p99_ms, p.slo_p99_ms, tail, &p)?;
        if let Some(f) = group.p99_over_horizon {
            p99 = p99.graver(risk(Metric::P99Latency, f, p.slo_p99_ms, tail, &p)?);
        }
        let mut risks = vec![
            p99,
            risk(
                Metric::ErrorRate,
                group.error_rate,
                p.slo_error_rate,
                group
                    .error_counts
                    .map_or(Measured::Certain, |(_, n)| Measured::Rate(n)),
                &p,
            )?,
        ];
        if let (Some(f), Some(budget)) = (group.cost_per_hour, p.cost_budget_per_hour) {
            risks.push(risk(Metric::Cost, f, budget, Measured::Certain, &p)?);
        }
        let worst = risks
            .iter()
            .copied()
            .max_by(|a, b| a.enter.total_cmp(&b.enter))
            .expect("at least two metrics");
        let dwelling = self.since.is_some_and(|s| now - s < p.min_dwell_secs);
        let breach_at = risks.iter().filter_map(|r| r.breach_at).min();
        let severity = worst.enter;
        let current = self.action;
        let mut decide = |action: Action, metric: Option<Metric>, reason: String| {
            let changed = action != self.action;
            if changed {
                self.action = action;
                self.since = Some(now);
            }
            Decision {
                action,
                changed,
                metric,
                severity,
                breach_at,
                reason,
            }
        };
        Ok(match current {
            Action::Stay => {
                if worst.enter >= p.confidence && !dwelling {
                    let when = worst
                        .breach_at
                        .map(|t| {
                            if t <= now {
                                "now".to_string()
                            } else {
                                format!("in {} s", t - now)
                            }
                        })
                        .unwrap_or_else(|| "within the horizon".to_string());
                    decide(
                        Action::Migrate,
                        Some(worst.metric),
                        format!(
                            "{} risks its limit {} (p = {:.2}, peak forecast {:.4}), breach expected {when}",
                            worst.metric.label(),
                            worst.limit,
                            worst.enter,
                            worst.peak
                        ),
                    )
                } else if worst.enter >= p.confidence {
                    decide(
                        Action::Stay,
                        Some(worst.metric),
                        format!(
                            "{} risks its limit, but the last change is too recent",
                            worst.metric.label()
                        ),
                    )
                } else {
                    let warming = risks.iter().any(|r| !r.forecast_ready);
                    decide(
                        Action::Stay,
                        None,
                        if warming {
                            "within limits now; some forecasts are still warming up".to_string()
                        } else {
                            format!(
                                "every metric within limits through the horizon (worst p = {:.2})",
                                worst.enter
                            )
                        },
                    )
                }
            }
            Action::Migrate => {
                let clear = risks.iter().all(|r| r.exit < 1.0 - p.confidence);
                let holding = risks
                    .iter()
                    .copied()
                    .max_by(|a, b| a.exit.total_cmp(&b.exit))
                    .map(|r| r.metric);
                if clear && !dwelling {
                    decide(
                        Action::Stay,
                        None,
                        format!(
                            "every metric forecast below {:.0}% of its limit",
                            100.0 * p.exit
                        ),
                    )
                } else if clear {
                    decide(
                        Action::Migrate,
                        holding,
                        "recovered, holding for the minimum dwell".to_string(),
                    )
                } else {
                    decide(
                        Action::Migrate,
                        holding,
                        format!(
                            "{} not yet below {:.0}% of its limit",
                            holding.map_or("a metric", Metric::label),
                            100.0 * p.exit
                        ),
                    )
                }
            }
        })
    }
}

/// The probabilities of `f`'s metric exceeding `enter x limit` and `exit x limit`, now or
/// within the horizon. `measured` qualifies the newest point.
fn risk(
    metric: Metric,
    f: &Forecaster,
    limit: f64,
    measured: Measured<'_>,
    p: &Policy,
) -> Result<Risk> {
    let (enter_level, exit_level) = (p.enter * limit, p.exit * limit);
    let mut r = Risk {
        metric,
        enter: 0.0,
        exit: 0.0,
        breach_at: None,
        forecast_ready: true,
        limit,
        peak: f64::NEG_INFINITY,
    };
    if let Some((t, v)) = f.last() {
        r.peak = v;
        // The distribution behind the p99 and its number of requests, when it has any.
        let tail = match measured {
            Measured::P99(tail) => Some((tail, tail.iter().map(|(_, c)| c).sum::<u64>())),
            _ => None,
        }
        .filter(|(_, n)| *n > 0);
        let now = |level: f64| match (measured, tail) {
            (Measured::Rate(n), _) if n > 0 => rate_above(v, n, level),
            // The true p99 is above `level` exactly when more than 1% of requests are: a
            // rate, weighed like one.
            (_, Some((tail, n))) => {
                let slower: u64 = tail
                    .iter()
                    .filter(|(x, _)| *x >= level)
                    .map(|(_, c)| c)
                    .sum();
                rate_above(slower as f64 / n as f64, n, 0.01)
            }
            _ => f64::from(u8::from(v >= level)),
        };
        r.enter = now(enter_level);
        r.exit = now(exit_level);
        if now(limit) >= p.confidence {
            r.breach_at = Some(t);
        }
    }
    let z = normal_multiplier(INTERVAL);
    let horizon = p.horizon.min(f.params().max_horizon);
    for h in 1..=horizon {
        let Forecast::Ready(pred) = f.predict(h, INTERVAL)? else {
            r.forecast_ready = false;
            break;
        };
        let sigma = pred.half_width() / z;
        let exceed = |level: f64| {
            if sigma > 0.0 {
                1.0 - normal_cdf((level - pred.mean) / sigma)
            } else if pred.mean >= level {
                1.0
            } else {
                0.0
            }
        };
        r.enter = r.enter.max(exceed(enter_level));
        r.exit = r.exit.max(exceed(exit_level));
        r.peak = r.peak.max(pred.mean);
        if r.breach_at.is_none() && pred.mean >= limit {
            r.breach_at = Some(pred.time);
        }
    }
    Ok(r)
}

/// The probability that a rate measured as `observed` on `n` trials is truly above `level`:
/// the observed rate's distance from the level in binomial standard deviations at the level.
fn rate_above(observed: f64, n: u64, level: f64) -> f64 {
    if level <= 0.0 {
        return f64::from(u8::from(observed > 0.0));
    }
    if level >= 1.0 {
        return 0.0;
    }
    let sd = (level * (1.0 - level) / n as f64).sqrt();
    normal_cdf((observed - level) / sd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ForecasterParams;

    fn forecaster() -> Forecaster {
        let p = ForecasterParams {
            warmup: 60,
            refit_every: 30,
            min_calibration: 20,
            ..Default::default()
        };
        Forecaster::new(p.check().unwrap(), 0)
    }

    /// Deterministic noise in [-0.5, 0.5).
    fn noise(i: usize) -> f64 {
        let x = (i as u64 + 7).wrapping_mul(6_364_136_223_846_793_005);
        ((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    struct Group {
        p99: Forecaster,
        errors: Forecaster,
        t: Time,
        i: usize,
    }

    impl Group {
        fn new() -> Self {
            Group {
                p99: forecaster(),
                errors: forecaster(),
                t: 0,
                i: 0,
            }
        }
        fn push(&mut self, p99: f64) {
            self.p99.update(self.t, p99, &[]).unwrap();
            self.errors
                .update(self.t, 0.001 + 0.0002 * noise(self.i + 99), &[])
                .unwrap();
            self.t += 60;
            self.i += 1;
        }
        fn forecasts(&self) -> GroupForecasts<'_> {
            GroupForecasts {
                p99_ms: &self.p99,
                p99_over_horizon: None,
                error_rate: &self.errors,
                cost_per_hour: None,
                error_counts: None,
                p99_tail: None,
            }
        }
        fn check(&self, trigger: &mut Trigger) -> Decision {
            trigger.check(self.t - 60, &self.forecasts()).unwrap()
        }
    }

    /// The action and severity of a new trigger's first check.
    fn first_check(policy: &Policy, now: Time, group: &GroupForecasts<'_>) -> (Action, f64) {
        let mut trigger = Trigger::new(policy.clone().check().unwrap());
        let d = trigger.check(now, group).unwrap();
        (d.action, d.severity)
    }

    #[test]
    fn an_error_rate_near_its_level_on_few_requests_is_weighed_not_believed() {
        let policy = Policy {
            enter: 0.9,
            exit: 0.7,
            slo_error_rate: 0.01,
            ..Policy::default()
        };
        let mut g = Group::new();
        for i in 0..200 {
            g.push(100.0 + 10.0 * noise(i));
        }
        // A steady 0.5% error rate whose newest pooled point came out at 0.95%.
        let mut errors = forecaster();
        for i in 0..200 {
            let v = if i == 199 {
                0.0095
            } else {
                0.005 + 0.001 * noise(i)
            };
            errors.update(i as Time * 60, v, &[]).unwrap();
        }
        let decide = |counts: Option<(u64, u64)>| {
            let group = GroupForecasts {
                error_rate: &errors,
                error_counts: counts,
                ..g.forecasts()
            };
            first_check(&policy, 199 * 60, &group)
        };
        // Without counts the point is taken as certain (0.95% >= 0.9%).
        assert_eq!(decide(None).0, Action::Migrate);
        // 19 failures in 2,000 requests: about 0.3 binomial sd above 0.9%, no certainty.
        let (action, severity) = decide(Some((19, 2000)));
        assert_eq!(action, Action::Stay, "severity {severity}");
        assert!(severity < 0.8, "{severity}");
        // The same rate on 200,000 requests is well measured: it migrates.
        assert_eq!(decide(Some((1900, 200_000))).0, Action::Migrate);
    }

    #[test]
    fn one_slow_window_is_weighed_by_its_requests_not_believed() {
        let policy = Policy {
            slo_p99_ms: 250.0,
            ..Policy::default()
        };
        let mut g = Group::new();
        for i in 0..200 {
            g.push(100.0 + 10.0 * noise(i));
        }
        // The newest pooled p99 came out at 300 ms: 3 slow requests in 300.
        g.push(300.0);
        let one_slow = [(100.0, 297), (300.0, 3)];
        let most_slow = [(100.0, 100), (300.0, 200)];
        let decide = |tail: Option<&[(f64, u64)]>| {
            let group = GroupForecasts {
                p99_tail: tail,
                ..g.forecasts()
            };
            first_check(&policy, g.t - 60, &group)
        };
        // Without the distribution the point is taken as certain.
        assert_eq!(decide(None).0, Action::Migrate);
        // 1% of 300 requests slower than the SLO: as likely under it as over.
        let (action, severity) = decide(Some(&one_slow));
        assert_eq!(action, Action::Stay, "severity {severity}");
        // Most requests slower: certain.
        assert_eq!(decide(Some(&most_slow)).0, Action::Migrate);
    }

    #[test]
    fn a_rising_latency_migrates_before_the_breach() {
        let mut trigger = Trigger::new(Policy::default().check().unwrap());
        let mut g = Group::new();
        for i in 0..200 {
            g.push(100.0 + 10.0 * noise(i));
            assert_eq!(g.check(&mut trigger).action, Action::Stay);
        }
        // +3 ms a minute: crosses 250 ms about 50 minutes in
        let mut migrated = None;
        for k in 0..80 {
            let v = 100.0 + 3.0 * k as f64 + 10.0 * noise(200 + k);
            g.push(v);
            let d = g.check(&mut trigger);
            if d.action == Action::Migrate && migrated.is_none() {
                migrated = Some((v, d));
            }
        }
        let (v, d) = migrated.expect("never migrated");
        assert!(v < 250.0, "migrated only at {v} ms");
        assert_eq!(d.metric, Some(Metric::P99Latency));
        assert!(d.changed && d.severity >= 0.9, "{d:?}");
        assert!(d.breach_at.is_some_and(|t| t > g.t - 60 - 3600), "{d:?}");
    }

    #[test]
    fn noise_below_the_limit_never_flaps_and_hysteresis_holds() {
        let policy = Policy {
            min_dwell_secs: 1800,
            ..Default::default()
        };
        let mut trigger = Trigger::new(policy.check().unwrap());
        let mut g = Group::new();
        for i in 0..300 {
            g.push(150.0 + 40.0 * noise(i));
            assert_eq!(g.check(&mut trigger).action, Action::Stay, "point {i}");
        }
        // a real breach
        for i in 0..10 {
            g.push(400.0 + 10.0 * noise(300 + i));
        }
        assert_eq!(g.check(&mut trigger).action, Action::Migrate);
        // between exit (200) and enter (250): stays migrated
        let mut changes = 0;
        for i in 0..60 {
            g.push(230.0 + 5.0 * noise(400 + i));
            changes += usize::from(g.check(&mut trigger).changed);
        }
        assert_eq!((trigger.action(), changes), (Action::Migrate, 0));
        // well below exit: back to Stay, once, and only after the dwell
        let start = g.t;
        let mut back = None;
        for i in 0..120 {
            g.push(100.0 + 5.0 * noise(500 + i));
            let d = g.check(&mut trigger);
            if d.changed {
                assert!(back.is_none(), "flapped: {d:?}");
                back = Some(g.t);
            }
        }
        assert_eq!(trigger.action(), Action::Stay);
        assert!(back.is_some_and(|t| t > start));
    }

    #[test]
    fn a_cost_budget_triggers_too() {
        let policy = Policy {
            cost_budget_per_hour: Some(10.0),
            ..Default::default()
        };
        let mut trigger = Trigger::new(policy.check().unwrap());
        let mut g = Group::new();
        let mut cost = forecaster();
        for i in 0..200 {
            g.push(100.0 + noise(i));
            cost.update(g.t - 60, if i < 150 { 5.0 } else { 12.0 }, &[])
                .unwrap();
        }
        let d = trigger
            .check(
                g.t - 60,
                &GroupForecasts {
                    p99_ms: &g.p99,
                    p99_over_horizon: None,
                    error_rate: &g.errors,
                    cost_per_hour: Some(&cost),
                    error_counts: None,
                    p99_tail: None,
                },
            )
            .unwrap();
        assert_eq!(
            (d.action, d.metric),
            (Action::Migrate, Some(Metric::Cost)),
            "{d:?}"
        );
    }

    #[test]
    fn policy_names_the_bad_field() {
        let bad = Policy {
            exit: 1.2,
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert!(bad.to_string().starts_with("exit:"), "{bad}");
        let json = r#"{"slo_p99_ms": 300, "horizon_points": 3}"#;
        assert!(serde_json::from_str::<Policy>(json).is_err());
    }
}
