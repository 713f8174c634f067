//! shadowplane's brain as a pure library: forecasts with calibrated intervals, anomaly
//! detection, root-cause ranking, cost, the predictive migration trigger and NAB scoring.
//!
//! Nothing here does I/O or reads a clock: every function takes time as a parameter (Unix
//! seconds) and works over slices, in the shape of rust-ml/linfa and grafana/augurs
//! (`fit`, `update`, `predict`, `score`). Parameters follow linfa's `Params -> check() ->
//! ValidParams`: the serde structs reject unknown fields and `check` names the bad field.
//!
//! - [`forecast`]: [`Forecaster`] chooses between seasonal-naive, Holt-Winters and a
//!   regression on lags, daily and weekly seasonal terms and exogenous system metrics
//!   (`linfa-linear`) by rolling-origin validation, updates online and gives intervals
//!   calibrated from its own out-of-sample residuals.
//! - [`anomaly`]: [`Detector`] scores each point by its deviation from the forecast in units of
//!   the predicted spread, with persistence and re-baselining after a level shift.
//! - [`rootcause`]: ranks system metrics and error classes for an anomaly window.
//! - [`cost`]: cost per hour and per 1,000 requests from a price table, and their forecasts.
//! - [`trigger`]: `CheckMigrationTrigger` made predictive: Stay or Migrate with hysteresis.
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring rules.

pub mod anomaly;
pub mod cost;
pub mod forecast;
pub mod nab;
pub mod rootcause;
pub mod series;
pub mod stats;
pub mod trigger;

pub use anomaly::{Detector, DetectorParams, ValidDetectorParams, Verdict};
pub use forecast::{
    Forecast, Forecaster, ForecasterParams, ModelKind, Prediction, ValidForecasterParams,
};
pub use series::Cadence;

/// Unix time in seconds: every timestamp the library takes.
pub type Time = i64;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// A parameter is out of range; `field` names it.
    #[error("{field}: {reason}")]
    InvalidParam {
        /// The parameter's name, as in the serde struct.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A point of a series cannot be used; `index` counts from 0 in the caller's input.
    #[error("point {index}: {reason}")]
    BadPoint {
        /// The point's position in the input, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Two inputs that must have the same length do not.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        /// Which input.
        what: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        got: usize,
    },
    /// The least-squares solver failed (it should not, since the problem is ridge-regularised).
    #[error("regression fit failed: {0}")]
    Fit(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error::InvalidParam`] unless `ok`.
pub(crate) fn ensure(ok: bool, field: &'static str, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidParam {
            field,
            reason: reason(),
        })
    }
}
