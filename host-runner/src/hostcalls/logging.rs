//! Logging: `proxy_log` and `proxy_get_log_level`.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::{LogLevel, Status};
use crate::memory::{self, guest};
use crate::state::HostState;

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_log", log, (level: u32, ptr: u32, len: u32));
    wrap!(linker, "proxy_get_log_level", get_log_level, (ret: u32));
    Ok(())
}

fn log(c: &mut Caller<'_, HostState>, level: u32, ptr: u32, len: u32) -> Result<Status> {
    let Some(level) = LogLevel::from_raw(level) else {
        return Ok(Status::BadArgument);
    };
    let message = guest!(memory::read_string(c, ptr, len));
    c.data_mut().log(level, message);
    Ok(Status::Ok)
}

fn get_log_level(c: &mut Caller<'_, HostState>, ret: u32) -> Result<Status> {
    let level = c.data().settings.log_level.raw();
    guest!(memory::write_u32(c, ret, level));
    Ok(Status::Ok)
}
