//! Timers and the clock: `proxy_set_tick_period_milliseconds`,
//! `proxy_get_current_time_nanoseconds`. Ticks are delivered by the driver as its clock moves.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::Status;
use crate::memory::{self, guest};
use crate::state::HostState;

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_set_tick_period_milliseconds", set_tick_period, (period: u32));
    wrap!(linker, "proxy_get_current_time_nanoseconds", current_time, (ret: u32));
    Ok(())
}

fn set_tick_period(c: &mut Caller<'_, HostState>, period: u32) -> Result<Status> {
    let s = c.data_mut();
    s.tick_period_ms = period;
    s.next_tick_ns = (period > 0).then(|| s.now().saturating_add(u64::from(period) * 1_000_000));
    Ok(Status::Ok)
}

fn current_time(c: &mut Caller<'_, HostState>, ret: u32) -> Result<Status> {
    let now = c.data().now();
    guest!(memory::write_u64(c, ret, now));
    Ok(Status::Ok)
}
