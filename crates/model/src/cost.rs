//! Cost: per hour from a price table and instance counts, per 1,000 requests, and forecasts of
//! both, so a price change and a load-driven scale-out both show ahead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::forecast::{Forecast, Forecaster, ValidForecasterParams};
use crate::{Error, Result, Time, ensure};

/// Prices per instance-hour by instance type (`{"m5.large": 0.096}`); every price finite and not
/// negative. No default: an empty table prices nothing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Price per instance-hour, by instance type.
    pub per_hour: BTreeMap<String, f64>,
}

impl PriceTable {
    /// Validates the prices, naming the first bad one.
    pub fn check(self) -> Result<ValidPriceTable> {
        for (name, &p) in &self.per_hour {
            ensure(p.is_finite() && p >= 0.0, "per_hour", || {
                format!("{name}: price must be finite and not negative, got {p}")
            })?;
        }
        Ok(ValidPriceTable(self))
    }
}

/// A [`PriceTable`] that passed [`PriceTable::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPriceTable(PriceTable);

impl ValidPriceTable {
    /// Cost per hour of `fleet`: `(instance type, count)` pairs. An unknown type is an error
    /// that names it.
    pub fn cost_per_hour(&self, fleet: &[(&str, u32)]) -> Result<f64> {
        fleet.iter().try_fold(0.0, |sum, &(kind, count)| {
            let price = self
                .0
                .per_hour
                .get(kind)
                .ok_or_else(|| Error::InvalidParam {
                    field: "fleet",
                    reason: format!("no price for instance type {kind}"),
                })?;
            Ok(sum + price * f64::from(count))
        })
    }
}

/// Cost per 1,000 requests at `cost_per_hour` and `requests_per_second`; `None` without traffic.
pub fn per_thousand_requests(cost_per_hour: f64, requests_per_second: f64) -> Option<f64> {
    let per_hour = requests_per_second * 3600.0;
    (per_hour > 0.0 && per_hour.is_finite()).then(|| cost_per_hour / per_hour * 1000.0)
}

/// Forecasts of both costs at one horizon.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostForecast {
    /// Cost per hour.
    pub per_hour: Forecast,
    /// Cost per 1,000 requests.
    pub per_thousand: Forecast,
}

/// Follows a group's cost online. The per-hour forecaster takes the request rate as its
/// exogenous metric, so a scale-out that follows load is learnt as such; the per-1,000 series
/// is forecast on its own.
#[derive(Debug, Clone)]
pub struct CostModel {
    prices: ValidPriceTable,
    per_hour: Forecaster,
    per_thousand: Forecaster,
}

impl CostModel {
    /// A cost model over `prices`, with forecasters built from `params`.
    pub fn new(prices: ValidPriceTable, params: ValidForecasterParams) -> Self {
        CostModel {
            prices,
            per_hour: Forecaster::new(params.clone(), 1),
            per_thousand: Forecaster::new(params, 0),
        }
    }

    /// Takes in one point: the fleet at `time` and its request rate. Returns the cost per hour
    /// and per 1,000 requests (the latter `None` without traffic, and then not forecast).
    pub fn update(
        &mut self,
        time: Time,
        fleet: &[(&str, u32)],
        requests_per_second: f64,
    ) -> Result<(f64, Option<f64>)> {
        let hourly = self.prices.cost_per_hour(fleet)?;
        let per_k = per_thousand_requests(hourly, requests_per_second);
        self.per_hour.update(time, hourly, &[requests_per_second])?;
        if let Some(k) = per_k {
            self.per_thousand.update(time, k, &[])?;
        }
        Ok((hourly, per_k))
    }

    /// Forecasts both costs `horizon` points ahead at `confidence`.
    pub fn predict(&self, horizon: usize, confidence: f64) -> Result<CostForecast> {
        Ok(CostForecast {
            per_hour: self.per_hour.predict(horizon, confidence)?,
            per_thousand: self.per_thousand.predict(horizon, confidence)?,
        })
    }

    /// Replaces the price table (a price change); the forecasters see the change in the data.
    pub fn set_prices(&mut self, prices: ValidPriceTable) {
        self.prices = prices;
    }

    /// The per-hour forecaster, for the migration trigger.
    pub fn per_hour(&self) -> &Forecaster {
        &self.per_hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ForecasterParams;

    fn prices(large: f64) -> ValidPriceTable {
        PriceTable {
            per_hour: [("large".to_string(), large), ("small".to_string(), 0.05)]
                .into_iter()
                .collect(),
        }
        .check()
        .unwrap()
    }

    fn params() -> ValidForecasterParams {
        ForecasterParams {
            warmup: 96,
            refit_every: 48,
            ..Default::default()
        }
        .check()
        .unwrap()
    }

    #[test]
    fn prices_fleets_and_requests() {
        let p = prices(0.10);
        assert!((p.cost_per_hour(&[("large", 3), ("small", 2)]).unwrap() - 0.40).abs() < 1e-12);
        assert!(p.cost_per_hour(&[("huge", 1)]).is_err());
        // 0.36 per hour at 1 rps = 3600 requests per hour: 0.1 per 1,000
        assert!((per_thousand_requests(0.36, 1.0).unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(per_thousand_requests(1.0, 0.0), None);
        let bad = PriceTable {
            per_hour: [("x".to_string(), -1.0)].into_iter().collect(),
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn a_price_change_shows_in_the_forecast() {
        let mut m = CostModel::new(prices(0.10), params());
        let mut t = 0;
        for _ in 0..300 {
            m.update(t, &[("large", 4)], 10.0).unwrap();
            t += 300;
        }
        let before = m.predict(6, 0.95).unwrap().per_hour.ready().unwrap().mean;
        assert!((before - 0.40).abs() < 0.01, "{before}");
        m.set_prices(prices(0.20));
        // within one refit (48 points here) validation has moved to a model that follows
        for _ in 0..60 {
            m.update(t, &[("large", 4)], 10.0).unwrap();
            t += 300;
        }
        let f = m.predict(6, 0.95).unwrap();
        let after = f.per_hour.ready().unwrap().mean;
        assert!((after - 0.80).abs() < 0.05, "{after}");
        let k = f.per_thousand.ready().unwrap().mean;
        let want = per_thousand_requests(0.80, 10.0).unwrap();
        assert!((k - want).abs() < 0.1 * want, "{k} {want}");
    }

    #[test]
    fn a_load_driven_scale_out_is_forecast_before_it_happens() {
        // a daily load cycle; one instance per 100 rps; the forecast an hour ahead of the
        // morning ramp already shows the higher cost
        let mut m = CostModel::new(prices(0.10), ForecasterParams::default().check().unwrap());
        let rps = |t: Time| {
            let phase = (t % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
            500.0 + 400.0 * phase.sin()
        };
        let mut t = 0;
        let mut checked = 0;
        while t < 86_400 * 6 {
            let n = (rps(t) / 100.0).ceil() as u32;
            m.update(t, &[("large", n)], rps(t)).unwrap();
            t += 300;
            if t > 86_400 * 4 && t % 86_400 == 3 * 3600 {
                // 03:00, load rising: cost an hour later is higher than now
                let now = 0.1 * (rps(t - 300) / 100.0).ceil();
                let ahead = m.predict(12, 0.95).unwrap().per_hour.ready().unwrap().mean;
                let truth = 0.1 * (rps(t - 300 + 12 * 300) / 100.0).ceil();
                assert!(ahead > now + 0.05, "{ahead} vs now {now}");
                assert!((ahead - truth).abs() < 0.1, "{ahead} vs {truth}");
                checked += 1;
            }
        }
        assert_eq!(checked, 2);
    }
}
