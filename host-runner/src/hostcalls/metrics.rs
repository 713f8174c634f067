//! Metrics: counters, gauges and histograms, shared by the workers of a plugin as Envoy's stats
//! are, and readable by tests.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::{MetricType, Status};
use crate::memory::{self, guest};
use crate::state::{HostState, Metric};

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_define_metric", define, (ty: u32, np: u32, nl: u32, ret: u32));
    wrap!(linker, "proxy_increment_metric", increment, (id: u32, delta: i64));
    wrap!(linker, "proxy_record_metric", record, (id: u32, value: u64));
    wrap!(linker, "proxy_get_metric", get, (id: u32, ret: u32));
    Ok(())
}

fn define(c: &mut Caller<'_, HostState>, ty: u32, np: u32, nl: u32, ret: u32) -> Result<Status> {
    let Some(kind) = MetricType::from_raw(ty) else {
        return Ok(Status::BadArgument);
    };
    let name = guest!(memory::read_string(c, np, nl));
    guest!(memory::check(c, ret, 4));
    let id = {
        let mut sh = c.data().shared.lock();
        let key = (name.clone(), ty as u8);
        match sh.metric_ids.get(&key) {
            // Defining a metric again gives the same one, as Envoy's stat scopes do.
            Some(id) => *id,
            None => {
                sh.metrics.push(Metric {
                    name,
                    kind,
                    value: 0,
                    samples: Vec::new(),
                });
                let id = sh.metrics.len() as u32;
                sh.metric_ids.insert(key, id);
                id
            }
        }
    };
    guest!(memory::write_u32(c, ret, id));
    Ok(Status::Ok)
}

fn increment(c: &mut Caller<'_, HostState>, id: u32, delta: i64) -> Result<Status> {
    let mut sh = c.data().shared.lock();
    let Some(m) = (id as usize)
        .checked_sub(1)
        .and_then(|i| sh.metrics.get_mut(i))
    else {
        return Ok(Status::NotFound);
    };
    match m.kind {
        MetricType::Counter if delta < 0 => Ok(Status::BadArgument),
        MetricType::Counter | MetricType::Gauge => {
            m.value = m.value.saturating_add(delta);
            Ok(Status::Ok)
        }
        MetricType::Histogram => Ok(Status::BadArgument),
    }
}

fn record(c: &mut Caller<'_, HostState>, id: u32, value: u64) -> Result<Status> {
    let mut sh = c.data().shared.lock();
    let Some(m) = (id as usize)
        .checked_sub(1)
        .and_then(|i| sh.metrics.get_mut(i))
    else {
        return Ok(Status::NotFound);
    };
    let v = i64::try_from(value).unwrap_or(i64::MAX);
    match m.kind {
        // Envoy moves a counter up to the recorded value and never down.
        MetricType::Counter => m.value = m.value.max(v),
        MetricType::Gauge => m.value = v,
        MetricType::Histogram => m.samples.push(value),
    }
    Ok(Status::Ok)
}

fn get(c: &mut Caller<'_, HostState>, id: u32, ret: u32) -> Result<Status> {
    let value = {
        let sh = c.data().shared.lock();
        let Some(m) = (id as usize).checked_sub(1).and_then(|i| sh.metrics.get(i)) else {
            return Ok(Status::NotFound);
        };
        if m.kind == MetricType::Histogram {
            return Ok(Status::BadArgument);
        }
        m.value as u64
    };
    guest!(memory::write_u64(c, ret, value));
    Ok(Status::Ok)
}
